"""Optimisers and learning-rate schedules (all resumable through their state dicts)."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Iterable

import torch

from ..errors import TrainingError
from .config import TrainConfig


def build_optimizer(parameters: Iterable[torch.nn.Parameter], config: TrainConfig, device: torch.device) -> tuple[torch.optim.Optimizer, list[str]]:
    """The optimiser the config names, and notes about fallbacks taken."""
    params = [p for p in parameters if p.requires_grad]
    notes: list[str] = []
    name = config.optimizer
    if name == "adamw8bit":
        if device.type == "cuda" and importlib.util.find_spec("bitsandbytes") is not None:
            import bitsandbytes

            return bitsandbytes.optim.AdamW8bit(params, lr=config.learning_rate, weight_decay=config.weight_decay), notes
        notes.append("AdamW 8-bit needs bitsandbytes and a CUDA GPU; using standard AdamW instead.")
        name = "adamw"
    if name == "adamw":
        fused = device.type in ("cuda", "cpu")  # one kernel per step instead of a dozen passes per tensor
        return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=fused), notes
    if name == "prodigy":
        if importlib.util.find_spec("prodigyopt") is None:
            raise TrainingError("The Prodigy optimiser needs the prodigyopt package: pip install prodigyopt (or pick adamw).")
        from prodigyopt import Prodigy

        return Prodigy(params, lr=config.learning_rate, weight_decay=config.weight_decay), notes
    return torch.optim.Adafactor(params, lr=config.learning_rate, weight_decay=config.weight_decay), notes


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Resume `optimizer` from a saved state dict, keeping how this run computes the update (fused kernel or not, a
    choice for its device) rather than the choice of the run that saved it."""
    kernels = [{key: group[key] for key in ("fused", "foreach") if key in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, kernel in zip(optimizer.param_groups, kernels, strict=True):
        group.update(kernel)


def lr_factor(step: int, total_steps: int, config: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimiser step `step` (linear warm-up, then the schedule)."""
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if config.scheduler == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if config.scheduler == "linear":
        return 1.0 - progress
    if config.scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    cycle = (progress * config.restarts) % 1.0 if progress < 1.0 else 1.0
    return 0.5 * (1.0 + math.cos(math.pi * cycle))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following `lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, config))


def resume_notes(saved: dict, config: TrainConfig, step: int, steps_per_epoch: int) -> list[str]:
    """In words, what resuming at `step` does with optimiser and schedule settings that differ from the checkpoint's."""
    notes = [
        f"{name} {getattr(config, name):g} was given, but the checkpoint's {saved[name]:g} is kept (it is part of the saved "
        "optimiser state); start a new run to change it."
        for name in ("learning_rate", "weight_decay")
        if name in saved and saved[name] != getattr(config, name)
    ]
    changed = [name for name in ("epochs", "scheduler", "warmup_steps", "restarts") if name in saved and saved[name] != getattr(config, name)]
    if changed:
        before = dataclasses.replace(config, **{name: saved[name] for name in changed})
        lr = saved.get("learning_rate", config.learning_rate)
        old = lr * lr_factor(step + 1, before.epochs * steps_per_epoch, before)
        new = lr * lr_factor(step + 1, config.epochs * steps_per_epoch, config)
        settings = ", ".join(f"{name} {saved[name]} → {getattr(config, name)}" for name in changed)
        notes.append(
            f"{settings}: the {config.scheduler} schedule is recomputed over {config.epochs} epochs "
            f"({config.epochs * steps_per_epoch} steps), so the learning rate at step {step + 1} is {new:.2e} "
            f"instead of the checkpoint's {old:.2e}."
        )
    return notes

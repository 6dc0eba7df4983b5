"""Optimisers and learning-rate schedules (all resumable through their state dicts)."""

from __future__ import annotations

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
        fused = device.type == "cuda"
        return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=fused), notes
    if name == "prodigy":
        if importlib.util.find_spec("prodigyopt") is None:
            raise TrainingError("The Prodigy optimiser needs the prodigyopt package: pip install prodigyopt (or pick adamw).")
        from prodigyopt import Prodigy

        return Prodigy(params, lr=config.learning_rate, weight_decay=config.weight_decay), notes
    return torch.optim.Adafactor(params, lr=config.learning_rate, weight_decay=config.weight_decay), notes


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

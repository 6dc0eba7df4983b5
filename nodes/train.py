"""Train Adapter: run the core trainer inside ComfyUI with live progress, Cancel support and reuse of finished runs."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import comfy.model_management as model_management
import torch
from comfy_api.latest import io
from sidestep.training.layout import FINAL_FOLDER, SUMMARY, RunLayout
from sidestep.variants import per_base

from .common import (
    CATEGORY,
    DATASETS_FOLDER,
    RUNS_FOLDER,
    NodeProgress,
    loras_dir,
    make_room,
    output_location,
    runs_dir,
)
from .handles import AcestepDataset, AcestepModel, Adapter, AdapterConfigType, AdapterHandle, DatasetHandle, ModelHandle
from .jobs import JOBS

if TYPE_CHECKING:
    from sidestep.adapters.config import AdapterConfig
    from sidestep.training.events import TrainingEvent
    from sidestep.training.run import RunOutcome, TrainingRun

NODE_TYPE = "SideStepTrainAdapter"
EVENT = "sidestep.progress"
CANCEL_REASON = "cancelled in ComfyUI"


def run_dir(run_name: str) -> Path:
    """A run's output folder: <ComfyUI output>/sidestep/<run name>."""
    return runs_dir() / run_name.strip()


def comfy_lora_path(run_name: str) -> Path:
    """Where the ComfyUI-native export of a run goes: <first loras folder>/sidestep_<run name>.safetensors."""
    return loras_dir() / f"sidestep_{run_name.strip()}.safetensors"


def _mtime(path: Path) -> int | None:
    """Modification time of a file or folder, None when it does not exist."""
    return path.stat().st_mtime_ns if path.exists() else None


def _event_payload(event: TrainingEvent) -> dict[str, Any]:
    """A training event as the widget receives it; previews also name their file as ComfyUI's /view route takes it."""
    payload = dataclasses.asdict(event)
    location = output_location(event.preview_path) if event.preview_path else None
    if location is not None:
        payload["preview_subfolder"], payload["preview_file"] = location
    return payload


def _defaults() -> dict[str, Any]:
    """TrainConfig's defaults by field name (the one place they are defined)."""
    from sidestep.training.config import TrainConfig

    return {field.name: field.default for field in dataclasses.fields(TrainConfig)}


class TrainAdapter(io.ComfyNode):
    """Train a LoRA/LoKR adapter on an encoded dataset; Cancel saves a checkpoint and a usable adapter first."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Model, dataset, adapter config and the training settings (TrainConfig's defaults) in; ADAPTER out."""
        from sidestep.training.config import OPTIMIZERS, PRECISIONS, SCHEDULERS, TIMESTEP_MODES
        from sidestep.training.run import PREVIEW_SECONDS

        default = _defaults()
        return io.Schema(
            node_id=NODE_TYPE,
            display_name="Train Adapter",
            category=CATEGORY,
            description=(
                f"Trains the adapter into <ComfyUI output>/{RUNS_FOLDER}/<run name>/ ({SUMMARY}) and writes a ComfyUI "
                "LoRA file models/loras/sidestep_<run name>.safetensors. Re-queueing the same settings reuses the finished adapter instead of training again."
            ),
            inputs=[
                AcestepModel.Input("model", tooltip="The model to train on (the same one the dataset was encoded with)."),
                AcestepDataset.Input("dataset", tooltip="The encoded dataset from Encode Dataset."),
                AdapterConfigType.Input("adapter_config", tooltip="The adapter to train, from Configure LoRA/LoKR."),
                io.String.Input(
                    "run_name",
                    default="my_lora",
                    tooltip=f"Name of the run's folder under <ComfyUI output>/{RUNS_FOLDER}/ and of the models/loras export.",
                ),
                io.Int.Input("epochs", default=default["epochs"], min=1, max=100_000, tooltip="Passes over the whole dataset."),
                io.Float.Input(
                    "learning_rate",
                    default=default["learning_rate"],
                    min=0.0000001,
                    max=10.0,
                    step=0.0000001,
                    tooltip="Step size: 1e-4 suits LoRA with AdamW; Prodigy expects 1.0.",
                ),
                io.Combo.Input(
                    "optimizer",
                    options=list(OPTIMIZERS),
                    default=default["optimizer"],
                    tooltip="adamw; adamw8bit (needs bitsandbytes); prodigy (needs prodigyopt, learning rate 1.0); adafactor.",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=list(SCHEDULERS),
                    default=default["scheduler"],
                    tooltip="How the learning rate changes over the run (after warm-up).",
                ),
                io.Int.Input(
                    "warmup_steps", default=default["warmup_steps"], min=0, max=100_000,
                    tooltip="Optimiser steps during which the learning rate ramps up from 0.",
                ),
                io.Int.Input("batch_size", default=default["batch_size"], min=1, max=64, tooltip="Clips per forward pass."),
                io.Int.Input(
                    "gradient_accumulation", default=default["gradient_accumulation"], min=1, max=1024,
                    tooltip="Batches summed per optimiser step (effective batch = batch_size x this).",
                ),
                io.Combo.Input(
                    "timestep_mode",
                    options=list(TIMESTEP_MODES),
                    default=default["timestep_mode"],
                    tooltip="auto: the 8 discrete turbo timesteps for turbo, continuous logit-normal for base/sft.",
                ),
                io.Float.Input(
                    "cfg_ratio",
                    default=-1.0,
                    min=-1.0,
                    max=0.99,
                    step=0.01,
                    tooltip=f"Share of samples trained without their caption (for guidance); -1 = auto ({per_base(lambda v: v.cfg_ratio)}).",
                ),
                io.Int.Input(
                    "save_every", default=default["save_every"], min=1, max=100_000,
                    tooltip="Write checkpoints/epoch_N (adapter + training state) every this many epochs.",
                ),
                io.Int.Input(
                    "seed",
                    default=default["seed"],
                    min=0,
                    max=2**31 - 1,
                    control_after_generate=False,
                    tooltip="Seed of every random choice in training (kept fixed: a new seed would mean a new run).",
                ),
                io.String.Input(
                    "resume_from",
                    default="",
                    tooltip=(
                        "Continue a run: 'latest' (this run's newest checkpoint) or a checkpoint folder such as "
                        "checkpoints/epoch_5 (relative paths are inside this run). Empty starts fresh."
                    ),
                ),
                io.Boolean.Input(
                    "gradient_checkpointing",
                    default=default["gradient_checkpointing"],
                    tooltip="Recompute activations in the backward pass: much less memory, about 30% slower.",
                ),
                io.Combo.Input(
                    "precision",
                    options=list(PRECISIONS),
                    default=default["precision"],
                    tooltip="Compute precision. auto: bf16 on CUDA and on CPUs with bf16 units (AMX, AVX-512 BF16), fp32 on other CPUs.",
                ),
                io.String.Input(
                    "preview_caption",
                    default=default["preview_caption"],
                    tooltip="Caption of the preview songs; empty uses the first clip's caption from the dataset.",
                ),
                io.Int.Input(
                    "preview_every",
                    default=default["preview_every"],
                    min=0,
                    max=100_000,
                    tooltip=(
                        f"Every this many epochs, generate a {PREVIEW_SECONDS:.0f} s preview into "
                        f"{RunLayout('').preview('N')}; 0 = off."
                    ),
                ),
            ],
            outputs=[Adapter.Output(display_name="adapter", tooltip=f"The trained adapter ({FINAL_FOLDER}/); connect it to Load Adapter.")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, run_name: str) -> bool | str:
        """A run name must be one plain folder name."""
        name = run_name.strip()
        if not name or name in (".", "..", DATASETS_FOLDER) or any(char in name for char in "/\\:"):
            return f"run_name {run_name!r} must be a plain folder name (no slashes), not empty and not {DATASETS_FOLDER!r}."
        return True

    @classmethod
    def fingerprint_inputs(cls, run_name: str, **_: object) -> object:
        """Re-run when the finished adapter or its ComfyUI export was deleted or rewritten outside this node."""
        return _mtime(RunLayout(run_dir(run_name)).final), _mtime(comfy_lora_path(run_name))

    @classmethod
    def execute(
        cls,
        model: ModelHandle,
        dataset: DatasetHandle,
        adapter_config: AdapterConfig,
        run_name: str,
        epochs: int,
        learning_rate: float,
        optimizer: str,
        scheduler: str,
        warmup_steps: int,
        batch_size: int,
        gradient_accumulation: int,
        timestep_mode: str,
        cfg_ratio: float,
        save_every: int,
        seed: int,
        resume_from: str,
        gradient_checkpointing: bool,
        precision: str,
        preview_caption: str,
        preview_every: int,
    ) -> io.NodeOutput:
        """Reuse the finished adapter of identical settings, else train (or resume)."""
        from sidestep.training.config import TrainConfig
        from sidestep.training.run import TrainingRun

        config = TrainConfig(
            output_dir=str(run_dir(run_name)),
            epochs=epochs,
            learning_rate=learning_rate,
            optimizer=optimizer,
            scheduler=scheduler,
            warmup_steps=warmup_steps,
            batch_size=batch_size,
            gradient_accumulation=gradient_accumulation,
            precision=precision,
            gradient_checkpointing=gradient_checkpointing,
            seed=seed,
            save_every=save_every,
            timestep_mode=timestep_mode,
            cfg_ratio=None if cfg_ratio < 0 else cfg_ratio,
            preview_every=preview_every,
            preview_caption=preview_caption.strip() or dataset.first_caption,
            resume_from=resume_from.strip() or None,
        )
        run = TrainingRun(model.bundle, dataset.index or dataset.folder, adapter_config, config)
        reused = run.finished(comfy_lora_path(run_name))
        if reused is not None:
            text = f"reused the finished adapter {reused.adapter_dir} (same settings)\n{reused.export_note}"
            return io.NodeOutput(_handle(run, reused), ui={"text": [text]})
        return cls._train(run, run_name)

    @classmethod
    def _train(cls, run: TrainingRun, run_name: str) -> io.NodeOutput:
        """Train (on a copy of the DiT of its own) as a registered job, reporting every event to the node's progress.
        Stop & save (the widget) saves and returns the adapter normally; Cancel lets the trainer save too, then ends
        the prompt as interrupted."""
        from sidestep.training.events import StopSignal

        stop = StopSignal()
        with JOBS.track(cls.hidden.unique_id, NODE_TYPE, stop) as job:
            progress = NodeProgress(job.node, job)

            def report(event: TrainingEvent) -> None:
                if stop.reason != CANCEL_REASON and event.total_steps and progress.advance(event.step, event.total_steps):
                    stop.request(CANCEL_REASON)
                if event.kind in ("epoch", "note", "checkpoint", "preview", "stopped", "finished"):
                    logging.info("[Side-Step] %s", {k: v for k, v in dataclasses.asdict(event).items() if v not in (None, "")})
                progress.send(EVENT, _event_payload(event))

            make_room(run.bundle)
            # ComfyUI runs nodes in inference mode; weights loaded and steps taken here must be usable by autograd.
            with torch.inference_mode(False), torch.enable_grad():
                outcome = run.train(report, stop, comfy_lora_path(run_name))
        if stop.reason == CANCEL_REASON:
            raise model_management.InterruptProcessingException()
        result = outcome.result
        loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
        text = (
            f"{result.status}: epoch {result.epochs_completed}/{run.config.epochs}, step {result.global_step}, loss {loss}\n"
            f"adapter: {result.adapter_dir}\n{outcome.export_note}"
        )
        return io.NodeOutput(_handle(run, outcome), ui={"text": [text]})


def _handle(run: TrainingRun, outcome: RunOutcome) -> AdapterHandle:
    """The ADAPTER a run's outcome travels as."""
    return AdapterHandle(path=outcome.adapter_dir, run_dir=run.layout.root, metadata=outcome.metadata, comfy_lora=outcome.comfy_lora)

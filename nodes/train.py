"""Train Adapter: run the core trainer inside ComfyUI with live progress, Cancel support and reuse of finished runs."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import comfy.model_management as model_management
import torch
from comfy_api.latest import io
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
    under,
)
from .handles import AcestepDataset, AcestepModel, Adapter, AdapterConfigType, AdapterHandle, DatasetHandle, ModelHandle
from .jobs import JOBS

if TYPE_CHECKING:
    from sidestep.adapters.config import AdapterConfig
    from sidestep.bundle import AceStepBundle
    from sidestep.training.config import TrainConfig
    from sidestep.training.events import StopSignal, TrainingEvent
    from sidestep.training.loop import PreviewFn, RunIdentity, TrainResult

NODE_TYPE = "SideStepTrainAdapter"
EVENT = "sidestep.progress"
LATEST = "latest"
PREVIEW_SECONDS = 10.0
CANCEL_REASON = "cancelled in ComfyUI"
# Settings that do not change the trained weights, so a finished adapter stays valid whatever they say.
_NOT_COMPARED = ("resume_from", "log_dir")


def run_dir(run_name: str) -> Path:
    """A run's output folder: <ComfyUI output>/sidestep/<run name>."""
    return runs_dir() / run_name.strip()


def comfy_lora_path(run_name: str) -> Path:
    """Where the ComfyUI-native export of a run goes: <first loras folder>/sidestep_<run name>.safetensors."""
    return loras_dir() / f"sidestep_{run_name.strip()}.safetensors"


def _mtime(path: Path) -> int | None:
    """Modification time of a file or folder, None when it does not exist."""
    return path.stat().st_mtime_ns if path.exists() else None


def _adapter_metadata(folder: Path) -> dict[str, str] | None:
    """The metadata in the header of the adapter weights inside `folder`, None when it holds no adapter."""
    from safetensors import safe_open

    from sidestep.adapters.files import resolve_adapter_path
    from sidestep.errors import AdapterError

    try:
        weights = resolve_adapter_path(folder)
    except AdapterError:
        return None
    with safe_open(str(weights), framework="pt") as handle:
        return dict(handle.metadata() or {})


def _comparable(train_config: dict[str, Any]) -> dict[str, Any]:
    """A training config as JSON values, without the settings that leave the weights unchanged."""
    return {key: value for key, value in json.loads(json.dumps(train_config)).items() if key not in _NOT_COMPARED}


def _is_finished(
    metadata: dict[str, str], config: TrainConfig, adapter_config: AdapterConfig, dataset_hash: str, identity: RunIdentity
) -> bool:
    """Whether an adapter's metadata says it completed exactly this training (same model, data and settings)."""
    try:
        saved_train = _comparable(json.loads(metadata.get("train_config", "{}")))
        saved_adapter = json.loads(metadata.get("adapter_config", "{}"))
    except ValueError:
        return False
    return (
        saved_train == _comparable(config.to_dict())
        and saved_adapter == json.loads(json.dumps(adapter_config.to_dict()))
        and metadata.get("dataset_hash") == dataset_hash
        and (metadata.get("variant"), metadata.get("base"), metadata.get("model_name"))
        == (identity.variant, identity.base, identity.model_name)
        and metadata.get("epochs") == str(config.epochs)
    )


def _resume_path(resume_from: str, out: Path) -> str | None:
    """The checkpoint to resume: none, the run's newest one ('latest'), or a folder (relative = inside the run)."""
    from sidestep.errors import TrainingError
    from sidestep.training.checkpoints import latest_checkpoint

    text = resume_from.strip()
    if not text:
        return None
    if text == LATEST:
        found = latest_checkpoint(out)
        if found is None:
            raise TrainingError(
                f"resume_from is 'latest' but {out} has no checkpoints/epoch_N folder yet. "
                "Train this run once (or clear resume_from)."
            )
        return str(found)
    return str(under(out, text))


def _export(adapter_dir: Path, target: Path, adapter_config: AdapterConfig, replace: bool) -> tuple[Path | None, str]:
    """Write the ComfyUI-native LoRA file (kept when it exists and `replace` is off); (None, why) for DoRA /
    weight-decomposed adapters, which ComfyUI's LoRA loader cannot reproduce."""
    from sidestep.adapters.export import export_comfy

    if adapter_config.use_dora if adapter_config.kind == "lora" else adapter_config.weight_decompose:
        return None, "not exported: ComfyUI's LoRA loader cannot reproduce weight decomposition (DoRA)"
    if replace or not target.is_file():
        export_comfy(adapter_dir, target)
    return target, f"ComfyUI LoRA: {target}"


def _previewer(bundle: AceStepBundle, config: TrainConfig, out: Path, caption: str) -> PreviewFn:
    """A preview function for the trainer: a short song with the weights being trained → OUT/previews/epoch_N.flac."""
    shift, steps = config.inference_defaults(bundle.base)
    schedule = {"shift": str(shift), "num_inference_steps": str(steps)}

    def preview(epoch: int, _model: object) -> str:
        from sidestep.audio import save_audio
        from sidestep.generate import GenerationRequest, generate

        # The bundle's DiT is the model under training, so `generate` hears the current adapter weights.
        request = GenerationRequest(caption=caption, duration=PREVIEW_SECONDS, seed=config.seed)
        result = generate(bundle, request, adapter_metadata=schedule)
        return str(save_audio(out / "previews" / f"epoch_{epoch}.flac", result.waveform[0], result.sample_rate))

    return preview


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

        default = _defaults()
        return io.Schema(
            node_id=NODE_TYPE,
            display_name="Train Adapter",
            category=CATEGORY,
            description=(
                f"Trains the adapter into <ComfyUI output>/{RUNS_FOLDER}/<run name>/ (final/, checkpoints/epoch_N/, "
                "runs/ for TensorBoard, previews/) and writes a ComfyUI LoRA file models/loras/sidestep_<run name>."
                "safetensors. Re-queueing the same settings reuses the finished adapter instead of training again."
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
                    tooltip="Compute precision. auto: bf16 on CUDA, fp32 on the CPU.",
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
                    tooltip=f"Every this many epochs, generate a {PREVIEW_SECONDS:.0f} s preview into previews/epoch_N.flac; 0 = off.",
                ),
            ],
            outputs=[Adapter.Output(display_name="adapter", tooltip="The trained adapter (final/); connect it to Load Adapter.")],
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
        return _mtime(run_dir(run_name) / "final"), _mtime(comfy_lora_path(run_name))

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
        from sidestep.dataset.tensors import read_manifest
        from sidestep.training.config import TrainConfig
        from sidestep.training.loop import RunIdentity

        bundle = model.bundle
        out = run_dir(run_name)
        config = TrainConfig(
            output_dir=str(out),
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
        )
        identity = RunIdentity(variant=bundle.variant, base=bundle.base, model_name=bundle.entry.name)
        manifest = read_manifest(dataset.folder)
        metadata = _adapter_metadata(out / "final")
        dataset_hash = manifest.content_hash() if manifest is not None else ""
        if metadata is not None and _is_finished(metadata, config, adapter_config, dataset_hash, identity):
            exported, note = _export(out / "final", comfy_lora_path(run_name), adapter_config, replace=False)
            handle = AdapterHandle(path=out / "final", run_dir=out, metadata=metadata, comfy_lora=exported)
            return io.NodeOutput(handle, ui={"text": [f"reused the finished adapter {out / 'final'} (same settings)\n{note}"]})
        config = dataclasses.replace(config, resume_from=_resume_path(resume_from, out))
        return cls._train(bundle, dataset, adapter_config, config, identity, run_name)

    @classmethod
    def _train(
        cls,
        bundle: AceStepBundle,
        dataset: DatasetHandle,
        adapter_config: AdapterConfig,
        config: TrainConfig,
        identity: RunIdentity,
        run_name: str,
    ) -> io.NodeOutput:
        """Train on a private copy of the DiT as a registered job. Stop & save (the widget) saves and returns the
        adapter normally; Cancel lets the trainer save too, then ends the prompt as interrupted."""
        from sidestep.training.events import StopSignal

        out = Path(config.output_dir)
        stop = StopSignal()
        with JOBS.track(cls.hidden.unique_id, NODE_TYPE, stop) as job:
            result = cls._run_trainer(bundle, dataset, adapter_config, config, identity, NodeProgress(job.node, job), stop)
        exported, note = _export(result.adapter_dir, comfy_lora_path(run_name), adapter_config, replace=True)
        if stop.reason == CANCEL_REASON:
            raise model_management.InterruptProcessingException()
        loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
        text = (
            f"{result.status}: epoch {result.epochs_completed}/{config.epochs}, step {result.global_step}, loss {loss}\n"
            f"adapter: {result.adapter_dir}\n{note}"
        )
        metadata = _adapter_metadata(result.adapter_dir) or {}
        handle = AdapterHandle(path=result.adapter_dir, run_dir=out, metadata=metadata, comfy_lora=exported)
        return io.NodeOutput(handle, ui={"text": [text]})

    @staticmethod
    def _run_trainer(
        bundle: AceStepBundle,
        dataset: DatasetHandle,
        adapter_config: AdapterConfig,
        config: TrainConfig,
        identity: RunIdentity,
        progress: NodeProgress,
        stop: StopSignal,
    ) -> TrainResult:
        """Run the trainer, reporting every event to the node's progress; Cancel becomes a stop request."""
        from sidestep.model import PARTS, TRAINING_PARTS
        from sidestep.training.loop import Trainer

        def report(event: TrainingEvent) -> None:
            if stop.reason != CANCEL_REASON and event.total_steps and progress.advance(event.step, event.total_steps):
                stop.request(CANCEL_REASON)
            if event.kind in ("epoch", "note", "checkpoint", "preview", "stopped", "finished"):
                logging.info("[Side-Step] %s", {k: v for k, v in dataclasses.asdict(event).items() if v not in (None, "")})
            progress.send(EVENT, _event_payload(event))

        make_room(bundle)
        previews = config.preview_every > 0
        parts = PARTS if previews else TRAINING_PARTS
        # ComfyUI runs nodes in inference mode; weights loaded and steps taken here must be usable by autograd.
        with torch.inference_mode(False), torch.enable_grad():
            # Training injects adapter layers: train a private DiT over the shared one's weights (which stay clean).
            private = bundle.with_own_dit(parts)
            dit = private.dit(parts)
            preview = _previewer(private, config, Path(config.output_dir), config.preview_caption) if previews else None
            return Trainer(dit, dataset.folder, adapter_config, config, identity, report, stop, preview).run()

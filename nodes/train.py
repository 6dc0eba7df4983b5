"""Train Adapter: run the core trainer inside ComfyUI with live progress, Cancel support and reuse of finished runs."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from comfy import model_management
from comfy_api.latest import io

from ..sidestep.settings import from_widgets
from ..sidestep.training.config import TrainConfig
from ..sidestep.training.layout import FINAL_FOLDER, SUMMARY, RunLayout
from .folders import DATASETS_FOLDER, RUNS_FOLDER, loras_dir, output_location, runs_dir
from .handles import (
    CATEGORY,
    AcestepDataset,
    AcestepModel,
    Adapter,
    AdapterConfigType,
    AdapterHandle,
    DatasetHandle,
    ModelHandle,
)
from .jobs import JOBS
from .memory import make_room
from .progress import NodeProgress
from .settings import setting_inputs

if TYPE_CHECKING:
    from ..sidestep.adapters.config import AdapterConfig
    from ..sidestep.training.events import TrainingEvent
    from ..sidestep.training.run import RunOutcome, TrainingRun

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


class TrainAdapter(io.ComfyNode):
    """Train a LoRA/LoKR adapter on an encoded dataset; Cancel saves a checkpoint and a usable adapter first."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Model, dataset, adapter config and the training settings (TrainConfig's defaults) in; ADAPTER out."""
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
                *setting_inputs(TrainConfig),
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
        cls, model: ModelHandle, dataset: DatasetHandle, adapter_config: AdapterConfig, run_name: str, **settings: Any
    ) -> io.NodeOutput:
        """Reuse the finished adapter of identical settings, else train (or resume)."""
        from ..sidestep.training.run import TrainingRun

        values = from_widgets(TrainConfig, settings)
        config = TrainConfig(
            **{**values, "preview_caption": values.get("preview_caption") or dataset.first_caption},
            output_dir=str(run_dir(run_name)),
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
        from ..sidestep.training.events import StopSignal, TrainingEvent
        from ..sidestep.training.vram import fit_warning

        estimate = run.vram_estimate()
        warning = fit_warning(estimate, run.bundle.device)
        logging.info("[Side-Step] %s", "\n".join(estimate.lines()))
        if warning:
            logging.warning("[Side-Step] %s", warning)
        stop = StopSignal()
        with JOBS.track(cls.hidden.unique_id, NODE_TYPE, stop) as job:
            progress = NodeProgress(job.node, job)

            def report(event: TrainingEvent) -> None:
                if stop.reason != CANCEL_REASON and event.total_steps and progress.advance(event.step, event.total_steps):
                    stop.request(CANCEL_REASON)
                if event.kind in ("epoch", "note", "checkpoint", "preview", "stopped", "finished"):
                    logging.info("[Side-Step] %s", {k: v for k, v in dataclasses.asdict(event).items() if v not in (None, "")})
                progress.send(EVENT, _event_payload(event))

            report(TrainingEvent(kind="note", message=" ".join(filter(None, [estimate.lines()[0], warning]))))
            make_room(run.bundle)
            # ComfyUI runs nodes in inference mode; weights loaded and steps taken here must be usable by autograd.
            with torch.inference_mode(False), torch.enable_grad():
                outcome = run.train(report, stop, comfy_lora_path(run_name))
        if stop.reason == CANCEL_REASON:
            raise model_management.InterruptProcessingException()
        result = outcome.result
        loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
        best = f"lowest validation loss: {result.best_text()}" if result.best_epoch is not None else ""
        lines = [
            f"{result.status}: epoch {result.epochs_completed}/{run.config.epochs}, step {result.global_step}, loss {loss}",
            best, f"adapter: {result.adapter_dir}", outcome.export_note, estimate.lines()[0],
            f"warning: {warning}" if warning else "",
        ]
        text = "\n".join(line for line in lines if line)
        return io.NodeOutput(_handle(run, outcome), ui={"text": [text]})


def _handle(run: TrainingRun, outcome: RunOutcome) -> AdapterHandle:
    """The ADAPTER a run's outcome travels as."""
    return AdapterHandle(path=outcome.adapter_dir, run_dir=run.layout.root, metadata=outcome.metadata, comfy_lora=outcome.comfy_lora)

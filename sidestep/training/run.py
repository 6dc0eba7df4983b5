"""A training run's home: the trainer built from a model, "already finished?", resume (including `latest`), the
ComfyUI export policy and previews — what the node, the CLI, the demo and the benchmarks share."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..adapters.config import AdapterConfig
from ..adapters.metadata import AdapterMetadata
from ..dataset.loader import DatasetIndex, dataset_index
from ..errors import AdapterError, TrainingError
from ..model import PARTS, TRAINING_PARTS
from .checkpoints import latest_checkpoint
from .config import TrainConfig
from .events import EventCallback, StopSignal, TrainingEvent
from .layout import RunLayout, complete_checkpoints
from .loop import PreviewFn, RunIdentity, Trainer, TrainResult
from .runfolder import RunLock, earlier_run_files, empty_run_folder
from .vram import VramEstimate, clip_seconds, estimate_training_vram, storage_name

if TYPE_CHECKING:
    from ..bundle import AceStepBundle

LATEST = "latest"
PREVIEW_SECONDS = 10.0
# Settings that do not change the trained weights, so a finished adapter stays valid whatever they say.
_NOT_COMPARED = ("resume_from", "log_dir", "overwrite")
DORA_NOT_EXPORTED = "not exported: ComfyUI's LoRA loader cannot reproduce weight decomposition (DoRA)"


@dataclass
class RunOutcome:
    """A run's adapter (trained now, or reused when `result` is None), its metadata and the ComfyUI export."""

    adapter_dir: Path
    metadata: AdapterMetadata
    comfy_lora: Path | None = None
    export_note: str = ""
    result: TrainResult | None = None


def identity_of(bundle: AceStepBundle) -> RunIdentity:
    """What an adapter trained on this bundle's model is for."""
    return RunIdentity(variant=bundle.variant, base=bundle.base, model_name=bundle.entry.name)


def adapter_metadata(folder: Path) -> AdapterMetadata | None:
    """The training record in the header of the adapter weights inside `folder`, None when it holds no adapter."""
    from safetensors import safe_open

    from ..adapters.files import resolve_adapter_path

    try:
        weights = resolve_adapter_path(folder)
    except AdapterError:
        return None
    with safe_open(str(weights), framework="pt") as handle:
        return AdapterMetadata.from_header(handle.metadata() or {})


def _comparable(train_config: dict[str, Any]) -> dict[str, Any]:
    """A training config as JSON values, without the settings that leave the weights unchanged."""
    return {key: value for key, value in json.loads(json.dumps(train_config)).items() if key not in _NOT_COMPARED}


def is_finished(
    metadata: AdapterMetadata, config: TrainConfig, adapter_config: AdapterConfig, dataset_hash: str, identity: RunIdentity
) -> bool:
    """Whether an adapter's metadata says it completed exactly this training (same model, data and settings)."""
    return (
        _comparable(metadata.train_config or {}) == _comparable(config.to_dict())
        and metadata.adapter_config == adapter_config
        and metadata.dataset_hash == dataset_hash
        and (metadata.variant, metadata.base, metadata.model_name) == (identity.variant, identity.base, identity.model_name)
        and metadata.epochs == config.epochs
    )


def resume_checkpoint(resume_from: str | None, run_dir: Path) -> str | None:
    """The checkpoint to resume: none, the run's newest one ('latest'), or a folder (relative = inside the run)."""
    text = (resume_from or "").strip()
    if not text:
        return None
    if text == LATEST:
        found = latest_checkpoint(run_dir)
        if found is None:
            raise TrainingError(
                f"`resume_from` is 'latest' but {run_dir} has no checkpoints/epoch_N folder yet. "
                "Train this run once (without `resume_from`)."
            )
        return str(found)
    path = Path(text).expanduser()
    return str(path if path.is_absolute() else run_dir / path)


def describe_earlier_run(run_dir: Path) -> str:
    """What an earlier run in `run_dir` was, from its newest adapter's record (else the files it left)."""
    layout = RunLayout(run_dir)
    checkpoints = complete_checkpoints(layout.checkpoints)
    for folder, state in ((layout.final, "final/ written"), *((c, f"newest checkpoint {c.name}") for c in reversed(checkpoints))):
        metadata = adapter_metadata(folder)
        if metadata is not None and metadata.adapter_config is not None:
            train = metadata.train_config or {}
            planned = f" of {train['epochs']}" if "epochs" in train else ""
            lr = f", lr {train['learning_rate']:g}" if "learning_rate" in train else ""
            model = f" on {metadata.model_name}" if metadata.model_name else ""
            return f"{metadata.adapter_config.describe()}{lr}{model}; {state} after epoch {metadata.epochs}{planned}"
    return "it left " + ", ".join(entry.name for entry in earlier_run_files(run_dir))


def export_for_comfy(adapter_dir: Path, target: Path, adapter_config: AdapterConfig, replace: bool) -> tuple[Path | None, str]:
    """Write the ComfyUI-native LoRA file (kept when it exists and `replace` is off); (None, why) for DoRA /
    weight-decomposed adapters, which ComfyUI's LoRA loader cannot reproduce."""
    from ..adapters.export import export_comfy
    from ..adapters.files import load_adapter

    if adapter_config.decomposes_weight:
        return None, DORA_NOT_EXPORTED
    if replace or not target.is_file():
        export_comfy(load_adapter(adapter_dir), target)
    return target, f"ComfyUI LoRA: {target}"


def previewer(bundle: AceStepBundle, config: TrainConfig) -> PreviewFn:
    """A preview function for the trainer: a short song with the weights being trained → RUN/previews/epoch_N.flac."""
    shift, steps = config.inference_defaults(bundle.base)
    schedule = AdapterMetadata(shift=shift, num_inference_steps=steps)
    layout = RunLayout(config.output_dir)

    def preview(epoch: int, _model: object) -> str:
        from ..audio import save_audio
        from ..generate import GenerationRequest, generate

        # The bundle's DiT is the model under training, so `generate` hears the current adapter weights.
        request = GenerationRequest(caption=config.preview_caption, duration=PREVIEW_SECONDS, seed=config.seed)
        result = generate(bundle, request, adapter_metadata=schedule)
        return str(save_audio(layout.preview(epoch), result.waveform[0], result.sample_rate))

    return preview


class TrainingRun:
    """One adapter trained on a bundle's model and an encoded dataset, in the run folder `config.output_dir`."""

    def __init__(
        self, bundle: AceStepBundle, dataset: str | Path | DatasetIndex, adapter_config: AdapterConfig, config: TrainConfig
    ) -> None:
        self.bundle = bundle
        self.dataset = dataset if isinstance(dataset, DatasetIndex) else dataset_index(dataset)
        self.adapter_config = adapter_config
        self.config = config
        self.identity = identity_of(bundle)
        self.layout = RunLayout(config.output_dir)

    def vram_estimate(self) -> VramEstimate:
        """The GPU memory this run's step needs (see `vram.estimate_training_vram`), from the model's config and the
        dataset's manifest only: nothing heavy is loaded."""
        config = self.config
        return estimate_training_vram(
            self.bundle.entry.config, self.adapter_config, config.optimizer, config.gradient_checkpointing,
            storage_name(self.bundle.weights_dtype()), clip_seconds(self.dataset, config.max_latent_frames), config.batch_size,
        )

    def finished(self, comfy_lora: Path | None = None) -> RunOutcome | None:
        """The run's final adapter when it completed exactly this training (its ComfyUI export written to
        `comfy_lora` if missing), else None."""
        metadata = adapter_metadata(self.layout.final)
        if metadata is None or not is_finished(
            metadata, self.config, self.adapter_config, self.dataset.content_hash, self.identity
        ):
            return None
        return self._outcome(self.layout.final, metadata, comfy_lora, replace=False)

    def claim_folder(self) -> str:
        """One run per folder: a new run (no `resume_from`) starts in an empty run folder, emptied first with
        `overwrite`, else refused with the earlier run's settings and the ways on. Returns a note on what was deleted."""
        root = self.layout.root
        if self.config.resume_from or not earlier_run_files(root):
            return ""
        with RunLock(root):  # a run still writing there is named first, and never disturbed
            if not self.config.overwrite:
                raise TrainingError(
                    f"The run folder {root} already holds a run ({describe_earlier_run(root)}). A folder holds one "
                    "run: continue it with `resume_from` latest, start over with `overwrite` (deletes what is in the "
                    "folder first), or train into another folder."
                )
            removed = empty_run_folder(root)
        return f"starting over: deleted the earlier run in {root} ({', '.join(entry.name for entry in removed)})"

    def trainer(self, callback: EventCallback | None = None, stop: StopSignal | None = None) -> Trainer:
        """The trainer on a DiT of its own: a private module tree over the bundle's weights (training injects adapter
        layers; the bundle's DiT stays clean), with every part when previews are on. Call it outside inference mode.
        `resume_from` is read as in `resume_checkpoint`."""
        previews = self.config.preview_every > 0
        parts = PARTS if previews else TRAINING_PARTS
        bundle = self.bundle.with_own_dit(parts)
        config = dataclasses.replace(self.config, resume_from=resume_checkpoint(self.config.resume_from, self.layout.root))
        preview = previewer(bundle, config) if previews else None
        model = bundle.dit(parts)
        return Trainer(model, self.dataset, self.adapter_config, config, self.identity, callback, stop, preview)

    def train(
        self,
        callback: EventCallback | None = None,
        stop: StopSignal | None = None,
        comfy_lora: Path | None = None,
    ) -> RunOutcome:
        """Train (or resume) to the end or until stopped, in a run folder of its own (`claim_folder`); with
        `comfy_lora`, also write the ComfyUI export there."""
        note = self.claim_folder()
        if note and callback is not None:
            callback(TrainingEvent(kind="note", message=note))
        result = self.trainer(callback, stop).run()
        outcome = self._outcome(result.adapter_dir, adapter_metadata(result.adapter_dir) or AdapterMetadata(), comfy_lora, replace=True)
        return dataclasses.replace(outcome, result=result)

    def _outcome(self, adapter_dir: Path, metadata: AdapterMetadata, comfy_lora: Path | None, replace: bool) -> RunOutcome:
        if comfy_lora is None:
            return RunOutcome(adapter_dir, metadata)
        exported, note = export_for_comfy(adapter_dir, comfy_lora, self.adapter_config, replace)
        return RunOutcome(adapter_dir, metadata, exported, note)

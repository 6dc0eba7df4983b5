"""Training-ready clip tensors (one safetensors file per clip) and the dataset's `manifest.json`.

Side-Step `.pt` tensor files with the same keys are read too (with `torch.load(weights_only=True)` only), and so is
the `manifest.json` ACE-Step writes beside its own tensor files (`{"metadata": ..., "samples": [paths], ...}`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..atomic import save_safetensors_atomic, write_text_atomic
from ..errors import DatasetError

CLIP_KEYS = ("target_latents", "attention_mask", "encoder_hidden_states", "encoder_attention_mask", "context_latents")
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


@dataclass
class ClipRecord:
    """One encoded clip: where it came from, what it says, and its tensor file."""

    file: str
    source: str
    source_hash: str
    duration: float
    caption: str
    lyrics: str
    metadata: dict[str, Any] = field(default_factory=dict)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    chunk_index: int = 0
    chunk_count: int = 1
    offset_seconds: float = 0.0


@dataclass
class Rejection:
    """A source file that was skipped, and why."""

    source: str
    reason: str


@dataclass
class Manifest:
    """The dataset index: model it was encoded for, the clips, and the rejected files."""

    model_variant: str
    encoder_fingerprint: str
    model_name: str = ""
    audio_dir: str = ""
    clips: list[ClipRecord] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    version: int = MANIFEST_VERSION

    def content_hash(self) -> str:
        """A short hash of what training reads (clip files, their sources and captions), for adapter metadata."""
        payload = [(c.file, c.source_hash, c.caption, c.lyrics, c.chunk_index) for c in self.clips]
        text = json.dumps([self.model_variant, self.encoder_fingerprint, payload], sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Write `manifest.json` atomically."""
    write_text_atomic(Path(folder) / MANIFEST_NAME, json.dumps(dataclasses.asdict(manifest), indent=2, ensure_ascii=False) + "\n")


def _manifest_json(folder: Path) -> dict[str, Any] | None:
    """The parsed `manifest.json` of a folder (None when there is none)."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path} cannot be read as JSON ({exc}). Delete it and encode the dataset again.") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path} is not a dataset manifest (not a JSON object). Delete it and encode the dataset again.")
    return data


def _is_ace_step_index(data: dict[str, Any]) -> bool:
    return "samples" in data and "clips" not in data


def read_manifest(folder: Path) -> Manifest | None:
    """Read our `manifest.json` from a dataset folder; None when there is none (or it is ACE-Step's own index)."""
    data = _manifest_json(folder)
    if data is None or _is_ace_step_index(data):
        return None
    path = Path(folder) / MANIFEST_NAME
    try:
        clips = [ClipRecord(**clip) for clip in data.pop("clips", [])]
        rejected = [Rejection(**item) for item in data.pop("rejected", [])]
        manifest = Manifest(**data, clips=clips, rejected=rejected)
    except TypeError as exc:
        raise DatasetError(f"{path} is not a valid Side-Step manifest ({exc}). Delete it and encode the dataset again.") from exc
    outside = [clip.file for clip in clips if Path(clip.file).name != clip.file or clip.file in ("", ".", "..")]
    if outside:
        raise DatasetError(f"{path} lists clip files outside its folder ({', '.join(outside[:3])}). Encode the dataset again.")
    return manifest


def read_sample_paths(folder: Path) -> list[Path] | None:
    """The tensor files an ACE-Step `manifest.json` lists (None when the folder has no such index).

    A listed path is used as written when it exists (absolute, or relative to the folder); otherwise the file of
    that name inside the folder is used, so a tensor folder that was moved or copied keeps working.
    """
    folder = Path(folder)
    data = _manifest_json(folder)
    if data is None or not _is_ace_step_index(data):
        return None
    samples = data["samples"]
    if not isinstance(samples, list) or not all(isinstance(sample, str) and sample for sample in samples):
        raise DatasetError(f"{folder / MANIFEST_NAME}: \"samples\" must be a list of tensor file paths; fix or delete the file.")
    paths = []
    for sample in samples:
        listed = folder / sample
        paths.append(listed if listed.is_file() else folder / re.split(r"[\\/]", sample)[-1])
    return paths


def save_clip(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write one clip's tensors (unbatched: [T, 64], [T], [L, H], [L], [T, 128]) atomically."""
    try:
        save_safetensors_atomic({key: tensors[key] for key in CLIP_KEYS}, Path(path), metadata=metadata)
    except (OSError, SafetensorError) as exc:
        raise DatasetError(
            f"Cannot write the clip file {path} ({exc}). Free some space (or choose a folder you can write to) and "
            "encode again: the songs already encoded are kept and not encoded twice."
        ) from exc


def load_clip(path: Path) -> dict[str, torch.Tensor]:
    """Read one clip (our safetensors or a Side-Step `.pt`), dropping a leading batch dim of 1."""
    path = Path(path)
    try:
        if path.suffix == ".pt":
            raw = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raw = load_file(path)
    except pickle.UnpicklingError as exc:
        raise DatasetError(
            f"{path} holds objects other than tensors and plain values, which are not loaded for safety ({exc}). "
            "Re-encode the dataset."
        ) from exc
    except (OSError, RuntimeError, SafetensorError, EOFError, ValueError) as exc:
        raise DatasetError(f"Cannot read tensor file {path}: {exc}. Re-encode the dataset.") from exc
    if not isinstance(raw, dict):
        raise DatasetError(f"{path} does not hold a dictionary of tensors; it is not a Side-Step tensor file.")
    missing = [key for key in CLIP_KEYS if not isinstance(raw.get(key), torch.Tensor)]
    if missing:
        raise DatasetError(f"{path} lacks the tensors {', '.join(missing)}. Re-encode the dataset with this version.")
    clip = {}
    for key in CLIP_KEYS:
        tensor = raw[key]
        expected_dims = 1 if key.endswith("mask") else 2
        if tensor.dim() == expected_dims + 1 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.dim() != expected_dims:
            raise DatasetError(f"{path}: '{key}' has shape {list(raw[key].shape)}; expected {expected_dims} dims (or a batch of 1).")
        clip[key] = tensor.float()
    frames = clip["target_latents"].shape[0]
    if clip["attention_mask"].shape[0] != frames or clip["context_latents"].shape[0] != frames:
        raise DatasetError(f"{path}: target_latents, attention_mask and context_latents disagree in length. Re-encode the dataset.")
    if clip["encoder_attention_mask"].shape[0] != clip["encoder_hidden_states"].shape[0]:
        raise DatasetError(f"{path}: encoder_hidden_states and encoder_attention_mask disagree in length. Re-encode the dataset.")
    return clip

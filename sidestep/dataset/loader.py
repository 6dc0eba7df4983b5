"""Streaming access to an encoded dataset: random crops, padded batches and a reproducible data order."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DatasetError
from .tensors import CLIP_KEYS, Manifest, load_clip, read_manifest, read_sample_paths


def _seeded(*values: int) -> torch.Generator:
    """A generator seeded from a tuple of integers (any size, no collisions between nearby tuples)."""
    digest = hashlib.sha256(repr(values).encode("ascii")).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@dataclass(frozen=True)
class DatasetIndex:
    """A dataset folder read once: our manifest (None for an ACE-Step index or loose tensor files), the clip files and
    the manifest's content hash ("" without one), passed along so a run never reads or hashes the manifest again."""

    folder: Path
    manifest: Manifest | None
    files: tuple[Path, ...]
    content_hash: str


def dataset_index(folder: str | Path, manifest: Manifest | None = None) -> DatasetIndex:
    """Index a dataset folder: from `manifest` when the caller holds it (just encoded), else read from the folder —
    our manifest's clips, an ACE-Step manifest's samples, else every .pt/.safetensors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"Dataset folder {folder} does not exist. Encode a dataset first (Encode Dataset / `sidestep encode`).")
    manifest = manifest if manifest is not None else read_manifest(folder)
    if manifest is not None:
        files = [folder / clip.file for clip in manifest.clips]
    else:
        samples = read_sample_paths(folder)
        files = samples if samples is not None else sorted(folder.glob("*.pt")) + sorted(folder.glob("*.safetensors"))
    return DatasetIndex(folder, manifest, tuple(files), manifest.content_hash() if manifest is not None else "")


class ClipDataset(Dataset):
    """The clips of a dataset (a folder, or its `DatasetIndex`), cropped to `max_frames` latent frames.

    Crops are drawn from a generator seeded by (seed, epoch, index), so a resumed run sees the same crops.
    """

    def __init__(self, dataset: str | Path | DatasetIndex, max_frames: int | None = None, seed: int = 0) -> None:
        self.index = dataset if isinstance(dataset, DatasetIndex) else dataset_index(dataset)
        self.folder, self.manifest, self.files = self.index.folder, self.index.manifest, list(self.index.files)
        if not self.files:
            raise DatasetError(f"{self.folder} holds no encoded clips (no manifest.json, .safetensors or .pt files).")
        missing = [str(path) for path in self.files if not path.is_file()]
        if missing:
            raise DatasetError(
                f"The manifest in {self.folder} lists {len(missing)} missing clip file(s), e.g. {', '.join(missing[:3])}. Encode again."
            )
        self.max_frames = max_frames
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose crops `__getitem__` returns."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        clip = load_clip(self.files[index])
        frames = clip["target_latents"].shape[0]
        if self.max_frames and frames > self.max_frames:
            start = int(torch.randint(frames - self.max_frames + 1, (1,), generator=_seeded(self.seed, self.epoch, index)))
            for key in ("target_latents", "attention_mask", "context_latents"):
                clip[key] = clip[key][start : start + self.max_frames]
        return clip


def collate_clips(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack clips into a batch, zero-padding latent frames and condition tokens (their masks mark the padding)."""
    batch: dict[str, torch.Tensor] = {}
    for key in CLIP_KEYS:
        tensors = [item[key] for item in items]
        length = max(tensor.shape[0] for tensor in tensors)
        padded = tensors[0].new_zeros((len(tensors), length, *tensors[0].shape[1:]))
        for row, tensor in enumerate(tensors):
            padded[row, : tensor.shape[0]] = tensor
        batch[key] = padded
    return batch


def epoch_order(size: int, seed: int, epoch: int) -> list[int]:
    """The shuffled clip order of one epoch, a pure function of (seed, epoch)."""
    return torch.randperm(size, generator=_seeded(seed, epoch)).tolist()


def make_loader(dataset: ClipDataset, order: list[int], batch_size: int, num_workers: int = 0) -> DataLoader:
    """A loader that yields batches in exactly `order` (workers prefetch ahead of the training step)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=order,
        collate_fn=collate_clips,
        num_workers=num_workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )

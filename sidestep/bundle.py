"""One chosen ACE-Step model with its shared parts (VAE, text encoder, silence latent), loaded lazily and cached."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoints import ModelEntry, SharedParts, find_model, find_shared_parts, load_silence_latent, resolve_base
from .model import PARTS, AceStepConditionGenerationModel


@dataclass
class AceStepBundle:
    """A model folder plus everything it needs; each part is loaded on first use and kept until `release`."""

    root: Path
    entry: ModelEntry
    base: str
    shared: SharedParts
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _dit: AceStepConditionGenerationModel | None = field(default=None, repr=False)
    _vae: object | None = field(default=None, repr=False)
    _text_encoder: object | None = field(default=None, repr=False)
    _silence: torch.Tensor | None = field(default=None, repr=False)

    @property
    def variant(self) -> str:
        """The official variant name (turbo, base, sft, xl-turbo, ...) or the custom folder's name."""
        return self.entry.variant or self.entry.name

    def dit(self, parts: tuple[str, ...] = PARTS) -> AceStepConditionGenerationModel:
        """The DiT model with at least `parts` loaded (reloaded with more parts when asked for)."""
        loaded = self._dit
        if loaded is None or any(getattr(loaded, part) is None for part in parts):
            self._dit = None
            self._dit = AceStepConditionGenerationModel.from_pretrained(
                self.entry.path, dtype=self.dtype, device=self.device, parts=parts
            )
        return self._dit

    def vae(self):
        """The Oobleck VAE (kept in fp32: it is small and bf16 audio decoding loses detail)."""
        if self._vae is None:
            from .vae import load_vae

            self._vae = load_vae(self.shared.vae_dir, dtype=torch.float32, device=self.device)
        return self._vae

    def text_encoder(self):
        """The Qwen3-Embedding text encoder."""
        if self._text_encoder is None:
            from .text import TextEncoder

            self._text_encoder = TextEncoder.load(self.shared.text_encoder_dir, dtype=torch.float32, device=self.device)
        return self._text_encoder

    def silence_latent(self) -> torch.Tensor:
        """The silence latent in memory layout [1, T, 64]."""
        if self._silence is None:
            self._silence = load_silence_latent(self.shared.silence_latent_path)
        return self._silence

    def with_own_dit(self) -> "AceStepBundle":
        """A copy sharing the loaded VAE, text encoder and silence latent but loading its own DiT (e.g. to train on)."""
        return dataclasses.replace(self, _dit=None)

    def release(self, *, dit: bool = False, vae: bool = False, text_encoder: bool = False) -> None:
        """Drop loaded parts so their memory can be reused."""
        if dit:
            self._dit = None
        if vae:
            self._vae = None
        if text_encoder:
            self._text_encoder = None


def open_checkpoint(
    root: str | Path,
    model: str,
    base: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> AceStepBundle:
    """Find `model` under the checkpoint root, settle its base (turbo/base/sft) and locate its shared parts."""
    root = Path(root)
    entry = find_model(root, model)
    return AceStepBundle(
        root=root,
        entry=entry,
        base=resolve_base(entry, base),
        shared=find_shared_parts(root, entry),
        dtype=dtype,
        device=torch.device(device),
    )

"""ComfyUI's own ACE-Step 1.5 files (VAE, text encoder, silence latent, all-in-one checkpoints) in our layouts.

ComfyUI users keep ACE-Step 1.5 as Comfy-Org's repackaged files: `models/vae/ace_1.5_vae.safetensors` (the Oobleck
VAE in the stable-audio-tools key layout), `models/text_encoders/qwen_0.6b_ace15.safetensors` (Qwen3-Embedding-0.6B
under `model.`), or one all-in-one file in `models/checkpoints/` with ComfyUI's checkpoint prefixes. ComfyUI has no
silence_latent.pt: it builds the silence latent from numbers in its source, stored here in `data/`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

from .errors import CheckpointError

COMFY_FILES = "https://huggingface.co/Comfy-Org/ace_step_1.5_ComfyUI_files (split_files/)"
AIO_DIT_PREFIX = "model.diffusion_model."
AIO_VAE_PREFIX = "vae."
AIO_TEXT_ENCODER_PREFIX = "text_encoders.qwen3_06b.transformer."

_SILENCE_DATA = Path(__file__).parent / "data" / "comfy_silence_latent.safetensors"
COMFY_SILENCE_FRAMES = 15_000  # 10 minutes at 25 Hz, ACE-Step 1.5's longest song


def read_prefixed(path: str | Path, prefix: str) -> dict[str, Tensor]:
    """The tensors of a safetensors file whose names start with `prefix`, prefix stripped; other tensors stay unread."""
    path = Path(path)
    try:
        with safe_open(path, framework="pt") as handle:
            names = [name for name in handle.keys() if name.startswith(prefix)]
            tensors = {name[len(prefix) :]: handle.get_tensor(name) for name in names}
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(
            f"Cannot read {path}: {exc}. Expected a .safetensors model file; re-download it from {COMFY_FILES}."
        ) from exc
    if not tensors:
        raise CheckpointError(
            f"{path} holds no tensors named {prefix}*; it is not the ACE-Step 1.5 file expected here. "
            f"ComfyUI's ACE-Step 1.5 files are at {COMFY_FILES}."
        )
    return tensors


def comfy_silence_latent(frames: int = COMFY_SILENCE_FRAMES) -> Tensor:
    """ComfyUI's silence latent for `frames` (>= 4) frames as [1, frames, 64] float32: head frames, then one repeated."""
    data = load_file(_SILENCE_DATA)
    head, frame = data["head"], data["frame"]
    if frames < head.shape[0]:
        raise ValueError(f"ComfyUI's silence latent has at least {head.shape[0]} frames; {frames} were asked for.")
    silence = frame.expand(frames, -1).clone()
    silence[: head.shape[0]] = head
    return silence.unsqueeze(0)

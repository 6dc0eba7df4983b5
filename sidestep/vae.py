"""The ACE-Step 1.5 VAE (diffusers `AutoencoderOobleck`): loading and tiled encode/decode.

Tiling keeps peak memory flat in song length: the encoder and decoder only ever see one window
of at most `chunk` frames, the full waveform stays wherever the caller keeps it (CPU), and results
are written into a preallocated output instead of being concatenated at the end.

Stitching crops instead of crossfading. Every window is aligned to whole latent frames (1920
samples), so — because all convolutions are translation-equivariant under that stride — a frame
computed inside a window is exactly the frame of an untiled pass as long as its receptive field
lies inside the window. Each window therefore carries `overlap` frames of context on each side
that are computed and then discarded. The Oobleck encoder reaches about 7 frames (0.28 s) and the
decoder about 9 frames to each side, so the default 2 s (50 frame) overlap reproduces an untiled
pass to float rounding everywhere, edges included (the first and last windows start/end at the
signal's edges, where the untiled pass pads the same way). A crossfade would instead average two
slightly different estimates across the seam and could only be less accurate.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderOobleck
from diffusers.models.autoencoders.autoencoder_oobleck import (
    OobleckDiagonalGaussianDistribution,
    OobleckResidualUnit,
    Snake1d,
)
from safetensors import SafetensorError
from torch import Tensor

from .errors import CheckpointError
from .variants import FRAMES_PER_SECOND, SAMPLE_RATE

HOP_LENGTH = SAMPLE_RATE // FRAMES_PER_SECOND
LATENT_CHANNELS = 64


@dataclass(frozen=True)
class _Tile:
    """One window [start, stop) of frames, of which [keep_start, keep_stop) is kept."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int


def latent_length(num_samples: int) -> int:
    """Number of 25 Hz latent frames for `num_samples` samples at 48 kHz (the end is zero-padded)."""
    return math.ceil(num_samples / HOP_LENGTH)


@contextmanager
def quiet_weight_norm() -> Iterator[None]:
    """Hide torch's FutureWarning about `weight_norm`, which diffusers' Oobleck layers still use (nothing to act on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.nn\.utils\.weight_norm.* is deprecated", category=FutureWarning)
        yield


def load_vae(
    vae_dir: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> AutoencoderOobleck:
    """Load the shared `vae/` folder of an ACE-Step 1.5 checkpoint root, in eval mode, local files only."""
    vae_dir = Path(vae_dir)
    config_path = vae_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"No VAE at {vae_dir}: expected a folder with config.json and diffusion_pytorch_model.safetensors. "
            "Point at the 'vae' folder inside your ACE-Step 1.5 checkpoints folder."
        )
    try:
        class_name = json.loads(config_path.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise CheckpointError(f"Cannot read {config_path}: {exc}. Re-download the VAE folder.") from exc
    if class_name != "AutoencoderOobleck":
        raise CheckpointError(
            f"{vae_dir} holds a {class_name!r} model, not the AutoencoderOobleck VAE of ACE-Step 1.5. "
            "Point at the 'vae' folder inside your ACE-Step 1.5 checkpoints folder."
        )
    try:
        with quiet_weight_norm():
            vae = AutoencoderOobleck.from_pretrained(vae_dir, local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        raise CheckpointError(f"Cannot load the VAE from {vae_dir}: {exc}. Re-download the VAE folder.") from exc
    check_vae_geometry(vae, f"The VAE in {vae_dir}", "Use the 'vae' folder shipped with ACE-Step 1.5.")
    return vae.to(device).eval()


def check_vae_geometry(vae: AutoencoderOobleck, source: str, fix: str) -> None:
    """Refuse a VAE without ACE-Step 1.5's geometry; `source` names it in the message, `fix` says what to use."""
    config = vae.config
    if (
        config.sampling_rate != SAMPLE_RATE
        or vae.hop_length != HOP_LENGTH
        or config.decoder_input_channels != LATENT_CHANNELS
        or config.encoder_hidden_size != 2 * LATENT_CHANNELS
    ):
        raise CheckpointError(
            f"{source} is not ACE-Step 1.5's ({config.sampling_rate} Hz, hop {vae.hop_length}, "
            f"{config.decoder_input_channels} latent channels; expected {SAMPLE_RATE} Hz, hop {HOP_LENGTH}, "
            f"{LATENT_CHANNELS} channels). {fix}"
        )


def _plan_tiles(total: int, chunk: int, overlap: int) -> list[_Tile]:
    """Windows of at most `chunk` frames covering [0, total), each keeping all but `overlap` context frames."""
    if overlap < 0 or chunk <= 2 * overlap:
        raise ValueError(f"A tile of {chunk} frames cannot hold 2 x {overlap} overlap frames plus a kept core.")
    tiles = []
    keep_start = 0
    while keep_start < total:
        start = max(0, keep_start - overlap)
        stop = min(total, start + chunk)
        keep_stop = stop if stop == total else stop - overlap
        tiles.append(_Tile(start, stop, keep_start, keep_stop))
        keep_start = keep_stop
    return tiles


class _LeanSnake1d(Snake1d):
    """diffusers' Snake activation, x + sin²(αx)/β, in one temporary instead of four when no gradient is taken (the
    same operations, so the same values bit for bit)."""

    def forward(self, hidden_states: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return super().forward(hidden_states)
        return self._wave(hidden_states).add_(hidden_states)

    def apply_in_place(self, hidden_states: Tensor) -> Tensor:
        """The activation written over `hidden_states` (which the caller no longer needs), no gradient taken."""
        return hidden_states.add_(self._wave(hidden_states))

    def _wave(self, hidden_states: Tensor) -> Tensor:
        """sin²(αx)/β, in one new tensor."""
        alpha, beta = (self.alpha.exp(), self.beta.exp()) if self.logscale else (self.alpha, self.beta)
        return (alpha * hidden_states).sin_().pow_(2).mul_((beta + 1e-9).reciprocal())


class _LeanResidualUnit(OobleckResidualUnit):
    """diffusers' residual unit, x + conv2(snake2(conv1(snake1(x)))), holding three activations at a time instead of
    four when no gradient is taken: the second Snake and the residual sum overwrite tensors nothing else reads (the
    same operations, bit for bit). At full rate one activation of a 30 s window is 0.8 GB."""

    def forward(self, hidden_state: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return super().forward(hidden_state)
        output = self.conv1(self.snake1(hidden_state))
        output = self.conv2(self.snake2.apply_in_place(output))
        padding = (hidden_state.shape[-1] - output.shape[-1]) // 2
        if padding > 0:
            hidden_state = hidden_state[..., padding:-padding]
        return output.add_(hidden_state)


def _lean_activations(vae: AutoencoderOobleck) -> None:
    """Give `vae`'s Snake activations and residual units their lean forward (weights and names unchanged; idempotent)."""
    lean = {Snake1d: _LeanSnake1d, OobleckResidualUnit: _LeanResidualUnit}
    for module in vae.modules():
        if type(module) in lean:
            module.__class__ = lean[type(module)]


def _seconds_to_frames(seconds: float) -> int:
    """Whole latent frames in `seconds` (rounded)."""
    return round(seconds * FRAMES_PER_SECOND)


def encode_waveform(
    vae: AutoencoderOobleck,
    waveform: Tensor,
    chunk_seconds: float = 30.0,
    overlap_seconds: float = 2.0,
    sample: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Encode a [2, N] 48 kHz waveform to [ceil(N/1920), 64] float32 CPU latents (posterior mean, or a sample)."""
    channels = vae.config.audio_channels
    if waveform.ndim != 2 or waveform.shape[0] != channels:
        raise ValueError(f"Expected a waveform of shape [{channels}, samples], got {tuple(waveform.shape)}.")
    frames = latent_length(waveform.shape[1])
    features = torch.empty(1, vae.config.encoder_hidden_size, frames, dtype=torch.float32)
    _lean_activations(vae)
    for tile in _plan_tiles(frames, _seconds_to_frames(chunk_seconds), _seconds_to_frames(overlap_seconds)):
        piece = waveform[:, tile.start * HOP_LENGTH : tile.stop * HOP_LENGTH]
        piece = F.pad(piece, (0, (tile.stop - tile.start) * HOP_LENGTH - piece.shape[1]))
        with torch.inference_mode():
            hidden = vae.encoder(piece.unsqueeze(0).to(device=vae.device, dtype=vae.dtype))
        kept = hidden[:, :, tile.keep_start - tile.start : tile.keep_stop - tile.start]
        features[:, :, tile.keep_start : tile.keep_stop] = kept.float().cpu()
    posterior = OobleckDiagonalGaussianDistribution(features)
    latents = posterior.sample(generator=generator) if sample else posterior.mode()
    return latents[0].transpose(0, 1).contiguous()


def decode_latents(
    vae: AutoencoderOobleck, latents: Tensor, chunk_frames: int = 750, overlap_frames: int = 50
) -> Tensor:
    """Decode [B, T, 64] (or [T, 64]) latents to a [B, 2, T*1920] float32 CPU waveform at 48 kHz."""
    if latents.ndim == 2:
        latents = latents.unsqueeze(0)
    if latents.ndim != 3 or latents.shape[-1] != LATENT_CHANNELS:
        raise ValueError(f"Expected latents of shape [B, T, {LATENT_CHANNELS}], got {tuple(latents.shape)}.")
    batch, frames, _ = latents.shape
    audio = torch.empty(batch, vae.config.audio_channels, frames * HOP_LENGTH, dtype=torch.float32)
    tiles = _plan_tiles(frames, chunk_frames, overlap_frames)
    _lean_activations(vae)
    for item in range(batch):
        for tile in tiles:
            window = latents[item : item + 1, tile.start : tile.stop].transpose(1, 2)
            with torch.inference_mode():
                wave = vae.decoder(window.to(device=vae.device, dtype=vae.dtype))
            kept = wave[:, :, (tile.keep_start - tile.start) * HOP_LENGTH : (tile.keep_stop - tile.start) * HOP_LENGTH]
            audio[item : item + 1, :, tile.keep_start * HOP_LENGTH : tile.keep_stop * HOP_LENGTH] = kept.float().cpu()
    return audio

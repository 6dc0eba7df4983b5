"""Dataset encoding and VAE decoding with the official VAE geometry (random weights): speed and peak memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import torch
from diffusers import AutoencoderOobleck

from sidestep.atomic import torch_save_atomic
from sidestep.tiny_models import (
    SILENCE_FILE,
    TEXT_ENCODER_FOLDER,
    TURBO_FOLDER,
    VAE_FOLDER,
    tiny_model_config,
    tiny_silence_latent,
    write_tiny_dit,
    write_tiny_text_encoder,
    write_tiny_vae,
)
from sidestep.variants import FRAMES_PER_SECOND, SAMPLE_RATE
from sidestep.vae import LATENT_CHANNELS, decode_latents, load_vae

from .memory import run_worker
from .models import benchmark_device
from .report import Row, Stat, Target
from .settings import RunSettings
from .timing import Repeats, measure

# diffusers AutoencoderOobleck as ACE-Step 1.5 ships it (vae/config.json).
OFFICIAL_VAE = {
    "encoder_hidden_size": 128,
    "downsampling_ratios": [2, 4, 4, 6, 10],
    "channel_multiples": [1, 2, 4, 8, 16],
    "decoder_channels": 128,
    "decoder_input_channels": LATENT_CHANNELS,
    "audio_channels": 2,
    "sampling_rate": SAMPLE_RATE,
}
LONG_SECONDS = 600.0
MEMORY_LIMIT = 1.3


def vae_kind(size: str) -> str:
    """`official` VAE geometry for the full size, the narrow `test` VAE otherwise."""
    return "official" if size == "full" else "test"


def build_tree(root: Path, vae: str) -> Path:
    """A checkpoint root with the chosen VAE (random weights) and the tiny DiT and text encoder around it."""
    write_tiny_dit(root / TURBO_FOLDER, tiny_model_config("turbo"))
    if vae == "official":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            AutoencoderOobleck(**OFFICIAL_VAE).save_pretrained(root / VAE_FOLDER)
    else:
        write_tiny_vae(root / VAE_FOLDER)
    write_tiny_text_encoder(root / TEXT_ENCODER_FOLDER)
    torch_save_atomic(tiny_silence_latent(), root / SILENCE_FILE)
    return root


def write_song(path: Path, seconds: float, seed: int = 0) -> Path:
    """A 48 kHz stereo 16-bit WAV of a modulated tone with some noise, written block by block."""
    rng = np.random.default_rng(seed)
    total, block = int(seconds * SAMPLE_RATE), 10 * SAMPLE_RATE
    path.parent.mkdir(parents=True, exist_ok=True)
    with soundfile.SoundFile(path, "w", SAMPLE_RATE, 2, "PCM_16") as stream:
        for start in range(0, total, block):
            t = np.arange(start, min(total, start + block)) / SAMPLE_RATE
            tone = 0.3 * np.sin(2 * np.pi * 220.0 * t) * (1 + 0.5 * np.sin(2 * np.pi * 2.0 * t))
            noise = 0.02 * rng.standard_normal((t.size, 2))
            stream.write(np.stack([tone, 0.8 * tone], axis=1) + noise)
    return path


def _label(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _encode(tree: Path, work: Path, seconds: float) -> dict:
    """Encode one song of `seconds` in a fresh process."""
    name = _label(seconds).replace(" ", "")
    audio = work / f"songs-{name}"
    write_song(audio / "song.wav", seconds)
    output = work / f"encoded-{name}"
    return run_worker("encode", {"root": str(tree), "model": TURBO_FOLDER, "audio_dir": str(audio), "output_dir": str(output)})


def _encode_figures(tree: Path, work: Path, size: str, settings: RunSettings) -> tuple[list[Row], list[Target]]:
    """Encoding throughput and peak memory of one song (30 s; 1 s with the test VAE), and of 10 min with `long`."""
    vae = vae_kind(size)
    lengths = [30.0 if vae == "official" else 1.0] + ([LONG_SECONDS] if settings.long else [])
    label, device = f"fp32 {vae} VAE", benchmark_device().type
    rows, peaks = [], {}
    for seconds in lengths:
        answer = _encode(tree, work, seconds)
        song = _label(seconds)
        peaks[seconds] = answer["peak_gb"]
        speed = Stat.of([answer["audio_seconds"] / answer["seconds"]])
        rows.append(Row("encoding", f"encode dataset, one {song} song", size, device, label, "audio s/s", speed,
                        note=f"{answer['seconds']:.1f} s wall"))
        rows.append(Row("encoding", f"encode dataset peak RSS, {song} song", size, device, label, "GB",
                        Stat.of([peaks[seconds]]), note="fresh process; DiT encoder and text encoder tiny"))
    if vae != "official":
        return rows, []
    name, limit, short = "encoding memory, 10 min vs 30 s", f"≤ {MEMORY_LIMIT}×", peaks[lengths[0]]
    if LONG_SECONDS not in peaks:
        return rows, [Target(name, limit, f"30 s: {short:.2f} GB", None, "10 min runs only with --long")]
    ratio = peaks[LONG_SECONDS] / short
    measured = f"{ratio:.2f}× ({peaks[LONG_SECONDS]:.2f} / {short:.2f} GB)"
    return rows, [Target(name, limit, measured, ratio <= MEMORY_LIMIT)]


def _decode_figures(tree: Path, size: str, settings: RunSettings) -> list[Row]:
    """Tiled VAE decode of 10 s of latents (1 s with the test VAE; the official one runs once, it is slow on a CPU)."""
    official = vae_kind(size) == "official"
    vae = load_vae(tree / VAE_FOLDER, device=benchmark_device())
    seconds = 10.0 if official else 1.0
    latents = torch.randn(1, int(seconds * FRAMES_PER_SECOND), LATENT_CHANNELS, generator=torch.Generator().manual_seed(0))
    stat = measure(lambda: decode_latents(vae, latents), Repeats(warmup=0, repeats=1) if official else settings.repeats)
    return [Row("vae", f"decode {_label(seconds)} of latents", size, benchmark_device().type, f"fp32 {vae_kind(size)} VAE",
                "s", stat, note=f"{seconds / stat.median:.2f} audio s/s")]


def vae_rows(size: str, settings: RunSettings) -> tuple[list[Row], list[Target]]:
    """Build a checkpoint tree with this size's VAE, then measure dataset encoding and VAE decoding."""
    work = settings.workdir / f"vae-{size}"
    tree = build_tree(work / "checkpoints", vae_kind(size))
    rows, targets = _encode_figures(tree, work, size, settings)
    return rows + _decode_figures(tree, size, settings), targets

"""Tiled VAE encode/decode on a tiny real AutoencoderOobleck with ACE-Step's 48 kHz / 1920-hop geometry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderOobleck

from sidestep.errors import CheckpointError
from sidestep.tiny_models import write_tiny_vae
from sidestep.variants import FRAMES_PER_SECOND
from sidestep.vae import HOP_LENGTH, decode_latents, encode_waveform, latent_length, load_vae


@pytest.fixture(scope="module")
def vae(tmp_path_factory: pytest.TempPathFactory) -> AutoencoderOobleck:
    return load_vae(write_tiny_vae(tmp_path_factory.mktemp("vae") / "vae"))


@contextmanager
def input_lengths(module: torch.nn.Module) -> Iterator[list[int]]:
    """Record the time length of every input `module` is called with."""
    lengths: list[int] = []
    handle = module.register_forward_pre_hook(lambda _, args: lengths.append(args[0].shape[-1]))
    try:
        yield lengths
    finally:
        handle.remove()


def waveform(frames: int, extra: int = 0, seed: int = 0) -> torch.Tensor:
    """A seeded stereo test signal of `frames` latent frames plus `extra` samples."""
    generator = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(2, frames * HOP_LENGTH + extra, generator=generator)


def test_shapes_and_25_hz(vae: AutoencoderOobleck) -> None:
    assert FRAMES_PER_SECOND == 25 and HOP_LENGTH == vae.hop_length == 1920
    audio = waveform(6, extra=7)
    latents = encode_waveform(vae, audio)
    assert latents.shape == (latent_length(audio.shape[1]), 64) == (7, 64)
    assert latents.dtype == torch.float32 and not latents.is_inference()
    decoded = decode_latents(vae, latents)
    assert decoded.shape == (1, 2, 7 * HOP_LENGTH) and decoded.dtype == torch.float32
    batch = decode_latents(vae, torch.stack([latents, -latents]))
    assert batch.shape == (2, 2, 7 * HOP_LENGTH)
    torch.testing.assert_close(batch[0], decoded[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batch[1], batch[0])


def test_tiled_encode_matches_an_untiled_encode_and_sees_only_chunks(vae: AutoencoderOobleck) -> None:
    audio = waveform(32, extra=-100)  # 31.95 frames: the end is zero-padded to 32
    with input_lengths(vae.encoder) as lengths:
        tiled = encode_waveform(vae, audio, chunk_seconds=20 / FRAMES_PER_SECOND, overlap_seconds=6 / FRAMES_PER_SECOND)
    assert lengths == [20 * HOP_LENGTH, 20 * HOP_LENGTH, 16 * HOP_LENGTH]  # keeps [0, 14), [14, 22), [22, 32)
    padded = torch.nn.functional.pad(audio, (0, 100)).unsqueeze(0)
    with torch.inference_mode():
        reference = vae.encode(padded).latent_dist.mean[0].transpose(0, 1)
    assert tiled.shape == reference.shape == (32, 64)
    torch.testing.assert_close(tiled, reference, rtol=1e-4, atol=1e-5)


def test_tiled_decode_matches_an_untiled_decode_and_sees_only_chunks(vae: AutoencoderOobleck) -> None:
    latents = torch.randn(48, 64, generator=torch.Generator().manual_seed(1))
    with input_lengths(vae.decoder) as lengths:
        tiled = decode_latents(vae, latents, chunk_frames=24, overlap_frames=9)
    assert lengths == [24] * 5  # keeps [0, 15), [15, 21), [21, 27), [27, 33), [33, 48)
    with torch.inference_mode():
        reference = vae.decode(latents.T.unsqueeze(0)).sample
    torch.testing.assert_close(tiled, reference, rtol=1e-4, atol=1e-5)


def test_sampling_the_posterior_is_seeded_and_differs_from_the_mean(vae: AutoencoderOobleck) -> None:
    audio = waveform(4)
    mean = encode_waveform(vae, audio)
    first = encode_waveform(vae, audio, sample=True, generator=torch.Generator().manual_seed(3))
    again = encode_waveform(vae, audio, sample=True, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, mean)


def test_bad_inputs_and_tilings_are_refused(vae: AutoencoderOobleck) -> None:
    with pytest.raises(ValueError, match="waveform"):
        encode_waveform(vae, torch.zeros(1, 2 * HOP_LENGTH))
    with pytest.raises(ValueError, match="latents"):
        decode_latents(vae, torch.zeros(1, 4, 32))
    with pytest.raises(ValueError, match="overlap"):
        decode_latents(vae, torch.zeros(4, 64), chunk_frames=10, overlap_frames=5)


def test_missing_wrong_and_foreign_vae_folders_raise_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nowhere"):
        load_vae(tmp_path / "nowhere")
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}), encoding="utf-8")
    with pytest.raises(CheckpointError, match="UNet2DModel"):
        load_vae(unet)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"_class_name": "AutoencoderOobleck"}), encoding="utf-8")
    with pytest.raises(CheckpointError, match="empty"):
        load_vae(empty)
    foreign = tmp_path / "stable-audio-vae"
    AutoencoderOobleck(
        encoder_hidden_size=128,
        downsampling_ratios=[2, 4, 4, 8, 8],
        channel_multiples=[1, 1, 1, 1, 1],
        decoder_channels=4,
        sampling_rate=44100,
    ).save_pretrained(foreign)
    with pytest.raises(CheckpointError, match="44100 Hz"):
        load_vae(foreign)


def test_lean_activations_and_residual_units_give_the_same_values_bit_for_bit(tmp_path: Path) -> None:
    folder = write_tiny_vae(tmp_path / "vae")
    plain, lean = load_vae(folder), load_vae(folder)
    audio, latents = waveform(12), torch.randn(12, 64, generator=torch.Generator().manual_seed(2))
    encoded, decoded = encode_waveform(lean, audio), decode_latents(lean, latents)  # both switch `lean` over
    assert {type(module).__name__ for module in lean.modules()} >= {"_LeanSnake1d", "_LeanResidualUnit"}
    assert not {"Snake1d", "OobleckResidualUnit"} & {type(module).__name__ for module in lean.modules()}
    with torch.inference_mode():
        features = plain.encoder(audio.unsqueeze(0))
        assert torch.equal(encoded, features.chunk(2, dim=1)[0][0].T)  # the posterior mean
        assert torch.equal(decoded, plain.decoder(latents.T.unsqueeze(0)))
        assert torch.equal(lean.encoder(audio.unsqueeze(0)), features)
    # With a gradient taken the original operations run (nothing in place on what autograd keeps).
    audio.requires_grad_(True)
    lean.encoder(audio.unsqueeze(0)).sum().backward()
    assert audio.grad is not None and torch.isfinite(audio.grad).all()

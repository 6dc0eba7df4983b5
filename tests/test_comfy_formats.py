"""ComfyUI's ACE-Step 1.5 file layouts converted to ours, checked against ComfyUI 0.20.1's own code where it runs here."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import save_file

from diffusers import AutoencoderOobleck

from sidestep.comfy_formats import (
    AIO_DIT_PREFIX,
    AIO_TEXT_ENCODER_PREFIX,
    AIO_VAE_PREFIX,
    COMFY_SILENCE_FRAMES,
    comfy_silence_latent,
    comfy_vae_state_dict,
    load_vae_file,
    read_prefixed,
    vae_from_state_dict,
)
from sidestep.errors import CheckpointError
from sidestep.testing import write_tiny_vae
from sidestep.vae import decode_latents, encode_waveform, load_vae

from tests.comfyui.host import ComfyUINotInstalled, find_comfyui


def _comfyui_source() -> Path | None:
    """The ComfyUI source the tests run (0.20.1 by default), or None when none is installed."""
    try:
        return find_comfyui()
    except ComfyUINotInstalled:
        return None


COMFYUI = _comfyui_source()
HAS_ACE15 = COMFYUI is not None and (COMFYUI / "comfy" / "ldm" / "ace" / "ace_step15.py").is_file()
needs_comfyui = pytest.mark.skipif(not HAS_ACE15, reason="needs a ComfyUI source with ACE-Step 1.5 (0.20.1 or newer)")


@pytest.fixture(scope="module")
def comfy() -> ModuleType:
    """ComfyUI's `comfy` package importable in this process, in CPU mode."""
    if str(COMFYUI) not in sys.path:
        sys.path.append(str(COMFYUI))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # read when comfy.model_management is first imported
    return comfy


@needs_comfyui
def test_silence_latent_equals_comfyuis_for_every_length(comfy: ModuleType) -> None:
    from comfy.ldm.ace.ace_step15 import get_silence_latent

    for frames in (4, 5, 250, 1501):
        theirs = get_silence_latent(frames, "cpu").transpose(1, 2)
        ours = comfy_silence_latent(frames)
        assert ours.shape == (1, frames, 64) and ours.dtype == torch.float32
        assert torch.equal(ours, theirs)
    longest = comfy_silence_latent()
    assert longest.shape == (1, COMFY_SILENCE_FRAMES, 64)
    assert torch.equal(longest[:, :1501], comfy_silence_latent(1501))


def test_silence_latent_refuses_fewer_frames_than_its_head() -> None:
    with pytest.raises(ValueError, match="at least 4 frames"):
        comfy_silence_latent(3)


def test_read_prefixed_returns_only_that_part_with_the_prefix_stripped(tmp_path: Path) -> None:
    path = tmp_path / "aio.safetensors"
    save_file(
        {
            f"{AIO_DIT_PREFIX}decoder.proj_in.weight": torch.ones(2),
            f"{AIO_VAE_PREFIX}decoder.layers.0.bias": torch.full((3,), 2.0),
            f"{AIO_TEXT_ENCODER_PREFIX}model.norm.weight": torch.full((4,), 3.0),
        },
        str(path),
    )
    vae = read_prefixed(path, AIO_VAE_PREFIX)
    assert list(vae) == ["decoder.layers.0.bias"] and torch.equal(vae["decoder.layers.0.bias"], torch.full((3,), 2.0))
    assert list(read_prefixed(path, AIO_TEXT_ENCODER_PREFIX)) == ["model.norm.weight"]
    assert len(read_prefixed(path, "")) == 3
    with pytest.raises(CheckpointError, match=r"aio\.safetensors holds no tensors named lyrics\.\*"):
        read_prefixed(path, "lyrics.")


def test_read_prefixed_names_the_file_that_is_not_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "ace_1.5_vae.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"Cannot read .*ace_1\.5_vae\.safetensors.*Comfy-Org"):
        read_prefixed(path, "")


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory: pytest.TempPathFactory) -> AutoencoderOobleck:
    """The tiny tree's VAE, loaded from its diffusers folder."""
    return load_vae(write_tiny_vae(tmp_path_factory.mktemp("vae") / "vae"))


def _random_comfy_vae(comfy: ModuleType) -> torch.nn.Module:
    """ComfyUI's own AudioOobleckVAE at ACE-Step 1.5's size (as comfy/sd.py builds it), with seeded random weights."""
    from comfy.ldm.audio.autoencoder import AudioOobleckVAE

    model = AudioOobleckVAE(strides=[2, 4, 4, 6, 10]).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # ComfyUI leaves weights uninitialised; norms near 1 and small Snake logs keep signals sane
        for name, param in model.named_parameters():
            if name.endswith("original0"):
                param.copy_(0.5 + 0.5 * torch.rand(param.shape, generator=generator))
            elif name.endswith("original1"):
                param.copy_(torch.randn(param.shape, generator=generator))
            else:
                scale = 0.2 if name.endswith(("alpha", "beta")) else 0.02
                param.copy_(scale * torch.randn(param.shape, generator=generator))
    return model


@pytest.mark.slow
@needs_comfyui
def test_vae_file_decodes_and_encodes_like_comfyuis_own_vae(comfy: ModuleType, tmp_path: Path) -> None:
    theirs = _random_comfy_vae(comfy)
    path = tmp_path / "ace_1.5_vae.safetensors"
    save_file(theirs.state_dict(), str(path))
    ours = load_vae_file(path)
    assert ours.config.downsampling_ratios == [2, 4, 4, 6, 10] and ours.config.channel_multiples == [1, 2, 4, 8, 16]
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 40, 64, generator=generator)
    with torch.no_grad():
        expected = theirs.decode(latents.transpose(1, 2))
    assert expected.std() > 0.1
    decoded = decode_latents(ours, latents, chunk_frames=30, overlap_frames=10)  # two tiles
    torch.testing.assert_close(decoded, expected, rtol=0, atol=1e-4)
    waveform = 0.3 * torch.randn(2, 12 * 1920, generator=generator)
    with torch.no_grad():
        mean = theirs.encoder(waveform.unsqueeze(0))[0, :64].T
    torch.testing.assert_close(encode_waveform(ours, waveform), mean, rtol=0, atol=1e-4)


def test_comfy_layout_round_trips_through_both_weight_norm_spellings(tiny_vae: AutoencoderOobleck, tmp_path: Path) -> None:
    comfy_layout = comfy_vae_state_dict(tiny_vae)
    assert "decoder.layers.1.layers.0.beta" in comfy_layout  # the key comfy/sd.py recognises an Oobleck VAE by
    assert comfy_layout["decoder.layers.1.layers.0.beta"].shape == (tiny_vae.config.decoder_channels,)
    old_spelling = {
        name.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v"): t
        for name, t in comfy_layout.items()
    }
    path = tmp_path / "aio.safetensors"
    save_file({f"{AIO_VAE_PREFIX}{name}": t.contiguous() for name, t in old_spelling.items()}, str(path))
    for loaded in (vae_from_state_dict(comfy_layout, "memory"), load_vae_file(path, prefix=AIO_VAE_PREFIX)):
        assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == {
            k: v for k, v in tiny_vae.config.items() if not k.startswith("_")
        }
        expected = tiny_vae.state_dict()
        assert all(torch.equal(t, expected[name]) for name, t in loaded.state_dict().items())


def test_conversion_shares_tensors_instead_of_copying(tiny_vae: AutoencoderOobleck) -> None:
    comfy_layout = comfy_vae_state_dict(tiny_vae)
    ours = tiny_vae.state_dict()
    assert comfy_layout["encoder.layers.0.bias"].data_ptr() == ours["encoder.conv1.bias"].data_ptr()
    loaded = vae_from_state_dict(comfy_layout, "memory").state_dict()
    assert loaded["decoder.block.0.snake1.alpha"].data_ptr() == ours["decoder.block.0.snake1.alpha"].data_ptr()


def test_files_that_are_not_acestep_vaes_are_refused_with_the_fix(tiny_vae: AutoencoderOobleck, tmp_path: Path) -> None:
    dit = tmp_path / "acestep_v1.5_turbo.safetensors"
    save_file({"decoder.proj_in.1.weight": torch.zeros(2, 2)}, str(dit))
    with pytest.raises(CheckpointError, match=r"acestep_v1\.5_turbo\.safetensors is not ACE-Step 1\.5's VAE.*ace_1\.5_vae"):
        load_vae_file(dit)
    truncated = dict(comfy_vae_state_dict(tiny_vae))
    del truncated["decoder.layers.2.layers.2.layers.1.parametrizations.weight.original1"]
    with pytest.raises(CheckpointError, match="Missing key"):
        vae_from_state_dict(truncated, "truncated.safetensors")
    stable_audio = AutoencoderOobleck(
        encoder_hidden_size=128, downsampling_ratios=[2, 4, 4, 8, 8], channel_multiples=[1, 1, 1, 1, 1], decoder_channels=8
    )
    with pytest.raises(CheckpointError, match=r"stable\.safetensors is not ACE-Step 1\.5's .*hop 2048"):
        vae_from_state_dict(comfy_vae_state_dict(stable_audio), "stable.safetensors")

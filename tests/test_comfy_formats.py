"""ComfyUI's ACE-Step 1.5 file layouts converted to ours, checked against ComfyUI 0.20.1's own code where it runs here."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import save_file

from sidestep.comfy_formats import (
    AIO_DIT_PREFIX,
    AIO_TEXT_ENCODER_PREFIX,
    AIO_VAE_PREFIX,
    COMFY_SILENCE_FRAMES,
    comfy_silence_latent,
    read_prefixed,
)
from sidestep.errors import CheckpointError

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

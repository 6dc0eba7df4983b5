"""The tiny checkpoint tree: complete, deterministic, and loadable offline by the real loaders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sidestep.model_folders import find_shared_parts, load_silence_latent, resolve_base, scan_models
from sidestep.errors import CheckpointError
from sidestep.model import AceStepConditionGenerationModel
from sidestep.tiny_models import (
    BASE_FOLDER,
    CUSTOM_FOLDER,
    TEXT_ENCODER_FOLDER,
    TINY_SILENCE_FRAMES,
    TINY_TEXT_HIDDEN,
    TURBO_FOLDER,
    VAE_FOLDER,
    make_tiny_checkpoints,
    write_tiny_text_encoder,
    tiny_model_config,
)

OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from sidestep.model import AceStepConditionGenerationModel
    from sidestep.tiny_models import make_tiny_checkpoints
    from sidestep.text import TextEncoder, caption_prompt, lyrics_prompt, SongMetas
    from sidestep.vae import load_vae, encode_waveform, decode_latents

    root = sys.argv[1]
    make_tiny_checkpoints(root)
    vae = load_vae(f"{root}/vae")
    latents = encode_waveform(vae, torch.zeros(2, 3 * 1920))
    audio = decode_latents(vae, latents)
    text = TextEncoder.load(f"{root}/Qwen3-Embedding-0.6B")
    hidden, _ = text.encode_captions([caption_prompt("calm piano", SongMetas())])
    lyrics, _ = text.encode_lyrics([lyrics_prompt("", form="training")])
    model = AceStepConditionGenerationModel.from_pretrained(f"{root}/acestep-v15-turbo")
    shapes = {name: list(t.shape) for name, t in
              dict(latents=latents, audio=audio, hidden=hidden, lyrics=lyrics).items()}
    print(json.dumps({"shapes": shapes, "hidden_size": model.config.hidden_size}))
    """
)


def test_tree_builds_and_loads_offline_through_our_loaders(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, str(tmp_path / "tree")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["shapes"] == {
        "latents": [3, 64],
        "audio": [1, 2, 3 * 1920],
        "hidden": [1, 256, TINY_TEXT_HIDDEN],
        "lyrics": [1, 512, TINY_TEXT_HIDDEN],
    }
    assert report["hidden_size"] == 64


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoints(tmp_path_factory.mktemp("tiny") / "checkpoints")


def test_tree_has_the_official_layout_and_is_discovered(tree: Path) -> None:
    for folder in (TURBO_FOLDER, BASE_FOLDER, CUSTOM_FOLDER):
        assert {p.name for p in (tree / folder).iterdir()} == {"config.json", "model.safetensors", "silence_latent.pt"}
    assert (tree / VAE_FOLDER / "diffusion_pytorch_model.safetensors").is_file()
    assert (tree / TEXT_ENCODER_FOLDER / "tokenizer.json").is_file()
    assert not [p for p in tree.iterdir() if p.name.startswith(".")]
    entries = {entry.name: entry for entry in scan_models(tree)}
    assert set(entries) == {TURBO_FOLDER, BASE_FOLDER, CUSTOM_FOLDER}
    assert entries[TURBO_FOLDER].official and entries[TURBO_FOLDER].variant == "turbo"
    assert entries[BASE_FOLDER].variant == "base"
    custom = entries[CUSTOM_FOLDER]
    assert not custom.official and custom.config.model_version is None and resolve_base(custom) == "turbo"
    parts = find_shared_parts(tree, custom)
    assert parts.vae_path == tree / VAE_FOLDER and parts.text_encoder_path == tree / TEXT_ENCODER_FOLDER
    silence = torch.load(tree / "silence_latent.pt", weights_only=True)
    assert silence.shape == (1, 64, TINY_SILENCE_FRAMES)
    torch.testing.assert_close(load_silence_latent(parts.silence_latent_path), silence.transpose(1, 2))


def test_dit_weights_are_seeded_and_not_degenerate(tree: Path, tmp_path: Path) -> None:
    turbo = load_file(tree / TURBO_FOLDER / "model.safetensors")
    base = load_file(tree / BASE_FOLDER / "model.safetensors")
    norms = [t for name, t in turbo.items() if name.endswith("norm.weight")]
    biases = [t for name, t in turbo.items() if name.endswith(".bias")]
    assert norms and all(not torch.all(t == 1) for t in norms)
    assert biases and all(t.abs().sum() > 0 for t in biases)
    assert any(not torch.equal(turbo[name], base[name]) for name in turbo)
    again = make_tiny_checkpoints(tmp_path / "again")
    for name in (
        f"{TURBO_FOLDER}/model.safetensors",
        f"{VAE_FOLDER}/diffusion_pytorch_model.safetensors",
        f"{TEXT_ENCODER_FOLDER}/model.safetensors",
        f"{TEXT_ENCODER_FOLDER}/tokenizer.json",
    ):
        assert (again / name).read_bytes() == (tree / name).read_bytes()
    model = AceStepConditionGenerationModel.from_pretrained(tree / CUSTOM_FOLDER)
    assert model.config.is_turbo is True and model.config.text_hidden_dim == TINY_TEXT_HIDDEN


def test_tiny_configs_per_variant_and_refusals(tree: Path) -> None:
    turbo, base, sft = (tiny_model_config(v) for v in ("turbo", "base", "sft"))
    assert (turbo.is_turbo, turbo.model_version) == (True, "turbo")
    assert (base.is_turbo, base.model_version, sft.model_version) == (False, "base", "sft")
    # The official sliding window (128): config-less ComfyUI-layout files of the same weights infer the same model.
    assert turbo.hidden_size == 64 and turbo.text_hidden_dim == TINY_TEXT_HIDDEN and turbo.sliding_window == 128
    assert (turbo.timestep_mu, turbo.timestep_sigma) == (-0.4, 1.0)
    with pytest.raises(ValueError, match="xl"):
        tiny_model_config("xl")
    before = (tree / TURBO_FOLDER / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already holds"):
        make_tiny_checkpoints(tree)
    assert (tree / TURBO_FOLDER / "model.safetensors").read_bytes() == before


def test_writing_a_tiny_model_draws_no_progress_bar(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from transformers.utils import logging as transformers_logging

    write_tiny_text_encoder(tmp_path / "text")
    assert "Writing model shards" not in capfd.readouterr().err
    assert transformers_logging.is_progress_bar_enabled()  # the user's setting is back

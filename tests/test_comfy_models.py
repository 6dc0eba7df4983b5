"""ACE-Step 1.5 from ComfyUI's own files: discovery, pairing, parity with the official tree, errors, and the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sidestep.bundle import AceStepBundle, list_models, open_checkpoint
from sidestep.model_folders import describe_models
from sidestep.comfy_formats import comfy_silence_latent
from sidestep.comfy_models import ComfyFolders, comfy_shared_parts, scan_comfy_models
from sidestep.errors import CheckpointError, UnknownBaseModelError
from sidestep.tiny_models import (
    COMFY_AIO_FILE,
    COMFY_CUSTOM_FILE,
    COMFY_DIT_FILES,
    COMFY_TEXT_ENCODER_FILE,
    make_tiny_comfy_install,
)
from sidestep.vae import decode_latents

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def comfy_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ComfyUI install folder holding only the tiny ACE-Step files and the tokenizer, same weights as `tiny_root`."""
    install = tmp_path_factory.mktemp("ComfyUI")
    make_tiny_comfy_install(install)
    return install


@pytest.fixture(scope="module")
def models_dir(comfy_install: Path) -> Path:
    return comfy_install / "models"


def _condition_inputs(text_width: int, frames: int = 20) -> dict[str, torch.Tensor]:
    """Seeded inputs for prepare_condition and the decoder (one row)."""
    generator = torch.Generator().manual_seed(7)
    return {
        "text": torch.randn(1, 12, text_width, generator=generator),
        "lyrics": torch.randn(1, 9, text_width, generator=generator),
        "refer": torch.randn(1, 30, 64, generator=generator),
        "x": torch.randn(1, frames, 64, generator=generator),
    }


def _outputs(bundle: AceStepBundle, silence: torch.Tensor) -> dict[str, torch.Tensor]:
    """Condition-encoder and decoder outputs, VAE decode and text embeddings of a bundle on fixed inputs."""
    model = bundle.dit()
    inputs = _condition_inputs(model.config.text_hidden_dim)
    frames = inputs["x"].shape[1]
    states, mask, context = model.prepare_condition(
        inputs["text"], torch.ones(1, 12), inputs["lyrics"], torch.ones(1, 9), inputs["refer"],
        torch.zeros(1, dtype=torch.long), inputs["x"], None, silence, silence[:, :frames].clone(),
        torch.ones(1, frames, 64), torch.zeros(1, dtype=torch.long),
    )
    with torch.no_grad():
        velocity = model.decoder(
            hidden_states=inputs["x"], timestep=torch.tensor([0.6]), timestep_r=torch.tensor([0.6]),
            attention_mask=torch.ones(1, frames), encoder_hidden_states=states,
            encoder_attention_mask=mask, context_latents=context,
        )[0]
    captions, _ = bundle.text_encoder().encode_captions(["# Caption\nlo-fi beat with mellow keys"], form="inference")
    audio = decode_latents(bundle.vae(), inputs["x"][:, :4])
    return {"condition": states, "context": context, "velocity": velocity, "captions": captions, "audio": audio}


def test_models_folder_lists_every_comfyui_file_labelled(models_dir: Path) -> None:
    entries = list_models(models_dir)
    labels = [entry.label for entry in entries]
    assert labels[0] == "acestep_v1.5_base.safetensors · ComfyUI diffusion model · base"
    assert "acestep_v1.5_turbo.safetensors · ComfyUI diffusion model · turbo" in labels
    assert "ace_step_1.5_turbo_aio.safetensors · ComfyUI checkpoint · turbo" in labels
    assert f"{COMFY_CUSTOM_FILE} · ComfyUI diffusion model · custom, base unknown" in labels
    turbo = next(entry for entry in entries if entry.name == COMFY_DIT_FILES["turbo"])
    assert turbo.short_name == "turbo" and turbo.config.hidden_size == 64 and not turbo.is_xl
    table = describe_models(entries)
    assert "turbo" in table and "ComfyUI diffusion model" in table and str(models_dir) in table


@pytest.mark.parametrize("name", [COMFY_DIT_FILES["turbo"], COMFY_AIO_FILE])
def test_comfyui_files_give_the_same_model_as_the_official_tree(tiny_root: Path, models_dir: Path, name: str) -> None:
    official_bundle = open_checkpoint(tiny_root, "turbo")
    silence = official_bundle.silence_latent()
    official = _outputs(official_bundle, silence)
    comfy_bundle = open_checkpoint(models_dir, name)
    comfy = _outputs(comfy_bundle, silence)
    assert torch.equal(comfy_bundle.silence_latent(), comfy_silence_latent())
    for key, expected in official.items():
        torch.testing.assert_close(comfy[key], expected, atol=1e-5, rtol=0, msg=f"{key} differs ({name})")


def test_split_file_pairs_text_encoder_vae_and_tokenizer_of_its_install(comfy_install: Path, models_dir: Path) -> None:
    bundle = open_checkpoint(models_dir, "turbo")
    assert bundle.entry.name == COMFY_DIT_FILES["turbo"] and bundle.base == "turbo"
    shared = bundle.source.shared
    assert shared.text_encoder_path == models_dir / "text_encoders" / COMFY_TEXT_ENCODER_FILE
    assert shared.vae_path.name == "ace_1.5_vae.safetensors" and shared.silence_latent_path is None
    assert shared.tokenizer_dir == (comfy_install / "comfy" / "text_encoders" / "qwen25_tokenizer").resolve()
    aio = open_checkpoint(models_dir, COMFY_AIO_FILE)
    assert aio.source.shared.vae_path == aio.entry.path == aio.source.shared.text_encoder_path


def test_a_file_whose_name_does_not_tell_its_base_asks_for_it(models_dir: Path) -> None:
    with pytest.raises(UnknownBaseModelError, match=rf"{COMFY_CUSTOM_FILE}.*--base-model"):
        open_checkpoint(models_dir, COMFY_CUSTOM_FILE)
    assert open_checkpoint(models_dir, COMFY_CUSTOM_FILE, base="sft").base == "sft"


def test_base_of_a_model_that_names_its_own_cannot_be_overridden(models_dir: Path, tiny_root: Path) -> None:
    with pytest.raises(UnknownBaseModelError, match="says it is a turbo model.*only for custom fine-tunes"):
        open_checkpoint(models_dir, "turbo", base="base")
    with pytest.raises(UnknownBaseModelError, match="says it is a turbo model"):
        open_checkpoint(tiny_root, "turbo", base="sft")


def test_missing_text_encoder_and_vae_are_named_with_where_they_go(tmp_path: Path, models_dir: Path) -> None:
    lonely = tmp_path / "models"
    (lonely / "diffusion_models").mkdir(parents=True)
    (lonely / "diffusion_models" / COMFY_DIT_FILES["turbo"]).symlink_to(models_dir / "diffusion_models" / COMFY_DIT_FILES["turbo"])
    with pytest.raises(CheckpointError, match=r"No ACE-Step 1.5 text encoder found in .*text_encoders.*qwen_0.6b_ace15"):
        open_checkpoint(lonely, "turbo")
    (lonely / "text_encoders").mkdir()
    (lonely / "text_encoders" / COMFY_TEXT_ENCODER_FILE).symlink_to(models_dir / "text_encoders" / COMFY_TEXT_ENCODER_FILE)
    with pytest.raises(CheckpointError, match=r"No ACE-Step 1.5 VAE found in .*vae.*ace_1.5_vae.safetensors"):
        open_checkpoint(lonely, "turbo")


def test_the_language_model_is_refused_as_text_encoder(tmp_path: Path, models_dir: Path) -> None:
    lm = tmp_path / "qwen_1.7b_ace15.safetensors"
    save_file({"model.embed_tokens.weight": torch.zeros(8, 48), "model.layers.0.post_attention_layernorm.weight": torch.zeros(48)}, lm)
    entry = next(entry for entry in scan_comfy_models(ComfyFolders.from_models_dir(models_dir)) if entry.short_name == "turbo")
    with pytest.raises(CheckpointError, match=r"gives 48-wide features.*needs 32-wide.*5 Hz language model"):
        comfy_shared_parts(entry, ComfyFolders.from_models_dir(models_dir), text_encoder=str(lm))


def test_no_tokenizer_says_where_comfyui_keeps_it(tmp_path: Path, models_dir: Path) -> None:
    entry = next(entry for entry in scan_comfy_models(ComfyFolders.from_models_dir(models_dir)) if entry.short_name == "turbo")
    with pytest.raises(CheckpointError, match=r"No Qwen tokenizer files at .*nowhere.*qwen25_tokenizer.*--tokenizer"):
        comfy_shared_parts(entry, ComfyFolders.from_models_dir(models_dir), tokenizer_dir=tmp_path / "nowhere")


def test_empty_models_folder_lists_searched_folders_and_expected_files(tmp_path: Path) -> None:
    (tmp_path / "models" / "diffusion_models").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"No ACE-Step 1.5 model found in ComfyUI's model folders .*diffusion_models.*acestep_v1.5_turbo.safetensors"):
        list_models(tmp_path / "models")


def test_short_names_typos_and_models_that_are_not_downloaded(models_dir: Path, tiny_root: Path) -> None:
    with pytest.raises(CheckpointError, match=r"No model named 'turob'.*Did you mean 'turbo'.*Models there: .*base.*turbo"):
        open_checkpoint(models_dir, "turob")
    with pytest.raises(CheckpointError, match=r"The sft model is not downloaded: it would be .*diffusion_models.*acestep_v1.5_sft"):
        open_checkpoint(models_dir, "sft")
    with pytest.raises(CheckpointError, match=r"The xl-turbo model is not downloaded: it would be .*acestep-v15-xl-turbo \(official"):
        open_checkpoint(tiny_root, "xl-turbo")
    assert open_checkpoint(tiny_root, "turbo").entry.name == "acestep-v15-turbo"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidestep", *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=900)


def test_cli_lists_encodes_trains_and_samples_from_a_comfyui_models_folder(models_dir: Path, tmp_path: Path) -> None:
    listed = _cli("models", str(models_dir))
    assert listed.returncode == 0, listed.stderr
    assert "acestep_v1.5_turbo.safetensors" in listed.stdout and "ComfyUI checkpoint" in listed.stdout
    songs = tmp_path / "songs"
    songs.mkdir()
    generator = torch.Generator().manual_seed(0)
    import soundfile

    soundfile.write(songs / "song.wav", (0.2 * torch.randn(48_000, 2, generator=generator)).numpy(), 48_000)
    (songs / "song.txt").write_text("caption: lo-fi beat\n", encoding="utf-8")
    common = ["--checkpoint-dir", str(models_dir), "--model-variant", "turbo"]
    encoded = _cli("encode", *common, "--dataset-dir", str(songs), "--output-dir", str(tmp_path / "data"))
    assert encoded.returncode == 0, encoded.stderr
    assert "Encoded 1" in encoded.stdout
    trained = _cli(
        "train", *common, "--dataset-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "run"),
        "--epochs", "1", "--save-every", "1", "--rank", "4", "--alpha", "8",
    )
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").is_file()
    out = tmp_path / "song.flac"
    tokenizer = models_dir.parent / "comfy" / "text_encoders" / "qwen25_tokenizer"
    sampled = _cli(
        "sample", *common, "--tokenizer", str(tokenizer), "--adapter", str(tmp_path / "run" / "final"),
        "--caption", "lo-fi", "--duration", "1", "--seed", "1", "--out", str(out),
    )
    assert sampled.returncode == 0, sampled.stderr
    assert soundfile.info(str(out)).samplerate == 48_000

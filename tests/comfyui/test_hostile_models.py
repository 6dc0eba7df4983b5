"""A ComfyUI models/ folder as people really have it — partial and zero-filled downloads, another model's file under an
ACE-Step name, a renamed pickle, missing tensors, a tensor type safetensors cannot read, a dangling link, a file we may
not read, a broken config.json, a folder tree deeper than the path limit, names that are not UTF-8, links to other
folders and back up the tree — beside one valid tiny set, inside an install folder whose name is not UTF-8.

`models`, `encode` and `train` (the CLI) and the Load node's list must list and use the valid set, and refuse every
bad file by name with its reason, with no traceback; our walk must list what ComfyUI's own folder_paths lists."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load, save_file

from sidestep.bundle import open_checkpoint
from sidestep.comfy_models import ComfyFolders, _weight_files, comfy_shared_parts, scan_comfy_models, survey_comfy_models
from sidestep.errors import CheckpointError
from sidestep.model_files import looks_like_ace_step, shown
from sidestep.tiny_models import COMFY_AIO_FILE, COMFY_CUSTOM_FILE, COMFY_DIT_FILES, make_tiny_comfy_install

from .test_model_patches import PACK_MODULE, REPO_ROOT, comfy  # noqa: F401  (the in-process ComfyUI fixture)

INSTALL_NAME = os.fsdecode(b"Comfy\xe9UI")  # latin-1 bytes: not valid UTF-8
ODD_NAME = os.fsdecode(b"caf\xe9_tune.safetensors")
# File (relative to models/) → words its reason must contain. Every name here must be refused by name.
BAD = {
    "diffusion_models/acestep_v1.5_sft.safetensors": "cut short",
    "diffusion_models/acestep_v1.5_xl_turbo_bf16.safetensors": "zero bytes",
    "diffusion_models/acestep_v1.5_xl_base_bf16.safetensors": "Stable Diffusion XL",
    "diffusion_models/acestep_v1.5_xl_sft_bf16.safetensors": "pickle",
    "diffusion_models/acestep_v1.5_turbo_rl.ckpt": "pickle",
    "diffusion_models/acestep_v1.5_turbo_pruned.safetensors": "tensors an ACE-Step 1.5 model needs are missing",
    "diffusion_models/my_fp6_tune.safetensors": "'F6_E3M2'",
    "diffusion_models/acestep_v1.5_base_bf16.safetensors": "which does not exist",
    "diffusion_models/acestep_v1.5_turbo_locked.safetensors": "permission denied",
    "acestep/acestep-v15-base": "config.json",
}
GOOD = (COMFY_DIT_FILES["turbo"], COMFY_DIT_FILES["base"], COMFY_CUSTOM_FILE, COMFY_AIO_FILE, "ace/linked_tune.safetensors", "acestep_v1.5_base_copy.sft", ODD_NAME)
LOCKED = "diffusion_models/acestep_v1.5_turbo_locked.safetensors"
# Root reads any file: drop that power for the CLI runs so the unreadable file really is unreadable to them.
NO_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


def _with_dtype(source: Path, target: Path, dtype: str) -> None:
    """Copy a safetensors file, declaring its first tensor as `dtype` (a type safetensors may not know)."""
    data = source.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    first = next(name for name in sorted(header) if name != "__metadata__")
    header[first]["dtype"] = dtype
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    target.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + length :])


def _deep_folder(parent: Path) -> None:
    """A folder tree whose full path is longer than the system's path limit (made one level at a time)."""
    descriptor = os.open(parent, os.O_RDONLY)
    try:
        for _ in range(20):  # 20 × 250 characters, past PATH_MAX (4096)
            os.mkdir("d" * 250, dir_fd=descriptor)
            inner = os.open("d" * 250, os.O_RDONLY, dir_fd=descriptor)
            os.close(descriptor)
            descriptor = inner
        with open(os.open("acestep_v1.5_turbo.safetensors", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=descriptor), "wb") as file:
            file.write(b"\0" * 64)
    finally:
        os.close(descriptor)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hostile models/ folder, inside an install folder whose name is not UTF-8."""
    install = tmp_path_factory.mktemp("hostile") / INSTALL_NAME
    models = make_tiny_comfy_install(install)
    dit = models / "diffusion_models"
    turbo = (dit / COMFY_DIT_FILES["turbo"]).read_bytes()
    (models / "diffusion_models/acestep_v1.5_sft.safetensors").write_bytes(turbo[: len(turbo) // 2])
    (models / "diffusion_models/acestep_v1.5_xl_turbo_bf16.safetensors").write_bytes(bytes(len(turbo)))
    save_file({"conditioner.embedders.0.transformer.text_model.embeddings.position_ids": torch.zeros(1, 4)},
              models / "diffusion_models/acestep_v1.5_xl_base_bf16.safetensors")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, models / "diffusion_models/acestep_v1.5_xl_sft_bf16.safetensors")
    torch.save({"w": torch.zeros(2)}, models / "diffusion_models/acestep_v1.5_turbo_rl.ckpt")
    pruned = {name: tensor for name, tensor in load(turbo).items() if not name.startswith("detokenizer.")}
    save_file(pruned, models / "diffusion_models/acestep_v1.5_turbo_pruned.safetensors")
    _with_dtype(dit / COMFY_CUSTOM_FILE, models / "diffusion_models/my_fp6_tune.safetensors", "F6_E3M2")
    (models / "diffusion_models/acestep_v1.5_base_bf16.safetensors").symlink_to(install / "unmounted-drive/model.safetensors")
    locked = models / LOCKED
    locked.write_bytes(turbo)
    locked.chmod(0)
    broken = models / "acestep/acestep-v15-base"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text('{"model_type": "acestep", "hidden_size": ', encoding="utf-8")
    _deep_folder(models / "checkpoints")  # not beside the compared folders: ComfyUI 0.20.1's own listing raises there
    # Seen as ComfyUI sees them: a folder link to another drive, the .sft extension, a name that is not UTF-8;
    # nothing inside .git, and a link back up the tree that must not be walked forever.
    other_drive = install / "other-drive"
    other_drive.mkdir()
    shutil.copyfile(dit / COMFY_CUSTOM_FILE, other_drive / "linked_tune.safetensors")
    (dit / "ace").symlink_to(other_drive, target_is_directory=True)
    shutil.copyfile(dit / COMFY_DIT_FILES["base"], dit / "acestep_v1.5_base_copy.sft")
    shutil.copyfile(dit / COMFY_CUSTOM_FILE, dit / ODD_NAME)
    (dit / os.fsdecode(b"\xff\xfe-folder")).mkdir()
    (dit / ".git").mkdir()
    shutil.copyfile(dit / COMFY_CUSTOM_FILE, dit / ".git" / "hidden.safetensors")
    (models / "checkpoints" / "loop").symlink_to(models / "checkpoints", target_is_directory=True)
    text = models / "text_encoders"
    (text / "qwen_0.6b_ace15_fp6.safetensors").write_bytes((text / "qwen_0.6b_ace15.safetensors").read_bytes()[:100])
    return models


def _cli(*args: str, locked_out: bool = True) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess (without root's power to read any file, where it has it)."""
    prefix = NO_OVERRIDE if locked_out and os.geteuid() == 0 and shutil.which("setpriv") else []
    done = subprocess.run([*prefix, sys.executable, "-m", "sidestep", *args], check=False, capture_output=True, text=True, cwd=REPO_ROOT, timeout=900)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def _readable(path: Path) -> bool:
    return os.access(path, os.R_OK)


def test_models_lists_the_valid_set_and_says_why_each_ace_step_file_is_skipped(models: Path) -> None:
    listed = _cli("models", str(models))
    assert listed.returncode == 0, listed.stderr
    table, _, skipped = listed.stdout.partition("Skipped")
    for name in GOOD:
        assert shown(name) in table, name
    lines = skipped.splitlines()
    for name, reason in BAD.items():
        line = next((line for line in lines if line.startswith(shown(Path(name).relative_to(Path(name).parts[0])))), "")
        assert "skipped, because" in line and reason in line, (name, skipped)
    assert "hidden.safetensors" not in listed.stdout and "my_finetune" in table


def test_every_bad_file_named_is_refused_with_its_name_and_reason(models: Path) -> None:
    for name, reason in BAD.items():
        if name == LOCKED and _readable(models / LOCKED):
            continue  # root reads it here; the CLI test below runs without that power
        with pytest.raises(CheckpointError) as error:
            open_checkpoint(models, Path(name).name)
        assert shown(Path(name).name) in str(error.value) and reason in str(error.value), name
    with pytest.raises(CheckpointError, match=r"acestep_v1.5_sft.safetensors cannot be used: it is cut short.*Download it again"):
        open_checkpoint(models, "sft")
    entry = next(entry for entry in scan_comfy_models(ComfyFolders.from_models_dir(models)) if entry.short_name == "turbo")
    with pytest.raises(CheckpointError, match=r"qwen_0.6b_ace15_fp6.safetensors cannot be used: it is cut short"):
        comfy_shared_parts(entry, ComfyFolders.from_models_dir(models), text_encoder="qwen_0.6b_ace15_fp6.safetensors")


def test_encode_and_train_use_the_valid_set_and_the_cli_refuses_a_bad_one_by_name(models: Path, tmp_path: Path) -> None:
    import soundfile

    songs = tmp_path / "songs"
    songs.mkdir()
    soundfile.write(songs / "song.wav", (0.2 * torch.randn(48_000, 2, generator=torch.Generator().manual_seed(0))).numpy(), 48_000)
    root = str(models)
    encoded = _cli("encode", "--checkpoint-dir", root, "--model-variant", "turbo", "--dataset-dir", str(songs), "--output-dir", str(tmp_path / "data"))
    assert encoded.returncode == 0 and "Encoded 1" in encoded.stdout, encoded.stdout + encoded.stderr
    trained = _cli(
        "train", "--checkpoint-dir", root, "--model-variant", "turbo", "--dataset-dir", str(tmp_path / "data"),
        "--output-dir", str(tmp_path / "run"), "--epochs", "1", "--save-every", "1", "--rank", "4", "--alpha", "8",
    )
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").is_file()
    name = Path(LOCKED).name
    refused = _cli("encode", "--checkpoint-dir", root, "--model-variant", name, "--dataset-dir", str(songs), "--output-dir", str(tmp_path / "no"))
    assert refused.returncode != 0 and name in refused.stderr and BAD[LOCKED] in refused.stderr, refused.stderr


def test_our_walk_lists_what_comfyuis_folder_paths_lists(models: Path, comfy: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    import folder_paths

    folders = ComfyFolders.from_models_dir(models)
    for kind in ("text_encoders", "vae", "diffusion_models"):
        paths = [str(folder) for folder in getattr(folders, kind)]
        monkeypatch.setitem(folder_paths.folder_names_and_paths, kind, (paths, folder_paths.supported_pt_extensions))
        folder_paths.filename_list_cache.pop(kind, None)
        theirs = folder_paths.get_filename_list(kind)
        ours = [name for name, _ in _weight_files(getattr(folders, kind)) if os.path.splitext(name)[1].lower() in folder_paths.supported_pt_extensions]
        assert sorted(ours) == sorted(theirs), kind
    assert "ace/linked_tune.safetensors" in theirs and ODD_NAME in theirs and "acestep_v1.5_base_copy.sft" in theirs
    entries, skipped = survey_comfy_models(folders)
    seen = {entry.name for entry in entries} | {unusable.name for unusable in skipped}
    ace_step_looking = {name for name in theirs if looks_like_ace_step(name) or name in GOOD}
    assert ace_step_looking <= seen, ace_step_looking - seen


def test_load_node_lists_the_valid_set_and_refuses_a_bad_saved_choice_by_name(
    models: Path, comfy: ModuleType, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    import folder_paths

    folders = ComfyFolders.from_models_dir(models)
    registered = {**{kind: getattr(folders, kind) for kind in ("diffusion_models", "checkpoints", "text_encoders", "vae")}, "acestep": (models / "acestep",)}
    for kind, paths in registered.items():
        monkeypatch.setitem(folder_paths.folder_names_and_paths, kind, ([str(path) for path in paths], folder_paths.supported_pt_extensions))
    node = importlib.import_module(f"{PACK_MODULE}.nodes.model").LoadCheckpoint
    options = next(item for item in node.define_schema().inputs if item.id == "model").options
    for name in GOOD:
        assert any(option.startswith(shown(name)) for option in options), name
    bad_names = [Path(name).name for name in BAD if not (name == LOCKED and _readable(models / LOCKED))]
    assert not [option for option in options if any(option.startswith(name) for name in bad_names)]
    saved = f"{COMFY_DIT_FILES['turbo'].replace('turbo', 'xl_turbo_bf16')} · ComfyUI diffusion model · xl-turbo"
    refused = node.validate_inputs(model=saved, base_model="auto", model_path="", device="cpu")
    assert isinstance(refused, str) and "acestep_v1.5_xl_turbo_bf16.safetensors cannot be used: it is filled with zero bytes" in refused
    assert node.validate_inputs(model=next(o for o in options if o.startswith(COMFY_DIT_FILES["turbo"])), base_model="auto", model_path="", device="cpu") is True

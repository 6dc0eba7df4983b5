"""Hostile inputs on the tiny model tree: bad audio, sidecars, dataset JSON, adapters, training states and file kinds.

For every input: no traceback, a message that names the file, and nothing else lost (good songs still encoded,
checkpoints and adapters left as they were).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sidestep.adapters.files import load_adapter
from sidestep.cli import main
from sidestep.dataset.tensors import read_manifest

PEFT_PREFIX = "base_model.model.layers.0.self_attn.q_proj"
LONG_STEM = "a" * 247  # with ".wav" 251 bytes: a legal name, but "<stem>.caption.txt" is too long for the file system


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """A 32-bit float WAV file of [N, C] samples, header written by hand so any rate and value can be stored."""
    data = samples.astype("<f4").tobytes()
    channels = samples.shape[1]
    fmt = struct.pack("<HHIIHH", 3, channels, rate, rate * channels * 4, channels * 4, 32)
    chunks = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(chunks)) + chunks


def tone(seconds: float = 1.2, rate: int = 48_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.4 * np.sin(2 * np.pi * 330.0 * t)
    return np.stack([mono, 0.7 * mono], axis=1)


def symlink_loop(path: Path) -> None:
    other = path.with_name("loop partner")
    os.symlink(other.name, path)
    os.symlink(path.name, other)


# Bad entry → (how to make it, what the rejection says).
BAD_AUDIO = {
    "far beyond full scale.wav": (lambda p: p.write_bytes(wav_bytes(np.full((48_000, 2), 1e30), 48_000)), "far beyond full scale"),
    "one hertz.wav": (lambda p: p.write_bytes(wav_bytes(tone(10.0, 1), 1)), "sample rate 1 Hz"),
    "nan.wav": (lambda p: p.write_bytes(wav_bytes(np.full((48_000, 2), np.nan), 48_000)), "NaN"),
    "empty.flac": (lambda p: p.write_bytes(b""), "empty file"),
    "garbage.flac": (lambda p: p.write_bytes(os.urandom(4096)), "corrupt or unreadable"),
    "a folder.wav": (lambda p: p.mkdir(), "a folder, not an audio file"),
    "broken link.wav": (lambda p: os.symlink("nowhere.wav", p), "broken link"),
    "loop.wav": (symlink_loop, "symbolic link loop"),
    "pipe.wav": (lambda p: os.mkfifo(p), "not a regular file"),
}
NOT_UTF8 = b"caf\xe9 latin-1.wav"


@pytest.fixture(scope="module")
def encoded(tiny_root, tmp_path_factory) -> tuple[int, str, Path]:
    """One `sidestep encode` over a folder of two good songs and every bad entry: exit code, all it printed, output."""
    songs, out = tmp_path_factory.mktemp("fuzz-songs"), tmp_path_factory.mktemp("fuzz-data")
    (songs / "good.wav").write_bytes(wav_bytes(tone(), 48_000))
    (songs / "good.caption.txt").write_text("slow synth " * 1_000_000, encoding="utf-8")  # 11 MB
    (songs / f"{LONG_STEM}.wav").write_bytes(wav_bytes(tone(1.0), 48_000))
    for name, (make, _) in BAD_AUDIO.items():
        make(songs / name)
    with open(os.path.join(os.fsencode(songs), NOT_UTF8), "wb") as handle:
        handle.write(wav_bytes(tone(), 48_000))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        code = main(["encode", "--checkpoint-dir", str(tiny_root), "--dataset-dir", str(songs), "--output-dir", str(out)])
    text = printed.getvalue()
    text.encode("utf-8")  # printable on any UTF-8 terminal: no raw non-UTF-8 file-name bytes
    return code, text, out


@pytest.mark.parametrize("name", [*BAD_AUDIO, NOT_UTF8.decode("latin-1")])
def test_each_bad_audio_entry_is_rejected_with_its_reason(encoded, name):
    code, text, out = encoded
    assert code == 0, text[-3000:]
    reason = BAD_AUDIO[name][1] if name in BAD_AUDIO else "not valid UTF-8"
    shown = name if name in BAD_AUDIO else NOT_UTF8.decode("utf-8", "replace")
    assert any(f"rejected {shown} (" in line and reason in line for line in text.splitlines()), text[-3000:]
    assert any(item.source == shown and reason in item.reason for item in read_manifest(out).rejected)


def test_good_songs_are_still_encoded_with_capped_text(encoded):
    _, text, out = encoded
    manifest = read_manifest(out)
    assert sorted(clip.source for clip in manifest.clips) == sorted(["good.wav", f"{LONG_STEM}.wav"])
    good = next(clip for clip in manifest.clips if clip.source == "good.wav")
    assert len(good.caption) == 4096 and "warning: good.wav: caption is 10999999 characters long; only the first 4096 are kept" in text
    assert f"Encoded 2, kept 0 unchanged, rejected {len(BAD_AUDIO) + 1};" in text
    assert (out / "manifest.json").stat().st_size < 100_000


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"samples": [{"audio_path": "good\\u0000.wav", "caption": "x"}]}', "samples[0] names the path"),
        ('{"samples": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        ('{"samples": [{"caption": "no path"}]}', "samples[0] is not an object with an"),
        ('{"samples": [1, 2', "invalid JSON"),
    ],
    ids=["nul-byte", "deep-nesting", "no-path", "cut-short"],
)
def test_a_bad_dataset_json_is_named_before_anything_is_written(tiny_root, tmp_path, capsys, content, message):
    songs = tmp_path / "songs"
    songs.mkdir()
    (songs / "good.wav").write_bytes(wav_bytes(tone(), 48_000))
    (songs / "dataset.json").write_text(content, encoding="utf-8")
    code = main(["encode", "--checkpoint-dir", str(tiny_root), "--dataset-dir", str(songs), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and str(songs / "dataset.json") in err and message in err, err
    assert not (tmp_path / "out" / "manifest.json").exists()


# ---------------------------------------------------------------- adapters


def lora_tensors(rank: int = 4) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        f"{PEFT_PREFIX}.lora_A.weight": torch.randn(rank, 32, generator=generator),
        f"{PEFT_PREFIX}.lora_B.weight": torch.randn(32, rank, generator=generator),
    }


def peft_folder(folder: Path, config: dict | str | None = None, tensors: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    save_file(tensors or lora_tensors(), str(folder / "adapter_model.safetensors"))
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(config)
        (folder / "adapter_config.json").write_text(text, encoding="utf-8")
    return folder


GOOD_CONFIG = {"peft_type": "LORA", "r": 4, "lora_alpha": 8}


def make_adapter(case: str, root: Path) -> tuple[Path, Path]:
    """The adapter path of one bad case and the file its error must name."""
    folder = root / case
    if case == "alpha-word":
        path = peft_folder(folder, {**GOOD_CONFIG, "lora_alpha": "sixteen"})
    elif case == "alpha-null":
        path = peft_folder(folder, {**GOOD_CONFIG, "lora_alpha": None})
    elif case == "alpha-infinite":
        path = peft_folder(folder, '{"peft_type": "LORA", "r": 4, "lora_alpha": 1e309}')
    elif case == "rank-word":
        path = peft_folder(folder, {**GOOD_CONFIG, "r": "eight"})
    elif case == "bad-regex":
        path = peft_folder(folder, {**GOOD_CONFIG, "alpha_pattern": {"q_proj[": 4}})
    elif case == "no-config":
        path = peft_folder(folder)
    elif case in ("nan", "inf"):
        tensors = lora_tensors()
        tensors[f"{PEFT_PREFIX}.lora_B.weight"][0, 0] = float(case)
        path = peft_folder(folder, GOOD_CONFIG, tensors)
    elif case == "rank-zero":
        path = peft_folder(folder, GOOD_CONFIG, lora_tensors(rank=0))
    elif case == "two-alphas":
        folder.mkdir()
        path = folder / "comfy.safetensors"
        save_file({**lora_tensors(), f"{PEFT_PREFIX}.alpha": torch.tensor([4.0, 8.0])}, str(path))
        return path, path
    elif case == "fifo":
        folder.mkdir()
        path = folder / "pipe.safetensors"
        os.mkfifo(path)
        return path, path
    else:
        raise AssertionError(case)
    named = path / ("adapter_model.safetensors" if case in ("nan", "inf", "rank-zero") else "adapter_config.json")
    return path, (path if case == "no-config" else named)


ADAPTER_CASES = {
    "alpha-word": '"lora_alpha" is \'sixteen\'',
    "alpha-null": '"lora_alpha" is None',
    "alpha-infinite": '"lora_alpha" is inf',
    "rank-word": '"r" is \'eight\'',
    "bad-regex": "not a valid regular expression",
    "no-config": "no adapter_config.json",
    "nan": "NaN or infinite values",
    "inf": "NaN or infinite values",
    "rank-zero": "empty",
    "two-alphas": "holds 2 values instead of one",
    "fifo": "not a regular file",
}


@pytest.mark.parametrize("case", ADAPTER_CASES)
def test_a_bad_adapter_is_refused_at_export_naming_the_file(tmp_path, capsys, case):
    adapter, named = make_adapter(case, tmp_path)
    out = tmp_path / "exported.safetensors"
    code = main(["export-comfy", str(adapter), str(out)])
    err = capsys.readouterr().err
    assert code == 2 and str(named) in err and ADAPTER_CASES[case] in err, err
    assert not out.exists()


@pytest.mark.parametrize("stored, words", [
    ({"linear_dim": "abc", "linear_alpha": 4}, "linear_dim = 'abc'"),
    ({"linear_dim": 2, "linear_alpha": [1]}, "linear_alpha = [1]"),
    ("not json", "not valid JSON"),
])
def test_unusable_lokr_metadata_is_refused_at_export_naming_the_file(tmp_path, capsys, stored, words):
    lokr = tmp_path / "lokr_weights.safetensors"
    save_file(_lokr_tensors(), str(lokr), metadata={"lokr_config": stored if isinstance(stored, str) else json.dumps(stored)})
    out = tmp_path / "exported.safetensors"
    code = main(["export-comfy", str(lokr), str(out)])
    err = capsys.readouterr().err
    assert code == 2 and str(lokr) in err and words in err and "lokr_config" in err, err
    assert not out.exists()


def _lokr_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "lycoris_layers_0_self_attn_q_proj.lokr_w1": torch.randn(4, 4, generator=generator),
        "lycoris_layers_0_self_attn_q_proj.lokr_w2_a": torch.randn(8, 2, generator=generator),
        "lycoris_layers_0_self_attn_q_proj.lokr_w2_b": torch.randn(2, 8, generator=generator),
        "lycoris_layers_0_self_attn_q_proj.alpha": torch.tensor(2.0),
    }


def test_lokr_metadata_declares_rank_and_alpha_and_export_to_an_unwritable_place_is_refused(tmp_path, capsys):
    lokr = tmp_path / "lokr_weights.safetensors"
    save_file(_lokr_tensors(), str(lokr), metadata={"lokr_config": json.dumps({"linear_dim": 2, "linear_alpha": 3})})
    loaded = load_adapter(lokr)
    assert (loaded.rank, loaded.alpha) == (2, 3.0)
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    (tmp_path / "taken.safetensors").mkdir()
    for target in (blocker / "lora.safetensors", tmp_path / "taken.safetensors"):
        code = main(["export-comfy", str(lokr), str(target)])
        err = capsys.readouterr().err
        assert code == 2 and f"Cannot write {target}" in err, err


def test_sampling_with_a_nan_adapter_is_refused(tiny_root, tmp_path, capsys):
    adapter, named = make_adapter("nan", tmp_path)
    code = main([
        "sample", "--checkpoint-dir", str(tiny_root), "--adapter", str(adapter), "--caption", "x", "--duration", "1",
        "--out", str(tmp_path / "song.flac"),
    ])
    err = capsys.readouterr().err
    assert code == 2 and str(named) in err and "NaN or infinite" in err, err
    assert not (tmp_path / "song.flac").exists()


# ---------------------------------------------------------------- training states


@pytest.fixture(scope="module")
def checkpoint(tiny_root, encoded, tmp_path_factory) -> tuple[list[str], Path]:
    """The CLI train arguments on the fuzz dataset, and the epoch_1 checkpoint of a one-epoch run."""
    dataset = encoded[2]
    run = tmp_path_factory.mktemp("fuzz-run")
    args = ["train", "--checkpoint-dir", str(tiny_root), "--dataset-dir", str(dataset), "--rank", "4", "--alpha", "8",
            "--save-every", "1", "--max-latent-frames", "0"]
    assert main([*args, "--output-dir", str(run), "--epochs", "1"]) == 0
    return args, run / "checkpoints" / "epoch_1"


class Marker:
    """Pickles into a call that would create a file (it must never run)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


def mutate(case: str, state_path: Path, marker: Path) -> None:
    """Damage one copied training_state.pt the way `case` says."""
    if case in ("empty", "garbage", "pickle", "fifo", "list"):
        state_path.unlink()
        if case == "empty":
            state_path.write_bytes(b"")
        elif case == "garbage":
            state_path.write_bytes(os.urandom(2048))
        elif case == "pickle":
            state_path.write_bytes(pickle.dumps({"format": 1, "progress": Marker(marker)}))
        elif case == "fifo":
            os.mkfifo(state_path)
        else:
            torch.save([1, 2, 3], state_path)
        return
    state = torch.load(state_path, weights_only=True)
    if case == "no-adapter-config":
        del state["adapter_config"]
    elif case == "negative-epoch":
        state["progress"]["epoch"] = -1
    elif case == "negative-batch":
        state["progress"]["batch_in_epoch"] = -3
    elif case == "world-size-word":
        state["world_size"] = "two"
    elif case == "bad-adapter-settings":
        state["adapter_config"]["rank"] = "eight"
    elif case != "past-epochs":
        raise AssertionError(case)
    torch.save(state, state_path)


STATE_CASES = {
    "empty": "is empty (0 bytes)",
    "garbage": "Cannot read",
    "pickle": "Cannot read",
    "fifo": "holds no training_state.pt",
    "list": "is not a Side-Step for ComfyUI training state",
    "no-adapter-config": "'adapter_config' is missing",
    "negative-epoch": "progress 'epoch' is -1",
    "negative-batch": "progress 'batch_in_epoch' is -3",
    "world-size-word": "'world_size' is 'two'",
    "bad-adapter-settings": "unusable adapter settings",
    "past-epochs": "has already completed 1 epochs, and this run asks for 1",
}


@pytest.mark.parametrize("case", STATE_CASES)
def test_a_bad_training_state_is_refused_naming_it_and_nothing_is_lost(checkpoint, tmp_path, capsys, case):
    args, source = checkpoint
    copy = tmp_path / "epoch_1"
    copy.mkdir()
    for file in source.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    mutate(case, copy / "training_state.pt", tmp_path / "pickle ran")
    before = {file.name: file.read_bytes() for file in copy.iterdir() if file.is_file()}
    epochs = "1" if case == "past-epochs" else "3"
    code = main([*args, "--output-dir", str(tmp_path / "run"), "--epochs", epochs, "--resume-from", str(copy)])
    err = capsys.readouterr().err
    named = copy if case in ("fifo", "past-epochs", "bad-adapter-settings") else copy / "training_state.pt"
    assert code == 2 and str(named) in err and STATE_CASES[case] in err, err
    assert {file.name: file.read_bytes() for file in copy.iterdir() if file.is_file()} == before
    assert not (tmp_path / "run" / "final").exists() and not (tmp_path / "pickle ran").exists()


def test_encoding_onto_a_full_disk_names_the_clip_and_leaves_no_partial_file(tiny_root, tmp_path, small_disk, capsys):
    disk = small_disk("64k")
    if disk is None:
        pytest.skip("no tmpfs can be mounted here")
    songs = tmp_path / "songs"
    songs.mkdir()
    (songs / "good.wav").write_bytes(wav_bytes(tone(), 48_000))
    code = main(["encode", "--checkpoint-dir", str(tiny_root), "--dataset-dir", str(songs), "--output-dir", str(disk / "data")])
    err = capsys.readouterr().err
    assert code == 2 and f"Cannot write the clip file {disk / 'data'}/good." in err and "No space left" in err, err
    assert list((disk / "data").iterdir()) == []

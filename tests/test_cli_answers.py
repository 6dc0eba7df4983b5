"""Clear one-line answers from the command line: no CUDA device, a wrong LM named before any song is read, counts,
--help that shows every default with help text for every flag, and no native decoder notes or progress bars of tiny
model loads in the output."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from transformers.utils import logging as transformers_logging

from sidestep.cli import build_parser, main
from sidestep.demo import write_demo_songs
from sidestep.load_progress import BAR_FROM_BYTES, load_progress
from sidestep.native_stderr import decoder_messages_into

REPO = Path(__file__).resolve().parents[1]
JUNK_MP3 = bytes(range(256)) * 20  # no MPEG frame anywhere: libmpg123 prints its resync notes on fd 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_device_cuda_without_a_gpu_is_one_line_naming_auto(tiny_root, tmp_path, capsys):
    code = main(["sample", "--checkpoint-dir", str(tiny_root), "--caption", "x", "--device", "cuda", "--out", str(tmp_path / "s.flac")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "Traceback" not in error
    assert "error: --device is cuda but no CUDA device is available here" in error
    assert "Use --device auto (CUDA when available, else the CPU) or cpu." in error


def test_label_with_a_wrong_lm_says_so_before_reading_any_song(tiny_root, tmp_path, capsys):
    songs = write_demo_songs(tmp_path / "songs", seconds=0.5)
    for sidecar in songs.glob("*.txt"):
        sidecar.unlink()
    text_encoder = tiny_root / "Qwen3-Embedding-0.6B"  # a Qwen3 model, but not a 5 Hz LM
    code = main(["label", "--checkpoint-dir", str(tiny_root), "--dataset-dir", str(songs), "--lm", str(text_encoder)])
    captured = capsys.readouterr()
    assert code == 2
    assert f"{text_encoder} is not an ACE-Step 5 Hz LM" in captured.err
    assert "coding" not in captured.out  # no song was decoded first


def test_encode_counts_one_clip_as_one_clip(tiny_root, tmp_path, capsys):
    songs = write_demo_songs(tmp_path / "songs", seconds=1.0)
    for extra in sorted(songs.glob("*.wav"))[1:]:
        extra.unlink()
    out = tmp_path / "tensors"
    assert main(["encode", "--checkpoint-dir", str(tiny_root), "--dataset-dir", str(songs), "--output-dir", str(out)]) == 0
    assert f"; 1 clip in {out}" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["label", "encode", "train", "sample"])
def test_help_shows_every_default_and_every_flag_has_help(command):
    parser = build_parser()
    sub = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction)).choices[command]
    options = [action for action in sub._actions if action.option_strings and action.dest != "help"]
    assert not [action.dest for action in options if not action.help], "flags without help text"
    text = " ".join(sub.format_help().split())
    for action in options:
        if action.default not in (None, False, "") and action.required is False:
            assert f"(default: {action.default})" in text or "default" in action.help, action.dest


def test_a_junk_mp3_could_not_be_decoded_rather_than_does_not_exist(tmp_path):
    from sidestep.audio import load_audio
    from sidestep.errors import AudioError

    junk = tmp_path / "junk.mp3"
    junk.write_bytes(JUNK_MP3)
    with pytest.raises(AudioError) as caught:
        load_audio(junk)
    assert "could not be decoded (not valid MP3 data; decoder: Illegal Audio-MPEG-Header" in str(caught.value)
    assert "does not exist" not in str(caught.value)


@pytest.fixture(scope="module")
def encode_with_a_junk_mp3(tiny_root, tmp_path_factory) -> subprocess.CompletedProcess:
    """A real `python -m sidestep encode` (tiny models) of one good song and a junk .mp3."""
    folder = tmp_path_factory.mktemp("junk_encode")
    songs = write_demo_songs(folder / "songs", seconds=1.0)
    for extra in sorted(songs.glob("*.wav"))[1:]:
        extra.unlink()
    (songs / "junk.mp3").write_bytes(JUNK_MP3)
    command = ["encode", "--checkpoint-dir", str(tiny_root), "--dataset-dir", str(songs), "--output-dir", str(folder / "out")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "sidestep", *command], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_a_junk_mp3_keeps_the_decoders_notes_out_of_the_output_and_in_its_reason(encode_with_a_junk_mp3):
    done = encode_with_a_junk_mp3
    assert done.returncode == 0, done.stderr
    assert "Note:" not in done.stdout + done.stderr and "resync" not in done.stdout + done.stderr
    assert "rejected junk.mp3 (could not be decoded (not valid MP3 data; decoder: Illegal Audio-MPEG-Header" in done.stdout


def test_loading_the_tiny_models_shows_no_progress_bar(encode_with_a_junk_mp3):
    assert "Loading" not in encode_with_a_junk_mp3.stderr and "it/s" not in encode_with_a_junk_mp3.stderr


def test_output_of_other_threads_during_a_decode_still_reaches_stderr(capfd):
    notes: list[str] = []
    other = threading.Thread(target=os.write, args=(2, b"another thread's line\n"))
    with decoder_messages_into(notes):
        os.write(2, b"Note: Illegal Audio-MPEG-Header 0x00000000 at offset 0.\n")
        other.start()
        other.join()
    assert notes == ["Note: Illegal Audio-MPEG-Header 0x00000000 at offset 0."]
    assert capfd.readouterr().err == "another thread's line\n"


def test_progress_bars_stay_off_only_for_small_weights_and_come_back(tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    small.mkdir(), large.mkdir()
    (small / "model.safetensors").write_bytes(b"0" * 1024)
    with (large / "model.safetensors").open("wb") as sparse:  # a sparse file: its size without the disk space
        sparse.truncate(BAR_FROM_BYTES)
    assert transformers_logging.is_progress_bar_enabled()
    with load_progress(small):
        assert not transformers_logging.is_progress_bar_enabled()
        with load_progress(large):
            assert not transformers_logging.is_progress_bar_enabled()  # the small load on the way is still quiet
    assert transformers_logging.is_progress_bar_enabled()
    with load_progress(large):
        assert transformers_logging.is_progress_bar_enabled()

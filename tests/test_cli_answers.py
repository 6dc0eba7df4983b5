"""Clear one-line answers from the command line: no CUDA device, a wrong LM named before any song is read, counts,
and --help that shows every default with help text for every flag."""

from __future__ import annotations

import argparse

import pytest
import torch

from sidestep.cli import build_parser, main
from sidestep.demo import write_demo_songs


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
    junk.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(AudioError) as caught:
        load_audio(junk)
    assert "could not be decoded (not valid MP3 data)" in str(caught.value)
    assert "does not exist" not in str(caught.value)

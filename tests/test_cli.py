"""The command line end to end: models, make-tiny-checkpoints, sample, demo, and what it answers to user mistakes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile

from sidestep.cli import main
from sidestep.demo import TINY_FALL, write_demo_songs


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sidestep", *args], capture_output=True, text=True, timeout=timeout)


def test_make_tiny_checkpoints_then_models_lists_them_with_labels(tmp_path):
    made = run_cli("make-tiny-checkpoints", str(tmp_path / "ckpt"))
    assert made.returncode == 0, made.stderr
    listed = run_cli("models", str(tmp_path / "ckpt"))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert "acestep-v15-turbo" in lines[1] and "[official turbo]" in lines[1]
    assert "acestep-v15-base" in lines[2] and "[official base]" in lines[2]
    assert "my-custom-finetune" in lines[3] and "[custom, base: turbo]" in lines[3]


def test_sample_writes_a_playable_48k_stereo_flac_of_the_asked_duration(tiny_root, tmp_path, capsys):
    out = tmp_path / "song.flac"
    code = main([
        "sample", "--checkpoint-dir", str(tiny_root), "--model-variant", "turbo", "--caption", "calm piano",
        "--duration", "3.5", "--seed", "3", "--out", str(out),
    ])
    assert code == 0
    audio, rate = soundfile.read(out)
    assert rate == 48_000 and audio.ndim == 2 and audio.shape[1] == 2
    assert abs(audio.shape[0] / rate - 3.5) < 0.05
    assert f"wrote {out}" in capsys.readouterr().out


def test_user_errors_exit_with_status_2_and_a_message(tmp_path, capsys):
    code = main(["models", str(tmp_path / "missing")])
    assert code == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err


def test_demo_runs_the_whole_job_on_the_embedded_default(tmp_path):
    done = run_cli("demo", "--workdir", str(tmp_path / "demo"), timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "demo" / "runs" / "demo-lora" / "final" / "adapter_model.safetensors").is_file()
    audio, rate = soundfile.read(tmp_path / "demo" / "demo_sample.flac")
    assert rate == 48_000 and audio.shape[1] == 2
    assert "TensorBoard logs:" in done.stdout and "step 18/18" in done.stdout
    assert "Watch the validation loss" in done.stdout and "validation loss " in done.stdout
    fall = next(line for line in done.stdout.splitlines() if line.startswith("Validation loss "))
    before, after = (float(value) for value in re.search(r"(\d+\.\d+) -> (\d+\.\d+)", fall).groups())
    assert after <= (1 - TINY_FALL) * before, fall  # the fall the demo promises in its 6 epochs
    assert "(the training clips as a reference)" in fall, fall
    assert "`sidestep train` defaults to rank 64, alpha 128, lr 1e-4" in done.stdout
    assert f"checkpoints:      {tmp_path / 'demo' / 'runs' / 'demo-lora' / 'checkpoints'}" in done.stdout
    assert f"model tree:       {tmp_path / 'demo' / 'checkpoints'}" in done.stdout
    assert "FutureWarning" not in done.stderr  # torch's weight_norm deprecation, from the VAE
    again = run_cli("demo", "--workdir", str(tmp_path / "demo"), "--epochs", "1", timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Replacing the previous demo run" in again.stdout
    assert len(list((tmp_path / "demo" / "runs" / "demo-lora" / "runs").glob("events.out.tfevents.*"))) == 1


# ---------------------------------------------------------------- answers to a new user's mistakes and questions


def train_args(tiny_root: Path, dataset: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--checkpoint-dir", str(tiny_root), "--dataset-dir", str(dataset), "--output-dir", str(out),
        "--max-latent-frames", "0", "--save-every", "1", *extra,
    ]


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "LoRA rank: capacity of the adapter (16-128 is typical). (default: 64)" in text and "(default: 0.0001)" in text and "(default: cosine)" in text
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "(default: song.flac)" in " ".join(capsys.readouterr().out.split())


def test_sample_refuses_an_unwritable_format_before_any_work(tiny_root, tmp_path, capsys):
    code = main(["sample", "--checkpoint-dir", str(tiny_root), "--caption", "x", "--out", str(tmp_path / "s.mp3")])
    captured = capsys.readouterr()
    assert code == 2
    assert f"{tmp_path / 's.mp3'}: cannot save this format. Use a file name ending in .flac or .wav." in captured.err
    assert "step" not in captured.out  # nothing was generated


def test_train_on_a_songs_folder_says_to_encode_first(tiny_root, tmp_path, capsys):
    songs = write_demo_songs(tmp_path / "songs", seconds=0.5)
    code = main(train_args(tiny_root, songs, tmp_path / "out"))
    assert code == 2
    error = capsys.readouterr().err
    assert f"{songs} holds songs, not an encoded dataset: run `python -m sidestep encode" in error
    assert "then train with --dataset-dir TENSORS" in error


def test_resume_from_a_missing_folder_lists_the_checkpoints_that_exist(tiny_root, encoded, tmp_path, capsys):
    out = tmp_path / "out"
    for epoch in (1, 2):
        (out / "checkpoints" / f"epoch_{epoch}").mkdir(parents=True)
        (out / "checkpoints" / f"epoch_{epoch}" / "training_state.pt").write_bytes(b"")
    missing = out / "checkpoints" / "epoch_40"
    code = main(train_args(tiny_root, encoded, out, "--resume-from", str(missing)))
    assert code == 2
    error = capsys.readouterr().err
    assert f"--resume-from {missing} does not exist. Checkpoints there: " in error
    assert f"{(out / 'checkpoints' / 'epoch_1').resolve()}, {(out / 'checkpoints' / 'epoch_2').resolve()}." in error
    code = main(train_args(tiny_root, encoded, tmp_path / "other", "--resume-from", str(tmp_path / "other" / "epoch_3")))
    assert code == 2 and "There are no epoch_N checkpoints in" in capsys.readouterr().err
    code = main(train_args(tiny_root, encoded, tmp_path / "fresh", "--resume-from", "latest"))
    assert code == 2 and f"--resume-from is 'latest' but {tmp_path / 'fresh'} has no checkpoints/epoch_N folder yet" in capsys.readouterr().err


def scalar_steps(log_dir: Path, tag: str) -> list[int]:
    """The steps TensorBoard shows for `tag` (it applies purge_step across event files as it reads them)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [scalar.step for scalar in events.Scalars(tag)]


def test_resume_says_what_it_resumed_and_kept_and_tensorboard_shows_each_step_once(tiny_root, encoded, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(train_args(tiny_root, encoded, out, "--adapter", "lokr", "--epochs", "2")) == 0
    first = capsys.readouterr().out
    assert "\x1b[" not in first and "too large" not in first  # LyCORIS: no colour codes, no full-matrix warning
    assert main(train_args(
        tiny_root, encoded, out, "--adapter", "lokr", "--epochs", "4", "--lr", "1e-3",
        "--resume-from", str(out / "checkpoints" / "epoch_1"),
    )) == 0
    text = capsys.readouterr().out
    steps = 3  # three clips, batch size 1
    assert f"note: resumed from {out / 'checkpoints' / 'epoch_1'} (epoch 1, step {steps})" in text
    assert "note: learning_rate 0.001 was given, but the checkpoint's 0.0001 is kept" in text
    assert f"note: epochs 2 → 4: the cosine schedule is recomputed over 4 epochs ({4 * steps} steps)" in text
    assert scalar_steps(out / "runs", "loss") == list(range(1, 4 * steps + 1))

"""`sidestep train` keeps the pack's promises: Ctrl-C / SIGTERM save a checkpoint and a usable adapter (real process,
real signal), and a run folder holds one run (a second run is refused; --overwrite starts from an empty folder)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from sidestep.cli import main
from sidestep.training.layout import RunLayout, complete_checkpoints
from sidestep.training.run import adapter_metadata

STEPS_PER_EPOCH = 3  # the demo's three songs, batch size 1


def train_args(tiny_root: Path, dataset: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--checkpoint-dir", str(tiny_root), "--dataset-dir", str(dataset), "--output-dir", str(out),
        "--max-latent-frames", "0", "--rank", "4", "--alpha", "8", *extra,
    ]


def interrupted_train(args: list[str], *cues: tuple[str, int]) -> tuple[int, str]:
    """Run `sidestep train` as its own process, sending each (text, signal) cue's signal when a line with its text is
    printed, in order; returns the exit status and everything it printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sidestep", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines, waiting = [], list(cues)
    for line in process.stdout:
        lines.append(line)
        if waiting and waiting[0][0] in line:
            process.send_signal(waiting.pop(0)[1])
    return process.wait(), "".join(lines)


def weights(folder: Path) -> dict:
    return load_file(folder / "adapter_model.safetensors")


def test_ctrl_c_saves_a_checkpoint_and_final_that_resume_bit_exact(tiny_root, encoded, tmp_path, capsys):
    epochs = 2  # 6 steps: the signal sent after step 2 stops the run after step 3
    out = tmp_path / "stopped"
    code, printed = interrupted_train(
        train_args(tiny_root, encoded, out, "--epochs", str(epochs), "--save-every", "10"),
        ("] step 2/", signal.SIGINT),
        ("SIGINT: finishing the current step", signal.SIGINT),  # a second Ctrl-C while the run saves
    )
    assert code == 130, printed[-3000:]
    assert "SIGINT: finishing the current step, then saving a checkpoint and the final adapter" in printed
    assert "SIGINT again: waiting for the checkpoint and final adapter to be saved" in printed, printed
    assert "Traceback" not in printed
    layout = RunLayout(out)
    (checkpoint,) = complete_checkpoints(layout.checkpoints)
    assert f"checkpoint saved: {checkpoint}" in printed
    assert f"Stopped by SIGINT: checkpoint {checkpoint}, adapter {layout.final}." in printed
    assert "--resume-from latest" in printed
    stopped_at = adapter_metadata(layout.final).global_step
    assert 2 <= stopped_at < epochs * STEPS_PER_EPOCH
    for name, tensor in weights(layout.final).items():
        assert tensor.equal(weights(checkpoint)[name])

    # Resumed to the end, the stopped run is bit-for-bit the run that was never stopped.
    assert main(train_args(tiny_root, encoded, out, "--epochs", str(epochs), "--save-every", "10",
                           "--resume-from", "latest")) == 0
    assert main(train_args(tiny_root, encoded, tmp_path / "straight", "--epochs", str(epochs), "--save-every", "10")) == 0
    capsys.readouterr()
    straight = weights(RunLayout(tmp_path / "straight").final)
    resumed = weights(layout.final)
    assert straight.keys() == resumed.keys()
    for name, tensor in straight.items():
        assert tensor.equal(resumed[name]), name


def test_sigterm_saves_too_and_exits_143(tiny_root, encoded, tmp_path):
    out = tmp_path / "terminated"
    code, printed = interrupted_train(
        train_args(tiny_root, encoded, out, "--epochs", "4", "--save-every", "100"), ("] step 1/", signal.SIGTERM)
    )
    assert code == 128 + signal.SIGTERM, printed[-3000:]
    assert "SIGTERM: finishing the current step" in printed and "again" not in printed
    assert complete_checkpoints(RunLayout(out).checkpoints) and (RunLayout(out).final / "adapter_model.safetensors").is_file()


def test_a_used_run_folder_is_refused_and_overwrite_starts_from_an_empty_one(tiny_root, encoded, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_root, encoded, out, "--epochs", "2")) == 0
    capsys.readouterr()
    assert main(train_args(tiny_root, encoded, out, "--epochs", "1", "--rank", "8")) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert (
        f"error: The run folder {out} already holds a run (LoRA rank 4, alpha 8 on attention, lr 0.0001 on "
        "acestep-v15-turbo; final/ written after epoch 2 of 2). A folder holds one run: continue it with "
        "--resume-from latest, start over with --overwrite (deletes what is in the folder first), or train into "
        "another folder."
    ) in error
    assert len(complete_checkpoints(RunLayout(out).checkpoints)) == 2  # untouched

    assert main(train_args(tiny_root, encoded, out, "--epochs", "1", "--rank", "8", "--overwrite")) == 0
    printed = capsys.readouterr().out
    assert f"note: starting over: deleted the earlier run in {out} (checkpoints, final, runs)" in printed
    layout = RunLayout(out)
    assert [path.name for path in complete_checkpoints(layout.checkpoints)] == ["epoch_1"]
    assert len(list(layout.tensorboard.glob("events.out.tfevents.*"))) == 1
    assert adapter_metadata(layout.final).adapter_config.rank == 8
    # The new run resumes as itself (rank 8), not as the earlier run's stale checkpoints.
    assert main(train_args(tiny_root, encoded, out, "--epochs", "2", "--rank", "8", "--resume-from", "latest")) == 0
    assert f"resumed from {layout.checkpoint(1)} (epoch 1" in capsys.readouterr().out


def test_resume_from_a_typo_of_latest_asks_did_you_mean(tiny_root, encoded, tmp_path, capsys):
    assert main(train_args(tiny_root, encoded, tmp_path / "run", "--resume-from", "lastest")) == 2
    assert "error: --resume-from lastest: no such checkpoint. Did you mean 'latest'?" in capsys.readouterr().err
    assert main(train_args(tiny_root, encoded, tmp_path / "fresh", "--resume-from", "latest")) == 2
    error = capsys.readouterr().err
    assert f"--resume-from is 'latest' but {tmp_path / 'fresh'} has no checkpoints/epoch_N folder yet" in error
    assert "(without --resume-from)" in error and "`" not in error

"""The command line end to end: models, make-tiny-checkpoints, sample, demo and user-error exits."""

from __future__ import annotations

import subprocess
import sys

import soundfile

from sidestep.cli import main


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
    done = run_cli("demo", "--workdir", str(tmp_path / "demo"), "--epochs", "2", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "demo" / "runs" / "demo-lora" / "final" / "adapter_model.safetensors").is_file()
    audio, rate = soundfile.read(tmp_path / "demo" / "demo_sample.flac")
    assert rate == 48_000 and audio.shape[1] == 2
    assert "TensorBoard logs:" in done.stdout and "step 6/6" in done.stdout

"""One writer per run folder, repair after kills, and a full disk: on the tiny model tree."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from sidestep.bundle import open_checkpoint
from sidestep.dataset.encode import EncodeConfig, encode_dataset
from sidestep.errors import TrainingError
from sidestep.training.layout import LOCK_FILE
from sidestep.training.runfolder import RunLock, recover_run_folder
from sidestep.training.checkpoints import STATE_FILE, latest_checkpoint, load_training_state
from tests.test_training import adapter_tensors, cli_train, make_trainer, write_song

HOLD_LOCK = (
    "import sys; from sidestep.training.runfolder import RunLock; RunLock(sys.argv[1]).acquire(); "
    "print('locked', flush=True); sys.stdin.read()"
)


@pytest.fixture(scope="module")
def dataset(tiny_root, tmp_path_factory) -> Path:
    """Two short songs encoded for the tiny turbo model."""
    songs, folder = tmp_path_factory.mktemp("songs"), tmp_path_factory.mktemp("data")
    write_song(songs / "low hum.wav", 1.0, 220.0)
    write_song(songs / "bright.wav", 1.6, 880.0)
    encode_dataset(open_checkpoint(tiny_root, "acestep-v15-turbo"), EncodeConfig(str(songs), str(folder)))
    return folder


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process that takes the run folder's lock and keeps it until its stdin closes (or it is killed)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_writer_is_refused_with_the_holder_named(tiny_root, dataset, tmp_path):
    out = tmp_path / "run"
    holder = hold_lock(out)
    try:
        with pytest.raises(TrainingError, match=re.escape(f"Another training run is writing to {out} (pid {holder.pid} on ")):
            make_trainer(tiny_root, dataset, out, epochs=1).run()
        assert not (out / "checkpoints").exists() and not (out / "final").exists()
        refused = subprocess.run(cli_train(tiny_root, dataset, out), check=False, capture_output=True, text=True, timeout=300)
    finally:
        holder.communicate("")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"pid {holder.pid}" in refused.stderr and "-c" in refused.stderr
    # Released on a normal exit: the same folder trains now.
    assert make_trainer(tiny_root, dataset, out, epochs=1).run().status == "finished"


def test_the_lock_of_a_killed_holder_is_stale(tiny_root, dataset, tmp_path):
    out = tmp_path / "run"
    holder = hold_lock(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert str(holder.pid) in (out / LOCK_FILE).read_text()
    with RunLock(out):
        assert f'"pid": {os.getpid()}' in (out / LOCK_FILE).read_text()
        with pytest.raises(TrainingError, match=f"pid {os.getpid()} "):
            RunLock(out).acquire()  # also within one process: each acquisition is its own open file
    assert make_trainer(tiny_root, dataset, out, epochs=1).run().status == "finished"


def test_start_up_puts_back_a_folder_moved_aside_and_removes_staging(tiny_root, dataset, tmp_path):
    out = tmp_path / "run"
    make_trainer(tiny_root, dataset, out, epochs=2).run()
    before = {name: adapter_tensors(out / name) for name in ("final", "checkpoints/epoch_2")}
    # A kill between the two moves of a replacement leaves the old folder aside and the new one staged.
    for name in ("final", "checkpoints/epoch_2"):
        target = out / name
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, aside / "dir")
        staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        (staged / STATE_FILE).write_bytes(b"half")
    assert latest_checkpoint(out).name == "epoch_1"
    notes = recover_run_folder(out)
    assert sorted(note.split(",")[0] for note in notes if note.startswith("put back")) == [
        f"put back {out / 'checkpoints' / 'epoch_2'}", f"put back {out / 'final'}"
    ]
    assert sum(note.startswith("removed") for note in notes) == 2
    for name, tensors in before.items():
        restored = adapter_tensors(out / name)
        assert all(restored[key].equal(value) for key, value in tensors.items())
    leftovers = [p.name for p in [*out.iterdir(), *(out / "checkpoints").iterdir()] if p.name.startswith(".") and p.name != LOCK_FILE]
    assert leftovers == []
    load_training_state(latest_checkpoint(out))


def test_a_run_start_reports_the_repairs(tiny_root, dataset, tmp_path):
    out = tmp_path / "run"
    make_trainer(tiny_root, dataset, out, epochs=1).run()
    staged = Path(tempfile.mkdtemp(prefix=".epoch_2.", suffix=".tmp", dir=out / "checkpoints"))
    (staged / "adapter_model.safetensors").write_bytes(b"partial")
    events = []
    resumed = make_trainer(
        tiny_root, dataset, out, epochs=2, resume_from=str(out / "checkpoints" / "epoch_1"),
        callback=events.append,
    )
    assert resumed.run().status == "finished"
    assert f"removed {staged}, left unfinished by an interrupted save" in [e.message for e in events if e.kind == "note"]
    assert not staged.exists()


def test_a_full_disk_names_the_checkpoint_and_the_one_to_resume_from(tiny_root, dataset, tmp_path, small_disk, monkeypatch):
    disk = small_disk("256k")
    out = (disk or tmp_path) / "run"
    trainer = make_trainer(tiny_root, dataset, out, epochs=1000, log_dir=str(tmp_path / "logs"))
    if disk is None:  # no tmpfs here: the third checkpoint's save meets ENOSPC as a full disk raises it
        save = trainer._save_adapter

        def full_at_epoch_3(folder: Path) -> None:
            if trainer.progress.epoch == 3:
                raise OSError(28, "No space left on device", str(folder / "adapter_model.safetensors"))
            save(folder)

        monkeypatch.setattr(trainer, "_save_adapter", full_at_epoch_3)
    with pytest.raises(TrainingError) as raised:
        trainer.run()
    failed = trainer.progress.epoch
    assert 1 < failed < 1000
    checkpoints = out / "checkpoints"
    assert str(raised.value) == (
        f"Could not write checkpoint {checkpoints / f'epoch_{failed}'}: the disk holding {out} is full. Nothing was "
        f"half-written; free some space, then resume from {checkpoints / f'epoch_{failed - 1}'} (the newest intact checkpoint)."
    )
    assert {p.name for p in checkpoints.iterdir()} == {f"epoch_{n}" for n in range(1, failed)}
    load_training_state(checkpoints / f"epoch_{failed - 1}")


# A CLI training run that SIGKILLs itself at one exact point of a checkpoint save (an audit hook sees the call just
# before it happens): "fill" = while its training_state.pt is being written into the staging folder of TARGET,
# "swap" = just before the finished staging folder is renamed to TARGET (when TARGET exists, it has been moved aside).
KILL_IN_SAVE = """
import os, runpy, signal, sys
from pathlib import Path
point, target = sys.argv[1], Path(sys.argv[2])
def hook(event, args):
    if point == "fill" and event == "tempfile.mkstemp":
        path = Path(args[0])
        hit = path.parent.parent == target.parent and path.parent.name.startswith(f".{target.name}.") and "training_state" in path.name
    elif point == "swap" and event == "os.rename":
        hit = Path(args[1]) == target and str(args[0]).endswith(".tmp")
    else:
        hit = False
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(hook)
sys.argv = ["sidestep", *sys.argv[3:]]
runpy.run_module("sidestep", run_name="__main__", alter_sys=True)
"""


def killed_in_save(command: list[str], point: str, target: Path) -> None:
    """Run a CLI command (as `cli_train` builds it) that is SIGKILLed at `point` of the save of `target`."""
    victim = subprocess.run(
        [sys.executable, "-c", KILL_IN_SAVE, point, str(target), *command[3:]], check=False, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert victim.returncode == -signal.SIGKILL, victim.stderr[-2000:]


def test_kills_inside_the_save_window_then_resume_is_bit_exact(tiny_root, dataset, tmp_path):
    data, out = dataset, tmp_path / "killed"
    checkpoints = out / "checkpoints"
    subprocess.run(cli_train(tiny_root, data, tmp_path / "full"), check=True, capture_output=True, timeout=300)

    killed_in_save(cli_train(tiny_root, data, out), "fill", checkpoints / "epoch_3")
    assert latest_checkpoint(out).name == "epoch_2" and not (out / "final").exists()
    assert [p.name for p in checkpoints.glob(".epoch_3.*.tmp")]  # the unfinished staging folder

    # Resuming from an older checkpoint rewrites epoch_2: killed between moving the old one aside and the new one in.
    resume_1 = cli_train(tiny_root, data, out, "--resume-from", str(checkpoints / "epoch_1"))
    killed_in_save(resume_1, "swap", checkpoints / "epoch_2")
    assert not (checkpoints / "epoch_2").exists() and list(checkpoints.glob(".epoch_2.old.*"))
    assert not list(checkpoints.glob(".epoch_3.*.tmp"))  # removed when that run started

    killed_in_save(resume_1, "swap", checkpoints / "epoch_5")  # its start put epoch_2 back; killed before epoch_5 moves in
    assert latest_checkpoint(out).name == "epoch_4" and (checkpoints / "epoch_2" / STATE_FILE).is_file()

    resumed = subprocess.run(
        cli_train(tiny_root, data, out, "--resume-from", str(latest_checkpoint(out))), check=False, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    expected, got = adapter_tensors(tmp_path / "full" / "final"), adapter_tensors(out / "final")
    assert expected.keys() == got.keys() and all(torch.equal(expected[key], got[key]) for key in expected)
    assert [p.name for p in checkpoints.iterdir() if p.name.startswith(".")] == []

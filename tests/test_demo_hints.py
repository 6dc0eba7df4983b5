"""The demo covers the whole job: its tiny tree holds a 5 Hz LM, and its "Next:" commands run as printed, from the
folder the demo ran in, writing only inside the demo's folder."""

from __future__ import annotations

import shlex
import subprocess

from sidestep.demo import run_demo
from sidestep.tiny_models import LM_FOLDER


def test_the_demos_next_commands_run_as_printed_inside_its_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    demo = run_demo(tmp_path / "sidestep-demo", epochs=1, song_seconds=1.0, sample_seconds=1.0)
    printed = capsys.readouterr().out
    assert (demo.checkpoint_dir / LM_FOLDER / "config.json").is_file()
    commands = demo.next_commands()
    assert [" ".join(shlex.split(command)[1:4]) for command in commands] == [
        "-m sidestep models", "-m sidestep label", "-m sidestep sample",
    ]
    assert all(f"  {command}\n" in printed + "\n" for command in commands)
    before = sorted(path.name for path in tmp_path.iterdir())
    for command in commands:
        done = subprocess.run(shlex.split(command), cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, (command, done.stderr[-2000:])
    assert sorted(path.name for path in tmp_path.iterdir()) == before == ["sidestep-demo"]
    assert (demo.audio_path.with_name("song.flac")).is_file()

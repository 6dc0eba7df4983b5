"""Train Adapter in a real ComfyUI server refuses a run folder another process is writing to, with the core's message."""

from __future__ import annotations

from tests.test_run_lock import hold_lock

from .fixtures_pack import EXAMPLE_GRAPHS, substitute
from .host import ComfyUIHost
from .test_nodes import run_folder, run_prompt


def test_train_refuses_a_run_folder_in_use_naming_the_other_process(pack: ComfyUIHost) -> None:
    graph = EXAMPLE_GRAPHS["train_lora_turbo"]
    prompt = substitute({key: graph[key] for key in ("1", "2", "3", "4")}, "SideStepTrainAdapter", run_name="busy", epochs=1)
    out = run_folder(pack, "busy")
    holder = hold_lock(out)
    try:
        run = run_prompt(pack, prompt)
    finally:
        holder.communicate("")
    assert run.entry["status"]["status_str"] == "error"
    (error,) = run.events("execution_error")
    assert error["node_id"] == "4" and error["exception_type"].endswith("TrainingError"), error
    assert f"Another training run is writing to {out} (pid {holder.pid} on " in error["exception_message"]
    assert not (out / "checkpoints").exists() and not (out / "final").exists()

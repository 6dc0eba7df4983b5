"""The live training widget in the real frontend: status, progress bar and loss chart update during training, preview
players serve audio, Stop & save ends training normally with a usable adapter, and a reload restores the widget; plus
the job routes' input validation."""

from __future__ import annotations

import importlib.util
import io
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import soundfile

from sidestep.demo import DEMO_ALPHA, DEMO_LR, DEMO_RANK, TINY_TARGETS
from sidestep.training.events import StopSignal

from .fixtures_pack import load_example
from .host import ARTIFACTS_DIR, HTTP_TIMEOUT, REPO_ROOT, ComfyUIHost, Frontend


RUN_NAME = "widget_run"
EPOCHS = 200  # far more than the test waits for: it ends the run with Stop & save
PREVIEW_EVERY = 5
PREVIEW_SECONDS = 10.0
SCREENSHOT = "training_widget"
TRAIN = '.sidestep-train[data-node-id="4"]'  # the example's node ids
ENCODE = '.sidestep-encode[data-node-id="2"]'
# Widget values set in the frontend before queueing: a fresh dataset folder and run (nothing cached from other tests),
# frequent checkpoints and previews (a tiny-model epoch takes a fraction of a second, a preview a few seconds), the
# demo's adapter and learning rate (so the validation loss visibly falls on the tiny model), and a short song downstream.
SETTINGS = {
    "SideStepEncodeDataset": {"dataset_folder": "sidestep/datasets/widget_songs"},
    "SideStepConfigureAdapter": {
        "rank": DEMO_RANK, "alpha": DEMO_ALPHA, "target": "custom", "custom_modules": ", ".join(TINY_TARGETS),
    },
    "SideStepTrainAdapter": {
        "run_name": RUN_NAME, "epochs": EPOCHS, "save_every": 2, "preview_every": PREVIEW_EVERY, "learning_rate": DEMO_LR,
    },
    "SideStepSampleWithShift": {"duration": 5.0},
}
READY = "() => !!(window.app && window.app.graph && window.app.extensionManager)"


@pytest.fixture
def page(pack: ComfyUIHost, browser_page: Frontend) -> Iterator[Frontend]:
    """The session's frontend page (one sync Playwright per process); afterwards no training of ours is left running
    (should the test fail before Stop & save) and the page is ready, in the dark palette."""
    yield browser_page
    for job in requests.get(f"{pack.url}/sidestep/jobs", timeout=HTTP_TIMEOUT).json()["jobs"].values():
        if job["stoppable"]:
            requests.post(f"{pack.url}/sidestep/jobs/{job['job_id']}/stop", timeout=HTTP_TIMEOUT)
    browser_page.wait_for_function(READY)
    set_palette(browser_page, "dark")


def widget(page: Frontend, selector: str = TRAIN) -> dict[str, Any]:
    """What the widget shows: its data attributes, status texts, bar width, chart pixels and preview sources."""
    return page.page.evaluate(
        """(selector) => {
            const root = document.querySelector(selector);
            if (!root) return null;
            const text = (css) => root.querySelector(css)?.textContent ?? "";
            const canvas = root.querySelector("canvas");
            return {
                ...root.dataset,
                status: text(".sidestep-status"),
                stats: text(".sidestep-stats"),
                validation: text(".sidestep-validation"),
                checkpoint: text(".sidestep-checkpoint"),
                message: text(".sidestep-message"),
                adapter: root.querySelector(".sidestep-adapter")?.hidden === false ? text(".sidestep-path") : null,
                rejectedTitle: root.querySelector(".sidestep-rejected")?.title ?? "",
                bar: root.querySelector(".sidestep-bar-fill")?.getBoundingClientRect().width ?? 0,
                chart: canvas ? canvas.toDataURL() : "",
                previews: [...root.querySelectorAll("audio")].map((a) => a.getAttribute("src")),
                labels: [...root.querySelectorAll(".sidestep-preview-label")].map((l) => l.textContent),
            };
        }""",
        selector,
    )


def wait_widget(page: Frontend, condition: str, selector: str = TRAIN) -> dict[str, Any]:
    """Wait until `condition` (a JS expression over `w`, the widget root element) holds; return the widget.

    Patient while the server works (Frontend.wait_for_function): a busy machine only makes it slower."""
    page.wait_for_function(
        f"(selector) => {{ const w = document.querySelector(selector); return !!w && ({condition}); }}", arg=selector
    )
    return widget(page, selector)


def load_training_graph(page: Frontend) -> str:
    """Load the training example through app.loadGraphData, set this test's widget values in the frontend, and add
    a second, muted Train Adapter (it is not queued); return the second one's widget selector."""
    page.page.evaluate("async () => { await window.app.refreshComboInNodes(); }")
    page.load_workflow(load_example("train_lora_turbo"))
    muted = page.page.evaluate(
        """(settings) => {
            for (const node of window.app.graph.nodes) {
                for (const [name, value] of Object.entries(settings[node.comfyClass] ?? {})) {
                    node.widgets.find((w) => w.name === name).value = value;
                }
            }
            const second = window.LiteGraph.createNode("SideStepTrainAdapter");
            second.pos = [2400, 700];
            second.mode = window.LiteGraph.NEVER;
            window.app.graph.add(second);
            return second.id;
        }""",
        SETTINGS,
    )
    return f'.sidestep-train[data-node-id="{muted}"]'


def frame_train_node(page: Frontend) -> None:
    """Show the Train Adapter node at 100 % zoom with the bottom of the node (its widget) in view."""
    page.page.evaluate(
        """() => {
            const app = window.app;
            const node = app.graph.getNodeById(4);
            const box = app.canvas.canvas.getBoundingClientRect();
            app.canvas.ds.scale = 1;
            app.canvas.ds.offset = [160 - node.pos[0], box.height - 24 - node.size[1] - node.pos[1]];
            app.canvas.setDirty(true, true);
        }"""
    )
    page.page.wait_for_timeout(500)  # let the canvas and the DOM widgets follow the new view


def screenshot_widget(page: Frontend, name: str) -> Path:
    """Save a PNG of the widget's part of the Train Adapter node as test-artifacts/<name>.png."""
    frame_train_node(page)
    clip = page.page.evaluate(
        """(selector) => {
            const node = window.app.graph.getNodeById(4);
            const box = window.app.canvas.canvas.getBoundingClientRect();
            const top = document.querySelector(selector).getBoundingClientRect().top - 40;
            const bottom = box.top + box.height - 16;
            return { x: box.left + 150, y: top, width: node.size[0] + 20, height: bottom - top };
        }""",
        TRAIN,
    )
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS_DIR / f"{name}.png"
    page.page.screenshot(path=str(path), clip=clip)
    return path


def set_palette(page: Frontend, palette: str) -> None:
    """Switch ComfyUI's colour palette (dark, light) through its settings."""
    page.page.evaluate("async (id) => { await window.app.extensionManager.setting.set('Comfy.ColorPalette', id); }", palette)


def reload(page: Frontend) -> None:
    """Reload the page and wait until the frontend is ready again."""
    page.page.reload()
    page.wait_for_function(READY)


# ---------------------------------------------------------------- the job registry and its routes


def load_jobs_module() -> Any:
    """nodes/jobs.py on its own (the nodes package needs ComfyUI; this module does not)."""
    name = "sidestep_jobs_under_test"
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "nodes" / "jobs.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_registry_keeps_recent_events_and_stops_only_running_jobs() -> None:
    """Messages get the job id and increasing sequence numbers; steps and rarer events have separate windows;
    Stop & save reaches only a running job with a stop signal; a node's new job replaces its old one."""
    jobs = load_jobs_module()
    registry = jobs.JobRegistry()
    stop = StopSignal()
    with registry.track("12:4", "SideStepTrainAdapter", stop) as job:
        assert len(job.id) == 32 and int(job.id, 16) >= 0
        preview = job.record("sidestep.progress", {"kind": "preview", "node": "12:4"})
        for step in range(jobs.HISTORY_LIMIT + 5):
            job.record("sidestep.progress", {"kind": "step", "step": step})
        (snapshot,) = registry.snapshots("12:4").values()
        assert snapshot["running"] and snapshot["stoppable"]
        events = [item["data"] for item in snapshot["events"]]
        assert events[0] == preview == {"kind": "preview", "node": "12:4", "job_id": job.id, "seq": 1}
        assert len(events) == jobs.HISTORY_LIMIT + 1 and events[1]["step"] == 5
        assert [event["seq"] for event in events] == sorted(event["seq"] for event in events)
        assert not registry.request_stop("0" * 32) and not stop.requested
        assert registry.request_stop(job.id) and stop.reason == jobs.STOP_REASON
    assert not registry.request_stop(job.id) and not registry.snapshots("12:4")["12:4"]["stoppable"]
    with registry.track("2", "SideStepEncodeDataset") as encode:
        assert not registry.request_stop(encode.id)
    with registry.track("12:4", "SideStepTrainAdapter", StopSignal()) as again:
        assert registry.snapshots("12:4")["12:4"]["job_id"] == again.id != job.id
    assert set(registry.snapshots()) == {"12:4", "2"}


def test_job_routes_validate_their_input(pack: ComfyUIHost) -> None:
    """Stop takes only a well-formed id of a running job (400 malformed, 404 unknown); the history validates `node`."""
    for prefix in ("", "/api"):
        base = f"{pack.url}{prefix}/sidestep/jobs"
        for malformed in ("abc", "0" * 31, "0" * 33, "A" * 32, "g" * 32, "0" * 31 + "%00", "0" * 32 + "%20"):
            assert requests.post(f"{base}/{malformed}/stop", timeout=HTTP_TIMEOUT).status_code == 400, malformed
        assert requests.post(f"{base}/..%2F..%2F{'0' * 26}/stop", timeout=HTTP_TIMEOUT).status_code in (400, 404)
        unknown = requests.post(f"{base}/{uuid.uuid4().hex}/stop", json={"path": "/etc/passwd"}, timeout=HTTP_TIMEOUT)
        assert unknown.status_code == 404 and "error" in unknown.json()
        assert requests.get(f"{base}/{uuid.uuid4().hex}/stop", timeout=HTTP_TIMEOUT).status_code in (404, 405)
        answer = requests.get(base, timeout=HTTP_TIMEOUT)
        assert answer.status_code == 200 and isinstance(answer.json()["jobs"], dict)
        assert requests.get(base, params={"node": "12:4"}, timeout=HTTP_TIMEOUT).json() == {"jobs": {}}
        for bad in ({"node": "../etc"}, {"node": ""}, {"node": "x" * 100}, {"other": "1"}, {"node": ["1", "2"]}):
            assert requests.get(base, params=bad, timeout=HTTP_TIMEOUT).status_code == 400, bad


# ---------------------------------------------------------------- the widget during a real run


def test_widget_follows_training_and_stop_and_save_keeps_the_workflow_going(pack: ComfyUIHost, page: Frontend) -> None:
    """Queue the training example from the frontend: the encode and training widgets update live, a preview player
    serves the preview song, a reload restores the widget from the server's history, and Stop & save ends training
    with an adapter that the downstream nodes use to produce a song."""
    other_train = load_training_graph(page)
    # Earlier runs of these node ids in this session may be on show (replayed); a new job replaces them.
    old_encode, old_train = widget(page, ENCODE).get("job", ""), widget(page).get("job", "")
    prompt_id = page.queue()

    encoded = wait_widget(page, f"w.dataset.job !== '{old_encode}' && w.dataset.state === 'finished'", selector=ENCODE)
    assert encoded["status"].startswith("clip 2/2") and encoded["rejected"] == "1"
    assert encoded["rejectedTitle"].startswith("broken.wav: ")

    first = wait_widget(page, f"w.dataset.job !== '{old_train}' && Number(w.dataset.points) >= 2")
    assert first["state"] == "running" and len(first["job"]) == 32
    assert f"/{EPOCHS}" in first["status"] and "elapsed" in first["status"] and "loss" in first["stats"]
    later = wait_widget(page, f"Number(w.dataset.points) >= {int(first['points']) + 2}")
    assert later["bar"] > first["bar"] > 0
    assert later["chart"] != first["chart"]
    assert widget(page, other_train)["state"] == "idle", "events are routed to their own node only"

    with_previews = wait_widget(page, "w.querySelectorAll('audio').length >= 2")
    newest, older = with_previews["labels"][:2]
    assert newest.startswith(f"epoch {2 * PREVIEW_EVERY} · loss ") and older.startswith(f"epoch {PREVIEW_EVERY} · loss ")
    assert "checkpoints/epoch_" in with_previews["checkpoint"]
    source = with_previews["previews"][0]
    assert source.startswith("/api/view?") and "type=output" in source
    served = requests.get(f"{pack.url}{source}", timeout=HTTP_TIMEOUT)
    assert served.status_code == 200 and served.headers["content-type"].startswith("audio/")
    audio, rate = soundfile.read(io.BytesIO(served.content))
    assert rate == 48_000 and audio.shape[0] / rate == pytest.approx(PREVIEW_SECONDS, abs=0.05)

    validated = wait_widget(page, "Number(w.dataset.valPoints) >= 3 && w.dataset.bestEpoch !== undefined")
    assert validated["validation"].startswith("validation loss ") and " · best: epoch " in validated["validation"]
    assert int(validated["bestEpoch"]) >= 2 and int(validated["bestEpoch"]) % 2 == 0  # a saved checkpoint (every 2)

    screenshot_widget(page, SCREENSHOT)  # test-artifacts/ only: docs/training_widget.png and docs/validation_widget.png
    # are copied from it by hand
    set_palette(page, "light")
    wait_widget(page, f"Number(w.dataset.points) > {widget(page)['points']}")
    screenshot_widget(page, f"{SCREENSHOT}_light")
    set_palette(page, "dark")

    before_reload = int(widget(page)["points"])
    reload(page)
    restored = wait_widget(page, "Number(w.dataset.replayed) > 0")
    assert int(restored["points"]) >= before_reload and restored["status"].startswith("epoch ")
    assert restored["previews"] and restored["state"] == "running"

    frame_train_node(page)
    page.page.locator(f"{TRAIN} .sidestep-stop").click()
    ended = wait_widget(page, "w.dataset.state !== 'running'")
    assert ended["state"] == "stopped", ended["message"]
    final = pack.output_dir / "sidestep" / RUN_NAME / "final"
    assert ended["adapter"] == str(final) and (final / "adapter_model.safetensors").is_file()
    assert int(ended["points"]) < EPOCHS
    assert "best epoch " in ended["message"] and ended["validation"].startswith("validation loss ")
    page.page.locator(f"{TRAIN} .sidestep-copy").click()
    page.wait_for_function(f"() => document.querySelector('{TRAIN} .sidestep-copy').textContent === 'copied'")
    page.page.locator(f"{TRAIN} .sidestep-log input").check()
    page.wait_for_function(
        "([selector, before]) => document.querySelector(selector + ' canvas').toDataURL() !== before",
        arg=[TRAIN, ended["chart"]],
    )
    entry = pack.wait(prompt_id, timeout=120)
    assert entry["outputs"]["4"]["text"][0].startswith("stopped: ")
    assert entry["status"]["status_str"] == "success", entry["status"]
    (saved,) = entry["outputs"]["7"]["audio"]
    assert (pack.output_dir / saved["subfolder"] / saved["filename"]).is_file()

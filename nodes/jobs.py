"""Running Side-Step jobs: their recent events (for the web widget to replay) and the Stop & save route."""

from __future__ import annotations

import itertools
import re
import secrets
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from ..sidestep.training.events import StopSignal

HISTORY_LIMIT = 2000
FINISHED_LIMIT = 16
STOP_REASON = "Stop & save pressed in the training widget"
JOBS_ROUTE = "/sidestep/jobs"
STOP_ROUTE = "/sidestep/jobs/{job_id}/stop"
_JOB_ID = re.compile(r"[0-9a-f]{32}")
# ComfyUI's execution ids: a node id, prefixed by the ids of the subgraph nodes around it ("12:5").
_NODE_ID = re.compile(r"[0-9A-Za-z_-]{1,64}(:[0-9A-Za-z_-]{1,64}){0,16}")
_QUERY_KEYS = {"node"}


@dataclass
class Job:
    """One execution of a Side-Step node: its id, the node it runs in, and its recent websocket messages."""

    node: str
    node_type: str
    stop: StopSignal | None = None
    id: str = field(default_factory=lambda: secrets.token_hex(16))
    running: bool = True
    _steps: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY_LIMIT), repr=False)
    _others: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY_LIMIT), repr=False)
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, event: str, message: dict[str, Any]) -> dict[str, Any]:
        """Stamp a message with this job's id and next sequence number, keep it, and return it.

        Step events and the rarer ones (epochs, checkpoints, previews, the end) are kept in separate windows of
        HISTORY_LIMIT each, so thousands of later steps do not push a long run's previews out of its history."""
        with self._lock:
            stamped = {**message, "job_id": self.id, "seq": next(self._counter)}
            window = self._steps if stamped.get("kind") == "step" else self._others
            window.append({"type": event, "data": stamped})
        return stamped

    def snapshot(self) -> dict[str, Any]:
        """The job as JSON: ids, whether it runs and can stop, and its kept messages in the order they were sent."""
        with self._lock:
            events = sorted([*self._steps, *self._others], key=lambda item: item["data"]["seq"])
            return {
                "job_id": self.id,
                "node": self.node,
                "node_type": self.node_type,
                "running": self.running,
                "stoppable": self.running and self.stop is not None,
                "events": events,
            }

    def finish(self) -> None:
        """Mark the job as no longer running (its messages stay for replay)."""
        with self._lock:
            self.running = False

    def request_stop(self) -> bool:
        """Ask the job to save and end normally; False when it has ended or cannot stop (a first request wins)."""
        with self._lock:
            if not self.running or self.stop is None:
                return False
            if not self.stop.requested:
                self.stop.request(STOP_REASON)
            return True


class JobRegistry:
    """The latest job of every node id (running, or finished: the FINISHED_LIMIT newest of those), shared by the
    nodes and the routes."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    @contextmanager
    def track(self, node: str, node_type: str, stop: StopSignal | None = None) -> Iterator[Job]:
        """Register a new job for `node` (replacing its previous one) while the block runs; mark it finished after."""
        job = Job(node=node, node_type=node_type, stop=stop)
        with self._lock:
            self._jobs.pop(node, None)
            self._jobs[node] = job
            finished = [key for key, other in self._jobs.items() if not other.running]
            for key in finished[:-FINISHED_LIMIT]:
                del self._jobs[key]
        try:
            yield job
        finally:
            job.finish()

    def request_stop(self, job_id: str) -> bool:
        """Ask the running, stoppable job with this id to save and end normally; False when there is none."""
        with self._lock:
            job = next((job for job in self._jobs.values() if job.id == job_id), None)
        return job is not None and job.request_stop()

    def snapshots(self, node: str | None = None) -> dict[str, dict[str, Any]]:
        """Every node's latest job as JSON keyed by node id (only `node`'s when given)."""
        with self._lock:
            jobs = dict(self._jobs)
        return {key: job.snapshot() for key, job in jobs.items() if node is None or key == node}


JOBS = JobRegistry()


def _bad_request(message: str) -> web.Response:
    """A 400 answer with a JSON error message."""
    return web.json_response({"error": message}, status=400)


def register_routes(routes: web.RouteTableDef, registry: JobRegistry) -> None:
    """Add GET /sidestep/jobs[?node=<id>] (the jobs' recent events) and POST /sidestep/jobs/{job_id}/stop, once."""
    if any(isinstance(route, web.RouteDef) and route.path == JOBS_ROUTE for route in routes):
        return

    @routes.get(JOBS_ROUTE)
    async def list_jobs(request: web.Request) -> web.Response:
        query = request.rel_url.query
        if set(query) - _QUERY_KEYS or len(query.getall("node", [])) > 1:
            return _bad_request("The only query parameter is one 'node' (a node id such as 4 or 12:5).")
        node = query.get("node")
        if node is not None and not _NODE_ID.fullmatch(node):
            return _bad_request("'node' must be a node id such as 4 or 12:5.")
        return web.json_response({"jobs": registry.snapshots(node)})

    @routes.post(STOP_ROUTE)
    async def stop_job(request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        if not _JOB_ID.fullmatch(job_id):
            return _bad_request("A job id is 32 lowercase hex characters.")
        if not registry.request_stop(job_id):
            return web.json_response({"error": "No running Side-Step job that can stop has this id."}, status=404)
        return web.json_response({"job_id": job_id, "stopping": True})

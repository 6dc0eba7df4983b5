"""One running node's progress: ComfyUI's progress bar, Cancel, and the websocket events the web widget shows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import comfy.model_management as model_management
import comfy.utils
from comfy_execution.utils import get_executing_context

if TYPE_CHECKING:
    from .jobs import Job


def _json_safe(value: Any) -> Any:
    """`value` with non-finite floats as None and paths as strings, so the browser can parse the message."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


class NodeProgress:
    """One running node's progress: ComfyUI's progress bar plus a custom websocket event for the web widget;
    with a `job`, every event is also kept there (stamped with the job id) for the widget to replay."""

    def __init__(self, node_id: str, job: Job | None = None) -> None:
        context = get_executing_context()
        self.node_id = node_id
        self.prompt_id = context.prompt_id if context is not None else None
        self.job = job
        self._bar: comfy.utils.ProgressBar | None = None

    def bar(self, value: int, total: int) -> None:
        """Move the progress bar; raises ComfyUI's InterruptProcessingException when the user pressed Cancel."""
        if self._bar is None:
            self._bar = comfy.utils.ProgressBar(total, node_id=self.node_id)
        self._bar.update_absolute(value, total)

    def advance(self, value: int, total: int) -> bool:
        """Move the progress bar unless the user pressed Cancel; True when they did (nothing is raised)."""
        if model_management.processing_interrupted():
            return True
        try:
            self.bar(value, total)
        except model_management.InterruptProcessingException:
            return True
        return False

    def send(self, event: str, payload: dict[str, Any]) -> None:
        """Send `payload` (plus node and prompt ids) as websocket `event` to the client that queued the prompt."""
        from server import PromptServer

        server = PromptServer.instance
        message = {"node": self.node_id, "prompt_id": self.prompt_id, **_json_safe(payload)}
        if self.job is not None:
            message = self.job.record(event, message)
        server.send_sync(event, message, server.client_id)

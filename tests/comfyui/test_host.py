"""Smoke tests of the harness: a real ComfyUI server with this pack linked in, and its real frontend."""

from __future__ import annotations

from pathlib import Path

import requests

from .host import PACK_NAME, REPO_ROOT, ComfyUIHost, Frontend

# A UI-format workflow of two core nodes that run without any model: Int(42) -> Preview as Text.
UI_WORKFLOW = {
    "last_node_id": 2,
    "last_link_id": 1,
    "nodes": [
        {
            "id": 1,
            "type": "PrimitiveInt",
            "pos": [40, 40],
            "size": [270, 82],
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": [{"name": "value", "type": "INT", "widget": {"name": "value"}, "link": None}],
            "outputs": [{"name": "INT", "type": "INT", "links": [1]}],
            "properties": {},
            "widgets_values": [42, "fixed"],
        },
        {
            "id": 2,
            "type": "PreviewAny",
            "pos": [400, 40],
            "size": [240, 120],
            "flags": {},
            "order": 1,
            "mode": 0,
            "inputs": [{"name": "source", "type": "*", "link": 1}],
            "outputs": [],
            "properties": {},
            "widgets_values": [],
        },
    ],
    "links": [[1, 1, 0, 2, 0, "*"]],
    "groups": [],
    "config": {},
    "extra": {},
    "version": 0.4,
}


def test_server_runs_with_our_pack_imported(comfy_host: ComfyUIHost) -> None:
    """The pack is linked as custom_nodes/side_step and ComfyUI imported it without IMPORT FAILED."""
    assert (comfy_host.root / "custom_nodes" / PACK_NAME).resolve() == REPO_ROOT
    assert not comfy_host.custom_node_import_failed(PACK_NAME), comfy_host.log_tail()
    assert "SaveAudio" in comfy_host.object_info()


def test_model_folders_are_registered(comfy_host: ComfyUIHost, comfy_models: dict[str, Path]) -> None:
    """Every session model folder is known to ComfyUI under its name."""
    folders = requests.get(f"{comfy_host.url}/models", timeout=10).json()
    assert set(comfy_models) <= set(folders)
    for name, path in comfy_models.items():
        assert f"Adding extra search path {name} {path}" in comfy_host.log_text()


def test_api_queue_with_events(comfy_host: ComfyUIHost) -> None:
    """An API-format prompt runs, its history holds the output and the websocket reports success."""
    prompt = {
        "1": {"class_type": "PrimitiveInt", "inputs": {"value": 7}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    with comfy_host.events() as events:
        prompt_id = comfy_host.queue(prompt, events.client_id)
        entry = comfy_host.wait(prompt_id, timeout=30)
        events.wait_for("execution_success", lambda data: data["prompt_id"] == prompt_id, timeout=10)
    assert entry["status"]["status_str"] == "success"
    assert entry["outputs"]["2"]["text"] == ["7"]


def test_frontend_loads_converts_and_queues(comfy_host: ComfyUIHost, browser_page: Frontend) -> None:
    """The real frontend is ready, converts a UI workflow to API format and runs it; a screenshot is saved."""
    browser_page.load_workflow(UI_WORKFLOW)
    prompt = browser_page.graph_to_prompt()
    assert prompt["1"]["class_type"] == "PrimitiveInt"
    assert prompt["1"]["inputs"]["value"] == 42
    assert prompt["2"]["inputs"]["source"] == ["1", 0]
    entry = comfy_host.wait(browser_page.queue(), timeout=30)
    assert entry["status"]["status_str"] == "success"
    assert entry["outputs"]["2"]["text"] == ["42"]
    shot = browser_page.screenshot("comfyui-frontend-smoke")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

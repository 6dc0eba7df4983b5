"""Session fixtures: one real ComfyUI server with this pack linked in, and one real frontend page on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .host import ComfyUIHost, ComfyUINotInstalled, Frontend, open_frontend

MODEL_FOLDERS = ("acestep", "loras", "diffusion_models", "text_encoders", "vae")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the fixtures they use: comfy_host → comfyui; browser_page → browser and comfyui."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & {"comfy_host", "browser_page"}:
            item.add_marker(pytest.mark.comfyui)
        if "browser_page" in fixtures:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def comfy_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Empty model folders registered with the session's server (acestep, loras, ...); tests fill them."""
    root = tmp_path_factory.mktemp("comfy_models")
    folders = {name: root / name for name in MODEL_FOLDERS}
    for folder in folders.values():
        folder.mkdir()
    return folders


@pytest.fixture(scope="session")
def comfy_host(comfy_models: dict[str, Path]) -> Iterator[ComfyUIHost]:
    """One real ComfyUI server for the whole session, with this pack as custom_nodes/side_step."""
    try:
        host = ComfyUIHost(model_folders=comfy_models).start()
    except ComfyUINotInstalled as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture(scope="session")
def browser_page(comfy_host: ComfyUIHost) -> Iterator[Frontend]:
    """The real frontend of the session's server in headless Chromium, ready (window.app set up)."""
    try:
        frontend = open_frontend(comfy_host)
    except ComfyUINotInstalled as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield frontend
    finally:
        frontend.close()

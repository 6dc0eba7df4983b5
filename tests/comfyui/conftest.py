"""Session fixtures: one real ComfyUI server with this pack linked in, and one real frontend page on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import torch
from safetensors.torch import save_file

from sidestep.tiny_models import make_comfyui_loadable_models, make_tiny_checkpoints

from .fixtures_pack import CLIP_LM_FILE, SONG_SECONDS, SONGS, write_song
from .host import ComfyUIHost, ComfyUINotInstalled, Frontend, open_frontend

MODEL_FOLDERS = ("acestep", "loras", "diffusion_models", "text_encoders", "vae", "checkpoints")


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


@pytest.fixture(scope="session")
def tiny_tree(comfy_models: dict[str, Path]) -> Path:
    """The tiny checkpoint tree (turbo, base, a custom fine-tune, vae, text encoder) in the `acestep` folder."""
    return make_tiny_checkpoints(comfy_models["acestep"])


@pytest.fixture(scope="session")
def songs(comfy_host: ComfyUIHost) -> Iterator[Path]:
    """ComfyUI's input/sidestep/songs: one 2 s song with a caption sidecar, and one broken file to be rejected."""
    folder = comfy_host.input_dir / SONGS
    write_song(folder / "song0.wav", SONG_SECONDS, seed=0)
    (folder / "song0.txt").write_text("caption: lo-fi beat with mellow keys\nbpm: 90\n", encoding="utf-8")
    (folder / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    yield folder


@pytest.fixture(scope="session")
def comfyui_files(comfy_models: dict[str, Path]) -> dict[str, Path]:
    """ACE-Step 1.5 as ComfyUI users have it (random weights ComfyUI's own loaders run), plus a stand-in for the 5 Hz
    language model file that DualCLIPLoader (type ace) pairs with it: only the tensors ComfyUI reads to recognise a
    Qwen3 LM (2048 wide, so it builds its smaller LM and never touches its weights), which is enough as long as
    audio-code generation is off (ComfyUI then never runs the language model)."""
    make_comfyui_loadable_models(comfy_models["diffusion_models"].parent)
    stand_in = {
        "model.layers.0.post_attention_layernorm.weight": torch.ones(2048, dtype=torch.bfloat16),
        "model.layers.0.self_attn.q_norm.weight": torch.ones(128, dtype=torch.bfloat16),
        "model.norm.weight": torch.ones(2048, dtype=torch.bfloat16),
    }
    save_file(stand_in, str(comfy_models["text_encoders"] / CLIP_LM_FILE))
    return comfy_models


@pytest.fixture(scope="session")
def pack(comfy_host: ComfyUIHost, tiny_tree: Path, comfyui_files: dict[str, Path], songs: Path) -> ComfyUIHost:
    """The session server once the tiny checkpoints, ComfyUI's own model files and the songs are in place."""
    return comfy_host

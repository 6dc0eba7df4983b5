"""The nodes' summaries count in words (the core's `quantity`): '1 clip', '1 song', never '1 clips'."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from sidestep.wording import quantity

from .test_model_patches import PACK_MODULE, comfy  # noqa: F401  (the in-process ComfyUI fixture)


def test_quantity_is_singular_for_one_only():
    assert [quantity(n, "clip") for n in (0, 1, 2)] == ["0 clips", "1 clip", "2 clips"]


def test_the_encode_node_summary_of_one_clip_from_one_song(comfy: ModuleType) -> None:  # noqa: F811
    dataset = importlib.import_module(f"{PACK_MODULE}.nodes.dataset")
    handles = importlib.import_module(f"{PACK_MODULE}.nodes.handles")
    handle = handles.DatasetHandle(Path("datasets/one"), "turbo", clips=1, seconds=4.0)
    lines = dataset._summary(handle, encoded=1, skipped=0, warnings=[]).splitlines()
    assert lines[:2] == ["1 clip (4.0 s) for turbo in datasets/one", "encoded 1 song, reused 0, rejected 0"]

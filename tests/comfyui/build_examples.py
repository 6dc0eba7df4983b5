"""Rebuild example_workflows/*.json from the API graphs in fixtures_pack.py with the real ComfyUI frontend.

Run from the repository root: `.venv/bin/python -m tests.comfyui.build_examples`. Each graph is loaded with the
frontend's own `app.loadApiJson` (which creates the nodes from the pack's live definitions, sets the widgets,
links and lays them out) and saved with `app.graph.serialize()`, exactly what ComfyUI writes to a workflow file.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from sidestep.atomic import write_text_atomic
from sidestep.tiny_models import COMFY_DIT_FILES, COMFY_TEXT_ENCODER_FILE, COMFY_VAE_FILE, make_tiny_checkpoints

from .fixtures_pack import CLIP_LM_FILE, EXAMPLE_GRAPHS, EXAMPLE_NOTES, example_path
from .host import ComfyUIHost, Frontend, open_frontend


def to_workflow(frontend: Frontend, name: str, graph: dict[str, Any], note: str) -> dict[str, Any]:
    """Load an API graph into the frontend, add a Note above it, and return the UI-format workflow it saves as.

    The graph crosses as JSON text so that fields the frontend leaves undefined stay absent (Playwright would turn them
    into nulls, which the frontend's workflow schema rejects with an alert)."""
    return json.loads(frontend.page.evaluate(
        """([graph, name, text]) => {
            window.app.loadApiJson(graph, name);
            const note = window.LiteGraph.createNode("Note");
            note.widgets[0].value = text;
            note.size = [560, 180];
            const nodes = window.app.graph.nodes;
            note.pos = [Math.min(...nodes.map((n) => n.pos[0])), Math.min(...nodes.map((n) => n.pos[1])) - 240];
            window.app.graph.add(note);
            return JSON.stringify(window.app.graph.serialize());
        }""",
        [graph, name, note],
    ))


def _named_files(models: Path) -> dict[str, Path]:
    """Model folders holding files named like ComfyUI's ACE-Step 1.5 files, for the stock loaders' dropdowns."""
    folders = {}
    for kind, name in (
        ("diffusion_models", COMFY_DIT_FILES["turbo"]),
        ("text_encoders", COMFY_TEXT_ENCODER_FILE),
        ("text_encoders", CLIP_LM_FILE),
        ("vae", COMFY_VAE_FILE),
    ):
        folders[kind] = models / kind
        folders[kind].mkdir(parents=True, exist_ok=True)
        save_file({"placeholder": torch.zeros(1)}, str(folders[kind] / name))
    return folders


def main() -> None:
    """Start ComfyUI with the pack (a tiny checkpoint tree and ComfyUI-named files for the dropdowns) and rewrite
    every example."""
    with tempfile.TemporaryDirectory() as models:
        acestep = Path(models) / "acestep"
        make_tiny_checkpoints(acestep)
        folders = {"acestep": acestep, **_named_files(Path(models))}
        with ComfyUIHost(model_folders=folders, name="build-examples") as host, open_frontend(host) as page:
            for name, graph in EXAMPLE_GRAPHS.items():
                workflow = to_workflow(page, name, graph, EXAMPLE_NOTES[name])
                write_text_atomic(example_path(name), json.dumps(workflow, indent=2) + "\n")
                example_path(name).chmod(0o644)
                print(f"wrote {example_path(name)}")


if __name__ == "__main__":
    main()

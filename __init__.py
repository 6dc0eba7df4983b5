"""Side-Step for ComfyUI: the pack's entry point (V3 nodes), its web folder and the `acestep` model folder."""

import os
import sys

_PACK_DIR = os.path.dirname(os.path.realpath(__file__))
# ComfyUI loads this file by path: make our core package `sidestep` (beside it) importable. Appended, never
# prepended, so ComfyUI's own top-level modules (it has one called `nodes`) keep precedence.
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

WEB_DIRECTORY = "./web/js"


async def comfy_entrypoint():
    """Register the `acestep` model folder and return the Side-Step extension, which lists the pack's nodes."""
    import folder_paths

    # ACE-Step checkpoint roots: models/acestep, plus any `acestep:` entries of extra_model_paths.yaml.
    folder_paths.add_model_folder_path("acestep", os.path.join(folder_paths.models_dir, "acestep"))
    from .nodes import SideStepExtension

    return SideStepExtension()

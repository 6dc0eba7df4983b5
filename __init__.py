"""Side-Step for ComfyUI: the pack's entry point (V3 nodes), its web folder and the `acestep` model folder.

ComfyUI imports this folder as a package; the nodes import the core (`sidestep/` beside them) relatively, so the
copy in this folder is the one they use even when another `sidestep` is installed or on `sys.path`."""

import os

WEB_DIRECTORY = "./web/js"


async def comfy_entrypoint():
    """Register the `acestep` model folder and return the Side-Step extension, which lists the pack's nodes."""
    import folder_paths

    # ACE-Step checkpoint roots: models/acestep, plus any `acestep:` entries of extra_model_paths.yaml.
    folder_paths.add_model_folder_path("acestep", os.path.join(folder_paths.models_dir, "acestep"))
    from .nodes import SideStepExtension

    return SideStepExtension()

"""ComfyUI's folders as the nodes see them: the ACE-Step models it can load, its input and output folders, the
training runs and the adapters a dropdown offers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import folder_paths

from ..sidestep.adapters.files import run_adapter_folders

if TYPE_CHECKING:
    from ..sidestep.comfy_models import ComfyFolders
    from ..sidestep.model_folders import ModelEntry

ACESTEP_FOLDER = "acestep"
RUNS_FOLDER = "sidestep"
DATASETS_FOLDER = "datasets"
NONE_CHOICE = "none"
_OUTPUT_PREFIX = "output/"
_LORAS_PREFIX = "loras/"


def acestep_roots() -> list[Path]:
    """Existing checkpoint roots registered as ComfyUI's `acestep` model folder (models/acestep, extra paths)."""
    return [Path(path) for path in folder_paths.get_folder_paths(ACESTEP_FOLDER) if Path(path).is_dir()]


def comfy_folders() -> ComfyFolders:
    """ComfyUI's registered folders for diffusion models, checkpoints, text encoders and VAEs (extra paths included)."""
    from ..sidestep.comfy_models import ComfyFolders

    def paths(kind: str) -> tuple[Path, ...]:
        return tuple(Path(path) for path in folder_paths.get_folder_paths(kind))

    return ComfyFolders(
        diffusion_models=paths("diffusion_models"),
        checkpoints=paths("checkpoints"),
        text_encoders=paths("text_encoders"),
        vae=paths("vae"),
    )


def comfy_tokenizer_dir() -> Path:
    """The Qwen tokenizer files this ComfyUI ships for ACE-Step 1.5 (ComfyUI's text-encoder files carry none)."""
    import comfy

    from ..sidestep.comfy_models import TOKENIZER_IN_COMFYUI

    return Path(next(iter(comfy.__path__))).resolve().parent / TOKENIZER_IN_COMFYUI


def discover_models() -> list[ModelEntry]:
    """Every ACE-Step 1.5 model ComfyUI can see: its own files (diffusion_models, checkpoints) first, then the official
    trees in the acestep folders (the first root wins a name)."""
    from ..sidestep.comfy_models import scan_comfy_models
    from ..sidestep.errors import CheckpointError
    from ..sidestep.model_folders import scan_models

    found: dict[str, ModelEntry] = {}
    for root in acestep_roots():
        try:
            entries = scan_models(root)
        except CheckpointError:
            continue
        for entry in entries:
            found.setdefault(entry.name, entry)
    official_trees = sorted(found.values(), key=lambda entry: not entry.official)
    return scan_comfy_models(comfy_folders()) + official_trees


def find_discovered(choice: str) -> ModelEntry | None:
    """The discovered model a dropdown value names (its label, or the bare name older workflows saved)."""
    entries = discover_models()
    by_label = [entry for entry in entries if entry.label == choice]
    by_name = [entry for entry in entries if entry.name == model_name_of(choice)]
    return (by_label or by_name or [None])[0]


def model_name_of(choice: str) -> str:
    """The model's name inside a dropdown label ('acestep-v15-turbo  [official turbo]' → 'acestep-v15-turbo',
    'acestep_v1.5_turbo.safetensors · ComfyUI diffusion model · turbo' → 'acestep_v1.5_turbo.safetensors')."""
    from ..sidestep.model_folders import LABEL_SEPARATOR

    return choice.split("  [", 1)[0].split(LABEL_SEPARATOR, 1)[0].strip()


def output_dir() -> Path:
    """ComfyUI's output folder."""
    return Path(folder_paths.get_output_directory())


def input_dir() -> Path:
    """ComfyUI's input folder."""
    return Path(folder_paths.get_input_directory())


def under(base: Path, text: str) -> Path:
    """`text` as a path: absolute (or ~) paths as given, relative ones inside `base`."""
    path = Path(text.strip()).expanduser()
    return path if path.is_absolute() else base / path


def output_location(path: str | Path) -> tuple[str, str] | None:
    """(subfolder, filename) of a file inside ComfyUI's output folder, as its /view route takes them; None elsewhere."""
    try:
        relative = Path(path).resolve().relative_to(output_dir().resolve())
    except ValueError:
        return None
    subfolder = relative.parent.as_posix()
    return ("" if subfolder == "." else subfolder), relative.name


def runs_dir() -> Path:
    """Where training runs go: <ComfyUI output>/sidestep."""
    return output_dir() / RUNS_FOLDER


def loras_dir() -> Path:
    """ComfyUI's first `loras` folder, where ComfyUI-native exports are written."""
    return Path(folder_paths.get_folder_paths("loras")[0])


def adapter_choices() -> list[str]:
    """Dropdown values for discovered adapters: "none", our runs' final/checkpoint folders, then models/loras files."""
    choices = [NONE_CHOICE]
    runs = runs_dir()
    if runs.is_dir():
        for run in sorted(p for p in runs.iterdir() if p.is_dir() and p.name != DATASETS_FOLDER):
            choices += [_OUTPUT_PREFIX + folder.relative_to(output_dir()).as_posix() for folder in run_adapter_folders(run)]
    loras = sorted(name for name in folder_paths.get_filename_list("loras") if name.lower().endswith(".safetensors"))
    return choices + [_LORAS_PREFIX + name for name in loras]


def resolve_adapter_choice(choice: str) -> Path:
    """The file or folder behind an adapter dropdown value (or a path typed into a workflow)."""
    from ..sidestep.errors import AdapterError

    if choice.startswith(_OUTPUT_PREFIX):
        return output_dir() / choice.removeprefix(_OUTPUT_PREFIX)
    if choice.startswith(_LORAS_PREFIX):
        name = choice.removeprefix(_LORAS_PREFIX)
        path = folder_paths.get_full_path("loras", name)
        if path is None:
            raise AdapterError(f"No file {name!r} in ComfyUI's loras folders; pick another adapter or refresh the list.")
        return Path(path)
    return Path(choice).expanduser()

"""Shared node helpers: ComfyUI folder lookup, device choice, memory hand-over, and progress/cancel bridging."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import comfy.model_management as model_management
import comfy.utils
import folder_paths
import torch
from comfy_execution.utils import get_executing_context
from sidestep.adapters.files import WEIGHT_FILES
from sidestep.training.layout import RunLayout, epoch_folders

if TYPE_CHECKING:
    from sidestep.bundle import AceStepBundle
    from sidestep.model_folders import ModelEntry
    from sidestep.comfy_models import ComfyFolders

    from .jobs import Job

CATEGORY = "Side-Step"
ACESTEP_FOLDER = "acestep"
RUNS_FOLDER = "sidestep"
DATASETS_FOLDER = "datasets"
NONE_CHOICE = "none"
_OUTPUT_PREFIX = "output/"
_LORAS_PREFIX = "loras/"


# ---------------------------------------------------------------- folders


def acestep_roots() -> list[Path]:
    """Existing checkpoint roots registered as ComfyUI's `acestep` model folder (models/acestep, extra paths)."""
    return [Path(path) for path in folder_paths.get_folder_paths(ACESTEP_FOLDER) if Path(path).is_dir()]


def comfy_folders() -> ComfyFolders:
    """ComfyUI's registered folders for diffusion models, checkpoints, text encoders and VAEs (extra paths included)."""
    from sidestep.comfy_models import ComfyFolders

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

    from sidestep.comfy_models import TOKENIZER_IN_COMFYUI

    return Path(next(iter(comfy.__path__))).resolve().parent / TOKENIZER_IN_COMFYUI


def discover_models() -> list[ModelEntry]:
    """Every ACE-Step 1.5 model ComfyUI can see: its own files (diffusion_models, checkpoints) first, then the official
    trees in the acestep folders (the first root wins a name)."""
    from sidestep.model_folders import scan_models
    from sidestep.comfy_models import scan_comfy_models
    from sidestep.errors import CheckpointError

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
    from sidestep.model_folders import LABEL_SEPARATOR

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


def _run_adapters(run: Path) -> list[Path]:
    """A run's final adapter and its epoch checkpoints (oldest first) that hold adapter weights."""
    layout = RunLayout(run)
    candidates = [layout.final, *epoch_folders(layout.checkpoints)]
    return [folder for folder in candidates if any((folder / name).is_file() for name in WEIGHT_FILES)]


def adapter_choices() -> list[str]:
    """Dropdown values for discovered adapters: "none", our runs' final/checkpoint folders, then models/loras files."""
    choices = [NONE_CHOICE]
    runs = runs_dir()
    if runs.is_dir():
        for run in sorted(p for p in runs.iterdir() if p.is_dir() and p.name != DATASETS_FOLDER):
            choices += [_OUTPUT_PREFIX + folder.relative_to(output_dir()).as_posix() for folder in _run_adapters(run)]
    loras = sorted(name for name in folder_paths.get_filename_list("loras") if name.lower().endswith(".safetensors"))
    return choices + [_LORAS_PREFIX + name for name in loras]


def resolve_adapter_choice(choice: str) -> Path:
    """The file or folder behind an adapter dropdown value (or a path typed into a workflow)."""
    from sidestep.errors import AdapterError

    if choice.startswith(_OUTPUT_PREFIX):
        return output_dir() / choice.removeprefix(_OUTPUT_PREFIX)
    if choice.startswith(_LORAS_PREFIX):
        name = choice.removeprefix(_LORAS_PREFIX)
        path = folder_paths.get_full_path("loras", name)
        if path is None:
            raise AdapterError(f"No file {name!r} in ComfyUI's loras folders; pick another adapter or refresh the list.")
        return Path(path)
    return Path(choice).expanduser()


# ---------------------------------------------------------------- devices and memory


def resolve_device(choice: str) -> torch.device:
    """'auto' → ComfyUI's compute device (the CPU under --cpu); otherwise the named device."""
    return model_management.get_torch_device() if choice == "auto" else torch.device(choice)


def make_room(bundle: AceStepBundle) -> None:
    """Ask ComfyUI to unload its own models until the bundle's weights fit, then return cached memory."""
    model_management.free_memory(bundle.bytes_to_load(), bundle.device)
    model_management.soft_empty_cache()


class ComfyMemory:
    """Makes every part a bundle loads visible to ComfyUI's memory manager, so that Unload Models, POST /free and
    ComfyUI's own need for memory release it: each part is registered as a ModelPatcher whose detach drops the part."""

    def __init__(self) -> None:
        self._patchers: dict[tuple[int, str], Any] = {}
        self._emptied: list[Any] = []

    def loaded(self, bundle: AceStepBundle, part: str, module: torch.nn.Module) -> None:
        """Register `module` with ComfyUI's loaded models (on the device it already is on; nothing is moved)."""
        import comfy.model_patcher
        from comfy.patcher_extension import CallbacksMP

        key = (id(bundle), part)
        self._forget(key)
        self._emptied.clear()
        holder = torch.nn.Module()  # ModelPatcher sets attributes (device, ...) on what it manages; keep ours intact
        holder.part = module
        patcher = comfy.model_patcher.ModelPatcher(holder, load_device=bundle.device, offload_device=bundle.device)
        patcher.add_callback(CallbacksMP.ON_DETACH, lambda _patcher, _unpatch: self._unloaded_by_comfyui(bundle, part))
        self._patchers[key] = patcher
        model_management.load_models_gpu([patcher], force_full_load=True)

    def released(self, bundle: AceStepBundle, part: str) -> None:
        """The bundle dropped `part` itself: take it off ComfyUI's list so nothing keeps it alive."""
        self._forget((id(bundle), part))

    def _unloaded_by_comfyui(self, bundle: AceStepBundle, part: str) -> None:
        """ComfyUI unloaded the part (Unload Models, /free, or room for another model): drop it from the bundle.

        ComfyUI is still walking its list of loaded models, so the (now empty) holder stays alive until our next load."""
        patcher = self._patchers.pop((id(bundle), part), None)
        if patcher is not None:
            del patcher.model.part
            self._emptied.append(patcher)
        bundle.release(**{part: True})
        logging.info("Side-Step: ComfyUI unloaded the %s of %s", part, bundle.entry.name)

    def _forget(self, key: tuple[int, str]) -> None:
        """Remove the patcher registered under `key` from ComfyUI's loaded models and from this registry."""
        patcher = self._patchers.pop(key, None)
        if patcher is None:
            return
        loaded = model_management.current_loaded_models
        for index in reversed(range(len(loaded))):
            if loaded[index].model is patcher:
                loaded.pop(index)


COMFY_MEMORY = ComfyMemory()


# ---------------------------------------------------------------- progress and cancel


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

"""ACE-Step 1.5 as ComfyUI users keep it: repackaged diffusion-model files, all-in-one checkpoints, and the text-encoder
and VAE files beside them — found, classified and paired by reading safetensors headers only (ComfyUI is not imported).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from safetensors import SafetensorError, safe_open

from .model_folders import ModelEntry, SharedParts
from .variants import BASE_MODELS
from .comfy_formats import AIO_DIT_PREFIX, AIO_TEXT_ENCODER_PREFIX, AIO_VAE_PREFIX, COMFY_TOKENIZER_DIR, TEXT_ENCODER_PREFIX
from .errors import CheckpointError, ConfigError
from .model.config import config_from_shapes
from .model.weights import WeightIndex, file_index

PREFERRED_TEXT_ENCODER_FILE = "qwen_0.6b_ace15.safetensors"
PREFERRED_VAE_FILE = "ace_1.5_vae.safetensors"
TOKENIZER_IN_COMFYUI = Path(COMFY_TOKENIZER_DIR)
SOURCE_DIFFUSION_MODEL = "ComfyUI diffusion model"
SOURCE_CHECKPOINT = "ComfyUI checkpoint"
SOURCE_LOADED = "ComfyUI MODEL"

_DIT_MARKERS = ("decoder.layers.0.self_attn_norm.weight", "encoder.lyric_encoder.layers.0.input_layernorm.weight")
_TEXT_ENCODER_MARKER = "layers.0.post_attention_layernorm.weight"
_VAE_MARKER = "decoder.layers.1.layers.0.beta"
# Comfy-Org's repackaged names: acestep_v1.5_turbo, acestep_v1.5_xl_sft_bf16, ace_step_1.5_turbo_aio, ...
_REPACKAGED_NAME = re.compile(r"ace_?step_?v?1[._]5_(?P<xl>xl_)?(?P<family>turbo|base|sft)(?:_.*)?", re.I)
_WEIGHT_SUFFIX = ".safetensors"
WHERE_FILES_GO = (
    "ComfyUI keeps ACE-Step 1.5 as models/diffusion_models/acestep_v1.5_turbo.safetensors (or _base, "
    "acestep_v1.5_xl_*_bf16), models/text_encoders/qwen_0.6b_ace15.safetensors and models/vae/ace_1.5_vae.safetensors, "
    "or one all-in-one file in models/checkpoints (ace_step_1.5_turbo_aio.safetensors)."
)


@dataclass(frozen=True)
class ComfyFolders:
    """ComfyUI's registered model folders that can hold ACE-Step 1.5 files (each list in ComfyUI's search order)."""

    diffusion_models: tuple[Path, ...] = ()
    checkpoints: tuple[Path, ...] = ()
    text_encoders: tuple[Path, ...] = ()
    vae: tuple[Path, ...] = ()

    @classmethod
    def from_models_dir(cls, models_dir: str | Path) -> ComfyFolders:
        """The folders of one ComfyUI `models/` directory (with the legacy names `unet` and `clip`)."""
        root = Path(models_dir)
        return cls(
            diffusion_models=(root / "diffusion_models", root / "unet"),
            checkpoints=(root / "checkpoints",),
            text_encoders=(root / "text_encoders", root / "clip"),
            vae=(root / "vae",),
        )

    def searched(self) -> str:
        """The folders, for error messages."""
        folders = [*self.diffusion_models, *self.checkpoints, *self.text_encoders, *self.vae]
        return ", ".join(str(folder) for folder in folders) or "none"


def looks_like_models_dir(folder: str | Path) -> bool:
    """Whether `folder` is a ComfyUI `models/` directory (it has a diffusion_models, unet or checkpoints folder)."""
    folder = Path(folder)
    return any((folder / name).is_dir() for name in ("diffusion_models", "unet", "checkpoints"))


def _weight_files(folders: tuple[Path, ...]) -> list[tuple[str, Path]]:
    """(name relative to its folder, path) of every .safetensors file, the first folder winning a name."""
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob(f"*{_WEIGHT_SUFFIX}")):
            if path.is_file():
                found.setdefault(path.relative_to(folder).as_posix(), path)
    return sorted(found.items(), key=lambda item: item[0].lower())


@lru_cache(maxsize=256)
def _header(path: Path, size: int, mtime_ns: int) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes and metadata of a safetensors file (cached per size and modification time)."""
    with safe_open(str(path), framework="pt") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        return shapes, dict(handle.metadata() or {})


def read_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Shapes and metadata of a safetensors file; empty when the file cannot be read as one."""
    try:
        stat = path.stat()
        return _header(path, stat.st_size, stat.st_mtime_ns)
    except (OSError, SafetensorError):
        return {}, {}


def _family_of(name: str, metadata: dict[str, str]) -> tuple[str | None, bool]:
    """(base family, named like Comfy-Org's repackaged files) from the file name, else the file's metadata."""
    match = _repackaged(name)
    if match:
        return match["family"].lower(), True
    stem = Path(name).name.removesuffix(_WEIGHT_SUFFIX)
    tokens = {token for token in re.split(r"[-_.\s]+", stem.lower()) if token}
    named = [family for family in BASE_MODELS if family in tokens]
    if len(named) == 1:
        return named[0], False
    declared = str(metadata.get("model_version", "")).lower()
    if declared.removeprefix("xl_").removeprefix("xl-") in BASE_MODELS:
        return declared.removeprefix("xl_").removeprefix("xl-"), False
    is_turbo = str(metadata.get("is_turbo", "")).lower()
    if is_turbo in ("true", "false"):
        return ("turbo" if is_turbo == "true" else None), False
    return None, False


def _repackaged(name: str) -> re.Match | None:
    """The match of a Comfy-Org repackaged file name (its family and whether it says xl), else None."""
    return _REPACKAGED_NAME.fullmatch(Path(name).name.removesuffix(_WEIGHT_SUFFIX))


def _classified(
    name: str, path: Path, shapes: dict[str, tuple[int, ...]], family: str | None, repackaged: bool, source: str, prefix: str
) -> ModelEntry:
    """A ModelEntry for an ACE-Step 1.5 state dict of known shapes (official names) and base family."""
    config = config_from_shapes(shapes, str(path), family == "turbo" if family else None, family)
    is_xl = config.condition_config is not config
    named = _repackaged(name)
    says_xl = bool(named["xl"]) if named else is_xl
    return ModelEntry(
        name=name,
        path=path,
        official=repackaged,
        variant=(("xl-" if says_xl else "") + family) if repackaged and family else None,
        base=family,
        is_xl=is_xl,
        is_turbo=config.is_turbo,
        timestep_mu=config.timestep_mu,
        timestep_sigma=config.timestep_sigma,
        config=config,
        source=source,
        weights_prefix=prefix,
    )


def _entry(name: str, path: Path, prefix: str, source: str) -> ModelEntry | None:
    """The ModelEntry of one ComfyUI file if it holds an ACE-Step 1.5 DiT under `prefix`, else None."""
    shapes, metadata = read_header(path)
    if not all(prefix + marker in shapes for marker in _DIT_MARKERS):
        return None
    family, repackaged = _family_of(name, metadata)
    own = {key[len(prefix) :]: shape for key, shape in shapes.items() if key.startswith(prefix)}
    try:
        return _classified(name, path, own, family, repackaged, source, prefix)
    except ConfigError:
        return None


def entry_for_state_dict(shapes: dict[str, tuple[int, ...]], base: str, name: str = SOURCE_LOADED) -> ModelEntry:
    """A ModelEntry for an ACE-Step 1.5 model another program holds in memory, whose variant the user named (so
    datasets and adapters record the same variant as for the file it was loaded from)."""
    return _classified(name, Path(name), shapes, base, True, SOURCE_LOADED, "")


def scan_comfy_models(folders: ComfyFolders) -> list[ModelEntry]:
    """Every ACE-Step 1.5 DiT among ComfyUI's diffusion models and all-in-one checkpoints, repackaged ones first."""
    entries = [
        entry
        for name, path in _weight_files(folders.diffusion_models)
        if (entry := _entry(name, path, "", SOURCE_DIFFUSION_MODEL)) is not None
    ]
    entries += [
        entry
        for name, path in _weight_files(folders.checkpoints)
        if (entry := _entry(name, path, AIO_DIT_PREFIX, SOURCE_CHECKPOINT)) is not None
    ]
    return sorted(entries, key=lambda entry: (not entry.official, entry.source != SOURCE_DIFFUSION_MODEL, entry.name.lower()))


def no_comfy_models_message(folders: ComfyFolders) -> str:
    """What was searched and what is expected, for a ComfyUI install without any ACE-Step 1.5 model."""
    return f"No ACE-Step 1.5 model found in ComfyUI's model folders ({folders.searched()}). {WHERE_FILES_GO}"


def text_encoder_files(folders: ComfyFolders) -> list[tuple[str, Path]]:
    """(name, path) of the Qwen3 text-encoder files in the text_encoders folders, the ACE-Step 0.6B one first."""
    found = [(name, path) for name, path in _weight_files(folders.text_encoders) if TEXT_ENCODER_PREFIX + _TEXT_ENCODER_MARKER in read_header(path)[0]]
    return sorted(found, key=lambda item: Path(item[0]).name != PREFERRED_TEXT_ENCODER_FILE)


def vae_files(folders: ComfyFolders) -> list[tuple[str, Path]]:
    """(name, path) of the Oobleck audio-VAE files in the vae folders, ACE-Step 1.5's first."""
    found = [(name, path) for name, path in _weight_files(folders.vae) if _VAE_MARKER in read_header(path)[0]]
    return sorted(found, key=lambda item: Path(item[0]).name != PREFERRED_VAE_FILE)


def _pick(choice: str | None, files: list[tuple[str, Path]], kind: str, expected: str, folders: str) -> Path:
    """The chosen file (a listed name or a path), else the first one found; CheckpointError naming what is missing."""
    if choice:
        named = dict(files)
        if choice in named:
            return named[choice]
        path = Path(choice).expanduser()
        if path.is_file():
            return path
        raise CheckpointError(f"The {kind} {choice!r} is not in {folders} and is not a file. Pick one from the list.")
    if not files:
        raise CheckpointError(
            f"No ACE-Step 1.5 {kind} found in {folders}: put {expected} there (the file ComfyUI's own ACE-Step 1.5 "
            "template downloads), or choose one."
        )
    return files[0][1]


def _text_encoder_width(path: Path, prefix: str) -> int | None:
    """The hidden width of a Qwen3 text-encoder file (or of the text-encoder part of a checkpoint); None if it holds none."""
    shape = read_header(path)[0].get(prefix + _TEXT_ENCODER_MARKER)
    return shape[0] if shape else None


def find_tokenizer(folders: ComfyFolders) -> Path | None:
    """ComfyUI's own Qwen tokenizer files (comfy/text_encoders/qwen25_tokenizer) in the install holding the folders."""
    for folder in [*folders.text_encoders, *folders.diffusion_models, *folders.checkpoints]:
        for parent in Path(folder).resolve().parents:
            candidate = parent / TOKENIZER_IN_COMFYUI
            if (candidate / "vocab.json").is_file():
                return candidate
    return None


def comfy_shared_parts(
    entry: ModelEntry,
    folders: ComfyFolders,
    tokenizer_dir: str | Path | None = None,
    text_encoder: str | None = None,
    vae: str | None = None,
) -> SharedParts:
    """Pair a ComfyUI DiT file with its text encoder, VAE and tokenizer (an all-in-one file brings its own)."""
    in_checkpoint = entry.source == SOURCE_CHECKPOINT
    shapes = read_header(entry.path)[0] if in_checkpoint else {}
    if in_checkpoint and not text_encoder and AIO_TEXT_ENCODER_PREFIX + _TEXT_ENCODER_MARKER in shapes:
        text_path, text_prefix = entry.path, AIO_TEXT_ENCODER_PREFIX
    else:
        text_path = _pick(
            text_encoder, text_encoder_files(folders), "text encoder", PREFERRED_TEXT_ENCODER_FILE,
            ", ".join(map(str, folders.text_encoders)) or "ComfyUI's text_encoders folder",
        )
        text_prefix = TEXT_ENCODER_PREFIX
    if in_checkpoint and not vae and AIO_VAE_PREFIX + _VAE_MARKER in shapes:
        vae_path, vae_prefix = entry.path, AIO_VAE_PREFIX
    else:
        vae_path = _pick(
            vae, vae_files(folders), "VAE", PREFERRED_VAE_FILE, ", ".join(map(str, folders.vae)) or "ComfyUI's vae folder"
        )
        vae_prefix = ""
    width = _text_encoder_width(text_path, text_prefix)
    if width is None:
        raise CheckpointError(
            f"{text_path} holds no Qwen3 text encoder: choose {PREFERRED_TEXT_ENCODER_FILE} from ComfyUI's text_encoders folder."
        )
    if width != entry.config.text_hidden_dim:
        raise CheckpointError(
            f"The text encoder {text_path} gives {width}-wide features, but {entry.name} needs "
            f"{entry.config.text_hidden_dim}-wide ones: pair it with {PREFERRED_TEXT_ENCODER_FILE} (Qwen3-Embedding-0.6B); "
            "the qwen_1.7b/4b_ace15 files are the 5 Hz language model, not the text encoder."
        )
    tokenizer = Path(tokenizer_dir).expanduser() if tokenizer_dir else find_tokenizer(folders)
    if tokenizer is None or not (tokenizer / "vocab.json").is_file():
        where = tokenizer if tokenizer is not None else f"<ComfyUI>/{TOKENIZER_IN_COMFYUI.as_posix()}"
        raise CheckpointError(
            f"No Qwen tokenizer files at {where}: ComfyUI's text-encoder files carry no tokenizer. Point at the "
            f"{TOKENIZER_IN_COMFYUI.as_posix()} folder of your ComfyUI install (--tokenizer DIR on the command line)."
        )
    return SharedParts(
        vae_path=vae_path,
        text_encoder_path=text_path,
        silence_latent_path=None,
        tokenizer_dir=tokenizer,
        vae_prefix=vae_prefix,
        text_encoder_prefix=text_prefix,
    )


def dit_index(entry: ModelEntry) -> WeightIndex:
    """Where the DiT tensors of a ComfyUI entry are stored (the whole file, or its diffusion-model part)."""
    return file_index(entry.path, entry.weights_prefix)

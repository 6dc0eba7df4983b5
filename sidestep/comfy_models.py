"""ACE-Step 1.5 as ComfyUI users keep it: repackaged diffusion-model files, all-in-one checkpoints, and the text-encoder
and VAE files beside them — found, classified and paired by reading safetensors headers only (ComfyUI is not imported).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .model_files import Header, SkippedFile, UnusableFile, header_bytes, looks_like_ace_step, parse_header, read_header, shown
from .model_folders import ModelEntry, SharedParts
from .variants import BASE_MODELS
from .comfy_layout import AIO_DIT_PREFIX, AIO_TEXT_ENCODER_PREFIX, AIO_VAE_PREFIX, COMFY_TOKENIZER_DIR, TEXT_ENCODER_PREFIX
from .errors import CheckpointError, ConfigError
from .model.config import SHAPE_KEYS, AceStepConfig, config_from_shapes
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
SAFETENSORS_EXTENSIONS = (".safetensors", ".sft")  # what ComfyUI reads as safetensors
PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".pkl")  # ComfyUI lists these too; Side-Step never unpickles
# What a file that is not the one it was taken for seems to be, told by a tensor name it holds.
_FOREIGN_KEYS = (
    ("conditioner.embedders.", "a Stable Diffusion XL checkpoint"),
    ("model.diffusion_model.input_blocks.", "a Stable Diffusion checkpoint"),
    ("double_blocks.0.", "a Flux model"),
    ("patch_embedding.weight", "a Wan video model"),
    ("lm_head.weight", "a language model"),
    ("lora_", "a LoRA adapter (it belongs in models/loras)"),
    ("lokr_", "a LoKR adapter (it belongs in models/loras)"),
    ("decoder.layers.0.self_attn_norm.weight", "an ACE-Step 1.5 diffusion model (it belongs in models/diffusion_models)"),
    ("layers.0.post_attention_layernorm.weight", "a Qwen3 text encoder (it belongs in models/text_encoders)"),
    ("decoder.layers.1.layers.0.beta", "an audio VAE (it belongs in models/vae)"),
)
_DIT_FIX = "Put the ACE-Step 1.5 model there (acestep_v1.5_turbo.safetensors from Comfy-Org's ACE-Step 1.5 page), and this file where it belongs."
_TEXT_ENCODER_FIX = "Put qwen_0.6b_ace15.safetensors there (from Comfy-Org's ACE-Step 1.5 page), and this file where it belongs."
_VAE_FIX = "Put ace_1.5_vae.safetensors there (from Comfy-Org's ACE-Step 1.5 page), and this file where it belongs."
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
            diffusion_models=(root / "unet", root / "diffusion_models"),
            checkpoints=(root / "checkpoints",),
            text_encoders=(root / "text_encoders", root / "clip"),
            vae=(root / "vae",),
        )

    def searched(self) -> str:
        """The folders, for error messages."""
        folders = [*self.diffusion_models, *self.checkpoints, *self.text_encoders, *self.vae]
        return ", ".join(shown(folder) for folder in folders) or "none"


def looks_like_models_dir(folder: str | Path) -> bool:
    """Whether `folder` is a ComfyUI `models/` directory (it has a diffusion_models, unet or checkpoints folder)."""
    folder = Path(folder)
    return any((folder / name).is_dir() for name in ("diffusion_models", "unet", "checkpoints"))


def _loops(folder: str) -> bool:
    """Whether `folder` is a link back to a folder above it (walking into it would never end)."""
    if not os.path.islink(folder):
        return False
    target, here = os.path.realpath(folder), os.path.realpath(os.path.dirname(folder))
    return here == target or here.startswith(target.rstrip(os.sep) + os.sep)


def listed_files(folder: Path) -> Iterator[tuple[str, Path]]:
    """(name, path) of every file ComfyUI's folder_paths lists under `folder`: links followed, .git skipped, folders
    it cannot enter (too deep for the system, unreadable) passed over; a link back up the tree is not entered."""
    for parent, subfolders, files in os.walk(folder, followlinks=True):
        subfolders[:] = [name for name in subfolders if name != ".git" and not _loops(os.path.join(parent, name))]
        for name in files:
            path = os.path.join(parent, name)
            yield Path(os.path.relpath(path, folder)).as_posix(), Path(path)


def _weight_files(folders: tuple[Path, ...]) -> list[tuple[str, Path]]:
    """(name relative to its folder, path) of every file ComfyUI would list there, the first folder winning a name."""
    found: dict[str, Path] = {}
    for folder in folders:
        for name, path in listed_files(folder):
            found.setdefault(name, path)
    return sorted(found.items(), key=lambda item: item[0].lower())


def looks_like(shapes: dict[str, tuple[int, ...]]) -> str:
    """What a file seems to be, from its tensor names."""
    for key_part, what in _FOREIGN_KEYS:
        if any(key_part in key for key in shapes):
            return what
    return "not an ACE-Step 1.5 file" if shapes else "an empty file (no tensors)"


@dataclass(frozen=True)
class _Found:
    """A file that holds the wanted part, with its header."""

    name: str
    path: Path
    header: Header


def _survey(
    folders: tuple[Path, ...], markers: tuple[str, ...], what: str, fix: str
) -> tuple[list[_Found], list[SkippedFile]]:
    """Files holding every marker tensor, and the reason for each ACE-Step-looking file (by name or keys) that does not.

    Headers of files whose name and header show no sign of ACE-Step are not parsed, and none is kept in memory."""
    found: list[_Found] = []
    skipped: list[SkippedFile] = []
    wanted = tuple(marker.encode() for marker in markers)
    for name, path in _weight_files(folders):
        suffix, by_name = path.suffix.lower(), looks_like_ace_step(name)
        claims = _claimed_variant(name)
        if suffix in PICKLE_EXTENSIONS and by_name:
            reason = f"it is a PyTorch pickle ({suffix}), and Side-Step reads only .safetensors (it never opens pickles)"
            skipped.append(SkippedFile(name, path, reason, "Download the .safetensors version of this model.", claims))
        if suffix not in SAFETENSORS_EXTENSIONS:
            continue
        try:
            raw, size = header_bytes(path)
        except UnusableFile as error:
            if by_name:
                skipped.append(SkippedFile.of(name, error, claims))
            continue
        if not by_name and not any(marker in raw for marker in wanted):
            continue
        try:
            header = parse_header(path, raw, size)
        except UnusableFile as error:
            skipped.append(SkippedFile.of(name, error, claims))
            continue
        if all(marker in header.shapes for marker in markers):
            found.append(_Found(name, path, header))
        else:
            seems = looks_like(header.shapes)
            skipped.append(SkippedFile(name, path, f"it holds no {what}; it looks like {seems}", fix, claims))
    return found, skipped


def _claimed_variant(name: str) -> str | None:
    """The official variant (turbo, xl-sft, ...) a Comfy-Org file name claims, if any."""
    match = _repackaged(name)
    return (("xl-" if match["xl"] else "") + match["family"].lower()) if match else None


def header_of(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Shapes and metadata of a safetensors file; empty when the file cannot be read as one."""
    try:
        header = read_header(path)
    except UnusableFile:
        return {}, {}
    return header.shapes, header.metadata


def _family_of(name: str, metadata: dict[str, str]) -> tuple[str | None, bool]:
    """(base family, named like Comfy-Org's repackaged files) from the file name, else the file's metadata."""
    match = _repackaged(name)
    if match:
        return match["family"].lower(), True
    stem = _stem(name)
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
    return _REPACKAGED_NAME.fullmatch(_stem(name))


def _stem(name: str) -> str:
    """A file name without its folders and safetensors extension."""
    base = Path(name).name
    return next((base[: -len(ext)] for ext in SAFETENSORS_EXTENSIONS if base.lower().endswith(ext)), base)


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


def _check_complete(path: Path, expected: list[str], own: dict[str, tuple[int, ...]]) -> None:
    """UnusableFile when tensors an ACE-Step 1.5 model needs are not in the file (a partial or pruned export)."""
    missing = [name for name in expected if name not in own]
    if missing:
        raise UnusableFile(
            path, f"{len(missing)} tensors an ACE-Step 1.5 model needs are missing (e.g. {missing[0]})",
            "It is a partial or pruned export: download the whole model again.",
        )


def _entry(found: _Found, prefix: str, source: str) -> ModelEntry:
    """The ModelEntry of a ComfyUI file holding an ACE-Step 1.5 DiT under `prefix`; UnusableFile when its tensors do
    not make a whole ACE-Step 1.5 model."""
    family, repackaged = _family_of(found.name, found.header.metadata)
    own = {key[len(prefix) :]: shape for key, shape in found.header.shapes.items() if key.startswith(prefix)}
    _check_complete(found.path, list(SHAPE_KEYS), own)
    try:
        entry = _classified(found.name, found.path, own, family, repackaged, source, prefix)
    except ConfigError as error:
        raise UnusableFile(found.path, f"its tensors do not make an ACE-Step 1.5 model ({error})", _DIT_FIX) from None
    _check_complete(found.path, _tensor_names(json.dumps(entry.config.to_dict(), sort_keys=True)), own)
    return entry


@lru_cache(maxsize=8)
def _tensor_names(config_json: str) -> list[str]:
    """The tensor names of an ACE-Step 1.5 model of this config (built on the meta device once per config)."""
    from .model import AceStepConditionGenerationModel

    config = AceStepConfig.from_dict(json.loads(config_json), source="a ComfyUI file")
    return list(AceStepConditionGenerationModel.on_meta_device(config).state_dict())


def entry_for_state_dict(shapes: dict[str, tuple[int, ...]], base: str, name: str = SOURCE_LOADED) -> ModelEntry:
    """A ModelEntry for an ACE-Step 1.5 model another program holds in memory, whose variant the user named (so
    datasets and adapters record the same variant as for the file it was loaded from)."""
    return _classified(name, Path(name), shapes, base, True, SOURCE_LOADED, "")


def survey_comfy_models(folders: ComfyFolders) -> tuple[list[ModelEntry], list[SkippedFile]]:
    """Every ACE-Step 1.5 DiT among ComfyUI's diffusion models and all-in-one checkpoints (repackaged ones first), and
    why each ACE-Step-looking file there is not one."""
    entries: list[ModelEntry] = []
    skipped: list[SkippedFile] = []
    for kind_folders, prefix, source in (
        (folders.diffusion_models, "", SOURCE_DIFFUSION_MODEL),
        (folders.checkpoints, AIO_DIT_PREFIX, SOURCE_CHECKPOINT),
    ):
        markers = tuple(prefix + marker for marker in _DIT_MARKERS)
        found, unusable = _survey(kind_folders, markers, "ACE-Step 1.5 diffusion model", _DIT_FIX)
        skipped += unusable
        for file in found:
            try:
                entries.append(_entry(file, prefix, source))
            except UnusableFile as error:
                skipped.append(SkippedFile.of(file.name, error, _claimed_variant(file.name)))
    entries.sort(key=lambda entry: (not entry.official, entry.source != SOURCE_DIFFUSION_MODEL, entry.name.lower()))
    return entries, skipped


def scan_comfy_models(folders: ComfyFolders) -> list[ModelEntry]:
    """Every ACE-Step 1.5 DiT among ComfyUI's diffusion models and all-in-one checkpoints, repackaged ones first."""
    return survey_comfy_models(folders)[0]


def no_comfy_models_message(folders: ComfyFolders) -> str:
    """What was searched and what is expected, for a ComfyUI install without any ACE-Step 1.5 model."""
    return f"No ACE-Step 1.5 model found in ComfyUI's model folders ({folders.searched()}). {WHERE_FILES_GO}"


def survey_text_encoders(folders: ComfyFolders) -> tuple[list[tuple[str, Path]], list[SkippedFile]]:
    """(name, path) of the Qwen3 text-encoder files in the text_encoders folders (the ACE-Step 0.6B one first), and
    why each ACE-Step-looking file there is not one."""
    marker = TEXT_ENCODER_PREFIX + _TEXT_ENCODER_MARKER
    found, skipped = _survey(folders.text_encoders, (marker,), "Qwen3 text encoder", _TEXT_ENCODER_FIX)
    return sorted(((f.name, f.path) for f in found), key=lambda item: Path(item[0]).name != PREFERRED_TEXT_ENCODER_FILE), skipped


def survey_vaes(folders: ComfyFolders) -> tuple[list[tuple[str, Path]], list[SkippedFile]]:
    """(name, path) of the Oobleck audio-VAE files in the vae folders (ACE-Step 1.5's first), and why each
    ACE-Step-looking file there is not one."""
    found, skipped = _survey(folders.vae, (_VAE_MARKER,), "audio VAE", _VAE_FIX)
    return sorted(((f.name, f.path) for f in found), key=lambda item: Path(item[0]).name != PREFERRED_VAE_FILE), skipped


def text_encoder_files(folders: ComfyFolders) -> list[tuple[str, Path]]:
    """(name, path) of the Qwen3 text-encoder files in the text_encoders folders, the ACE-Step 0.6B one first."""
    return survey_text_encoders(folders)[0]


def vae_files(folders: ComfyFolders) -> list[tuple[str, Path]]:
    """(name, path) of the Oobleck audio-VAE files in the vae folders, ACE-Step 1.5's first."""
    return survey_vaes(folders)[0]


def _pick(choice: str | None, survey: tuple[list[tuple[str, Path]], list[SkippedFile]], kind: str, expected: str, folders: str) -> Path:
    """The chosen file (a listed name or a path), else the first one found; CheckpointError naming what is missing,
    or the chosen (or expected) file and why it cannot be used."""
    files, skipped = survey
    if choice:
        named = dict(files)
        if choice in named:
            return named[choice]
        for unusable in skipped:
            if choice in (unusable.name, shown(unusable.name)):
                raise CheckpointError(unusable.message)
        path = Path(choice).expanduser()
        if path.is_file() or path.is_symlink():
            read_header(path)
            return path
        raise CheckpointError(f"The {kind} {choice!r} is not in {folders} and is not a file. Pick one from the list.")
    if not files:
        why = "".join(f" {unusable.message}" for unusable in sorted(skipped, key=lambda s: Path(s.name).name != expected))
        raise CheckpointError(
            f"No ACE-Step 1.5 {kind} found in {folders}: put {expected} there (the file ComfyUI's own ACE-Step 1.5 "
            f"template downloads), or choose one.{why}"
        )
    return files[0][1]


def _text_encoder_width(path: Path, prefix: str) -> int | None:
    """The hidden width of a Qwen3 text-encoder file (or of the text-encoder part of a checkpoint); None if it holds none."""
    shape = read_header(path).shapes.get(prefix + _TEXT_ENCODER_MARKER)
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
    shapes = header_of(entry.path)[0] if in_checkpoint else {}
    if in_checkpoint and not text_encoder and AIO_TEXT_ENCODER_PREFIX + _TEXT_ENCODER_MARKER in shapes:
        text_path, text_prefix = entry.path, AIO_TEXT_ENCODER_PREFIX
    else:
        text_path = _pick(
            text_encoder, survey_text_encoders(folders), "text encoder", PREFERRED_TEXT_ENCODER_FILE,
            ", ".join(map(shown, folders.text_encoders)) or "ComfyUI's text_encoders folder",
        )
        text_prefix = TEXT_ENCODER_PREFIX
    if in_checkpoint and not vae and AIO_VAE_PREFIX + _VAE_MARKER in shapes:
        vae_path, vae_prefix = entry.path, AIO_VAE_PREFIX
    else:
        vae_path = _pick(
            vae, survey_vaes(folders), "VAE", PREFERRED_VAE_FILE, ", ".join(map(shown, folders.vae)) or "ComfyUI's vae folder"
        )
        vae_prefix = ""
    width = _text_encoder_width(text_path, text_prefix)
    if width is None:
        raise CheckpointError(
            f"{shown(text_path)} holds no Qwen3 text encoder: choose {PREFERRED_TEXT_ENCODER_FILE} from ComfyUI's text_encoders folder."
        )
    if width != entry.config.text_hidden_dim:
        raise CheckpointError(
            f"The text encoder {shown(text_path)} gives {width}-wide features, but {shown(entry.name)} needs "
            f"{entry.config.text_hidden_dim}-wide ones: pair it with {PREFERRED_TEXT_ENCODER_FILE} (Qwen3-Embedding-0.6B); "
            "the qwen_1.7b/4b_ace15 files are the 5 Hz language model, not the text encoder."
        )
    tokenizer = Path(tokenizer_dir).expanduser() if tokenizer_dir else find_tokenizer(folders)
    if tokenizer is None or not (tokenizer / "vocab.json").is_file():
        where = tokenizer if tokenizer is not None else f"<ComfyUI>/{TOKENIZER_IN_COMFYUI.as_posix()}"
        raise CheckpointError(
            f"No Qwen tokenizer files at {shown(where)}: ComfyUI's text-encoder files carry no tokenizer. Point at the "
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

"""Find ACE-Step 1.5 model folders under a checkpoint root and tell official variants from custom fine-tunes."""

from __future__ import annotations

import difflib
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import CheckpointError, ConfigError, UnknownBaseModelError
from .model_files import SkippedFile, UnusableFile, looks_like_ace_step, read_header, shown
from .model.config import AceStepConfig
from .variants import BASE_MODELS

OFFICIAL_TREE = "official tree"
LABEL_SEPARATOR = " · "
OFFICIAL_VARIANTS = ("turbo", "base", "sft", "xl-turbo", "xl-base", "xl-sft")
VAE_FOLDER = "vae"
TEXT_ENCODER_PREFIX = "Qwen3-Embedding-"
PREFERRED_TEXT_ENCODER = "Qwen3-Embedding-0.6B"
SILENCE_LATENT_FILES = ("silence_latent.pt", "silence_latent.safetensors")
LATENT_CHANNELS = 64

# Official folder names: acestep-v15-[xl-]{turbo,base,sft} plus published suffixes (-rl, -shift3, -continuous).
_OFFICIAL_NAME = re.compile(r"acestep-v15-(?P<xl>xl-)?(?P<family>turbo|base|sft)(?:-(?:rl|shift\d+|continuous))*", re.I)
_NON_MODEL_NAME = re.compile(rf"{VAE_FOLDER}|{re.escape(TEXT_ENCODER_PREFIX)}.*|acestep-5hz-lm-.*", re.I)
_ROOT_HINT = "Pass the folder that contains acestep-v15-turbo (or another model folder), vae and Qwen3-Embedding-0.6B."


@dataclass(frozen=True)
class ModelEntry:
    """One model folder: where it is, what it is, and the training facts read from its config.json."""

    name: str
    path: Path
    official: bool
    variant: str | None
    base: str | None
    is_xl: bool
    is_turbo: bool | None
    timestep_mu: float
    timestep_sigma: float
    config: AceStepConfig
    source: str = OFFICIAL_TREE
    weights_prefix: str = ""

    @property
    def kind(self) -> str:
        """Short classification, e.g. 'official turbo', 'custom, base: sft' or 'custom, base unknown'."""
        if self.official:
            return f"official {self.variant}"
        return f"custom, base: {self.base}" if self.base else "custom, base unknown"

    @property
    def short_name(self) -> str:
        """What --model-variant accepts for this model: the official variant (turbo, xl-sft, ...) or its name."""
        return self.variant if self.official and self.variant else self.name

    @property
    def in_official_tree(self) -> bool:
        """Whether this model is a folder of the official download layout (config.json + model.safetensors)."""
        return self.source == OFFICIAL_TREE

    @property
    def label(self) -> str:
        """Human label: 'acestep-v15-turbo  [official turbo]', or for a ComfyUI file
        'acestep_v1.5_turbo.safetensors · ComfyUI diffusion model · turbo'."""
        if self.in_official_tree:
            return f"{shown(self.name)}  [{self.kind}]"
        what = (self.variant or self.base) if self.official else (f"custom, base {self.base}" if self.base else "custom, base unknown")
        return f"{shown(self.name)}{LABEL_SEPARATOR}{self.source}{LABEL_SEPARATOR}{what}"


@dataclass(frozen=True)
class SharedParts:
    """The VAE, text encoder, tokenizer and silence latent a model needs.

    Official trees give folders (diffusers VAE, Hugging Face Qwen3-Embedding with its tokenizer) and a silence-latent
    file; ComfyUI gives single files (perhaps parts of one all-in-one file, under a key prefix), ComfyUI's tokenizer
    folder, and no silence latent (None: the built-in one ComfyUI also uses).
    """

    vae_path: Path
    text_encoder_path: Path
    silence_latent_path: Path | None
    tokenizer_dir: Path | None = None
    vae_prefix: str = ""
    text_encoder_prefix: str = ""

    def files(self) -> list[Path]:
        """Every file these parts are read from (for fingerprints and size estimates)."""
        paths = [self.vae_path, self.text_encoder_path, self.tokenizer_dir, self.silence_latent_path]
        found: list[Path] = []
        for path in paths:
            if path is not None:
                found += sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        return list(dict.fromkeys(found))


def _family(text: str | None) -> str | None:
    """The base family ('turbo', 'base', 'sft') named by a model_version such as 'xl_turbo', or None."""
    if not text:
        return None
    tokens = [t for t in re.split(r"[-_\s]+", text.lower()) if t]
    if tokens and tokens[0] == "xl":
        tokens = tokens[1:]
    return tokens[0] if tokens and tokens[0] in BASE_MODELS else None


def _base_from_config(config: AceStepConfig) -> str | None:
    """The base family a config declares through is_turbo / model_version; None when absent or contradictory."""
    version = _family(config.model_version)
    if config.is_turbo is None:
        return version
    if version is not None and (version == "turbo") != config.is_turbo:
        return None
    return version or ("turbo" if config.is_turbo else "base")


def load_entry(folder: str | Path) -> ModelEntry:
    """Classify one model folder; raises ConfigError when its config.json is missing or not ACE-Step 1.5."""
    folder = Path(folder)
    config = AceStepConfig.from_json(folder / "config.json")
    declared = _base_from_config(config)
    match = _OFFICIAL_NAME.fullmatch(folder.name)
    family = match["family"].lower() if match else None
    # A folder named like an official variant whose config says the opposite about turbo is a renamed custom model.
    official = family is not None and (declared is None or (declared == "turbo") == (family == "turbo"))
    is_xl = bool(match and match["xl"]) or config.condition_config is not config
    return ModelEntry(
        name=folder.name,
        path=folder,
        official=official,
        variant=(("xl-" if is_xl else "") + family) if official else None,
        base=family if official else declared,
        is_xl=is_xl,
        is_turbo=config.is_turbo,
        timestep_mu=config.timestep_mu,
        timestep_sigma=config.timestep_sigma,
        config=config,
    )


def _sort_key(entry: ModelEntry) -> tuple[int, str, str]:
    """Official variants first in OFFICIAL_VARIANTS order, then custom models alphabetically."""
    rank = OFFICIAL_VARIANTS.index(entry.variant) if entry.official else len(OFFICIAL_VARIANTS)
    return rank, entry.name.lower(), entry.name


def _check_root(root: str | Path) -> Path:
    """The checkpoint root as a Path, or a CheckpointError when it is not an existing folder."""
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise CheckpointError(f"Checkpoint folder {root} {what}. {_ROOT_HINT}")
    return root


def _official_variant(name: str) -> str | None:
    """The official variant (turbo, xl-sft, ...) an official folder name says, if any."""
    match = _OFFICIAL_NAME.fullmatch(name)
    return (("xl-" if match["xl"] else "") + match["family"].lower()) if match else None


def _check_weights(folder: Path) -> None:
    """Read the header of a model folder's model.safetensors when there is one; UnusableFile when it cannot be used."""
    weights = folder / "model.safetensors"
    if weights.is_file() or weights.is_symlink():
        read_header(weights)


def _survey_folder(folder: Path) -> ModelEntry | None:
    """The model in one folder under a checkpoint root; None when it is not a model folder; UnusableFile (for a folder
    named like ACE-Step) when it is one that cannot be used."""
    if _NON_MODEL_NAME.fullmatch(folder.name):
        return None
    claims = looks_like_ace_step(folder.name) or _official_variant(folder.name) is not None
    if not folder.is_dir():
        if claims and folder.is_symlink() and not folder.exists():
            read_header(folder)  # says where the dangling link points
        return None
    if not (folder / "config.json").is_file():
        if claims and any(folder.glob("model*.safetensors*")):
            raise UnusableFile(folder, "it has weights but no config.json", "Download the model's config.json into it again.")
        return None
    try:
        entry = load_entry(folder)
    except ConfigError as error:
        if not claims:
            return None
        raise UnusableFile(folder, f"its config.json cannot be used ({error})", "Download the model's config.json again.") from None
    _check_weights(folder)
    return entry


def survey_folders(root: str | Path) -> tuple[list[ModelEntry], list[SkippedFile]]:
    """The ACE-Step 1.5 model folders directly under `root` (official first), and why each ACE-Step-named folder that
    cannot be used was left out."""
    root = _check_root(root)
    entries: list[ModelEntry] = []
    skipped: list[SkippedFile] = []
    try:
        folders = sorted(root.iterdir())
    except OSError as error:
        raise CheckpointError(f"Cannot list {shown(root)}: {error.strerror}. {_ROOT_HINT}") from None
    for folder in folders:
        try:
            entry = _survey_folder(folder)
        except UnusableFile as error:
            skipped.append(SkippedFile.of(folder.name, error, _official_variant(folder.name)))
            continue
        except OSError:
            continue
        if entry is not None:
            entries.append(entry)
    return sorted(entries, key=_sort_key), skipped


def scan_models(root: str | Path) -> list[ModelEntry]:
    """All ACE-Step 1.5 model folders directly under `root`, official first; CheckpointError when there are none."""
    entries, skipped = survey_folders(root)
    if not entries:
        raise CheckpointError(no_models_message(Path(root).expanduser(), skipped))
    return entries


def skipped_note(skipped: list[SkippedFile]) -> str:
    """The reasons of skipped files, appended to a 'no model' message."""
    return "".join(f" Skipped: {unusable.message}" for unusable in skipped)


def no_models_message(root: Path, skipped: list[SkippedFile] = ()) -> str:
    """Explain why `root` holds no model folder, including the common mistake of passing a model folder itself."""
    if (root / "config.json").is_file():
        return (
            f"{shown(root)} looks like a single model folder, not a checkpoint root. "
            f"Pass its parent folder {shown(root.parent)} instead."
        )
    subfolders = sorted(shown(p.name) for p in root.iterdir() if p.is_dir())
    found = ", ".join(subfolders) if subfolders else "no sub-folders"
    return (
        f"No ACE-Step 1.5 model folder in {shown(root)} (a model folder holds an ACE-Step config.json and "
        f"model.safetensors, e.g. acestep-v15-turbo); found: {found}. {_ROOT_HINT}{skipped_note(skipped)}"
    )


def _closest(query: str, names: list[str]) -> list[str]:
    """Names that look like `query`, closest first (case-insensitive)."""
    lowered = {name.lower(): name for name in names}
    return [lowered[n] for n in difflib.get_close_matches(query.lower(), list(lowered), n=3, cutoff=0.5)]


def filter_models(entries: list[ModelEntry], query: str) -> list[ModelEntry]:
    """Entries whose name contains `query` (case-insensitive); if none, the closest-looking names."""
    needle = query.strip().lower()
    if not needle:
        return list(entries)
    hits = [e for e in entries if needle in e.name.lower()]
    if hits:
        return hits
    by_name = {e.name: e for e in entries}
    return [by_name[name] for name in _closest(needle, list(by_name))]


def find_model(root: str | Path, name: str) -> ModelEntry:
    """The model folder `name` under `root`: exact name, else a unique case-insensitive substring match."""
    root = _check_root(root)
    folder = root / name
    if name and folder.name == name and folder.is_dir():
        if not (folder / "config.json").is_file():
            raise CheckpointError(
                f"{folder} has no config.json, so it is not a model folder. "
                "A model folder holds config.json and model.safetensors (e.g. acestep-v15-turbo)."
            )
        return load_entry(folder)
    entries, skipped = survey_folders(root)
    if not entries:
        raise refusal(skipped, name, False) or CheckpointError(no_models_message(root, skipped))
    return select_model(entries, name, root, short_names=False, skipped=skipped)


def _canonical_names(variant: str) -> set[str]:
    """The names an official variant is published under: the official folder and ComfyUI's repackaged file."""
    comfy = variant.replace("-", "_")
    return {f"acestep-v15-{variant}", f"acestep_v1.5_{comfy}.safetensors", f"acestep_v1.5_{comfy}_bf16.safetensors"}


def _by_short_name(entries: list[ModelEntry], variant: str, root: Path) -> ModelEntry | None:
    """The official model published as `variant` (turbo, xl-sft, ...); None when it is not there."""
    hits = [e for e in entries if e.official and e.variant == variant]
    canonical = [e for e in hits if Path(e.name).name in _canonical_names(variant)] or hits
    if len(canonical) > 1:
        raise CheckpointError(
            f"Several {variant} models in {root}: {', '.join(e.name for e in canonical)}. Give the full name."
        )
    return canonical[0] if canonical else None


def _not_downloaded(variant: str, entries: list[ModelEntry], root: Path) -> CheckpointError:
    """The error for an official variant that is not in `root`: where it would go, and what is there."""
    where = (
        f"{shown(root / f'acestep-v15-{variant}')} (official download)"
        if all(e.in_official_tree for e in entries)
        else f"{shown(root / 'diffusion_models' / sorted(_canonical_names(variant))[1])} (ComfyUI)"
    )
    found = ", ".join(shown(e.short_name) for e in entries)
    return CheckpointError(
        f"The {variant} model is not downloaded: it would be {where}. Models found there: {found}."
    )


def refusal(skipped: list[SkippedFile], name: str, short_names: bool = True) -> CheckpointError | None:
    """The error for a name that picks a file or folder skipped while listing: its path and why it cannot be used."""
    needle = name.strip().lower()

    def names(unusable: SkippedFile) -> set[str]:
        base = Path(shown(unusable.name)).name.lower()
        return {unusable.name.lower(), shown(unusable.name).lower(), base, base.rsplit(".", 1)[0]}

    hits = [s for s in skipped if (short_names and s.variant == needle) or needle in names(s)]
    hits = hits or [s for s in skipped if needle and needle in shown(s.name).lower() and not _OFFICIAL_NAME.fullmatch(needle)]
    return CheckpointError(" ".join(unusable.message for unusable in hits)) if hits else None


def select_model(
    entries: list[ModelEntry], name: str, root: Path, short_names: bool = True, skipped: list[SkippedFile] = ()
) -> ModelEntry:
    """The entry `name` picks: an official short name (turbo, xl-sft, ...), an exact name, else a unique substring.

    Errors name the models that are there, the closest match for a typo, where a missing official model goes, and
    for a name that picks a file skipped while listing, that file and why it cannot be used.
    """
    needle = name.strip().lower()
    if short_names and needle in OFFICIAL_VARIANTS:
        entry = _by_short_name(entries, needle, root)
        if entry is None:
            raise refusal(skipped, name, short_names) or _not_downloaded(needle, entries, root)
        return entry
    same = [e for e in entries if e.name.lower() == needle or Path(e.name).name.lower().removesuffix(".safetensors") == needle]
    # A full official folder name means that exact variant: never swap in a look-alike such as '-shift3'.
    loose = needle and not _OFFICIAL_NAME.fullmatch(needle)
    hits = same or [e for e in entries if loose and needle in e.name.lower()]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise CheckpointError(
            f"Model name {name!r} matches several folders in {root}: {', '.join(e.name for e in hits)}. "
            "Give the full folder name."
        )
    refused = refusal(skipped, name, short_names)
    if refused is not None:
        raise refused
    names = [e.short_name for e in entries] + [e.name for e in entries]
    closest = _closest(needle, list(dict.fromkeys(names)))
    hint = f" Did you mean {closest[0]!r}?" if closest else ""
    if short_names:
        listed = ", ".join(e.short_name for e in entries)
        raise CheckpointError(f"No model named {name!r} in {root}.{hint} Models there: {listed}.")
    existing = ", ".join(e.name for e in entries)
    raise CheckpointError(
        f"No model folder named {name!r} in {root}.{hint} Model folders there: {existing}. "
        "Folder names must stay as downloaded (do not rename acestep-v15-* folders)."
    )


def resolve_base(entry: ModelEntry, base: str | None = None) -> str:
    """The base family (turbo/base/sft) whose training schedule applies: the named one, else the detected one."""
    if base is not None:
        chosen = base.strip().lower()
        if chosen not in BASE_MODELS:
            raise UnknownBaseModelError(
                f"{base!r} is not a base model for {entry.name}. Choose one of: {', '.join(BASE_MODELS)} "
                "(--base-model turbo|base|sft)."
            )
        if entry.base is not None and chosen != entry.base:
            raise UnknownBaseModelError(
                f"{entry.name} says it is a {entry.base} model, so its base cannot be set to {chosen!r}: the base model "
                "choice (--base-model) is only for custom fine-tunes that do not say. Leave it on auto."
            )
        return chosen
    if entry.base is None:
        raise UnknownBaseModelError(
            f"Cannot tell which base model the custom model {entry.name} ({entry.path}) was fine-tuned from: "
            f"its config.json has is_turbo={entry.is_turbo!r}, model_version={entry.config.model_version!r}. "
            "Name the base it was trained from with --base-model turbo|base|sft (the Base model input in ComfyUI)."
        )
    return entry.base


def _find_text_encoder(root: Path) -> Path | None:
    """The Qwen3-Embedding-* folder with a config.json under `root`, preferring the 0.6B one."""
    candidates = sorted(
        p for p in root.glob(f"{TEXT_ENCODER_PREFIX}*") if p.is_dir() and (p / "config.json").is_file()
    )
    preferred = [p for p in candidates if p.name == PREFERRED_TEXT_ENCODER]
    return (preferred or candidates or [None])[0]


def find_shared_parts(root: str | Path, entry: ModelEntry) -> SharedParts:
    """Locate the VAE, text encoder (under `root`) and silence latent (model folder first, then `root`)."""
    root = _check_root(root)
    vae_dir = root / VAE_FOLDER
    if not (vae_dir / "config.json").is_file():
        raise CheckpointError(
            f"No VAE found: expected a folder '{VAE_FOLDER}' with config.json at {vae_dir}. "
            "It ships with the official ACE-Step 1.5 checkpoints; put it next to the model folders."
        )
    text_encoder_dir = _find_text_encoder(root)
    if text_encoder_dir is None:
        raise CheckpointError(
            f"No text encoder found in {root}: expected a folder '{PREFERRED_TEXT_ENCODER}' "
            f"(any '{TEXT_ENCODER_PREFIX}*' folder with a config.json). "
            "It ships with the official ACE-Step 1.5 checkpoints; put it next to the model folders."
        )
    places = [entry.path / file for file in SILENCE_LATENT_FILES] + [root / file for file in SILENCE_LATENT_FILES]
    silence = next((p for p in places if p.is_file()), None)
    if silence is None:
        raise CheckpointError(
            f"No silence latent found: looked for {' or '.join(SILENCE_LATENT_FILES)} in {entry.path} and {root}. "
            "Copy silence_latent.pt from an official model folder (e.g. acestep-v15-turbo) into the model folder."
        )
    return SharedParts(vae_path=vae_dir, text_encoder_path=text_encoder_dir, silence_latent_path=silence)


def _read_silence_file(path: Path) -> object:
    """The raw object stored in a silence-latent file; pickled code is refused by weights_only loading."""
    try:
        if path.suffix != ".safetensors":
            return torch.load(path, map_location="cpu", weights_only=True)
        tensors = load_file(str(path), device="cpu")
    except (OSError, EOFError, RuntimeError, SafetensorError, pickle.UnpicklingError) as exc:
        raise CheckpointError(
            f"Cannot read the silence latent {path}: {exc}. Replace it with the file from the official model "
            "(only plain tensors are loaded; pickled code is refused)."
        ) from exc
    if "silence_latent" not in tensors:
        raise CheckpointError(
            f"{path} has no 'silence_latent' tensor (found: {', '.join(sorted(tensors)) or 'nothing'}). "
            "Use the silence latent that ships with the official model."
        )
    return tensors["silence_latent"]


def load_silence_latent(path: str | Path) -> torch.Tensor:
    """Read a silence latent stored as [1, 64, T] (.pt or .safetensors) and return it as [1, T, 64]."""
    path = Path(path)
    latent = _read_silence_file(path)
    fix = "Replace it with the silence_latent.pt that ships with the official model."
    if not isinstance(latent, torch.Tensor):
        raise CheckpointError(f"{path} holds a {type(latent).__name__}, not a tensor. {fix}")
    if latent.dim() != 3 or latent.shape[0] != 1 or latent.shape[1] != LATENT_CHANNELS or latent.shape[2] < 1:
        raise CheckpointError(
            f"{path} holds a tensor of shape {list(latent.shape)}; "
            f"a silence latent is [1, {LATENT_CHANNELS}, T]. {fix}"
        )
    if not latent.is_floating_point():
        raise CheckpointError(f"{path} holds {latent.dtype} values; a silence latent holds floats. {fix}")
    return latent.transpose(1, 2).contiguous()


def describe_models(entries: list[ModelEntry]) -> str:
    """A plain-text table of models: name, what --model-variant accepts for it, classification and source, path."""
    if not entries:
        return "No ACE-Step 1.5 models."
    rows = [("model", "--model-variant", "type", "path")]
    rows += [
        (shown(e.name), shown(e.short_name), f"[{e.kind}]" + ("" if e.in_official_tree else f" {e.source}"), shown(e.path))
        for e in entries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in rows)

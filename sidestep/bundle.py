"""One chosen ACE-Step 1.5 model with its VAE, text encoder and silence latent, loaded lazily and cached.

The weights may come from the official download tree (folders), from ComfyUI's own files (a diffusion-model or
all-in-one file plus text-encoder and VAE files), or from models ComfyUI already holds in memory (state dicts).
Whatever the source, the parts are the same classes, so training, encoding and sampling cannot tell them apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from .model_folders import (
    ModelEntry,
    SharedParts,
    find_shared_parts,
    load_silence_latent,
    no_models_message,
    resolve_base,
    skipped_note,
    survey_folders,
)
from .model_files import SkippedFile
from .errors import CheckpointError
from .model import PARTS, AceStepConditionGenerationModel
from .model.layers import SCALE_SUFFIX

StateDict = dict[str, torch.Tensor]
_PROBE_WEIGHT = "decoder.layers.0.self_attn.q_proj.weight"  # a DiT Linear weight whose dtype tells the storage
INFERRED_CONFIG_FIX = (
    "The file must be a whole ACE-Step 1.5 model (DiT, condition encoder, tokenizer, detokenizer), as ComfyUI's "
    "acestep_v1.5_*.safetensors files are."
)


class PartsHost(Protocol):
    """A host program's memory manager (ComfyUI's), told about every part a bundle loads and drops."""

    def loaded(self, bundle: "AceStepBundle", part: str, module: torch.nn.Module) -> None:
        """`part` ('dit', 'vae', 'text_encoder') of `bundle` is now held in memory as `module`."""

    def released(self, bundle: "AceStepBundle", part: str) -> None:
        """The bundle dropped `part`."""


class WeightsSource(Protocol):
    """Where a bundle's parts come from."""

    def dit(
        self, entry: ModelEntry, parts: tuple[str, ...], dtype: torch.dtype | None, device: torch.device, held: StateDict
    ) -> AceStepConditionGenerationModel:
        """The DiT with `parts`, taking the tensors `held` in memory already (official names) instead of loading them."""
        ...

    def vae(self, device: torch.device): ...

    def text_encoder(self, device: torch.device): ...

    def silence_latent(self) -> torch.Tensor: ...

    def identity(self, entry: ModelEntry) -> list:
        """JSON-able facts that change whenever the weights do (for dataset fingerprints)."""
        ...

    def stored_dtype(self, entry: ModelEntry) -> torch.dtype | None:
        """The dtype the DiT's weights are held in, where known without reading them (None: as the files store them)."""
        ...

    def bytes_to_load(self, entry: ModelEntry) -> int:
        """How much memory loading every part will take (0 when the weights are in memory already)."""
        ...


def _silence(path: Path | None) -> torch.Tensor:
    """A silence-latent file in memory layout, or ComfyUI's built-in silence latent when there is none."""
    if path is not None:
        return load_silence_latent(path)
    from .comfy_formats import comfy_silence_latent

    return comfy_silence_latent()


@dataclass(frozen=True)
class FilesSource:
    """Weights read from disk: an official model folder with its shared folders, or ComfyUI's single files."""

    shared: SharedParts

    def dit(
        self, entry: ModelEntry, parts: tuple[str, ...], dtype: torch.dtype | None, device: torch.device, held: StateDict
    ) -> AceStepConditionGenerationModel:
        # Read outside inference mode (ComfyUI runs nodes in it): a training copy can then share these tensors.
        with torch.inference_mode(False):
            if entry.in_official_tree:
                return AceStepConditionGenerationModel.from_pretrained(entry.path, dtype, device, parts, held)
            from .comfy_models import dit_index

            return AceStepConditionGenerationModel.from_weights(
                entry.config, dit_index(entry), str(entry.path), dtype, device, parts, INFERRED_CONFIG_FIX, held
            )

    def vae(self, device: torch.device):
        if self.shared.vae_path.is_dir():
            from .vae import load_vae

            return load_vae(self.shared.vae_path, dtype=torch.float32, device=device)
        from .comfy_formats import load_vae_file

        return load_vae_file(self.shared.vae_path, dtype=torch.float32, device=device, prefix=self.shared.vae_prefix)

    def text_encoder(self, device: torch.device):
        if self.shared.text_encoder_path.is_dir():
            from .text import TextEncoder

            return TextEncoder.load(self.shared.text_encoder_path, dtype=torch.float32, device=device)
        from .comfy_formats import load_text_encoder_file

        return load_text_encoder_file(
            self.shared.text_encoder_path,
            self.shared.tokenizer_dir,
            dtype=torch.float32,
            device=device,
            prefix=self.shared.text_encoder_prefix,
        )

    def silence_latent(self) -> torch.Tensor:
        return _silence(self.shared.silence_latent_path)

    def _files(self, entry: ModelEntry) -> list[Path]:
        """The DiT's files (config and weights of a folder, or the single file), then the shared parts' files."""
        if entry.path.is_dir():
            dit = [entry.path / "config.json", *sorted(entry.path.glob("model*.safetensors*"))]
        else:
            dit = [entry.path]
        return list(dict.fromkeys(dit + self.shared.files()))

    def identity(self, entry: ModelEntry) -> list:
        stats = [(path, path.stat()) for path in self._files(entry) if path.is_file()]
        return [[path.name, stat.st_size, stat.st_mtime_ns] for path, stat in stats]

    def bytes_to_load(self, entry: ModelEntry) -> int:
        return sum(path.stat().st_size for path in self._files(entry) if path.suffix == ".safetensors" and path.is_file())

    def stored_dtype(self, entry: ModelEntry) -> torch.dtype | None:
        return None


def state_dict_digest(tensors: StateDict) -> str:
    """A cheap content digest of a state dict: names, shapes, dtypes and the first values of every tensor."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        head = tensor.detach().flatten()[:16].float().cpu()
        digest.update(json.dumps([name, list(tensor.shape), str(tensor.dtype)]).encode())
        digest.update(head.numpy().tobytes())
    return digest.hexdigest()[:16]


def _usable(tensor: torch.Tensor, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    """`tensor` in `dtype` (None: its own) on `device`, shared when it already is. An inference tensor (ComfyUI creates
    its weights in inference mode) used outside inference mode comes back as a normal tensor over the same memory:
    autograd refuses inference tensors, and a copy would cost a second DiT in memory."""
    moved = tensor.to(device=device, dtype=dtype if dtype is not None and tensor.is_floating_point() else None)
    if moved.is_inference() and not torch.is_inference_mode_enabled():
        # A tensor subclass (ComfyUI's quantized weights) keeps its data elsewhere than its storage: copied.
        return _normal_alias(moved) if type(moved) is torch.Tensor else moved.clone()
    return moved


def _normal_alias(tensor: torch.Tensor) -> torch.Tensor:
    """A normal tensor viewing a plain inference tensor's memory, which autograd may save for the backward pass.

    Safe for frozen weights while a step runs: nothing writes to them then (ComfyUI runs one node at a time, and the
    node trains to the end). Writes of our own still bump this tensor's version counter, so autograd's check holds."""
    alias = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    return alias.set_(tensor.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride())


@dataclass(frozen=True)
class StateDictSource:
    """Weights that another program (ComfyUI) already holds in memory, handed over as state dicts on demand.

    Each callable returns the current tensors (official DiT names; ComfyUI's VAE and text-encoder layouts); the
    DiT shares them without copying where dtype and device already match and autograd will not need them.
    """

    dit_state: Callable[[], StateDict]
    vae_state: Callable[[], StateDict] | None
    text_encoder_state: Callable[[], StateDict] | None
    tokenizer_dir: Path | None
    silence_latent_path: Path | None = None
    _identity: list = field(default_factory=list)

    def dit(
        self, entry: ModelEntry, parts: tuple[str, ...], dtype: torch.dtype | None, device: torch.device, held: StateDict
    ) -> AceStepConditionGenerationModel:
        model = AceStepConditionGenerationModel.on_meta_device(entry.config, parts)
        source = self.dit_state()
        tensors = {name: held[name] if name in held else _usable(source[name], dtype, device) for name in model.state_dict()}
        return model.assign_weights(tensors)

    def vae(self, device: torch.device):
        if self.vae_state is None:
            raise CheckpointError("No VAE was connected: connect ComfyUI's VAE (from VAELoader or the checkpoint loader).")
        from .comfy_formats import vae_from_state_dict

        return vae_from_state_dict(self.vae_state(), "ComfyUI's VAE", dtype=torch.float32, device=device)

    def text_encoder(self, device: torch.device):
        if self.text_encoder_state is None:
            raise CheckpointError("No text encoder was connected: connect ComfyUI's CLIP (qwen_0.6b_ace15 in DualCLIPLoader, type ace).")
        from .comfy_formats import TEXT_ENCODER_PREFIX, load_comfy_tokenizer, text_encoder_from_state_dict

        tensors = {name.removeprefix(TEXT_ENCODER_PREFIX): tensor for name, tensor in self.text_encoder_state().items()}
        tokenizer = load_comfy_tokenizer(self.tokenizer_dir)
        return text_encoder_from_state_dict(tensors, tokenizer, "ComfyUI's CLIP", dtype=torch.float32, device=device)

    def silence_latent(self) -> torch.Tensor:
        return _silence(self.silence_latent_path)

    def identity(self, entry: ModelEntry) -> list:
        return self._identity

    def bytes_to_load(self, entry: ModelEntry) -> int:
        return 0

    def stored_dtype(self, entry: ModelEntry) -> torch.dtype | None:
        return self.dit_state()[_PROBE_WEIGHT].dtype  # fp8 where ComfyUI loaded the model with an fp8 weight_dtype


@dataclass
class AceStepBundle:
    """A model plus everything it needs; each part is loaded on first use and kept until `release`."""

    entry: ModelEntry
    base: str
    source: WeightsSource
    dtype: torch.dtype | None = None  # the frozen weights' storage; None: each tensor as its source stores it
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    host: PartsHost | None = field(default=None, repr=False)
    _dit: AceStepConditionGenerationModel | None = field(default=None, repr=False)
    _vae: object | None = field(default=None, repr=False)
    _text_encoder: object | None = field(default=None, repr=False)
    _silence: torch.Tensor | None = field(default=None, repr=False)

    @property
    def variant(self) -> str:
        """The official variant name (turbo, base, sft, xl-turbo, ...) or the custom model's name."""
        return self.entry.variant or self.entry.name

    def _loaded(self, part: str, module):
        """Report a freshly loaded part to the host (ComfyUI's memory manager) and return it."""
        if self.host is not None:
            self.host.loaded(self, part, module)
        return module

    def dit(self, parts: tuple[str, ...] = PARTS) -> AceStepConditionGenerationModel:
        """The DiT model with at least `parts` loaded; parts it lacks are added, the loaded ones are kept (never re-read)."""
        loaded = self._dit
        if loaded is not None and all(getattr(loaded, part) is not None for part in parts):
            return loaded
        held = loaded.frozen_weights() if loaded is not None else {}
        wanted = tuple(part for part in PARTS if part in parts or (loaded is not None and getattr(loaded, part) is not None))
        self._dit = None
        self._dit = self._loaded("dit", self.source.dit(self.entry, wanted, self.dtype, self.device, held))
        return self._dit

    def vae(self):
        """The Oobleck VAE (kept in fp32: it is small and bf16 audio decoding loses detail)."""
        if self._vae is None:
            self._vae = self._loaded("vae", self.source.vae(self.device))
        return self._vae

    def text_encoder(self):
        """The Qwen3-Embedding text encoder."""
        if self._text_encoder is None:
            encoder = self.source.text_encoder(self.device)
            self._loaded("text_encoder", encoder.model)
            self._text_encoder = encoder
        return self._text_encoder

    def silence_latent(self) -> torch.Tensor:
        """The silence latent in memory layout [1, T, 64]."""
        if self._silence is None:
            self._silence = self.source.silence_latent()
        return self._silence

    def weights_identity(self) -> list:
        """JSON-able facts that change whenever any of the weights do (for dataset fingerprints)."""
        return self.source.identity(self.entry)

    def weights_dtype(self) -> torch.dtype | None:
        """The dtype the frozen DiT weights are (or will be) held in; None: as the files store them."""
        return self.dtype if self.dtype is not None else self.source.stored_dtype(self.entry)

    def bytes_to_load(self) -> int:
        """Memory all parts take once loaded (0 when they are shared with a host that holds them already)."""
        return self.source.bytes_to_load(self.entry)

    def loaded_parts(self) -> list[str]:
        """Names of the parts held in memory now ('dit', 'vae', 'text_encoder')."""
        held = {"dit": self._dit, "vae": self._vae, "text_encoder": self._text_encoder}
        return [name for name, part in held.items() if part is not None]

    def with_own_dit(self, parts: tuple[str, ...] = PARTS) -> "AceStepBundle":
        """A copy sharing the loaded VAE, text encoder and silence latent whose DiT (with `parts`) is its own module tree
        over this bundle's DiT weights: adapter layers trained into it leave this DiT clean, and nothing is read twice.

        Call it outside inference mode when the copy will be trained: weights a host (ComfyUI) created in inference mode
        are handed to it as normal tensors over the same memory then, which autograd can use."""
        with torch.inference_mode():
            shared = self.dit(parts)
        own = AceStepConditionGenerationModel.on_meta_device(shared.config, parts)
        # The shared DiT is in this bundle's storage already (fp8 layers with their scales): taken as it is.
        names = own.state_dict().keys()
        tensors = {name: tensor for name, tensor in shared.frozen_weights().items() if name in names or name.endswith(SCALE_SUFFIX)}
        own.assign_weights({name: _usable(tensor, None, self.device) for name, tensor in tensors.items()})
        return dataclasses.replace(self, _dit=own)

    def release(self, *, dit: bool = False, vae: bool = False, text_encoder: bool = False) -> None:
        """Drop loaded parts so their memory can be reused."""
        for part, chosen in (("dit", dit), ("vae", vae), ("text_encoder", text_encoder)):
            if chosen and getattr(self, f"_{part}") is not None:
                setattr(self, f"_{part}", None)
                if self.host is not None:
                    self.host.released(self, part)


def open_model(
    entry: ModelEntry,
    shared: SharedParts,
    base: str | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> AceStepBundle:
    """A bundle for a discovered model and its paired parts, with its base (turbo/base/sft) settled."""
    return AceStepBundle(
        entry=entry, base=resolve_base(entry, base), source=FilesSource(shared), dtype=dtype, device=torch.device(device)
    )


def survey_models(root: str | Path) -> tuple[list[ModelEntry], list[SkippedFile]]:
    """Every ACE-Step 1.5 model under `root` (an official checkpoint root, or a ComfyUI `models/` folder: its
    diffusion_models and checkpoints files, plus official trees in its `acestep` folder), and each file or folder that
    looks like ACE-Step 1.5 but was skipped, with the reason."""
    from .comfy_models import ComfyFolders, looks_like_models_dir, survey_comfy_models

    root = Path(root).expanduser()
    if not looks_like_models_dir(root):
        return survey_folders(root)
    entries, skipped = survey_comfy_models(ComfyFolders.from_models_dir(root))
    if (root / "acestep").is_dir():
        official, unusable = survey_folders(root / "acestep")
        entries, skipped = entries + official, skipped + unusable
    return entries, skipped


def no_models_found(root: str | Path, skipped: list[SkippedFile]) -> CheckpointError:
    """The error for a root without any usable ACE-Step 1.5 model: what was searched, and why files were skipped."""
    from .comfy_models import ComfyFolders, looks_like_models_dir, no_comfy_models_message

    root = Path(root).expanduser()
    if not looks_like_models_dir(root):
        return CheckpointError(no_models_message(root, skipped))
    return CheckpointError(no_comfy_models_message(ComfyFolders.from_models_dir(root)) + skipped_note(skipped))


def list_models(root: str | Path) -> list[ModelEntry]:
    """Every ACE-Step 1.5 model under `root` (see `survey_models`); CheckpointError when there is none."""
    entries, skipped = survey_models(root)
    if not entries:
        raise no_models_found(root, skipped)
    return entries


def open_checkpoint(
    root: str | Path,
    model: str,
    base: str | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    tokenizer_dir: str | Path | None = None,
) -> AceStepBundle:
    """Find `model` under `root` (an official checkpoint root or a ComfyUI models folder), pair its parts, settle its
    base. `tokenizer_dir` is ComfyUI's Qwen tokenizer folder for ComfyUI text-encoder files (found when omitted)."""
    from .model_folders import refusal, select_model
    from .comfy_models import ComfyFolders, comfy_shared_parts

    root = Path(root).expanduser()
    entries, skipped = survey_models(root)
    if not entries:
        raise refusal(skipped, model, True) or no_models_found(root, skipped)
    entry = select_model(entries, model, root, skipped=skipped)
    if entry.in_official_tree:
        shared = find_shared_parts(entry.path.parent, entry)
    else:
        shared = comfy_shared_parts(entry, ComfyFolders.from_models_dir(root), tokenizer_dir)
    return open_model(entry, shared, base, dtype, device)


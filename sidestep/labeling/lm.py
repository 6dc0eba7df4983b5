"""Find, check and load ACE-Step's 5 Hz LM from either place users keep it.

* The official tree: `acestep-5Hz-lm-{0.6B,1.7B,4B}/` beside the model folders — a Qwen3 causal LM folder
  (config.json, safetensors, a tokenizer whose vocabulary holds `<|audio_code_0|>` … `<|audio_code_63999|>`).
* ComfyUI: `models/text_encoders/qwen_{1.7b,4b}_ace15.safetensors` — the same weights with a `model.` key prefix,
  no config (dimensions come from tensor shapes) and no tokenizer: the Qwen tokenizer files ComfyUI ships are used and
  the 64000 audio-code tokens are appended after its vocabulary, where the LM's embedding rows for them sit.

Anything without room for the audio-code tokens (e.g. the 0.6B text encoder) is refused by name. Only safetensors
are read and no code from a model folder ever runs (`trust_remote_code` stays off).
"""

from __future__ import annotations

import gc
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from ..errors import CheckpointError
from ..load_progress import load_progress

AUDIO_CODES = 64000
FIRST_CODE = "<|audio_code_0|>"
LAST_CODE = f"<|audio_code_{AUDIO_CODES - 1}|>"
REASONING_TOKENS = ("<think>", "</think>")
OFFICIAL_PREFIX = "acestep-5Hz-lm-"
_COMFY_LM_FILE = re.compile(r"qwen_(?!0\.6b).*_ace15.*\.safetensors", re.I)
_EMBED = "model.embed_tokens.weight"
_HINT = (
    "Use ACE-Step's 5 Hz LM: an official acestep-5Hz-lm-0.6B/1.7B/4B folder, or ComfyUI's "
    "text_encoders/qwen_1.7b_ace15.safetensors or qwen_4b_ace15.safetensors."
)


@dataclass(frozen=True)
class LmEntry:
    """One 5 Hz LM on disk: an official folder or a ComfyUI single file."""

    name: str
    path: Path
    kind: str  # "official" or "comfyui"

    @property
    def label(self) -> str:
        """Human label, e.g. 'acestep-5Hz-lm-1.7B  [official]'."""
        return f"{self.name}  [{self.kind}]"


@dataclass
class LoadedLm:
    """A loaded 5 Hz LM with its tokenizer; `first_code_id` is the token id of `<|audio_code_0|>`; `own_template`:
    the prompt uses the chat template the LM folder ships (official folders do), else the built-in Qwen layout (always
    for ComfyUI's LM files, whose Qwen tokenizer is not the LM's own)."""

    name: str
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    first_code_id: int
    own_template: bool = False

    @property
    def template_name(self) -> str:
        """Which chat template builds the prompt, as `.labels.json` records it."""
        return "the LM's own" if self.own_template else "built-in Qwen layout"

    @property
    def device(self) -> torch.device:
        """Where the LM's weights are."""
        return next(self.model.parameters()).device


def find_lms(checkpoint_roots: list[Path], text_encoder_dirs: list[Path]) -> list[LmEntry]:
    """Official `acestep-5Hz-lm-*` folders under the checkpoint roots, then ComfyUI `qwen_*_ace15` LM files."""
    found = [
        LmEntry(folder.name, folder, "official")
        for root in checkpoint_roots
        if Path(root).is_dir()
        for folder in sorted(Path(root).iterdir())
        if folder.is_dir() and folder.name.lower().startswith(OFFICIAL_PREFIX.lower()) and (folder / "config.json").is_file()
    ]
    found += [
        LmEntry(file.name, file, "comfyui")
        for folder in text_encoder_dirs
        if Path(folder).is_dir()
        for file in sorted(Path(folder).iterdir())
        if file.is_file() and _COMFY_LM_FILE.fullmatch(file.name)
    ]
    return found


def pick_lm(choice: str, entries: list[LmEntry]) -> Path:
    """The LM `choice` names: an existing path, else an entry by name (the first one when `choice` is empty)."""
    if choice and Path(choice).expanduser().exists():
        return Path(choice).expanduser()
    hits = [entry for entry in entries if not choice or entry.name == choice or entry.label == choice]
    if hits:
        return hits[0].path
    known = ", ".join(entry.name for entry in entries) or "none found"
    raise CheckpointError(f"No 5 Hz LM {choice!r} (LMs found: {known}). {_HINT}")


def with_audio_codes(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tokenizer with the reasoning tags and the 64000 audio-code tokens appended when it lacks them."""
    missing = [tag for tag in REASONING_TOKENS if tag not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing)
    if FIRST_CODE not in tokenizer.get_vocab():
        tokenizer.add_tokens([f"<|audio_code_{index}|>" for index in range(AUDIO_CODES)])
    return tokenizer


def _load_tokenizer(folder: Path, what: str) -> PreTrainedTokenizerBase:
    """A tokenizer from local files only, or a CheckpointError naming `what`."""
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"Cannot read the tokenizer of {what} from {folder}: {exc}. {_HINT}") from exc


def _check_codes(tokenizer: PreTrainedTokenizerBase, vocab_size: int, source: Path) -> int:
    """The id of `<|audio_code_0|>`; CheckpointError when the tokenizer or the LM has no audio-code tokens."""
    vocab = tokenizer.get_vocab()
    if FIRST_CODE not in vocab or LAST_CODE not in vocab:
        raise CheckpointError(f"{source} is not an ACE-Step 5 Hz LM: its tokenizer has no audio-code tokens. {_HINT}")
    first, last = vocab[FIRST_CODE], vocab[LAST_CODE]
    if last != first + AUDIO_CODES - 1 or last >= vocab_size:
        raise CheckpointError(
            f"{source} is not an ACE-Step 5 Hz LM: its vocabulary ({vocab_size} entries) has no room for the "
            f"{AUDIO_CODES} audio-code tokens after the {first} text tokens. {_HINT}"
        )
    return first


def _read_json(path: Path) -> dict:
    """A JSON object from `path`, or a CheckpointError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"Cannot read {path}: {exc}. {_HINT}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object. {_HINT}")
    return data


def _inspect_folder(folder: Path) -> tuple[PreTrainedTokenizerBase, int]:
    """An official LM folder's tokenizer and first audio-code id, checked without reading the weights."""
    config = _read_json(folder / "config.json")
    if config.get("model_type") != "qwen3":
        raise CheckpointError(
            f"{folder} is not an ACE-Step 5 Hz LM: its config.json says model_type {config.get('model_type')!r}, "
            f"not 'qwen3'. {_HINT}"
        )
    tokenizer = _load_tokenizer(folder, folder.name)
    return tokenizer, _check_codes(tokenizer, int(config.get("vocab_size", 0)), folder)


def _load_folder(folder: Path, dtype: torch.dtype, device: torch.device) -> LoadedLm:
    """An official `acestep-5Hz-lm-*` folder through transformers, local files only."""
    tokenizer, first = _inspect_folder(folder)
    try:
        with load_progress(folder):
            model = AutoModelForCausalLM.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=False, dtype=dtype, use_safetensors=True
            )
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"Cannot load the 5 Hz LM weights in {folder}: {exc}. Re-download the folder.") from exc
    own = bool(getattr(tokenizer, "chat_template", None))
    return LoadedLm(folder.name, model.to(device).eval().requires_grad_(False), tokenizer, first, own)


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, or a CheckpointError."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"Cannot read {path} as safetensors: {exc}. {_HINT}") from exc


def comfy_lm_config(shapes: dict[str, tuple[int, ...]], source: Path) -> Qwen3Config:
    """The Qwen3 config a ComfyUI LM file's tensor shapes describe (ACE-Step's rope base and norm epsilon)."""
    if _EMBED not in shapes or "model.layers.0.self_attn.q_norm.weight" not in shapes:
        raise CheckpointError(f"{source} is not a Qwen3 language model (no {_EMBED} / q_norm tensors). {_HINT}")
    vocab, hidden = shapes[_EMBED]
    head_dim = shapes["model.layers.0.self_attn.q_norm.weight"][0]
    layers = 1 + max(int(m.group(1)) for name in shapes if (m := re.match(r"model\.layers\.(\d+)\.", name)))
    return Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=shapes["model.layers.0.mlp.gate_proj.weight"][0],
        num_hidden_layers=layers,
        num_attention_heads=shapes["model.layers.0.self_attn.q_proj.weight"][0] // head_dim,
        num_key_value_heads=shapes["model.layers.0.self_attn.k_proj.weight"][0] // head_dim,
        head_dim=head_dim,
        max_position_embeddings=40960,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings="lm_head.weight" not in shapes,
    )


def _inspect_file(path: Path, tokenizer_dir: Path | None) -> tuple[dict[str, tuple[int, ...]], Qwen3Config, PreTrainedTokenizerBase, int]:
    """A ComfyUI LM file's shapes, config, tokenizer and first audio-code id, checked without reading the weights."""
    if tokenizer_dir is None:
        raise CheckpointError(
            f"{path.name} carries no tokenizer; pass the Qwen tokenizer folder ComfyUI ships "
            "(comfy/text_encoders/qwen25_tokenizer) with --tokenizer."
        )
    shapes = _shapes(path)
    config = comfy_lm_config(shapes, path)
    tokenizer = with_audio_codes(_load_tokenizer(Path(tokenizer_dir), path.name))
    return shapes, config, tokenizer, _check_codes(tokenizer, config.vocab_size, path)


def _load_file(path: Path, tokenizer_dir: Path | None, dtype: torch.dtype, device: torch.device) -> LoadedLm:
    """A ComfyUI `qwen_*_ace15.safetensors` LM with the Qwen tokenizer from `tokenizer_dir` plus the audio codes."""
    shapes, config, tokenizer, first = _inspect_file(path, tokenizer_dir)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    wrong = [name for name, shape in expected.items() if shapes.get(name) != shape]
    if wrong:
        raise CheckpointError(f"{path} does not hold a complete Qwen3 LM (missing or misshaped: {', '.join(wrong[:3])}). {_HINT}")
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        tensors = {name: handle.get_tensor(name).to(device=device, dtype=dtype) for name in expected}
    model.load_state_dict(tensors, strict=False, assign=True)
    model.model.rotary_emb = Qwen3RotaryEmbedding(config=config).to(device)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return LoadedLm(path.name, model.eval().requires_grad_(False), tokenizer, first)


def load_lm(
    path: str | Path,
    tokenizer_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> LoadedLm:
    """Load an official LM folder or a ComfyUI LM file; CheckpointError when it is missing or not a 5 Hz LM."""
    path = Path(path).expanduser()
    device = torch.device(device)
    if _lm_kind(path) == "folder":
        return _load_folder(path, dtype, device)
    return _load_file(path, Path(tokenizer_dir) if tokenizer_dir else None, dtype, device)


def check_lm(path: str | Path, tokenizer_dir: str | Path | None = None) -> None:
    """What `load_lm` checks (a 5 Hz LM: config, tokenizer with audio codes, tensor shapes), without the weights."""
    path = Path(path).expanduser()
    if _lm_kind(path) == "folder":
        _inspect_folder(path)
    else:
        _inspect_file(path, Path(tokenizer_dir) if tokenizer_dir else None)


def _lm_kind(path: Path) -> str:
    """'folder' or 'file' for what may be a 5 Hz LM; CheckpointError for anything else."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} has no config.json, so it is not a 5 Hz LM folder. {_HINT}")
        return "folder"
    if path.is_file() and path.suffix == ".safetensors":
        return "file"
    what = "does not exist" if not path.exists() else "is neither a model folder nor a .safetensors file"
    raise CheckpointError(f"5 Hz LM {path} {what}. {_HINT}")


def free_memory() -> None:
    """Return freed tensors' memory to the system (and the CUDA cache) once a model has been dropped."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

"""ComfyUI's own ACE-Step 1.5 files (VAE, text encoder, silence latent, all-in-one checkpoints) in our layouts.

ComfyUI users keep ACE-Step 1.5 as Comfy-Org's repackaged files: `models/vae/ace_1.5_vae.safetensors` (the Oobleck
VAE in the stable-audio-tools key layout), `models/text_encoders/qwen_0.6b_ace15.safetensors` (Qwen3-Embedding-0.6B
under `model.`), or one all-in-one file in `models/checkpoints/` with ComfyUI's checkpoint prefixes. ComfyUI has no
silence_latent.pt: it builds the silence latent from numbers in its source, stored here in `data/`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

from .atomic import write_text_atomic
from .comfy_layout import AIO_DIT_PREFIX, AIO_TEXT_ENCODER_PREFIX, AIO_VAE_PREFIX, COMFY_TOKENIZER_DIR, TEXT_ENCODER_PREFIX  # noqa: F401
from .model_files import readable_path, shown
from .errors import CheckpointError
from .variants import SAMPLE_RATE

if TYPE_CHECKING:  # diffusers and transformers are imported where a VAE or text encoder is built (a start in a second)
    from diffusers import AutoencoderOobleck
    from transformers import PreTrainedTokenizerBase, Qwen3Config, Qwen3Model

    from .text import TextEncoder

COMFY_FILES = "https://huggingface.co/Comfy-Org/ace_step_1.5_ComfyUI_files (split_files/)"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
END_OF_TEXT = "<|endoftext|>"

_SILENCE_DATA = Path(__file__).parent / "data" / "comfy_silence_latent.safetensors"
COMFY_SILENCE_FRAMES = 15_000  # 10 minutes at 25 Hz, ACE-Step 1.5's longest song


def read_prefixed(path: str | Path, prefix: str) -> dict[str, Tensor]:
    """The tensors of a safetensors file whose names start with `prefix`, prefix stripped; other tensors stay unread."""
    path = Path(path)
    try:
        with readable_path(path) as readable, safe_open(readable, framework="pt") as handle:
            names = [name for name in handle.keys() if name.startswith(prefix)]  # noqa: SIM118 (not a dict)
            tensors = {name[len(prefix) :]: handle.get_tensor(name) for name in names}
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(
            f"Cannot read {shown(path)}: {exc}. Expected a .safetensors model file; re-download it from {COMFY_FILES}."
        ) from exc
    if not tensors:
        raise CheckpointError(
            f"{path} holds no tensors named {prefix}*; it is not the ACE-Step 1.5 file expected here. "
            f"ComfyUI's ACE-Step 1.5 files are at {COMFY_FILES}."
        )
    return tensors


def comfy_silence_latent(frames: int = COMFY_SILENCE_FRAMES) -> Tensor:
    """ComfyUI's silence latent of `frames` (>= 4) frames, [1, frames, 64] float32: head frames, then one repeated."""
    data = load_file(_SILENCE_DATA)
    head, frame = data["head"], data["frame"]
    if frames < head.shape[0]:
        raise ValueError(f"ComfyUI's silence latent has at least {head.shape[0]} frames, not {frames}.")
    silence = frame.expand(frames, -1).clone()
    silence[: head.shape[0]] = head
    return silence.unsqueeze(0)


# stable-audio-tools Oobleck (ComfyUI's AudioOobleckVAE) -> diffusers AutoencoderOobleck, inside one block.
_RESIDUAL_UNIT = {"0": "snake1", "1": "conv1", "2": "snake2", "3": "conv2"}
_BLOCK = {
    "encoder": {"0": "res_unit1", "1": "res_unit2", "2": "res_unit3", "3": "snake1", "4": "conv1"},
    "decoder": {"0": "snake1", "1": "conv_t1", "2": "res_unit1", "3": "res_unit2", "4": "res_unit3"},
}
_WEIGHT_NORM = {
    "parametrizations.weight.original0": "weight_g",
    "parametrizations.weight.original1": "weight_v",
    "weight_g": "weight_g",
    "weight_v": "weight_v",
}
_COMFY_VAE_KEY = re.compile(
    r"(?P<side>encoder|decoder)\.layers\.(?P<index>\d+)\.(?:layers\.(?P<part>\d+)\.)?(?:layers\.(?P<unit>\d+)\.)?"
    r"(?P<param>parametrizations\.weight\.original[01]|weight_[gv]|bias|alpha|beta)"
)
_OUR_VAE_KEY = re.compile(
    r"(?P<side>encoder|decoder)\."
    r"(?:(?P<top>conv1|snake1|conv2)|block\.(?P<block>\d+)\.(?P<part>\w+?)(?:\.(?P<unit>\w+))?)"
    r"\.(?P<param>weight_[gv]|bias|alpha|beta)"
)
_VAE_FIX = f"Use ComfyUI's models/vae/ace_1.5_vae.safetensors from {COMFY_FILES}."


def _vae_error(source: str, problem: str) -> CheckpointError:
    """A CheckpointError saying `source` is not ACE-Step 1.5's VAE in ComfyUI's layout, and where to get it."""
    return CheckpointError(
        f"{source} is not ACE-Step 1.5's VAE in ComfyUI's layout (Oobleck, stable-audio-tools keys): {problem}. "
        f"{_VAE_FIX}"
    )


def _block_count(tensors: dict[str, Tensor], side: str) -> int:
    """Number of encoder/decoder blocks: top-level layers are conv, blocks..., snake, conv (then a weightless tanh)."""
    matches = (_COMFY_VAE_KEY.fullmatch(name) for name in tensors)
    indices = {int(match["index"]) for match in matches if match and match["side"] == side}
    return max(indices, default=2) - 2


def _our_vae_name(match: re.Match, blocks: int) -> str | None:
    """The diffusers name of a matched ComfyUI VAE key, or None (strict loading then refuses names that fit no slot)."""
    side, index, part, unit = match["side"], int(match["index"]), match["part"], match["unit"]
    if 1 <= index <= blocks:
        path = [f"block.{index - 1}", _BLOCK[side].get(part or "")]
        if unit is not None:
            path.append(_RESIDUAL_UNIT.get(unit))
    else:
        path = [{0: "conv1", blocks + 1: "snake1", blocks + 2: "conv2"}.get(index) if part is None else None]
    if None in path:
        return None
    return ".".join([side, *path, _WEIGHT_NORM.get(match["param"], match["param"])])


def _vae_config(tensors: dict[str, Tensor], source: str) -> dict:
    """AutoencoderOobleck arguments read from the shapes of diffusers-named Oobleck tensors."""
    try:
        first = tensors["encoder.conv1.weight_v"]
        hidden = first.shape[0]
        blocks = sorted({int(name.split(".")[2]) for name in tensors if name.startswith("encoder.block.")})
        outs = [tensors[f"encoder.block.{i}.conv1.weight_v"] for i in blocks]
        return {
            "encoder_hidden_size": hidden,
            "downsampling_ratios": [out.shape[-1] // 2 for out in outs],
            "channel_multiples": [out.shape[0] // hidden for out in outs],
            "decoder_channels": tensors["decoder.conv2.weight_v"].shape[1],
            "decoder_input_channels": tensors["decoder.conv1.weight_v"].shape[1],
            "audio_channels": first.shape[1],
            "sampling_rate": SAMPLE_RATE,
        }
    except (KeyError, IndexError) as exc:
        raise _vae_error(source, f"the tensor {exc} is missing") from exc


def vae_from_state_dict(
    tensors: dict[str, Tensor], source: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> AutoencoderOobleck:
    """Our diffusers VAE from ComfyUI-layout Oobleck tensors (shared, not copied, when dtype and device already fit)."""
    from diffusers import AutoencoderOobleck

    from .vae import check_vae_geometry

    converted = {}
    blocks = {side: _block_count(tensors, side) for side in _BLOCK}
    for name, tensor in tensors.items():
        match = _COMFY_VAE_KEY.fullmatch(name)
        ours = _our_vae_name(match, blocks[match["side"]]) if match else None
        if ours is None:
            raise _vae_error(source, f"unexpected tensor {name!r}")
        if match["param"] in ("alpha", "beta"):
            tensor = tensor.reshape(1, -1, 1)
        converted[ours] = tensor.to(device=device, dtype=dtype)
    config = _vae_config(converted, source)
    with torch.device("meta"):
        vae = AutoencoderOobleck(**config)
    try:
        vae.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as exc:
        raise _vae_error(source, str(exc).replace("\n", " ")) from exc
    check_vae_geometry(vae, source, _VAE_FIX)
    return vae.eval()


def load_vae_file(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", prefix: str = ""
) -> AutoencoderOobleck:
    """Load ComfyUI's ace_1.5_vae.safetensors (or the `vae.` part of an all-in-one file with prefix="vae.")."""
    return vae_from_state_dict(read_prefixed(path, prefix), str(path), dtype, device)


def comfy_vae_state_dict(vae: AutoencoderOobleck) -> dict[str, Tensor]:
    """Our VAE's weights in ComfyUI's layout (as its AudioOobleckVAE names them), as views of the same tensors."""
    blocks = len(vae.encoder.block)
    block_index = {side: {ours: comfy for comfy, ours in table.items()} for side, table in _BLOCK.items()}
    unit_index = {ours: comfy for comfy, ours in _RESIDUAL_UNIT.items()}
    top_index = {"conv1": 0, "snake1": blocks + 1, "conv2": blocks + 2}
    params = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}
    out = {}
    for name, tensor in vae.state_dict().items():
        match = _OUR_VAE_KEY.fullmatch(name)
        side = match["side"]
        if match["top"]:
            path = f"{side}.layers.{top_index[match['top']]}"
        else:
            path = f"{side}.layers.{int(match['block']) + 1}.layers.{block_index[side][match['part']]}"
            if match["unit"]:
                path += f".layers.{unit_index[match['unit']]}"
        param = match["param"]
        out[f"{path}.{params.get(param, param)}"] = tensor.reshape(-1) if param in ("alpha", "beta") else tensor
    return out


# Qwen3-Embedding-0.6B's config.json values that tensor shapes cannot tell.
QWEN3_EMBEDDING_CONSTANTS = {
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768,
    "hidden_act": "silu",
    "attention_bias": False,
    "tie_word_embeddings": True,
}
_TEXT_ENCODER_FIX = f"Use ComfyUI's models/text_encoders/qwen_0.6b_ace15.safetensors from {COMFY_FILES}."


def _text_encoder_error(source: str, problem: str) -> CheckpointError:
    """A CheckpointError saying `source` is not ACE-Step 1.5's Qwen3-Embedding text encoder, and where to get it."""
    return CheckpointError(
        f"{source} is not ACE-Step 1.5's Qwen3-Embedding-0.6B text encoder: {problem}. {_TEXT_ENCODER_FIX}"
    )


def _qwen3_config(tensors: dict[str, Tensor], source: str, pad_token_id: int) -> Qwen3Config:
    """A Qwen3 config read from the shapes of Qwen3Model tensors, with Qwen3-Embedding's other constants."""
    from transformers import Qwen3Config

    try:
        vocab, hidden = tensors["embed_tokens.weight"].shape
        head_dim = tensors["layers.0.self_attn.q_norm.weight"].shape[0]
        layers = len({name.split(".")[1] for name in tensors if name.startswith("layers.")})
        return Qwen3Config(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=tensors["layers.0.mlp.gate_proj.weight"].shape[0],
            num_hidden_layers=layers,
            num_attention_heads=tensors["layers.0.self_attn.q_proj.weight"].shape[0] // head_dim,
            num_key_value_heads=tensors["layers.0.self_attn.k_proj.weight"].shape[0] // head_dim,
            head_dim=head_dim,
            pad_token_id=pad_token_id,
            bos_token_id=pad_token_id,
            eos_token_id=pad_token_id,
            **QWEN3_EMBEDDING_CONSTANTS,
        )
    except (KeyError, ValueError) as exc:
        raise _text_encoder_error(source, f"the tensor {exc} is missing or misshapen") from exc


def load_comfy_tokenizer(folder: str | Path) -> PreTrainedTokenizerBase:
    """Qwen3-Embedding's tokenizer from ComfyUI's three files: byte-level BPE, `<|endoftext|>` appended and padding."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    folder = Path(folder)
    missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(
            f"No Qwen tokenizer at {folder}: {', '.join(missing)} missing. Point at the {COMFY_TOKENIZER_DIR} "
            "folder inside your ComfyUI installation."
        )
    try:
        with readable_path(folder) as readable:
            tokenizer = AutoTokenizer.from_pretrained(readable, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"Cannot read the tokenizer in {folder}: {exc}. Use your ComfyUI installation's {COMFY_TOKENIZER_DIR}."
        ) from exc
    end = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    if end is None or tokenizer.convert_ids_to_tokens(end) != END_OF_TEXT:
        raise CheckpointError(
            f"The tokenizer in {folder} has no {END_OF_TEXT} token; use your ComfyUI's {COMFY_TOKENIZER_DIR}."
        )
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {END_OF_TEXT}", pair=f"$A {END_OF_TEXT} $B:1 {END_OF_TEXT}:1", special_tokens=[(END_OF_TEXT, end)]
    )
    tokenizer.pad_token = END_OF_TEXT
    return tokenizer


def write_comfy_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> Path:
    """Write a byte-level BPE tokenizer as ComfyUI ships Qwen's: vocab.json, merges.txt and tokenizer_config.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [" ".join(pair) if isinstance(pair, list) else pair for pair in model["merges"]]
    added = {
        str(index): {
            "content": token.content,
            "special": token.special,
            "normalized": token.normalized,
            "lstrip": token.lstrip,
            "rstrip": token.rstrip,
            "single_word": token.single_word,
        }
        for index, token in sorted(tokenizer.added_tokens_decoder.items())
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "unk_token": None,
        "bos_token": None,
        "add_prefix_space": False,
        "model_max_length": 131072,
    }
    write_text_atomic(folder / "vocab.json", json.dumps(model["vocab"], ensure_ascii=False))
    write_text_atomic(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    write_text_atomic(folder / "tokenizer_config.json", json.dumps(config, ensure_ascii=False, indent=2))
    return folder


def text_encoder_from_state_dict(
    tensors: dict[str, Tensor],
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> TextEncoder:
    """Our TextEncoder from Qwen3Model tensors (ComfyUI's names without `model.`), shared when dtype and device fit."""
    from transformers import Qwen3Model
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    from .text import TextEncoder

    config = _qwen3_config(tensors, source, tokenizer.pad_token_id)
    if config.vocab_size != len(tokenizer):  # the 5 Hz LM files (qwen_1.7b/4b_ace15) have audio-code tokens too
        raise _text_encoder_error(
            source, f"it embeds {config.vocab_size} tokens where the tokenizer has {len(tokenizer)}"
        )
    converted = {name: tensor.to(device=device, dtype=dtype) for name, tensor in tensors.items()}
    with torch.device("meta"):
        model = Qwen3Model(config)
    try:
        model.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as exc:
        raise _text_encoder_error(source, str(exc).replace("\n", " ")) from exc
    with torch.device(device):
        model.rotary_emb = Qwen3RotaryEmbedding(config)  # its buffers are not in the file; meta ones cannot run
    return TextEncoder(model, tokenizer)


def load_text_encoder_file(
    path: str | Path,
    tokenizer_dir: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    prefix: str = TEXT_ENCODER_PREFIX,
) -> TextEncoder:
    """Load qwen_0.6b_ace15.safetensors (or an all-in-one file: prefix=AIO_TEXT_ENCODER_PREFIX) + a tokenizer folder."""
    tokenizer = load_comfy_tokenizer(tokenizer_dir)
    return text_encoder_from_state_dict(read_prefixed(path, prefix), tokenizer, str(path), dtype, device)


def comfy_text_encoder_state_dict(model: Qwen3Model) -> dict[str, Tensor]:
    """A Qwen3Model's weights named as in ComfyUI's qwen_0.6b_ace15.safetensors (`model.` prefix), not copied."""
    return {f"{TEXT_ENCODER_PREFIX}{name}": tensor for name, tensor in model.state_dict().items()}

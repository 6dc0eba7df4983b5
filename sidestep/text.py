"""Caption and lyric prompts in ACE-Step 1.5's exact wording, and the Qwen3-Embedding encoder that embeds them.

Two forms exist upstream and differ in details that change the embeddings:

* "training" (dataset preprocessing): metas print the duration as given (0 when unknown), lyrics are the raw
  text (empty -> "[Instrumental]"), both are padded to a fixed length (256 caption / 512 lyric tokens).
* "inference" (generation): the duration is printed as whole seconds (unknown -> 30), lyrics get a
  "# Languages" header, and a batch is padded on the right to its longest prompt (at most 256 / 2048 tokens).

Captions are embedded with the transformer's `last_hidden_state`, lyrics with the token-embedding table only;
no attention mask reaches the encoder (the official code passes none), padding is on the right.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from safetensors import SafetensorError
from torch import Tensor

from .errors import CheckpointError
from .load_progress import load_progress

if TYPE_CHECKING:  # transformers is imported when an encoder is loaded
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PromptForm = Literal["training", "inference"]

DEFAULT_INSTRUCTION = "Fill the audio semantic mask based on the given conditions:"
CAPTION_TEMPLATE = "# Instruction\n{instruction}\n\n# Caption\n{caption}\n\n# Metas\n{metas}<|endoftext|>\n"
LYRICS_TEMPLATE = "# Languages\n{language}\n\n# Lyric\n{lyrics}<|endoftext|>"
INSTRUMENTAL_LYRICS = "[Instrumental]"
UNKNOWN_LANGUAGE = "unknown"
UNKNOWN = "N/A"
INFERENCE_DEFAULT_SECONDS = 30


@dataclass(frozen=True)
class TokenLimits:
    """How one prompt form is tokenized: maximum lengths and whether to pad to them."""

    caption_max_tokens: int
    lyrics_max_tokens: int
    pad_to_max_length: bool


TOKEN_LIMITS: dict[str, TokenLimits] = {
    "training": TokenLimits(caption_max_tokens=256, lyrics_max_tokens=512, pad_to_max_length=True),
    "inference": TokenLimits(caption_max_tokens=256, lyrics_max_tokens=2048, pad_to_max_length=False),
}


@dataclass(frozen=True)
class SongMetas:
    """The musical facts written into a caption prompt's "# Metas" block; None or blank means unknown."""

    bpm: int | float | str | None = None
    timesignature: str | int | None = None
    keyscale: str | None = None
    duration: int | float | None = None


def _checked(form: str) -> TokenLimits:
    """The token limits of `form`, refusing unknown forms."""
    if form not in TOKEN_LIMITS:
        raise ValueError(f"Unknown prompt form {form!r}; use 'training' or 'inference'.")
    return TOKEN_LIMITS[form]


def _metas_block(bpm: object, timesignature: object, keyscale: object, duration: object) -> str:
    """The four "- key: value" lines of the metas block."""
    return f"- bpm: {bpm}\n- timesignature: {timesignature}\n- keyscale: {keyscale}\n- duration: {duration} seconds\n"


def training_metas(metas: SongMetas) -> str:
    """Metas as dataset preprocessing writes them: unknown -> N/A, duration printed as given (unknown -> 0)."""
    duration = 0 if metas.duration is None else metas.duration
    return _metas_block(metas.bpm or UNKNOWN, metas.timesignature or UNKNOWN, metas.keyscale or UNKNOWN, duration)


def _blank(value: object) -> bool:
    """Whether a metas value counts as unknown at inference (None, empty, whitespace or "N/A")."""
    return value is None or str(value).strip() in ("", UNKNOWN)


def inference_metas(metas: SongMetas) -> str:
    """Metas as generation writes them: unknown -> N/A, duration as whole seconds (unknown -> 30)."""
    known_duration = metas.duration is not None and metas.duration > 0
    return _metas_block(
        UNKNOWN if not metas.bpm or _blank(metas.bpm) else metas.bpm,
        UNKNOWN if _blank(metas.timesignature) else metas.timesignature,
        UNKNOWN if _blank(metas.keyscale) else metas.keyscale,
        int(metas.duration) if known_duration else INFERENCE_DEFAULT_SECONDS,
    )


def format_instruction(instruction: str) -> str:
    """An instruction line as generation writes it: stripped, ending with a colon."""
    instruction = instruction.strip()
    return instruction if instruction.endswith(":") else f"{instruction}:"


def caption_prompt(
    caption: str, metas: SongMetas, form: PromptForm = "training", instruction: str = DEFAULT_INSTRUCTION
) -> str:
    """The full text-encoder prompt for a caption (trigger tags already applied)."""
    _checked(form)
    metas_text = training_metas(metas) if form == "training" else inference_metas(metas)
    return CAPTION_TEMPLATE.format(instruction=format_instruction(instruction), caption=caption, metas=metas_text)


def lyrics_prompt(lyrics: str, language: str = UNKNOWN_LANGUAGE, form: PromptForm = "training") -> str:
    """The lyric prompt: raw lyrics ("[Instrumental]" if empty) for training, the "# Languages" form for inference."""
    _checked(form)
    if form == "training":
        return lyrics or INSTRUMENTAL_LYRICS
    return LYRICS_TEMPLATE.format(language=language or UNKNOWN_LANGUAGE, lyrics=lyrics)


class TextEncoder:
    """Qwen3-Embedding as ACE-Step 1.5 uses it: hidden states for captions, token embeddings for lyrics."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer

    @classmethod
    def load(
        cls, folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> "TextEncoder":
        """Load a Qwen3-Embedding folder (model + tokenizer) from local files only, never running code from it."""
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise CheckpointError(
                f"No text encoder at {folder}: expected a Qwen3-Embedding folder with config.json, model weights "
                "and tokenizer files. Point at the 'Qwen3-Embedding-0.6B' folder inside your ACE-Step checkpoints."
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            with load_progress(folder):
                model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=dtype)
        except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
            raise CheckpointError(
                f"Cannot load the text encoder from {folder}: {exc}. Re-download the Qwen3-Embedding-0.6B folder."
            ) from exc
        if tokenizer.pad_token_id is None:
            raise CheckpointError(
                f"The tokenizer in {folder} has no pad token; use the official Qwen3-Embedding-0.6B tokenizer files."
            )
        return cls(model.to(device), tokenizer)

    @property
    def hidden_size(self) -> int:
        """Width of the embeddings this encoder returns (1024 for Qwen3-Embedding-0.6B)."""
        return self.model.get_input_embeddings().embedding_dim

    def _tokenize(self, prompts: list[str], max_length: int, pad_to_max_length: bool) -> tuple[Tensor, Tensor]:
        """Right-padded token ids and a float mask [B, L]."""
        batch = self.tokenizer(
            prompts,
            padding="max_length" if pad_to_max_length else "longest",
            padding_side="right",
            max_length=max_length,
            truncation=True,
            return_tensors="pt",
        )
        return batch["input_ids"].to(self.model.device), batch["attention_mask"].float()

    def encode_captions(self, prompts: list[str], form: PromptForm = "training") -> tuple[Tensor, Tensor]:
        """Caption prompts -> (last_hidden_state [B, L, D] float32 CPU, mask [B, L] float32)."""
        limits = _checked(form)
        ids, mask = self._tokenize(prompts, limits.caption_max_tokens, limits.pad_to_max_length)
        with torch.inference_mode():
            hidden = self.model(input_ids=ids).last_hidden_state.float().cpu()
        return hidden.clone(), mask

    def encode_lyrics(self, prompts: list[str], form: PromptForm = "training") -> tuple[Tensor, Tensor]:
        """Lyric prompts -> (token embeddings [B, L, D] float32 CPU, mask [B, L] float32)."""
        limits = _checked(form)
        ids, mask = self._tokenize(prompts, limits.lyrics_max_tokens, limits.pad_to_max_length)
        with torch.inference_mode():
            embedded = self.model.get_input_embeddings()(ids).float().cpu()
        return embedded.clone(), mask

"""Label Songs settings (a light module: the CLI and the node build their options from it without loading models)."""

from __future__ import annotations

from dataclasses import dataclass, field

OVERWRITE_MODES = ("never", "empty", "all")
FIELD_GROUPS = {
    "caption": ("caption", "genre"),
    "metadata": ("bpm", "keyscale", "timesignature", "language"),
    "lyrics": ("lyrics",),
}


@dataclass(frozen=True)
class Sampling:
    """How tokens are drawn: temperature (0 = greedy), top-p, seed, length limits, constrained or free decoding.

    The limits are the official ones: a caption of at most 512 tokens, a whole answer of at
    most 4096 - 64 new tokens (the PyTorch path's budget), of which the lyrics get what the metadata leaves."""

    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    max_caption_tokens: int = 512
    max_answer_tokens: int = 4096 - 64
    constrained: bool = True


@dataclass(frozen=True)
class LabelConfig:
    """What to label and how: the song folder, the LM, which field groups, the overwrite rule and sampling."""

    audio_dir: str
    lm_path: str
    tokenizer_dir: str | None = None
    fields: tuple[str, ...] = tuple(FIELD_GROUPS)
    overwrite: str = "empty"
    trigger_word: str = ""
    sampling: Sampling = field(default_factory=Sampling)

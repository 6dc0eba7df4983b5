"""Label Songs settings (a light module: the CLI and the node build their options from it without loading models)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..settings import setting

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

    # The Label Songs node shows these settings (after LabelConfig's) in this order: append new ones at the end.
    temperature: float = setting(
        0.7, help="Sampling temperature; 0 is greedy (always the most likely token).", min=0.0, max=2.0, step=0.05
    )
    top_p: float = setting(
        1.0, help="Nucleus sampling: draw only from the most likely tokens covering this probability; 1 = off.",
        min=0.05, max=1.0, step=0.05,
    )
    seed: int = setting(
        0, help="Seed for sampling (kept fixed: the same seed gives the same labels, and re-runs skip).",
        min=0, max=2**31 - 1, widget={"control_after_generate": False},
    )
    max_caption_tokens: int = 512
    max_answer_tokens: int = 4096 - 64
    constrained: bool = setting(
        True, flags=("--free-decoding",),
        help="Constrain BPM, key, time signature and language to ACE-Step's values while generating (off: validate after).",
    )


@dataclass(frozen=True)
class LabelConfig:
    """What to label and how: the song folder, the LM, which field groups, the overwrite rule and sampling."""

    audio_dir: str
    lm_path: str
    tokenizer_dir: str | None = None
    # The Label Songs node shows these settings in this order (one switch per field group): append new ones at the end.
    fields: tuple[str, ...] = setting(
        tuple(FIELD_GROUPS), choices=tuple(FIELD_GROUPS),
        help="What to write: caption (genre, mood, instruments; with a genres line), metadata (BPM, key, time signature, language), lyrics",
    )
    overwrite: str = setting(
        "empty", choices=OVERWRITE_MODES,
        help="never: leave songs that have any label alone. empty: fill only missing fields. all: rewrite the chosen fields.",
    )
    trigger_word: str = setting("", flags=("--trigger",), help="Optional trigger word written into every song's sidecar.")
    sampling: Sampling = field(default_factory=Sampling)

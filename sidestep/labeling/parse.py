"""What the 5 Hz LM answers and how to read it: the official value sets, the `<think>` block parser and validation.

The LM's understanding answer is a `<think>` block of `key: value` lines (bpm, caption, duration, genres, keyscale,
language, timesignature; a value may continue on indented lines, as `yaml.dump` wraps a long caption) followed by the
lyrics. `parse_lm_output` and `extract_lyrics` give exactly what the official `parse_lm_output` /
`_extract_lyrics_from_output` give; `understanding_fields` adds what the official understanding call adds (the lyrics)
and one name of ours; `validate` keeps only values from the official sets (ACE-Step's `acestep/constants.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

BPM_MIN, BPM_MAX = 30, 300
DURATION_MIN, DURATION_MAX = 10, 600
TIME_SIGNATURES = ("2", "3", "4", "6")
LANGUAGES = (
    "ar", "az", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fr", "he", "hi", "hr", "ht", "hu",
    "id", "is", "it", "ja", "ko", "la", "lt", "ms", "ne", "nl", "no", "pa", "pl", "pt", "ro", "ru", "sa", "sk", "sr",
    "sv", "sw", "ta", "te", "th", "tl", "tr", "uk", "ur", "vi", "yue", "zh", "unknown",
)
KEYSCALES = tuple(
    f"{note}{accidental} {mode}" for note in "ABCDEFG" for accidental in ("", "#", "b", "♯", "♭") for mode in ("major", "minor")
)
INSTRUMENTAL = "[Instrumental]"

_AUDIO_CODE = re.compile(r"<\|audio_code_\d+\|>")
_REASONING = (re.compile(r"<think>(.*?)</think>", re.S), re.compile(r"<reasoning>(.*?)</reasoning>", re.S))
_LYRIC_HEADER = re.compile(r"^#\s*Lyri[c|cs]?\s*\n", re.I)
_INTEGER_FIELDS = ("bpm", "duration")
_TEXT_FIELDS = ("genres", "keyscale", "language", "timesignature")


def _store(metadata: dict[str, Any], key: str, lines: list[str]) -> None:
    """Put one accumulated `key: value` field into `metadata` the way the official parser types it."""
    value = "\n".join(lines)
    if key in _INTEGER_FIELDS:
        try:
            metadata[key] = int(value.strip())
        except ValueError:
            metadata[key] = value.strip()
    elif key == "caption":
        metadata[key] = " ".join(line.strip() for line in value.split("\n") if line.strip())
    elif key in _TEXT_FIELDS:
        metadata[key] = value.strip()


def parse_lm_output(text: str) -> tuple[dict[str, Any], str]:
    """(metadata fields, audio-code string) of an LM answer: the `<think>` block's `key: value` lines
    (else everything before the first audio code), continuation lines indented; unknown keys are dropped."""
    codes = "".join(_AUDIO_CODE.findall(text))
    reasoning = next((m.group(1).strip() for m in (p.search(text) for p in _REASONING) if m), "")
    if not reasoning:
        reasoning = text.split("<|audio_code_")[0].strip()
    metadata: dict[str, Any] = {}
    key, lines = None, []
    for line in reasoning.split("\n") if reasoning else []:
        if line.strip().startswith("<"):
            continue
        if line and not line[0].isspace() and ":" in line:
            if key and lines:
                _store(metadata, key, lines)
            name, _, rest = line.partition(":")
            key, lines = name.strip().lower(), [rest] if rest.strip() else []
        elif line.startswith((" ", "\t")) and key:
            lines.append(line)
    if key and lines:
        _store(metadata, key, lines)
    return metadata, codes


def extract_lyrics(text: str) -> str:
    """The lyrics after `</think>`, without a leading "# Lyric(s)" header or a trailing `<|im_end|>`; "" if none."""
    _, found, after = text.partition("</think>")
    after = after.strip() if found else ""
    after = _LYRIC_HEADER.sub("", after)
    return re.sub(r"<\|im_end\|>\s*$", "", after).strip()


def understanding_fields(text: str) -> dict[str, Any]:
    """The official parser's fields, plus `lyrics` (after `</think>`) when there are some, as the official
    understanding call returns them, plus our own `vocal_language`: the language under the name ACE-Step's
    generation inputs give it."""
    metadata, _ = parse_lm_output(text)
    lyrics = extract_lyrics(text)
    if lyrics:
        metadata["lyrics"] = lyrics
    if "language" in metadata:
        metadata["vocal_language"] = metadata["language"]
    return metadata


@dataclass
class Labels:
    """The fields one LM answer gives, each checked against the official value sets; `problems` lists what was dropped."""

    caption: str = ""
    genre: str = ""
    bpm: int | None = None
    keyscale: str = ""
    timesignature: str = ""
    language: str = ""
    duration: int | None = None
    lyrics: str = ""
    problems: list[str] = field(default_factory=list)

    def fields(self) -> dict[str, str]:
        """The non-empty fields as sidecar text values (lyrics included)."""
        values = {
            "caption": self.caption,
            "genre": self.genre,
            "bpm": "" if self.bpm is None else str(self.bpm),
            "keyscale": self.keyscale,
            "timesignature": self.timesignature,
            "language": self.language,
            "lyrics": self.lyrics,
        }
        return {name: value for name, value in values.items() if value}


def _canonical_key(value: str) -> str:
    """A key name in the official spelling ('c# MINOR' → 'C# minor'), or "" when it is not one of them."""
    parts = value.split()
    if len(parts) != 2 or not parts[0]:
        return ""
    candidate = f"{parts[0][0].upper()}{parts[0][1:]} {parts[1].lower()}"
    return candidate if candidate in KEYSCALES else ""


def validate(metadata: dict[str, Any]) -> Labels:
    """Labels from understood fields: bpm an integer in [30, 300], key / time signature / language from the official
    sets, caption and genres as one line each."""
    labels = Labels(caption=str(metadata.get("caption", "")).strip(), genre=" ".join(str(metadata.get("genres", "")).split()))
    bpm = metadata.get("bpm")
    if isinstance(bpm, int) and BPM_MIN <= bpm <= BPM_MAX:
        labels.bpm = bpm
    elif bpm is not None:
        labels.problems.append(f"bpm {bpm!r} is not a whole number from {BPM_MIN} to {BPM_MAX}")
    key = str(metadata.get("keyscale", "")).strip()
    labels.keyscale = _canonical_key(key)
    if key and not labels.keyscale:
        labels.problems.append(f"key {key!r} is not a major or minor key such as 'F# minor'")
    signature = str(metadata.get("timesignature", "")).strip()
    labels.timesignature = signature if signature in TIME_SIGNATURES else ""
    if signature and not labels.timesignature:
        labels.problems.append(f"time signature {signature!r} is not one of {', '.join(TIME_SIGNATURES)}")
    language = str(metadata.get("language", "")).strip().lower()
    labels.language = language if language in LANGUAGES else ""
    if language and not labels.language:
        labels.problems.append(f"language {language!r} is not one of ACE-Step's language codes")
    duration = metadata.get("duration")
    labels.duration = duration if isinstance(duration, int) and duration > 0 else None
    labels.lyrics = str(metadata.get("lyrics", "")).strip()
    return labels

"""Per-song metadata from the sidecar files Side-Step users already have.

Sources, highest precedence first; a field missing from a higher source is filled from a lower one:

1. ``song.txt`` beside ``song.wav``: ``key: value`` lines (keys case-insensitive, spaces, ``_`` and
   ``-`` ignored), then an optional ``lyrics:`` block that runs to the end of the file. A ``song.txt``
   without any known key is read as plain lyrics (the upstream ACE-Step convention).
2. ``song.caption.txt`` and ``song.lyrics.txt`` (either may be alone).
3. The song's entry in a dataset JSON (``{"metadata": {...}, "samples": [...]}``), then that
   JSON's ``metadata`` block as dataset-wide defaults.
4. Caption from the file name, lyrics ``[Instrumental]``.

A trigger word (``custom_tag``) joins the caption with ", ": ``prepend`` gives "tag, caption",
``append`` gives "caption, tag", ``replace`` gives "tag"; a caption that already lists the tag
among its comma-separated items keeps it once.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import DatasetError

INSTRUMENTAL = "[Instrumental]"
TAG_POSITIONS = ("prepend", "append", "replace")
# Far more than the text encoder reads (256 caption / 2048 lyric tokens), small enough for every file header.
MAX_CAPTION_CHARS = 4096
MAX_LYRICS_CHARS = 32768
TagPosition = Literal["prepend", "append", "replace"]

_FIELDS = {
    "caption": "caption",
    "genre": "genre",
    "genres": "genre",
    "bpm": "bpm",
    "tempo": "bpm",
    "key": "keyscale",
    "keyscale": "keyscale",
    "scale": "keyscale",
    "timesignature": "timesignature",
    "signature": "timesignature",
    "sig": "timesignature",
    "language": "language",
    "trigger": "custom_tag",
    "customtag": "custom_tag",
    "isinstrumental": "is_instrumental",
    "duration": "duration",
    "lyrics": "lyrics",
}
_TRUE = ("true", "yes", "y", "1", "on")
_FALSE = ("false", "no", "n", "0", "off")


@dataclass
class SongMetadata:
    """Everything the encoder needs to know about one song besides its audio."""

    caption: str
    lyrics: str
    bpm: int | None = None
    keyscale: str = ""
    timesignature: str = ""
    language: str = ""
    custom_tag: str = ""
    genre: str = ""
    is_instrumental: bool = False
    duration: float | None = None
    source: str = ""
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetJson:
    """A dataset JSON file: dataset-wide defaults and per-sample fields, indexed for matching audio files."""

    path: Path
    defaults: dict[str, Any]
    samples: list[dict[str, Any]]
    by_path: dict[Path, int]
    by_name: dict[str, list[int]]

    def match(self, audio_path: Path) -> tuple[int | None, str | None]:
        """The sample index for `audio_path` (by path, else by a file name no other sample shares), and a warning."""
        index = self.by_path.get(Path(audio_path).resolve())
        if index is not None:
            return index, None
        named = self.by_name.get(Path(audio_path).name, [])
        if len(named) > 1:
            listed = ", ".join(f"samples[{i}]" for i in named)
            return None, f"{self.path.name}: {listed} all name '{Path(audio_path).name}'; none used (give their audio_path)"
        return (named[0], None) if named else (None, None)


def _is_file(path: Path) -> bool:
    """Whether `path` is a regular file; False also when its name is too long for this file system."""
    try:
        return path.is_file()
    except OSError:
        return False


def _capped(name: str, text: str, limit: int, warnings: list[str]) -> str:
    """`text` cut to `limit` characters, with a warning when it was longer."""
    if len(text) <= limit:
        return text
    warnings.append(f"{name} is {len(text)} characters long; only the first {limit} are kept (the text encoder reads less)")
    return text[:limit]


def _field_name(key: str) -> str | None:
    """The metadata field a sidecar key stands for (None when unknown)."""
    return _FIELDS.get(re.sub(r"[\s_\-]", "", key.lower()))


def _clean_lyrics(text: str) -> str:
    """Lyrics with leading blank lines and trailing whitespace (of each line and the whole) removed."""
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines).rstrip()


def _parse_value(name: str, raw: object) -> tuple[object | None, str | None]:
    """Convert a raw sidecar value for field `name` into (value, problem); a None value means "not given"."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None, None
    text = raw.strip() if isinstance(raw, str) else raw
    if name in ("bpm", "duration"):
        number = _as_number(text)
        if number is None:
            return None, "is not a number"
        if not 0 < number < math.inf:
            return None, "is not a positive number"
        return (round(number), None) if name == "bpm" else (number, None)
    if name == "is_instrumental":
        word = str(text).lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE, None
        return None, "is not true or false"
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        return None, "is not text"
    if name == "lyrics":
        return _clean_lyrics(str(text)) or None, None
    return str(text), None


def _as_number(value: object) -> float | None:
    """`value` as a float (numbers and numeric strings; booleans are not numbers), else None."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _read_text(path: Path, warnings: list[str]) -> str | None:
    """A sidecar's text as UTF-8 (BOM or not), UTF-16 with a BOM, or Windows-1252; None (with a warning) if unreadable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        warnings.append(f"{path.name}: cannot be read ({exc.strerror or exc}); ignored")
        return None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encodings = ("utf-16",)
    else:
        encodings = ("utf-8-sig", "cp1252")
    for encoding in encodings:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if encoding == "cp1252":
            warnings.append(f"{path.name}: not UTF-8, read as Windows-1252; save it as UTF-8 if characters look wrong")
        return text
    warnings.append(f"{path.name}: not UTF-8, UTF-16 or Windows-1252 text; ignored")
    return None


def _song_txt_fields(path: Path, warnings: list[str]) -> dict[str, object]:
    """Fields of a ``key: value`` song.txt, or its whole text as lyrics when it names no known key."""
    text = _read_text(path, warnings)
    if text is None:
        return {}
    lines = text.splitlines()
    fields: dict[str, object] = {}
    problems: list[str] = []
    known_key = False
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped:
            continue
        key, colon, value = stripped.partition(":")
        name = _field_name(key) if colon else None
        where = f"{path.name}:{number}"
        if name == "lyrics":
            known_key = True
            fields["lyrics"] = _clean_lyrics("\n".join([value.lstrip(), *lines[number:]]))
            break
        if not colon:
            problems.append(f"{where}: '{stripped}' is not a 'key: value' line; ignored")
            continue
        if name is None:
            problems.append(f"{where}: unknown key '{key.strip()}'; ignored")
            continue
        known_key = True
        parsed, problem = _parse_value(name, value)
        if problem:
            problems.append(f"{where}: '{stripped}' {problem}; ignored")
        elif parsed is not None:
            if name in fields:
                problems.append(f"{where}: {name} given again; this later value is used")
            fields[name] = parsed
    if not known_key:
        lyrics = _clean_lyrics(text)
        return {"lyrics": lyrics} if lyrics else {}
    warnings.extend(problems)
    return fields


def _caption_lyrics_layers(audio_path: Path, warnings: list[str]) -> list[tuple[str, dict[str, object]]]:
    """The fields of ``song.caption.txt`` and of ``song.lyrics.txt``, each labelled with its file name."""
    stem = audio_path.with_suffix("")
    layers: list[tuple[str, dict[str, object]]] = []
    for name, suffix in (("caption", ".caption.txt"), ("lyrics", ".lyrics.txt")):
        path = stem.with_name(stem.name + suffix)
        text = _read_text(path, warnings) if _is_file(path) else None
        value = (_clean_lyrics(text) if name == "lyrics" else text.strip()) if text else ""
        layers.append((path.name, {name: value} if value else {}))
    return layers


def _json_fields(raw: dict[str, Any], where: str, warnings: list[str]) -> dict[str, object]:
    """Known fields of a dataset JSON object; unknown keys are ignored, bad values warned about."""
    fields: dict[str, object] = {}
    for key, value in raw.items():
        name = _field_name(key)
        if name is None or name in fields:
            continue
        parsed, problem = _parse_value(name, value)
        if problem:
            warnings.append(f"{where}: {key} {value!r} {problem}; ignored")
        elif parsed is not None:
            fields[name] = parsed
    return fields


def apply_tag(caption: str, tag: str, position: TagPosition = "prepend") -> str:
    """Join a trigger word to a caption with ", " before ("prepend") or after ("append") it, or use it alone ("replace")."""
    tag = tag.strip()
    if not tag:
        return caption
    if position == "replace" or not caption:
        return tag
    if tag.casefold() in (item.strip().casefold() for item in caption.split(",")):
        return caption
    return f"{caption}, {tag}" if position == "append" else f"{tag}, {caption}"


def _check_tag_position(position: str, where: str) -> TagPosition:
    """`position` if it is a known tag placement, else a DatasetError naming `where`."""
    if position not in TAG_POSITIONS:
        raise DatasetError(f"{where}: tag_position '{position}' is not one of {', '.join(TAG_POSITIONS)}; pick one of them.")
    return position  # type: ignore[return-value]


def caption_from_filename(audio_path: Path) -> str:
    """A caption made from the file name: extension dropped, underscores and dashes read as spaces."""
    return " ".join(re.sub(r"[_\-]", " ", Path(audio_path).stem).split())


def read_song_metadata(
    audio_path: str | Path,
    dataset_json: DatasetJson | None = None,
    tag_position: TagPosition | None = None,
    custom_tag: str | None = None,
) -> SongMetadata:
    """Gather one song's metadata from its sidecars, the dataset JSON and the file name (see module docstring).

    `tag_position` and `custom_tag` given here override the dataset JSON's dataset-wide defaults;
    a per-song custom tag (song.txt or the song's JSON sample) still wins over `custom_tag`.
    """
    audio_path = Path(audio_path)
    warnings: list[str] = []
    layers: list[tuple[str, dict[str, object]]] = []
    song_txt = audio_path.with_suffix(".txt")
    if _is_file(song_txt):
        layers.append((song_txt.name, _song_txt_fields(song_txt, warnings)))
    layers.extend(_caption_lyrics_layers(audio_path, warnings))
    position = tag_position
    if dataset_json is not None:
        index, problem = dataset_json.match(audio_path)
        warnings.extend([problem] if problem else [])
        if index is not None:
            where = f"{dataset_json.path.name}: samples[{index}]"
            layers.append((dataset_json.path.name, _json_fields(dataset_json.samples[index], where, warnings)))
    layers.append(("", {"custom_tag": custom_tag} if custom_tag else {}))
    if dataset_json is not None:
        where = f"{dataset_json.path.name}: metadata"
        layers.append((dataset_json.path.name, _json_fields(dataset_json.defaults, where, warnings)))
        position = position or dataset_json.defaults.get("tag_position")
    position = _check_tag_position(position or "prepend", "settings")

    merged: dict[str, object] = {}
    sources: list[str] = []
    for label, fields in layers:
        added = {name: value for name, value in fields.items() if name not in merged}
        merged.update(added)
        if added and label and label not in sources:
            sources.append(label)
    if "caption" not in merged:
        merged["caption"] = caption_from_filename(audio_path)
        sources.append("file name")

    merged["caption"] = _capped("caption", str(merged["caption"]), MAX_CAPTION_CHARS, warnings)
    lyrics = _capped("lyrics", str(merged.get("lyrics", "")), MAX_LYRICS_CHARS, warnings)
    instrumental = merged.get("is_instrumental")
    if instrumental is None:
        instrumental = not lyrics or lyrics.casefold() == INSTRUMENTAL.casefold()
    tag = str(merged.get("custom_tag", ""))
    return SongMetadata(
        caption=apply_tag(str(merged["caption"]), tag, position),
        lyrics=INSTRUMENTAL if instrumental or not lyrics else lyrics,
        bpm=merged.get("bpm"),  # type: ignore[arg-type]
        keyscale=str(merged.get("keyscale", "")),
        timesignature=str(merged.get("timesignature", "")),
        language=str(merged.get("language", "")),
        custom_tag=tag,
        genre=str(merged.get("genre", "")),
        is_instrumental=bool(instrumental),
        duration=merged.get("duration"),  # type: ignore[arg-type]
        source=" + ".join(sources),
        warnings=warnings,
    )


def _sample_name(reference: str) -> str:
    """The file name at the end of a sample's path, whichever separator it was written with."""
    return re.split(r"[\\/]", reference)[-1]


def _parse_dataset_json(path: Path, root: Path) -> DatasetJson | None:
    """Read `path` as a dataset JSON; None when it is some other JSON, DatasetError when it is a broken one."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        if path.name != "dataset.json":
            return None
        raise DatasetError(f"{path}: cannot be read as UTF-8 text ({exc}); save it as UTF-8 JSON.") from exc
    if path.name != "dataset.json" and '"samples"' not in text:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}); fix the file or remove it."
        ) from exc
    except RecursionError as exc:
        raise DatasetError(f"{path}: nested too deeply to be a dataset JSON; fix the file or remove it.") from exc
    if not isinstance(data, dict) or "samples" not in data:
        if path.name != "dataset.json":
            return None
        raise DatasetError(f"{path}: has no top-level \"samples\" list; a dataset JSON looks like "
                           '{"metadata": {...}, "samples": [{"audio_path": ..., "caption": ...}]}.')
    samples, defaults = data["samples"], data.get("metadata") or {}
    if not isinstance(samples, list):
        raise DatasetError(f"{path}: \"samples\" must be a list of objects; fix the file.")
    if not isinstance(defaults, dict):
        raise DatasetError(f"{path}: \"metadata\" must be an object; fix the file.")
    if "tag_position" in defaults:
        _check_tag_position(str(defaults["tag_position"]), f"{path}: metadata")
    by_path: dict[Path, int] = {}
    by_name: dict[str, list[int]] = {}
    for index, sample in enumerate(samples):
        reference = (sample.get("audio_path") or sample.get("filename")) if isinstance(sample, dict) else None
        if not isinstance(reference, str):
            raise DatasetError(
                f"{path}: samples[{index}] is not an object with an \"audio_path\" or \"filename\" string; fix that entry."
            )
        try:
            for base in (path.parent, root):
                by_path.setdefault((base / reference).resolve(), index)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: samples[{index}] names the path {reference[:200]!r}, which is not usable ({exc}); fix that entry.") from exc
        by_name.setdefault(_sample_name(str(sample.get("filename") or reference)), []).append(index)
    return DatasetJson(path, defaults, samples, by_path, by_name)


def load_dataset_json(folder: str | Path) -> DatasetJson | None:
    """The dataset JSON of an audio folder: its top-level ``dataset.json``, else the one ``*.json``
    anywhere under it whose top level has "samples"; None when there is none."""
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"Dataset folder {root} does not exist or is not a folder; point to the folder with your songs.")
    top = root / "dataset.json"
    candidates = [top] if top.is_file() else sorted(p for p in root.rglob("*.json") if p.is_file())
    found = [parsed for parsed in (_parse_dataset_json(p, root) for p in candidates) if parsed is not None]
    if len(found) > 1:
        names = ", ".join(str(d.path.relative_to(root)) for d in found)
        raise DatasetError(
            f"{root}: several dataset JSON files ({names}); keep one, or name the one to use dataset.json at the top."
        )
    return found[0] if found else None

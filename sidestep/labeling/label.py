"""Label a folder of songs with the 5 Hz LM and write Side-Step sidecars, keeping every label the user wrote.

For each song: audio → codes (VAE + the DiT's audio tokenizer) → understanding prompt (the LM's own chat template
when its folder ships one) → constrained answer → validated fields (caption, genres, bpm, key, time signature,
language, lyrics), written into `song.txt` (`key: value` lines, then a `lyrics:` block) by editing only the lines of
the fields being filled, atomically, keeping the file's permissions. A silent song is reported and left alone, as
ACE-Step refuses it.
`.labels.json` in the song folder records what the model wrote, with which LM, chat template and settings, per song
content hash: a re-run skips those songs, and a hand edit is never overwritten unless asked.

`overwrite`: "never" leaves every song that already has any label alone, "empty" fills only the fields no sidecar,
caption/lyrics file or dataset JSON gives yet (a value the user wrote counts even when it cannot be read, and is
reported), "all" rewrites the chosen fields (other files stay on disk).
Phases keep memory low: codes for every song first (then the VAE and DiT are released), then the LM (then freed).
"""

from __future__ import annotations

import json
import resource
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..atomic import write_text_atomic
from ..audio import find_audio_files, load_audio
from ..bundle import AceStepBundle
from ..dataset.encode import file_hash
from ..dataset.sidecars import (
    DatasetJson,
    _caption_lyrics_layers,
    _field_name,
    _json_fields,
    _read_text,
    _song_txt_fields,
    load_dataset_json,
)
from ..errors import AudioError, DatasetError
from ..vae import encode_waveform
from .decode import generate_answer
from .lm import LoadedLm, check_lm, free_memory, load_lm
from .parse import INSTRUMENTAL, Labels, understanding_fields, validate
from .prompt import audio_code_indices, code_string, understanding_prompt
from .settings import FIELD_GROUPS, OVERWRITE_MODES, LabelConfig

LABELS_FILE = ".labels.json"
_SIDECAR_KEYS = {"custom_tag": "trigger", "genre": "genres"}


@dataclass
class SongLabel:
    """One row of the result table: what happened to a song and which fields were written or kept."""

    file: str
    status: str  # labelled, complete, kept, done, failed (unreadable or silent audio, unreadable answer)
    written: dict[str, str] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)
    message: str = ""


@dataclass(frozen=True)
class LabelEvent:
    """Progress: song `index` of `total` reached `status` (coding, generating, or a final SongLabel status)."""

    index: int
    total: int
    file: str
    status: str
    message: str = ""


@dataclass
class LabelResult:
    """Every song's outcome, the LM used, wall time and peak memory (process RAM, CUDA memory) in MiB."""

    songs: list[SongLabel]
    lm_name: str
    seconds: float
    peak_ram_mib: float
    peak_vram_mib: float

    def table(self) -> str:
        """A plain-text table: song, status, the fields written (caption shortened), notes."""
        rows = [("song", "status", "written", "notes")]
        for song in self.songs:
            written = ", ".join(
                f"{name}={value[:40] + '…' if len(value) > 40 else value}".replace("\n", " / ")
                for name, value in song.written.items()
            )
            notes = "; ".join(filter(None, [f"kept {', '.join(song.kept)}" if song.kept else "", song.message]))
            rows.append((song.file, song.status, written or "-", notes))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip() for a, b, c, d in rows)


def _check(config: LabelConfig) -> tuple[str, ...]:
    """The sidecar fields `config` asks for; DatasetError on an unknown group or overwrite mode."""
    unknown = [name for name in config.fields if name not in FIELD_GROUPS]
    if unknown or not config.fields:
        raise DatasetError(f"Label fields {list(config.fields)}: choose one or more of {', '.join(FIELD_GROUPS)}.")
    if config.overwrite not in OVERWRITE_MODES:
        raise DatasetError(f"overwrite {config.overwrite!r} is not one of {', '.join(OVERWRITE_MODES)}; pick one of them.")
    return tuple(name for group in config.fields for name in FIELD_GROUPS[group])


def _written_in_song_txt(text: str) -> set[str]:
    """The known fields a song.txt gives a value for, in any form (`bpm: fast` included); a text naming no known
    key is plain lyrics."""
    names: set[str] = set()
    lines = text.splitlines()
    for number, line in enumerate(lines):
        key, colon, value = line.partition(":")
        name = _field_name(key) if colon else None
        if name == "lyrics":
            return names | ({"lyrics"} if "\n".join([value, *lines[number + 1 :]]).strip() else set())
        if name is not None and value.strip():
            names.add(name)
    known = any(_field_name(line.partition(":")[0]) for line in lines if ":" in line)
    return names if known or not text.strip() else {"lyrics"}


def given_fields(audio_path: Path, dataset_json: DatasetJson | None) -> tuple[set[str], set[str]]:
    """(the metadata fields the user gives for a song in any form, those of them that cannot be read): from
    song.txt, the caption/lyrics files and the dataset JSON."""
    warnings: list[str] = []
    written: set[str] = set()
    readable: set[str] = set()
    song_txt = audio_path.with_suffix(".txt")
    text = _read_text(song_txt, warnings) if song_txt.is_file() else None
    if text is not None:
        written |= _written_in_song_txt(text)
        readable |= set(_song_txt_fields(song_txt, warnings))
    for _, fields in _caption_lyrics_layers(audio_path, warnings):
        written |= set(fields)
        readable |= set(fields)
    if dataset_json is not None:
        index, _ = dataset_json.match(audio_path)
        if index is not None:
            sample = dataset_json.samples[index]
            written |= {_field_name(key) for key, value in sample.items() if value not in (None, "")} - {None}
            readable |= set(_json_fields(sample, "", warnings))
    return written, written - readable


def update_song_txt(path: Path, values: dict[str, str]) -> None:
    """Set `values` (sidecar field → text) in a song.txt, changing only those fields' lines; other lines stay."""
    text = _read_text(path, []) if path.is_file() else ""
    if text is None:
        raise DatasetError(f"{path} cannot be read as text; fix or remove it, then label the song again.")
    lines = text.splitlines()
    keys = [_field_name(line.partition(":")[0]) if ":" in line else None for line in lines]
    if lines and not any(keys):
        lines, keys = ["lyrics:", *lines], ["lyrics", *keys]  # a plain-lyrics song.txt: its text is the lyrics block
    cut = keys.index("lyrics") if "lyrics" in keys else len(lines)
    head, tail = lines[:cut], lines[cut:]
    for name, value in values.items():
        if name == "lyrics":
            tail = ["lyrics:", *value.splitlines()]
            continue
        at = [i for i, key in enumerate(keys[:cut]) if key == name]
        line = f"{_SIDECAR_KEYS.get(name, name)}: {value}"
        if at:
            head[at[-1]] = line
        else:
            head.append(line)
    mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else None
    write_text_atomic(path, "\n".join(head + tail) + "\n", mode=mode)


def _read_records(folder: Path) -> dict[str, dict]:
    """The per-song records of `.labels.json` ({} when absent); DatasetError when it is broken."""
    path = folder / LABELS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        songs = data["songs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path} cannot be read ({exc}); delete it to label every song again.") from exc
    if not isinstance(songs, dict):
        raise DatasetError(f"{path}: \"songs\" is not an object; delete the file to label every song again.")
    return songs


def _plan(wanted: tuple[str, ...], given: set[str], config: LabelConfig) -> tuple[list[str], list[str]]:
    """(fields to fill, user fields kept) for one song under the overwrite rule."""
    if config.trigger_word.strip():
        wanted = (*wanted, "custom_tag")
    if config.overwrite == "all":
        return list(wanted), []
    kept = [name for name in wanted if name in given]
    if config.overwrite == "never" and given:
        return [], kept
    return [name for name in wanted if name not in given], kept


def _codes(bundle: AceStepBundle, path: Path) -> str:
    """A song's audio-code string (a silent song is an AudioError, as ACE-Step refuses to understand silence)."""
    waveform = load_audio(path)
    latents = encode_waveform(bundle.vae(), waveform)
    model = bundle.dit(parts=("tokenizer",))
    return code_string(audio_code_indices(model, latents, bundle.silence_latent()))


def _labels(lm: LoadedLm, codes: str, config: LabelConfig, lyrics: bool) -> tuple[Labels, str]:
    """Validated labels from one generated answer, and the raw answer."""
    prompt = understanding_prompt(codes, lm.tokenizer if lm.own_template else None)
    answer = generate_answer(lm, prompt, config.sampling, lyrics=lyrics)
    return validate(understanding_fields(answer)), answer


def _unreadable_note(kept: list[str], unreadable: set[str]) -> str:
    """The report line for kept user fields that cannot be read ("" when there are none)."""
    names = [name for name in kept if name in unreadable]
    if not names:
        return ""
    return f"your {', '.join(names)} kept as written but unreadable (fix the sidecar, or label with overwrite=all)"


def _join(*notes: str) -> str:
    """Non-empty notes joined with "; "."""
    return "; ".join(note for note in notes if note)


def _peak_ram_mib() -> float:
    """The process's peak resident memory so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def label_songs(
    bundle: AceStepBundle,
    config: LabelConfig,
    callback: Callable[[LabelEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LabelResult:
    """Label every song in `config.audio_dir` that lacks the chosen fields (see the module docstring)."""
    started = time.monotonic()
    wanted = _check(config)
    folder = Path(config.audio_dir)
    dataset_json = load_dataset_json(folder)
    files = find_audio_files(folder)
    records = _read_records(folder)
    emit = callback or (lambda event: None)
    stop = should_stop or (lambda: False)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    songs: dict[str, SongLabel] = {}
    todo: dict[str, tuple[Path, str, list[str], list[str]]] = {}
    lm_name = Path(config.lm_path).name
    settings = {"fields": list(config.fields), **asdict(config.sampling)}
    for index, path in enumerate(files, 1):
        name = path.relative_to(folder).as_posix()
        given, unreadable = given_fields(path, dataset_json)
        fill, kept = _plan(wanted, given, config)
        note = _unreadable_note(kept, unreadable)
        digest = file_hash(path)
        record = records.get(name, {})
        if record.get("hash") == digest and record.get("lm") == lm_name and record.get("settings") == settings:
            songs[name] = SongLabel(name, "done", kept=kept, message=_join(f"labelled before by {lm_name}", note))
        elif not fill:
            status = "kept" if config.overwrite == "never" and given else "complete"
            songs[name] = SongLabel(name, status, kept=kept, message=note)
        else:
            todo[name] = (path, digest, fill, kept, note)
            continue
        emit(LabelEvent(index, len(files), name, songs[name].status, songs[name].message))

    if any(set(fill) - {"custom_tag"} for _, _, fill, _, _ in todo.values()):
        check_lm(config.lm_path, config.tokenizer_dir)  # a wrong LM is named before any song is read
    codes: dict[str, str] = {}
    for name, (path, _, fill, _, _) in todo.items():
        if stop():
            break
        if set(fill) - {"custom_tag"}:
            emit(LabelEvent(files.index(path) + 1, len(files), name, "coding"))
            try:
                codes[name] = _codes(bundle, path)
            except AudioError as exc:
                songs[name] = SongLabel(name, "failed", message=exc.reason)
                emit(LabelEvent(files.index(path) + 1, len(files), name, "failed", exc.reason))
    if codes:
        bundle.release(dit=True, vae=True)
        free_memory()
    lm = load_lm(config.lm_path, config.tokenizer_dir, dtype=dtype, device=device) if codes else None
    try:
        for name, (path, digest, fill, kept, note) in todo.items():
            if name in songs or stop():
                continue
            index = files.index(path) + 1
            values: dict[str, str] = {"custom_tag": config.trigger_word.strip()} if "custom_tag" in fill else {}
            problems: list[str] = []
            if lm is not None and name in codes:
                emit(LabelEvent(index, len(files), name, "generating"))
                labels, answer = _labels(lm, codes[name], config, lyrics="lyrics" in fill)
                produced = labels.fields()
                if "lyrics" in fill and "lyrics" not in produced:
                    produced["lyrics"] = INSTRUMENTAL
                if not produced.keys() - {"lyrics"}:
                    snippet = " ".join(answer.split())[:80]
                    songs[name] = SongLabel(name, "failed", message=f"the LM's answer could not be read ({snippet!r}); sidecar kept")
                    emit(LabelEvent(index, len(files), name, "failed", songs[name].message))
                    continue
                values.update({key: value for key, value in produced.items() if key in fill})
                problems = labels.problems
            update_song_txt(path.with_suffix(".txt"), values)
            records[name] = {"hash": digest, "lm": lm_name, "settings": settings, "fields": values}
            if lm is not None and name in codes:
                records[name]["chat_template"] = lm.template_name
            write_text_atomic(folder / LABELS_FILE, json.dumps({"songs": records}, indent=2, ensure_ascii=False) + "\n")
            songs[name] = SongLabel(name, "labelled", written=values, kept=kept, message=_join(*problems, note))
            emit(LabelEvent(index, len(files), name, "labelled", songs[name].message))
    finally:
        del lm
        free_memory()
    vram = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    ordered = [songs[name] for name in (p.relative_to(folder).as_posix() for p in files) if name in songs]
    return LabelResult(ordered, lm_name, time.monotonic() - started, _peak_ram_mib(), vram)

"""Encode Dataset: a folder of songs → one safetensors file per clip plus `manifest.json`, resumable and loss-free.

Each clip is conditioned the way ACE-Step 1.5's own dataset preprocessing does it: the caption in the training
prompt form (metas with the clip's real duration in whole seconds), the raw lyrics, the condition encoder with an
all-zero one-frame timbre reference, and a text-to-music context of silence frames with an all-ones chunk mask.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..audio import entry_problem, find_audio_entries, load_audio, normalize, printable
from ..bundle import AceStepBundle
from ..errors import AudioError, DatasetError
from ..memory import return_freed_memory
from ..model import silence_context
from ..text import SongMetas, caption_prompt, lyrics_prompt
from ..variants import SAMPLE_RATE, inference_dtype
from ..vae import LATENT_CHANNELS, encode_waveform
from .settings import EncodeConfig
from .sidecars import SongMetadata, load_dataset_json, read_song_metadata
from .tensors import MANIFEST_NAME, ClipRecord, Manifest, Rejection, read_manifest, save_clip, write_manifest

PROMPT_FORMAT = "ace15-training-v1"
_NAME_BYTES = 100


@dataclass
class EncodeEvent:
    """Per-clip progress: `status` is encoded, skipped or rejected; `seconds` is the audio encoded (or reused)."""

    index: int
    total: int
    file: str
    status: str
    seconds: float = 0.0
    reason: str = ""


@dataclass
class EncodeResult:
    """What a run produced: the manifest, counts, rejected files, sidecar warnings and whether it was stopped early."""

    output_dir: Path
    manifest: Manifest
    encoded: int = 0
    skipped: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stopped: bool = False


def file_hash(path: Path) -> str:
    """SHA-256 of a file's bytes (streamed)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _readable_hash(path: Path) -> str:
    """`file_hash` of a regular, readable audio file; AudioError (with the reason) for anything else."""
    problem = entry_problem(path)
    if problem is None:
        try:
            return file_hash(path)
        except OSError as error:
            problem = f"cannot be read ({error.strerror or error})"
    raise AudioError(f"{printable(path)}: {problem}.", reason=problem)


def encoder_fingerprint(bundle: AceStepBundle, config: EncodeConfig) -> str:
    """Identifies everything that shapes the tensors: model, VAE, text encoder files and encoding settings."""
    settings = [PROMPT_FORMAT, config.max_duration, config.normalize, config.custom_tag, config.tag_position]
    text = json.dumps([bundle.weights_identity(), settings])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def clip_name(source: str, chunk: int, chunks: int) -> str:
    """A unique, readable tensor file name for one clip: the song's stem, a hash of its relative path, the part."""
    stem = Path(source).stem.encode("utf-8")[:_NAME_BYTES].decode("utf-8", errors="ignore")
    tag = hashlib.sha256(source.encode("utf-8")).hexdigest()[:8]
    part = "" if chunks == 1 else f".part{chunk:03d}"
    return f"{stem}.{tag}{part}.safetensors"


def split_chunks(waveform: torch.Tensor, max_duration: float, min_seconds: float) -> list[torch.Tensor]:
    """Cut a [2, N] waveform into pieces of at most `max_duration` seconds (0 = keep whole); drop a too-short tail."""
    if not max_duration:
        return [waveform]
    size = int(max_duration * SAMPLE_RATE)
    pieces = [waveform[:, start : start + size] for start in range(0, waveform.shape[1], size)]
    if len(pieces) > 1 and pieces[-1].shape[1] < min_seconds * SAMPLE_RATE:
        pieces.pop()
    return pieces


def song_metadata(song: SongMetadata) -> dict[str, Any]:
    """The per-clip `metadata` block of the manifest (plain JSON values)."""
    return {
        "bpm": song.bpm,
        "keyscale": song.keyscale,
        "timesignature": song.timesignature,
        "language": song.language,
        "genre": song.genre,
        "custom_tag": song.custom_tag,
        "is_instrumental": song.is_instrumental,
        "sidecar": song.source,
    }


class DatasetEncoder:
    """Encodes clips with one model bundle: VAE latents, text and lyric embeddings, then the condition encoder."""

    def __init__(self, bundle: AceStepBundle) -> None:
        self.model = bundle.dit(parts=("encoder",))
        self.vae = bundle.vae()
        self.text = bundle.text_encoder()
        self.silence = bundle.silence_latent()

    def encode_clip(self, waveform: torch.Tensor, song: SongMetadata, config: EncodeConfig) -> dict[str, torch.Tensor]:
        """One clip's training tensors, unbatched: [T, 64], [T], [L, H], [L], [T, 128]."""
        latents = encode_waveform(self.vae, waveform, config.vae_chunk_seconds, config.vae_overlap_seconds)
        frames = latents.shape[0]
        seconds = int(waveform.shape[1] / SAMPLE_RATE)
        metas = SongMetas(bpm=song.bpm, timesignature=song.timesignature, keyscale=song.keyscale, duration=seconds)
        captions, caption_mask = self.text.encode_captions([caption_prompt(song.caption, metas, "training")], "training")
        lyrics, lyric_mask = self.text.encode_lyrics([lyrics_prompt(song.lyrics, form="training")], "training")
        weight = next(self.model.encoder.parameters())
        device, dtype = weight.device, inference_dtype(weight.dtype, weight.device)
        with torch.inference_mode():
            states, state_mask = self.model.encoder(
                captions.to(device, dtype),
                caption_mask.to(device),
                lyrics.to(device, dtype),
                lyric_mask.to(device),
                torch.zeros(1, 1, LATENT_CHANNELS, device=device, dtype=dtype),
                torch.zeros(1, dtype=torch.long, device=device),
            )
        return {
            "target_latents": latents.float(),
            "attention_mask": torch.ones(frames),
            "encoder_hidden_states": states[0].float().cpu(),
            "encoder_attention_mask": state_mask[0].float().cpu(),
            "context_latents": silence_context(self.silence, frames)[0].float(),
        }

    def encode_song(
        self, waveform: torch.Tensor, song: SongMetadata, source: str, digest: str, config: EncodeConfig
    ) -> list[ClipRecord]:
        """Encode every clip of one song into `config.output_dir` and describe them for the manifest."""
        pieces = split_chunks(waveform, config.max_duration, config.min_seconds)
        records = []
        offset = 0
        for chunk, piece in enumerate(pieces):
            tensors = self.encode_clip(piece, song, config)
            name = clip_name(source, chunk, len(pieces))
            save_clip(Path(config.output_dir) / name, tensors, metadata={"source": source, "caption": song.caption})
            records.append(
                ClipRecord(
                    file=name,
                    source=source,
                    source_hash=digest,
                    duration=piece.shape[1] / SAMPLE_RATE,
                    caption=song.caption,
                    lyrics=song.lyrics,
                    metadata=song_metadata(song),
                    shapes={key: list(value.shape) for key, value in tensors.items()},
                    chunk_index=chunk,
                    chunk_count=len(pieces),
                    offset_seconds=offset / SAMPLE_RATE,
                )
            )
            offset += piece.shape[1]
        return records


def _find_sources(audio_dir: Path, output: Path) -> list[Path]:
    """The songs under `audio_dir` (and entries only named like one, to report), leaving out anything inside the output
    folder when it sits below `audio_dir`."""
    inside = output.resolve() != audio_dir.resolve() and output.resolve().is_relative_to(audio_dir.resolve())
    return [
        path for path in find_audio_entries(audio_dir) if not (inside and path.parent.resolve().is_relative_to(output.resolve()))
    ]


def _previous_manifest(output: Path, variant: str) -> Manifest | None:
    """The manifest of an earlier run into `output`, refusing one made for another model or by another tool."""
    previous = read_manifest(output)
    if previous is None and (output / MANIFEST_NAME).is_file():
        raise DatasetError(
            f"{output / MANIFEST_NAME} belongs to another tool's tensor dataset. "
            "Choose an empty output folder for Encode Dataset (that dataset can still be trained as it is)."
        )
    if previous is not None and previous.model_variant != variant:
        raise DatasetError(
            f"{output} already holds a dataset encoded for '{previous.model_variant}', not '{variant}'. "
            "Choose another output folder (datasets are specific to the model they were encoded with)."
        )
    return previous


def _unchanged(records: list[ClipRecord], digest: str, song: SongMetadata, output: Path) -> bool:
    """Whether earlier clips of a song still match its audio and metadata and their files are all there."""
    return bool(records) and all(
        record.source_hash == digest
        and record.caption == song.caption
        and record.lyrics == song.lyrics
        and record.metadata == song_metadata(song)
        and (output / record.file).is_file()
        for record in records
    )


def _carried(earlier: dict[str, list[ClipRecord]], output: Path) -> list[ClipRecord]:
    """Earlier clips of songs this run has not reached yet whose files are still there (kept if the run stops)."""
    return [record for records in earlier.values() for record in records if (output / record.file).is_file()]


def _remove_stale_clips(output: Path, previous: Manifest | None, manifest: Manifest) -> None:
    """Delete tensor files an earlier run wrote that the new manifest no longer lists."""
    if previous is None:
        return
    kept = {record.file for record in manifest.clips}
    for record in previous.clips:
        if record.file not in kept:
            (output / record.file).unlink(missing_ok=True)


def encode_dataset(
    bundle: AceStepBundle,
    config: EncodeConfig,
    callback: Callable[[EncodeEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EncodeResult:
    """Encode every readable song under `config.audio_dir`; bad files are skipped and reported, never fatal alone.

    Songs whose audio, metadata and encoder fingerprint are unchanged since the last run are reused as they are.
    The manifest is rewritten after every song, so a killed run keeps what it finished.
    """
    audio_dir, output = Path(config.audio_dir), Path(config.output_dir)
    sources = _find_sources(audio_dir, output)
    if not sources:
        raise DatasetError(
            f"No audio files in {audio_dir}. Put .wav/.flac/.mp3/.ogg/.opus/.m4a/.aac files there (sub-folders are searched)."
        )
    return_freed_memory()
    previous = _previous_manifest(output, bundle.variant)
    fingerprint = encoder_fingerprint(bundle, config)
    names = [printable(path.relative_to(audio_dir).as_posix()) for path in sources]
    present = set(names)
    earlier: dict[str, list[ClipRecord]] = {}
    if previous is not None and previous.encoder_fingerprint == fingerprint:
        for record in previous.clips:
            if record.source in present:
                earlier.setdefault(record.source, []).append(record)
    manifest = Manifest(bundle.variant, fingerprint, model_name=bundle.entry.name, audio_dir=str(audio_dir))
    result = EncodeResult(output_dir=output, manifest=manifest)
    dataset_json = load_dataset_json(audio_dir)
    encoder: DatasetEncoder | None = None
    emit = callback or (lambda event: None)
    for index, (path, source) in enumerate(zip(sources, names), 1):
        if should_stop and should_stop():
            result.stopped = True
            break
        old = earlier.pop(source, [])
        try:
            digest = _readable_hash(path)
            song = read_song_metadata(path, dataset_json, config.tag_position, config.custom_tag or None)
            result.warnings.extend(f"{source}: {warning}" for warning in song.warnings)
            if config.skip_existing and _unchanged(old, digest, song, output):
                manifest.clips.extend(old)
                result.skipped += 1
                emit(EncodeEvent(index, len(sources), source, "skipped", sum(record.duration for record in old)))
                continue
            waveform = normalize(load_audio(path, SAMPLE_RATE, config.min_seconds), SAMPLE_RATE, config.normalize)
        except AudioError as error:
            result.rejected.append(Rejection(source, error.reason))
            emit(EncodeEvent(index, len(sources), source, "rejected", reason=error.reason))
            continue
        encoder = encoder or DatasetEncoder(bundle)
        records = encoder.encode_song(waveform, song, source, digest, config)
        manifest.clips.extend(records)
        snapshot = dataclasses.replace(manifest, clips=manifest.clips + _carried(earlier, output), rejected=list(result.rejected))
        write_manifest(output, snapshot)
        result.encoded += 1
        emit(EncodeEvent(index, len(sources), source, "encoded", sum(record.duration for record in records)))
    manifest.clips.extend(_carried(earlier, output))
    manifest.rejected = list(result.rejected)
    if not manifest.clips:
        if result.stopped:
            return result
        reasons = "; ".join(f"{item.source}: {item.reason}" for item in result.rejected)
        raise DatasetError(f"No usable clip in {audio_dir}. Rejected: {reasons}. Fix or replace these files and encode again.")
    write_manifest(output, manifest)
    _remove_stale_clips(output, previous, manifest)
    return result

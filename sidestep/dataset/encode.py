"""Encode Dataset: a folder of songs → one safetensors file per clip plus `manifest.json`, resumable and loss-free."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..audio import find_audio_files, load_audio, normalize
from ..bundle import AceStepBundle
from ..errors import AudioError, DatasetError
from ..text import SongMetas, caption_prompt, lyrics_prompt
from ..vae import encode_waveform
from .sidecars import SongMetadata, load_dataset_json, read_song_metadata
from .tensors import ClipRecord, Manifest, Rejection, read_manifest, save_clip, write_manifest

SAMPLE_RATE = 48_000
PROMPT_FORMAT = "ace15-training-v1"
NORMALIZE_MODES = ("none", "peak", "loudness")


@dataclass
class EncodeConfig:
    """What to encode and how: folders, chunking, normalisation, re-run behaviour and trigger tag."""

    audio_dir: str
    output_dir: str
    max_duration: float = 0.0
    normalize: str = "none"
    skip_existing: bool = True
    min_seconds: float = 1.0
    custom_tag: str = ""
    tag_position: str | None = None
    vae_chunk_seconds: float = 30.0
    vae_overlap_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZE_MODES:
            raise DatasetError(f"normalize={self.normalize!r} is not one of {', '.join(NORMALIZE_MODES)}.")
        if self.max_duration and self.max_duration < self.min_seconds:
            raise DatasetError(f"max_duration ({self.max_duration} s) is shorter than min_seconds ({self.min_seconds} s).")


@dataclass
class EncodeEvent:
    """Per-clip progress: `status` is encoded, skipped or rejected."""

    index: int
    total: int
    file: str
    status: str
    seconds: float = 0.0
    reason: str = ""


@dataclass
class EncodeResult:
    """What a run produced: the manifest, counts, rejected files and sidecar warnings."""

    output_dir: Path
    manifest: Manifest
    encoded: int = 0
    skipped: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def file_hash(path: Path) -> str:
    """SHA-256 of a file's bytes (streamed)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_identity(path: Path) -> list:
    stat = path.stat()
    return [path.name, stat.st_size, stat.st_mtime_ns]


def encoder_fingerprint(bundle: AceStepBundle, config: EncodeConfig) -> str:
    """Identifies everything that shapes the tensors: model, VAE, text encoder files and encoding settings."""
    files = [bundle.entry.path / "config.json", *sorted(bundle.entry.path.glob("model*.safetensors*"))]
    files += sorted(bundle.shared.vae_dir.glob("*")) + sorted(bundle.shared.text_encoder_dir.glob("*"))
    files.append(bundle.shared.silence_latent_path)
    settings = [PROMPT_FORMAT, config.max_duration, config.normalize, config.custom_tag, config.tag_position]
    text = json.dumps([[_file_identity(path) for path in files if path.is_file()], settings])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def clip_name(relative: Path, chunk: int, chunks: int) -> str:
    """A flat, unique tensor file name for one clip of a source file."""
    stem = "__".join(relative.with_suffix("").parts)
    return f"{stem}.safetensors" if chunks == 1 else f"{stem}__part{chunk:03d}.safetensors"


def split_chunks(waveform: torch.Tensor, max_duration: float, min_seconds: float) -> list[tuple[float, torch.Tensor]]:
    """Cut a [2, N] waveform into pieces of at most `max_duration` seconds (0 = keep whole); drop a too-short tail."""
    if not max_duration:
        return [(0.0, waveform)]
    size = int(max_duration * SAMPLE_RATE)
    pieces = []
    for start in range(0, waveform.shape[1], size):
        piece = waveform[:, start : start + size]
        if piece.shape[1] >= min_seconds * SAMPLE_RATE or start == 0:
            pieces.append((start / SAMPLE_RATE, piece))
    return pieces


class DatasetEncoder:
    """Encodes songs with one model bundle; the condition is built the way the official trainers build it."""

    def __init__(self, bundle: AceStepBundle) -> None:
        self.bundle = bundle
        self.model = bundle.dit(parts=("encoder", "tokenizer", "detokenizer", "null_condition_emb"))
        self.vae = bundle.vae()
        self.text = bundle.text_encoder()
        self.silence = bundle.silence_latent()

    def encode_clip(self, waveform: torch.Tensor, song: SongMetadata, seconds: float, config: EncodeConfig) -> dict[str, torch.Tensor]:
        """One clip's training tensors (unbatched)."""
        latents = encode_waveform(self.vae, waveform, config.vae_chunk_seconds, config.vae_overlap_seconds)
        frames = latents.shape[0]
        metas = SongMetas(bpm=song.bpm, timesignature=song.timesignature, keyscale=song.keyscale, duration=int(round(seconds)))
        caption_states, caption_mask = self.text.encode_captions([caption_prompt(song.caption, metas, "training")], "training")
        lyric_states, lyric_mask = self.text.encode_lyrics([lyrics_prompt(song.lyrics, form="training")], "training")
        dtype = next(self.model.encoder.parameters()).dtype
        silence = self.silence.to(dtype)
        if silence.shape[1] < max(frames, self.model.config.timbre_fix_frame):
            silence = silence.repeat(1, math.ceil(max(frames, self.model.config.timbre_fix_frame) / silence.shape[1]), 1)
        src = silence[:, :frames]
        states, state_mask, context = self.model.prepare_condition(
            text_hidden_states=caption_states.to(dtype),
            text_attention_mask=caption_mask,
            lyric_hidden_states=lyric_states.to(dtype),
            lyric_attention_mask=lyric_mask,
            refer_audio_acoustic_hidden_states_packed=silence[:, : self.model.config.timbre_fix_frame],
            refer_audio_order_mask=torch.zeros(1, dtype=torch.long),
            hidden_states=src,
            attention_mask=torch.ones(1, frames),
            silence_latent=silence,
            src_latents=src,
            chunk_masks=torch.ones(1, frames, src.shape[-1], dtype=dtype),
            is_covers=torch.zeros(1, dtype=torch.long),
        )
        return {
            "target_latents": latents.float(),
            "attention_mask": torch.ones(frames),
            "encoder_hidden_states": states[0].float(),
            "encoder_attention_mask": state_mask[0].float(),
            "context_latents": context[0].float(),
        }


def _reusable(records: list[ClipRecord], output: Path) -> bool:
    return bool(records) and all((output / record.file).is_file() for record in records)


def encode_dataset(
    bundle: AceStepBundle,
    config: EncodeConfig,
    callback: Callable[[EncodeEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EncodeResult:
    """Encode every readable song under `config.audio_dir`; bad files are skipped and reported, never fatal alone."""
    audio_dir, output = Path(config.audio_dir), Path(config.output_dir)
    sources = find_audio_files(audio_dir)
    if not sources:
        raise DatasetError(f"No audio files in {audio_dir}. Put .wav/.flac/.mp3/.ogg/.opus/.m4a files there (sub-folders are searched).")
    fingerprint = encoder_fingerprint(bundle, config)
    previous = read_manifest(output)
    if previous is not None and previous.model_variant != bundle.variant:
        raise DatasetError(
            f"{output} already holds a dataset encoded for '{previous.model_variant}', not '{bundle.variant}'. "
            "Choose another output folder (datasets are specific to the model they were encoded with)."
        )
    old_records: dict[str, list[ClipRecord]] = {}
    if previous is not None and previous.encoder_fingerprint == fingerprint:
        for record in previous.clips:
            old_records.setdefault(record.source, []).append(record)
    manifest = Manifest(model_variant=bundle.variant, encoder_fingerprint=fingerprint, model_name=bundle.entry.name)
    result = EncodeResult(output_dir=output, manifest=manifest)
    dataset_json = load_dataset_json(audio_dir)
    encoder: DatasetEncoder | None = None
    emit = callback or (lambda event: None)
    for index, path in enumerate(sources):
        if should_stop and should_stop():
            break
        relative = path.relative_to(audio_dir)
        source = relative.as_posix()
        digest = file_hash(path)
        kept = [r for r in old_records.get(source, []) if r.source_hash == digest]
        if config.skip_existing and _reusable(kept, output):
            manifest.clips.extend(kept)
            result.skipped += 1
            emit(EncodeEvent(index + 1, len(sources), source, "skipped", sum(r.duration for r in kept)))
            continue
        try:
            song = read_song_metadata(path, dataset_json, config.tag_position, config.custom_tag or None)
            waveform = normalize(load_audio(path, SAMPLE_RATE, config.min_seconds), SAMPLE_RATE, config.normalize)
        except (AudioError, DatasetError) as error:
            reason = getattr(error, "reason", None) or str(error)
            result.rejected.append(Rejection(source, reason))
            emit(EncodeEvent(index + 1, len(sources), source, "rejected", reason=reason))
            continue
        result.warnings.extend(song.warnings)
        encoder = encoder or DatasetEncoder(bundle)
        pieces = split_chunks(waveform, config.max_duration, config.min_seconds)
        total_seconds = 0.0
        for chunk, (offset, piece) in enumerate(pieces):
            seconds = piece.shape[1] / SAMPLE_RATE
            tensors = encoder.encode_clip(piece, song, seconds, config)
            name = clip_name(relative, chunk, len(pieces))
            save_clip(output / name, tensors, metadata={"source": source, "caption": song.caption})
            manifest.clips.append(
                ClipRecord(
                    file=name,
                    source=source,
                    source_hash=digest,
                    duration=seconds,
                    caption=song.caption,
                    lyrics=song.lyrics,
                    metadata={
                        "bpm": song.bpm,
                        "keyscale": song.keyscale,
                        "timesignature": song.timesignature,
                        "language": song.language,
                        "genre": song.genre,
                        "custom_tag": song.custom_tag,
                        "is_instrumental": song.is_instrumental,
                        "sidecar": song.source,
                    },
                    shapes={key: list(value.shape) for key, value in tensors.items()},
                    chunk_index=chunk,
                    chunk_count=len(pieces),
                    offset_seconds=offset,
                )
            )
            total_seconds += seconds
        manifest.rejected = list(result.rejected)
        write_manifest(output, manifest)
        result.encoded += 1
        emit(EncodeEvent(index + 1, len(sources), source, "encoded", total_seconds))
    manifest.rejected = list(result.rejected)
    if not manifest.clips:
        reasons = "; ".join(f"{item.source}: {item.reason}" for item in result.rejected) or "no files were processed"
        raise DatasetError(f"No usable clip in {audio_dir}. Rejected: {reasons}.")
    write_manifest(output, manifest)
    return result

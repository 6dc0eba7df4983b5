"""Audio files: discovery, decoding, resampling, clip checks, normalisation and atomic saving."""

from __future__ import annotations

import errno
import importlib.util
import math
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile
import soxr
import torch
from scipy.signal import lfilter

from .atomic import write_atomic
from .errors import AudioError
from .native_stderr import decoder_messages_into
from .variants import SAMPLE_RATE

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac")
SILENCE_PEAK = 1e-4  # −80 dBFS: a clip whose every sample stays below this is silent
MAX_PEAK = 64.0  # +36 dBFS: float samples beyond this are a scaling error, not loud audio
MIN_RATE, MAX_RATE = 4000, 768000  # sample rates outside these are a broken header
PEAK_TARGET_DBFS = -1.0
LOUDNESS_TARGET_LUFS = -14.0

NormalizeMode = Literal["none", "peak", "loudness"]

_SNDFILE_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".mp3": "MP3", ".ogg": "OGG", ".opus": "OGG"}
_SAVE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
_MP3_MIN_LIBSNDFILE = (1, 1, 0)
_FIX_FILE = "Re-export or convert the file, or remove it from the dataset folder."
_PYAV_HINT = "install PyAV (pip install av) to read .m4a/.aac"


@dataclass(frozen=True)
class DecoderEnvironment:
    """What this machine's audio libraries can read: libsndfile (through soundfile) and PyAV."""

    libsndfile_version: tuple[int, ...]
    sndfile_formats: frozenset[str]
    ogg_subtypes: frozenset[str]
    has_pyav: bool

    @classmethod
    def detect(cls) -> DecoderEnvironment:
        """Inspect the installed soundfile/libsndfile and look for PyAV."""
        formats = frozenset(soundfile.available_formats())
        ogg = frozenset(soundfile.available_subtypes("OGG")) if "OGG" in formats else frozenset()
        version = tuple(int(n) for n in re.findall(r"\d+", soundfile.__libsndfile_version__)[:3])
        return cls(version, formats, ogg, importlib.util.find_spec("av") is not None)


def _sndfile_gap(ext: str, env: DecoderEnvironment) -> str | None:
    """Why libsndfile on this machine cannot read `ext`, or None when it can."""
    version = ".".join(map(str, env.libsndfile_version))
    fmt = _SNDFILE_FORMATS.get(ext)
    if fmt is None:
        return f"libsndfile cannot read {ext} files"
    if fmt not in env.sndfile_formats:
        return f"this libsndfile ({version}) was built without {fmt} support"
    if ext == ".mp3" and env.libsndfile_version < _MP3_MIN_LIBSNDFILE:
        return f"reading MP3 needs libsndfile 1.1.0 or newer, this one is {version}"
    if ext == ".opus" and "OPUS" not in env.ogg_subtypes:
        return f"this libsndfile ({version}) was built without Opus support"
    return None


def decoder_for(ext: str, env: DecoderEnvironment) -> str | None:
    """The backend that reads extension `ext` here: "soundfile", "pyav", or None when nothing can."""
    if _sndfile_gap(ext, env) is None:
        return "soundfile"
    return "pyav" if env.has_pyav else None


def decoder_hint(ext: str, env: DecoderEnvironment) -> str:
    """Why `ext` cannot be decoded here and how to enable it ("" when it can be)."""
    if decoder_for(ext, env) is not None:
        return ""
    gap = _sndfile_gap(ext, env)
    if ext in (".m4a", ".aac"):
        return f"{gap}; {_PYAV_HINT}"
    return f"{gap}; upgrade soundfile (pip install -U soundfile) or install PyAV (pip install av)"


def decoder_support(env: DecoderEnvironment | None = None) -> dict[str, bool]:
    """For every supported extension, whether this machine can decode it."""
    env = env or DecoderEnvironment.detect()
    return {ext: decoder_for(ext, env) is not None for ext in AUDIO_EXTENSIONS}


def missing_decoders(env: DecoderEnvironment | None = None) -> dict[str, str]:
    """The extensions this machine cannot decode, each with how to enable it."""
    env = env or DecoderEnvironment.detect()
    return {ext: decoder_hint(ext, env) for ext in AUDIO_EXTENSIONS if decoder_for(ext, env) is None}


def find_audio_entries(folder: str | Path) -> list[Path]:
    """Everything under `folder`, recursively, named like audio (case-insensitive extension), sorted by relative path:
    regular files and also folders, links and FIFOs so named (which `entry_problem` reports).

    macOS "._" resource-fork files are skipped: they carry the extension but no audio.
    """
    root = Path(folder)
    if not root.is_dir():
        raise AudioError(
            f"Audio folder {root} does not exist or is not a folder; point to the folder that holds your songs.",
            reason="folder not found",
        )
    found = [p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith("._")]
    return sorted(found, key=lambda p: (p.relative_to(root).as_posix().casefold(), p.as_posix()))


def find_audio_files(folder: str | Path) -> list[Path]:
    """The regular audio files among `find_audio_entries(folder)`."""
    return [p for p in find_audio_entries(folder) if p.is_file()]


def entry_problem(path: Path) -> str | None:
    """Why `path` cannot be read as an audio file (a folder, broken link, link loop, FIFO, a name that is not
    UTF-8), or None for a regular file."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8 text; rename the file"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "broken link, its target does not exist" if path.is_symlink() else "file not found"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"cannot be read ({error.strerror or error})"
    if stat.S_ISDIR(mode):
        return "a folder, not an audio file"
    if not stat.S_ISREG(mode):
        return "not a regular file but a FIFO, socket or device"
    return None


def printable(path: str | Path) -> str:
    """A path as text that can be printed and written as UTF-8 (file-name bytes that are not UTF-8 shown as U+FFFD)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _audio_error(source: str | Path, reason: str, advice: str = _FIX_FILE) -> AudioError:
    """An AudioError whose message names the file, the reason and what to do."""
    return AudioError(f"{source}: {reason}. {advice}", reason=reason)


def _wav_truncation(path: Path) -> str | None:
    """Why a RIFF/WAVE file is cut short (its data chunk declares more bytes than follow), or None.

    The placeholder sizes 0 and 0xFFFFFFFF that streaming writers leave are not truncation.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        riff = f.read(12)
        if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
            return None
        while len(header := f.read(8)) == 8:
            chunk, declared = header[:4], int.from_bytes(header[4:], "little")
            if chunk == b"data":
                present = size - f.tell()
                if declared in (0, 0xFFFFFFFF) or declared <= present:
                    return None
                return f"truncated (WAV data chunk declares {declared} bytes, {present} present)"
            f.seek(declared + (declared & 1), 1)
    return None


def _ogg_truncation(path: Path) -> str | None:
    """Why an Ogg file is cut short (its last page does not end the stream), or None."""
    size = path.stat().st_size
    with path.open("rb") as f:
        f.seek(max(0, size - 65536))  # an Ogg page is at most 65307 bytes, so the last one starts in here
        tail = f.read()
    start = tail.rfind(b"OggS\x00")
    if start < 0 or start + 6 > len(tail):
        return "truncated (no complete Ogg page at the end)"
    if not tail[start + 5] & 0x04:
        return "truncated (the Ogg stream has no end-of-stream page)"
    return None


_TRUNCATION_CHECKS = {".wav": _wav_truncation, ".ogg": _ogg_truncation, ".opus": _ogg_truncation}


def _decode_soundfile(path: Path) -> tuple[np.ndarray, int]:
    """Decode with libsndfile to float32 [N, C] frames and the file's sample rate (its decoders' notes kept out of
    stderr; for an MP3 that cannot be decoded, the first one goes into the error)."""
    notes: list[str] = []
    try:
        with decoder_messages_into(notes), soundfile.SoundFile(path) as f:
            declared, rate = f.frames, f.samplerate
            frames = f.read(dtype="float32", always_2d=True)
    except soundfile.SoundFileError as exc:
        detail = (getattr(exc, "error_string", None) or str(exc)).strip().rstrip(".")
        if "does not exist or is not a regular file" in detail:  # libsndfile's words for data it cannot decode
            mp3 = notes and path.suffix.lower() == ".mp3"  # libmpg123 also probes other data: its words fit MP3 only
            decoder = f"; decoder: {notes[0].split(': ', 1)[-1].rstrip('.')}" if mp3 else ""
            kind = path.suffix.lstrip(".").upper() or "audio"
            raise _audio_error(path, f"could not be decoded (not valid {kind} data{decoder})") from exc
        raise _audio_error(path, f"corrupt or unreadable (libsndfile: {detail})") from exc
    if 0 < frames.shape[0] < declared:
        raise _audio_error(path, f"truncated (decoded {frames.shape[0]} of {declared} frames)")
    return frames, rate


def _decode_pyav(path: Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with PyAV (FFmpeg) to float32 [N, C] frames and its sample rate."""
    import av  # optional dependency, only needed for formats libsndfile cannot read

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise _audio_error(path, "no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp")
            chunks = [out.to_ndarray() for frame in container.decode(stream) for out in resampler.resample(frame)]
            chunks += [out.to_ndarray() for out in resampler.resample(None)]
            rate, channels = stream.rate, stream.channels
    except av.FFmpegError as exc:
        raise _audio_error(path, f"corrupt or unreadable (FFmpeg: {exc.strerror or exc})") from exc
    if not chunks:
        return np.zeros((0, channels), dtype=np.float32), rate
    return np.ascontiguousarray(np.concatenate(chunks, axis=1).T), rate


def load_audio(
    path: str | Path,
    target_rate: int = SAMPLE_RATE,
    min_seconds: float = 0.0,
    env: DecoderEnvironment | None = None,
) -> torch.Tensor:
    """Decode `path` to a float32 stereo [2, N] tensor at `target_rate`; unusable files raise AudioError.

    Mono is duplicated to both channels, more than two channels keep the first two, and
    resampling uses soxr at its very-high-quality setting.
    """
    path = Path(path)
    ext = path.suffix.lower()
    problem = entry_problem(path)
    if problem:
        raise _audio_error(printable(path), problem, "Check the path.")
    if ext not in AUDIO_EXTENSIONS:
        raise _audio_error(path, f"unsupported extension {ext or '(none)'}", f"Use one of {', '.join(AUDIO_EXTENSIONS)}.")
    if path.stat().st_size == 0:
        raise _audio_error(path, "empty file (0 bytes)")
    env = env or DecoderEnvironment.detect()
    backend = decoder_for(ext, env)
    if backend is None:
        raise _audio_error(path, f"no decoder for {ext} on this machine", decoder_hint(ext, env) + ".")
    truncation = _TRUNCATION_CHECKS[ext](path) if ext in _TRUNCATION_CHECKS else None
    if truncation:
        raise _audio_error(path, truncation)
    frames, rate = _decode_soundfile(path) if backend == "soundfile" else _decode_pyav(path)
    frames = np.ascontiguousarray(frames[:, :2])
    check_clip(torch.from_numpy(frames.T), rate, min_seconds, source=path)
    if rate != target_rate:
        frames = soxr.resample(frames, rate, target_rate, quality="VHQ")
    if frames.shape[1] == 1:
        frames = np.repeat(frames, 2, axis=1)
    return torch.from_numpy(np.ascontiguousarray(frames.T, dtype=np.float32))


def check_clip(waveform: torch.Tensor, rate: int, min_seconds: float = 0.0, source: str | Path = "clip") -> None:
    """Raise AudioError (with a short `reason`) when a [C, N] clip has an absurd sample rate, is empty, non-finite,
    far beyond full scale, silent or too short."""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise _audio_error(source, f"sample rate {rate} Hz is not a real audio rate ({MIN_RATE}–{MAX_RATE} Hz)")
    seconds = waveform.shape[-1] / rate
    if waveform.numel() == 0:
        raise _audio_error(source, "no audio (0 frames)")
    if not bool(torch.isfinite(waveform).all()):
        raise _audio_error(source, "contains NaN or infinite samples")
    peak = float(waveform.abs().max())
    if peak > MAX_PEAK:
        raise _audio_error(source, f"samples far beyond full scale (peak {_dbfs(peak):+.0f} dBFS; a float file scaled wrongly)")
    if peak < SILENCE_PEAK:
        raise _audio_error(source, f"silent (peak {_dbfs(peak):.1f} dBFS)")
    if seconds < min_seconds:
        raise _audio_error(
            source,
            f"too short ({seconds:.2f} s < {min_seconds:g} s)",
            "Use a longer clip, lower the minimum length, or remove it from the dataset folder.",
        )


def _dbfs(amplitude: float) -> float:
    """An amplitude in dB relative to full scale (−inf for 0)."""
    return 20.0 * math.log10(amplitude) if amplitude > 0 else -math.inf


def normalize(waveform: torch.Tensor, rate: int, mode: NormalizeMode = "none") -> torch.Tensor:
    """Scale a [C, N] clip: "peak" puts its sample peak at −1 dBFS; "loudness" brings it to −14 LUFS,
    lowering that gain where needed so the peak never exceeds −1 dBFS; "none" returns it unchanged.

    A silent clip (all zeros) is returned unchanged.
    """
    if mode not in ("none", "peak", "loudness"):
        raise ValueError(f"normalisation mode must be 'none', 'peak' or 'loudness', not {mode!r}")
    peak = float(waveform.abs().max()) if waveform.numel() else 0.0
    if mode == "none" or peak == 0.0:
        return waveform
    gain_db = PEAK_TARGET_DBFS - _dbfs(peak)
    if mode == "loudness":
        gain_db = min(gain_db, LOUDNESS_TARGET_LUFS - integrated_loudness(waveform, rate))
    return waveform * 10.0 ** (gain_db / 20.0)


def k_weighting(rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two ITU-R BS.1770 K-weighting biquads as (b, a) pairs for `rate`: high shelf, then high-pass.

    Designed by the bilinear transform of the analogue prototypes whose 48 kHz form is the
    coefficient table printed in BS.1770-4, so any sample rate is weighted the same way.
    """
    k = math.tan(math.pi * 1681.974450955533 / rate)
    q = 0.7071752369554196
    vh = 10.0 ** (3.999843853973347 / 20.0)
    vb = vh**0.4996667741545416
    a0 = 1.0 + k / q + k * k
    shelf_b = np.array([vh + vb * k / q + k * k, 2.0 * (k * k - vh), vh - vb * k / q + k * k]) / a0
    shelf_a = np.array([a0, 2.0 * (k * k - 1.0), 1.0 - k / q + k * k]) / a0
    k = math.tan(math.pi * 38.13547087602444 / rate)
    q = 0.5003270373238773
    a0 = 1.0 + k / q + k * k
    highpass_b = np.array([1.0, -2.0, 1.0])
    highpass_a = np.array([a0, 2.0 * (k * k - 1.0), 1.0 - k / q + k * k]) / a0
    return [(shelf_b, shelf_a), (highpass_b, highpass_a)]


def _block_lufs(power: np.ndarray) -> np.ndarray:
    """BS.1770 loudness of channel-summed mean-square block powers."""
    return -0.691 + 10.0 * np.log10(np.maximum(power, 1e-300))


def integrated_loudness(waveform: torch.Tensor, rate: int) -> float:
    """ITU-R BS.1770-4 integrated loudness in LUFS of a [C, N] clip (every channel weighted 1.0).

    400 ms blocks with 75 % overlap, absolute gate −70 LUFS, relative gate −10 LU; a clip
    shorter than one block is measured as a single block. Returns −inf when every block is gated.
    """
    weighted = waveform.detach().cpu().double().numpy()
    for b, a in k_weighting(rate):
        weighted = lfilter(b, a, weighted, axis=-1)
    power = np.square(weighted).sum(axis=0)
    block, hop = round(0.4 * rate), round(0.1 * rate)
    if power.shape[0] < block:
        blocks = power.mean(keepdims=True)
    else:
        cumulative = np.concatenate([[0.0], np.cumsum(power)])
        starts = np.arange(0, power.shape[0] - block + 1, hop)
        blocks = (cumulative[starts + block] - cumulative[starts]) / block
    blocks = blocks[_block_lufs(blocks) > -70.0]
    if blocks.size == 0:
        return -math.inf
    relative_gate = float(_block_lufs(blocks.mean())) - 10.0
    blocks = blocks[_block_lufs(blocks) > relative_gate]
    return float(_block_lufs(blocks.mean()))


def check_save_path(path: str | Path) -> str:
    """The soundfile format `save_audio` writes `path` in; AudioError for an extension it cannot write."""
    fmt = _SAVE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise _audio_error(Path(path), "cannot save this format", "Use a file name ending in .flac or .wav.")
    return fmt


def save_audio(path: str | Path, waveform: torch.Tensor, rate: int) -> Path:
    """Write a [C, N] (or [1, C, N]) clip as 24-bit FLAC or WAV, chosen by extension, atomically.

    Samples beyond ±1.0 are clipped, as integer PCM cannot hold them.
    """
    path = Path(path)
    fmt = check_save_path(path)
    data = waveform.detach().cpu().float()
    if data.dim() == 3 and data.shape[0] == 1:
        data = data[0]
    if data.dim() != 2:
        raise ValueError(f"save_audio expects a [channels, samples] waveform, got shape {tuple(waveform.shape)}")
    frames = np.ascontiguousarray(data.clamp(-1.0, 1.0).numpy().T)
    write_atomic(path, lambda temporary: soundfile.write(temporary, frames, rate, format=fmt, subtype="PCM_24"))
    return path

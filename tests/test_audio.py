"""Audio discovery, decoding, clip checks, BS.1770 loudness, normalisation and saving, on real files."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sidestep.audio import (
    AUDIO_EXTENSIONS,
    DecoderEnvironment,
    check_clip,
    decoder_for,
    decoder_hint,
    decoder_support,
    find_audio_files,
    integrated_loudness,
    k_weighting,
    load_audio,
    missing_decoders,
    normalize,
    save_audio,
)
from sidestep.errors import AudioError, SideStepError

HAS_PYAV = importlib.util.find_spec("av") is not None
CAN_WRITE_MP3 = "MP3" in sf.available_formats()


def signal(kind: str, seconds: float, rate: int, channels: int, seed: int = 0) -> np.ndarray:
    """[N, C] float32 test audio; channel c is scaled by (c + 1) / channels so channels can be told apart."""
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    if kind == "sine":
        mono = 0.8 * np.sin(2 * np.pi * 1000.0 * t)
    elif kind == "noise":
        mono = np.clip(rng.normal(0.0, 0.2, t.shape), -0.9, 0.9)
    else:  # speech-like: noise with a 4 Hz syllable envelope
        mono = np.clip(rng.normal(0.0, 0.3, t.shape), -0.9, 0.9) * (0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t))
    scales = (np.arange(channels) + 1) / channels
    return (mono[:, None] * scales[None, :]).astype(np.float32)


def write(path: Path, data: np.ndarray, rate: int, fmt: str | None = None, subtype: str | None = None) -> Path:
    """Write `data` with soundfile and return the path."""
    sf.write(path, data, rate, format=fmt, subtype=subtype)
    return path


def rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


def sine_tensor(dbfs: float, seconds: float, rate: int = 48000, hz: float = 1000.0) -> torch.Tensor:
    t = torch.arange(round(seconds * rate), dtype=torch.float64) / rate
    return 10 ** (dbfs / 20) * torch.sin(2 * math.pi * hz * t)


# --- discovery -------------------------------------------------------------------------------


def test_find_audio_files_recursive_case_insensitive_sorted(tmp_path: Path) -> None:
    (tmp_path / "b sub" / "deeper").mkdir(parents=True)
    names = [
        "zeta.WAV",
        "Bjørk – été song.wav",
        "alpha.flac",
        "b sub/track.Mp3",
        "b sub/deeper/x.ogg",
        "b sub/deeper/y.opus",
        "c.M4A",
        "d.aac",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    for ignored in ("notes.txt", "dataset.json", "._alpha.flac", "cover.jpg", "alpha.flac.bak"):
        (tmp_path / ignored).write_bytes(b"x")
    (tmp_path / "folder.wav").mkdir()  # a directory named like audio is not a file

    found = find_audio_files(tmp_path)

    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "alpha.flac",
        "b sub/deeper/x.ogg",
        "b sub/deeper/y.opus",
        "b sub/track.Mp3",
        "Bjørk – été song.wav",
        "c.M4A",
        "d.aac",
        "zeta.WAV",
    ]
    assert found == find_audio_files(str(tmp_path))


def test_find_audio_files_missing_folder_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no such songs"
    with pytest.raises(AudioError, match="no such songs") as info:
        find_audio_files(missing)
    assert isinstance(info.value, SideStepError)


# --- decoder support -------------------------------------------------------------------------


def test_decoder_support_on_this_machine() -> None:
    support = decoder_support()
    assert set(support) == set(AUDIO_EXTENSIONS)
    for ext in (".wav", ".flac", ".ogg", ".opus"):
        assert support[ext], ext
    assert support[".mp3"] == (CAN_WRITE_MP3 or HAS_PYAV)
    assert support[".m4a"] == support[".aac"] == HAS_PYAV
    assert set(missing_decoders()) == {ext for ext, ok in support.items() if not ok}


def test_decoder_hints_for_an_old_libsndfile_without_pyav() -> None:
    old = DecoderEnvironment((1, 0, 31), frozenset({"WAV", "FLAC", "OGG", "MP3"}), frozenset({"VORBIS"}), False)

    support = decoder_support(old)
    assert support == {".wav": True, ".flac": True, ".ogg": True, ".opus": False,
                       ".mp3": False, ".m4a": False, ".aac": False}
    missing = missing_decoders(old)
    assert "1.1.0" in missing[".mp3"] and "1.0.31" in missing[".mp3"] and "pip install av" in missing[".mp3"]
    assert "Opus" in missing[".opus"]
    assert "install PyAV (pip install av) to read .m4a/.aac" in missing[".m4a"]
    assert missing[".aac"] == missing[".m4a"].replace(".m4a files", ".aac files")
    assert decoder_hint(".wav", old) == ""


def test_pyav_takes_over_what_libsndfile_cannot_read() -> None:
    env = DecoderEnvironment((1, 2, 2), frozenset({"WAV", "OGG"}), frozenset({"VORBIS", "OPUS"}), True)
    assert decoder_for(".wav", env) == "soundfile"
    assert decoder_for(".opus", env) == "soundfile"
    assert decoder_for(".flac", env) == "pyav"
    assert decoder_for(".mp3", env) == "pyav"
    assert decoder_for(".m4a", env) == "pyav"
    assert missing_decoders(env) == {}


# --- decoding --------------------------------------------------------------------------------

LOSSLESS = [
    # (kind, file name, format, subtype, rate, channels, seconds)
    ("sine", "mono 22k.wav", "WAV", "PCM_16", 22050, 1, 1.5),
    ("noise", "stereo 44k.flac", "FLAC", "PCM_24", 44100, 2, 2.0),
    ("speech", "six 48k.wav", "WAV", "FLOAT", 48000, 6, 1.0),
    ("sine", "UPPER.FLAC", "FLAC", "PCM_16", 44100, 6, 0.75),
]


@pytest.mark.parametrize(("kind", "name", "fmt", "subtype", "rate", "channels", "seconds"), LOSSLESS)
def test_load_lossless_resamples_to_stereo_48k(
    tmp_path: Path, kind: str, name: str, fmt: str, subtype: str, rate: int, channels: int, seconds: float
) -> None:
    path = write(tmp_path / name, signal(kind, seconds, rate, channels), rate, fmt, subtype)

    audio = load_audio(path)

    assert audio.dtype == torch.float32 and audio.shape[0] == 2 and audio.is_contiguous()
    assert abs(audio.shape[1] - seconds * 48000) <= 2
    interior = audio[:, 2400:-2400]  # away from the resampler's edges
    if channels == 1:
        assert torch.equal(audio[0], audio[1])
    else:  # the first two channels, in order: scaled 1/C and 2/C
        assert rms(interior[1]) / rms(interior[0]) == pytest.approx(2.0, rel=0.02)
    if kind == "sine":  # still 1 kHz after resampling
        spectrum = np.abs(np.fft.rfft(interior[0].numpy()))
        assert np.argmax(spectrum) * 48000 / interior.shape[1] == pytest.approx(1000.0, abs=2.0)


def test_load_to_another_target_rate(tmp_path: Path) -> None:
    path = write(tmp_path / "a.wav", signal("sine", 1.0, 48000, 2), 48000)
    audio = load_audio(path, target_rate=44100)
    assert audio.shape == (2, 44100)


LOSSY = [
    ("ogg vorbis.ogg", "OGG", "VORBIS", 44100, 2),
    ("opus six.opus", "OGG", "OPUS", 48000, 6),
    pytest.param(
        "lame mono.mp3", "MP3", "MPEG_LAYER_III", 22050, 1,
        marks=pytest.mark.skipif(not CAN_WRITE_MP3, reason="this libsndfile cannot write MP3"),
    ),
]


@pytest.mark.parametrize(("name", "fmt", "subtype", "rate", "channels"), LOSSY)
def test_load_lossy_formats(tmp_path: Path, name: str, fmt: str, subtype: str, rate: int, channels: int) -> None:
    path = write(tmp_path / name, signal("speech", 2.0, rate, channels), rate, fmt, subtype)

    audio = load_audio(path)

    assert audio.shape[0] == 2 and abs(audio.shape[1] - 2.0 * 48000) <= 0.05 * 48000
    assert 0.005 < rms(audio) < 0.5


@pytest.mark.skipif(not HAS_PYAV, reason="PyAV is not installed")
def test_load_m4a_through_pyav(tmp_path: Path) -> None:
    import av

    path = tmp_path / "Ça va – ünïcode.m4a"
    samples = np.ascontiguousarray(signal("sine", 2.0, 44100, 2).T)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        stream.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
        frame.sample_rate = 44100
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)

    audio = load_audio(path)

    assert audio.shape[0] == 2 and abs(audio.shape[1] - 2.0 * 48000) <= 0.1 * 48000
    interior = audio[:, 4800:-4800]
    assert rms(interior[1]) / rms(interior[0]) == pytest.approx(2.0, rel=0.05)


def test_non_ascii_name_with_spaces(tmp_path: Path) -> None:
    path = write(tmp_path / "Bjørk – été song.wav", signal("sine", 1.0, 44100, 2), 44100)
    assert find_audio_files(tmp_path) == [path]
    assert load_audio(path).shape == (2, 48000)


# --- bad files -------------------------------------------------------------------------------


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _bad_files(tmp_path: Path) -> list[tuple[Path, str, dict]]:
    """(file, expected reason fragment, load_audio keyword arguments) for every kind of unusable file."""
    rng = np.random.default_rng(1)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(rng.bytes(4096))
    empty = tmp_path / "empty file.flac"
    empty.write_bytes(b"")
    zero = write(tmp_path / "zero frames.wav", np.zeros((0, 2), np.float32), 44100)
    silent = write(tmp_path / "Bjørk – silent.wav", np.zeros((48000, 2), np.float32), 48000)
    hiss = write(tmp_path / "hiss.wav", np.full((48000, 2), 5e-5, np.float32), 48000, subtype="FLOAT")
    short = write(tmp_path / "short.wav", signal("sine", 0.5, 44100, 2), 44100)
    nan = signal("sine", 1.0, 44100, 1)
    nan[100] = np.nan
    not_finite = write(tmp_path / "nan.wav", nan, 44100, subtype="FLOAT")
    cut_flac = _truncate(write(tmp_path / "cut.flac", signal("noise", 3.0, 44100, 2), 44100))
    cut_ogg = _truncate(write(tmp_path / "cut.ogg", signal("noise", 3.0, 44100, 2), 44100))
    cut_opus = _truncate(write(tmp_path / "cut.opus", signal("noise", 3.0, 48000, 2), 48000, "OGG", "OPUS"))
    cut_wav = _truncate(write(tmp_path / "cut.wav", signal("noise", 3.0, 44100, 2), 44100))
    text = tmp_path / "lyrics.txt"
    text.write_text("la la")
    cases = [
        (corrupt, "could not be decoded (not valid WAV data)", {}),
        (empty, "empty file (0 bytes)", {}),
        (zero, "no audio (0 frames)", {}),
        (silent, "silent", {}),
        (hiss, "silent", {}),
        (short, "too short (0.50 s < 2 s)", {"min_seconds": 2.0}),
        (not_finite, "NaN", {}),
        (cut_flac, "corrupt or unreadable (libsndfile: ", {}),
        (cut_ogg, "truncated (the Ogg stream has no end-of-stream page)", {}),
        (cut_opus, "truncated", {}),
        (cut_wav, "truncated (WAV data chunk declares", {}),
        (tmp_path / "missing.wav", "file not found", {}),
        (text, "unsupported extension .txt", {}),
    ]
    if HAS_PYAV:
        fake_m4a = tmp_path / "fake.m4a"
        fake_m4a.write_bytes(rng.bytes(4096))
        cases.append((fake_m4a, "corrupt or unreadable (FFmpeg: ", {}))
    if CAN_WRITE_MP3:
        cut_mp3 = _truncate(write(tmp_path / "cut.mp3", signal("noise", 3.0, 44100, 2), 44100))
        cases.append((cut_mp3, "truncated", {}))
    return cases


def test_every_bad_file_raises_an_audio_error_naming_file_and_reason(tmp_path: Path) -> None:
    for path, reason, kwargs in _bad_files(tmp_path):
        with pytest.raises(AudioError) as info:
            load_audio(path, **kwargs)
            pytest.fail(f"{path.name} loaded")
        message = str(info.value)
        assert str(path) in message, message
        assert reason in info.value.reason, (path.name, info.value.reason)
        assert info.value.reason in message


def test_wav_with_a_streaming_placeholder_size_is_not_truncated(tmp_path: Path) -> None:
    path = write(tmp_path / "streamed.wav", signal("noise", 1.0, 48000, 2), 48000)
    data = bytearray(path.read_bytes())
    size_at = data.index(b"data") + 4
    data[size_at : size_at + 4] = b"\xff\xff\xff\xff"  # what a writer that could not seek back leaves
    path.write_bytes(bytes(data))
    assert load_audio(path).shape == (2, 48000)


def test_short_clip_passes_when_long_enough(tmp_path: Path) -> None:
    path = write(tmp_path / "short.wav", signal("sine", 0.5, 44100, 2), 44100)
    assert load_audio(path, min_seconds=0.5).shape == (2, 24000)


def test_missing_decoder_error_says_how_to_enable_it(tmp_path: Path) -> None:
    path = tmp_path / "song.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A ")
    without_pyav = DecoderEnvironment((1, 2, 2), frozenset({"WAV", "FLAC", "OGG", "MP3"}), frozenset({"OPUS"}), False)
    with pytest.raises(AudioError, match=r"install PyAV \(pip install av\) to read \.m4a/\.aac") as info:
        load_audio(path, env=without_pyav)
    assert str(path) in str(info.value) and info.value.reason == "no decoder for .m4a on this machine"


def test_check_clip_reasons() -> None:
    check_clip(torch.full((2, 4800), 0.5), 48000, min_seconds=0.1)
    with pytest.raises(AudioError, match=r"^take 3: no audio \(0 frames\)") as info:
        check_clip(torch.zeros(2, 0), 48000, source="take 3")
    assert info.value.reason == "no audio (0 frames)"
    with pytest.raises(AudioError, match="too short"):
        check_clip(torch.full((2, 4799), 0.5), 48000, min_seconds=0.1)
    with pytest.raises(AudioError, match=r"silent \(peak -inf dBFS\)"):
        check_clip(torch.zeros(2, 48000), 48000)


# --- loudness and normalisation --------------------------------------------------------------


def test_k_weighting_matches_the_bs1770_table_at_48k() -> None:
    (shelf_b, shelf_a), (hp_b, hp_a) = k_weighting(48000)
    np.testing.assert_allclose(shelf_b, [1.53512485958697, -2.69169618940638, 1.19839281085285], atol=1e-9)
    np.testing.assert_allclose(shelf_a, [1.0, -1.69065929318241, 0.73248077421585], atol=1e-9)
    np.testing.assert_allclose(hp_b, [1.0, -2.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(hp_a, [1.0, -1.99004745483398, 0.99007225036621], atol=1e-9)


@pytest.mark.parametrize("rate", [48000, 44100])
def test_loudness_of_ebu_tech_3341_steady_tones(rate: int) -> None:
    # EBU Tech 3341 cases 1 and 2: a stereo 1 kHz sine at −23 / −33 dBFS per channel reads −23 / −33 LUFS.
    for level in (-23.0, -33.0):
        tone = sine_tensor(level, 20.0, rate)
        assert integrated_loudness(torch.stack([tone, tone]).float(), rate) == pytest.approx(level, abs=0.1)
    # One channel of a stereo pair at −20 dBFS reads −23.0 LUFS; the same tone in both channels adds 3.0 dB.
    tone = sine_tensor(-20.0, 20.0, rate)
    assert integrated_loudness(torch.stack([tone, torch.zeros_like(tone)]), rate) == pytest.approx(-23.0, abs=0.1)
    assert integrated_loudness(torch.stack([tone, tone]), rate) == pytest.approx(-20.0, abs=0.1)


@pytest.mark.parametrize(
    "segments",
    [
        [(-36.0, 10.0), (-23.0, 60.0), (-36.0, 10.0)],  # EBU Tech 3341 case 3 (relative gate)
        [(-72.0, 10.0), (-36.0, 10.0), (-23.0, 60.0), (-36.0, 10.0), (-72.0, 10.0)],  # case 4 (both gates)
        [(-26.0, 20.0), (-20.0, 20.1), (-26.0, 20.0)],  # case 5
    ],
)
def test_loudness_gating_on_ebu_tech_3341_sequences(segments: list[tuple[float, float]]) -> None:
    tone = torch.cat([sine_tensor(level, seconds) for level, seconds in segments])
    assert integrated_loudness(torch.stack([tone, tone]), 48000) == pytest.approx(-23.0, abs=0.1)


def test_loudness_of_silence_and_of_a_clip_shorter_than_a_block() -> None:
    assert integrated_loudness(torch.zeros(2, 48000), 48000) == -math.inf
    short = sine_tensor(-20.0, 0.2).repeat(2, 1)
    assert integrated_loudness(short, 48000) == pytest.approx(-20.0, abs=0.2)


def _peak_dbfs(x: torch.Tensor) -> float:
    return 20 * math.log10(float(x.abs().max()))


def test_peak_normalisation_hits_minus_one_dbfs() -> None:
    for gain in (0.05, 0.5, 3.0):  # quiet, moderate and over full scale
        clip = torch.from_numpy(signal("speech", 2.0, 48000, 2).T.copy()) * gain
        out = normalize(clip, 48000, "peak")
        assert _peak_dbfs(out) == pytest.approx(-1.0, abs=0.01)
        assert out.dtype == torch.float32 and out.shape == clip.shape


def test_loudness_normalisation_reaches_minus_14_lufs() -> None:
    clip = torch.from_numpy(signal("noise", 5.0, 44100, 2, seed=3).T.copy()) * 0.1  # about −30 LUFS
    out = normalize(clip, 44100, "loudness")
    assert integrated_loudness(out, 44100) == pytest.approx(-14.0, abs=0.05)
    assert _peak_dbfs(out) <= -1.0 + 1e-6


def test_loudness_normalisation_never_peaks_above_minus_one_dbfs() -> None:
    clicks = torch.zeros(2, 48000 * 3)
    clicks[:, ::4800] = 0.05  # sparse clicks: quiet overall, high crest factor
    out = normalize(clicks, 48000, "loudness")
    assert _peak_dbfs(out) == pytest.approx(-1.0, abs=0.01)
    assert integrated_loudness(out, 48000) < -14.0 - 3.0


def test_normalize_none_silence_and_bad_mode() -> None:
    clip = torch.full((2, 100), 0.25)
    assert normalize(clip, 48000, "none") is clip
    silence = torch.zeros(2, 48000)
    assert torch.equal(normalize(silence, 48000, "loudness"), silence)
    with pytest.raises(ValueError, match="'loud'"):
        normalize(clip, 48000, "loud")  # type: ignore[arg-type]


# --- saving ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["out.flac", "Out – été.WAV"])
def test_save_audio_round_trips_atomically(tmp_path: Path, name: str) -> None:
    clip = torch.from_numpy(signal("speech", 1.0, 48000, 2).T.copy())
    path = tmp_path / "renders" / name
    save_audio(path, clip, 48000)
    save_audio(path, clip.unsqueeze(0) * 0.5, 48000)  # [1, C, N] as ComfyUI hands it over, replacing the file

    data, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == 48000 and sf.info(path).subtype == "PCM_24"
    np.testing.assert_allclose(data.T, clip.numpy() * 0.5, atol=2.0 ** -22)
    assert os.listdir(path.parent) == [name]  # no temporary file left behind
    assert load_audio(path).shape == (2, 48000)


def test_save_audio_clips_out_of_range_samples(tmp_path: Path) -> None:
    clip = torch.tensor([[0.5, 1.5, -2.0], [0.0, -0.5, 3.0]])
    path = save_audio(tmp_path / "hot.wav", clip, 48000)
    data, _ = sf.read(path, dtype="float32", always_2d=True)
    np.testing.assert_allclose(data.T, clip.clamp(-1, 1).numpy(), atol=2.0 ** -22)


def test_save_audio_rejects_other_formats(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"out\.mp3.*\.flac or \.wav"):
        save_audio(tmp_path / "out.mp3", torch.zeros(2, 10), 48000)
    assert list(tmp_path.iterdir()) == []

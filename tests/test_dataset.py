"""Encode Dataset end to end on the tiny model tree: real audio files of many kinds, every sidecar form, resumable
re-runs, the rejection report, chunking, the training Dataset, Side-Step `.pt` files and ACE-Step tensor folders."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from sidestep.bundle import AceStepBundle, open_checkpoint
from sidestep.dataset.encode import EncodeConfig, EncodeEvent, EncodeResult, encode_dataset, encoder_fingerprint
from sidestep.dataset.loader import ClipDataset, collate_clips, epoch_order, make_loader
from sidestep.dataset.sidecars import load_dataset_json
from sidestep.dataset.tensors import CLIP_KEYS, load_clip, read_manifest
from sidestep.errors import DatasetError

TURBO = "acestep-v15-turbo"
HAS_MP3 = "MP3" in soundfile.available_formats()
UNICODE_NAME = "sub/Ünïcode song ♪" + (".mp3" if HAS_MP3 else ".wav")
USABLE = ["noise.flac", "sine.wav", "sub/surround.ogg", UNICODE_NAME]
REJECTED = {"corrupt.wav": "corrupt", "empty.flac": "empty", "short.wav": "too short", "silent.wav": "silent"}
TRAINING_PROMPT = (
    "# Instruction\nFill the audio semantic mask based on the given conditions:\n\n# Caption\n{caption}\n\n"
    "# Metas\n- bpm: {bpm}\n- timesignature: N/A\n- keyscale: N/A\n- duration: {seconds} seconds\n<|endoftext|>\n"
)


# --- audio and sidecar builders ----------------------------------------------------------------


def tone(seconds: float, rate: int, channels: int, kind: str, seed: int = 0) -> np.ndarray:
    """A [N, C] float32 test signal: a sine, noise, or a speech-like buzz with a moving formant and syllable rhythm."""
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    if kind == "sine":
        mono = 0.4 * np.sin(2 * np.pi * 440 * t)
    elif kind == "noise":
        mono = 0.2 * rng.standard_normal(t.size)
    else:
        pitch = 140 + 20 * np.sin(2 * np.pi * 0.7 * t)
        buzz = sum(np.sin(2 * np.pi * k * np.cumsum(pitch) / rate) / k for k in range(1, 12))
        formant = 1 + np.sin(2 * np.pi * (500 + 300 * np.sin(2 * np.pi * 2 * t)) * t)
        mono = 0.1 * buzz * formant * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    layers = [mono * (1 - 0.1 * channel) for channel in range(channels)]
    return np.stack(layers, axis=1).astype(np.float32)


def write_audio(path: Path, seconds: float, rate: int, channels: int, kind: str, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, tone(seconds, rate, channels, kind, seed), rate)
    return path


def build_songs(folder: Path) -> None:
    """Four usable songs (WAV 22.05 kHz mono, FLAC 44.1 kHz stereo, OGG 48 kHz 6-ch, MP3/WAV non-ASCII) and four bad ones."""
    write_audio(folder / "sine.wav", 0.64, 22_050, 1, "sine")
    (folder / "sine.txt").write_text(
        "caption: warm sine pad\nbpm: 120\nkey: C Major\nsignature: 4\nthis line is malformed\nlyrics:\n[Verse]\nla la la\n",
        encoding="utf-8",
    )
    write_audio(folder / "noise.flac", 0.6, 44_100, 2, "noise")
    (folder / "noise.caption.txt").write_text("dark techno", encoding="utf-8")
    (folder / "noise.lyrics.txt").write_text("[Chorus]\nhey", encoding="utf-8")
    write_audio(folder / "sub" / "surround.ogg", 0.6, 48_000, 6, "speech")
    labels = {"metadata": {"genre": "cinematic"}, "samples": [{"audio_path": "surround.ogg", "caption": "orchestral score", "bpm": 90}]}
    (folder / "sub" / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
    write_audio(folder / UNICODE_NAME, 0.6, 44_100, 2, "speech", seed=1)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + os.urandom(64))
    (folder / "empty.flac").write_bytes(b"")
    soundfile.write(folder / "silent.wav", np.zeros((48_000, 2), dtype=np.float32), 48_000)
    write_audio(folder / "short.wav", 0.3, 48_000, 2, "noise")


def expected_seconds(source: str) -> float:
    return 0.64 if source == "sine.wav" else 0.6


def frames_for(seconds: float) -> int:
    """ceil(seconds x 25), computed on whole 48 kHz samples."""
    return math.ceil(round(seconds * 48_000) / 1920)


def mtimes(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in folder.glob("*.safetensors")}


@dataclass
class Encoded:
    """One encoded dataset shared by the tests of this module."""

    bundle: AceStepBundle
    audio: Path
    output: Path
    config: EncodeConfig
    result: EncodeResult
    events: list[EncodeEvent]


@pytest.fixture(scope="module")
def turbo(tiny_root: Path) -> AceStepBundle:
    return open_checkpoint(tiny_root, TURBO)


@pytest.fixture(scope="module")
def encoded(turbo: AceStepBundle, tmp_path_factory: pytest.TempPathFactory) -> Encoded:
    audio = tmp_path_factory.mktemp("songs") / "my songs"
    build_songs(audio)
    output = audio / "encoded"
    write_audio(output / "stray.wav", 1.0, 48_000, 2, "noise")  # audio inside the output folder is never a song
    config = EncodeConfig(str(audio), str(output), min_seconds=0.5, custom_tag="sstag", tag_position="append")
    events: list[EncodeEvent] = []
    result = encode_dataset(turbo, config, callback=events.append)
    return Encoded(turbo, audio, output, config, result, events)


def clip_of(encoded: Encoded, source: str) -> tuple[dict, dict[str, torch.Tensor]]:
    manifest = json.loads((encoded.output / "manifest.json").read_text(encoding="utf-8"))
    record = next(clip for clip in manifest["clips"] if clip["source"] == source)
    return record, load_clip(encoded.output / record["file"])


# --- encoding -------------------------------------------------------------------------------------


def test_every_usable_song_becomes_one_clip_with_training_shapes(encoded: Encoded) -> None:
    silence = encoded.bundle.silence_latent()[0]
    manifest = read_manifest(encoded.output)
    assert sorted(clip.source for clip in manifest.clips) == sorted(USABLE)
    for record in manifest.clips:
        clip = load_clip(encoded.output / record.file)
        assert record.duration == pytest.approx(expected_seconds(record.source), abs=0.06)
        frames = frames_for(record.duration)
        assert clip["target_latents"].shape == (frames, 64)
        assert torch.isfinite(clip["target_latents"]).all() and clip["target_latents"].std() > 0
        assert torch.equal(clip["attention_mask"], torch.ones(frames))
        assert clip["encoder_hidden_states"].shape == (512 + 1 + 256, 64)
        mask = clip["encoder_attention_mask"]
        valid = int(mask.sum())
        assert 0 < valid < mask.shape[0] and torch.equal(mask, (torch.arange(mask.shape[0]) < valid).float())
        assert clip["context_latents"].shape == (frames, 128)
        assert torch.equal(clip["context_latents"][:, :64], silence[:frames])
        assert torch.equal(clip["context_latents"][:, 64:], torch.ones(frames, 64))
        assert record.shapes == {key: list(clip[key].shape) for key in CLIP_KEYS}
        assert record.source_hash == hashlib.sha256((encoded.audio / record.source).read_bytes()).hexdigest()
    assert manifest.model_variant == "turbo" and manifest.model_name == TURBO
    assert manifest.encoder_fingerprint == encoder_fingerprint(encoded.bundle, encoded.config)
    on_disk = sorted(path.name for path in encoded.output.iterdir())
    assert on_disk == sorted([*(clip.file for clip in manifest.clips), "manifest.json", "stray.wav"])


def test_metadata_comes_from_every_sidecar_form_with_the_trigger_tag_appended(encoded: Encoded) -> None:
    sine, _ = clip_of(encoded, "sine.wav")
    assert (sine["caption"], sine["lyrics"]) == ("warm sine pad, sstag", "[Verse]\nla la la")
    assert sine["metadata"] | {"sidecar": ""} == {
        "bpm": 120, "keyscale": "C Major", "timesignature": "4", "language": "", "genre": "cinematic",
        "custom_tag": "sstag", "is_instrumental": False, "sidecar": "",
    }
    noise, _ = clip_of(encoded, "noise.flac")
    assert (noise["caption"], noise["lyrics"]) == ("dark techno, sstag", "[Chorus]\nhey")
    surround, _ = clip_of(encoded, "sub/surround.ogg")
    assert surround["caption"] == "orchestral score, sstag"
    assert (surround["metadata"]["bpm"], surround["metadata"]["genre"]) == (90, "cinematic")
    named, _ = clip_of(encoded, UNICODE_NAME)
    assert (named["caption"], named["lyrics"]) == ("Ünïcode song ♪, sstag", "[Instrumental]")
    assert named["metadata"]["sidecar"] == "labels.json + file name"
    assert any("sine.wav" in warning and "sine.txt:5" in warning for warning in encoded.result.warnings)


def test_bad_files_are_rejected_with_reasons_in_result_and_manifest(encoded: Encoded) -> None:
    reported = {item.source: item.reason for item in encoded.result.rejected}
    assert sorted(reported) == sorted(REJECTED)
    for source, word in REJECTED.items():
        assert word in reported[source]
    stored = json.loads((encoded.output / "manifest.json").read_text(encoding="utf-8"))["rejected"]
    assert {item["source"]: item["reason"] for item in stored} == reported


def test_progress_reports_every_file_once_in_order(encoded: Encoded) -> None:
    names = sorted([*USABLE, *REJECTED], key=str.casefold)
    assert [(event.index, event.total, event.file) for event in encoded.events] == [
        (index, len(names), name) for index, name in enumerate(names, 1)
    ]
    for event in encoded.events:
        if event.file in REJECTED:
            assert event.status == "rejected" and event.reason
        else:
            assert event.status == "encoded"
            assert event.seconds == pytest.approx(expected_seconds(event.file), abs=0.06)


def test_rerun_skips_unchanged_songs_without_rewriting_a_file(encoded: Encoded) -> None:
    before = mtimes(encoded.output)
    events: list[EncodeEvent] = []
    result = encode_dataset(encoded.bundle, encoded.config, callback=events.append)
    assert (result.encoded, result.skipped) == (0, len(USABLE))
    assert mtimes(encoded.output) == before
    assert {event.file for event in events if event.status == "skipped"} == set(USABLE)
    assert sorted(item.source for item in result.rejected) == sorted(REJECTED)
    assert read_manifest(encoded.output).clips == encoded.result.manifest.clips
    assert load_dataset_json(encoded.audio).path.name == "labels.json"  # our manifest.json below it is not a dataset JSON


def test_changed_audio_or_sidecar_reencodes_only_that_song(encoded: Encoded, tmp_path: Path) -> None:
    audio = tmp_path / "copy"
    shutil.copytree(encoded.audio, audio)
    output = audio / "encoded"
    config = dataclasses.replace(encoded.config, audio_dir=str(audio), output_dir=str(output))
    old = {clip.source: clip for clip in read_manifest(output).clips}
    before = mtimes(output)
    write_audio(audio / "noise.flac", 0.6, 44_100, 2, "noise", seed=7)
    (audio / "sub" / "labels.json").write_text(
        json.dumps({"metadata": {"genre": "cinematic"}, "samples": [{"audio_path": "surround.ogg", "caption": "solo cello", "bpm": 90}]}),
        encoding="utf-8",
    )
    (audio / UNICODE_NAME).unlink()
    result = encode_dataset(encoded.bundle, config)
    assert (result.encoded, result.skipped) == (2, 1)
    new = {clip.source: clip for clip in read_manifest(output).clips}
    assert sorted(new) == ["noise.flac", "sine.wav", "sub/surround.ogg"]
    assert not (output / old[UNICODE_NAME].file).exists()
    assert new["noise.flac"].source_hash != old["noise.flac"].source_hash
    assert new["sub/surround.ogg"].caption == "solo cello, sstag"
    after = mtimes(output)
    assert after[new["sine.wav"].file] == before[old["sine.wav"].file]
    for source in ("noise.flac", "sub/surround.ogg"):
        assert after[new[source].file] != before[old[source].file]
    (audio / "sine.txt").write_text("caption: changed but not reached\n", encoding="utf-8")
    stopped = encode_dataset(encoded.bundle, config, should_stop=lambda: True)
    assert stopped.stopped and stopped.encoded == 0
    assert list(new.values()) == read_manifest(output).clips and mtimes(output) == after


def test_a_dataset_of_another_variant_or_tool_is_refused(encoded: Encoded, tiny_root: Path, tmp_path: Path) -> None:
    before = (encoded.output / "manifest.json").read_bytes()
    with pytest.raises(DatasetError, match=r"encoded for 'turbo', not 'base'"):
        encode_dataset(open_checkpoint(tiny_root, "acestep-v15-base"), encoded.config)
    assert (encoded.output / "manifest.json").read_bytes() == before
    foreign = tmp_path / "ace-step tensors"
    foreign.mkdir()
    (foreign / "manifest.json").write_text(json.dumps({"metadata": {}, "samples": [], "num_samples": 0}))
    with pytest.raises(DatasetError, match="another tool"):
        encode_dataset(encoded.bundle, dataclasses.replace(encoded.config, output_dir=str(foreign)))


def test_fingerprint_follows_the_settings_that_shape_tensors(encoded: Encoded) -> None:
    fingerprint = encoder_fingerprint(encoded.bundle, encoded.config)
    same = dataclasses.replace(encoded.config, output_dir="elsewhere", min_seconds=0.7, vae_chunk_seconds=10)
    assert encoder_fingerprint(encoded.bundle, same) == fingerprint
    for change in ({"custom_tag": "other"}, {"normalize": "peak"}, {"max_duration": 30.0}, {"tag_position": "prepend"}):
        settings = {"custom_tag": "sstag", "tag_position": "append"} | change
        assert encoder_fingerprint(encoded.bundle, EncodeConfig("a", "b", **settings)) != fingerprint


def test_nothing_usable_is_an_error_naming_each_file(turbo: AceStepBundle, tmp_path: Path) -> None:
    build_songs(tmp_path / "all")
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in REJECTED:
        shutil.copy(tmp_path / "all" / name, bad / name)
    with pytest.raises(DatasetError) as error:
        encode_dataset(turbo, EncodeConfig(str(bad), str(tmp_path / "out"), min_seconds=0.5))
    for name, word in REJECTED.items():
        assert f"{name}: " in str(error.value) and word in str(error.value)
    assert not (tmp_path / "out" / "manifest.json").exists()
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "notes.txt").write_text("no audio here")
    with pytest.raises(DatasetError, match="No audio files"):
        encode_dataset(turbo, EncodeConfig(str(tmp_path / "none"), str(tmp_path / "out")))


def test_chunks_carry_their_own_duration_in_the_caption_prompt(turbo: AceStepBundle, tmp_path: Path) -> None:
    write_audio(tmp_path / "songs" / "loop.wav", 2.2, 48_000, 2, "speech")
    (tmp_path / "songs" / "loop.txt").write_text("caption: bright harmonic loop\nbpm: 100\n", encoding="utf-8")
    config = EncodeConfig(
        str(tmp_path / "songs"), str(tmp_path / "out"), max_duration=1.0, min_seconds=0.5, normalize="peak", custom_tag="sks"
    )
    result = encode_dataset(turbo, config)
    clips = result.manifest.clips
    assert [(c.chunk_index, c.chunk_count, c.offset_seconds, c.duration) for c in clips] == [(0, 2, 0.0, 1.0), (1, 2, 1.0, 1.0)]
    assert [load_clip(tmp_path / "out" / c.file)["target_latents"].shape[0] for c in clips] == [25, 25]
    assert len({c.file for c in clips}) == 2  # the 0.2 s tail is shorter than min_seconds and dropped

    text, encoder = turbo.text_encoder(), turbo.dit(parts=("encoder",)).encoder

    def condition(seconds: int) -> torch.Tensor:
        prompt = TRAINING_PROMPT.format(caption="sks, bright harmonic loop", bpm=100, seconds=seconds)
        captions, caption_mask = text.encode_captions([prompt], "training")
        lyrics, lyric_mask = text.encode_lyrics(["[Instrumental]"], "training")
        with torch.no_grad():
            states, _ = encoder(captions, caption_mask, lyrics, lyric_mask, torch.zeros(1, 1, 64), torch.zeros(1, dtype=torch.long))
        return states[0]

    stored = load_clip(tmp_path / "out" / clips[0].file)["encoder_hidden_states"]
    torch.testing.assert_close(stored, condition(1), rtol=0, atol=1e-5)
    assert (stored - condition(2)).abs().max() > 1e-3  # the whole song's duration would give another condition


# --- the training Dataset -------------------------------------------------------------------------


def window_start(full: torch.Tensor, crop: torch.Tensor) -> int:
    starts = [s for s in range(full.shape[0] - crop.shape[0] + 1) if torch.equal(full[s : s + crop.shape[0]], crop)]
    assert len(starts) == 1
    return starts[0]


def test_crops_are_windows_fixed_by_seed_epoch_and_index(encoded: Encoded) -> None:
    dataset = ClipDataset(encoded.output, max_frames=10, seed=3)
    full = ClipDataset(encoded.output)
    assert len(dataset) == len(USABLE)
    starts = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        again = ClipDataset(encoded.output, max_frames=10, seed=3)
        again.set_epoch(epoch)
        for index in range(len(dataset)):
            crop, whole = dataset[index], full[index]
            assert all(torch.equal(crop[key], again[index][key]) for key in CLIP_KEYS)
            assert crop["target_latents"].shape == (10, 64) and crop["context_latents"].shape == (10, 128)
            start = window_start(whole["context_latents"], crop["context_latents"])
            assert torch.equal(crop["target_latents"], whole["target_latents"][start : start + 10])
            assert torch.equal(crop["encoder_hidden_states"], whole["encoder_hidden_states"])
            starts.add((index, start))
    assert len(starts) > len(dataset) * 2  # crops move between epochs
    other = ClipDataset(encoded.output, max_frames=10, seed=4)
    assert any(not torch.equal(other[i]["target_latents"], dataset[i]["target_latents"]) for i in range(len(dataset)))
    assert ClipDataset(encoded.output, max_frames=100)[0]["target_latents"].shape[0] < 100


def test_collate_pads_frames_and_tokens_and_masks_the_padding() -> None:
    def clip(frames: int, tokens: int, value: float) -> dict[str, torch.Tensor]:
        return {
            "target_latents": torch.full((frames, 64), value),
            "attention_mask": torch.ones(frames),
            "encoder_hidden_states": torch.full((tokens, 8), value),
            "encoder_attention_mask": torch.ones(tokens),
            "context_latents": torch.full((frames, 128), value),
        }

    batch = collate_clips([clip(5, 3, 1.0), clip(9, 7, 2.0), clip(2, 7, 3.0)])
    assert batch["target_latents"].shape == (3, 9, 64) and batch["context_latents"].shape == (3, 9, 128)
    assert batch["encoder_hidden_states"].shape == (3, 7, 8)
    assert batch["attention_mask"].sum(dim=1).tolist() == [5, 9, 2]
    assert batch["encoder_attention_mask"].sum(dim=1).tolist() == [3, 7, 7]
    assert batch["target_latents"][0, 5:].abs().sum() == 0 and batch["target_latents"][0, :5].eq(1).all()
    assert batch["encoder_hidden_states"][0, 3:].abs().sum() == 0 and batch["context_latents"][2, :2].eq(3).all()


def test_loader_follows_the_epoch_order(encoded: Encoded) -> None:
    order = epoch_order(len(USABLE), seed=5, epoch=2)
    assert sorted(order) == list(range(len(USABLE))) and order == epoch_order(len(USABLE), 5, 2)
    assert len({tuple(epoch_order(len(USABLE), 5, epoch)) for epoch in range(8)}) > 1
    dataset = ClipDataset(encoded.output)
    batches = list(make_loader(dataset, order, batch_size=2))
    assert [batch["target_latents"].shape[0] for batch in batches] == [2, 2]
    for row, index in enumerate(order):
        batch = batches[row // 2]
        frames = int(batch["attention_mask"][row % 2].sum())
        assert torch.equal(batch["target_latents"][row % 2, :frames], dataset[index]["target_latents"])


# --- reading other tools' tensor folders --------------------------------------------------------------


def side_step_clip(frames: int, tokens: int, batched: bool = False) -> dict:
    """A clip as Side-Step's preprocessing saves it: bf16 tensors plus a metadata dict of plain values."""
    generator = torch.Generator().manual_seed(frames)
    tensors = {
        "target_latents": torch.randn(frames, 64, generator=generator),
        "attention_mask": torch.ones(frames),
        "encoder_hidden_states": torch.randn(tokens, 64, generator=generator),
        "encoder_attention_mask": (torch.arange(tokens) < tokens - 2).float(),
        "context_latents": torch.randn(frames, 128, generator=generator),
    }
    tensors = {key: (value[None] if batched else value).to(torch.bfloat16) for key, value in tensors.items()}
    metadata = {"audio_path": "/music/a.wav", "caption": "x", "bpm": 120, "duration": 3.5, "is_instrumental": True, "genre": None}
    return tensors | {"metadata": metadata, "encoder_hidden_states_genre": torch.zeros(2, 64)}


def test_side_step_pt_files_train_unchanged(tmp_path: Path) -> None:
    written = {"a.pt": side_step_clip(40, 20), "b.pt": side_step_clip(30, 24, batched=True)}
    for name, content in written.items():
        torch.save(content, tmp_path / name)
    dataset = ClipDataset(tmp_path, max_frames=32)
    assert dataset.manifest is None and [path.name for path in dataset.files] == ["a.pt", "b.pt"]
    first, second = dataset[0], dataset[1]
    assert first["target_latents"].shape == (32, 64) and first["target_latents"].dtype == torch.float32
    start = window_start(written["a.pt"]["target_latents"].float(), first["target_latents"])
    assert torch.equal(first["context_latents"], written["a.pt"]["context_latents"].float()[start : start + 32])
    assert torch.equal(second["encoder_hidden_states"], written["b.pt"]["encoder_hidden_states"][0].float())
    assert second["encoder_attention_mask"].shape == (24,)
    batch = collate_clips([first, second])
    assert batch["encoder_attention_mask"].sum(dim=1).tolist() == [18, 22]


def test_a_pt_file_with_arbitrary_objects_is_not_unpickled(tmp_path: Path) -> None:
    content = side_step_clip(10, 4)
    content["metadata"]["audio_path"] = Path("/music/a.wav")
    torch.save(content, tmp_path / "unsafe.pt")
    with pytest.raises(DatasetError, match="unsafe.pt.*not loaded for safety"):
        ClipDataset(tmp_path)[0]


def test_ace_step_manifest_sample_paths_are_followed(tmp_path: Path) -> None:
    folder = tmp_path / "ace tensors"
    (folder / "nested").mkdir(parents=True)
    for name, frames in (("nested/one.pt", 11), ("two.pt", 12), ("three.pt", 13), ("unlisted.pt", 14)):
        torch.save(side_step_clip(frames, 6), folder / name)
    samples = ["nested/one.pt", str(folder / "two.pt"), "/old/machine/datasets/three.pt"]
    (folder / "manifest.json").write_text(json.dumps({"metadata": {"name": "x"}, "samples": samples, "num_samples": 3}))
    dataset = ClipDataset(folder)
    assert read_manifest(folder) is None and dataset.manifest is None
    assert dataset.files == [folder / "nested" / "one.pt", folder / "two.pt", folder / "three.pt"]
    assert [dataset[i]["target_latents"].shape[0] for i in range(3)] == [11, 12, 13]
    samples.append("gone.pt")
    (folder / "manifest.json").write_text(json.dumps({"metadata": {}, "samples": samples, "num_samples": 4}))
    with pytest.raises(DatasetError, match="gone.pt"):
        ClipDataset(folder)


# --- memory ---------------------------------------------------------------------------------------

MEMORY_PROBE = textwrap.dedent(
    """
    import json, os, resource, sys
    from pathlib import Path
    from sidestep.bundle import open_checkpoint
    from sidestep.dataset.encode import EncodeConfig, encode_dataset

    root, songs, output = sys.argv[1:4]
    bundle = open_checkpoint(root, "acestep-v15-turbo")
    bundle.dit(parts=("encoder",))
    bundle.vae()
    bundle.text_encoder()
    bundle.silence_latent()
    before = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    encode_dataset(bundle, EncodeConfig(songs, output, vae_chunk_seconds=2.0, vae_overlap_seconds=0.3))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"before": before, "peak": peak}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident set size from /proc")
def test_encoding_memory_does_not_grow_with_song_length(tiny_root: Path, tmp_path: Path) -> None:
    """Peak memory of encoding a song (decode + tiled VAE + condition) over a fresh process's loaded-model baseline.

    Tiles are 2 s here (30 s by default) so that a 4-tile song can be compared with a 1-tile song in seconds on the
    tiny VAE, whose 2 s activations (~50 MB per tensor) still dwarf the waveform (2.3 MB for 6 s). glibc's malloc
    is pinned to its documented initial mmap threshold: its adaptive threshold would otherwise keep the freed
    1-32 MB tensors of each small tile in a fragmented heap, which measures the allocator instead of the encoder
    (full-size 30 s tiles allocate hundreds of MB per tensor, which glibc always maps and unmaps).
    """
    increments = {}
    for seconds in (2, 6):
        songs = write_audio(tmp_path / f"{seconds}s" / "song.wav", seconds, 48_000, 2, "noise").parent
        probe = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(tiny_root), str(songs), str(tmp_path / f"out{seconds}")],
            capture_output=True, text=True, check=True, env=os.environ | {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)},
        )
        measured = json.loads(probe.stdout.strip().splitlines()[-1])
        increments[seconds] = measured["peak"] - measured["before"]
    assert increments[2] > 100 * 2**20  # the activations of one 2 s tile are what is measured
    assert increments[6] <= 1.3 * increments[2], increments

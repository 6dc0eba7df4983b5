"""The run's home (sidestep/training/run.py): host random state untouched, the manifest read once, reuse, resume and
the trainer's reusable step — on the tiny model tree."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from sidestep.adapters.config import LoraConfig
from sidestep.adapters.training import attach_trainable_adapter
from sidestep.bundle import open_checkpoint
from sidestep.dataset import tensors
from sidestep.dataset.encode import EncodeConfig, encode_dataset
from sidestep.dataset.loader import collate_clips, dataset_index, epoch_order
from sidestep.dataset.tensors import load_clip
from sidestep.errors import TrainingError
from sidestep.training.config import TrainConfig
from sidestep.training.layout import RunLayout
from sidestep.training.loop import TrainingStep, update
from sidestep.training.objective import draw_cfg_keep_mask
from sidestep.training.optim import build_optimizer
from sidestep.training.run import DORA_NOT_EXPORTED, TrainingRun, resume_checkpoint
from tests.test_training import LORA, adapter_tensors, make_trainer, write_song

MODEL = "acestep-v15-turbo"


@pytest.fixture(scope="module")
def encoded(tiny_root, tmp_path_factory):
    """Two short songs encoded for the tiny turbo model (the encoder's result, manifest included)."""
    songs, folder = tmp_path_factory.mktemp("songs"), tmp_path_factory.mktemp("data")
    write_song(songs / "low hum.wav", 1.0, 220.0)
    write_song(songs / "bright.wav", 1.6, 880.0)
    return encode_dataset(open_checkpoint(tiny_root, MODEL), EncodeConfig(str(songs), str(folder)))


def host_states() -> tuple:
    """Every process-wide generator state a host such as ComfyUI relies on."""
    numpy_state = np.random.get_state()
    cuda = [state.tolist() for state in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
    return torch.get_rng_state().tolist(), cuda, random.getstate(), numpy_state[0], numpy_state[1].tolist(), numpy_state[2:]


def test_a_training_leaves_the_host_generators_as_they_were_and_stays_deterministic(tiny_root, encoded, tmp_path):
    torch.manual_seed(2024)
    random.seed("host")
    np.random.seed(99)
    torch.rand(3), random.random(), np.random.rand()  # a host mid-way through its streams
    before = host_states()
    make_trainer(tiny_root, encoded.output_dir, tmp_path / "one", epochs=2).run()
    assert host_states() == before
    make_trainer(tiny_root, encoded.output_dir, tmp_path / "two", epochs=2).run()
    assert host_states() == before
    first, second = adapter_tensors(tmp_path / "one" / "final"), adapter_tensors(tmp_path / "two" / "final")
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


@pytest.fixture
def counted(monkeypatch) -> dict[str, int]:
    """How often manifest.json is read and a manifest hashed (the real functions still run)."""
    counts = {"reads": 0, "hashes": 0}
    read, content_hash = tensors._manifest_json, tensors.Manifest.content_hash

    def counting_read(folder):
        counts["reads"] += 1
        return read(folder)

    def counting_hash(manifest):
        counts["hashes"] += 1
        return content_hash(manifest)

    monkeypatch.setattr(tensors, "_manifest_json", counting_read)
    monkeypatch.setattr(tensors.Manifest, "content_hash", counting_hash)
    return counts


def train_config(out: Path, **settings) -> TrainConfig:
    # fp32 precision: the exact comparisons stay exact where auto computes in bf16 (CUDA, CPUs with bf16 units).
    defaults = dict(epochs=3, learning_rate=3e-3, scheduler="constant", seed=7, save_every=1, max_latent_frames=None, precision="fp32")
    return TrainConfig(output_dir=str(out), **{**defaults, **settings})


def test_one_run_reads_the_manifest_once_and_hashes_it_once(tiny_root, encoded, tmp_path, counted):
    bundle = open_checkpoint(tiny_root, MODEL)
    run = TrainingRun(bundle, encoded.output_dir, LORA, train_config(tmp_path / "run"))
    assert run.finished() is None
    outcome = run.train()
    assert outcome.result.status == "finished" and outcome.result.epochs_completed == 3  # three saves
    assert counted == {"reads": 1, "hashes": 1}
    assert outcome.metadata.dataset_hash == run.dataset.content_hash != ""

    # Encode Dataset hands its manifest on: a run from that reads manifest.json not at all.
    index = dataset_index(encoded.output_dir, encoded.manifest)
    assert index.content_hash == run.dataset.content_hash and index.files == run.dataset.files
    counted.update(reads=0, hashes=0)
    again = TrainingRun(bundle, index, LORA, train_config(tmp_path / "again", epochs=2)).train()
    assert again.result.status == "finished" and counted == {"reads": 0, "hashes": 0}


def test_a_finished_run_is_reused_and_changed_settings_train_again(tiny_root, encoded, tmp_path):
    bundle = open_checkpoint(tiny_root, MODEL)
    index = dataset_index(encoded.output_dir, encoded.manifest)
    out = tmp_path / "run"
    trained = TrainingRun(bundle, index, LORA, train_config(out, epochs=1)).train(comfy_lora=tmp_path / "export.safetensors")
    assert trained.comfy_lora == tmp_path / "export.safetensors" and trained.comfy_lora.is_file()
    export_time = trained.comfy_lora.stat().st_mtime_ns

    same = TrainingRun(bundle, index, LORA, train_config(out, epochs=1, resume_from="latest", log_dir=str(tmp_path / "tb")))
    reused = same.finished(tmp_path / "export.safetensors")
    assert reused is not None and reused.result is None and reused.adapter_dir == RunLayout(out).final
    assert reused.metadata == trained.metadata and reused.comfy_lora.stat().st_mtime_ns == export_time
    for changed in (train_config(out, epochs=2), train_config(out, epochs=1, learning_rate=1e-3)):
        assert TrainingRun(bundle, index, LORA, changed).finished() is None
    assert TrainingRun(bundle, index, LoraConfig(rank=8, alpha=8), train_config(out, epochs=1)).finished() is None

    dora = LoraConfig(rank=4, alpha=8, use_dora=True)
    outcome = TrainingRun(bundle, index, dora, train_config(tmp_path / "dora", epochs=1)).train(
        comfy_lora=tmp_path / "dora.safetensors"
    )
    assert outcome.comfy_lora is None and outcome.export_note == DORA_NOT_EXPORTED
    assert not (tmp_path / "dora.safetensors").exists()


def test_resume_latest_continues_from_the_newest_checkpoint(tiny_root, encoded, tmp_path):
    bundle = open_checkpoint(tiny_root, MODEL)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=f"`resume_from` is 'latest' but {out} has no checkpoints/epoch_N folder yet"):
        TrainingRun(bundle, encoded.output_dir, LORA, train_config(out, resume_from="latest")).trainer()
    TrainingRun(bundle, encoded.output_dir, LORA, train_config(out, epochs=2)).train()
    events = []
    resumed = TrainingRun(bundle, encoded.output_dir, LORA, train_config(out, epochs=3, resume_from="latest")).train(events.append)
    assert resumed.result.epochs_completed == 3
    assert any(event.message.startswith(f"resumed from {RunLayout(out).checkpoint(2)} (epoch 2") for event in events)
    assert resume_checkpoint("checkpoints/epoch_1", out) == str(RunLayout(out).checkpoint(1))
    assert resume_checkpoint(str(tmp_path / "elsewhere"), out) == str(tmp_path / "elsewhere")
    assert resume_checkpoint("  ", out) is None


def test_the_reusable_step_is_the_trainers_step(tiny_root, encoded, tmp_path):
    """A step taken with TrainingStep + update from the trainer's own draws gives the trainer's weights exactly."""
    trainer = make_trainer(tiny_root, encoded.output_dir, tmp_path / "run", epochs=1, batch_size=2)
    clips = trainer.dataset.index.files
    trainer.run()
    assert trainer.progress.global_step == 1
    reference = make_trainer(tiny_root, encoded.output_dir, tmp_path / "copy", epochs=1, batch_size=2)
    torch.manual_seed(reference.config.seed)  # the trainer's seeding before it attaches the adapter
    reference.decoder.requires_grad_(False)
    adapter = attach_trainable_adapter(reference.decoder, LORA)
    reference.decoder.gradient_checkpointing = reference.config.gradient_checkpointing
    reference.decoder.train()
    optimizer = build_optimizer(adapter.parameters(), reference.config, reference.device)[0]
    batch = collate_clips([load_clip(clips[i]) for i in epoch_order(len(clips), reference.config.seed, 0)])
    size = batch["target_latents"].shape[0]
    draw_cfg_keep_mask(size, reference.cfg_ratio, reference.generator)
    noise = torch.randn(batch["target_latents"].shape, generator=reference.generator)
    t = reference._draw_timesteps(size)
    TrainingStep(reference.decoder).backward(batch, noise, t)
    update(adapter.parameters(), optimizer, None, reference.config.max_grad_norm)
    trained = trainer.adapter.state_dict()
    stepped = adapter.state_dict()
    assert trained.keys() == stepped.keys()
    for key in trained:
        assert torch.equal(trained[key], stepped[key]), key

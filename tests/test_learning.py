"""Is it learning? On the tiny model: fitting one clip lowers its fixed-noise validation loss by a clear margin for every
adapter kind, and the same check fails when learning is broken (learning rate zero, adapter gradients cut). The
validation loss is a pure function of the weights (same across runs and after resume), leaves the training draws
untouched, and picks the best checkpoint; the weight average (EMA) resumes bit-exactly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file

from sidestep.adapters.config import LokrConfig, LoraConfig
from sidestep.adapters.files import load_adapter, resolve_adapter_path
from sidestep.bundle import open_checkpoint
from sidestep.dataset.encode import EncodeConfig, encode_dataset
from sidestep.dataset.loader import DatasetIndex
from sidestep.dataset.tensors import ClipRecord, Manifest
from sidestep.demo import TINY_TARGETS
from sidestep.errors import TrainingError
from sidestep.model import TRAINING_PARTS, AceStepConditionGenerationModel
from sidestep.training.config import TrainConfig
from sidestep.training.loop import RunIdentity, Trainer
from sidestep.training.validation import split_dataset, timestep_grid
from sidestep.variants import TURBO_TIMESTEPS_SHIFT3

MODEL = "acestep-v15-turbo"
STEPS = 12
MARGIN = 0.05  # fitting one clip must lower its validation loss by at least this share in STEPS steps (the
# validation loss is deterministic: a broken run changes it by exactly 0; measured: LoRA -29 %, DoRA -29 %, LoKR -10 %)
# The layers the tiny demo adapts (attention alone barely moves the tiny random model's output; see sidestep/demo.py).
WHERE = {"target": "custom", "custom_modules": TINY_TARGETS}
KINDS = {
    "lora": LoraConfig(rank=8, alpha=16, **WHERE),
    "dora": LoraConfig(rank=8, alpha=16, use_dora=True, **WHERE),
    "lokr": LokrConfig(linear_dim=8, linear_alpha=8, factor=4, **WHERE),
}


@pytest.fixture(scope="module")
def one_clip(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset of one short song (a pulsing tone), encoded with the tiny turbo model."""
    songs = tmp_path_factory.mktemp("one-song")
    t = np.arange(int(1.2 * 48_000)) / 48_000
    tone = 0.3 * np.sin(2 * np.pi * 330.0 * t) * (1 + 0.5 * np.sin(2 * np.pi * 4 * t))
    soundfile.write(songs / "tone.wav", np.stack([tone, tone], axis=1), 48_000)
    (songs / "tone.txt").write_text("caption: a pulsing tone\n", encoding="utf-8")
    folder = tmp_path_factory.mktemp("one-clip")
    encode_dataset(open_checkpoint(tiny_root, MODEL), EncodeConfig(str(songs), str(folder)))
    return folder


def trainer(root: Path, dataset: Path, out: Path, adapter=KINDS["lora"], kind: type = Trainer, **settings) -> Trainer:
    values = dict(epochs=STEPS, learning_rate=1e-2, scheduler="constant", seed=3, save_every=STEPS, validation_every=STEPS,
                  max_latent_frames=None, weight_decay=0.0)
    config = TrainConfig(output_dir=str(out), **{**values, **settings})
    model = AceStepConditionGenerationModel.from_pretrained(root / MODEL, parts=TRAINING_PARTS)
    return kind(model, dataset, adapter, config, RunIdentity(variant="turbo", base="turbo", model_name=MODEL))


def learned(trainer: Trainer) -> tuple[bool, str]:
    """The learning check: the validation loss after training is at least MARGIN below the one before."""
    history = trainer.progress.validation
    (first_step, before), (last_step, after) = history[0], history[-1]
    assert (first_step, last_step) == (0, STEPS), history
    return after <= (1 - MARGIN) * before, f"validation loss {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("kind", list(KINDS))
def test_fitting_one_clip_lowers_its_validation_loss(tiny_root, one_clip, tmp_path, kind):
    run = trainer(tiny_root, one_clip, tmp_path, KINDS[kind])
    run.run()
    ok, detail = learned(run)
    assert ok, detail


def test_the_check_fails_when_the_learning_rate_is_zero(tiny_root, one_clip, tmp_path):
    run = trainer(tiny_root, one_clip, tmp_path)
    run.config.learning_rate = 0.0  # what a broken schedule or optimiser set-up amounts to
    run.run()
    ok, detail = learned(run)
    assert not ok, detail


class CutGradients(Trainer):
    """A trainer whose adapter gets no gradient (what a detached adapter or a frozen parameter amounts to)."""

    def _backward(self, batch, share):
        loss = super()._backward(batch, share)
        for parameter in self.adapter.parameters():
            parameter.grad.zero_()
        return loss


def test_the_check_fails_when_adapter_gradients_are_cut(tiny_root, one_clip, tmp_path):
    run = trainer(tiny_root, one_clip, tmp_path, kind=CutGradients)
    run.run()
    ok, detail = learned(run)
    assert not ok, detail


def test_validation_loss_is_the_same_for_the_same_weights_across_runs_and_after_resume(tiny_root, one_clip, tmp_path):
    """Two identical runs and a run stopped after 3 epochs and resumed all score every epoch identically; the weight
    average resumes bit-exactly too; and validating changes nothing in training (same weights with validation off)."""
    settings = dict(epochs=6, save_every=1, validation_every=0, ema_decay=0.9)
    first = trainer(tiny_root, one_clip, tmp_path / "a", **settings)
    first.run()
    again = trainer(tiny_root, one_clip, tmp_path / "b", **settings)
    again.run()
    assert first.progress.validation == again.progress.validation
    assert len(first.progress.validation) == 7 and len({loss for _, loss in first.progress.validation}) > 1

    part = trainer(tiny_root, one_clip, tmp_path / "c", **{**settings, "epochs": 3})
    part.run()
    resumed = trainer(tiny_root, one_clip, tmp_path / "c", **settings, resume_from=str(tmp_path / "c/checkpoints/epoch_3"))
    resumed.run()
    assert resumed.progress.validation == first.progress.validation
    for name in ("final", "checkpoints/epoch_6"):
        expected, got = (load_file(str(resolve_adapter_path(root / name))) for root in (tmp_path / "a", tmp_path / "c"))
        assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected), name

    quiet = trainer(tiny_root, one_clip, tmp_path / "d", **{**settings, "validation": "none", "ema_decay": 0.0})
    quiet.run()
    loud = trainer(tiny_root, one_clip, tmp_path / "e", **{**settings, "ema_decay": 0.0})
    loud.run()
    assert quiet.progress.validation == [] and len(loud.progress.validation) == 7
    assert all(torch.equal(a, b) for a, b in zip(quiet.adapter.parameters(), loud.adapter.parameters()))


def test_the_best_checkpoint_is_recorded_and_can_become_final(tiny_root, one_clip, tmp_path):
    """A learning rate far too high makes the loss climb after a while: the best epoch is an early one, final/ holds
    its weights with the metadata saying so, and the events and result report it."""
    events = []
    run = trainer(tiny_root, one_clip, tmp_path, epochs=6, save_every=1, validation_every=0, learning_rate=0.3,
                  final_from_best=True)
    run.callback = events.append
    result = run.run()
    losses = dict(run.progress.checkpoint_losses)
    best = min(losses, key=losses.get)
    assert result.best_epoch == best and result.best_val_loss == losses[best]
    final = load_adapter(tmp_path / "final")
    record = final.metadata.validation
    assert record["best_epoch"] == record["weights_epoch"] == best and record["loss"] == losses[best]
    assert [point[0] for point in record["history"]] == [0, 1, 2, 3, 4, 5, 6]
    saved = load_file(str(resolve_adapter_path(tmp_path / f"checkpoints/epoch_{best}")))
    written = load_file(str(resolve_adapter_path(tmp_path / "final")))
    assert all(torch.equal(saved[key], written[key]) for key in saved)
    assert events[-1].kind == "finished" and events[-1].best_epoch == best and f"best epoch {best}" in events[-1].message
    assert sum(event.kind == "validation" for event in events) == 7
    if best != 6:
        assert f"final/ holds epoch {best}" in events[-1].message


def _index(songs: list[str], chunks: int = 1) -> DatasetIndex:
    clips = [ClipRecord(file=f"{song}_{i}.safetensors", source=f"/music/{song}.flac", source_hash="", duration=1.0,
                        caption="", lyrics="", chunk_index=i, chunk_count=chunks)
             for song in songs for i in range(chunks)]
    manifest = Manifest(model_variant="turbo", encoder_fingerprint="", clips=clips)
    return DatasetIndex(Path("/data"), manifest, tuple(Path("/data") / clip.file for clip in clips), "hash")


def test_the_split_holds_whole_songs_out_or_uses_a_reference():
    config = lambda validation=None: TrainConfig(output_dir="x", validation=validation)  # noqa: E731
    few = split_dataset(_index(["a", "b", "c"]), config())
    assert not few.held_out and few.scored == few.training and "reference" in few.describe()
    many = _index([f"song{i:02d}" for i in range(30)], chunks=2)
    auto = split_dataset(many, config())
    assert auto.held_out and len(auto.songs) == 3 and len(auto.scored) == 6 and len(auto.training) == 54
    assert not set(auto.scored) & set(auto.training) and auto == split_dataset(many, config())
    assert len(split_dataset(many, config("0.5")).songs) == 15
    named = split_dataset(many, config("song03, song07"))
    assert named.songs == ("song03", "song07") and {p.name for p in named.scored} == {
        "song03_0.safetensors", "song03_1.safetensors", "song07_0.safetensors", "song07_1.safetensors"}
    assert split_dataset(many, config("none")).scored == ()
    with pytest.raises(TrainingError, match="does not hold"):
        split_dataset(many, config("nosuchsong"))
    with pytest.raises(TrainingError, match="between 0 and 1"):
        config("1.5")
    with pytest.raises(TrainingError, match="leaving none"):
        split_dataset(_index(["a"]), config("a"))


def test_the_timestep_grid_is_turbos_or_quantiles_of_the_training_distribution():
    assert timestep_grid("discrete", -0.4, 1.0, True) == TURBO_TIMESTEPS_SHIFT3
    for two_draws in (True, False):
        grid = timestep_grid("continuous", -0.4, 1.0, two_draws)
        draws = torch.sigmoid(torch.randn(2 if two_draws else 1, 200_000, generator=torch.Generator().manual_seed(0)) - 0.4)
        draws = draws.max(dim=0).values
        for position, t in enumerate(sorted(grid)):
            assert float((draws < t).float().mean()) == pytest.approx((position + 0.5) / len(grid), abs=0.01)
        assert len(grid) == 8 and all(0 < t < 1 for t in grid) and not math.isclose(grid[0], grid[-1])

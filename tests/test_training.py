"""Train Adapter: variant-correct objective, outputs, stop/resume, NaN handling — on the tiny model tree."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors import safe_open

from sidestep.adapters.apply import apply_adapters
from sidestep.adapters.config import LokrConfig, LoraConfig
from sidestep.adapters.metadata import AdapterMetadata
from sidestep.adapters.files import load_adapter
from sidestep.bundle import open_checkpoint
from sidestep.dataset.encode import EncodeConfig, encode_dataset
from sidestep.dataset.loader import collate_clips
from sidestep.dataset.tensors import load_clip, read_manifest, save_clip, write_manifest
from sidestep.errors import TrainingError
from sidestep.model import TRAINING_PARTS, AceStepConditionGenerationModel
from sidestep.variants import TURBO_TIMESTEPS_SHIFT3
from sidestep.training.config import TrainConfig
from sidestep.training.events import StopSignal
from sidestep.training.loop import RunIdentity, Trainer
from sidestep.training.objective import flow_matching_loss
from sidestep.training.checkpoints import STATE_FILE, latest_checkpoint

LORA = LoraConfig(rank=4, alpha=8)
LOKR = LokrConfig(linear_dim=4, linear_alpha=4, factor=4)


def write_song(path: Path, seconds: float, frequency: float) -> None:
    t = np.arange(int(seconds * 48_000)) / 48_000
    tone = 0.3 * np.sin(2 * np.pi * frequency * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    soundfile.write(path, np.stack([tone, 0.8 * tone], axis=1), 48_000)


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("songs")
    write_song(folder / "low hum.wav", 1.0, 220.0)
    write_song(folder / "bright.wav", 1.6, 880.0)
    (folder / "bright.txt").write_text("caption: bright synth\nbpm: 120\nlyrics:\n[Verse]\nla la\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def datasets(tiny_root, songs, tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name in ("acestep-v15-turbo", "acestep-v15-base"):
        folder = tmp_path_factory.mktemp(f"data-{name}")
        encode_dataset(open_checkpoint(tiny_root, name), EncodeConfig(str(songs), str(folder)))
        out[name] = folder
    return out


def load_model(root: Path, name: str) -> AceStepConditionGenerationModel:
    return AceStepConditionGenerationModel.from_pretrained(root / name, parts=TRAINING_PARTS)


def make_trainer(root, dataset, out, name="acestep-v15-turbo", adapter=LORA, callback=None, stop=None, **settings):
    base = "turbo" if "turbo" in name else "base"
    # fp32 precision: the exact comparisons stay exact where auto computes in bf16 (CUDA, CPUs with bf16 units).
    defaults = dict(epochs=3, learning_rate=3e-3, scheduler="constant", seed=7, save_every=1, max_latent_frames=None, precision="fp32")
    config = TrainConfig(output_dir=str(out), **{**defaults, **settings})
    identity = RunIdentity(variant=base, base=base, model_name=name)
    return Trainer(load_model(root, name), dataset, adapter, config, identity, callback=callback, stop=stop)


def fixed_loss(model, dataset: Path) -> float:
    """The loss over the whole dataset for fixed draws (noise, t) — comparable before and after training."""
    generator = torch.Generator().manual_seed(123)
    clips = [load_clip(path) for path in sorted(dataset.glob("*.safetensors"))]
    total = 0.0
    with torch.no_grad():
        for clip in clips:
            batch = collate_clips([clip])
            noise = torch.randn(batch["target_latents"].shape, generator=generator)
            for t in (0.3, 0.6, 0.9):
                total += float(flow_matching_loss(model.decoder, batch, noise, torch.tensor([t])))
    return total


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    file = next(path for path in folder.iterdir() if path.suffix == ".safetensors")
    with safe_open(str(file), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


@pytest.mark.parametrize(
    "name, adapter", [("acestep-v15-turbo", LORA), ("acestep-v15-base", LOKR)], ids=["lora-turbo", "lokr-base"]
)
def test_loss_goes_down(tiny_root, datasets, tmp_path, name, adapter):
    trainer = make_trainer(tiny_root, datasets[name], tmp_path, name, adapter, epochs=10, learning_rate=3e-2)
    before = fixed_loss(trainer.model, datasets[name])
    result = trainer.run()
    after = fixed_loss(trainer.model, datasets[name])
    assert result.status == "finished"
    assert after < 0.97 * before, f"fixed-draw loss {before:.4f} -> {after:.4f}"


def test_turbo_draws_only_the_eight_discrete_timesteps(tiny_root, datasets, tmp_path):
    trainer = make_trainer(tiny_root, datasets["acestep-v15-turbo"], tmp_path)
    draws = trainer._draw_timesteps(4000)
    assert set(draws.tolist()) == {float(torch.tensor(t, dtype=torch.float32)) for t in TURBO_TIMESTEPS_SHIFT3}
    assert trainer.cfg_ratio == 0.0


@pytest.mark.parametrize("draws, power", [("max_of_two", 2), ("single", 1)])
def test_base_draws_logit_normal_timesteps(tiny_root, datasets, tmp_path, draws, power):
    trainer = make_trainer(tiny_root, datasets["acestep-v15-base"], tmp_path, "acestep-v15-base", continuous_draws=draws)
    t = trainer._draw_timesteps(20_000).double().sort().values
    mu, sigma = trainer.model.config.timestep_mu, trainer.model.config.timestep_sigma
    logit = torch.log(t / (1 - t))
    expected_cdf = (0.5 * (1 + torch.erf((logit - mu) / (sigma * math.sqrt(2))))) ** power
    empirical_cdf = torch.arange(1, t.numel() + 1, dtype=torch.float64) / t.numel()
    assert float((expected_cdf - empirical_cdf).abs().max()) < 0.015
    assert len(set(t.tolist())) > 19_000


def test_cfg_dropout_rate_matches(tiny_root, datasets, tmp_path):
    trainer = make_trainer(tiny_root, datasets["acestep-v15-base"], tmp_path, "acestep-v15-base")
    assert trainer.cfg_ratio == 0.15
    from sidestep.training.objective import draw_cfg_keep_mask

    kept = draw_cfg_keep_mask(20_000, trainer.cfg_ratio, trainer.generator)
    assert abs(float(1 - kept.mean()) - 0.15) < 0.01
    overridden = make_trainer(tiny_root, datasets["acestep-v15-base"], tmp_path, "acestep-v15-base", cfg_ratio=0.4)
    assert overridden.cfg_ratio == 0.4


def test_padded_frames_do_not_change_the_loss(tiny_root, datasets):
    model = load_model(tiny_root, "acestep-v15-turbo")
    clips = [load_clip(p) for p in sorted(datasets["acestep-v15-turbo"].glob("*.safetensors"))]
    short, long = sorted(clips, key=lambda clip: clip["target_latents"].shape[0])
    assert short["target_latents"].shape[0] < long["target_latents"].shape[0]
    noise_short = torch.randn(1, *short["target_latents"].shape, generator=torch.Generator().manual_seed(1))
    alone = flow_matching_loss(model.decoder, collate_clips([short]), noise_short, torch.tensor([0.6]))
    batch = collate_clips([short, long])
    frames = short["target_latents"].shape[0]
    batch["target_latents"][0, frames:] = 1e3  # garbage in the padding must not matter
    batch["context_latents"][0, frames:] = -1e3
    noise = torch.randn(batch["target_latents"].shape, generator=torch.Generator().manual_seed(2))
    noise[0, :frames] = noise_short[0]
    from sidestep.training.objective import masked_mse, noisy_latents  # per-sample check of row 0

    padded_mask = batch["attention_mask"]
    assert float(padded_mask[0].sum()) == frames
    both = flow_matching_loss(model.decoder, batch, noise, torch.tensor([0.6, 0.6]))
    assert torch.isfinite(both)
    x_t = noisy_latents(batch["target_latents"], noise, torch.tensor([0.6, 0.6])) * padded_mask[:, :, None]
    velocity, _ = model.decoder(
        hidden_states=x_t, timestep=torch.tensor([0.6, 0.6]), timestep_r=torch.tensor([0.6, 0.6]),
        attention_mask=padded_mask, encoder_hidden_states=batch["encoder_hidden_states"],
        encoder_attention_mask=batch["encoder_attention_mask"],
        context_latents=batch["context_latents"] * padded_mask[:, :, None], key_padding_mask=padded_mask,
    )
    _, per_sample = masked_mse(velocity, noise - batch["target_latents"], padded_mask)
    torch.testing.assert_close(per_sample[0], alone, rtol=1e-5, atol=1e-6)


def test_outputs_and_metadata_match_the_layout(tiny_root, datasets, tmp_path):
    events = []
    trainer = make_trainer(tiny_root, datasets["acestep-v15-turbo"], tmp_path, callback=events.append, epochs=2)
    result = trainer.run()
    assert result.adapter_dir == tmp_path / "final"
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    for epoch in (1, 2):
        names = {p.name for p in (tmp_path / "checkpoints" / f"epoch_{epoch}").iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", STATE_FILE} <= names
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "runs").iterdir())
    with safe_open(str(tmp_path / "final" / "adapter_model.safetensors"), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["ss_variant"] == "turbo" and meta["ss_base"] == "turbo"
    assert (float(meta["ss_shift"]), int(meta["ss_num_inference_steps"])) == (3.0, 8)
    assert meta["ss_dataset_hash"] == read_manifest(datasets["acestep-v15-turbo"]).content_hash()
    assert json.loads(meta["ss_adapter_config"])["rank"] == 4
    assert AdapterMetadata.from_header(meta) == trainer.metadata()
    kinds = [event.kind for event in events]
    assert kinds.count("step") == result.global_step and kinds[-1] == "finished"
    step = next(event for event in events if event.kind == "step")
    assert step.total_steps == 2 * trainer.steps_per_epoch() and step.loss is not None and step.lr is not None


def test_final_adapter_reproduces_the_trained_forward(tiny_root, datasets, tmp_path):
    trainer = make_trainer(tiny_root, datasets["acestep-v15-turbo"], tmp_path, epochs=2)
    trainer.run()
    batch = collate_clips([load_clip(next(datasets["acestep-v15-turbo"].glob("*.safetensors")))])
    noise = torch.randn(batch["target_latents"].shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        trained = flow_matching_loss(trainer.model.decoder, batch, noise, torch.tensor([0.5]))
        fresh = load_model(tiny_root, "acestep-v15-turbo")
        plain = flow_matching_loss(fresh.decoder, batch, noise, torch.tensor([0.5]))
        with apply_adapters(fresh, [(load_adapter(tmp_path / "final"), 1.0)]):
            loaded = flow_matching_loss(fresh.decoder, batch, noise, torch.tensor([0.5]))
    torch.testing.assert_close(loaded, trained, rtol=1e-5, atol=1e-6)
    assert abs(float(plain - trained)) > 1e-4


def test_stop_saves_and_resume_matches_an_uninterrupted_run(tiny_root, datasets, tmp_path):
    data = datasets["acestep-v15-base"]
    uninterrupted = make_trainer(tiny_root, data, tmp_path / "full", "acestep-v15-base", LOKR, epochs=3)
    uninterrupted.run()

    stop = StopSignal()

    def stop_at_third_step(event):
        if event.kind == "step" and event.step == 3:
            stop.request("test stop")

    stopped = make_trainer(
        tiny_root, data, tmp_path / "part", "acestep-v15-base", LOKR, epochs=3, callback=stop_at_third_step, stop=stop
    )
    result = stopped.run()
    assert result.status == "stopped" and result.global_step == 3
    assert (result.last_checkpoint / STATE_FILE).is_file()
    assert (tmp_path / "part" / "final" / "lokr_weights.safetensors").is_file()

    resumed = make_trainer(
        tiny_root, data, tmp_path / "part", "acestep-v15-base", LOKR, epochs=3, resume_from=str(result.last_checkpoint / STATE_FILE)
    )
    final = resumed.run()
    assert final.status == "finished" and final.global_step == uninterrupted.progress.global_step
    expected = adapter_tensors(tmp_path / "full" / "final")
    got = adapter_tensors(tmp_path / "part" / "final")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_resume_refuses_a_different_adapter_shape(tiny_root, datasets, tmp_path):
    make_trainer(tiny_root, datasets["acestep-v15-turbo"], tmp_path, epochs=1).run()
    bigger = LoraConfig(rank=8, alpha=8)
    trainer = make_trainer(
        tiny_root, datasets["acestep-v15-turbo"], tmp_path, adapter=bigger, resume_from=str(tmp_path / "checkpoints" / "epoch_1")
    )
    with pytest.raises(TrainingError, match="rank 4"):
        trainer.run()


def test_resume_from_a_folder_without_state_fails_loudly(tiny_root, datasets, tmp_path):
    trainer = make_trainer(tiny_root, datasets["acestep-v15-turbo"], tmp_path, resume_from=str(tmp_path))
    with pytest.raises(TrainingError, match="holds no training_state.pt"):
        trainer.run()


def test_non_finite_losses_stop_with_a_checkpoint(tiny_root, datasets, tmp_path):
    broken = tmp_path / "broken"
    source = datasets["acestep-v15-turbo"]
    manifest = read_manifest(source)
    for record in manifest.clips:
        clip = load_clip(source / record.file)
        clip["target_latents"][0, 0] = float("nan")
        save_clip(broken / record.file, clip)
    write_manifest(broken, manifest)
    trainer = make_trainer(tiny_root, broken, tmp_path / "out", epochs=5, nan_patience=3)
    with pytest.raises(TrainingError, match="not finite for 3 steps"):
        trainer.run()
    assert (tmp_path / "out" / "checkpoints" / "epoch_1" / STATE_FILE).is_file()


def test_dataset_from_another_variant_is_refused(tiny_root, datasets, tmp_path):
    with pytest.raises(TrainingError, match="encoded with the 'base' model"):
        make_trainer(tiny_root, datasets["acestep-v15-base"], tmp_path, "acestep-v15-turbo")


def cli_train(tiny_root: Path, dataset: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "sidestep", "train", "--checkpoint-dir", str(tiny_root), "--model-variant", "turbo",
        "--dataset-dir", str(dataset), "--output-dir", str(out), "--rank", "4", "--alpha", "8", "--epochs", "12",
        "--save-every", "1", "--lr", "3e-3", "--scheduler", "cosine", "--seed", "11", "--max-latent-frames", "0", *extra,
    ]


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tiny_root, datasets, tmp_path):
    data = datasets["acestep-v15-turbo"]
    subprocess.run(cli_train(tiny_root, data, tmp_path / "full"), check=True, capture_output=True, timeout=300)
    victim = subprocess.Popen(cli_train(tiny_root, data, tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while latest_checkpoint(tmp_path / "killed") is None or latest_checkpoint(tmp_path / "killed").name == "epoch_1":
        assert victim.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "killed" / "final").exists()
    checkpoint = latest_checkpoint(tmp_path / "killed")
    assert checkpoint is not None and int(checkpoint.name.split("_")[1]) < 12
    resumed = subprocess.run(
        cli_train(tiny_root, data, tmp_path / "killed", "--resume-from", str(checkpoint)),
        capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    expected = adapter_tensors(tmp_path / "full" / "final")
    got = adapter_tensors(tmp_path / "killed" / "final")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_two_process_gloo_run_trains_in_sync_and_only_rank0_writes(tiny_root, datasets, tmp_path):
    out = tmp_path / "run"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(port), "-m", "sidestep"]
    command = launcher + cli_train(tiny_root, datasets["acestep-v15-turbo"], out, "--epochs", "2")[3:]
    scratch = tmp_path / "tmp"  # torchelastic leaves a folder of its own in the temporary folder: keep it in tmp_path
    scratch.mkdir()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(scratch)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((out / "runs").glob("events.out.tfevents*"))) == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_1", "epoch_2"]
    saved = load_adapter(out / "final")
    assert saved.metadata.global_step == 2  # 2 clips over 2 ranks: one optimiser step per epoch
    assert done.stdout.count("finished: adapter in") == 1


def test_a_side_step_pt_dataset_trains_unchanged(tiny_root, datasets, tmp_path):
    """Side-Step writes one torch.save dict per clip (bf16 tensors, a metadata dict) and no manifest."""
    folder = tmp_path / "side_step_tensors"
    folder.mkdir()
    for index, path in enumerate(sorted(datasets["acestep-v15-turbo"].glob("*.safetensors"))):
        clip = {key: value.to(torch.bfloat16) for key, value in load_clip(path).items()}
        clip["metadata"] = {"caption": f"clip {index}", "duration": 1, "bpm": None, "is_instrumental": True}
        torch.save(clip, folder / f"song_{index}.pt")
    result = make_trainer(tiny_root, folder, tmp_path / "out", epochs=2).run()
    assert result.status == "finished" and result.global_step == 4
    assert (tmp_path / "out" / "final" / "adapter_model.safetensors").is_file()


def test_a_resumed_optimiser_keeps_this_runs_update_kernel_and_the_saved_state():
    from sidestep.training.optim import build_optimizer, load_optimizer_state

    weight = torch.nn.Parameter(torch.ones(4, 3))
    weight.grad = torch.full((4, 3), 0.5)
    elsewhere = torch.optim.AdamW([weight], lr=1e-3, fused=False)  # as a run on another device saved it
    elsewhere.step()
    saved = elsewhere.state_dict()
    optimizer, _ = build_optimizer([weight], TrainConfig(output_dir=""), torch.device("cpu"))
    assert optimizer.param_groups[0]["fused"] is True  # the CPU's one-kernel update
    load_optimizer_state(optimizer, saved)
    assert optimizer.param_groups[0]["fused"] is True
    assert optimizer.param_groups[0]["lr"] == 1e-3 and torch.equal(optimizer.state[weight]["exp_avg"], saved["state"][0]["exp_avg"])
    optimizer.load_state_dict(saved)  # what a plain load does: the saving run's choice
    assert not optimizer.param_groups[0]["fused"]

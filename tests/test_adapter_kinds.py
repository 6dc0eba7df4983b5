"""Every adapter kind on the registry, on the tiny real model: LoHA and OFT train, save in the Side-Step layout, resume
bit-exact, load, sample and export; each kind's own file metadata is checked; and each kind learns (fitting one clip
lowers its fixed-draw loss, and does not at a learning rate of ~0)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sidestep.adapters.apply import apply_adapters
from sidestep.adapters.config import AdapterConfig
from sidestep.adapters.export import export_comfy
from sidestep.adapters.files import load_adapter
from sidestep.adapters.kinds import KINDS, kind_named
from sidestep.adapters.kinds.loha import LohaConfig
from sidestep.adapters.kinds.lokr import LokrConfig
from sidestep.adapters.kinds.lora import LoraConfig
from sidestep.adapters.kinds.oft import OftConfig
from sidestep.adapters.metadata import AdapterMetadata
from sidestep.bundle import open_checkpoint
from sidestep.cli import main
from sidestep.dataset.encode import EncodeConfig, encode_dataset
from sidestep.dataset.loader import collate_clips
from sidestep.dataset.tensors import load_clip
from sidestep.errors import AdapterError
from sidestep.model import TRAINING_PARTS, AceStepConditionGenerationModel
from sidestep.training.checkpoints import STATE_FILE
from sidestep.training.config import TrainConfig
from sidestep.training.events import StopSignal
from sidestep.training.loop import RunIdentity, Trainer
from sidestep.training.objective import flow_matching_loss

MODEL = "acestep-v15-turbo"
LOHA = LohaConfig(linear_dim=4, linear_alpha=4, target="attention_mlp")
OFT = OftConfig(block_size=4, target="attention_mlp")
NEW_KINDS = [LOHA, OFT]
# Each kind at a learning rate it trains at (LoKR's zero-initialised Kronecker side moves slowest).
LEARNERS = {
    "lora": (LoraConfig(rank=4, alpha=8), 1e-2),
    "dora": (LoraConfig(rank=4, alpha=8, use_dora=True), 1e-2),
    "lokr": (LokrConfig(linear_dim=4, linear_alpha=4, factor=4), 3e-2),
    "loha": (LOHA, 1e-2),
    "oft": (OFT, 1e-2),
}


@pytest.fixture(scope="module")
def one_clip(tiny_root, tmp_path_factory) -> Path:
    """One encoded 1.2 s clip for the tiny turbo model."""
    songs, data = tmp_path_factory.mktemp("song"), tmp_path_factory.mktemp("one-clip")
    t = np.arange(int(1.2 * 48_000)) / 48_000
    tone = 0.3 * np.sin(2 * np.pi * 330.0 * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))
    soundfile.write(songs / "hum.wav", np.stack([tone, 0.7 * tone], axis=1), 48_000)
    encode_dataset(open_checkpoint(tiny_root, MODEL), EncodeConfig(str(songs), str(data)))
    return data


def trainer(root: Path, dataset: Path, out: Path, adapter: AdapterConfig, stop=None, callback=None, **settings) -> Trainer:
    defaults = dict(epochs=3, learning_rate=3e-3, scheduler="constant", seed=7, save_every=1, max_latent_frames=None)
    config = TrainConfig(output_dir=str(out), **{**defaults, **settings})
    model = AceStepConditionGenerationModel.from_pretrained(root / MODEL, parts=TRAINING_PARTS)
    return Trainer(model, dataset, adapter, config, RunIdentity("turbo", "turbo", MODEL), callback=callback, stop=stop)


def fixed_draw_loss(decoder: torch.nn.Module, dataset: Path) -> float:
    """The clip's loss summed over fixed noises and timesteps (the same draws before and after training)."""
    batch = collate_clips([load_clip(next(dataset.glob("*.safetensors")))])
    generator = torch.Generator().manual_seed(123)
    total = 0.0
    with torch.no_grad():
        for t in (0.3, 0.5, 0.7, 0.9):
            noise = torch.randn(batch["target_latents"].shape, generator=generator)
            total += float(flow_matching_loss(decoder, batch, noise, torch.tensor([t])))
    return total


def weights_of(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    file = next(path for path in folder.iterdir() if path.suffix == ".safetensors")
    with safe_open(str(file), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()


# ---------------------------------------------------------------- the registry


def test_the_registry_lists_every_kind_with_its_settings_and_files() -> None:
    assert list(KINDS) == ["lora", "lokr", "loha", "oft"]
    for name, kind in KINDS.items():
        assert kind.config.kind == name and kind.summary.startswith(f"{name}:")
        assert AdapterConfig.from_dict(kind.config().to_dict()) == kind.config()
    assert len({kind.weights_file for kind in KINDS.values()}) == len(KINDS)
    with pytest.raises(AdapterError, match="lora, lokr, loha, oft"):
        kind_named("boft")


# ---------------------------------------------------------------- LoHA and OFT end to end


@pytest.mark.parametrize("config", NEW_KINDS, ids=lambda config: config.kind)
def test_a_new_kind_trains_saves_loads_and_reproduces_the_trained_forward(tiny_root, one_clip, tmp_path, config) -> None:
    run = trainer(tiny_root, one_clip, tmp_path, config, epochs=2, learning_rate=1e-2)
    result = run.run()
    kind = KINDS[config.kind]
    for folder in (tmp_path / "final", tmp_path / "checkpoints" / "epoch_1", tmp_path / "checkpoints" / "epoch_2"):
        assert (folder / kind.weights_file).is_file(), folder
    assert (tmp_path / "checkpoints" / "epoch_2" / STATE_FILE).is_file()
    tensors, header = weights_of(tmp_path / "final")
    stored = json.loads(header[kind.config_key])
    assert stored["target_modules"] == run.adapter.modules and header["format"] == "pt"
    assert AdapterMetadata.from_header(header).adapter_config == config and result.status == "finished"
    assert all(key.startswith("lycoris_layers_") for key in tensors)

    loaded = load_adapter(tmp_path)
    assert (loaded.kind, len(loaded.modules)) == (config.kind, len(run.adapter.modules))
    trained = fixed_draw_loss(run.model.decoder, one_clip)
    fresh = AceStepConditionGenerationModel.from_pretrained(tiny_root / MODEL, parts=TRAINING_PARTS)
    plain = fixed_draw_loss(fresh.decoder, one_clip)
    with apply_adapters(fresh, [(loaded, 1.0)]):
        applied = fixed_draw_loss(fresh.decoder, one_clip)
    assert applied == pytest.approx(trained, rel=1e-5) and abs(plain - trained) > 1e-4

    exported = load_adapter(export_comfy(loaded, tmp_path / "exported.safetensors"))
    assert exported.kind == config.kind and exported.modules.keys() == loaded.modules.keys()
    layers = dict(fresh.decoder.named_modules())
    for module, weights in loaded.modules.items():
        path = next(name for name in layers if "lycoris_" + name.replace(".", "_") == module)
        base = layers[path].weight.detach().float()
        torch.testing.assert_close(exported.modules[module].delta(base), weights.delta(base))


@pytest.mark.parametrize("config", NEW_KINDS, ids=lambda config: config.kind)
def test_a_new_kind_resumes_bit_exact(tiny_root, one_clip, tmp_path, config) -> None:
    trainer(tiny_root, one_clip, tmp_path / "full", config, epochs=4).run()
    stop = StopSignal()
    stopping = trainer(
        tiny_root, one_clip, tmp_path / "part", config, epochs=4, stop=stop,
        callback=lambda event: stop.request("test") if event.kind == "step" and event.step == 2 else None,
    )
    stopped = stopping.run()
    assert stopped.status == "stopped" and stopped.global_step == 2
    resumed = trainer(tiny_root, one_clip, tmp_path / "part", config, epochs=4, resume_from=str(stopped.last_checkpoint)).run()
    assert resumed.status == "finished"
    expected, _ = weights_of(tmp_path / "full" / "final")
    got, _ = weights_of(tmp_path / "part" / "final")
    assert expected.keys() == got.keys() and all(torch.equal(expected[key], got[key]) for key in expected)


@pytest.mark.parametrize("kind", ["loha", "oft"])
def test_a_new_kind_trains_and_samples_from_the_command_line(tiny_root, one_clip, tmp_path, capsys, kind) -> None:
    flags = {"loha": ["--loha-linear-dim", "2", "--loha-linear-alpha", "2"], "oft": ["--oft-block-size", "4"]}[kind]
    out = tmp_path / "run"
    code = main([
        "train", "--checkpoint-dir", str(tiny_root), "--dataset-dir", str(one_clip), "--output-dir", str(out),
        "--adapter", kind, *flags, "--epochs", "1", "--max-latent-frames", "0",
    ])
    assert code == 0, capsys.readouterr().err
    loaded = load_adapter(out)
    assert loaded.kind == kind and loaded.rank == int(flags[1])
    song = tmp_path / "song.flac"
    code = main([
        "sample", "--checkpoint-dir", str(tiny_root), "--adapter", str(out / "final"), "--caption", "x", "--duration", "1",
        "--out", str(song),
    ])
    assert code == 0 and song.is_file(), capsys.readouterr().err


# ---------------------------------------------------------------- each kind checks its own file


def _lycoris_file(path: Path, tensors: dict[str, torch.Tensor], key: str, stored: object) -> Path:
    save_file(tensors, str(path), metadata={key: stored if isinstance(stored, str) else json.dumps(stored)})
    return path


@pytest.mark.parametrize("stored, words", [
    ({"linear_dim": "abc"}, "linear_dim = 'abc'"),
    ({"linear_dim": 2, "linear_alpha": -1}, "linear_alpha = -1"),
    ("[1, 2]", "not a JSON object"),
])
def test_a_loha_file_with_unusable_metadata_is_refused_naming_it(tmp_path, stored, words) -> None:
    g = torch.Generator().manual_seed(0)
    prefix = "lycoris_layers_0_self_attn_q_proj"
    tensors = {f"{prefix}.hada_w1_a": torch.randn(8, 2, generator=g), f"{prefix}.hada_w1_b": torch.randn(2, 8, generator=g),
               f"{prefix}.hada_w2_a": torch.randn(8, 2, generator=g), f"{prefix}.hada_w2_b": torch.randn(2, 8, generator=g)}
    path = _lycoris_file(tmp_path / "loha_weights.safetensors", tensors, "loha_config", stored)
    with pytest.raises(AdapterError, match=words) as error:
        load_adapter(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("extra, words", [
    ({"rescale": torch.ones(8, 1)}, "rescale"),
    ({"alpha": torch.tensor(0.5)}, "constrained OFT"),
    ({"oft_blocks": torch.zeros(8, 1)}, r"\[blocks, size, size\]"),
])
def test_oft_files_that_comfyui_would_read_differently_are_refused(tmp_path, extra, words) -> None:
    prefix = "lycoris_layers_0_self_attn_q_proj"
    tensors = {f"{prefix}.oft_blocks": torch.zeros(2, 4, 4), **{f"{prefix}.{name}": value for name, value in extra.items()}}
    path = _lycoris_file(tmp_path / "oft_weights.safetensors", tensors, "oft_config", {"block_size": 4})
    with pytest.raises(AdapterError, match=words):
        load_adapter(path)


def test_oft_refuses_layers_with_a_bias(tiny_root) -> None:
    from sidestep.adapters.training import attach_trainable_adapter

    model = AceStepConditionGenerationModel.from_pretrained(tiny_root / MODEL, parts=TRAINING_PARTS)
    with pytest.raises(AdapterError, match="bias"):
        attach_trainable_adapter(model.decoder, OftConfig(block_size=4, target="custom", custom_modules=("condition_embedder",)))


# ---------------------------------------------------------------- every kind learns


def _fit(tiny_root: Path, dataset: Path, out: Path, config: AdapterConfig, learning_rate: float) -> tuple[float, float]:
    """The fixed-draw loss before and after 12 steps on the one clip."""
    run = trainer(tiny_root, dataset, out, config, epochs=12, learning_rate=learning_rate, save_every=12)
    before = fixed_draw_loss(run.model.decoder, dataset)
    run.run()
    return before, fixed_draw_loss(run.model.decoder, dataset)


@pytest.mark.parametrize("name", LEARNERS)
def test_every_kind_lowers_the_loss_it_is_trained_on(tiny_root, one_clip, tmp_path, name) -> None:
    config, learning_rate = LEARNERS[name]
    before, after = _fit(tiny_root, one_clip, tmp_path, config, learning_rate)
    assert after < 0.97 * before, f"{name}: fixed-draw loss {before:.4f} -> {after:.4f}"


def test_the_learning_check_fails_when_nothing_is_learned(tiny_root, one_clip, tmp_path) -> None:
    before, after = _fit(tiny_root, one_clip, tmp_path, LEARNERS["oft"][0], learning_rate=1e-12)
    assert not after < 0.97 * before

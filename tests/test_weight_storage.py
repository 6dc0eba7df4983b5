"""How frozen weights are stored and what the products run in: `--dtype auto` keeps a checkpoint's own dtype, and a
bf16 file trained that way gives exactly what upcasting it at load gives; `auto` precision follows the CPU's bf16 units."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from benchmarks.models import write_dataset
from sidestep import variants
from sidestep.adapters.config import LokrConfig, LoraConfig
from sidestep.bundle import open_checkpoint
from sidestep.model import TRAINING_PARTS, AceStepConditionGenerationModel
from sidestep.model.layers import FP8, Linear, quantize_fp8
from sidestep.model.weights import file_index
from sidestep.tiny_models import BASE_FOLDER, TURBO_FOLDER, make_tiny_checkpoints, tiny_dit, tiny_model_config
from sidestep.training.config import TrainConfig
from sidestep.training.loop import RunIdentity, Trainer
from sidestep.variants import inference_dtype, resolve_dtype, resolve_storage

FRAMES = 60


@pytest.fixture(scope="module")
def bf16_root(tmp_path_factory) -> Path:
    """A tiny checkpoint root whose turbo DiT file stores bf16 weights, as the published ACE-Step 1.5 files do."""
    root = make_tiny_checkpoints(tmp_path_factory.mktemp("bf16") / "checkpoints")
    tiny_dit(tiny_model_config("turbo")).to(torch.bfloat16).save_pretrained(root / TURBO_FOLDER)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"), tiny_model_config("turbo"), FRAMES, clips=2)


def test_auto_keeps_the_checkpoints_dtype_and_a_named_dtype_casts(bf16_root):
    stored = lambda choice: {p.dtype for p in open_checkpoint(bf16_root, TURBO_FOLDER, dtype=resolve_storage(choice)).dit().parameters()}
    assert stored("auto") == {torch.bfloat16}
    assert stored("fp32") == {torch.float32}
    assert {p.dtype for p in open_checkpoint(bf16_root, BASE_FOLDER).dit().parameters()} == {torch.float32}  # an fp32 file


def _train(root: Path, dataset: Path, out: Path, dtype: torch.dtype | None, adapter) -> tuple[list, dict]:
    model = AceStepConditionGenerationModel.from_pretrained(root / TURBO_FOLDER, dtype=dtype, parts=TRAINING_PARTS)
    events = []
    config = TrainConfig(
        output_dir=str(out), epochs=2, save_every=2, scheduler="constant", max_latent_frames=None, seed=3,
        precision="fp32", learning_rate=3e-3,
    )
    trainer = Trainer(model, dataset, adapter, config, RunIdentity("turbo", "turbo"), callback=events.append)
    trainer.run()
    steps = [(event.loss, event.grad_norm) for event in events if event.kind == "step"]
    return steps, {key: value.clone() for key, value in trainer.adapter.state_dict().items()}


@pytest.mark.parametrize("adapter", [LoraConfig(rank=4, alpha=8, target="attention_mlp"), LokrConfig(target="attention")])
def test_a_bf16_file_kept_bf16_trains_exactly_as_upcast_at_load(bf16_root, dataset, tmp_path, adapter):
    """Losses, gradient norms and the trained adapter are bit-identical to today's fp32-storage path."""
    upcast = _train(bf16_root, dataset, tmp_path / "fp32", torch.float32, adapter)
    kept = _train(bf16_root, dataset, tmp_path / "auto", resolve_storage("auto"), adapter)
    assert kept[0] == upcast[0]
    assert kept[1].keys() == upcast[1].keys()
    for key in upcast[1]:
        assert kept[1][key].dtype == torch.float32
        assert torch.equal(kept[1][key], upcast[1][key]), key


@pytest.mark.parametrize("amx, avx512_bf16", [(True, False), (False, True), (False, False)])
def test_auto_precision_is_bf16_on_cuda_and_on_cpus_with_bf16_units(monkeypatch, amx, avx512_bf16) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    variants.cpu_has_bf16_units.cache_clear()
    try:
        units = amx or avx512_bf16
        assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if units else torch.float32)
        assert resolve_dtype("fp32", "cpu") == torch.float32  # a user can still ask for fp32 products
        assert resolve_dtype("bf16", "cpu") == torch.bfloat16
        assert inference_dtype(torch.float32, "cpu") == torch.float32  # fp32 weights always compute in fp32
        assert inference_dtype(torch.bfloat16, "cpu") == resolve_dtype("auto", "cpu")
    finally:
        variants.cpu_has_bf16_units.cache_clear()
    assert resolve_dtype("auto", "cuda") == torch.bfloat16


def _fp8_model(root: Path) -> AceStepConditionGenerationModel:
    """The training DiT over an fp8 base, as a run gets it: the bundle's DiT shared into a module tree of its own."""
    bundle = open_checkpoint(root, TURBO_FOLDER, dtype=resolve_storage("fp8"))
    return bundle.with_own_dit(TRAINING_PARTS).dit(TRAINING_PARTS)


def test_an_fp8_base_stores_the_dits_linear_weights_in_e4m3_with_scales(bf16_root):
    model = _fp8_model(bf16_root)
    reference = AceStepConditionGenerationModel.from_pretrained(bf16_root / TURBO_FOLDER, dtype=None, parts=TRAINING_PARTS)
    linears = {name: module for name, module in model.named_modules() if isinstance(module, Linear)}
    assert linears and all(module.weight.dtype == FP8 and module.weight_scale is not None for module in linears.values())
    others = {name: t.dtype for name, t in model.state_dict().items() if name.removesuffix(".weight") not in linears}
    assert others and set(others.values()) == {torch.bfloat16}  # norms, biases, tables, null_condition_emb as stored
    exact = dict(reference.named_parameters())
    for name, module in linears.items():
        original = exact[f"{name}.weight"].float()
        restored = module.weight.float() * module.weight_scale
        # e4m3 keeps 3 mantissa bits: within 1/16 of each value, or a subnormal step of its row's scale near zero.
        assert (restored - original).abs().le(original.abs() / 16 + module.weight_scale * 2**-9).all(), name


def _fp8_trainer(root: Path, dataset: Path, out: Path, **settings) -> Trainer:
    config = dict(epochs=3, save_every=1, scheduler="constant", max_latent_frames=None, seed=3, precision="fp32")
    config = TrainConfig(output_dir=str(out), learning_rate=3e-3, **{**config, **settings})
    lora = LoraConfig(rank=4, alpha=8, target="attention_mlp")
    return Trainer(_fp8_model(root), dataset, lora, config, RunIdentity("turbo", "turbo"))


def test_an_fp8_base_trains_and_resumes_bit_exact(bf16_root, dataset, tmp_path):
    uninterrupted = _fp8_trainer(bf16_root, dataset, tmp_path / "whole")
    uninterrupted.run()
    _fp8_trainer(bf16_root, dataset, tmp_path / "part", epochs=1).run()
    resumed = _fp8_trainer(bf16_root, dataset, tmp_path / "part", resume_from=str(tmp_path / "part" / "checkpoints" / "epoch_1"))
    resumed.run()
    assert resumed.progress.global_step == uninterrupted.progress.global_step == 6
    expected, got = uninterrupted.adapter.state_dict(), resumed.adapter.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[key], got[key]) for key in expected)
    assert all(value.dtype == torch.float32 for value in got.values())  # the adapter stays fp32 over an fp8 base


def test_an_fp8_base_gives_losses_close_to_the_bf16_base(bf16_root, dataset, tmp_path):
    bf16 = _train(bf16_root, dataset, tmp_path / "bf16", None, LoraConfig(rank=4, alpha=8, target="attention_mlp"))[0]
    events = []
    trainer = _fp8_trainer(bf16_root, dataset, tmp_path / "fp8", epochs=2)
    trainer.callback = events.append
    trainer.run()
    fp8 = [event.loss for event in events if event.kind == "step"]
    assert fp8 != [loss for loss, _ in bf16]  # the fp8 weights are really the ones used
    for (loss, _), quantised in zip(bf16, fp8, strict=True):
        assert abs(quantised - loss) <= 0.02 * loss


def test_a_file_stored_in_fp8_loads_as_fp8_and_trains(tmp_path, dataset):
    """A diffusion-model file whose tensors are fp8 (as ComfyUI's fp8 weight_dtype holds them) stays fp8 under auto."""
    root = make_tiny_checkpoints(tmp_path / "checkpoints")
    tiny_dit(tiny_model_config("turbo")).to(FP8).save_pretrained(root / TURBO_FOLDER)
    model = open_checkpoint(root, TURBO_FOLDER).with_own_dit(TRAINING_PARTS).dit(TRAINING_PARTS)
    assert {p.dtype for p in model.parameters()} == {FP8}
    events = []
    config = TrainConfig(output_dir=str(tmp_path / "run"), epochs=1, save_every=1, max_latent_frames=None, precision="fp32")
    lora = LoraConfig(rank=4, alpha=8, target="attention_mlp")
    Trainer(model, dataset, lora, config, RunIdentity("turbo", "turbo"), callback=events.append).run()
    losses = [event.loss for event in events if event.kind == "step"]
    assert len(losses) == 2 and all(0 < loss < 100 for loss in losses)


# The golden training step under bf16 compute (what auto picks on CUDA and on CPUs with bf16 units), against the official
# fp32 output: measured on this CPU, loss within 1.1e-3 and velocity within 0.0085 (relative L2), bf16 or fp32 storage.
BF16_LOSS_RTOL = 2e-3
BF16_VELOCITY_RTOL = 0.02


@pytest.mark.parametrize("variant", ["turbo", "base"])
def test_the_golden_step_under_bf16_compute_stays_within_its_tolerance(variant):
    from tests.test_model import FIXTURES, vectors, with_prefix
    from sidestep.training.objective import drop_condition, masked_mse, noisy_latents

    model = AceStepConditionGenerationModel.from_pretrained(FIXTURES / variant, dtype=torch.bfloat16, parts=TRAINING_PARTS)
    data = with_prefix(vectors(variant, "training"), "fixed/")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        states = drop_condition(data["in/encoder_hidden_states"], data["in/cfg_keep_mask"], model.null_condition_emb)
        velocity, _ = model.decoder(
            hidden_states=noisy_latents(data["in/x0"], data["in/noise"], data["in/t"]), timestep=data["in/t"],
            timestep_r=data["in/t"], attention_mask=data["in/attention_mask"], encoder_hidden_states=states,
            encoder_attention_mask=data["in/encoder_attention_mask"], context_latents=data["in/context_latents"],
        )
    assert velocity.dtype == torch.bfloat16  # the products really ran in bf16
    loss, _ = masked_mse(velocity.float(), data["in/noise"] - data["in/x0"])
    assert float((loss - data["out/loss"]).abs() / data["out/loss"]) <= BF16_LOSS_RTOL
    drift = (velocity.float() - data["out/velocity"]).norm() / data["out/velocity"].norm()
    assert float(drift) <= BF16_VELOCITY_RTOL


def test_quantising_is_chunk_independent_and_leaves_its_input_alone():
    weight = torch.randn(300, 70) * torch.logspace(-3, 2, 300)[:, None]
    kept = weight.clone()
    whole, whole_scale = quantize_fp8(weight, chunk=weight.numel())
    rows, rows_scale = quantize_fp8(weight, chunk=70 * 7)  # 7 rows at a time, the last chunk short
    assert torch.equal(weight, kept)  # an fp32 input is not divided in place
    assert torch.equal(whole.view(torch.uint8), rows.view(torch.uint8)) and torch.equal(whole_scale, rows_scale)
    assert torch.equal(whole_scale, weight.abs().amax(dim=1, keepdim=True) / torch.finfo(FP8).max)


def _resident_kb(path: Path) -> int:
    """Resident kB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):
            inside = fields[-1] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="page residency is read from Linux's /proc")
def test_reading_an_fp8_base_keeps_no_file_pages_of_the_quantised_weights(tmp_path):
    """safetensors' tensors are views of one mapping of the file, alive while a kept tensor (a norm) is: the pages of
    the weights converted on reading must not stay resident beside their fp8 copies."""
    path = tmp_path / "model.safetensors"
    save_file({"norm.weight": torch.ones(8, dtype=torch.bfloat16), "proj.weight": torch.randn(2048, 1024).bfloat16()}, path)
    tensors = file_index(path).read(["norm.weight", "proj.weight"], None, "cpu", fp8={"proj.weight"})
    assert tensors["proj.weight"].dtype == FP8 and tensors["norm.weight"].dtype == torch.bfloat16
    assert _resident_kb(path) <= 64  # the norm's pages and the edges the weight shares; the weight itself is 4 MB

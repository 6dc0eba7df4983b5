"""Adapters on the tiny real decoder: config and targets, training attach/save/resume, PEFT/LyCORIS interop."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from lycoris import LycorisNetwork, create_lycoris, create_lycoris_from_weights
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from sidestep.adapters.apply import apply_adapters
from sidestep.adapters.config import AdapterConfig, LokrConfig, LoraConfig
from sidestep.adapters.export import export_comfy
from sidestep.adapters.files import load_adapter
from sidestep.adapters.metadata import AdapterMetadata
from sidestep.adapters.targets import target_modules
from sidestep.adapters.training import attach_trainable_adapter
from sidestep.adapters.keys import lycoris_name
from sidestep.errors import AdapterError
from sidestep.model import TRAINING_PARTS, AceStepConditionGenerationModel

FIXTURES = Path(__file__).parent / "fixtures" / "ace15"
INPUTS = ("hidden_states", "timestep", "timestep_r", "attention_mask", "encoder_hidden_states", "encoder_attention_mask", "context_latents")
METADATA = {"variant": "turbo", "base": "turbo", "shift": "3.0", "num_inference_steps": "8"}

LORA = LoraConfig(rank=4, alpha=8)
DORA = LoraConfig(rank=4, alpha=8, use_dora=True, target="attention_mlp")
LOKR_FULL = LokrConfig()
LOKR_LOWRANK = LokrConfig(linear_dim=2, linear_alpha=4)
LOKR_BOTH = LokrConfig(linear_dim=2, linear_alpha=4, decompose_both=True)
LOKR_FACTOR = LokrConfig(linear_dim=2, linear_alpha=3, factor=4, use_tucker=True, target="attention_mlp")
LOKR_WD = LokrConfig(linear_dim=2, linear_alpha=4, weight_decompose=True)
ALL_CONFIGS = [LORA, DORA, LOKR_FULL, LOKR_LOWRANK, LOKR_BOTH, LOKR_FACTOR, LOKR_WD]
IDS = ["lora", "dora", "lokr-full", "lokr-lowrank", "lokr-both", "lokr-factor-tucker", "lokr-wd"]


def fresh_model() -> AceStepConditionGenerationModel:
    """The tiny turbo checkpoint, fp32, decoder only."""
    return AceStepConditionGenerationModel.from_pretrained(FIXTURES / "turbo", parts=TRAINING_PARTS)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices run fastest on one thread (and do not stall when the machine is busy); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inputs() -> list[torch.Tensor]:
    """One real decoder call's inputs, cut to 40 latent frames to keep backward passes fast."""
    vectors = load_file(FIXTURES / "turbo" / "vectors_decoder.safetensors")
    frames = vectors["c0/in/hidden_states"].shape[1]
    return [
        vectors[f"c0/in/{name}"][:, :40] if vectors[f"c0/in/{name}"].dim() > 1 and vectors[f"c0/in/{name}"].shape[1] == frames
        else vectors[f"c0/in/{name}"]
        for name in INPUTS
    ]


def run(decoder: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
    """Decoder velocity without gradients."""
    with torch.no_grad():
        return decoder(*inputs)[0]


def perturb(adapter, seed: int = 0, std: float = 0.1) -> None:
    """Move every trainable parameter away from its (often zero-delta) initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter.parameters():
            if param.requires_grad:
                param.add_(std * torch.randn(param.shape, generator=generator))


def trained(config: AdapterConfig, seed: int = 0):
    """(model, adapter) with a perturbed adapter attached."""
    model = fresh_model()
    adapter = attach_trainable_adapter(model.decoder, config)
    perturb(adapter, seed)
    return model, adapter


# ---------------------------------------------------------------------------------------------- config and targets


def test_presets_select_the_right_modules() -> None:
    decoder = fresh_model().decoder
    attention = [f"layers.{i}.{b}.{p}_proj" for i in range(2) for b in ("self_attn", "cross_attn") for p in "qkvo"]
    mlp = [f"layers.{i}.mlp.{p}_proj" for i in range(2) for p in ("gate", "up", "down")]
    assert sorted(target_modules(decoder, LoraConfig())) == sorted(attention)
    assert sorted(target_modules(decoder, LoraConfig(target="attention_mlp"))) == sorted(attention + mlp)
    assert target_modules(decoder, LoraConfig(target="self_attention")) == [n for n in attention if "self_attn" in n]
    assert target_modules(decoder, LoraConfig(target="cross_attention")) == [n for n in attention if "cross_attn" in n]


def test_custom_targets_accept_short_qualified_and_full_names() -> None:
    decoder = fresh_model().decoder

    def custom(*names: str) -> list[str]:
        return target_modules(decoder, LoraConfig(target="custom", custom_modules=names))

    assert custom("q_proj") == [f"layers.{i}.{b}.q_proj" for i in range(2) for b in ("self_attn", "cross_attn")]
    assert custom("self_attn.v_proj") == ["layers.0.self_attn.v_proj", "layers.1.self_attn.v_proj"]
    assert custom("layers.1.mlp.up_proj", "mlp.up_proj") == ["layers.0.mlp.up_proj", "layers.1.mlp.up_proj"]
    assert custom("condition_embedder") == ["condition_embedder"]
    with pytest.raises(AdapterError) as error:
        custom("q_proj", "qkv", "layers.9.self_attn.q_proj")
    message = str(error.value)
    assert "qkv" in message and "layers.9.self_attn.q_proj" in message
    assert "q_proj" in message and "self_attn.q_proj" in message and "layers 0-1" in message


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"kind": "boft"}, "kind"),
        ({"rank": 0}, "rank"),
        ({"rank": 2.5}, "rank"),
        ({"alpha": -1}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"kind": "lokr", "linear_dim": 0}, "linear_dim"),
        ({"kind": "lokr", "factor": 0}, "factor"),
        ({"use_dora": "yes"}, "use_dora"),
        ({"target": "everything"}, "attention_mlp"),
        ({"target": "custom"}, "custom_modules"),
        ({"custom_modules": ("q_proj",)}, "custom"),
    ],
)
def test_config_rejects_bad_values(settings: dict, words: str) -> None:
    with pytest.raises(AdapterError, match=words):
        AdapterConfig.from_dict(settings)


def test_config_round_trips_and_describes() -> None:
    config = LokrConfig(linear_dim=8, target="custom", custom_modules=("q_proj", "mlp.up_proj"))
    assert AdapterConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert LoraConfig().rank == 64 and LoraConfig().alpha == 128 and LokrConfig().linear_dim == 64
    assert "LoKR dim 8" in config.describe() and "LoRA rank 64" in LoraConfig().describe()
    assert config.shape_signature() != LokrConfig(linear_dim=4, target="custom", custom_modules=("q_proj",)).shape_signature()
    assert LoraConfig(alpha=1).shape_signature() == LoraConfig(alpha=2).shape_signature()
    with pytest.raises(AdapterError, match="lr"):
        AdapterConfig.from_dict({"kind": "lora", "lr": 1e-4})


def test_both_kinds_save_the_settings_dict_they_always_saved() -> None:
    """to_dict keeps every key of both kinds, as the Configure node wrote them before the split (finished runs are
    recognised by it); from_dict dispatches on kind and ignores the other kind's settings."""
    lora = LoraConfig(rank=16, alpha=32.0, dropout=0.1)
    assert json.dumps(lora.to_dict()) == (
        '{"kind": "lora", "rank": 16, "alpha": 32.0, "dropout": 0.1, "use_dora": false, "linear_dim": 16, '
        '"linear_alpha": 32.0, "factor": -1, "decompose_both": false, "use_tucker": false, "weight_decompose": false, '
        '"target": "attention", "custom_modules": []}'
    )
    lokr = LokrConfig(linear_dim=8, linear_alpha=16.0, factor=4, target="custom", custom_modules=("q_proj",))
    assert json.dumps(lokr.to_dict()) == (
        '{"kind": "lokr", "rank": 8, "alpha": 16.0, "dropout": 0.0, "use_dora": false, "linear_dim": 8, '
        '"linear_alpha": 16.0, "factor": 4, "decompose_both": false, "use_tucker": false, "weight_decompose": false, '
        '"target": "custom", "custom_modules": ["q_proj"]}'
    )
    written_by_the_cli = {**lokr.to_dict(), "rank": 64, "alpha": 128, "dropout": 0.0}
    assert AdapterConfig.from_dict(written_by_the_cli) == lokr and AdapterConfig.from_dict(lora.to_dict()) == lora
    assert (LORA.decomposes_weight, DORA.decomposes_weight, LOKR_BOTH.decomposes_weight, LOKR_WD.decomposes_weight) == (
        False, True, False, True,
    )


def test_training_metadata_round_trips_under_namespaced_keys_and_reads_old_keys() -> None:
    record = AdapterMetadata(
        sidestep_version="0.1.0", model_name="acestep-v15-turbo", variant="turbo", base="turbo", shift=3.0,
        num_inference_steps=8, dataset_hash="abc", epochs=0, global_step=12, timestep_mode="discrete", cfg_ratio=0.15,
        adapter_config=LOKR_BOTH, train_config={"epochs": 10, "seed": 42},
    )
    header = record.to_header()
    assert all(key.startswith("ss_") for key in header) and header["ss_epoch"] == "0" and header["ss_shift"] == "3.0"
    assert AdapterMetadata.from_header(header) == record
    old = {key.removeprefix("ss_"): value for key, value in header.items()}
    old["epochs"], old["global_step"] = old.pop("epoch"), old.pop("steps")
    assert AdapterMetadata.from_header(old) == record
    assert AdapterMetadata.from_header({**old, "ss_variant": "xl-turbo"}).variant == "xl-turbo"
    unreadable = AdapterMetadata.from_header({"num_inference_steps": "eight", "adapter_config": "{not json", "base": "sft"})
    assert (unreadable.num_inference_steps, unreadable.adapter_config, unreadable.base) == (None, None, "sft")
    assert len(unreadable.notes) == 2 and "'eight'" in unreadable.notes[0]
    assert AdapterMetadata.from_header({}) == AdapterMetadata() and AdapterMetadata().to_header() == {}


# ---------------------------------------------------------------------------------------------- training side


@pytest.mark.parametrize("config", [LORA, DORA, LOKR_LOWRANK, LOKR_WD], ids=["lora", "dora", "lokr", "lokr-wd"])
def test_attach_freezes_the_base_and_trains_only_the_adapter(config: AdapterConfig, inputs) -> None:
    model = fresh_model()
    decoder = model.decoder
    model.decoder.requires_grad_(True)
    base_params = dict(decoder.named_parameters())
    before = {name: p.detach().clone() for name, p in base_params.items()}
    base_out = run(decoder, inputs)

    adapter = attach_trainable_adapter(decoder, config)
    trainable = adapter.parameters()
    assert trainable and all(p.requires_grad for p in trainable)
    assert not any(p.requires_grad for p in base_params.values())
    adapter_ids = {id(p) for p in trainable}
    assert all(id(p) in adapter_ids for p in decoder.parameters() if p.requires_grad)
    assert torch.allclose(run(decoder, inputs), base_out, atol=1e-6)  # a fresh adapter starts at ΔW = 0

    optimizer = torch.optim.SGD(trainable, lr=0.1)
    perturb(adapter)
    decoder(*inputs)[0].square().mean().backward()
    optimizer.step()
    assert all(torch.equal(p, before[name]) for name, p in base_params.items())


@pytest.mark.parametrize("config", [LORA, LOKR_BOTH], ids=["lora", "lokr"])
def test_a_few_optimizer_steps_change_the_output(config: AdapterConfig, inputs) -> None:
    model = fresh_model()
    base_out = run(model.decoder, inputs)
    adapter = attach_trainable_adapter(model.decoder, config)
    optimizer = torch.optim.Adam(adapter.parameters(), lr=1e-2)
    target = torch.randn(base_out.shape, generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model.decoder(*inputs)[0], target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert (run(model.decoder, inputs) - base_out).abs().max() > 1e-3


@pytest.mark.parametrize("config", [LORA, DORA, LOKR_BOTH, LOKR_WD], ids=["lora", "dora", "lokr", "lokr-wd"])
def test_adapters_train_under_gradient_checkpointing(config: AdapterConfig, inputs) -> None:
    model, adapter = trained(config)
    model.decoder.train()
    grads = []
    for checkpointing in (False, True):
        model.decoder.gradient_checkpointing = checkpointing
        for param in adapter.parameters():
            param.grad = None
        model.decoder(*inputs)[0].square().mean().backward()
        grads.append([param.grad.clone() for param in adapter.parameters()])
    assert all(g.abs().sum() > 0 for g in grads[1])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_lora_layers_match_peft_arithmetic(storage: torch.dtype) -> None:
    """Every LoRA layer runs the fused product; output and gradients equal PEFT's own layer arithmetic."""
    model = fresh_model().to(storage)
    adapter = attach_trainable_adapter(model.decoder, dataclasses.replace(LORA, alpha=6, target="attention_mlp"))
    perturb(adapter)
    layers = [module for module in model.decoder.modules() if isinstance(module, PeftLoraLinear)]
    assert layers and all(type(layer).__name__ == "_FusedLoraLinear" for layer in layers)
    generator = torch.Generator().manual_seed(3)
    for layer in (layers[0], layers[-1]):
        x = torch.randn(2, 7, layer.in_features, generator=generator)
        results = []
        for forward in (layer.forward, lambda x, layer=layer: PeftLoraLinear.forward(layer, x)):
            x_leaf = x.clone().requires_grad_()
            factors = (layer.lora_A["default"].weight, layer.lora_B["default"].weight)
            out = forward(x_leaf)
            grads = torch.autograd.grad(out.square().sum(), (x_leaf, *factors))
            results.append((out, *grads))
        for fused, reference in zip(*results):
            assert fused.shape == reference.shape
            assert (fused - reference).abs().max() <= 1e-5 * reference.abs().max()  # float rounding only


@pytest.mark.parametrize("config", [LORA, DORA], ids=["lora", "dora"])
def test_lora_save_loads_back_with_peft(config: AdapterConfig, tmp_path: Path, inputs) -> None:
    model, adapter = trained(config)
    expected = run(model.decoder, inputs)
    adapter.save(tmp_path, METADATA)

    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["r"] == 4 and saved["lora_alpha"] == 8
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as handle:
        assert METADATA.items() <= handle.metadata().items()
        assert "base_model.model.layers.0.self_attn.q_proj.lora_A.weight" in handle.keys()

    fresh = fresh_model()
    PeftModel.from_pretrained(fresh.decoder, str(tmp_path))
    assert torch.allclose(run(fresh.decoder, inputs), expected, atol=1e-6)


@pytest.mark.parametrize("config", [LOKR_FULL, LOKR_LOWRANK, LOKR_BOTH, LOKR_FACTOR, LOKR_WD], ids=IDS[2:])
def test_lokr_save_loads_back_with_lycoris(config: AdapterConfig, tmp_path: Path, inputs) -> None:
    model, adapter = trained(config)
    expected = run(model.decoder, inputs)
    adapter.save(tmp_path, METADATA)
    weights = tmp_path / "lokr_weights.safetensors"
    with safe_open(str(weights), "pt") as handle:
        header = handle.metadata()
        keys = set(handle.keys())
    assert METADATA.items() <= header.items()
    lokr = json.loads(header["lokr_config"])
    assert lokr["linear_dim"] == config.linear_dim and lokr["target_modules"] == adapter.modules
    assert {key.split(".")[0] for key in keys} == {"lycoris_" + name.replace(".", "_") for name in adapter.modules}

    fresh = fresh_model()
    network, _ = create_lycoris_from_weights(1.0, str(weights), fresh.decoder)
    network.apply_to()
    assert torch.allclose(run(fresh.decoder, inputs), expected, atol=1e-5)


@pytest.mark.parametrize("config", [LORA, DORA, LOKR_BOTH], ids=["lora", "dora", "lokr"])
def test_state_dict_resumes_into_a_fresh_adapter(config: AdapterConfig, inputs) -> None:
    model, adapter = trained(config)
    expected = run(model.decoder, inputs)
    state = {key: value.clone() for key, value in adapter.state_dict().items()}

    resumed_model = fresh_model()
    resumed = attach_trainable_adapter(resumed_model.decoder, config)
    resumed.load_state_dict(state)
    assert torch.equal(run(resumed_model.decoder, inputs), expected)

    first = next(iter(state))
    with pytest.raises(AdapterError, match="missing"):
        resumed.load_state_dict({key: value for key, value in state.items() if key != first})
    bigger = {key: torch.zeros(8, *value.shape[1:]) if value.dim() else value for key, value in state.items()}
    with pytest.raises(AdapterError, match="instead of"):
        resumed.load_state_dict(bigger)


# ---------------------------------------------------------------------------------------------- loading and applying


def probe_delta(layer: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """The ΔW a (wrapped or hooked) Linear layer adds, read off by feeding it the identity."""
    eye = torch.eye(weight.shape[1])
    with torch.no_grad():
        return (layer(eye) - eye @ weight.T).T


def comfy_delta(tensors: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """ΔW as ComfyUI's LoRA / LoKr weight adapters compute it from a single file's tensors (strength 1)."""
    alpha = tensors.get(f"{prefix}.alpha")
    if f"{prefix}.lora_A.weight" in tensors:
        down, up = tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"]
        return (float(alpha) / down.shape[0] if alpha is not None else 1.0) * (up @ down)
    part = lambda name: tensors.get(f"{prefix}.{name}")  # noqa: E731
    dim, w1, w2 = None, part("lokr_w1"), part("lokr_w2")
    if w1 is None:
        dim, w1 = part("lokr_w1_b").shape[0], part("lokr_w1_a") @ part("lokr_w1_b")
    if w2 is None:
        dim, t2 = part("lokr_w2_b").shape[0], part("lokr_t2")
        if t2 is None:
            w2 = part("lokr_w2_a") @ part("lokr_w2_b")
        else:
            w2 = torch.einsum("ijkl,jr,ip->prkl", t2, part("lokr_w2_b"), part("lokr_w2_a")).contiguous()
            w1 = w1[:, :, None, None]
    scale = float(alpha) / dim if alpha is not None and dim is not None else 1.0
    return scale * torch.kron(w1, w2).flatten(1)


def saved(config: AdapterConfig, folder: Path, seed: int = 0, metadata: dict[str, str] = METADATA):
    """Train-attach, perturb and save an adapter; returns (model with it attached, adapter)."""
    model, adapter = trained(config, seed)
    adapter.save(folder, metadata)
    return model, adapter


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=IDS)
def test_loaded_adapter_reproduces_the_trained_decoder(config: AdapterConfig, tmp_path: Path, inputs) -> None:
    model, _ = saved(config, tmp_path)
    expected = run(model.decoder, inputs)
    loaded = load_adapter(tmp_path)
    assert loaded.kind == config.kind and loaded.metadata.variant == "turbo" and loaded.metadata.shift == 3.0
    declared = (config.rank, config.alpha) if config.kind == "lora" else (config.linear_dim, config.linear_alpha)
    assert (loaded.rank, loaded.alpha) == declared

    other = fresh_model()
    base = run(other.decoder, inputs)
    with apply_adapters(other, [(loaded, 1.0)]) as applied:
        assert torch.allclose(run(other.decoder, inputs), expected, atol=1e-5)
    assert applied.warnings == []
    assert torch.equal(run(other.decoder, inputs), base)


def test_strength_scales_the_delta_and_zero_is_the_base(tmp_path: Path, inputs) -> None:
    saved(LORA, tmp_path)
    loaded = load_adapter(tmp_path)
    model = fresh_model()
    layer = model.decoder.layers[0].self_attn.q_proj
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    base, base_out = layer(x).detach(), run(model.decoder, inputs)
    with apply_adapters(model, [(loaded, 0.0)]):
        assert torch.equal(run(model.decoder, inputs), base_out)
    outputs = {}
    for strength in (0.5, 1.0):
        with apply_adapters(model.decoder, [(loaded, strength)]):
            outputs[strength] = (layer(x).detach(), run(model.decoder, inputs))
    assert torch.allclose(outputs[0.5][0] - base, 0.5 * (outputs[1.0][0] - base), atol=1e-6)
    assert (outputs[0.5][1] - outputs[1.0][1]).abs().max() > 1e-4
    assert torch.equal(layer(x), base) and torch.equal(run(model.decoder, inputs), base_out)


def test_stacked_adapters_match_merged_weights(tmp_path: Path, inputs) -> None:
    saved(LORA, tmp_path / "lora", seed=1)
    saved(LOKR_BOTH, tmp_path / "lokr", seed=2)
    pairs = [(load_adapter(tmp_path / "lora"), 1.0), (load_adapter(tmp_path / "lokr"), 0.7)]
    merged = fresh_model()
    paths = {lycoris_name(name): name for name, _ in merged.decoder.named_modules()}
    with torch.no_grad():
        for adapter, strength in pairs:
            for key, weights in adapter.modules.items():
                merged.decoder.get_submodule(paths.get(key, key)).weight += strength * weights.delta()
    expected = run(merged.decoder, inputs)
    model = fresh_model()
    with apply_adapters(model, pairs):
        assert torch.allclose(run(model.decoder, inputs), expected, atol=1e-5)
    with apply_adapters(model, pairs[:1]), apply_adapters(model, pairs[1:]):
        assert torch.allclose(run(model.decoder, inputs), expected, atol=1e-5)


def test_peft_written_folders_load_with_and_without_a_decoder_segment(tmp_path: Path, inputs) -> None:
    model = fresh_model()
    peft_decoder = get_peft_model(model.decoder, PeftLoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    perturb(peft_decoder.base_model)
    expected = run(model.decoder, inputs)
    peft_decoder.save_pretrained(str(tmp_path / "decoder"))

    whole = fresh_model()
    peft_whole = get_peft_model(whole, PeftLoraConfig(r=2, lora_alpha=2, use_rslora=True, target_modules=r".*self_attn\.o_proj"))
    perturb(peft_whole.base_model, seed=5)
    expected_whole = run(whole.decoder, inputs)
    peft_whole.save_pretrained(str(tmp_path / "whole"))
    with safe_open(str(tmp_path / "whole" / "adapter_model.safetensors"), "pt") as handle:
        assert all(key.startswith("base_model.model.decoder.layers.") for key in handle.keys())

    for folder, reference in (("decoder", expected), ("whole", expected_whole)):
        other = fresh_model()
        with apply_adapters(other, [(load_adapter(tmp_path / folder), 1.0)]):
            assert torch.allclose(run(other.decoder, inputs), reference, atol=1e-5)


def test_lycoris_native_files_load(tmp_path: Path, inputs) -> None:
    model = fresh_model()
    names = ["layers.0.self_attn.q_proj", "layers.1.mlp.down_proj"]
    LycorisNetwork.apply_preset({"target_module": [], "target_name": names, "use_fnmatch": True, "lora_prefix": "lycoris"})
    network = create_lycoris(model.decoder, 1.0, linear_dim=2, linear_alpha=8, algo="lokr", decompose_both=True)
    network.apply_to()
    perturb(network)
    expected = run(model.decoder, inputs)
    network.save_weights(str(tmp_path / "native.safetensors"), torch.float32, {"note": "lycoris"})
    loaded = load_adapter(tmp_path / "native.safetensors")
    assert loaded.kind == "lokr" and loaded.header["note"] == "lycoris" and sorted(loaded.modules) == sorted(
        "lycoris_" + name.replace(".", "_") for name in names
    )
    other = fresh_model()
    with apply_adapters(other, [(loaded, 1.0)]):
        assert torch.allclose(run(other.decoder, inputs), expected, atol=1e-5)


@pytest.mark.parametrize("config", [LORA, LOKR_LOWRANK], ids=["lora", "lokr"])
def test_checkpoint_folders_and_training_state_paths_load(config: AdapterConfig, tmp_path: Path) -> None:
    epoch = tmp_path / "run" / "checkpoints" / "epoch_3"
    saved(config, epoch)
    (epoch / "training_state.pt").write_bytes(b"not a pickle: must never be unpickled")
    saved(config, tmp_path / "run" / "final", seed=4)
    from_epoch = load_adapter(epoch)
    from_state = load_adapter(epoch / "training_state.pt")
    from_run = load_adapter(tmp_path / "run")
    weights_file = "adapter_model.safetensors" if config.kind == "lora" else "lokr_weights.safetensors"
    assert from_epoch.source == from_state.source == epoch / weights_file
    assert from_run.source == tmp_path / "run" / "final" / weights_file
    assert load_adapter(epoch / weights_file).modules.keys() == from_epoch.modules.keys()


def _linear_effect(loaded, name: str = "layers.0.self_attn.q_proj") -> torch.Tensor:
    """ΔW that applying `loaded` adds to one Linear layer of a fresh model."""
    model = fresh_model()
    layer = model.decoder.get_submodule(name)
    with apply_adapters(model, [(loaded, 1.0)]):
        return probe_delta(layer, layer.weight)


def test_comfyui_style_single_files_load(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(7)
    down, up = torch.randn(4, 64, generator=g), torch.randn(64, 4, generator=g)
    prefix = "base_model.model.layers.0.self_attn.q_proj"
    files = {
        "alpha": ({f"{prefix}.lora_A.weight": down, f"{prefix}.lora_B.weight": up, f"{prefix}.alpha": torch.tensor(2.0)}, 0.5),
        "no_alpha": ({f"{prefix}.lora_A.weight": down, f"{prefix}.lora_B.weight": up}, 1.0),
        "down_up": ({f"{prefix}.lora_down.weight": down, f"{prefix}.lora_up.weight": up, f"{prefix}.alpha": torch.tensor(8.0)}, 2.0),
        "named_default": ({
            "base_model.model.decoder.layers.0.self_attn.q_proj.lora_A.default.weight": down,
            "base_model.model.decoder.layers.0.self_attn.q_proj.lora_B.default.weight": up,
        }, 1.0),
        "lycoris_lora": ({
            "lycoris_layers_0_self_attn_q_proj.lora_down.weight": down,
            "lycoris_layers_0_self_attn_q_proj.lora_up.weight": up,
            "lycoris_layers_0_self_attn_q_proj.alpha": torch.tensor(1.0),
        }, 0.25),
    }
    for name, (tensors, scale) in files.items():
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
        loaded = load_adapter(tmp_path / f"{name}.safetensors")
        assert loaded.kind == "lora" and loaded.rank == 4, name
        assert torch.allclose(_linear_effect(loaded), scale * up @ down, atol=1e-4), name


def test_comfyui_style_lokr_files_load(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(8)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    w1, w1_a, w1_b = r(8, 8), r(8, 3), r(3, 8)
    w2, w2_a, w2_b, t2 = r(8, 8), r(8, 2), r(2, 8), r(2, 2, 1, 1)
    tucker_a, tucker_b = r(2, 8), r(2, 8)
    cases = {
        "w1_w2ab": ({"lokr_w1": w1, "lokr_w2_a": w2_a, "lokr_w2_b": w2_b, "alpha": torch.tensor(4.0)}, 2.0 * torch.kron(w1, w2_a @ w2_b)),
        "w1ab_w2": ({"lokr_w1_a": w1_a, "lokr_w1_b": w1_b, "lokr_w2": w2, "alpha": torch.tensor(6.0)}, 2.0 * torch.kron(w1_a @ w1_b, w2)),
        "both_ab": ({"lokr_w1_a": w1_a, "lokr_w1_b": w1_b, "lokr_w2_a": w2_a, "lokr_w2_b": w2_b, "alpha": torch.tensor(1.0)}, 0.5 * torch.kron(w1_a @ w1_b, w2_a @ w2_b)),
        "full_alpha_ignored": ({"lokr_w1": w1, "lokr_w2": w2, "alpha": torch.tensor(16.0)}, torch.kron(w1, w2)),
        "no_alpha": ({"lokr_w1": w1, "lokr_w2_a": w2_a, "lokr_w2_b": w2_b}, torch.kron(w1, w2_a @ w2_b)),
        "tucker": (
            {"lokr_w1": w1, "lokr_t2": t2, "lokr_w2_a": tucker_a, "lokr_w2_b": tucker_b, "alpha": torch.tensor(2.0)},
            torch.kron(w1, torch.einsum("ijkl,jr,ip->prkl", t2, tucker_b, tucker_a)[:, :, 0, 0].contiguous()),
        ),
    }
    for name, (parts, expected) in cases.items():
        tensors = {f"lycoris_layers_0_self_attn_q_proj.{part}": value for part, value in parts.items()}
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
        loaded = load_adapter(tmp_path / f"{name}.safetensors")
        assert loaded.kind == "lokr", name
        assert torch.allclose(_linear_effect(loaded), expected, atol=1e-4), name
        assert torch.allclose(comfy_delta(tensors, "lycoris_layers_0_self_attn_q_proj"), expected, atol=1e-5), name


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, str(path))
    return path


def test_bad_adapters_raise_adapter_errors_naming_the_problem(tmp_path: Path) -> None:
    model = fresh_model()
    g = torch.Generator().manual_seed(9)
    down, up = torch.randn(4, 64, generator=g), torch.randn(64, 4, generator=g)
    key = "base_model.model.layers.{}.self_attn.q_proj.{}"
    cases = {
        "odd key": ({key.format(0, "lora_A.weight"): down, key.format(0, "lora_B.weight"): up, key.format(0, "lora_X.weight"): up.clone()}, "lora_X"),
        "rank mismatch": ({key.format(0, "lora_A.weight"): down, key.format(0, "lora_B.weight"): up[:, :3].contiguous()}, "rank mismatch in layers.0.self_attn.q_proj"),
        "half a pair": ({key.format(0, "lora_A.weight"): down}, "layers.0.self_attn.q_proj"),
        "lokr without w2": ({"lycoris_layers_0_self_attn_q_proj.lokr_w1": torch.ones(8, 8)}, "lokr_w2"),
        "lokr rank mismatch": (
            {
                "lycoris_layers_0_self_attn_q_proj.lokr_w1_a": torch.ones(8, 3),
                "lycoris_layers_0_self_attn_q_proj.lokr_w1_b": torch.ones(2, 8),
                "lycoris_layers_0_self_attn_q_proj.lokr_w2": torch.ones(8, 8),
            },
            r"rank mismatch in lycoris_layers_0_self_attn_q_proj: lokr_w1_a \(8, 3\)",
        ),
    }
    for name, (tensors, words) in cases.items():
        with pytest.raises(AdapterError, match=words):
            load_adapter(_write(tmp_path / f"{name}.safetensors", tensors))

    not_here = load_adapter(_write(tmp_path / "layer7.safetensors", {key.format(7, "lora_A.weight"): down, key.format(7, "lora_B.weight"): up}))
    with pytest.raises(AdapterError, match=r"layers\.7\.self_attn\.q_proj"):
        apply_adapters(model, [(not_here, 1.0)])
    assert not any(module._forward_hooks for module in model.decoder.modules())

    with pytest.raises(AdapterError, match="holds no tensors"):
        load_adapter(_write(tmp_path / "empty.safetensors", {}))
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(AdapterError, match="cannot be read"):
        load_adapter(tmp_path / "garbage.safetensors")
    with pytest.raises(AdapterError, match="does not exist"):
        load_adapter(tmp_path / "missing")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty_dir" / "notes.txt").write_text("x")
    with pytest.raises(AdapterError, match="notes.txt"):
        load_adapter(tmp_path / "empty_dir")


def test_adapter_from_a_bigger_model_is_refused(tmp_path: Path) -> None:
    small = fresh_model()
    config = dataclasses.replace(small.config, hidden_size=128, head_dim=32, intermediate_size=256)
    big = AceStepConditionGenerationModel(config, parts=TRAINING_PARTS).init_random_weights()
    attach_trainable_adapter(big.decoder, LORA).save(tmp_path, METADATA)
    with pytest.raises(AdapterError, match=r"different model size") as error:
        apply_adapters(small, [(load_adapter(tmp_path), 1.0)])
    assert "layers.0.cross_attn.q_proj (adapter 128x128, model 64x64)" in str(error.value)


def test_variant_mismatch_is_a_warning(tmp_path: Path, inputs) -> None:
    saved(LORA, tmp_path, metadata={"variant": "base", "base": "base"})
    loaded = load_adapter(tmp_path)
    model = fresh_model()
    with apply_adapters(model, [(loaded, 1.0)]) as applied:
        assert len(applied.warnings) == 1 and "base" in applied.warnings[0] and "turbo" in applied.warnings[0]
    with apply_adapters(model, [(loaded, 1.0)], variant="xl-turbo", base="turbo") as applied:
        assert len(applied.warnings) == 2 and "xl-turbo" in applied.warnings[0]
    with apply_adapters(model, [(loaded, 1.0)], variant="base", base="base") as applied:
        assert applied.warnings == []


def test_creating_a_lokr_adapter_leaves_lycoris_class_settings_as_they_were() -> None:
    names = ("ENABLE_CONV", "TARGET_REPLACE_MODULE", "TARGET_REPLACE_NAME", "MODULE_ALGO_MAP", "NAME_ALGO_MAP",
             "LORA_PREFIX", "USE_FNMATCH", "TARGET_EXCLUDE_NAME")
    before = {name: getattr(LycorisNetwork, name) for name in names}
    snapshot = json.dumps(before, sort_keys=True)
    trained(LOKR_BOTH)
    after = {name: getattr(LycorisNetwork, name) for name in names}
    assert all(after[name] is before[name] for name in names) and json.dumps(after, sort_keys=True) == snapshot


@pytest.mark.parametrize("config", [LORA, DORA, LOKR_FACTOR, LOKR_WD], ids=["lora", "dora", "lokr", "lokr-wd"])
def test_training_hands_over_what_saving_and_loading_give(config: AdapterConfig, tmp_path: Path) -> None:
    _, adapter = saved(config, tmp_path)
    handed, read = adapter.loaded(tmp_path, METADATA), load_adapter(tmp_path)
    assert (handed.kind, handed.rank, handed.alpha, handed.metadata) == (read.kind, read.rank, read.alpha, read.metadata)
    assert handed.modules.keys() == read.modules.keys() and handed.decomposes_weight == config.decomposes_weight
    for key, weights in read.modules.items():
        assert torch.equal(handed.modules[key].delta(), weights.delta()), key
        magnitudes = (handed.modules[key].magnitude, weights.magnitude)
        assert magnitudes == (None, None) or torch.equal(*magnitudes), key
    perturb(adapter, seed=5)
    assert not torch.equal(*(next(iter(a.modules.values())).delta() for a in (handed, adapter.loaded(tmp_path))))


# ---------------------------------------------------------------------------------------------- ComfyUI export


@pytest.mark.parametrize("config", [LORA, LOKR_FULL, LOKR_LOWRANK, LOKR_BOTH, LOKR_FACTOR], ids=["lora", *IDS[2:6]])
def test_export_reproduces_the_trained_delta_under_comfyui_rules(config: AdapterConfig, tmp_path: Path) -> None:
    model, adapter = saved(config, tmp_path / "adapter")
    out = export_comfy(load_adapter(tmp_path / "adapter"), tmp_path / "export.safetensors")
    with safe_open(str(out), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        assert METADATA.items() <= handle.metadata().items()
    fresh = fresh_model()
    original, exported = load_adapter(tmp_path / "adapter"), load_adapter(out)
    for name in adapter.modules:
        prefix = f"base_model.model.{name}" if config.kind == "lora" else "lycoris_" + name.replace(".", "_")
        trained_delta = probe_delta(model.decoder.get_submodule(name), fresh.decoder.get_submodule(name).weight)
        assert torch.allclose(comfy_delta(tensors, prefix), trained_delta, atol=1e-5), name
        key = name if config.kind == "lora" else prefix
        assert torch.allclose(exported.modules[key].delta(), original.modules[key].delta(), atol=1e-6)
    if config.kind == "lora":
        assert float(tensors["base_model.model.layers.0.self_attn.q_proj.alpha"]) == 8.0


def test_export_refuses_dora_and_bad_names(tmp_path: Path) -> None:
    saved(DORA, tmp_path / "dora")
    saved(LOKR_WD, tmp_path / "lokr_wd")
    for folder in ("dora", "lokr_wd"):
        with pytest.raises(AdapterError, match="DoRA"):
            export_comfy(load_adapter(tmp_path / folder), tmp_path / f"{folder}.safetensors")
        assert not (tmp_path / f"{folder}.safetensors").exists()
    with pytest.raises(AdapterError, match=".safetensors"):
        export_comfy(load_adapter(tmp_path / "dora"), tmp_path / "out.ckpt")

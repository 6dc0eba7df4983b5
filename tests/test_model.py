"""Our ACE-Step 1.5 implementation against the official one: golden vectors, key/shape lists, loading errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sidestep.errors import ConfigError, SideStepError, WeightMismatchError
from sidestep.model import TRAINING_PARTS, AceStepConditionGenerationModel, AceStepConfig
from sidestep.training.objective import (
    draw_cfg_keep_mask,
    draw_continuous_timesteps,
    drop_condition,
    masked_mse,
    noisy_latents,
)

FIXTURES = Path(__file__).parent / "fixtures" / "ace15"
VARIANTS = ["turbo", "base"]
CONDITION_INPUTS = [
    "text_hidden_states",
    "text_attention_mask",
    "lyric_hidden_states",
    "lyric_attention_mask",
    "refer_audio_acoustic_hidden_states_packed",
    "refer_audio_order_mask",
    "attention_mask",
    "silence_latent",
    "src_latents",
    "chunk_masks",
    "is_covers",
]


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(variant) -> AceStepConditionGenerationModel:
    return AceStepConditionGenerationModel.from_pretrained(FIXTURES / variant)


def vectors(variant: str, name: str) -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / variant / f"vectors_{name}.safetensors")


def with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}


@pytest.mark.parametrize("case", ["even", "odd"])
def test_prepare_condition_matches_official(model, variant, case):
    data = vectors(variant, "condition")
    inputs = with_prefix(data, "in/")
    prefix = ""
    if case == "odd":
        inputs.update(with_prefix(data, "odd/in/"))
        prefix = "odd/"
    states, mask, context = model.prepare_condition(
        hidden_states=inputs["src_latents"], **{name: inputs[name] for name in CONDITION_INPUTS}
    )
    torch.testing.assert_close(states, data[f"{prefix}out/encoder_hidden_states"], atol=1e-4, rtol=1e-4)
    assert torch.equal(mask, data[f"{prefix}out/encoder_attention_mask"])
    torch.testing.assert_close(context, data[f"{prefix}out/context_latents"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", ["c0", "c1", "c2"])
def test_decoder_matches_official(model, variant, case):
    data = vectors(variant, "decoder")
    velocity, _ = model.decoder(**with_prefix(data, f"{case}/in/"))
    torch.testing.assert_close(velocity, data[f"{case}/out/velocity"], atol=1e-4, rtol=1e-4)


def test_training_objective_matches_official(model, variant):
    data = with_prefix(vectors(variant, "training"), "fixed/")
    states = drop_condition(data["in/encoder_hidden_states"], data["in/cfg_keep_mask"], model.null_condition_emb)
    x_t = noisy_latents(data["in/x0"], data["in/noise"], data["in/t"])
    velocity, _ = model.decoder(
        hidden_states=x_t,
        timestep=data["in/t"],
        timestep_r=data["in/t"],
        attention_mask=data["in/attention_mask"],
        encoder_hidden_states=states,
        encoder_attention_mask=data["in/encoder_attention_mask"],
        context_latents=data["in/context_latents"],
    )
    loss, per_sample = masked_mse(velocity, data["in/noise"] - data["in/x0"])
    torch.testing.assert_close(velocity, data["out/velocity"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss, data["out/loss"], atol=0, rtol=1e-5)
    torch.testing.assert_close(per_sample, data["out/per_sample_mse"], atol=0, rtol=1e-5)


def test_training_draws_follow_official_rng_order(variant):
    data = vectors(variant, "training")
    config = json.loads((FIXTURES / variant / "config.json").read_text())
    x0 = data["fixed/in/x0"]
    torch.manual_seed(500)
    keep = draw_cfg_keep_mask(x0.shape[0], 0.15)
    noise = torch.randn_like(x0)
    t = draw_continuous_timesteps(x0.shape[0], config["timestep_mu"], config["timestep_sigma"])
    assert torch.equal(keep, data["forward_rng/drawn/cfg_keep_mask"])
    assert torch.equal(noise, data["forward_rng/drawn/noise"])
    assert torch.equal(t, data["forward_rng/drawn/t"])


def test_decoder_bf16_stays_close_to_fp32(variant):
    data = with_prefix(vectors(variant, "decoder"), "c0/in/")
    model32 = AceStepConditionGenerationModel.from_pretrained(FIXTURES / variant, parts=TRAINING_PARTS)
    model16 = AceStepConditionGenerationModel.from_pretrained(FIXTURES / variant, dtype=torch.bfloat16, parts=TRAINING_PARTS)
    reference, _ = model32.decoder(**data)
    low, _ = model16.decoder(**{k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in data.items()})
    assert low.dtype == torch.bfloat16
    relative = (low.float() - reference).norm() / reference.norm()
    assert relative < 0.03, f"bf16 decoder drifts {relative:.4f} (relative L2) from fp32"


def read_state_dict_listing(name: str) -> dict[str, tuple[int, ...]]:
    listing = {}
    for line in (FIXTURES / name).read_text().splitlines():
        if line.startswith("#") or line.startswith("key\t"):
            continue
        key, shape, _ = line.split("\t")
        listing[key] = tuple(json.loads(shape))
    return listing


def test_full_size_2b_keys_and_shapes_match_official():
    model = AceStepConditionGenerationModel.on_meta_device(AceStepConfig())
    ours = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    official = read_state_dict_listing("ace15_2b_state_dict.tsv")
    assert ours == official
    assert sum(p.numel() for p in model.parameters()) == 2_393_872_518


def test_full_size_xl_keys_and_shapes_match_derived_listing():
    config = AceStepConfig(
        hidden_size=2560,
        intermediate_size=9728,
        num_attention_heads=32,
        num_key_value_heads=8,
        num_hidden_layers=32,
        encoder_hidden_size=2048,
        encoder_intermediate_size=6144,
        encoder_num_attention_heads=16,
        encoder_num_key_value_heads=8,
    )
    model = AceStepConditionGenerationModel.on_meta_device(config)
    ours = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    assert ours == read_state_dict_listing("ace15_xl_state_dict.tsv")


def test_training_parts_load_only_the_decoder_and_null_condition(variant):
    model = AceStepConditionGenerationModel.from_pretrained(FIXTURES / variant, parts=TRAINING_PARTS)
    assert model.encoder is None and model.tokenizer is None and model.detokenizer is None
    assert set(model.state_dict()) == {k for k in load_file(FIXTURES / variant / "model.safetensors") if k.startswith(("decoder.", "null_condition_emb"))}


def test_sharded_checkpoint_loads_like_a_single_file(tmp_path, model, variant):
    tensors = load_file(FIXTURES / variant / "model.safetensors")
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, shard_names in halves.items():
        save_file({n: tensors[n] for n in shard_names}, tmp_path / shard)
        weight_map.update({n: shard for n in shard_names})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shutil.copy(FIXTURES / variant / "config.json", tmp_path / "config.json")
    sharded = AceStepConditionGenerationModel.from_pretrained(tmp_path)
    for name, value in model.state_dict().items():
        assert torch.equal(value, sharded.state_dict()[name]), name


def test_weights_that_do_not_fit_the_config_are_listed(tmp_path, variant):
    tensors = load_file(FIXTURES / variant / "model.safetensors")
    tensors["decoder.norm_out.weight"] = torch.ones(7)
    del tensors["decoder.proj_out.1.bias"]
    tensors["decoder.extra.weight"] = torch.ones(2)
    save_file(tensors, tmp_path / "model.safetensors")
    shutil.copy(FIXTURES / variant / "config.json", tmp_path / "config.json")
    with pytest.raises(WeightMismatchError) as error:
        AceStepConditionGenerationModel.from_pretrained(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message
    assert "missing decoder.proj_out.1.bias" in message
    assert "unexpected decoder.extra.weight" in message
    assert "decoder.norm_out.weight: file has [7], config needs [64]" in message


def test_config_that_is_not_ace_step_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3", "architectures": ["Qwen3Model"]}))
    with pytest.raises(ConfigError, match="not an ACE-Step 1.5 model config"):
        AceStepConditionGenerationModel.from_pretrained(tmp_path)


def test_missing_weights_and_folder_are_clear_errors(tmp_path):
    with pytest.raises(SideStepError, match="does not exist"):
        AceStepConditionGenerationModel.from_pretrained(tmp_path / "nope")
    shutil.copy(FIXTURES / "turbo" / "config.json", tmp_path / "config.json")
    with pytest.raises(SideStepError, match="No model.safetensors"):
        AceStepConditionGenerationModel.from_pretrained(tmp_path)


def test_save_pretrained_round_trips(tmp_path, model):
    model.save_pretrained(tmp_path)
    again = AceStepConditionGenerationModel.from_pretrained(tmp_path)
    assert again.config.to_dict() == model.config.to_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name


def test_bf16_stored_weights_compute_in_fp32_inputs_dtype(variant):
    data = with_prefix(vectors(variant, "decoder"), "c0/in/")
    reference, _ = AceStepConditionGenerationModel.from_pretrained(FIXTURES / variant, parts=TRAINING_PARTS).decoder(**data)
    stored16 = AceStepConditionGenerationModel.from_pretrained(FIXTURES / variant, dtype=torch.bfloat16, parts=TRAINING_PARTS)
    assert stored16.decoder.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    upcast, _ = stored16.decoder(**data)
    assert upcast.dtype == torch.float32
    relative = (upcast - reference).norm() / reference.norm()
    assert relative < 0.02, f"fp32 compute over bf16-stored weights drifts {relative:.4f} from fp32"

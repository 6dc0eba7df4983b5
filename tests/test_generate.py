"""Generation with adapters: strength, defaults from adapter metadata, shift warnings, and the ComfyUI export."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sidestep.adapters.config import LoraConfig
from sidestep.adapters.export import export_comfy
from sidestep.adapters.files import load_adapter
from sidestep.adapters.training import attach_trainable_adapter
from sidestep.bundle import open_checkpoint
from sidestep.cli import main
from sidestep.generate import GenerationRequest, generate
from sidestep.model import TRAINING_PARTS, AceStepConditionGenerationModel

REQUEST = dict(caption="dreamy synth pop", lyrics="[Verse]\nhello", duration=2.0, seed=4)


@pytest.fixture(scope="module")
def adapter_dir(tiny_root, tmp_path_factory) -> Path:
    """A LoRA with non-zero weights, saved as training saves it (turbo metadata: shift 3, 8 steps)."""
    model = AceStepConditionGenerationModel.from_pretrained(tiny_root / "acestep-v15-turbo", parts=TRAINING_PARTS)
    adapter = attach_trainable_adapter(model.decoder, LoraConfig(rank=4, alpha=8, target="attention_mlp"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    folder = tmp_path_factory.mktemp("adapter")
    metadata = {"variant": "turbo", "base": "turbo", "shift": "3.0", "num_inference_steps": "8"}
    adapter.save(folder, metadata)
    return folder


@pytest.fixture(scope="module")
def bundle(tiny_root):
    return open_checkpoint(tiny_root, "acestep-v15-turbo")


def test_strength_zero_is_the_base_model_and_strength_one_differs(bundle, adapter_dir):
    loaded = load_adapter(adapter_dir)
    plain = generate(bundle, GenerationRequest(**REQUEST))
    zero = generate(bundle, GenerationRequest(**REQUEST), adapters=[(loaded, 0.0)], adapter_metadata=loaded.metadata)
    full = generate(bundle, GenerationRequest(**REQUEST), adapters=[(loaded, 1.0)], adapter_metadata=loaded.metadata)
    assert torch.equal(zero.latents, plain.latents)
    assert (full.latents - plain.latents).abs().mean() > 1e-3
    again = generate(bundle, GenerationRequest(**REQUEST))
    assert torch.equal(again.latents, plain.latents), "applying an adapter must leave the base model untouched"
    assert plain.waveform.shape == (1, 2, 50 * 1920) and plain.sample_rate == 48_000


def test_a_shift_other_than_the_adapters_is_warned_about(bundle, adapter_dir):
    loaded = load_adapter(adapter_dir)
    result = generate(bundle, GenerationRequest(**REQUEST, shift=1.0), adapters=[(loaded, 1.0)], adapter_metadata=loaded.metadata)
    assert any("shift" in warning and "3" in warning for warning in result.warnings)
    quiet = generate(bundle, GenerationRequest(**REQUEST), adapters=[(loaded, 1.0)], adapter_metadata=loaded.metadata)
    assert not any("shift" in warning for warning in quiet.warnings)


def test_one_variant_mismatch_is_warned_about_once(bundle, adapter_dir, tmp_path):
    """An adapter trained on a base model, sampled on turbo: one warning (the adapter's record against the model)."""
    base_adapter = tmp_path / "base.safetensors"
    loaded = load_adapter(adapter_dir)
    export_comfy(replace(loaded, header={**loaded.header, "variant": "base", "base": "base"}), base_adapter)
    trained_on_base = load_adapter(base_adapter)
    result = generate(
        bundle, GenerationRequest(**REQUEST), adapters=[(trained_on_base, 1.0)], adapter_metadata=trained_on_base.metadata
    )
    mismatches = [warning for warning in result.warnings if "trained on" in warning]
    assert len(mismatches) == 1 and "base model, this model is turbo" in mismatches[0], result.warnings


def test_batch_rows_use_consecutive_seeds(bundle):
    pair = generate(bundle, GenerationRequest(**{**REQUEST, "batch_size": 2}))
    first = generate(bundle, GenerationRequest(**REQUEST))
    second = generate(bundle, GenerationRequest(**{**REQUEST, "seed": REQUEST["seed"] + 1}))
    torch.testing.assert_close(pair.latents[0], first.latents[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pair.latents[1], second.latents[0], atol=1e-5, rtol=1e-5)


def test_export_comfy_cli_writes_alpha_scaled_peft_keys_that_load_back(adapter_dir, tmp_path):
    out = tmp_path / "sidestep_lora.safetensors"
    assert main(["export-comfy", str(adapter_dir), str(out)]) == 0
    with safe_open(str(out), framework="pt") as handle:
        keys = set(handle.keys())
    assert "base_model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.layers.0.mlp.down_proj.alpha" in keys
    original, exported = load_adapter(adapter_dir), load_adapter(out)
    for module, weights in original.modules.items():
        torch.testing.assert_close(exported.modules[module].delta(), weights.delta(), atol=1e-6, rtol=1e-5)

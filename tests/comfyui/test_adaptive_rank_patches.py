"""An adaptive-rank LoRA (per-module ranks) in ComfyUI's own LoRA loader, in process: every key mapped, each module
patched with its own rank at the trained scale alpha / rank."""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import pytest
import torch

from sidestep.adapters.config import LoraConfig
from sidestep.adapters.export import comfy_key_map, export_comfy
from sidestep.adapters.files import load_adapter
from sidestep.adapters.keys import peft_name

from .test_model_patches import PACK_MODULE, comfy, native_model, trained_adapter  # noqa: F401 (comfy: a fixture)

MAPPED = LoraConfig(
    rank=4, alpha=8,
    rank_map=(("layers.0.self_attn.q_proj", 2), ("layers.0.cross_attn.v_proj", 7), ("layers.1.self_attn.o_proj", 5)),
)


def test_comfyui_maps_every_key_and_scales_each_module_by_its_own_rank(
    comfy: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:

    loaded = load_adapter(trained_adapter(tmp_path / "mapped", MAPPED, seed=2))
    assert {module: weights.rank for module, weights in loaded.modules.items()} == dict(MAPPED.rank_map)
    exported = comfy.utils.load_torch_file(str(export_comfy(loaded, tmp_path / "mapped.safetensors")), safe_load=True)
    for module, rank in MAPPED.rank_map:
        assert float(exported[f"{peft_name(module)}.alpha"]) == pytest.approx(MAPPED.alpha * rank / MAPPED.rank)
    model = native_model(comfy)
    key_map = comfy_key_map(list(model.model_state_dict()))
    with caplog.at_level(logging.WARNING):
        patches = comfy.lora.load_lora(comfy.lora_convert.convert_lora(exported), key_map)
    assert "lora key not loaded" not in caplog.text
    patched = model.clone()
    assert len(patched.add_patches(patches, 1.0)) == len(patches) == len(MAPPED.rank_map)
    state = model.model_state_dict()
    for module, weights in loaded.modules.items():
        key = key_map[peft_name(module)]
        base = state[key].float()
        merged = comfy.lora.calculate_weight(patched.patches[key], base.clone(), key)
        scale = MAPPED.alpha / MAPPED.rank
        torch.testing.assert_close(merged, base + scale * weights.up.float() @ weights.down.float(), rtol=1e-5, atol=1e-6)

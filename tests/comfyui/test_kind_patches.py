"""LoHA and OFT exports judged in-process by ComfyUI's own loader: every key mapped, and the weights its
`weight_adapter/loha.py` / `oft.py` compute equal to W + ΔW as Side-Step computes it (and as training ran it)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import pytest
import torch

from sidestep.adapters.config import AdapterConfig
from sidestep.adapters.export import comfy_key_map, export_comfy
from sidestep.adapters.files import load_adapter
from sidestep.adapters.kinds.loha import LohaConfig
from sidestep.adapters.kinds.oft import OftConfig
from sidestep.adapters.keys import lycoris_name
from sidestep.adapters.training import attach_trainable_adapter
from sidestep.model import AceStepConditionGenerationModel
from sidestep.tiny_models import tiny_model_config

from .test_model_patches import PACK_MODULE, comfy, native_model, node  # noqa: F401  (fixtures)

ADAPTER_CLASSES = {"loha": "LoHaAdapter", "oft": "OFTAdapter"}


def trained_adapter(folder: Path, config: AdapterConfig, seed: int) -> Path:
    """An adapter of `config` moved away from its initialisation (its `.alpha` values kept), saved as training does."""
    decoder = AceStepConditionGenerationModel(tiny_model_config("turbo")).init_random_weights(0).decoder
    adapter = attach_trainable_adapter(decoder, config)
    generator = torch.Generator().manual_seed(seed)
    adapter.load_state_dict({
        key: value if key.endswith(".alpha") else value + 0.1 * torch.randn(value.shape, generator=generator)
        for key, value in adapter.state_dict().items()
    })
    return adapter.save(folder, {"variant": "turbo", "base": "turbo"})


@pytest.mark.parametrize(
    "config", [LohaConfig(linear_dim=4, linear_alpha=2, target="attention_mlp"), OftConfig(block_size=4, target="attention_mlp")],
    ids=["loha", "oft"],
)
def test_comfyuis_loader_maps_every_key_and_computes_our_weights(
    comfy: ModuleType, node: type, tmp_path: Path, config: AdapterConfig, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:

    import comfy.weight_adapter as adapters

    folder = trained_adapter(tmp_path / config.kind, config, seed=3)
    model = native_model(comfy)
    loaded = load_adapter(folder)
    key_map = comfy_key_map(list(model.model_state_dict()))
    exported = export_comfy(loaded, tmp_path / "exported.safetensors")
    tensors = comfy.lora_convert.convert_lora(comfy.utils.load_torch_file(str(exported), safe_load=True))
    with caplog.at_level(logging.WARNING):
        patches = comfy.lora.load_lora(tensors, key_map)
    assert not [record for record in caplog.records if "not loaded" in record.getMessage()]
    expected = {key_map[lycoris_name(module)]: weights for module, weights in loaded.modules.items()}
    assert set(patches) == set(expected) and len(expected) == len(loaded.modules)
    assert all(type(patch).__name__ == ADAPTER_CLASSES[config.kind] for patch in patches.values())
    assert all(isinstance(patch, adapters.WeightAdapterBase) for patch in patches.values())

    patched = node.execute(model=model, adapter_file=str(folder), strength=1.0).args[0]
    state = model.model_state_dict()
    for key, weights in expected.items():
        base = state[key].float()
        merged = comfy.lora.calculate_weight(patched.patches[key], base.clone(), key)
        torch.testing.assert_close(merged, base + weights.delta(base), rtol=1e-5, atol=1e-6)
        assert not torch.equal(merged, base), key

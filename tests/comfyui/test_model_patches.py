"""Apply Adapter to ComfyUI MODEL, checked in-process against ComfyUI's own ModelPatcher and patch arithmetic.

The vendored ComfyUI (0.3.75) has no native ACE-Step 1.5 model, so the MODEL here is a real ModelPatcher around
our tiny DiT placed under `diffusion_model` — the layout ComfyUI's ACE-Step 1.5 model has (weights named
`diffusion_model.decoder.<module>.weight`). What is checked: the node's patch keys, that ComfyUI's own
`calculate_weight` turns the patches into W + strength·ΔW, and that the input MODEL stays unpatched.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest
import torch

from sidestep.adapters.config import AdapterConfig, LokrConfig, LoraConfig
from sidestep.adapters.export import comfy_key_map, export_comfy
from sidestep.adapters.files import load_adapter
from sidestep.adapters.training import attach_trainable_adapter
from sidestep.model import AceStepConditionGenerationModel
from sidestep.tiny_models import tiny_model_config

from .host import REPO_ROOT, find_comfyui

PACK_MODULE = "side_step_pack"


@pytest.fixture(scope="module")
def comfy(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """ComfyUI's modules importable in this process (CPU mode), and our pack loaded by path as ComfyUI loads it."""
    sys.path.append(str(find_comfyui()))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # read when comfy.model_management is first imported
    # folder_paths creates input/ under its base when imported: the test's own space, not the ComfyUI source tree.
    comfy.cli_args.args.base_directory = str(tmp_path_factory.mktemp("comfyui-base"))
    import comfy.lora
    import comfy.lora_convert
    import comfy.model_patcher
    import comfy.utils

    if PACK_MODULE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACK_MODULE, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_MODULE] = module
        spec.loader.exec_module(module)
    return comfy


@pytest.fixture(scope="module")
def node(comfy: ModuleType) -> type:
    """The ApplyAdapterToModel node class."""
    return importlib.import_module(f"{PACK_MODULE}.nodes.adapters").ApplyAdapterToModel


class TinyBaseModel(torch.nn.Module):
    """Stands in for ComfyUI's BaseModel: the diffusion model's weights under `diffusion_model.`."""

    def __init__(self) -> None:
        super().__init__()
        self.diffusion_model = AceStepConditionGenerationModel(tiny_model_config("turbo")).init_random_weights(0)


def native_model(comfy: ModuleType) -> object:
    """A real ComfyUI ModelPatcher (MODEL) around the tiny model."""
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(TinyBaseModel(), load_device=cpu, offload_device=cpu)


def trained_adapter(folder: Path, config: AdapterConfig, seed: int) -> Path:
    """Save an adapter of `config` with random (non-zero) weights, as training would leave it."""
    decoder = AceStepConditionGenerationModel(tiny_model_config("turbo")).init_random_weights(0).decoder
    adapter = attach_trainable_adapter(decoder, config)
    generator = torch.Generator().manual_seed(seed)
    adapter.load_state_dict({k: torch.randn(v.shape, generator=generator) * 0.1 for k, v in adapter.state_dict().items()})
    return adapter.save(folder, {"variant": "turbo", "base": "turbo"})


@pytest.mark.parametrize(
    "config",
    [LoraConfig(rank=4, alpha=8), LokrConfig(linear_dim=4, linear_alpha=8, factor=4)],
    ids=["lora", "lokr"],
)
def test_patches_add_strength_times_delta(
    comfy: ModuleType, node: type, tmp_path: Path, config: AdapterConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every adapted decoder layer gets one patch, made in memory (nothing written to the temporary folder); ComfyUI
    computes W + strength·ΔW from it, exactly what its LoRA loader makes of the exported file; the input is untouched."""
    folder = trained_adapter(tmp_path / config.kind, config, seed=1)
    model = native_model(comfy)
    # A temporary folder that does not exist: writing any temporary file or folder would fail.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-temporary-files"))
    output = node.execute(model=model, adapter_file=str(folder), strength=0.5)
    patched = output.args[0]
    assert model.patches == {} and patched is not model
    key_map = comfy_key_map(list(model.model_state_dict()))
    loaded = load_adapter(folder)
    from sidestep.adapters.keys import lycoris_name, peft_name

    expected = {
        key_map[lycoris_name(module) if config.kind == "lokr" else peft_name(module)]: weights
        for module, weights in loaded.modules.items()
    }
    assert set(patched.patches) == set(expected)
    assert all(key.startswith("diffusion_model.decoder.layers.") and key.endswith(".weight") for key in expected)
    # What ComfyUI's LoraLoaderModelOnly does with the exported file (comfy.sd.load_lora_for_models), with the
    # ACE-Step 1.5 key map its model_lora_keys_unet builds for the real model.
    exported = export_comfy(loaded, tmp_path / "exported.safetensors")
    from_file = model.clone()
    lora = comfy.lora_convert.convert_lora(comfy.utils.load_torch_file(str(exported), safe_load=True))
    from_file.add_patches(comfy.lora.load_lora(lora, key_map), 0.5)
    assert set(from_file.patches) == set(patched.patches)
    state = model.model_state_dict()
    for key, weights in expected.items():
        base = state[key].float()
        merged = comfy.lora.calculate_weight(patched.patches[key], base.clone(), key)
        assert torch.equal(merged, comfy.lora.calculate_weight(from_file.patches[key], base.clone(), key)), key
        torch.testing.assert_close(merged, base + 0.5 * weights.delta(), rtol=1e-5, atol=1e-6)
    assert "patched" in output.ui["text"][0]


def test_a_model_without_an_ace_step_decoder_is_refused(comfy: ModuleType, node: type, tmp_path: Path) -> None:
    """A MODEL that is not ACE-Step 1.5 gets a clear error instead of silently unpatched weights."""
    folder = trained_adapter(tmp_path / "lora", LoraConfig(rank=4, alpha=8), seed=2)
    wrapper = torch.nn.Module()
    wrapper.diffusion_model = torch.nn.Linear(4, 4)
    cpu = torch.device("cpu")
    other = comfy.model_patcher.ModelPatcher(wrapper, load_device=cpu, offload_device=cpu)
    # The nodes use the pack's own copy of the core (imported relatively), so its error class.
    adapter_error = importlib.import_module(f"{PACK_MODULE}.sidestep.errors").AdapterError
    with pytest.raises(adapter_error, match="not an ACE-Step 1.5 model"):
        node.execute(model=other, adapter_file=str(folder), strength=1.0)

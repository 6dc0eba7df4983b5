"""ACE-Step from ComfyUI models, in-process: ComfyUI's own loaders build MODEL, CLIP and VAE from ComfyUI-layout files,
and the node's ACESTEP_MODEL computes exactly what the same files read by our loader compute, sharing ComfyUI's
weights instead of copying them."""

from __future__ import annotations

import gc
import importlib
import weakref
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

from sidestep.bundle import AceStepBundle, open_checkpoint
from sidestep.comfy_models import TOKENIZER_IN_COMFYUI
from sidestep.memory import trim_freed_memory
from sidestep.tiny_models import COMFY_DIT_FILES, COMFY_TEXT_ENCODER_FILE, COMFY_VAE_FILE
from sidestep.vae import decode_latents

from .fixtures_pack import CLIP_LM_FILE
from .host import find_comfyui
from .test_model_patches import PACK_MODULE, comfy  # noqa: F401  (the in-process ComfyUI fixture)


@pytest.fixture(scope="module")
def node(comfy: ModuleType) -> type:  # noqa: F811
    """The AceStepFromComfyModels node class."""
    return importlib.import_module(f"{PACK_MODULE}.nodes.model").AceStepFromComfyModels


@pytest.fixture(scope="module")
def from_files(comfyui_files: dict[str, Path]) -> dict[str, torch.Tensor]:
    """What the ComfyUI-layout files compute when our loader reads them (computed, then freed, before ComfyUI loads
    the same files: both copies at once would not fit beside the test server)."""
    tokenizer = find_comfyui() / TOKENIZER_IN_COMFYUI
    models = comfyui_files["diffusion_models"].parent
    bundle = open_checkpoint(models, COMFY_DIT_FILES["turbo"], tokenizer_dir=tokenizer)
    outputs = _outputs(bundle)
    bundle.release(dit=True, vae=True, text_encoder=True)
    del bundle
    gc.collect()
    trim_freed_memory()  # glibc keeps the freed weights' pages in its heap otherwise (measured: 2.6 GB held)
    return outputs


@pytest.fixture(scope="module")
def comfy_objects(comfy: ModuleType, comfyui_files: dict[str, Path]) -> SimpleNamespace:  # noqa: F811
    """MODEL, CLIP and VAE as ComfyUI's own UNETLoader, DualCLIPLoader (type ace) and VAELoader build them."""
    import comfy.sd
    import comfy.utils

    models = comfyui_files["diffusion_models"].parent
    return SimpleNamespace(
        model=comfy.sd.load_diffusion_model(str(models / "diffusion_models" / COMFY_DIT_FILES["turbo"])),
        clip=comfy.sd.load_clip(
            [str(models / "text_encoders" / COMFY_TEXT_ENCODER_FILE), str(models / "text_encoders" / CLIP_LM_FILE)],
            clip_type=comfy.sd.CLIPType.ACE,
        ),
        vae=comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(models / "vae" / COMFY_VAE_FILE))),
        models=models,
    )


def _outputs(bundle: AceStepBundle) -> dict[str, torch.Tensor]:
    """Condition-encoder and decoder outputs, caption embeddings and a VAE decode on fixed inputs."""
    model = bundle.dit()
    generator = torch.Generator().manual_seed(3)
    frames = 10
    x = torch.randn(1, frames, 64, generator=generator)
    silence = bundle.silence_latent()
    with torch.no_grad():
        states, mask, context = model.prepare_condition(
            torch.randn(1, 8, 1024, generator=generator), torch.ones(1, 8), torch.randn(1, 6, 1024, generator=generator),
            torch.ones(1, 6), torch.randn(1, 30, 64, generator=generator), torch.zeros(1, dtype=torch.long), x, None,
            silence, silence[:, :frames].clone(), torch.ones(1, frames, 64), torch.zeros(1, dtype=torch.long),
        )
        velocity = model.decoder(
            hidden_states=x, timestep=torch.tensor([0.6]), timestep_r=torch.tensor([0.6]),
            attention_mask=torch.ones(1, frames), encoder_hidden_states=states, encoder_attention_mask=mask,
            context_latents=context,
        )[0]
    captions, _ = bundle.text_encoder().encode_captions(["# Caption\nlo-fi beat"], form="inference")
    return {"condition": states, "velocity": velocity, "captions": captions, "audio": decode_latents(bundle.vae(), x[:, :2])}


def test_comfyui_objects_compute_what_the_files_compute(
    from_files: dict[str, torch.Tensor], node: type, comfy_objects: SimpleNamespace
) -> None:
    handle = node.execute(model=comfy_objects.model, base_model="turbo", clip=comfy_objects.clip, vae=comfy_objects.vae).args[0]
    bundle = handle.bundle
    assert bundle.base == "turbo" and bundle.entry.config.hidden_size == 256 and bundle.dtype is None  # as ComfyUI holds them
    got = _outputs(bundle)
    bundle.release(dit=True, vae=True, text_encoder=True)
    for key, value in from_files.items():
        torch.testing.assert_close(got[key], value, atol=1e-5, rtol=1e-5, msg=f"{key} differs")


def _pack_checkpoint_error() -> type:
    """The nodes use the pack's own copy of the core (imported relatively), so its error class."""
    return importlib.import_module(f"{PACK_MODULE}.sidestep.errors").CheckpointError


def test_the_dit_shares_comfyuis_weights(node: type, comfy_objects: SimpleNamespace) -> None:
    handle = node.execute(model=comfy_objects.model, base_model="base").args[0]
    ours = handle.bundle.dit().decoder.layers[0].self_attn.q_proj.weight
    theirs = comfy_objects.model.model.diffusion_model.decoder.layers[0].self_attn.q_proj.weight
    assert ours.data_ptr() == theirs.data_ptr() and handle.bundle.base == "base"
    with pytest.raises(_pack_checkpoint_error(), match="No VAE was connected"):
        handle.bundle.vae()


def test_a_bundle_nothing_uses_takes_its_parts_off_comfyuis_list(node: type, comfy_objects: SimpleNamespace) -> None:
    """A node output ComfyUI's cache let go frees the parts it loaded, as ComfyUI's own models are freed."""
    import comfy.model_management as model_management

    before = len(model_management.current_loaded_models)
    bundle = node.execute(model=comfy_objects.model, base_model="turbo").args[0].bundle
    dit = weakref.ref(bundle.dit())
    assert len(model_management.current_loaded_models) == before + 1
    del bundle
    gc.collect()
    assert dit() is None, "the DiT outlived its bundle"
    assert len(model_management.current_loaded_models) == before


def test_a_quantized_comfyui_weight_is_copied_for_training_not_viewed() -> None:
    """ComfyUI's quantized weights (comfy_kitchen's QuantizedTensor) keep their data outside their storage: viewing that
    storage as a plain tensor crashes the process, so the training DiT gets a copy of such a weight, still quantized."""
    from comfy_kitchen.tensor import QuantizedTensor

    from sidestep.bundle import _usable

    with torch.inference_mode():  # as ComfyUI's loaders run
        weight = QuantizedTensor.from_float(torch.randn(64, 64), "TensorCoreFP8Layout")
    usable = _usable(weight, None, torch.device("cpu"))
    assert type(usable) is QuantizedTensor and not usable.is_inference()
    assert torch.equal(usable.dequantize(), weight.dequantize())


def test_a_model_that_is_not_ace_step_is_refused(comfy: ModuleType, node: type) -> None:  # noqa: F811
    wrapper = torch.nn.Module()
    wrapper.diffusion_model = torch.nn.Linear(4, 4)
    cpu = torch.device("cpu")
    other = comfy.model_patcher.ModelPatcher(wrapper, load_device=cpu, offload_device=cpu)
    with pytest.raises(_pack_checkpoint_error(), match="The MODEL is a Linear, not ACE-Step 1.5.*Load Diffusion Model"):
        node.execute(model=other, base_model="turbo")


@pytest.mark.parametrize("weight_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_an_fp8_model_is_shared_without_a_full_precision_copy_and_trains(
    comfy: ModuleType, node: type, comfyui_files: dict[str, Path], tmp_path: Path, weight_dtype: torch.dtype  # noqa: F811
) -> None:
    """UNETLoader's weight_dtype fp8_e4m3fn / fp8_e5m2 (ComfyUI's loader with that dtype, in inference mode as ComfyUI
    runs its nodes): the DiT and the training DiT hold ComfyUI's fp8 bytes, never a copy, and an adapter trains over them."""
    import comfy.sd

    from benchmarks.models import write_dataset
    from sidestep.adapters.config import LoraConfig
    from sidestep.model import TRAINING_PARTS
    from sidestep.training.config import TrainConfig
    from sidestep.training.loop import RunIdentity, Trainer
    from sidestep.training.run import TrainingRun

    path = comfyui_files["diffusion_models"] / COMFY_DIT_FILES["turbo"]
    with torch.inference_mode():
        model = comfy.sd.load_diffusion_model(str(path), model_options={"dtype": weight_dtype})
    theirs = model.model.diffusion_model.state_dict()
    bundle = node.execute(model=model, base_model="turbo").args[0].bundle
    ours = bundle.dit().state_dict()
    shared = {tensor.data_ptr() for tensor in theirs.values()}
    assert sum(t.nbytes for t in ours.values() if t.data_ptr() not in shared) == 0  # no byte of our own
    assert {t.dtype for t in ours.values() if t.is_floating_point()} == {weight_dtype}
    trained = bundle.with_own_dit(TRAINING_PARTS).dit(TRAINING_PARTS)
    training = trained.state_dict()
    assert {t.data_ptr() for t in training.values()} <= shared  # ComfyUI's fp8 bytes: neither upcast nor copied
    dataset = write_dataset(tmp_path / "data", bundle.entry.config, frames=20, clips=1)
    events = []
    config = TrainConfig(output_dir=str(tmp_path / "run"), epochs=2, save_every=2, max_latent_frames=None, precision="fp32")
    lora = LoraConfig(rank=4, alpha=8, target="attention")
    assert TrainingRun(bundle, dataset, lora, config).vram_estimate().settings.startswith("fp8 weights")  # not bf16
    Trainer(trained, dataset, lora, config, RunIdentity("turbo", "turbo"), callback=events.append).run()
    losses = [event.loss for event in events if event.kind == "step"]
    assert len(losses) == 2 and all(0 < loss < 100 for loss in losses)

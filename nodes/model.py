"""Load ACE-Step Checkpoint (ComfyUI's own files or the official tree) and ACE-Step from ComfyUI models (its MODEL,
CLIP and VAE): both give an ACESTEP_MODEL whose parts load lazily when a downstream node needs them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from comfy_api.latest import io

from ..sidestep.variants import resolve_storage
from .folders import (
    acestep_roots,
    comfy_folders,
    comfy_tokenizer_dir,
    discover_models,
    find_discovered,
    model_name_of,
)
from .handles import CATEGORY, AcestepModel, ModelHandle
from .memory import COMFY_MEMORY, resolve_device

if TYPE_CHECKING:
    from ..sidestep.bundle import AceStepBundle

AUTO = "auto"
DTYPES = (AUTO, "bf16", "fp32", "fp8")
DEVICES = (AUTO, "cpu", "cuda")


def _searched() -> str:
    """Every folder the model list is built from, for messages."""
    from ..sidestep.model_files import shown

    folders = comfy_folders()
    roots = [*folders.diffusion_models, *folders.checkpoints, *acestep_roots()]
    return ", ".join(shown(folder) for folder in roots) or "none exist"


def skipped_models() -> list:
    """The ACE-Step-looking files and folders in ComfyUI's model folders that cannot be used, with the reasons."""
    from ..sidestep.comfy_models import survey_comfy_models
    from ..sidestep.errors import CheckpointError
    from ..sidestep.model_folders import survey_folders

    skipped = survey_comfy_models(comfy_folders())[1]
    for root in acestep_roots():
        try:
            skipped += survey_folders(root)[1]
        except CheckpointError:
            continue
    return skipped


def _no_model_message(choice: str) -> str:
    """Why a dropdown value names no model: the file it names and why it cannot be used, or where we looked and what
    belongs there."""
    from ..sidestep.comfy_models import WHERE_FILES_GO
    from ..sidestep.model_folders import refusal

    refused = refusal(skipped_models(), model_name_of(choice), short_names=False)
    if refused is not None:
        return str(refused)
    return (
        f"No ACE-Step 1.5 model {model_name_of(choice)!r} in ComfyUI's model folders ({_searched()}). {WHERE_FILES_GO} "
        "The official download tree (acestep-v15-turbo/, vae/, Qwen3-Embedding-0.6B/) goes in models/acestep."
    )


def _open_typed_path(model_path: str, choice: str, base: str | None, dtype, device) -> AceStepBundle:
    """A model given as a path: an official model folder or checkpoint root, or a ComfyUI models/ folder."""
    from ..sidestep.bundle import open_checkpoint

    path = Path(model_path.strip()).expanduser()
    if (path / "config.json").is_file():
        return open_checkpoint(path.parent, path.name, base, dtype, device)
    return open_checkpoint(path, model_name_of(choice), base, dtype, device, tokenizer_dir=comfy_tokenizer_dir())


def _open_discovered(choice: str, text_encoder: str, vae: str, base: str | None, dtype, device) -> AceStepBundle:
    """A model from the dropdown, with its VAE and text encoder (paired automatically unless chosen)."""
    from ..sidestep.bundle import open_model
    from ..sidestep.comfy_models import comfy_shared_parts
    from ..sidestep.errors import CheckpointError
    from ..sidestep.model_folders import find_shared_parts

    entry = find_discovered(choice)
    if entry is None:
        raise CheckpointError(_no_model_message(choice))
    if entry.in_official_tree:
        shared = find_shared_parts(entry.path.parent, entry)
    else:
        shared = comfy_shared_parts(
            entry,
            comfy_folders(),
            comfy_tokenizer_dir(),
            text_encoder=None if text_encoder == AUTO else text_encoder,
            vae=None if vae == AUTO else vae,
        )
    return open_model(entry, shared, base, dtype, device)


def _file_choices(kind: str) -> list[str]:
    """'auto' plus the text-encoder or VAE files found in ComfyUI's folders."""
    from ..sidestep.comfy_models import text_encoder_files, vae_files

    found = text_encoder_files(comfy_folders()) if kind == "text_encoder" else vae_files(comfy_folders())
    return [AUTO, *(name for name, _ in found)]


class LoadCheckpoint(io.ComfyNode):
    """Choose an ACE-Step 1.5 model (ComfyUI's own files, the official tree, or a custom fine-tune)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """The discovered models (rescanned whenever ComfyUI asks for node definitions) and loading options."""
        from ..sidestep.variants import BASE_MODELS

        return io.Schema(
            node_id="SideStepLoadCheckpoint",
            display_name="Load ACE-Step Checkpoint",
            category=CATEGORY,
            description=(
                "Picks an ACE-Step 1.5 model from ComfyUI's own files (diffusion_models, checkpoints) or an official "
                "download tree (models/acestep). Nothing heavy loads here: the DiT, VAE and text encoder load when a "
                "node downstream needs them, and ComfyUI's Unload Models frees them."
            ),
            inputs=[
                io.Combo.Input(
                    "model",
                    options=[entry.label for entry in discover_models()],
                    tooltip=(
                        "ACE-Step 1.5 models found in ComfyUI's diffusion_models and checkpoints folders (e.g. "
                        "acestep_v1.5_turbo.safetensors, an all-in-one checkpoint) and in models/acestep (the official "
                        "download tree), labelled with where they come from and their variant."
                    ),
                ),
                io.Combo.Input(
                    "base_model",
                    options=[AUTO, *BASE_MODELS],
                    default=AUTO,
                    tooltip=(
                        "auto reads the base (turbo/base/sft) from the model's name or config. Set it only for a custom "
                        "fine-tune that does not say: it decides the training schedule and sampling defaults."
                    ),
                ),
                io.String.Input(
                    "model_path",
                    default="",
                    tooltip=(
                        "Optional. A model folder, an official checkpoint root or a ComfyUI models/ folder anywhere on "
                        "disk; when set it overrides the dropdown (a root uses the dropdown's model name)."
                    ),
                ),
                io.Combo.Input(
                    "dtype",
                    options=list(DTYPES),
                    default=AUTO,
                    tooltip=(
                        "How the frozen weights are stored. auto: as the file stores them (bf16 for ACE-Step 1.5); they "
                        "are upcast per layer as it runs, so fp32 only costs memory. fp8: the DiT's Linear weights in "
                        "e4m3 with per-channel scales (half of bf16; training only, adapters stay fp32)."
                    ),
                ),
                io.Combo.Input(
                    "device",
                    options=list(DEVICES),
                    default=AUTO,
                    tooltip="Where the model runs. auto: ComfyUI's device (the CPU when ComfyUI runs with --cpu).",
                ),
                io.Combo.Input(
                    "text_encoder",
                    options=_file_choices("text_encoder"),
                    default=AUTO,
                    tooltip=(
                        "For a ComfyUI diffusion-model file: the text encoder from the text_encoders folder. auto picks "
                        "qwen_0.6b_ace15.safetensors (an all-in-one checkpoint brings its own)."
                    ),
                ),
                io.Combo.Input(
                    "vae",
                    options=_file_choices("vae"),
                    default=AUTO,
                    tooltip=(
                        "For a ComfyUI diffusion-model file: the VAE from the vae folder. auto picks "
                        "ace_1.5_vae.safetensors (an all-in-one checkpoint brings its own)."
                    ),
                ),
            ],
            outputs=[AcestepModel.Output(display_name="model", tooltip="The chosen model; connect it to the other Side-Step nodes.")],
        )

    @classmethod
    def validate_inputs(
        cls, model: str, base_model: str, model_path: str, device: str, text_encoder: str = AUTO, vae: str = AUTO
    ) -> bool | str:
        """Refuse, before anything runs, a model that is not there or whose text encoder, VAE or base is missing."""
        import torch

        from ..sidestep.errors import SideStepError

        if device == "cuda" and not torch.cuda.is_available():
            return "device is 'cuda' but this ComfyUI has no CUDA GPU; choose auto or cpu."
        if model_path.strip():
            return True
        try:
            _open_discovered(model, text_encoder, vae, None if base_model == AUTO else base_model, torch.float32, "cpu")
        except SideStepError as error:
            return str(error)
        return True

    @classmethod
    def execute(
        cls, model: str, base_model: str, model_path: str, dtype: str, device: str, text_encoder: str = AUTO, vae: str = AUTO
    ) -> io.NodeOutput:
        """Locate the model and its parts; nothing heavy is loaded yet."""
        target = resolve_device(device)
        base = None if base_model == AUTO else base_model
        weights_dtype = resolve_storage(dtype)
        if model_path.strip():
            bundle = _open_typed_path(model_path, model, base, weights_dtype, target)
        else:
            bundle = _open_discovered(model, text_encoder, vae, base, weights_dtype, target)
        bundle.host = COMFY_MEMORY
        return io.NodeOutput(ModelHandle(bundle))


class AceStepFromComfyModels(io.ComfyNode):
    """ComfyUI's loaded ACE-Step 1.5 MODEL (with CLIP and VAE) as an ACESTEP_MODEL, sharing ComfyUI's weights."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """MODEL from Load Diffusion Model or Load Checkpoint; CLIP and VAE from the stock loaders."""
        from ..sidestep.variants import BASE_MODELS

        return io.Schema(
            node_id="SideStepFromComfyModels",
            display_name="ACE-Step from ComfyUI models",
            category=CATEGORY,
            description=(
                "Uses the ACE-Step 1.5 model ComfyUI already loaded (Load Diffusion Model / Load Checkpoint, "
                "DualCLIPLoader type ace, Load VAE) for training, encoding and sampling, sharing its weights instead of "
                "reading the files again."
            ),
            inputs=[
                io.Model.Input("model", tooltip="ComfyUI's ACE-Step 1.5 MODEL (e.g. acestep_v1.5_turbo.safetensors)."),
                io.Combo.Input(
                    "base_model",
                    options=list(BASE_MODELS),
                    default="turbo",
                    tooltip=(
                        "Which ACE-Step 1.5 model the MODEL is: turbo, base or sft (ComfyUI's MODEL does not say). It "
                        "decides the training schedule and the sampling steps and shift."
                    ),
                ),
                io.Clip.Input(
                    "clip", optional=True, tooltip="ComfyUI's ACE-Step 1.5 CLIP (qwen_0.6b_ace15); needed to encode songs and prompts."
                ),
                io.Vae.Input("vae", optional=True, tooltip="ComfyUI's ACE-Step 1.5 VAE (ace_1.5_vae); needed to encode songs and hear audio."),
            ],
            outputs=[AcestepModel.Output(display_name="model", tooltip="The same model as an ACESTEP_MODEL for Side-Step's nodes.")],
        )

    @classmethod
    def execute(cls, model, base_model: str, clip=None, vae=None) -> io.NodeOutput:
        """Check the MODEL is ACE-Step 1.5 and wrap ComfyUI's weights (no copy) as a bundle."""
        from ..sidestep.bundle import AceStepBundle, StateDictSource, state_dict_digest
        from ..sidestep.comfy_models import entry_for_state_dict

        diffusion = _ace_step_module(model)
        text_model = _text_encoder_module(clip) if clip is not None else None
        vae_model = _vae_module(vae) if vae is not None else None
        dit_state = diffusion.state_dict
        entry = entry_for_state_dict({name: tuple(t.shape) for name, t in dit_state().items()}, base_model)
        parts = [dit_state()] + [module.state_dict() for module in (text_model, vae_model) if module is not None]
        source = StateDictSource(
            dit_state=dit_state,
            vae_state=vae_model.state_dict if vae_model is not None else None,
            text_encoder_state=text_model.state_dict if text_model is not None else None,
            tokenizer_dir=comfy_tokenizer_dir(),
            _identity=[state_dict_digest(state) for state in parts],
        )
        device = model.load_device
        # dtype None: each weight stays as ComfyUI holds it (bf16, or fp8 where it was loaded with an fp8 weight_dtype).
        bundle = AceStepBundle(entry=entry, base=base_model, source=source, dtype=None, device=device, host=COMFY_MEMORY)
        return io.NodeOutput(ModelHandle(bundle))


def _ace_step_module(model):
    """ComfyUI's ACE-Step 1.5 diffusion module inside a MODEL; SideStepError for any other model."""
    from comfy.ldm.ace.ace_step15 import AceStepConditionGenerationModel

    from ..sidestep.errors import CheckpointError

    diffusion = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(diffusion, AceStepConditionGenerationModel):
        kind = type(diffusion).__name__ if diffusion is not None else type(model).__name__
        raise CheckpointError(
            f"The MODEL is a {kind}, not ACE-Step 1.5. Load acestep_v1.5_turbo.safetensors (or another ACE-Step 1.5 "
            "diffusion model) with Load Diffusion Model, or an ACE-Step 1.5 all-in-one file with Load Checkpoint."
        )
    return diffusion


def _text_encoder_module(clip):
    """The Qwen3 0.6B text model inside ComfyUI's ACE-Step 1.5 CLIP; SideStepError for any other CLIP."""
    from ..sidestep.errors import CheckpointError

    qwen = getattr(getattr(clip, "cond_stage_model", None), "qwen3_06b", None)
    transformer = getattr(qwen, "transformer", None)
    if transformer is None:
        raise CheckpointError(
            "The CLIP is not ACE-Step 1.5's text encoder. Load qwen_0.6b_ace15.safetensors with DualCLIPLoader "
            "(type ace) or use the CLIP of an ACE-Step 1.5 all-in-one checkpoint."
        )
    return transformer


def _vae_module(vae):
    """The Oobleck audio VAE inside ComfyUI's VAE; SideStepError for an image or other VAE."""
    from comfy.ldm.audio.autoencoder import AudioOobleckVAE

    from ..sidestep.errors import CheckpointError

    model = getattr(vae, "first_stage_model", None)
    if not isinstance(model, AudioOobleckVAE) or getattr(vae, "latent_channels", None) != 64:
        raise CheckpointError(
            "The VAE is not ACE-Step 1.5's audio VAE. Load ace_1.5_vae.safetensors with Load VAE, or use the VAE of "
            "an ACE-Step 1.5 all-in-one checkpoint."
        )
    return model

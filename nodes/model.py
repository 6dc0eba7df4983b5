"""Load ACE-Step Checkpoint: pick a model folder; its parts load lazily when a downstream node needs them."""

from __future__ import annotations

from pathlib import Path

from comfy_api.latest import io

from .common import CATEGORY, acestep_roots, discover_models, model_name_of, resolve_device, resolve_dtype
from .handles import AcestepModel, ModelHandle

AUTO = "auto"
DTYPES = (AUTO, "bf16", "fp32")
DEVICES = (AUTO, "cpu", "cuda")


def _locate(model: str, model_path: str) -> tuple[Path, str]:
    """(checkpoint root, model folder name) from the typed path, else from the dropdown choice."""
    from sidestep.errors import CheckpointError

    if model_path.strip():
        path = Path(model_path.strip()).expanduser()
        if (path / "config.json").is_file():
            return path.parent, path.name
        return path, model_name_of(model)
    name = model_name_of(model)
    for root, entry in discover_models():
        if entry.name == name:
            return root, name
    roots = ", ".join(str(root) for root in acestep_roots()) or "none exist"
    raise CheckpointError(
        f"No ACE-Step model named {name!r} in ComfyUI's acestep folders ({roots}). Put the checkpoint folders "
        "(acestep-v15-turbo, vae, Qwen3-Embedding-0.6B, ...) in models/acestep or an extra_model_paths.yaml "
        "'acestep:' entry, or type the folder into model_path."
    )


class LoadCheckpoint(io.ComfyNode):
    """Choose an ACE-Step 1.5 model (official or custom fine-tune) with its VAE and text encoder."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """The discovered models (rescanned whenever ComfyUI asks for node definitions) and loading options."""
        from sidestep.checkpoints import BASE_MODELS

        return io.Schema(
            node_id="SideStepLoadCheckpoint",
            display_name="Load ACE-Step Checkpoint",
            category=CATEGORY,
            description=(
                "Picks an ACE-Step 1.5 model folder from ComfyUI's acestep model folders. Nothing heavy loads here: "
                "the DiT, VAE and text encoder load when a node downstream needs them."
            ),
            inputs=[
                io.Combo.Input(
                    "model",
                    options=[entry.label for _, entry in discover_models()],
                    tooltip=(
                        "ACE-Step 1.5 models found in models/acestep (and extra_model_paths.yaml 'acestep:' folders), "
                        "official variants first. The folder must sit beside vae/ and Qwen3-Embedding-0.6B/."
                    ),
                ),
                io.Combo.Input(
                    "base_model",
                    options=[AUTO, *BASE_MODELS],
                    default=AUTO,
                    tooltip=(
                        "auto reads the base (turbo/base/sft) from the model's config.json. Set it for a custom "
                        "fine-tune whose config does not say: it decides the training schedule and sampling defaults."
                    ),
                ),
                io.String.Input(
                    "model_path",
                    default="",
                    tooltip=(
                        "Optional. A model folder (e.g. /models/checkpoints/acestep-v15-turbo) or a checkpoint root "
                        "anywhere on disk; when set it overrides the dropdown (a root uses the dropdown's model name)."
                    ),
                ),
                io.Combo.Input(
                    "dtype",
                    options=list(DTYPES),
                    default=AUTO,
                    tooltip="Weight precision. auto: bf16 on CUDA, fp32 on the CPU (most CPUs compute bf16 slowly).",
                ),
                io.Combo.Input(
                    "device",
                    options=list(DEVICES),
                    default=AUTO,
                    tooltip="Where the model runs. auto: ComfyUI's device (the CPU when ComfyUI runs with --cpu).",
                ),
            ],
            outputs=[AcestepModel.Output(display_name="model", tooltip="The chosen model; connect it to the other Side-Step nodes.")],
        )

    @classmethod
    def validate_inputs(cls, model: str, model_path: str, device: str) -> bool | str:
        """Accept a typed path, or a dropdown value that names a model that is (still) there, on a usable device."""
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            return "device is 'cuda' but this ComfyUI has no CUDA GPU; choose auto or cpu."
        if model_path.strip() or any(entry.name == model_name_of(model) for _, entry in discover_models()):
            return True
        roots = ", ".join(str(root) for root in acestep_roots()) or "none exist yet"
        return (
            f"No ACE-Step model {model_name_of(model)!r} in the acestep model folders ({roots}). Put the checkpoints "
            "in models/acestep (or an extra_model_paths.yaml 'acestep:' entry), or type a folder into model_path."
        )

    @classmethod
    def execute(cls, model: str, base_model: str, model_path: str, dtype: str, device: str) -> io.NodeOutput:
        """Locate the model and its shared parts; nothing heavy is loaded yet."""
        from sidestep.bundle import open_checkpoint

        root, name = _locate(model, model_path)
        target = resolve_device(device)
        bundle = open_checkpoint(
            root, name, base=None if base_model == AUTO else base_model, dtype=resolve_dtype(dtype, target), device=target
        )
        return io.NodeOutput(ModelHandle(bundle))

"""Adapter nodes: configure a LoRA/LoKR, load one onto an ACE-Step model, or patch it into a native ComfyUI MODEL."""

from __future__ import annotations

from pathlib import Path

from comfy_api.latest import io

from ..sidestep.adapters.config import CUSTOM_TARGET, AdapterConfig
from ..sidestep.adapters.kinds import KINDS, kind_named
from ..sidestep.settings import from_widgets
from .folders import NONE_CHOICE, adapter_choices, resolve_adapter_choice
from .handles import (
    CATEGORY,
    AcestepModel,
    Adapter,
    AdapterConfigType,
    AdapterHandle,
    ModelHandle,
)
from .settings import setting_inputs

# The Configure node's settings: LoRA's and LoKR's, the target layers, then every later kind's own in registry order
# (new widgets come last); a setting several kinds share (rank, alpha, weight decomposition) is one widget.
_FIRST_KINDS = ("lora", "lokr")
ADAPTER_SETTINGS = (
    *(KINDS[name].config for name in _FIRST_KINDS),
    AdapterConfig,
    *(kind.config for name, kind in KINDS.items() if name not in _FIRST_KINDS),
)
_STRENGTH_TOOLTIP = "How strongly the adapter applies: 1.0 as trained, 0 off, negative values push away from it."


def _adapter_inputs() -> list[io.Input]:
    """The inputs shared by both adapter loaders: a trained ADAPTER or a discovered file/folder, and a strength."""
    return [
        Adapter.Input(
            "adapter",
            optional=True,
            tooltip="An adapter from Train Adapter. When connected it is used instead of adapter_file.",
        ),
        io.Combo.Input(
            "adapter_file",
            options=adapter_choices(),
            default=NONE_CHOICE,
            tooltip=(
                "A trained adapter on disk: Side-Step runs in output/sidestep (final or checkpoints/epoch_N) and "
                ".safetensors files in models/loras. Ignored when an adapter is connected."
            ),
        ),
        io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05, tooltip=_STRENGTH_TOOLTIP),
    ]


def _chosen_path(adapter: AdapterHandle | None, adapter_file: str) -> Path:
    """The adapter to load: the connected ADAPTER, else the dropdown choice."""
    from ..sidestep.errors import AdapterError

    if adapter is not None:
        return adapter.path
    if adapter_file == NONE_CHOICE:
        raise AdapterError("No adapter chosen: connect an ADAPTER from Train Adapter or pick one in adapter_file.")
    return resolve_adapter_choice(adapter_file)


def _validate_choice(adapter_file: str) -> bool | str:
    """Accept "none", a listed adapter, or a path that exists (e.g. typed into a saved workflow)."""
    from ..sidestep.errors import AdapterError

    if adapter_file == NONE_CHOICE or adapter_file in adapter_choices():
        return True
    try:
        if resolve_adapter_choice(adapter_file).exists():
            return True
    except AdapterError:
        pass
    return f"Adapter {adapter_file!r} is not on disk (any more); pick another one in adapter_file (or refresh the list)."


def _fingerprint(adapter_file: str) -> object:
    """The chosen file's modification time, so a retrained adapter under the same name is loaded again."""
    if adapter_file == NONE_CHOICE:
        return NONE_CHOICE
    from ..sidestep.adapters.files import resolve_adapter_path
    from ..sidestep.errors import AdapterError

    try:
        return adapter_file, resolve_adapter_path(resolve_adapter_choice(adapter_file)).stat().st_mtime_ns
    except (AdapterError, OSError):
        return adapter_file, None


class ConfigureAdapter(io.ComfyNode):
    """Choose the adapter kind (LoRA, LoKR, LoHA, OFT), its size and which DiT layers it adapts."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """The adapter type, its size and its target layers, with the core's defaults."""
        return io.Schema(
            node_id="SideStepConfigureAdapter",
            display_name="Configure LoRA/LoKR",
            category=CATEGORY,
            description=(
                "The adapter to train: LoRA (PEFT) or LoKR, LoHA, OFT (LyCORIS), its size, and its target layers. "
                "Widgets named after a kind apply to that kind only."
            ),
            inputs=[
                io.Combo.Input(
                    "adapter_type",
                    options=list(KINDS),
                    default="lora",
                    tooltip=" ".join(kind.summary for kind in KINDS.values()),
                ),
                *setting_inputs(*ADAPTER_SETTINGS),
            ],
            outputs=[AdapterConfigType.Output(display_name="adapter_config", tooltip="Connect to Train Adapter.")],
        )

    @classmethod
    def execute(cls, adapter_type: str, **settings: object) -> io.NodeOutput:
        """Build and validate the chosen kind's settings from the widgets it declares (AdapterError for impossible ones)."""
        config_class = kind_named(adapter_type).config
        values = from_widgets(config_class, settings)
        if values.get("target") != CUSTOM_TARGET:
            values["custom_modules"] = ()
        config = config_class(**values)
        return io.NodeOutput(config, ui={"text": [config.describe()]})


class LoadAdapter(io.ComfyNode):
    """Stack a trained adapter on an ACE-Step model for Sample with Shift (the base weights stay untouched)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Model in, model with one more adapter out."""
        return io.Schema(
            node_id="SideStepLoadAdapter",
            display_name="Load Adapter",
            category=CATEGORY,
            description=(
                "Adds a LoRA/LoKR adapter to an ACE-Step model. Chain several to stack them; the model itself is "
                "shared, and the adapters apply only while sampling."
            ),
            inputs=[AcestepModel.Input("model", tooltip="The ACE-Step model (from Load ACE-Step Checkpoint or another Load Adapter)."),
                    *_adapter_inputs()],
            outputs=[AcestepModel.Output(display_name="model", tooltip="The same model with this adapter stacked on top.")],
        )

    @classmethod
    def validate_inputs(cls, adapter_file: str) -> bool | str:
        """Check the dropdown choice (the connected ADAPTER is checked when it arrives)."""
        return _validate_choice(adapter_file)

    @classmethod
    def fingerprint_inputs(cls, adapter_file: str, **_: object) -> object:
        """Reload when the chosen file changed on disk."""
        return _fingerprint(adapter_file)

    @classmethod
    def execute(
        cls, model: ModelHandle, adapter_file: str, strength: float, adapter: AdapterHandle | None = None
    ) -> io.NodeOutput:
        """Read the adapter and stack it on the model handle."""
        from ..sidestep.adapters.files import load_adapter

        loaded = load_adapter(_chosen_path(adapter, adapter_file))
        text = f"{loaded.kind} adapter {loaded.source} (rank {loaded.rank}) at strength {strength:g}"
        return io.NodeOutput(model.with_adapter(loaded, strength), ui={"text": [text]})


class ApplyAdapterToModel(io.ComfyNode):
    """Patch a Side-Step adapter into ComfyUI's own ACE-Step 1.5 MODEL (for ComfyUI's samplers)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Native MODEL in, patched clone out."""
        return io.Schema(
            node_id="SideStepApplyAdapterToModel",
            display_name="Apply Adapter to ComfyUI MODEL",
            category=CATEGORY,
            description=(
                "Adds the adapter's weight changes to a native ComfyUI ACE-Step 1.5 MODEL as LoRA patches "
                "(diffusion_model.decoder.<layer>.weight), like ComfyUI's LoraLoaderModelOnly does."
            ),
            inputs=[io.Model.Input("model", tooltip="A native ComfyUI ACE-Step 1.5 MODEL (e.g. from Load Diffusion Model)."),
                    *_adapter_inputs()],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="A patched copy of the model; the input stays unchanged.")],
        )

    @classmethod
    def validate_inputs(cls, adapter_file: str) -> bool | str:
        """Check the dropdown choice (the connected ADAPTER is checked when it arrives)."""
        return _validate_choice(adapter_file)

    @classmethod
    def fingerprint_inputs(cls, adapter_file: str, **_: object) -> object:
        """Re-patch when the chosen file changed on disk."""
        return _fingerprint(adapter_file)

    @classmethod
    def execute(cls, model: object, adapter_file: str, strength: float, adapter: AdapterHandle | None = None) -> io.NodeOutput:
        """Put the adapter's tensors in ComfyUI's key format (in memory), let ComfyUI's LoRA loader turn them into
        patches, add them to a clone."""
        import comfy.lora

        from ..sidestep.adapters.export import (
            COMFY_DECODER_PREFIX,
            comfy_key_map,
            comfy_tensors,
        )
        from ..sidestep.adapters.files import load_adapter
        from ..sidestep.errors import AdapterError

        key_map = comfy_key_map(list(model.model_state_dict().keys()))
        if not key_map:
            raise AdapterError(
                f"This MODEL has no {COMFY_DECODER_PREFIX.rstrip('.')} weights, so it is not an ACE-Step 1.5 model. "
                "Connect an ACE-Step 1.5 MODEL, or use Load Adapter with Load ACE-Step Checkpoint instead."
            )
        patches = comfy.lora.load_lora(comfy_tensors(load_adapter(_chosen_path(adapter, adapter_file))), key_map)
        if not patches:
            raise AdapterError(
                "None of the adapter's layers exist in this MODEL; it was trained for a different model."
            )
        patched = model.clone()
        applied = patched.add_patches(patches, strength)
        text = f"patched {len(applied)} of {len(patches)} adapter layers at strength {strength:g}"
        return io.NodeOutput(patched, ui={"text": [text]})

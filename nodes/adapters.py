"""Adapter nodes: configure a LoRA/LoKR, load one onto an ACE-Step model, or patch it into a native ComfyUI MODEL."""

from __future__ import annotations

from pathlib import Path

from comfy_api.latest import io
from sidestep.adapters.config import CUSTOM_TARGET, TARGET_PRESETS
from sidestep.adapters.kinds import KINDS
from sidestep.adapters.kinds.loha import LohaConfig
from sidestep.adapters.kinds.lokr import LokrConfig
from sidestep.adapters.kinds.lora import LoraConfig
from sidestep.adapters.kinds.oft import OftConfig
from sidestep.settings import declared

from .common import CATEGORY, NONE_CHOICE, adapter_choices, resolve_adapter_choice
from .handles import AcestepModel, Adapter, AdapterConfigType, AdapterHandle, ModelHandle

DECODER_PREFIX = "diffusion_model.decoder."
WEIGHT_SUFFIX = ".weight"
ADAPTER_TARGETS = (*TARGET_PRESETS, CUSTOM_TARGET)
LORA_DEFAULTS, LOKR_DEFAULTS, LOHA_DEFAULTS, OFT_DEFAULTS = LoraConfig(), LokrConfig(), LohaConfig(), OftConfig()
def _tooltip(config: type, name: str) -> str:
    """A kind-only widget's tooltip: the setting's declared help."""
    return declared(config)[name][1].help


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
    from sidestep.errors import AdapterError

    if adapter is not None:
        return adapter.path
    if adapter_file == NONE_CHOICE:
        raise AdapterError("No adapter chosen: connect an ADAPTER from Train Adapter or pick one in adapter_file.")
    return resolve_adapter_choice(adapter_file)


def _validate_choice(adapter_file: str) -> bool | str:
    """Accept "none", a listed adapter, or a path that exists (e.g. typed into a saved workflow)."""
    from sidestep.errors import AdapterError

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
    from sidestep.adapters.files import resolve_adapter_path
    from sidestep.errors import AdapterError

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
                "Widgets named after a kind apply to that kind only (optional, so prompts saved before them still run)."
            ),
            inputs=[
                io.Combo.Input(
                    "adapter_type",
                    options=list(KINDS),
                    default=LORA_DEFAULTS.kind,
                    tooltip=" ".join(kind.summary for kind in KINDS.values()),
                ),
                io.Int.Input(
                    "rank",
                    default=LORA_DEFAULTS.rank,
                    min=1,
                    max=1024,
                    tooltip="LoRA rank / LoKR linear dimension: capacity of the adapter (16-128 is typical). LoHA: loha_dim; OFT: oft_block_size.",
                ),
                io.Float.Input(
                    "alpha",
                    default=LORA_DEFAULTS.alpha,
                    min=0.01,
                    max=4096.0,
                    step=1.0,
                    tooltip="Scaling: the update is multiplied by alpha / rank (LoKR: when a factor is decomposed).",
                ),
                io.Float.Input(
                    "dropout",
                    default=LORA_DEFAULTS.dropout,
                    min=0.0,
                    max=0.9,
                    step=0.01,
                    tooltip="LoRA only: dropout on the adapter's input during training (0 = off).",
                ),
                io.Boolean.Input(
                    "weight_decompose",
                    default=LORA_DEFAULTS.use_dora,
                    tooltip=(
                        "DoRA for LoRA / weight decomposition for LoKR and LoHA (OFT has none). Often better quality, but ComfyUI's native "
                        "LoRA loader cannot reproduce it, so no models/loras export is written."
                    ),
                ),
                io.Int.Input(
                    "lokr_factor",
                    default=LOKR_DEFAULTS.factor,
                    min=-1,
                    max=1024,
                    tooltip="LoKR only: Kronecker factor; -1 picks one automatically.",
                ),
                io.Boolean.Input(
                    "lokr_decompose_both",
                    default=LOKR_DEFAULTS.decompose_both,
                    tooltip="LoKR only: also split the smaller Kronecker factor into a low-rank pair.",
                ),
                io.Combo.Input(
                    "target",
                    options=list(ADAPTER_TARGETS),
                    default=LORA_DEFAULTS.target,
                    tooltip=(
                        "Which layers of every DiT block to adapt: attention (self + cross), attention_mlp, "
                        "self_attention, cross_attention, or custom (see custom_modules)."
                    ),
                ),
                io.String.Input(
                    "custom_modules",
                    default="",
                    tooltip=(
                        "With target 'custom': comma-separated layer names, e.g. 'q_proj, v_proj', "
                        "'cross_attn.o_proj' or 'layers.0.self_attn.q_proj'."
                    ),
                ),
                io.Int.Input(
                    "loha_dim",
                    optional=True,
                    default=LOHA_DEFAULTS.linear_dim,
                    min=1,
                    max=1024,
                    tooltip=_tooltip(LohaConfig, "linear_dim"),
                ),
                io.Float.Input(
                    "loha_alpha",
                    optional=True,
                    default=LOHA_DEFAULTS.linear_alpha,
                    min=0.01,
                    max=4096.0,
                    step=1.0,
                    tooltip=_tooltip(LohaConfig, "linear_alpha"),
                ),
                io.Int.Input(
                    "oft_block_size",
                    optional=True,
                    default=OFT_DEFAULTS.block_size,
                    min=2,
                    max=1024,
                    tooltip=_tooltip(OftConfig, "block_size"),
                ),
            ],
            outputs=[AdapterConfigType.Output(display_name="adapter_config", tooltip="Connect to Train Adapter.")],
        )

    @classmethod
    def execute(
        cls,
        adapter_type: str,
        rank: int,
        alpha: float,
        dropout: float,
        weight_decompose: bool,
        lokr_factor: int,
        lokr_decompose_both: bool,
        target: str,
        custom_modules: str,
        loha_dim: int = LOHA_DEFAULTS.linear_dim,
        loha_alpha: float = LOHA_DEFAULTS.linear_alpha,
        oft_block_size: int = OFT_DEFAULTS.block_size,
    ) -> io.NodeOutput:
        """Build and validate the chosen kind's settings from the widgets it uses (AdapterError for impossible ones)."""
        from sidestep.adapters.kinds import kind_named

        widgets = {
            "rank": rank, "alpha": alpha, "dropout": dropout, "weight_decompose": weight_decompose,
            "lokr_factor": lokr_factor, "lokr_decompose_both": lokr_decompose_both, "loha_dim": loha_dim,
            "loha_alpha": loha_alpha, "oft_block_size": oft_block_size,
        }
        modules = tuple(name.strip() for name in custom_modules.split(",") if name.strip())
        kind = kind_named(adapter_type)
        settings = {field: widgets[widget] for widget, field in kind.node_settings.items()}
        config = kind.config(**settings, target=target, custom_modules=modules if target == CUSTOM_TARGET else ())
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
        from sidestep.adapters.files import load_adapter

        loaded = load_adapter(_chosen_path(adapter, adapter_file))
        text = f"{loaded.kind} adapter {loaded.source} (rank {loaded.rank}) at strength {strength:g}"
        return io.NodeOutput(model.with_adapter(loaded, strength), ui={"text": [text]})


def decoder_key_map(model_state_keys: list[str]) -> dict[str, str]:
    """Adapter key prefix (PEFT `base_model.model.<module>`, LyCORIS `lycoris_<module>`) → native ACE-Step 1.5 weight key."""
    from sidestep.adapters.keys import lycoris_name, peft_name

    key_map = {}
    for key in model_state_keys:
        if key.startswith(DECODER_PREFIX) and key.endswith(WEIGHT_SUFFIX):
            module = key[len(DECODER_PREFIX) : -len(WEIGHT_SUFFIX)]
            key_map[peft_name(module)] = key
            key_map[lycoris_name(module)] = key
    return key_map


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
        from sidestep.adapters.export import comfy_tensors
        from sidestep.adapters.files import load_adapter
        from sidestep.errors import AdapterError

        key_map = decoder_key_map(list(model.model_state_dict().keys()))
        if not key_map:
            raise AdapterError(
                "This MODEL has no diffusion_model.decoder weights, so it is not an ACE-Step 1.5 model. "
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

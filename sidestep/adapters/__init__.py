"""Adapters on the DiT decoder: LoRA (PEFT) and LoKR (LyCORIS) for training, loading any adapter form, ComfyUI export."""

from .apply import AppliedAdapters, apply_adapters
from .config import TARGET_PRESETS, AdapterConfig
from .export import export_comfy
from .files import load_adapter, resolve_adapter_path
from .targets import target_modules
from .training import TrainableAdapter, attach_trainable_adapter
from .weights import LoadedAdapter, LokrWeights, LoraWeights

__all__ = [
    "TARGET_PRESETS",
    "AdapterConfig",
    "AppliedAdapters",
    "LoadedAdapter",
    "LokrWeights",
    "LoraWeights",
    "TrainableAdapter",
    "apply_adapters",
    "attach_trainable_adapter",
    "export_comfy",
    "load_adapter",
    "resolve_adapter_path",
    "target_modules",
]

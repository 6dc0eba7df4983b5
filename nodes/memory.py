"""The bridge to ComfyUI's memory manager: the device ComfyUI computes on, room made before a model loads, and the parts
of a bundle registered as ComfyUI models so that Unload Models and ComfyUI's own need for memory release them."""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

import comfy.model_management as model_management
import torch

if TYPE_CHECKING:
    from ..sidestep.bundle import AceStepBundle


def resolve_device(choice: str) -> torch.device:
    """'auto' → ComfyUI's compute device (the CPU under --cpu); otherwise the named device."""
    return model_management.get_torch_device() if choice == "auto" else torch.device(choice)


def make_room(bundle: AceStepBundle) -> None:
    """Ask ComfyUI to unload its own models until the bundle's weights fit, then return cached memory."""
    model_management.free_memory(bundle.bytes_to_load(), bundle.device)
    model_management.soft_empty_cache()


class ComfyMemory:
    """Makes every part a bundle loads visible to ComfyUI's memory manager, so that Unload Models, POST /free and
    ComfyUI's own need for memory release it: each part is registered as a ModelPatcher whose detach drops the part.

    Like ComfyUI's own models, a part lives as long as its bundle does: the registry refers to the bundle weakly, and
    a bundle nothing uses any more (a node's cached output ComfyUI let go) takes its parts off ComfyUI's list."""

    def __init__(self) -> None:
        self._patchers: dict[tuple[int, str], Any] = {}
        self._emptied: list[Any] = []

    def loaded(self, bundle: AceStepBundle, part: str, module: torch.nn.Module) -> None:
        """Register `module` with ComfyUI's loaded models (on the device it already is on; nothing is moved)."""
        import comfy.model_patcher
        from comfy.patcher_extension import CallbacksMP

        key = (id(bundle), part)
        self._forget(key)
        self._emptied.clear()
        holder = torch.nn.Module()  # ModelPatcher sets attributes (device, ...) on what it manages; keep ours intact
        holder.part = module
        patcher = comfy.model_patcher.ModelPatcher(holder, load_device=bundle.device, offload_device=bundle.device)
        owner = weakref.ref(bundle)
        patcher.add_callback(CallbacksMP.ON_DETACH, lambda _patcher, _unpatch: self._unloaded_by_comfyui(owner(), part))
        self._patchers[key] = patcher
        weakref.finalize(bundle, self._patchers.pop, key, None)  # ComfyUI then drops its entry, as for its own models
        model_management.load_models_gpu([patcher], force_full_load=True)

    def released(self, bundle: AceStepBundle, part: str) -> None:
        """The bundle dropped `part` itself: take it off ComfyUI's list so nothing keeps it alive."""
        self._forget((id(bundle), part))

    def _unloaded_by_comfyui(self, bundle: AceStepBundle | None, part: str) -> None:
        """ComfyUI unloaded the part (Unload Models, /free, or room for another model): drop it from the bundle.

        ComfyUI is still walking its list of loaded models, so the (now empty) holder stays alive until our next load."""
        if bundle is None:  # gone already, and its parts with it
            return
        patcher = self._patchers.pop((id(bundle), part), None)
        if patcher is not None:
            del patcher.model.part
            self._emptied.append(patcher)
        bundle.release(**{part: True})
        logging.info("Side-Step: ComfyUI unloaded the %s of %s", part, bundle.entry.name)

    def _forget(self, key: tuple[int, str]) -> None:
        """Remove the patcher registered under `key` from ComfyUI's loaded models and from this registry."""
        patcher = self._patchers.pop(key, None)
        if patcher is None:
            return
        loaded = model_management.current_loaded_models
        for index in reversed(range(len(loaded))):
            if loaded[index].model is patcher:
                loaded.pop(index)


COMFY_MEMORY = ComfyMemory()

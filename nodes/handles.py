"""The objects that travel along Side-Step's node links, their ComfyUI socket types, and the nodes' menu category."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from comfy_api.latest import io

if TYPE_CHECKING:
    from ..sidestep.adapters.loaded import LoadedAdapter
    from ..sidestep.adapters.metadata import AdapterMetadata
    from ..sidestep.bundle import AceStepBundle
    from ..sidestep.dataset.loader import DatasetIndex

CATEGORY = "Side-Step"  # the nodes' menu

AcestepModel = io.Custom("ACESTEP_MODEL")
AcestepDataset = io.Custom("ACESTEP_DATASET")
AdapterConfigType = io.Custom("ADAPTER_CONFIG")
Adapter = io.Custom("ADAPTER")


@dataclass(frozen=True)
class ModelHandle:
    """An ACE-Step checkpoint bundle (parts load lazily) plus the adapters stacked on it for generation."""

    bundle: AceStepBundle
    adapters: tuple[tuple[LoadedAdapter, float], ...] = ()

    def with_adapter(self, adapter: LoadedAdapter, strength: float) -> ModelHandle:
        """A new handle sharing the bundle, with one more (adapter, strength) on top."""
        return replace(self, adapters=(*self.adapters, (adapter, strength)))

    @property
    def adapter_metadata(self) -> AdapterMetadata | None:
        """The first adapter's training record (its recorded shift and steps drive "auto" sampling), or None."""
        return self.adapters[0][0].metadata if self.adapters else None


@dataclass(frozen=True)
class DatasetHandle:
    """An encoded dataset folder, a summary of its manifest, and its index (manifest read once, passed to training)."""

    folder: Path
    model_variant: str
    clips: int
    seconds: float
    first_caption: str = ""
    rejected: tuple[tuple[str, str], ...] = ()
    index: DatasetIndex | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class AdapterHandle:
    """A trained adapter: its folder (OUT/final), run folder, training record and the ComfyUI-native export (if any)."""

    path: Path
    run_dir: Path
    metadata: AdapterMetadata | None = None
    comfy_lora: Path | None = None

"""Analyse Rank: adaptive rank between Encode Dataset and Train Adapter — per-module LoRA ranks measured on the data."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from comfy_api.latest import io

from ..sidestep.adapters.adaptive import RANK_MAP_FILE, AdaptiveRankSettings
from ..sidestep.settings import from_widgets
from ..sidestep.training.config import TrainConfig
from .handles import CATEGORY, AcestepDataset, AcestepModel, AdapterConfigType, DatasetHandle, ModelHandle
from .memory import make_room
from .settings import setting_inputs

if TYPE_CHECKING:
    from ..sidestep.adapters.config import AdapterConfig

NODE_TYPE = "SideStepAnalyseRank"


class AnalyseRank(io.ComfyNode):
    """Measure how much each LoRA module matters on the dataset and give each its own rank within the budget."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Model, dataset and LoRA config in; the config with per-module ranks out (the map is saved beside the data)."""
        return io.Schema(
            node_id=NODE_TYPE,
            display_name="Analyse Rank (adaptive LoRA)",
            category=CATEGORY,
            description=(
                "Reads a few clips of the encoded dataset through the training objective and measures, per LoRA "
                "module, how much the loss cares about it (Fisher information) and how many directions that needs. "
                f"Gives each module its own rank within the budget, writes {RANK_MAP_FILE} into the dataset folder and "
                "passes the LoRA config on with that map: connect it between Configure LoRA/LoKR and Train Adapter."
            ),
            inputs=[
                AcestepModel.Input("model", tooltip="The model you will train (the one the dataset was encoded with)."),
                AcestepDataset.Input("dataset", tooltip="The encoded dataset from Encode Dataset."),
                AdapterConfigType.Input("adapter_config", tooltip="A LoRA from Configure LoRA/LoKR: its rank sets the default budget."),
                io.Int.Input(
                    "seed", default=TrainConfig.__dataclass_fields__["seed"].default, min=0, max=2**31 - 1,
                    control_after_generate=False,
                    tooltip="Which clips, noise and timesteps are read; the same seed gives the same map.",
                ),
                *setting_inputs(AdaptiveRankSettings),
            ],
            outputs=[AdapterConfigType.Output(display_name="adapter_config", tooltip="The LoRA with per-module ranks; connect to Train Adapter.")],
        )

    @classmethod
    def execute(cls, model: ModelHandle, dataset: DatasetHandle, adapter_config: AdapterConfig, seed: int, **settings: object) -> io.NodeOutput:
        """Measure, write the map beside the dataset, and return the config with the map and its summary."""
        from ..sidestep.errors import AdapterError
        from ..sidestep.training.rank_analysis import analyse_ranks

        if adapter_config.kind != "lora":
            raise AdapterError("Analyse Rank sizes LoRA modules; choose adapter_type lora in Configure LoRA/LoKR.")
        values = from_widgets(AdaptiveRankSettings, settings)
        make_room(model.bundle)
        with torch.inference_mode(False), torch.enable_grad():
            rank_map = analyse_ranks(
                model.bundle, dataset.index or dataset.folder, adapter_config, AdaptiveRankSettings(**values),
                TrainConfig(output_dir="", seed=seed),
            )
        path = rank_map.save(dataset.folder / RANK_MAP_FILE)
        return io.NodeOutput(rank_map.adapter_config(adapter_config), ui={"text": [f"{rank_map.summary()}\nmap: {path}"]})

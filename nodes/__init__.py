"""Side-Step's ComfyUI nodes (V3 API): thin wrappers that hand their inputs to the `sidestep` core."""

from comfy_api.latest import ComfyExtension, io

from .adapters import ApplyAdapterToModel, ConfigureAdapter, LoadAdapter
from .dataset import EncodeDataset
from .jobs import JOBS, register_routes
from .label import LabelSongs
from .model import AceStepFromComfyModels, LoadCheckpoint
from .rank import AnalyseRank
from .sample import SampleWithShift
from .train import TrainAdapter

NODES: list[type[io.ComfyNode]] = [
    LoadCheckpoint,
    AceStepFromComfyModels,
    LabelSongs,
    EncodeDataset,
    ConfigureAdapter,
    AnalyseRank,
    TrainAdapter,
    LoadAdapter,
    ApplyAdapterToModel,
    SampleWithShift,
]


class SideStepExtension(ComfyExtension):
    """The Side-Step node pack as one ComfyUI extension."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        """Every Side-Step node class. ComfyUI asks for them once at start-up, before it serves its routes, so this is
        also where the web widget's routes (job histories, Stop & save) are added to its server."""
        from server import PromptServer

        register_routes(PromptServer.instance.routes, JOBS)
        return list(NODES)

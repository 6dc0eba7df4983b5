"""Encode Dataset: a folder of songs (with caption/lyric sidecars) → training tensors + manifest.json."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from comfy import model_management
from comfy_api.latest import io

from ..sidestep.dataset.settings import EncodeConfig
from ..sidestep.settings import from_widgets
from ..sidestep.wording import quantity
from .folders import DATASETS_FOLDER, RUNS_FOLDER, input_dir, output_dir, under
from .handles import CATEGORY, AcestepDataset, AcestepModel, DatasetHandle, ModelHandle
from .jobs import JOBS
from .memory import make_room
from .progress import NodeProgress
from .settings import setting_inputs

NODE_TYPE = "SideStepEncodeDataset"
EVENT = "sidestep.encode"


def _file_listing(folder: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime) of every file under `folder`: changes when songs or sidecars change."""
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return [(p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _summary(handle: DatasetHandle, encoded: int, skipped: int, warnings: list[str]) -> str:
    """What the node shows: counts, the dataset folder, rejected files with reasons, sidecar warnings."""
    lines = [
        f"{quantity(handle.clips, 'clip')} ({handle.seconds:.1f} s) for {handle.model_variant} in {handle.folder}",
        f"encoded {quantity(encoded, 'song')}, reused {skipped}, rejected {len(handle.rejected)}",
    ]
    lines += [f"rejected {source}: {reason}" for source, reason in handle.rejected]
    lines += [f"warning: {warning}" for warning in warnings]
    return "\n".join(lines)


class EncodeDataset(io.ComfyNode):
    """Encode songs into the tensors training reads; unreadable files are skipped and listed, never fatal alone."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Model, song folder, dataset folder and encoding options in; the dataset out."""
        return io.Schema(
            node_id=NODE_TYPE,
            display_name="Encode Dataset",
            category=CATEGORY,
            description=(
                "Reads every song in a folder (captions and lyrics from .txt/.json sidecars or the file name), "
                "encodes it with the model's VAE and text encoder and writes one tensor file per clip plus "
                "manifest.json. Re-running skips songs that are already encoded."
            ),
            inputs=[
                AcestepModel.Input("model", tooltip="The model to train later: a dataset only fits the model it was encoded with."),
                io.String.Input(
                    "audio_folder",
                    default="sidestep/songs",
                    tooltip=(
                        "Folder of songs (.wav/.flac/.mp3/.ogg/.opus/.m4a, sub-folders included). "
                        "A relative path is inside ComfyUI's input folder."
                    ),
                ),
                io.String.Input(
                    "dataset_folder",
                    default=f"{RUNS_FOLDER}/{DATASETS_FOLDER}/my_songs",
                    tooltip="Where the tensors and manifest.json go. A relative path is inside ComfyUI's output folder.",
                ),
                *setting_inputs(EncodeConfig),
            ],
            outputs=[AcestepDataset.Output(display_name="dataset", tooltip="The encoded dataset; connect it to Train Adapter.")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, audio_folder: str, dataset_folder: str, **_: object) -> object:
        """Re-run when songs or sidecars change, or when the dataset's manifest appears or disappears."""
        from ..sidestep.dataset.tensors import MANIFEST_NAME

        manifest = under(output_dir(), dataset_folder) / MANIFEST_NAME
        return _file_listing(under(input_dir(), audio_folder)), manifest.is_file()

    @classmethod
    def execute(cls, model: ModelHandle, audio_folder: str, dataset_folder: str, **settings: object) -> io.NodeOutput:
        """Encode (reporting each song), then summarise the dataset and the rejected files."""
        from ..sidestep.dataset.encode import EncodeEvent, encode_dataset
        from ..sidestep.dataset.loader import dataset_index

        config = EncodeConfig(
            audio_dir=str(under(input_dir(), audio_folder)),
            output_dir=str(under(output_dir(), dataset_folder)),
            **from_widgets(EncodeConfig, settings),
        )
        rejected: list[tuple[str, str]] = []
        make_room(model.bundle)
        with JOBS.track(cls.hidden.unique_id, NODE_TYPE) as job:
            progress = NodeProgress(job.node, job)

            def report(event: EncodeEvent) -> None:
                if event.status == "rejected":
                    rejected.append((event.file, event.reason))
                progress.send(EVENT, {**dataclasses.asdict(event), "rejected": rejected})
                progress.bar(event.index, event.total)

            result = encode_dataset(model.bundle, config, report, model_management.processing_interrupted)
        model_management.throw_exception_if_processing_interrupted()
        clips = result.manifest.clips
        handle = DatasetHandle(
            folder=result.output_dir,
            model_variant=result.manifest.model_variant,
            clips=len(clips),
            seconds=sum(clip.duration for clip in clips),
            first_caption=clips[0].caption if clips else "",
            rejected=tuple((item.source, item.reason) for item in result.rejected),
            index=dataset_index(result.output_dir, result.manifest),
        )
        text = _summary(handle, result.encoded, result.skipped, result.warnings)
        return io.NodeOutput(handle, ui={"text": [text]})

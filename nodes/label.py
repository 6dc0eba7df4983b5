"""Label Songs: ACE-Step's own 5 Hz LM writes captions, BPM, key, time signature, language and lyrics into sidecars."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import folder_paths
from comfy import model_management
from comfy_api.latest import io

from ..sidestep.labeling.settings import LabelConfig, Sampling
from ..sidestep.settings import from_widgets
from ..sidestep.variants import inference_dtype
from .folders import acestep_roots, comfy_tokenizer_dir, input_dir, under
from .handles import CATEGORY, AcestepModel
from .progress import NodeProgress
from .settings import setting_inputs

NODE_TYPE = "SideStepLabelSongs"
EVENT = "sidestep.label"


def _lms():
    """5 Hz LMs ComfyUI can see: acestep-5Hz-lm-* folders in the acestep folders, qwen_*_ace15 LM text encoders."""
    from ..sidestep.labeling.lm import find_lms

    text_encoders = [Path(path) for path in folder_paths.get_folder_paths("text_encoders")]
    return find_lms(acestep_roots(), text_encoders)


class LabelSongs(io.ComfyNode):
    """Label a folder of songs with the 5 Hz LM; fields the user wrote are kept, songs already labelled are skipped."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Model (VAE + audio tokenizer), LM, song folder, what to write, overwrite rule and sampling in; the folder out."""
        return io.Schema(
            node_id=NODE_TYPE,
            display_name="Label Songs",
            category=CATEGORY,
            description=(
                "Listens to every song in a folder with ACE-Step's 5 Hz LM and writes its caption, BPM, key, time "
                "signature, language and lyrics into song.txt sidecars, keeping every field you wrote. The table of "
                "what it wrote shows here; edit the song.txt files before encoding if you like. Re-running skips "
                "songs already labelled."
            ),
            inputs=[
                AcestepModel.Input("model", tooltip="Its VAE and audio tokenizer turn each song into the codes the LM reads."),
                io.Combo.Input(
                    "lm",
                    options=[entry.label for entry in _lms()],
                    tooltip=(
                        "The 5 Hz LM: acestep-5Hz-lm-0.6B/1.7B/4B folders beside the ACE-Step checkpoints, or "
                        "text_encoders/qwen_1.7b_ace15 / qwen_4b_ace15.safetensors."
                    ),
                ),
                io.String.Input(
                    "audio_folder",
                    default="sidestep/songs",
                    tooltip="Folder of songs; a relative path is inside ComfyUI's input folder. Sidecars are written beside the songs.",
                ),
                *setting_inputs(LabelConfig, Sampling),
            ],
            outputs=[io.String.Output(display_name="audio_folder", tooltip="The same folder; connect it to Encode Dataset.")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, lm: str) -> bool | str:
        """Accept an LM that is (still) there."""
        if any(entry.label == lm for entry in _lms()):
            return True
        return "No 5 Hz LM found: put acestep-5Hz-lm-* beside the ACE-Step checkpoints or qwen_1.7b_ace15.safetensors in models/text_encoders."

    @classmethod
    def fingerprint_inputs(cls, audio_folder: str, **_: object) -> object:
        """Re-run when songs or sidecars change (a re-run skips songs already labelled)."""
        folder = under(input_dir(), audio_folder)
        return sorted((p.relative_to(folder).as_posix(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []

    @classmethod
    def execute(cls, model, lm: str, audio_folder: str, **settings: object) -> io.NodeOutput:
        """Label (reporting each song), then show the table of what was written."""
        from ..sidestep.labeling.label import LabelEvent, label_songs

        entry = next(entry for entry in _lms() if entry.label == lm)
        config = LabelConfig(
            audio_dir=str(under(input_dir(), audio_folder)),
            lm_path=str(entry.path),
            tokenizer_dir=str(comfy_tokenizer_dir()) if entry.kind == "comfyui" else None,
            sampling=Sampling(**from_widgets(Sampling, settings)),
            **from_widgets(LabelConfig, settings),
        )
        progress = NodeProgress(cls.hidden.unique_id)

        def report(event: LabelEvent) -> None:
            progress.send(EVENT, dataclasses.asdict(event))
            progress.bar(event.index, event.total)

        bundle = model.bundle
        result = label_songs(
            bundle, config, report, model_management.processing_interrupted, device=bundle.device,
            dtype=inference_dtype(bundle.dtype, bundle.device),
        )
        model_management.throw_exception_if_processing_interrupted()
        summary = (
            f"{result.lm_name}: {result.seconds:.1f} s, peak RAM {result.peak_ram_mib:.0f} MiB, "
            f"peak VRAM {result.peak_vram_mib:.0f} MiB (the LM is freed again)"
        )
        return io.NodeOutput(audio_folder, ui={"text": [result.table() + "\n" + summary]})

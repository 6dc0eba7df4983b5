"""Sample with Shift: text-to-music with the ACE-Step model (and its stacked adapters) → native AUDIO."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..sidestep.request import GenerationRequest
from ..sidestep.settings import WIDGET_AUTO, from_widgets
from .handles import CATEGORY, AcestepModel, ModelHandle
from .memory import make_room
from .progress import NodeProgress
from .settings import setting_inputs


class SampleWithShift(io.ComfyNode):
    """Generate songs; steps, shift and guidance default to what the adapter was trained for (or the variant's)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Model and song description in; AUDIO out."""
        return io.Schema(
            node_id="SideStepSampleWithShift",
            display_name="Sample with Shift",
            category=CATEGORY,
            description=(
                "Generates music from a caption and lyrics with the ACE-Step model and any adapters loaded on it. "
                f"{WIDGET_AUTO} means auto: the adapter's recorded shift and steps, else the model variant's defaults."
            ),
            inputs=[
                AcestepModel.Input("model", tooltip="The ACE-Step model, with adapters from Load Adapter if any."),
                io.String.Input(
                    "caption",
                    multiline=True,
                    default="",
                    tooltip="Describe the music: genre, instruments, mood, voice. Include your adapter's trigger word.",
                ),
                io.String.Input(
                    "lyrics",
                    multiline=True,
                    default="[Instrumental]",
                    tooltip="Lyrics with section tags such as [Verse] and [Chorus]; [Instrumental] for no vocals.",
                ),
                io.String.Input(
                    "language",
                    default="en",
                    tooltip="Language code of the lyrics (en, zh, ja, ko, es, fr, de, ...); 'unknown' lets the model guess.",
                ),
                *setting_inputs(GenerationRequest),
            ],
            outputs=[io.Audio.Output(display_name="audio", tooltip="48 kHz stereo audio; connect Save Audio or Preview Audio.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model: ModelHandle, caption: str, lyrics: str, language: str, **settings: object) -> io.NodeOutput:
        """Generate (progress on ComfyUI's bar, Cancel honoured between steps) and show any warnings."""
        from ..sidestep.generate import generate

        request = GenerationRequest(
            caption=caption, lyrics=lyrics, language=language.strip() or "unknown", **from_widgets(GenerationRequest, settings)
        )
        progress = NodeProgress(cls.hidden.unique_id)
        make_room(model.bundle)
        result = generate(model.bundle, request, model.adapters, model.adapter_metadata, progress.bar)
        for warning in result.warnings:
            logging.warning("[Side-Step] %s", warning)
        text = "\n".join(result.warnings) or "no warnings"
        return io.NodeOutput(result.as_comfy_audio(), ui={"text": [text]})

"""Sample with Shift: text-to-music with the ACE-Step model (and its stacked adapters) → native AUDIO."""

from __future__ import annotations

import logging

from comfy_api.latest import io
from sidestep.request import GenerationRequest
from sidestep.variants import config_defaults, default_schedule, per_base

from .common import CATEGORY, NodeProgress, make_room
from .handles import AcestepModel, ModelHandle

AUTO_GUIDANCE = -1.0
MAX_SEED = 2**63 - 1
DEFAULTS = config_defaults(GenerationRequest)


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
                "0 / -1 settings mean auto: the adapter's recorded shift and steps, else the model variant's defaults."
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
                io.Float.Input("duration", default=DEFAULTS["duration"], min=1.0, max=600.0, step=1.0, tooltip="Length of each song in seconds."),
                io.Int.Input("bpm", default=DEFAULTS["bpm"] or 0, min=0, max=300, tooltip="Tempo in beats per minute; 0 leaves it to the model."),
                io.String.Input("keyscale", default=DEFAULTS["keyscale"], tooltip="Key and scale, e.g. 'C Major' or 'F# minor'; empty leaves it to the model."),
                io.String.Input("timesignature", default=DEFAULTS["timesignature"], tooltip="Beats per bar, e.g. '4' or '3'; empty leaves it to the model."),
                io.Int.Input(
                    "seed",
                    default=DEFAULTS["seed"],
                    min=0,
                    max=MAX_SEED,
                    control_after_generate=True,
                    tooltip="Random seed of the starting noise; song i of a batch uses seed + i.",
                ),
                io.Int.Input(
                    "steps",
                    default=DEFAULTS["steps"],
                    min=0,
                    max=200,
                    tooltip=(
                        f"Sampling steps; 0 = auto (the adapter's, else the variant's: {per_base(lambda v: v.schedule.steps)}). "
                        f"Turbo always uses {default_schedule('turbo').steps}."
                    ),
                ),
                io.Float.Input(
                    "shift",
                    default=DEFAULTS["shift"],
                    min=0.0,
                    max=20.0,
                    step=0.1,
                    tooltip=(
                        f"Timestep shift; 0 = auto (the adapter's, else the variant's: {per_base(lambda v: v.schedule.shift)}). "
                        "A shift the adapter was not trained for is the most common cause of bad audio."
                    ),
                ),
                io.Float.Input(
                    "guidance",
                    default=AUTO_GUIDANCE,
                    min=AUTO_GUIDANCE,
                    max=30.0,
                    step=0.1,
                    tooltip=f"Guidance scale; -1 = auto (the variant's: {per_base(lambda v: v.guidance)}; 1 = off).",
                ),
                io.Int.Input("batch_size", default=DEFAULTS["batch_size"], min=1, max=16, tooltip="How many songs to generate at once."),
            ],
            outputs=[io.Audio.Output(display_name="audio", tooltip="48 kHz stereo audio; connect Save Audio or Preview Audio.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(
        cls,
        model: ModelHandle,
        caption: str,
        lyrics: str,
        language: str,
        duration: float,
        bpm: int,
        keyscale: str,
        timesignature: str,
        seed: int,
        steps: int,
        shift: float,
        guidance: float,
        batch_size: int,
    ) -> io.NodeOutput:
        """Generate (progress on ComfyUI's bar, Cancel honoured between steps) and show any warnings."""
        from sidestep.generate import generate

        request = GenerationRequest(
            caption=caption,
            lyrics=lyrics,
            language=language.strip() or "unknown",
            duration=duration,
            bpm=bpm or None,
            keyscale=keyscale.strip(),
            timesignature=timesignature.strip(),
            seed=seed,
            batch_size=batch_size,
            steps=steps,
            shift=shift,
            guidance=None if guidance < 0 else guidance,
        )
        progress = NodeProgress(cls.hidden.unique_id)
        make_room(model.bundle)
        result = generate(model.bundle, request, model.adapters, model.adapter_metadata, progress.bar)
        for warning in result.warnings:
            logging.warning("[Side-Step] %s", warning)
        text = "\n".join(result.warnings) or "no warnings"
        return io.NodeOutput(result.as_comfy_audio(), ui={"text": [text]})

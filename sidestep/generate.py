"""Text-to-music generation with the DiT: prompts → condition → flow sampling → tiled VAE decode → audio."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from .adapters.metadata import AdapterMetadata
from .bundle import AceStepBundle
from .model import AceStepConditionGenerationModel, silence_context
from .request import GenerationRequest
from .sampling import build_plan, decoder_conditions, model_decoder_fn, sample
from .text import SongMetas, TextEncoder, caption_prompt, lyrics_prompt
from .variants import FRAMES_PER_SECOND, SAMPLE_RATE, inference_dtype, variant_defaults
from .vae import decode_latents


@dataclass
class GenerationResult:
    """Generated audio (ComfyUI AUDIO layout), its latents and the notes worth showing the user."""

    waveform: torch.Tensor
    sample_rate: int
    latents: torch.Tensor
    warnings: list[str] = field(default_factory=list)

    def as_comfy_audio(self) -> dict[str, Any]:
        """`{"waveform": float32 [B, 2, samples], "sample_rate": 48000}`."""
        return {"waveform": self.waveform, "sample_rate": self.sample_rate}


def initial_noise(batch: int, frames: int, seed: int) -> torch.Tensor:
    """The starting noise, drawn like the official sampler (CPU generator, fp32); sample i uses seed + i."""
    rows = [torch.randn((1, frames, 64), generator=torch.Generator().manual_seed(seed + i)) for i in range(batch)]
    return torch.cat(rows)


def encode_prompt(
    model: AceStepConditionGenerationModel, text: TextEncoder, silence: torch.Tensor, request: GenerationRequest, frames: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decoder's condition (encoder states, mask, context) for the request, in inference prompt forms."""
    metas = SongMetas(bpm=request.bpm, timesignature=request.timesignature, keyscale=request.keyscale, duration=request.duration)
    caption_states, caption_mask = text.encode_captions([caption_prompt(request.caption, metas, "inference")], "inference")
    lyric_states, lyric_mask = text.encode_lyrics([lyrics_prompt(request.lyrics, request.language, "inference")], "inference")
    weight = next(model.encoder.parameters())
    device = weight.device
    dtype = inference_dtype(weight.dtype, device)
    fix = model.config.timbre_fix_frame
    reference = silence_context(silence, max(fix, frames))[:, :, :64]
    context = silence_context(silence, frames)
    states, mask, context = model.prepare_condition(
        text_hidden_states=caption_states.to(device, dtype),
        text_attention_mask=caption_mask.to(device),
        lyric_hidden_states=lyric_states.to(device, dtype),
        lyric_attention_mask=lyric_mask.to(device),
        refer_audio_acoustic_hidden_states_packed=reference[:, :fix].to(device, dtype),
        refer_audio_order_mask=torch.zeros(1, dtype=torch.long, device=device),
        hidden_states=context[..., :64].to(device, dtype),
        attention_mask=None,
        silence_latent=silence.to(device, dtype),
        src_latents=context[..., :64].to(device, dtype),
        chunk_masks=context[..., 64:].to(device, dtype),
        is_covers=torch.zeros(1, dtype=torch.long, device=device),
    )
    return states, mask, context


def generate(
    bundle: AceStepBundle,
    request: GenerationRequest,
    adapters: Sequence[tuple[Any, float]] = (),
    adapter_metadata: AdapterMetadata | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> GenerationResult:
    """Generate `request.batch_size` songs; `adapters` are (LoadedAdapter, strength) pairs applied for this call only;
    `adapter_metadata` (usually the first adapter's) gives the "auto" steps and shift."""
    model = bundle.dit()
    frames = math.ceil(request.duration * FRAMES_PER_SECOND)
    recorded = adapter_metadata or AdapterMetadata()
    plan = build_plan(bundle.base, request.steps, request.shift, recorded.num_inference_steps, recorded.shift)
    guidance = variant_defaults(bundle.base).guidance if request.guidance is None else request.guidance
    states, mask, context = encode_prompt(model, bundle.text_encoder(), bundle.silence_latent(), request, frames)
    batch = request.batch_size
    cond, uncond = decoder_conditions(
        model, states.expand(batch, -1, -1), mask.expand(batch, -1), context.expand(batch, -1, -1).to(states)
    )
    noise = initial_noise(batch, frames, request.seed).to(states)
    if adapters:
        from .adapters.apply import apply_adapters

        patch = apply_adapters(model, list(adapters), variant=bundle.variant, base=bundle.base)
    else:
        patch = nullcontext()
    with patch:
        latents = sample(
            model_decoder_fn(model), noise, plan, cond=cond, uncond=uncond, guidance=guidance,
            guidance_mode=request.guidance_mode, progress_callback=progress,
        )
    warnings = list(recorded.notes) + list(plan.warnings) + list(getattr(patch, "warnings", []))
    waveform = decode_latents(bundle.vae(), latents.float().cpu())
    return GenerationResult(waveform=waveform, sample_rate=SAMPLE_RATE, latents=latents.float().cpu(), warnings=warnings)

"""Generation speed: a 30 s turbo run (8 steps) and a base run (50 steps, APG guidance) through the real sampler."""

from __future__ import annotations

import torch

from sidestep.generate import initial_noise
from sidestep.model import AceStepConditionGenerationModel
from sidestep.sampling import DecoderFn, build_plan, decoder_conditions, model_decoder_fn, sample
from sidestep.variants import resolve_dtype, variant_defaults

from .models import STORAGE, benchmark_device, dtype_label, frozen_model, size_config, synthetic_clip
from .report import Row
from .settings import RunSettings
from .timing import Repeats, measure, measure_in_turns

FRAMES = 750
# Official-style sampling on this CPU at `small` size, as given in the issue (not measured here).
REFERENCE_SECONDS = {"turbo": 2.2, "base": 26.6}


def _uncached_decoder_fn(model: AceStepConditionGenerationModel) -> DecoderFn:
    """`model_decoder_fn` with `timestep_r` passed as a separate tensor, so time_embed_r(t − r) is computed every call."""

    def velocity(x_t: torch.Tensor, t: torch.Tensor, **condition: torch.Tensor) -> torch.Tensor:
        return model.decoder(hidden_states=x_t, timestep=t, timestep_r=t.clone(), attention_mask=None, **condition)[0]

    return velocity


def sampling_rows(size: str, settings: RunSettings) -> list[Row]:
    """Wall time of a 30 s generation's sampling loop (condition ready, VAE decode excluded)."""
    config, device = size_config(size), benchmark_device()
    dtype = resolve_dtype("auto", device)  # the generation default per device (CLI --dtype auto)
    storage = next(name for name, kind in STORAGE.items() if kind == dtype)
    model = frozen_model(config, dtype, device).eval()
    clip = synthetic_clip(config, FRAMES)
    states = clip["encoder_hidden_states"][None].to(device, dtype)
    mask = clip["encoder_attention_mask"][None].to(device)
    context = clip["context_latents"][None].to(device, dtype)
    cond, uncond = decoder_conditions(model, states, mask, context)
    noise = initial_noise(1, FRAMES, seed=0).to(device, dtype)
    turbo, base = build_plan("turbo"), build_plan("base")
    cached, uncached = model_decoder_fn(model), _uncached_decoder_fn(model)
    label = dtype_label(storage, device)
    run = lambda decoder_fn, plan, **guidance: lambda: sample(decoder_fn, noise, plan, cond=cond, uncond=uncond, **guidance)
    turns = measure_in_turns({"before": run(uncached, turbo), "after": run(cached, turbo)}, settings.repeats)
    before, after = turns["before"], turns["after"]
    slow = Repeats(warmup=0, repeats=settings.repeats.repeats)
    base_stat = measure(run(cached, base, guidance=variant_defaults("base").guidance, guidance_mode="apg"), slow)
    reference = lambda kind: f"official-style reference {REFERENCE_SECONDS[kind]} s" if size == "small" else ""
    return [
        Row("sampling", "turbo 30 s, 8 steps, time_embed_r recomputed", size, device.type, label, "s", before,
            note="before: r passed as a copy of t"),
        Row("sampling", "turbo 30 s, 8 steps", size, device.type, label, "s", after, "recomputed",
            after.median / before.median, reference("turbo")),
        Row("sampling", "base 30 s, 50 steps, APG 7.0", size, device.type, label, "s", base_stat, note=reference("base")),
    ]

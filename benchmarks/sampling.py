"""Generation speed, latents only (condition ready, VAE decode excluded): a 30 s turbo run (8 steps) and a base run
(50 steps, APG guidance), ours against the per-step work of the official sampler, in turns within one run."""

from __future__ import annotations

import dataclasses

import torch

from sidestep.generate import initial_noise
from sidestep.model import AceStepConditionGenerationModel
from sidestep.sampling import DecoderFn, SamplingPlan, build_plan, decoder_conditions, model_decoder_fn, sample
from sidestep.variants import resolve_dtype, variant_defaults

from .models import STORAGE, benchmark_device, dtype_label, frozen_model, size_config, synthetic_clip
from .report import Row, Target
from .settings import RunSettings
from .timing import Repeats, measure_in_turns

FRAMES = 750
SPEED_LIMIT = 0.9  # ours at most 0.9× the official sampler's time
# A 50-step base run at full size takes a quarter of an hour on a CPU: there the first steps of its plan are timed
# (every step does the same work, so the ratio is the whole run's).
BASE_STEPS_FULL_CPU = 4


def official_decoder_fn(model: AceStepConditionGenerationModel) -> DecoderFn:
    """Our decoder doing what the official `generate_audio` loop computes per step: both timestep embeddings
    (time_embed_r of t − r, although r = t), the condition embedding (its result unused once the cross-attention
    keys and values are cached), and the keys and values from the cache it fills on the first step."""
    cache: dict[str, list] = {}

    def velocity(x_t: torch.Tensor, t: torch.Tensor, **condition: torch.Tensor) -> torch.Tensor:
        states = condition["encoder_hidden_states"]
        model.decoder.condition_embedder(states)
        if "kv" not in cache:
            cache["kv"] = model.decoder.condition_keys_values(states)
        return model.decoder(
            hidden_states=x_t, timestep=t, timestep_r=t.clone(), attention_mask=None, condition_kv=cache["kv"], **condition
        )[0]

    return velocity


def _first_steps(plan: SamplingPlan, steps: int) -> SamplingPlan:
    return dataclasses.replace(plan, timesteps=plan.timesteps[: steps + 1])


def sampling_rows(size: str, settings: RunSettings) -> tuple[list[Row], list[Target]]:
    """Ours vs the official per-step work, turbo and base, taking turns; at full size the ≤ 0.9× target."""
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
    slow = size == "full" and device.type == "cpu"
    repeats = Repeats(warmup=0, repeats=settings.repeats.repeats) if slow else settings.repeats
    base_plan = build_plan("base")
    base_steps = BASE_STEPS_FULL_CPU if slow else base_plan.num_steps
    runs = {
        "turbo 30 s, 8 steps": (build_plan("turbo"), {}),
        f"base 30 s, 50 steps, APG 7.0{'' if base_steps == 50 else f', first {base_steps} steps'}": (
            _first_steps(base_plan, base_steps),
            {"uncond": uncond, "guidance": variant_defaults("base").guidance, "guidance_mode": "apg"},
        ),
    }
    label, rows, targets = dtype_label(storage, device), [], []
    for name, (plan, guidance) in runs.items():
        # A fresh decoder function per call: each run fills its own cache, as a generation does.
        run = lambda make, plan=plan, guidance=guidance: lambda: sample(make(model), noise, plan, cond=cond, **guidance)
        turns = measure_in_turns({"official": run(official_decoder_fn), "ours": run(model_decoder_fn)}, repeats)
        official, ours = turns["official"], turns["ours"]
        ratio = ours.median / official.median
        rows += [
            Row("sampling", f"{name}, official sampler's per-step work", size, device.type, label, "s", official),
            Row("sampling", name, size, device.type, label, "s", ours, "official", ratio),
        ]
        if size == "full":
            targets.append(Target(f"sampling {name.split(',')[0]} vs official", f"≤ {SPEED_LIMIT}×", f"{ratio:.2f}×",
                                  ratio <= SPEED_LIMIT, f"{ours.median:.1f} s vs {official.median:.1f} s"))
    return rows, targets

"""Flow-matching sampling for ACE-Step 1.5: time grids, Euler steps and APG/CFG guidance."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
import torch.nn.functional as F

from .errors import SamplingError
from .request import GUIDANCE_MODES
from .variants import TURBO_SHIFTS, TURBO_STEPS, default_schedule

if TYPE_CHECKING:
    from .model import AceStepConditionGenerationModel

VariantBase = Literal["turbo", "base", "sft"]
GuidanceMode = Literal["apg", "cfg"]
ProgressCallback = Callable[[int, int], None]

APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 2.5


class DecoderFn(Protocol):
    """Predicts the flow velocity of `x_t` [B,T,C] at times `t` [B] under a condition."""

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **condition: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True, eq=False)
class SamplingPlan:
    """The fp32 time grid from noise (t=1) down to data (t=0) and notes to show the user.

    `timesteps` has `num_steps + 1` entries: step k feeds `timesteps[k]` to the decoder and
    moves to `timesteps[k + 1]`; the last entry is 0.
    """

    timesteps: torch.Tensor
    is_turbo: bool
    warnings: tuple[str, ...] = ()

    @property
    def num_steps(self) -> int:
        """Number of decoder evaluations (doubled batch when guidance is on)."""
        return self.timesteps.numel() - 1


@dataclass(frozen=True)
class StepsAndShift:
    """Steps and shift chosen for a run, with warnings about how they were chosen."""

    steps: int
    shift: float
    warnings: tuple[str, ...] = ()


@dataclass
class ApgMomentum:
    """APG momentum buffer: running average of (cond − uncond) carried across the steps of one run."""

    momentum: float = APG_MOMENTUM
    average: torch.Tensor | None = None

    def update(self, diff: torch.Tensor) -> torch.Tensor:
        """Fold this step's difference into the average and return the new average."""
        self.average = diff if self.average is None else diff + self.momentum * self.average
        return self.average


def shift_timesteps(t: Any, shift: float) -> Any:
    """Warp times towards the noisy end: t' = s·t / (1 + (s−1)·t) (floats or tensors)."""
    return shift * t / (1 + (shift - 1) * t)


def turbo_plan(shift: float = default_schedule("turbo").shift) -> SamplingPlan:
    """The fixed 8-step turbo grid for shift 1, 2 or 3; other shifts snap to the nearest of these."""
    _check_shift(shift)
    table_shift = min(TURBO_SHIFTS, key=lambda s: abs(s - shift))
    warnings: tuple[str, ...] = ()
    if table_shift != shift:
        warnings = (
            f"Turbo models only sample with shift 1, 2 or 3; shift {shift:g} was rounded to {table_shift:g}.",
        )
    # Computed in float64 like the official tables, then stored in fp32 (the values the decoder sees).
    fractions = [(TURBO_STEPS - k) / TURBO_STEPS for k in range(TURBO_STEPS)] + [0.0]
    timesteps = torch.tensor([shift_timesteps(u, table_shift) for u in fractions], dtype=torch.float32)
    return SamplingPlan(timesteps=timesteps, is_turbo=True, warnings=warnings)


def flow_plan(steps: int, shift: float = default_schedule("base").shift) -> SamplingPlan:
    """The base/sft grid: `steps` uniform fp32 steps from 1 to 0, then shifted in fp32."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SamplingError(f"Sampling steps must be a whole number of at least 1, got {steps!r}; use e.g. 50.")
    _check_shift(shift)
    timesteps = shift_timesteps(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float32), shift)
    return SamplingPlan(timesteps=timesteps, is_turbo=False)


def resolve_steps_and_shift(
    variant_base: VariantBase,
    steps: int | None = None,
    shift: float | None = None,
    adapter_steps: int | None = None,
    adapter_shift: float | None = None,
) -> StepsAndShift:
    """Pick steps and shift: the user's value, else the adapter's recorded one, else the variant default (None or 0:
    auto).

    Warns when the choice differs from what the adapter was trained for (`AdapterMetadata.num_inference_steps` and
    `.shift`; None when it recorded none).
    """
    default_shift, default_steps = default_schedule(variant_base)
    steps, shift = steps or 0, shift or 0.0
    if steps < 0:
        raise SamplingError(f"Sampling steps must be auto or positive, got {steps}.")
    if shift < 0 or not math.isfinite(shift):
        raise SamplingError(f"Shift must be auto or a positive number, got {shift}.")
    warnings: list[str] = []

    chosen_shift = shift or adapter_shift or default_shift
    if shift and adapter_shift and shift != adapter_shift:
        warnings.append(
            f"Shift {shift:g} differs from the shift {adapter_shift:g} this adapter was trained for. A wrong shift "
            f"is the most common cause of bad audio; set shift to auto to use {adapter_shift:g}."
        )

    if variant_base == "turbo":
        if steps not in (0, TURBO_STEPS):
            warnings.append(f"Turbo models always sample {TURBO_STEPS} steps; steps={steps} was ignored.")
        return StepsAndShift(TURBO_STEPS, chosen_shift, tuple(warnings))

    if steps and adapter_steps and steps != adapter_steps:
        warnings.append(
            f"Steps {steps} differ from the {adapter_steps} steps recorded for this adapter; "
            f"set steps to auto to use {adapter_steps}."
        )
    return StepsAndShift(steps or adapter_steps or default_steps, chosen_shift, tuple(warnings))


def build_plan(
    variant_base: VariantBase,
    steps: int | None = None,
    shift: float | None = None,
    adapter_steps: int | None = None,
    adapter_shift: float | None = None,
) -> SamplingPlan:
    """Resolve steps and shift (None = auto) and build the matching turbo or base/sft plan with all warnings."""
    chosen = resolve_steps_and_shift(variant_base, steps, shift, adapter_steps, adapter_shift)
    plan = turbo_plan(chosen.shift) if variant_base == "turbo" else flow_plan(chosen.steps, chosen.shift)
    return SamplingPlan(plan.timesteps, plan.is_turbo, chosen.warnings + plan.warnings)


def euler_step(x: torch.Tensor, velocity: torch.Tensor, t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
    """One Euler step of the flow ODE from t_cur to t_next: x − v·(t_cur − t_next)."""
    return x - velocity * (t_cur - t_next)


def apg_guidance(
    pred_cond: torch.Tensor,
    pred_uncond: torch.Tensor,
    guidance: float,
    momentum: ApgMomentum,
    norm_threshold: float = APG_NORM_THRESHOLD,
    dim: int = 1,
) -> torch.Tensor:
    """Adaptive projected guidance: momentum-averaged, norm-capped (cond − uncond), orthogonal part only.

    Norms and projections run over `dim` (the time axis of [B,T,C]) per batch row and channel; the
    projection onto `pred_cond` is done in float64. The parallel part is dropped (official eta = 0).
    """
    diff = momentum.update(pred_cond - pred_uncond)
    norm = diff.norm(p=2, dim=dim, keepdim=True)
    diff = diff * (norm_threshold / norm).clamp(max=1.0)
    direction = F.normalize(pred_cond.double(), dim=dim)
    diff64 = diff.double()
    orthogonal = diff64 - (diff64 * direction).sum(dim=dim, keepdim=True) * direction
    return pred_cond + (guidance - 1) * orthogonal.to(diff.dtype)


def cfg_guidance(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Plain classifier-free guidance: uncond + g·(cond − uncond)."""
    return pred_uncond + guidance * (pred_cond - pred_uncond)


@torch.no_grad()
def sample(
    decoder_fn: DecoderFn,
    noise: torch.Tensor,
    plan: SamplingPlan,
    *,
    cond: Mapping[str, torch.Tensor],
    uncond: Mapping[str, torch.Tensor] | None = None,
    guidance: float = 1.0,
    guidance_mode: GuidanceMode = "apg",
    progress_callback: ProgressCallback | None = None,
) -> torch.Tensor:
    """Integrate the flow ODE from `noise` [B,T,C] along `plan` and return the predicted clean latents.

    Guidance above 1.0 runs one decoder call on the doubled batch [cond; uncond] per step and
    combines the halves with APG (default) or plain CFG; guidance 1.0 runs the conditional pass only
    (the official turbo sampler always does). `progress_callback(done, total)` is called after every step.
    """
    if not math.isfinite(guidance) or guidance < 1.0:
        raise SamplingError(f"Guidance must be 1.0 (off) or more, got {guidance}.")
    if guidance_mode not in GUIDANCE_MODES:
        raise SamplingError(f"Unknown guidance mode {guidance_mode!r}; use 'apg' or 'cfg'.")
    guided = guidance > 1.0
    if guided:
        if uncond is None or set(uncond) != set(cond):
            raise ValueError("guidance > 1 needs an unconditional condition with the same keys as `cond`")
        condition = {key: torch.cat([cond[key], uncond[key]]) for key in cond}
    else:
        condition = dict(cond)
    momentum = ApgMomentum()
    timesteps = plan.timesteps.to(noise.device)
    x = noise
    for k in range(plan.num_steps):
        t_cur, t_next = timesteps[k], timesteps[k + 1]
        x_in = torch.cat([x, x]) if guided else x
        velocity = decoder_fn(x_in, t_cur.repeat(x_in.shape[0]), **condition)
        if guided:
            pred_cond, pred_uncond = velocity.chunk(2)
            if guidance_mode == "apg":
                velocity = apg_guidance(pred_cond, pred_uncond, guidance, momentum)
            else:
                velocity = cfg_guidance(pred_cond, pred_uncond, guidance)
        x = euler_step(x, velocity, t_cur, t_next)
        if progress_callback is not None:
            progress_callback(k + 1, plan.num_steps)
    return x


def decoder_conditions(
    model: AceStepConditionGenerationModel,
    encoder_hidden_states: torch.Tensor,
    encoder_attention_mask: torch.Tensor,
    context_latents: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The `model_decoder_fn` conditions from `prepare_condition` outputs, and their null-embedding twin."""
    cond = {
        "encoder_hidden_states": encoder_hidden_states,
        "encoder_attention_mask": encoder_attention_mask,
        "context_latents": context_latents,
    }
    return cond, {**cond, "encoder_hidden_states": model.null_condition(encoder_hidden_states)}


def model_decoder_fn(model: AceStepConditionGenerationModel) -> DecoderFn:
    """A `DecoderFn` calling `model.decoder` with timestep_r = timestep (conditions: its encoder kwargs), for one
    sampling run over a model that does not change meanwhile.

    The condition's cross-attention keys and values are computed on the first call and reused while the same
    `encoder_hidden_states` tensor comes back, as it does at every step of a `sample` run (the official sampler caches
    them too).
    """
    cache: dict[str, Any] = {}

    def velocity(x_t: torch.Tensor, t: torch.Tensor, **condition: torch.Tensor) -> torch.Tensor:
        states = condition["encoder_hidden_states"]
        if cache.get("states") is not states:  # the reference held here keeps the identity meaningful
            cache.update(states=states, kv=model.decoder.condition_keys_values(states))
        return model.decoder(
            hidden_states=x_t, timestep=t, timestep_r=t, attention_mask=None, condition_kv=cache["kv"], **condition
        )[0]

    return velocity


def _check_shift(shift: float) -> None:
    if not (math.isfinite(shift) and shift > 0):
        raise SamplingError(f"Shift must be a positive number, got {shift}; use 3.0 for turbo or 1.0 for base/sft.")

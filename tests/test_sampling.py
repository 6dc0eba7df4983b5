"""Sampler math against the official ACE-Step 1.5 golden vectors: schedules, Euler, APG/CFG, defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sidestep.adapters.metadata import AdapterMetadata
from sidestep.errors import SamplingError, UnknownBaseModelError
from sidestep.variants import Schedule, default_schedule
from sidestep.model import AceStepConditionGenerationModel
from sidestep.sampling import (
    ApgMomentum,
    SamplingPlan,
    apg_guidance,
    build_plan,
    cfg_guidance,
    decoder_conditions,
    euler_step,
    flow_plan,
    model_decoder_fn,
    resolve_steps_and_shift,
    sample,
    turbo_plan,
)

FIXTURES = Path(__file__).parent / "fixtures" / "ace15"
APG_ATOL = 1e-5  # pure math; the stored fp32 norms differ from ours by at most 1 ulp (torch build)


@pytest.fixture(scope="module")
def turbo_vectors() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "turbo" / "vectors_sampling.safetensors")


@pytest.fixture(scope="module")
def base_vectors() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "base" / "vectors_sampling.safetensors")


# --- schedules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [1, 2, 3])
def test_turbo_tables_equal_official_fp32_timesteps(shift: int, turbo_vectors: dict[str, torch.Tensor]) -> None:
    plan = turbo_plan(float(shift))
    case = json.loads((FIXTURES / "turbo" / "vectors_sampling.json").read_text())["cases"][f"shift{shift}"]
    from_hex = torch.tensor([float.fromhex(h) for h in case["timesteps_used_f32_hex"]], dtype=torch.float32)
    assert plan.is_turbo and plan.num_steps == 8 and plan.warnings == ()
    assert plan.timesteps.dtype == torch.float32
    assert torch.equal(plan.timesteps[:-1], turbo_vectors[f"shift{shift}/timesteps_used"])
    assert torch.equal(plan.timesteps[:-1], from_hex)
    assert plan.timesteps[-1].item() == 0.0


@pytest.mark.parametrize(("asked", "used"), [(2.6, 3.0), (1.4, 1.0), (7.0, 3.0), (0.3, 1.0)])
def test_turbo_rounds_other_shifts_with_a_warning(asked: float, used: float) -> None:
    plan = turbo_plan(asked)
    assert torch.equal(plan.timesteps, turbo_plan(used).timesteps)
    assert len(plan.warnings) == 1 and f"{used:g}" in plan.warnings[0] and f"{asked:g}" in plan.warnings[0]


def test_base_schedule_equals_official_list(base_vectors: dict[str, torch.Tensor]) -> None:
    plan = flow_plan(6, 3.0)
    readme = [1.0, 0.93750006, 0.8571428, 0.75, 0.59999996, 0.375, 0.0]
    assert not plan.is_turbo and plan.num_steps == 6
    assert torch.equal(plan.timesteps, torch.tensor(readme, dtype=torch.float32))
    assert torch.equal(plan.timesteps[:-1], base_vectors["g7/timesteps_used"])
    assert torch.equal(plan.timesteps[:-1], base_vectors["g1/timesteps_used"])


def test_flow_plan_without_shift_is_uniform() -> None:
    plan = flow_plan(50, 1.0)
    assert torch.equal(plan.timesteps, torch.linspace(1, 0, 51, dtype=torch.float32))


@pytest.mark.parametrize(
    ("steps", "shift"), [(0, 1.0), (-3, 1.0), (2.5, 1.0), (10, 0.0), (10, -1.0), (10, float("nan"))]
)
def test_flow_plan_rejects_bad_settings(steps: int, shift: float) -> None:
    with pytest.raises(SamplingError):
        flow_plan(steps, shift)  # type: ignore[arg-type]


# --- Euler and guidance against the stored official trajectories ---------------------------------


def test_turbo_euler_reproduces_official_trajectory(turbo_vectors: dict[str, torch.Tensor]) -> None:
    t = turbo_plan(3.0).timesteps
    traj = "shift3/traj/step{}/{}"
    assert torch.equal(turbo_vectors[traj.format(0, "xt")], turbo_vectors["noise"])
    for k in (0, 1):
        x_next = euler_step(turbo_vectors[traj.format(k, "xt")], turbo_vectors[traj.format(k, "v")], t[k], t[k + 1])
        assert torch.equal(x_next, turbo_vectors[traj.format(k + 1, "xt")])
    x0 = euler_step(turbo_vectors[traj.format(7, "xt")], turbo_vectors[traj.format(7, "v")], t[7], t[8])
    assert torch.equal(x0, turbo_vectors["shift3/out/target_latents"])


def test_base_euler_reproduces_official_trajectory(base_vectors: dict[str, torch.Tensor]) -> None:
    t = flow_plan(6, 3.0).timesteps
    traj = "g7/traj/step{}/{}"
    assert torch.equal(base_vectors[traj.format(0, "xt")], base_vectors["noise"])
    for k in (0, 1):
        x_next = euler_step(base_vectors[traj.format(k, "xt")], base_vectors[traj.format(k, "v_guided")], t[k], t[k+1])
        assert torch.equal(x_next, base_vectors[traj.format(k + 1, "xt")])
    x0 = euler_step(base_vectors[traj.format(5, "xt")], base_vectors[traj.format(5, "v_guided")], t[5], t[6])
    assert torch.equal(x0, base_vectors["g7/out/target_latents"])


def test_apg_with_momentum_reproduces_official_guided_velocity(base_vectors: dict[str, torch.Tensor]) -> None:
    momentum = ApgMomentum()
    for k in (0, 1, 2):  # consecutive steps: the momentum recursion is checked exactly
        step = f"g7/traj/step{k}/"
        guided = apg_guidance(base_vectors[step + "pred_cond"], base_vectors[step + "pred_uncond"], 7.0, momentum)
        torch.testing.assert_close(guided, base_vectors[step + "v_guided"], atol=APG_ATOL, rtol=0)


def test_apg_without_carried_momentum_does_not_match(base_vectors: dict[str, torch.Tensor]) -> None:
    step = "g7/traj/step1/"
    fresh = apg_guidance(base_vectors[step + "pred_cond"], base_vectors[step + "pred_uncond"], 7.0, ApgMomentum())
    assert (fresh - base_vectors[step + "v_guided"]).abs().max() > 100 * APG_ATOL


def test_momentum_buffer_recursion() -> None:
    momentum = ApgMomentum()
    first, second = torch.full((1, 2, 1), 2.0), torch.full((1, 2, 1), 1.0)
    assert torch.equal(momentum.update(first), first)
    assert torch.equal(momentum.update(second), second - 0.75 * first)


def test_apg_adds_only_the_part_orthogonal_to_cond_over_time() -> None:
    gen = torch.Generator().manual_seed(0)
    cond = torch.randn(2, 30, 4, generator=gen, dtype=torch.float64)
    uncond = cond + 0.01 * torch.randn(2, 30, 4, generator=gen, dtype=torch.float64)  # norm below the 2.5 cap
    update = (apg_guidance(cond, uncond, 5.0, ApgMomentum()) - cond) / 4.0
    assert (update * cond).sum(dim=1).abs().max() < 1e-12
    diff = cond - uncond
    expected = diff - (diff * cond).sum(dim=1, keepdim=True) / (cond * cond).sum(dim=1, keepdim=True) * cond
    torch.testing.assert_close(update, expected)


def test_apg_caps_the_difference_norm_per_row_and_channel() -> None:
    cond = torch.zeros(1, 10, 2, dtype=torch.float64)
    cond[:, 0] = 1.0  # cond points along time-step 0; differences elsewhere are orthogonal
    uncond = cond.clone()
    uncond[:, 5, 0] = -100.0  # channel 0: far above the cap
    uncond[:, 5, 1] = -1.0  # channel 1: below the cap, unscaled
    update = apg_guidance(cond, uncond, 2.0, ApgMomentum()) - cond
    assert update[0, 5, 0].item() == pytest.approx(2.5)
    assert update[0, 5, 1].item() == pytest.approx(1.0)


def test_cfg_formula() -> None:
    cond, uncond = torch.tensor([3.0]), torch.tensor([1.0])
    assert cfg_guidance(cond, uncond, 4.0).item() == 9.0


# --- the sampler loop with a closed-form velocity field -------------------------------------------


class StraightFlow:
    """The exact velocity of straight paths from `noise` to `data`; records the decoder calls."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data
        self.calls: list[tuple[int, torch.Tensor]] = []

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append((x_t.shape[0], t.clone()))
        return (x_t - self.data) / t[:, None, None]


@pytest.mark.parametrize("plan", [turbo_plan(3.0), flow_plan(13, 2.0)], ids=["turbo", "flow"])
def test_sampler_lands_on_the_data_of_a_straight_flow(plan: SamplingPlan) -> None:
    gen = torch.Generator().manual_seed(1)
    noise, data = torch.randn(2, 6, 64, generator=gen), torch.randn(2, 6, 64, generator=gen)
    flow = StraightFlow(data)
    progress: list[tuple[int, int]] = []
    x0 = sample(flow, noise, plan, cond={}, progress_callback=lambda *a: progress.append(a))
    torch.testing.assert_close(x0, data, atol=1e-5, rtol=0)
    assert progress == [(k + 1, plan.num_steps) for k in range(plan.num_steps)]
    assert [batch for batch, _ in flow.calls] == [2] * plan.num_steps
    for k, (_, t) in enumerate(flow.calls):
        assert t.dtype == torch.float32 and torch.equal(t, plan.timesteps[k].repeat(2))


class BiasField:
    """A velocity that ignores x_t and returns the condition's `bias`; records the batch sizes it saw."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, *, bias: torch.Tensor) -> torch.Tensor:
        self.batches.append(x_t.shape[0])
        return bias


@pytest.mark.parametrize(("mode", "expected_scale"), [("cfg", 3.0), ("apg", 1.0)])
def test_guided_sampling_doubles_the_batch_cond_first(mode: str, expected_scale: float) -> None:
    noise = torch.ones(1, 8, 2, dtype=torch.float64)
    bias_cond = torch.zeros(1, 8, 2, dtype=torch.float64)
    bias_cond[:, :, 0] = 1.0
    bias_cond[:, 0, 1] = 0.1
    field = BiasField()
    x0 = sample(
        field, noise, flow_plan(4), cond={"bias": bias_cond}, uncond={"bias": torch.zeros_like(bias_cond)},
        guidance=3.0, guidance_mode=mode,
    )
    assert field.batches == [2] * 4
    # The steps' dt sum to 1. CFG moves by uncond + 3·(cond − uncond); APG keeps only the part of
    # (cond − uncond) orthogonal to cond, which is nothing here, so it moves by cond alone.
    torch.testing.assert_close(x0, noise - expected_scale * bias_cond)


def test_guidance_one_runs_a_single_conditional_pass() -> None:
    field = BiasField()
    sample(field, torch.ones(1, 4, 2), flow_plan(3), cond={"bias": torch.zeros(1, 4, 2)}, guidance=1.0)
    assert field.batches == [1, 1, 1]


def test_sampler_rejects_bad_guidance() -> None:
    flow, noise, cond = BiasField(), torch.ones(1, 4, 2), {"bias": torch.zeros(1, 4, 2)}
    with pytest.raises(SamplingError, match="Guidance"):
        sample(flow, noise, flow_plan(2), cond=cond, uncond=cond, guidance=0.5)
    with pytest.raises(SamplingError, match="guidance mode"):
        sample(flow, noise, flow_plan(2), cond=cond, uncond=cond, guidance=3.0, guidance_mode="pag")  # type: ignore
    with pytest.raises(ValueError, match="unconditional"):
        sample(flow, noise, flow_plan(2), cond=cond, guidance=3.0)


# --- defaults and adapter metadata ---------------------------------------------------------------


def test_default_schedule() -> None:
    assert default_schedule("turbo") == Schedule(steps=8, shift=3.0)
    assert default_schedule("base") == Schedule(steps=50, shift=1.0)
    assert default_schedule("sft") == Schedule(steps=50, shift=1.0)
    with pytest.raises(UnknownBaseModelError, match="turbo"):
        default_schedule("xl")


def recorded(header: dict) -> tuple[int | None, float | None]:
    """The steps and shift an adapter header records, as the sampler takes them."""
    metadata = AdapterMetadata.from_header(header)
    return metadata.num_inference_steps, metadata.shift


def test_auto_uses_adapter_metadata_then_defaults() -> None:
    metadata = {"variant": "base", "shift": "3.0", "num_inference_steps": "30"}
    chosen = resolve_steps_and_shift("base", 0, 0.0, *recorded(metadata))
    assert (chosen.steps, chosen.shift, chosen.warnings) == (30, 3.0, ())
    assert resolve_steps_and_shift("sft") == resolve_steps_and_shift("sft", 0, 0.0, *recorded({}))
    assert (resolve_steps_and_shift("sft").steps, resolve_steps_and_shift("sft").shift) == (50, 1.0)
    assert resolve_steps_and_shift("turbo", 0, 0.0, *recorded({"shift": "2"})).shift == 2.0


def test_wrong_shift_warns_that_it_breaks_audio() -> None:
    chosen = resolve_steps_and_shift("turbo", 8, 1.0, *recorded({"variant": "turbo", "shift": "3.0"}))
    assert chosen.shift == 1.0
    assert len(chosen.warnings) == 1 and "most common cause of bad audio" in chosen.warnings[0]
    assert resolve_steps_and_shift("turbo", 8, 3.0, *recorded({"shift": "3.0"})).warnings == ()


def test_other_steps_warn_and_turbo_keeps_eight() -> None:
    chosen = resolve_steps_and_shift("base", 20, 0.0, *recorded({"num_inference_steps": "50"}))
    assert chosen.steps == 20 and "50" in chosen.warnings[0]
    turbo = resolve_steps_and_shift("turbo", 30)
    assert turbo.steps == 8 and "8 steps" in turbo.warnings[0]


def test_variant_mismatch_and_unreadable_metadata_warn() -> None:
    """The sampler takes the typed record's numbers; the variant check and the unreadable value are the record's."""
    metadata = AdapterMetadata.from_header({"variant": "turbo", "base": "turbo", "shift": "three"})
    chosen = resolve_steps_and_shift("base", 0, 0.0, metadata.num_inference_steps, metadata.shift)
    assert chosen.shift == 1.0
    assert any("trained on a turbo model" in w for w in metadata.mismatch_warnings("adapter", "base", "base", False))
    assert any("'three'" in w for w in metadata.notes)
    with pytest.raises(SamplingError):
        resolve_steps_and_shift("base", -1)


def test_build_plan_carries_every_warning() -> None:
    plan = build_plan("turbo", 0, 2.4, *recorded({"variant": "turbo", "shift": "3.0"}))
    assert plan.is_turbo and torch.equal(plan.timesteps, turbo_plan(2.0).timesteps)
    assert len(plan.warnings) == 2
    base = build_plan("base", 6, 3.0)
    assert torch.equal(base.timesteps, flow_plan(6, 3.0).timesteps) and base.warnings == ()


# --- end to end: our model + our sampler against the official generate_audio ----------------------

CONDITION_INPUTS = (
    "text_hidden_states",
    "text_attention_mask",
    "lyric_hidden_states",
    "lyric_attention_mask",
    "refer_audio_acoustic_hidden_states_packed",
    "refer_audio_order_mask",
    "silence_latent",
    "src_latents",
    "chunk_masks",
    "is_covers",
)


def golden_run(variant: str) -> tuple[AceStepConditionGenerationModel, dict, dict, torch.Tensor, dict]:
    """The fixture model, its decoder conditions for the golden inputs, the official noise and outputs."""
    folder = FIXTURES / variant
    model = AceStepConditionGenerationModel.from_pretrained(folder, dtype=torch.float32, device="cpu")
    inputs = load_file(folder / "vectors_condition.safetensors")
    kwargs = {name: inputs[f"in/{name}"] for name in CONDITION_INPUTS}
    # As generate_audio: the source latents double as `hidden_states`; no attention mask (all ones).
    condition = model.prepare_condition(hidden_states=kwargs["src_latents"], attention_mask=None, **kwargs)
    cond, uncond = decoder_conditions(model, *condition)
    vectors = load_file(folder / "vectors_sampling.safetensors")
    return model, cond, uncond, vectors["noise"], vectors


@pytest.fixture(scope="module")
def turbo_run() -> tuple:
    return golden_run("turbo")


@pytest.fixture(scope="module")
def base_run() -> tuple:
    return golden_run("base")


def test_decoder_conditions_put_the_null_embedding_everywhere(base_run: tuple) -> None:
    model, cond, uncond, _, _ = base_run
    assert uncond.keys() == cond.keys() == {"encoder_hidden_states", "encoder_attention_mask", "context_latents"}
    assert torch.equal(uncond["encoder_hidden_states"], model.null_condition_emb.expand(2, 82, -1))
    assert uncond["context_latents"] is cond["context_latents"]


@pytest.mark.parametrize("shift", [1, 2, 3])
def test_turbo_sampling_matches_official(shift: int, turbo_run: tuple) -> None:
    model, cond, _, noise, vectors = turbo_run
    x0 = sample(model_decoder_fn(model), noise, turbo_plan(float(shift)), cond=cond)
    torch.testing.assert_close(x0, vectors[f"shift{shift}/out/target_latents"], atol=5e-4, rtol=0)


def test_base_sampling_with_apg_matches_official(base_run: tuple) -> None:
    model, cond, uncond, noise, vectors = base_run
    x0 = sample(model_decoder_fn(model), noise, flow_plan(6, 3.0), cond=cond, uncond=uncond, guidance=7.0)
    torch.testing.assert_close(x0, vectors["g7/out/target_latents"], atol=1e-3, rtol=0)


def test_base_sampling_without_guidance_matches_official(base_run: tuple) -> None:
    model, cond, uncond, noise, vectors = base_run
    x0 = sample(model_decoder_fn(model), noise, flow_plan(6, 3.0), cond=cond, uncond=uncond, guidance=1.0)
    torch.testing.assert_close(x0, vectors["g1/out/target_latents"], atol=1e-3, rtol=0)


def test_condition_keys_and_values_are_computed_once_per_run_and_change_nothing(base_run: tuple) -> None:
    model, cond, uncond, noise, _ = base_run
    projections: list[int] = []
    hook = model.decoder.layers[0].cross_attn.k_proj.register_forward_hook(lambda *_: projections.append(1))

    def recomputing(x_t: torch.Tensor, t: torch.Tensor, **condition: torch.Tensor) -> torch.Tensor:
        return model.decoder(hidden_states=x_t, timestep=t, timestep_r=t, attention_mask=None, **condition)[0]

    try:
        plan = flow_plan(4, 3.0)
        reference = sample(recomputing, noise, plan, cond=cond, uncond=uncond, guidance=7.0)
        assert len(projections) == 4
        projections.clear()
        decoder_fn = model_decoder_fn(model)
        x0 = sample(decoder_fn, noise, plan, cond=cond, uncond=uncond, guidance=7.0)
        assert len(projections) == 1 and torch.equal(x0, reference)
        # Another condition (a new run through the same function) gets its own keys and values.
        other = {**cond, "encoder_hidden_states": cond["encoder_hidden_states"].flip(1)}
        x0_other = sample(decoder_fn, noise, plan, cond=other)
        assert len(projections) == 2
        assert torch.equal(x0_other, sample(recomputing, noise, plan, cond=other))
    finally:
        hook.remove()

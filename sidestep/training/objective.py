"""The flow-matching training objective of ACE-Step 1.5 and its timestep / CFG-dropout draws."""

from __future__ import annotations

import torch

from ..variants import TURBO_TIMESTEPS_SHIFT3


def draw_cfg_keep_mask(batch: int, cfg_ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """1.0 for rows that keep their condition, 0.0 for rows dropped to the null condition (probability `cfg_ratio`)."""
    return (torch.rand(batch, generator=generator) >= cfg_ratio).float()


def draw_continuous_timesteps(
    batch: int, mu: float, sigma: float, two_draws: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Logit-normal t; with `two_draws` (the official pretraining form) the larger of two independent draws."""
    t = torch.sigmoid(torch.randn(batch, generator=generator) * sigma + mu)
    if two_draws:
        t = torch.maximum(t, torch.sigmoid(torch.randn(batch, generator=generator) * sigma + mu))
    return t


def draw_discrete_timesteps(
    batch: int, table: tuple[float, ...] = TURBO_TIMESTEPS_SHIFT3, generator: torch.Generator | None = None
) -> torch.Tensor:
    """t drawn uniformly from the turbo model's discrete timesteps."""
    values = torch.tensor(table, dtype=torch.float32)
    return values[torch.randint(len(table), (batch,), generator=generator)]


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = t·noise + (1 − t)·x0."""
    t = t.to(x0.dtype)[:, None, None]
    return t * noise + (1 - t) * x0


def drop_condition(
    encoder_hidden_states: torch.Tensor, keep: torch.Tensor, null_condition_emb: torch.Tensor
) -> torch.Tensor:
    """Replace the whole condition row of every dropped sample (keep = 0) by the null embedding."""
    null = null_condition_emb.to(encoder_hidden_states.dtype).expand_as(encoder_hidden_states)
    return torch.where(keep[:, None, None] > 0, encoder_hidden_states, null)


def masked_mse(
    prediction: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared error in fp32 over valid frames: (batch mean, per-sample means). Padded frames count for nothing."""
    error = (prediction.float() - target.float()).pow(2)
    if frame_mask is None:
        return error.mean(), error.mean(dim=(1, 2))
    weights = frame_mask.float()[:, :, None].expand_as(error)
    per_sample = (error * weights).sum(dim=(1, 2)) / weights.sum(dim=(1, 2)).clamp_min(1)
    return (error * weights).sum() / weights.sum().clamp_min(1), per_sample


def min_snr_weights(t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights for a velocity (noise − x0) target: min(SNR, γ) / (SNR + 1), SNR = ((1 − t) / t)²."""
    snr = ((1 - t) / t.clamp_min(1e-6)).pow(2)
    return snr.clamp(max=gamma) / (snr + 1)


def flow_matching_loss(
    decoder: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    noise: torch.Tensor,
    t: torch.Tensor,
    keep: torch.Tensor | None = None,
    null_condition_emb: torch.Tensor | None = None,
    min_snr_gamma: float | None = None,
    per_sample: bool = False,
) -> torch.Tensor:
    """The ACE-Step 1.5 training loss of one batch for given draws (noise, t, CFG keep mask); with `per_sample`, each
    sample's unweighted loss instead of the batch's.

    Padded frames (attention_mask 0) are zeroed in the decoder's inputs, hidden from its self-attention and left out of
    the loss, so padding cannot change the loss of the valid frames.
    """
    x0 = batch["target_latents"]
    frame_mask = batch["attention_mask"]
    context = batch["context_latents"]
    states = batch["encoder_hidden_states"]
    if keep is not None and null_condition_emb is not None:
        states = drop_condition(states, keep, null_condition_emb)
    x_t = noisy_latents(x0, noise, t)
    padded = bool((frame_mask < 1).any())
    if padded:
        valid = frame_mask[:, :, None].to(x_t.dtype)
        x_t, context = x_t * valid, context * valid.to(context.dtype)
    velocity, _ = decoder(
        hidden_states=x_t,
        timestep=t,
        timestep_r=t,
        attention_mask=frame_mask,
        encoder_hidden_states=states,
        encoder_attention_mask=batch["encoder_attention_mask"],
        context_latents=context,
        key_padding_mask=frame_mask if padded else None,
    )
    loss, sample_losses = masked_mse(velocity, noise - x0, frame_mask)
    if per_sample:
        return sample_losses
    if min_snr_gamma:
        loss = (sample_losses * min_snr_weights(t, min_snr_gamma)).mean()
    return loss

"""The ACE-Step 1.5 diffusion transformer (the `decoder` that predicts flow velocity)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import AceStepConfig
from .layers import (
    Attention,
    Conv1d,
    ConvTranspose1d,
    GatedMLP,
    Linear,
    RMSNorm,
    RotaryEmbedding,
    TimestepEmbedding,
    additive_mask,
)


class DiTLayer(nn.Module):
    """AdaLN-modulated self-attention and MLP with gated residuals; plain cross-attention in between."""

    def __init__(self, config: AceStepConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.self_attn_norm = RMSNorm(hidden, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.cross_attn_norm = RMSNorm(hidden, config.rms_norm_eps)
        self.cross_attn = Attention(config, cross=True)
        self.mlp_norm = RMSNorm(hidden, config.rms_norm_eps)
        self.mlp = GatedMLP(hidden, config.intermediate_size)
        self.scale_shift_table = nn.Parameter(torch.zeros(1, 6, hidden))

    def forward(
        self,
        x: torch.Tensor,
        modulation: torch.Tensor,
        mask: torch.Tensor | None,
        rotary: tuple[torch.Tensor, torch.Tensor],
        context: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        shift, scale, gate, mlp_shift, mlp_scale, mlp_gate = (self.scale_shift_table.to(modulation.dtype) + modulation).chunk(6, dim=1)
        normed = (self.self_attn_norm(x) * (1 + scale) + shift).type_as(x)
        x = (x + self.self_attn(normed, mask=mask, rotary=rotary) * gate).type_as(x)
        x = x + self.cross_attn(self.cross_attn_norm(x), context=context)
        normed = (self.mlp_norm(x) * (1 + mlp_scale) + mlp_shift).type_as(x)
        return (x + self.mlp(normed) * mlp_gate).type_as(x)


class _Transpose(nn.Module):
    """Swap the time and channel axes (keeps the official `proj_in.1` / `proj_out.1` parameter names)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class AceStepDiTModel(nn.Module):
    """Patchified DiT over `[context_latents ‖ x_t]`; returns `(velocity [B, T, 64], None)`.

    Like the official model it ignores `attention_mask` and `encoder_attention_mask`: self-attention only sees the
    sliding/full geometry and cross-attention sees every encoder position, padding included.
    """

    def __init__(self, config: AceStepConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.patch_size = config.patch_size
        self.layers = nn.ModuleList(DiTLayer(config) for _ in range(config.num_hidden_layers))
        self.proj_in = nn.Sequential(
            _Transpose(), Conv1d(config.in_channels, hidden, config.patch_size, stride=config.patch_size), _Transpose()
        )
        self.time_embed = TimestepEmbedding(hidden)
        self.time_embed_r = TimestepEmbedding(hidden)
        self.condition_embedder = Linear(config.encoder_hidden_size or hidden, hidden)
        self.norm_out = RMSNorm(hidden, config.rms_norm_eps)
        self.proj_out = nn.Sequential(
            _Transpose(),
            ConvTranspose1d(hidden, config.audio_acoustic_hidden_dim, config.patch_size, stride=config.patch_size),
            _Transpose(),
        )
        self.scale_shift_table = nn.Parameter(torch.zeros(1, 2, hidden))
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.gradient_checkpointing = False
        self._mask_cache: dict[tuple, torch.Tensor | None] = {}

    def compile_layers(self) -> None:
        """Opt-in torch.compile of every DiT layer (after adapters are attached): compiles once per process and clip
        length, then runs faster steps."""
        for layer in self.layers:
            layer.compile()

    def sliding_mask(self, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """The sliding-window self-attention mask for `length` patches, built once per shape."""
        key = (length, dtype, device)
        if key not in self._mask_cache:
            self._mask_cache = {key: additive_mask(length, self.config.sliding_window, None, dtype, device)}
        return self._mask_cache[key]

    def condition_keys_values(self, encoder_hidden_states: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's cross-attention keys and values for a condition. They do not change between sampling steps,
        so a sampler computes them once and passes them as `forward(..., condition_kv=...)`."""
        context = self.condition_embedder(encoder_hidden_states)
        return [layer.cross_attn.keys_values(context) for layer in self.layers]

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        timestep_r: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        context_latents: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        condition_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, None]:
        """Predict the velocity. `key_padding_mask` [B, T] (ours, not official) hides padded frames from self-attention;
        training passes it for padded batches so padding cannot change what valid frames see. `condition_kv` (from
        `condition_keys_values(encoder_hidden_states)`) spares recomputing the condition's keys and values."""
        temb, modulation = self.time_embed(timestep)
        if timestep_r is timestep:  # how training and sampling call it: time_embed_r(0), a constant while frozen
            temb_r, modulation_r = self.time_embed_r.at_zero(timestep)
        else:
            temb_r, modulation_r = self.time_embed_r(timestep - timestep_r)
        temb, modulation = temb + temb_r, modulation + modulation_r

        x = torch.cat([context_latents, hidden_states], dim=-1)
        length = x.shape[1]
        if length % self.patch_size:
            x = F.pad(x, (0, 0, 0, self.patch_size - length % self.patch_size))
        x = self.proj_in(x)
        contexts = condition_kv or [self.condition_embedder(encoder_hidden_states)] * len(self.layers)

        patches = x.shape[1]
        rotary = self.rotary(patches, x.device, x.dtype)
        masks = {True: self.sliding_mask(patches, x.dtype, x.device), False: None}
        if key_padding_mask is not None:
            valid = F.pad(key_padding_mask.float(), (0, patches * self.patch_size - length))
            valid = valid.unflatten(1, (patches, self.patch_size)).amax(-1) > 0
            window = self.config.sliding_window
            masks = {sliding: additive_mask(patches, window if sliding else None, valid, x.dtype, x.device) for sliding in masks}
        checkpointing = self.gradient_checkpointing and torch.is_grad_enabled()
        for index, (layer, context) in enumerate(zip(self.layers, contexts, strict=True)):
            mask = masks[self.config.is_sliding(index)]
            if checkpointing:
                x = checkpoint(layer, x, modulation, mask, rotary, context, use_reentrant=False)
            else:
                x = layer(x, modulation, mask, rotary, context)

        shift, scale = (self.scale_shift_table.to(temb.dtype) + temb.unsqueeze(1)).chunk(2, dim=1)
        x = (self.norm_out(x) * (1 + scale) + shift).type_as(x)
        return self.proj_out(x)[:, :length, :], None

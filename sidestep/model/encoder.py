"""Condition encoder: caption projection, lyric encoder, timbre encoder and sequence packing."""

from __future__ import annotations

import torch
from torch import nn

from .config import AceStepConfig
from .layers import EncoderStack, Linear


def pack_sequences(
    first: torch.Tensor, second: torch.Tensor, first_mask: torch.Tensor, second_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate two padded sequences and move valid tokens first (stable); return states and a prefix mask."""
    states = torch.cat([first, second], dim=1)
    mask = torch.cat([first_mask, second_mask], dim=1)
    order = mask.argsort(dim=1, descending=True, stable=True)
    states = torch.gather(states, 1, order.unsqueeze(-1).expand_as(states))
    lengths = mask.sum(dim=1)
    prefix = torch.arange(states.shape[1], device=states.device)[None, :] < lengths[:, None]
    return states, prefix


class LyricEncoder(EncoderStack):
    """Encodes lyric token embeddings [B, L, text_dim] into [B, L, H]; padded keys are masked."""

    def __init__(self, config: AceStepConfig) -> None:
        super().__init__(config, config.text_hidden_dim, config.num_lyric_encoder_hidden_layers)

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.run_layers(self.embed_tokens(embeddings), mask, max_layers=self.config.num_hidden_layers)


class TimbreEncoder(EncoderStack):
    """Encodes packed reference clips [N, T, 64] into one embedding per clip, unpacked to [B, max_clips, H]."""

    def __init__(self, config: AceStepConfig, prepend_special_token: bool = False) -> None:
        super().__init__(config, config.timbre_hidden_dim, config.num_timbre_encoder_hidden_layers)
        self.special_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        # The 2B models read frame 0 of the clip itself (the token is unused); XL prepends the token and reads it.
        self.prepend_special_token = prepend_special_token

    def forward(self, packed: torch.Tensor, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.embed_tokens(packed)
        if self.prepend_special_token:
            hidden = torch.cat([self.special_token.expand(hidden.shape[0], 1, -1).to(hidden.dtype), hidden], dim=1)
        hidden = self.run_layers(hidden, None, max_layers=self.config.num_hidden_layers)
        return unpack_clips(hidden[:, 0, :], order)


def unpack_clips(per_clip: torch.Tensor, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter per-clip rows [N, D] into [B, max_clips, D] by batch index `order` [N]; empty slots are zeros."""
    batch = int(order.max().item()) + 1
    counts = torch.bincount(order, minlength=batch)
    slots = int(counts.max().item())
    first_index = torch.cumsum(counts, 0) - counts
    ranked = torch.argsort(order, stable=True)
    position = torch.empty_like(order)
    position[ranked] = torch.arange(order.numel(), device=order.device) - first_index[order[ranked]]
    out = per_clip.new_zeros(batch, slots, per_clip.shape[-1])
    out[order, position] = per_clip
    mask = torch.zeros(batch, slots, dtype=torch.long, device=order.device)
    mask[order, position] = 1
    return out, mask


class ConditionEncoder(nn.Module):
    """Builds the packed cross-attention sequence [lyrics | timbre | caption] and its prefix mask."""

    def __init__(self, config: AceStepConfig, prepend_timbre_token: bool = False) -> None:
        super().__init__()
        self.text_projector = Linear(config.text_hidden_dim, config.hidden_size, bias=False)
        self.lyric_encoder = LyricEncoder(config)
        self.timbre_encoder = TimbreEncoder(config, prepend_timbre_token)

    def forward(
        self,
        text_hidden_states: torch.Tensor,
        text_attention_mask: torch.Tensor,
        lyric_hidden_states: torch.Tensor,
        lyric_attention_mask: torch.Tensor,
        refer_audio_acoustic_hidden_states_packed: torch.Tensor,
        refer_audio_order_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.text_projector(text_hidden_states)
        lyrics = self.lyric_encoder(lyric_hidden_states, lyric_attention_mask)
        timbre, timbre_mask = self.timbre_encoder(refer_audio_acoustic_hidden_states_packed, refer_audio_order_mask)
        states, mask = pack_sequences(lyrics, timbre, lyric_attention_mask, timbre_mask)
        return pack_sequences(states, text, mask, text_attention_mask)

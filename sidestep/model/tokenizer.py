"""Audio tokenizer (5 Hz codes via attention pooling + residual FSQ) and detokenizer (codes → 25 Hz hints).

Only the cover / audio-code path uses these; text-to-music training never runs them.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import AceStepConfig
from .layers import EncoderStack, Linear


class ResidualFSQ(nn.Module):
    """Finite scalar quantisation with symmetric levels, tanh soft clamp and a linear projection in and out."""

    def __init__(self, dim: int, levels: list[int], num_quantizers: int = 1) -> None:
        super().__init__()
        self.project_in = Linear(dim, len(levels))
        self.project_out = Linear(len(levels), dim)
        self.levels = list(levels)
        self.num_quantizers = num_quantizers

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.project_in(x)
        dtype = x.dtype
        x = x.float()
        levels = torch.tensor(self.levels, device=x.device)
        steps = (levels - 1).float()
        basis = torch.cumprod(torch.tensor([1] + self.levels[:-1], device=x.device), dim=0)
        clamp = 1.0 + 1.0 / steps
        residual = torch.tanh(x / clamp) * clamp
        quantized = torch.zeros_like(residual)
        indices = []
        for level_index in range(self.num_quantizers):
            scale = levels.float() ** -level_index
            # Round each clamped coordinate to one of L symmetric values in [-1, 1], then index the code.
            bracket = torch.floor(steps * ((residual / scale).clamp(-1.0, 1.0) + 1) / 2 + 0.5)
            codes = bracket * (2.0 / steps) - 1.0
            indices.append((((codes + 1.0) / (2.0 / steps)) * basis).sum(-1).round().to(torch.int32))
            residual = residual - codes * scale
            quantized = quantized + codes * scale
        return self.project_out(quantized.to(dtype)), torch.stack(indices, dim=-1)


class AttentionPooler(EncoderStack):
    """Pools each window of frames [N, T, P, H] into one vector via a prepended special token."""

    def __init__(self, config: AceStepConfig) -> None:
        super().__init__(config, config.hidden_size, config.num_attention_pooler_hidden_layers)
        self.special_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, windows, _, hidden = x.shape
        x = self.embed_tokens(x)
        x = torch.cat([self.special_token.expand(batch, windows, 1, -1).to(x.dtype), x], dim=2)
        x = self.run_layers(x.flatten(0, 1), None)
        return x[:, 0, :].unflatten(0, (batch, windows))


class AudioTokenizer(nn.Module):
    """25 Hz acoustic latents [N, T, 64] (T a multiple of the pool window) → 5 Hz quantised vectors and codes."""

    def __init__(self, config: AceStepConfig) -> None:
        super().__init__()
        self.pool_window_size = config.pool_window_size
        self.audio_acoustic_proj = Linear(config.audio_acoustic_hidden_dim, config.hidden_size)
        self.attention_pooler = AttentionPooler(config)
        self.quantizer = ResidualFSQ(config.fsq_dim, list(config.fsq_input_levels), config.fsq_input_num_quantizers)

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.audio_acoustic_proj(latents)
        x = x.unflatten(1, (-1, self.pool_window_size))
        return self.quantizer(self.attention_pooler(x))


class AudioDetokenizer(EncoderStack):
    """5 Hz quantised vectors [N, T5, H] → 25 Hz acoustic hints [N, T5·P, 64]."""

    def __init__(self, config: AceStepConfig) -> None:
        super().__init__(config, config.hidden_size, config.num_attention_pooler_hidden_layers)
        self.pool_window_size = config.pool_window_size
        self.special_tokens = nn.Parameter(torch.zeros(1, config.pool_window_size, config.hidden_size))
        self.proj_out = Linear(config.hidden_size, config.audio_acoustic_hidden_dim)

    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        batch, windows, _ = quantized.shape
        x = self.embed_tokens(quantized).unsqueeze(2) + self.special_tokens.unsqueeze(0).to(quantized.dtype)
        x = self.run_layers(x.flatten(0, 1), None)
        return self.proj_out(x).reshape(batch, windows * self.pool_window_size, -1)

"""Transformer building blocks shared by the DiT, the condition encoder and the audio tokenizer."""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F
from torch import nn

from .config import AceStepConfig


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a layer computes `x` in: the autocast dtype while autocast is on for its device, else `x`'s own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class _CastWorkspace(threading.local):
    """Per thread, one reusable buffer for the compute-dtype copy of a frozen weight (each copy lives for one product)."""

    buffer: torch.Tensor | None = None


_WORKSPACE = _CastWorkspace()


FP8 = torch.float8_e4m3fn
SCALE_SUFFIX = ".weight_scale"  # `<layer>.weight_scale`: the fp32 [out, 1] scales of a Linear weight stored in fp8


def quantize_fp8(weight: torch.Tensor, chunk: int = 1 << 21) -> tuple[torch.Tensor, torch.Tensor]:
    """A Linear weight [out, in] as e4m3 values and fp32 per-output-channel scales [out, 1]: weight ≈ values · scales.

    Each row's largest magnitude maps to e4m3's largest (448), so no row over- or underflows as a whole. Done in rows
    of about `chunk` values at a time in this thread's reused fp32 buffer (`cast_frozen`), so reading a model leaves no
    fp32 temporaries behind in the heap; `weight` is never written.
    """
    rows = max(1, chunk // max(1, weight.shape[1]))
    values = torch.empty(weight.shape, dtype=FP8, device=weight.device)
    scales = torch.empty(weight.shape[0], 1, device=weight.device)
    for start in range(0, weight.shape[0], rows):
        part = weight[start : start + rows]
        wide = cast_frozen(part, torch.float32)
        largest = torch.linalg.vector_norm(wide, float("inf"), dim=1, keepdim=True)  # max |w| per row, no temporary
        scale = (largest / torch.finfo(FP8).max).clamp_min(torch.finfo(torch.float32).tiny)
        values[start : start + rows] = wide / scale if wide is part else wide.div_(scale)
        scales[start : start + rows] = scale
    return values, scales


def cast_frozen(weight: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor | None = None) -> torch.Tensor:
    """`weight.to(dtype)` (times its fp8 `scale`, if any); on the CPU written into this thread's reused buffer, valid
    until the next cast in the thread.

    Only for products that do not keep the cast (no autograd on it): it spares allocating, page-faulting and freeing
    a full-precision copy of every frozen layer on every pass.
    """
    if weight.dtype == dtype or weight.device.type != "cpu" or not weight.is_contiguous() or torch.compiler.is_compiling():
        cast = weight.to(dtype)
        return cast if scale is None else cast * scale.to(dtype)
    size, buffer = weight.numel(), _WORKSPACE.buffer
    if buffer is None or buffer.dtype != dtype or buffer.numel() < size:
        with torch.inference_mode(False):  # a normal tensor, writable in and out of inference mode
            buffer = _WORKSPACE.buffer = torch.empty(size, dtype=dtype)
    cast = buffer[:size].view(weight.shape).copy_(weight)
    return cast if scale is None else cast.mul_(scale.to(dtype))


class _FrozenCastLinear(torch.autograd.Function):
    """x·Wᵀ + b with a frozen weight stored in another dtype than the product runs in.

    Autograd would keep the cast copy of the weight for the backward pass (under checkpointing one layer's worth,
    without it a full-precision copy of every layer); this keeps only the stored weight and casts it again there.
    """

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, scale: torch.Tensor | None
    ) -> torch.Tensor:
        ctx.save_for_backward(weight, scale)
        ctx.dtype, ctx.input_dtype = dtype, x.dtype
        return F.linear(x.to(dtype), cast_frozen(weight, dtype, scale), None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        weight, scale = ctx.saved_tensors
        return (grad.to(ctx.dtype) @ cast_frozen(weight, ctx.dtype, scale)).to(ctx.input_dtype), None, None, None, None


class _FrozenLoraLinear(torch.autograd.Function):
    """x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ with a frozen W (cast per pass, never kept) and trainable LoRA factors A [r, in], B [out, r].

    The LoRA products accumulate straight into the frozen product's output and input gradient (BLAS beta = 1), so no
    separate scale, add or gradient-sum pass runs over the wide tensors.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale: float, weight_scale) -> torch.Tensor:
        shape, dtype = x.shape, lora_a.dtype
        rows = x.reshape(-1, shape[-1])
        low = rows @ lora_a.t()
        out = F.linear(rows, cast_frozen(weight, dtype, weight_scale), bias).addmm_(low, lora_b.t(), alpha=scale)
        ctx.save_for_backward(rows, low, weight, lora_a, lora_b, weight_scale)
        ctx.scale, ctx.shape = scale, shape
        return out.view(*shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, low, weight, lora_a, lora_b, weight_scale = ctx.saved_tensors
        grad = grad.reshape(-1, grad.shape[-1])
        grad_low = (grad @ lora_b).mul_(ctx.scale)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ cast_frozen(weight, lora_a.dtype, weight_scale)).addmm_(grad_low, lora_a).view(ctx.shape)
        # (low·ᵀgrad)ᵀ: the r-row product runs faster than grad·ᵀlow on the CPU.
        grad_b = (low.t() @ grad).mul_(ctx.scale).t()
        return grad_x, None, None, grad_low.t() @ rows, grad_b, None, None


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: float,
    weight_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """A frozen Linear plus its LoRA update, `x·Wᵀ + b + scale·x·Aᵀ·Bᵀ`, computed in A's dtype in two fused products
    (W times `weight_scale` where it is stored in fp8)."""
    bias = None if bias is None else bias.to(lora_a.dtype)
    return _FrozenLoraLinear.apply(x, weight, bias, lora_a, lora_b, scale, weight_scale)


class Linear(nn.Linear):
    """nn.Linear that computes in its input's (or autocast's) dtype, so frozen bf16 weights can run in fp32 on a CPU.

    The weight is cast as the layer runs; a frozen weight's cast copy is never kept (see `cast_frozen`). A frozen weight
    may be stored in fp8 with per-output-channel `weight_scale` (see `quantize_fp8`; not part of the state dict).
    """

    # What PEFT makes adapter factors in (it reads this, as for quantised layers, instead of the weight's dtype): fp32
    # whatever the frozen weight's storage, so a bf16 or fp8 base starts training from the same factors as an fp32 one.
    compute_dtype = torch.float32

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_scale", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x)
        frozen = not self.weight.requires_grad and (self.bias is None or not self.bias.requires_grad)
        if frozen and self.weight.dtype != dtype and x.requires_grad and torch.is_grad_enabled():
            return _FrozenCastLinear.apply(x, self.weight, self.bias, dtype, self.weight_scale)
        bias = None if self.bias is None else self.bias.to(dtype)
        # A frozen weight's product records no autograd when x needs no gradient (or grad is off), so reuse is safe.
        return F.linear(x, cast_frozen(self.weight, dtype, self.weight_scale) if frozen else self.weight.to(dtype), bias)


class Conv1d(nn.Conv1d):
    """nn.Conv1d that computes in its input's (or autocast's) dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x)
        bias = None if self.bias is None else self.bias.to(dtype)
        return self._conv_forward(x, self.weight.to(dtype), bias)


class ConvTranspose1d(nn.ConvTranspose1d):
    """nn.ConvTranspose1d (stride = kernel, no padding) that computes in its input's (or autocast's) dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x)
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.conv_transpose1d(x, self.weight.to(dtype), bias, self.stride)


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in fp32, scaled by a learned weight."""

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight.to(dtype) * x32.to(dtype)


class RotaryEmbedding(nn.Module):
    """RoPE cos/sin tables for positions 0..L-1, cached per length, device and dtype."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (length, device, dtype)
        if key not in self._cache:
            exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float() / self.head_dim
            inv_freq = 1.0 / (self.theta**exponents)
            positions = torch.arange(length, device=device, dtype=torch.float32)
            freqs = positions[:, None] * inv_freq[None, :]
            angles = torch.cat([freqs, freqs], dim=-1)
            self._cache = {key: (angles.cos().to(dtype), angles.sin().to(dtype))}
        return self._cache[key]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` [B, heads, L, head_dim] by the position tables [L, head_dim]."""
    return x * cos + _rotate_half(x) * sin


def additive_mask(
    length: int,
    window: int | None,
    key_padding: torch.Tensor | None,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | None:
    """Bidirectional mask: |i-j| <= window (if any) and valid keys; additive with the dtype's minimum."""
    if window is None and key_padding is None:
        return None
    allowed = torch.ones(length, length, dtype=torch.bool, device=device)
    if window is not None:
        index = torch.arange(length, device=device)
        allowed = (index[:, None] - index[None, :]).abs() <= window
    allowed = allowed[None, None]
    if key_padding is not None:
        allowed = allowed & key_padding.to(device=device, dtype=torch.bool)[:, None, None, :]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


class Attention(nn.Module):
    """Grouped-query attention with per-head RMS norms on q/k; RoPE for self-attention only."""

    def __init__(self, config: AceStepConfig, cross: bool = False) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.cross = cross
        bias = config.attention_bias
        hidden = config.hidden_size
        self.q_proj = Linear(hidden, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = Linear(self.num_heads * self.head_dim, hidden, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def _heads(self, x: torch.Tensor, proj: nn.Linear, norm: RMSNorm | None) -> torch.Tensor:
        x = proj(x).unflatten(-1, (-1, self.head_dim))
        if norm is not None:
            x = norm(x)
        return x.transpose(1, 2)

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of `source` [B, L, hidden] as [B, kv_heads, L, head_dim] (before RoPE)."""
        return self._heads(source, self.k_proj, self.k_norm), self._heads(source, self.v_proj, None)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        context: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Cross-attention takes `context` as the embedded condition or as its `keys_values`, computed once."""
        q = self._heads(x, self.q_proj, self.q_norm)
        if not self.cross:
            k, v = self.keys_values(x)
        elif isinstance(context, tuple):
            k, v = context
        else:
            k, v = self.keys_values(context)
        if rotary is not None and not self.cross:
            cos, sin = rotary
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).flatten(2))


class GatedMLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden, intermediate, bias=False)
        self.up_proj = Linear(hidden, intermediate, bias=False)
        self.down_proj = Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class EncoderLayer(nn.Module):
    """Pre-norm bidirectional transformer layer (self-attention + MLP)."""

    def __init__(self, config: AceStepConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), mask=mask, rotary=rotary)
        return x + self.mlp(self.post_attention_layernorm(x))


class EncoderStack(nn.Module):
    """Input projection, a stack of encoder layers with alternating sliding/full masks, and a final norm."""

    def __init__(self, config: AceStepConfig, in_features: int, num_layers: int) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = Linear(in_features, config.hidden_size)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(num_layers))
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)

    def run_layers(self, x: torch.Tensor, key_padding: torch.Tensor | None, max_layers: int | None = None) -> torch.Tensor:
        """Run (at most `max_layers` of) the layers over already-embedded `x` [N, L, H] and normalise."""
        length = x.shape[1]
        rotary = self.rotary(length, x.device, x.dtype)
        masks: dict[bool, torch.Tensor | None] = {}
        for index, layer in enumerate(self.layers[:max_layers]):
            sliding = self.config.is_sliding(index)
            if sliding not in masks:
                window = self.config.sliding_window if sliding else None
                masks[sliding] = additive_mask(length, window, key_padding, x.dtype, x.device)
            x = layer(x, masks[sliding], rotary)
        return self.norm(x)


class TimestepEmbedding(nn.Module):
    """Sinusoidal embedding of t·1000 ([cos, sin], 256 channels) → MLP → (temb [B, H], 6-way projection [B, 6, H])."""

    def __init__(self, hidden: int, channels: int = 256, scale: float = 1000.0) -> None:
        super().__init__()
        self.channels = channels
        self.scale = scale
        self.linear_1 = Linear(channels, hidden)
        self.linear_2 = Linear(hidden, hidden)
        self.time_proj = Linear(hidden, hidden * 6)
        self._at_zero: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    def sinusoid(self, t: torch.Tensor) -> torch.Tensor:
        """The fp32 [cos, sin] features of `t` [B]."""
        half = self.channels // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
        args = (t * self.scale)[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        temb = self.linear_2(F.silu(self.linear_1(self.sinusoid(t).to(t.dtype))))
        return temb, self.time_proj(F.silu(temb)).unflatten(1, (6, -1))

    def _reusable(self, params: list[nn.Parameter]) -> bool:
        """Whether an output may be reused: frozen weights, our own plain modules (no hook, adapter or patched forward)."""
        plain = all(
            type(module) in (TimestepEmbedding, Linear)
            and not (module._forward_hooks or module._forward_pre_hooks)
            and "forward" not in vars(module)
            for module in self.modules()
        )
        # Inference tensors (weights loaded under torch.inference_mode, as in ComfyUI) carry no version counter.
        return plain and not any(param.requires_grad or torch.is_inference(param) for param in params)

    def at_zero(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`self(zeros_like(like))`, computed once per shape and reused while the weights stay frozen and unchanged.

        Any trainable, hooked or adapted weight, any in-place change to a weight, or another dtype, device or autocast
        setting makes it compute afresh, so training or adapting this embedding stays exact.
        """
        params = list(self.parameters())
        if not self._reusable(params):
            return self(torch.zeros_like(like))
        device = like.device.type
        autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        weights = tuple((id(param), param.data_ptr(), param._version) for param in params)
        key = (like.shape, like.dtype, like.device, autocast, weights)
        if self._at_zero is None or self._at_zero[0] != key:
            with torch.no_grad():
                self._at_zero = (key, self(torch.zeros_like(like)))
        return self._at_zero[1]

"""How much GPU memory a training run needs, estimated before anything heavy is loaded.

The estimate counts what the trainer's step keeps alive on a CUDA device at its worst moment, under CUDA's dtype
policy (bf16 autocast over frozen weights; adapter weights, gradients and optimiser state in fp32):

- frozen weights: the DiT's parameters in their storage dtype (fp8: e4m3 Linear weights plus fp32 row scales);
- adapter: its fp32 weights, their gradients (live at the peak with gradient checkpointing, which peaks in the last
  layer's backward pass; without it the peak is the end of the forward pass, before any gradient exists) and the
  optimiser's state per parameter;
- activations: per DiT layer, what autograd saves (counted from the code: fp32 copies in the RMS norms, the q/k norms,
  attention's inputs and output, the MLP's three wide tensors, PEFT's bf16 copy of every adapted layer's input and its
  rank-wide product, bf16 copies of the adapter weights), for every layer without checkpointing and for one layer
  (the others' grads and state only) with it; plus the step's working set (the widest products and their casts, fitted
  once on the measured full-width step: WORKING_SET_WIDTHS) and the batch;
- allocator margin: the caching allocator's rounding and fragmentation plus the CUDA context (ALLOCATOR_FRACTION,
  CONTEXT_BYTES; from the PyTorch and CUDA documentation, not measured on a GPU).

Checked against the live-tensor peak of the real step counted on the CPU (benchmarks/live_tensors.py,
tests/test_vram.py, docs/performance.md "VRAM estimate").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..adapters.config import AdapterConfig
from ..model.config import AceStepConfig
from ..variants import FRAMES_PER_SECOND, STORAGE

if TYPE_CHECKING:
    import torch

    from ..dataset.loader import DatasetIndex

GIB = 1024**3
BF16 = 2  # bytes of an activation under bf16 autocast
FP32 = 4
# Optimiser state bytes per trainable parameter: AdamW two fp32 moments; bitsandbytes' 8-bit AdamW two uint8 moments
# plus an fp32 absmax per 256-value block of each; Prodigy four fp32 tensors; Adafactor factored moments (negligible).
OPTIMIZER_STATE_BYTES = {"adamw": 8.0, "adamw8bit": 2.0 + 2 * 4 / 256, "prodigy": 16.0, "adafactor": 0.0}
# Encoder tokens a training clip's condition holds (caption padded to 256 + lyrics to 512 + one timbre token).
CONDITION_TOKENS = 769
# The step's working set beyond what autograd saves, in I-wide bf16 rows per token (I = the MLP width): the MLP's
# products and the fp32 casts PEFT makes of a layer's input. Fitted once on the full-width step (1 layer, 30 s).
WORKING_SET_WIDTHS = 4.5
# The CUDA caching allocator keeps freed blocks and rounds large ones up to 2 MiB, so it reserves more than is live
# (PyTorch docs, "CUDA semantics: memory management"; fragmentation can cost far more on long sequences, ZeRO paper
# §6); plus the CUDA context, kernels and the cuBLAS/cuDNN workspaces (several hundred MB with lazy module loading).
ALLOCATOR_FRACTION = 0.10
CONTEXT_BYTES = 0.5 * GIB
STORAGE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1}
UNKNOWN_CLIP_SECONDS = 60.0  # a dataset without durations and no crop length


@dataclass(frozen=True)
class VramEstimate:
    """The estimated device memory of a training step, by part (bytes)."""

    frozen_weights: int
    adapter: int
    activations: int
    allocator_margin: int
    adapter_parameters: int
    settings: str = ""

    @property
    def live_bytes(self) -> int:
        """What the step keeps alive at its peak (the figure checked against the CPU measurement)."""
        return self.frozen_weights + self.adapter + self.activations

    @property
    def total_bytes(self) -> int:
        """The live peak plus the allocator's margin: what the card must have free."""
        return self.live_bytes + self.allocator_margin

    def fits(self, free_bytes: int) -> bool:
        """Whether the estimate fits in `free_bytes` of device memory."""
        return self.total_bytes <= free_bytes

    def lines(self) -> list[str]:
        """The estimate in words, one part per line."""
        gib = lambda value: f"{value / GIB:6.2f} GiB"
        return [
            f"Estimated GPU memory: {gib(self.total_bytes).strip()} (CUDA, bf16 autocast; {self.settings})",
            f"  frozen weights                     {gib(self.frozen_weights)}",
            f"  adapter + grads + optimiser state  {gib(self.adapter)}  ({self.adapter_parameters / 1e6:.1f} M parameters)",
            f"  activations (peak of the step)     {gib(self.activations)}",
            f"  allocator + CUDA context margin    {gib(self.allocator_margin)}",
        ]

    def warning(self, free_bytes: int, device: str) -> str | None:
        """A warning when the estimate exceeds `free_bytes` free on `device`, else None."""
        if self.fits(free_bytes):
            return None
        return (
            f"The estimated {self.total_bytes / GIB:.1f} GiB will not fit the {free_bytes / GIB:.1f} GiB free on {device}: "
            "turn gradient checkpointing on, lower the rank or max_latent_frames, use the adamw8bit optimiser or the "
            "fp8 weight dtype."
        )


@dataclass(frozen=True)
class _Dims:
    """The widths one DiT layer's activations are made of."""

    hidden: int
    query: int
    kv: int
    mlp: int
    heads: int


def _layer_activations(dims: _Dims, tokens: int, condition: int) -> int:
    """Bytes autograd saves in one DiT layer under bf16 autocast, before its adapter's own."""
    h, q, kv, i = dims.hidden, dims.query, dims.kv, dims.mlp
    norms = 3 * tokens * h * FP32  # self-attention, cross-attention and MLP RMS norms keep an fp32 copy of x
    head_norms = (2 * tokens * q + tokens * kv + condition * kv) * FP32  # q/k norms: self q, k; cross q, k
    attention = (4 * tokens * q + 2 * tokens * q + 2 * condition * q) * BF16  # q, k, v (repeated), out per attention
    attention += 2 * tokens * dims.heads * FP32  # log-sum-exp
    mlp = 3 * tokens * i * BF16  # silu's input, silu's output and the up projection
    return norms + head_norms + attention + mlp


def _adapter_activations(adapted: list[tuple[str, int]], tokens: int, condition: int, rank: int) -> int:
    """Bytes the adapted Linear layers save: PEFT's bf16 copy of each one's input and its rank-wide product;
    `adapted`: (module path, input width) per adapted layer."""
    rows = lambda name: condition if name.endswith(("cross_attn.k_proj", "cross_attn.v_proj")) else tokens
    return sum(rows(name) * (width + rank) * BF16 for name, width in adapted)


def estimate_training_vram(
    config: AceStepConfig,
    adapter: AdapterConfig,
    optimizer: str = "adamw",
    checkpointing: bool = True,
    storage: str = "bf16",
    seconds: float = 30.0,
    batch_size: int = 1,
    condition_tokens: int = CONDITION_TOKENS,
) -> VramEstimate:
    """The device memory of training `adapter` on a model of `config` on clips of `seconds` (CUDA, bf16 autocast).

    The adapter is attached to a decoder built on the meta device, so its parameters are counted by its own kind's code
    (any kind, rank map or target); nothing is allocated.
    """
    from ..adapters.training import attach_trainable_adapter
    from ..model import TRAINING_PARTS, AceStepConditionGenerationModel

    model = AceStepConditionGenerationModel.on_meta_device(config, TRAINING_PARTS)
    fp8_weights = set(model.decoder_linear_weights()) if storage == "fp8" else set()
    shapes = {name: param.shape for name, param in model.named_parameters()}
    weights = sum(
        shape.numel() + shape[0] * FP32 if name in fp8_weights else shape.numel() * STORAGE_BYTES.get(storage, 2)
        for name, shape in shapes.items()
    )
    modules = dict(model.decoder.named_modules())
    trainable = attach_trainable_adapter(model.decoder, adapter)
    parameters = sum(param.numel() for param in trainable.parameters())
    layers = config.num_hidden_layers
    per_layer = parameters / layers

    frames = math.ceil(seconds * FRAMES_PER_SECOND)
    tokens = batch_size * math.ceil(frames / config.patch_size)
    condition = batch_size * condition_tokens
    dims = _Dims(
        config.hidden_size, config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim,
        config.intermediate_size, config.num_attention_heads,
    )
    adapted = [(name, modules[name].in_features) for name in trainable.modules]
    layer = _layer_activations(dims, tokens, condition)  # and, averaged over the layers, the adapter's own:
    layer += _adapter_activations(adapted, tokens, condition, getattr(adapter, "rank", 0)) / layers
    layer += per_layer * BF16  # autocast's bf16 copies of the adapter weights
    working = WORKING_SET_WIDTHS * tokens * config.intermediate_size * BF16
    if storage == "fp8":  # a layer's widest weight in bf16 and its scaled product, both briefly live at the peak
        working += 2 * max(shapes[name].numel() for name in fp8_weights if name.startswith("decoder.layers.")) * BF16
    encoder_width = config.condition_config.hidden_size
    latent = config.audio_acoustic_hidden_dim  # per frame: target, noise, context (twice as wide) and the mask
    batch = batch_size * FP32 * (frames * (4 * latent + 1) + condition_tokens * (encoder_width + 1))
    state = OPTIMIZER_STATE_BYTES[optimizer]
    if checkpointing:  # the last layer's backward: every gradient exists, one layer's activations are recomputed
        adapter_bytes = parameters * (FP32 + FP32 + state)
        activations = layer + working + batch
    else:  # the end of the forward pass: every layer's activations, no gradients yet
        adapter_bytes = parameters * (FP32 + state)
        activations = layers * layer + working + batch
    live = weights + adapter_bytes + activations
    margin = ALLOCATOR_FRACTION * live + CONTEXT_BYTES
    settings = (
        f"{storage} weights, {seconds:g} s clips, batch {batch_size}, {optimizer}, "
        f"checkpointing {'on' if checkpointing else 'off'}"
    )
    return VramEstimate(int(weights), int(adapter_bytes), int(activations), int(margin), parameters, settings)


def storage_name(dtype: torch.dtype | None) -> str:
    """The weight-storage choice of a bundle's dtype (either fp8 format is fp8); None (the checkpoint's own) is bf16,
    as ACE-Step 1.5 stores it."""
    if "float8" in str(dtype):
        return "fp8"
    return next((name for name, dtype_name in STORAGE.items() if str(dtype) == f"torch.{dtype_name}"), "bf16")


def clip_seconds(index: DatasetIndex, max_latent_frames: int | None) -> float:
    """The longest clip a step sees: the dataset's longest clip cut to the crop length (the crop length when the
    dataset records no durations; UNKNOWN_CLIP_SECONDS when neither is known)."""
    crop = max_latent_frames / FRAMES_PER_SECOND if max_latent_frames else None
    durations = [clip.duration for clip in index.manifest.clips if clip.duration] if index.manifest else []
    longest = max(durations) if durations else None
    known = [value for value in (longest, crop) if value is not None]
    return min(known) if known else UNKNOWN_CLIP_SECONDS


def fit_warning(estimate: VramEstimate, device: torch.device) -> str | None:
    """A warning when `device` is a CUDA device whose free memory (torch.cuda.mem_get_info) is below the estimate."""
    import torch

    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return estimate.warning(free, torch.cuda.get_device_name(device))

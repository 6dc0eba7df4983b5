"""Matrix-product FLOPs of a call (forward, backward and any recomputation), and what a GPU's bf16 peak allows."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils import flop_counter

# Dense bf16 tensor-core peaks (TFLOP/s, fp32 accumulation) from the vendors' data sheets; first matching name wins.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
)


def _attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _attention_backward(grad, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad, query, key, value)


def _addmm_in_place(target, mat1, mat2, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.mm_flop(mat1, mat2)


# torch's counter knows the CUDA attention kernels; the CPU's flash kernel counts the same products. The fused LoRA
# product accumulates with in-place addmm_, which the counter does not know either.
_UNCOUNTED = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward,
    torch.ops.aten.addmm_: _addmm_in_place,
}


def count_flops(fn: Callable[[], object]) -> int:
    """Run `fn` once and return the FLOPs of its matrix products and attention (multiply-add = 2)."""
    with flop_counter.FlopCounterMode(display=False, custom_mapping=_UNCOUNTED) as counter:
        fn()
    return counter.get_total_flops()


def bf16_peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """The card's dense bf16 peak: `override` if given, else looked up by name; None on a CPU or an unknown card."""
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for model, peak in BF16_PEAK_TFLOPS if model in name), None)

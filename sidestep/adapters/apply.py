"""Run the decoder with adapters on top — W·x + Σ strength·ΔW·x — without touching its base weights.

Each adapted Linear layer gets one forward hook that adds the adapters' contributions to its output, computed by each
kind from its own factors (`ModuleWeights.delta_x`; LoRA and LoKR keep no full-size ΔW in memory). DoRA-style magnitudes are honoured: the layer
then behaves as W + strength·(W' − W), W' being the trained, re-normalised weight (ComfyUI's rule for strength).
Removing the handle removes the hooks, so the same model serves another adapter, or none, bit for bit.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import AdapterError
from .keys import first_few, is_flat_name, lycoris_name
from .targets import linear_modules
from .loaded import LoadedAdapter, ModuleWeights


class _Term:
    """One adapter's contribution to one Linear layer: strength · ΔW·x, with ΔW kept in its kind's factored form."""

    def __init__(self, weights: ModuleWeights, strength: float, layer: nn.Linear) -> None:
        device = layer.weight.device
        self.strength = strength
        self.delta_x = weights.delta_x(device)
        self.needs_base = weights.needs_base_output
        self.gain = None
        if weights.magnitude is not None:
            # DoRA: W' = g ⊙ (W + ΔW) with g = m / ‖W + ΔW‖ per output row, so W' − W = (g − 1) ⊙ W + g ⊙ ΔW.
            base = layer.weight.detach().float()
            merged = base + weights.delta(base).to(device)
            self.gain = weights.magnitude.float().to(device) / merged.norm(dim=1)
            self.needs_base = True

    def __call__(self, x: torch.Tensor, base_out: torch.Tensor | None) -> torch.Tensor:
        """strength · (W' − W)·x, `base_out` being W·x (None unless `needs_base`)."""
        delta = self.delta_x(x, base_out)
        if self.gain is None:
            return self.strength * delta
        gain = self.gain.to(x.device, x.dtype)
        return self.strength * ((gain - 1) * base_out + gain * delta)


class _LayerHook:
    """Forward hook adding every term of one Linear layer to its output."""

    def __init__(self, terms: list[_Term]) -> None:
        self.terms = terms

    def __call__(self, layer: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        needs_base = any(term.needs_base for term in self.terms)
        base_out = F.linear(x, layer.weight.to(x.dtype)) if needs_base else None
        for term in self.terms:
            output = output + term(x, base_out)
        return output


@dataclass
class AppliedAdapters:
    """Handle for adapters applied to a model: `.remove()` (or leaving a `with` block) restores the plain model;
    `.warnings` lists non-fatal mismatches (e.g. an adapter trained on another variant)."""

    handles: list[RemovableHandle] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def remove(self) -> None:
        """Detach every hook; the model computes exactly as before `apply_adapters`."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def __enter__(self) -> "AppliedAdapters":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.remove()


def _resolve(adapter: LoadedAdapter, linears: dict[str, nn.Linear]) -> dict[str, str]:
    """Adapter module key → decoder path; AdapterError naming modules the decoder lacks or whose shapes differ."""
    flat = {lycoris_name(name): name for name in linears}
    resolved, missing, wrong = {}, [], []
    for key, weights in adapter.modules.items():
        name = flat.get(key) if is_flat_name(key) else (key if key in linears else None)
        if name is None:
            missing.append(key)
            continue
        layer = linears[name]
        expected = (layer.out_features, layer.in_features)
        if not weights.fits(expected) or (weights.magnitude is not None and weights.magnitude.numel() != expected[0]):
            size = "x".join(str(n) for n in weights.shape if n is not None)
            wrong.append(f"{key} (adapter {size}, model {expected[0]}x{expected[1]})")
        resolved[key] = name
    if missing:
        raise AdapterError(
            f"Adapter {adapter.source} targets modules this decoder does not have: {first_few(missing)}. "
            "It was made for a different model."
        )
    if wrong:
        raise AdapterError(
            f"Adapter {adapter.source} does not fit this model's layer sizes: {first_few(wrong)}. "
            "It was trained on a different model size (e.g. XL vs 2B); load the matching checkpoint."
        )
    return resolved


def apply_adapters(
    model: nn.Module,
    adapters: Sequence[tuple[LoadedAdapter, float]],
    variant: str | None = None,
    base: str | None = None,
) -> AppliedAdapters:
    """Add `(adapter, strength)` pairs to `model.decoder` (or a bare decoder) until the returned handle is removed.

    Everything is checked before any hook is attached. `variant`/`base` (e.g. from the checkpoint entry) are compared
    with the adapters' metadata (the one place variant mismatches are warned about); without them the model config's
    is_turbo is used. Strength 0 adds nothing.
    """
    decoder = model.decoder if hasattr(model, "decoder") else model
    if decoder is None:
        raise AdapterError("Adapters need the model's decoder, but this model was loaded without it.")
    linears = linear_modules(decoder)
    is_turbo = getattr(getattr(decoder, "config", None), "is_turbo", None)
    applied = AppliedAdapters()
    plans = []
    for adapter, strength in adapters:
        strength = float(strength)
        if not math.isfinite(strength):
            raise AdapterError(f"Adapter {adapter.source} strength must be a finite number, got {strength}.")
        plans.append((adapter, strength, _resolve(adapter, linears)))
        applied.warnings.extend(adapter.metadata.mismatch_warnings(adapter.source.name, variant, base, is_turbo))
    terms: dict[str, list[_Term]] = defaultdict(list)
    for adapter, strength, resolved in plans:
        if strength == 0:
            continue
        for key, name in resolved.items():
            terms[name].append(_Term(adapter.modules[key], strength, linears[name]))
    for name, layer_terms in terms.items():
        applied.handles.append(linears[name].register_forward_hook(_LayerHook(layer_terms)))
    return applied

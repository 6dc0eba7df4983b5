"""The measurement behind adaptive rank: per candidate module, the Fisher information of the training loss w.r.t. its
weight and how it spreads over directions, from a few real training passes on the user's data.

No full-weight gradient is ever formed. A LoRA whose A factors are a fixed Gaussian sketch P [k, in] (entries
N(0, 1/k)) and whose B factors are zero is attached, so the model computes exactly what it computes untouched, and the
gradient of each B is the clip's weight gradient G seen through the sketch, Y = G·Pᵀ [out, k]. With E[PᵀP] = I,
E‖Y‖² = ‖G‖²: the mean over clips is the Fisher estimate (the trace of the empirical Fisher on that weight). The sum
of YᵀY over clips [k, k] is the sketched second moment of the stacked per-clip gradients; its eigenvalues (the
squared singular values of the accumulated gradient matrix, as far as the sketch sees) add up to that Fisher trace and
say how many directions hold it. So the memory is one training step of a rank-k LoRA (without optimiser state).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..adapters.adaptive import AdaptiveRankSettings, ModuleStats, RankMap, build_rank_map
from ..adapters.config import LoraConfig
from ..adapters.training import attach_trainable_adapter
from ..dataset.loader import DatasetIndex, collate_clips, dataset_index, epoch_order
from ..errors import AdapterError, TrainingError
from ..memory import trim_before_each
from ..model import TRAINING_PARTS, AceStepConditionGenerationModel
from .config import TrainConfig
from .loop import RunIdentity, Trainer

if TYPE_CHECKING:
    from ..bundle import AceStepBundle

# Kept apart from the trainer's own streams, so the sketch never depends on how the data draws went.
SKETCH_SEED_OFFSET = 104_729


def _sketch(trainer: Trainer, config: LoraConfig, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Attach the probing LoRA (A = a seeded Gaussian sketch, frozen; B = 0) and return module → (A, B)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = attach_trainable_adapter(trainer.decoder, config)
    trainer.adapter = adapter
    generator = torch.Generator().manual_seed(seed + SKETCH_SEED_OFFSET)
    factors = {}
    for name in adapter.modules:
        layer = trainer.decoder.get_submodule(name)
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        with torch.no_grad():
            a.copy_(torch.randn(a.shape, generator=generator) / math.sqrt(a.shape[0]))
            b.zero_()
        a.requires_grad_(False)
        factors[name] = (a, b)
    return factors


def measure_modules(
    model: AceStepConditionGenerationModel,
    dataset: str | Path | DatasetIndex,
    config: LoraConfig,
    train_config: TrainConfig,
    identity: RunIdentity,
    settings: AdaptiveRankSettings,
) -> tuple[list[ModuleStats], str]:
    """Each of `config`'s target modules measured over `settings.batches` clips with the training objective and draws
    of `train_config` (one clip per pass); returns the stats in module order and the dataset's hash. Attaches probing
    layers to `model.decoder`: give it a model of its own."""
    if config.use_dora:
        raise AdapterError("Adaptive rank sizes plain LoRA; turn DoRA (weight_decompose) off to analyse.")
    width = settings.resolved_max_rank(config.rank)
    probe = LoraConfig(rank=width, alpha=width, target=config.target, custom_modules=config.custom_modules)
    run_config = dataclasses.replace(train_config, batch_size=1, gradient_accumulation=1, preview_every=0, resume_from=None)
    trainer = Trainer(model, dataset, probe, run_config, identity)
    factors = _sketch(trainer, probe, train_config.seed)
    decoder = trainer.decoder
    decoder.gradient_checkpointing = run_config.gradient_checkpointing
    decoder.train()
    untrim = trim_before_each(decoder.layers) if trainer.device.type == "cpu" else lambda: None
    moments = {name: torch.zeros(a.shape[0], a.shape[0], dtype=torch.float64) for name, (a, _) in factors.items()}
    try:
        for epoch, index in _clips(len(trainer.dataset), train_config.seed, settings.batches):
            trainer.dataset.set_epoch(epoch)
            batch = collate_clips([trainer.dataset[index]])
            loss = trainer._backward(batch, 1)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"The loss was not finite on clip {index} of {trainer.dataset.folder}; the rank analysis cannot "
                    "measure it. Check the dataset (re-encode it) or use fp32 precision."
                )
            for name, (_, b) in factors.items():
                sketched = b.grad.detach().to("cpu", torch.float64)
                moments[name] += sketched.t() @ sketched
                b.grad = None
    finally:
        untrim()
        decoder.eval()
    stats = []
    for name, (a, b) in factors.items():
        eigenvalues = torch.linalg.eigvalsh(moments[name] / settings.batches).flip(0).clamp_min(0)
        spectrum = tuple(float(value) for value in eigenvalues)
        stats.append(ModuleStats(name=name, shape=(b.shape[0], a.shape[1]), fisher=sum(spectrum), spectrum=spectrum))
    return stats, trainer.dataset_hash


def _clips(size: int, seed: int, count: int) -> list[tuple[int, int]]:
    """(epoch, clip index) of the first `count` clips in the trainer's epoch orders (the data cycles when short)."""
    if size == 0:
        raise TrainingError("The dataset has no clips to analyse; encode some songs first.")
    picked: list[tuple[int, int]] = []
    epoch = 0
    while len(picked) < count:
        picked += [(epoch, index) for index in epoch_order(size, seed, epoch)][: count - len(picked)]
        epoch += 1
    return picked


def analyse_ranks(
    bundle: AceStepBundle,
    dataset: str | Path | DatasetIndex,
    config: LoraConfig,
    settings: AdaptiveRankSettings,
    train_config: TrainConfig | None = None,
) -> RankMap:
    """The rank map for `config` on the bundle's model and the encoded dataset, measured on a private DiT (the
    bundle's stays clean). `train_config` gives the objective's settings (seed, timesteps, crop; defaults otherwise)."""
    from .run import identity_of

    train_config = train_config or TrainConfig(output_dir="")
    index = dataset if isinstance(dataset, DatasetIndex) else dataset_index(dataset)
    identity = identity_of(bundle)
    with torch.inference_mode(False):
        model = bundle.with_own_dit(TRAINING_PARTS).dit(TRAINING_PARTS)
        stats, dataset_hash = measure_modules(model, index, config, train_config, identity, settings)
    described = {"name": identity.model_name, "variant": identity.variant, "base": identity.base}
    return build_rank_map(stats, config, settings, described, dataset_hash)

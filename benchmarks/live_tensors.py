"""The peak of live tensor bytes over the trainer's real step, counted op by op on the CPU.

A TorchDispatchMode sees every tensor an op returns, in the forward pass, the backward pass and the optimiser step;
each storage is counted once while any reference to it lives (torch's weak storage references tell when it is freed).
What existed before (frozen weights, adapter, batch) is counted once as resident. The sum is what a GPU would have to
hold at the step's worst moment, before its caching allocator's slack (the estimate: sidestep/training/vram.py).

`fake=True` runs the same step over fake tensors (torch's FakeTensorMode: every op's real dtype and shape, no
arithmetic), so full-width layers count in seconds on a CPU without bf16 units; at small width it counts exactly the
bytes the real step does (tests/test_vram.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sidestep.adapters.config import AdapterConfig
from sidestep.adapters.training import attach_trainable_adapter
from sidestep.model import TRAINING_PARTS, AceStepConditionGenerationModel
from sidestep.model import layers as model_layers
from sidestep.model.config import AceStepConfig
from sidestep.training.config import TrainConfig
from sidestep.training.loop import TrainingStep, update
from sidestep.training.optim import build_optimizer
from sidestep.variants import FRAMES_PER_SECOND

from .models import STORAGE, frozen_model, synthetic_clip


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of the storages that ops create while it is active, and their peak."""

    def __init__(self, known: Iterable[torch.Tensor], fake: bool = False) -> None:
        super().__init__()
        self.known = {tensor.untyped_storage()._cdata for tensor in known}
        self.fake = fake
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _sweep(self) -> None:
        for key, (ref, size) in list(self.live.items()):
            if ref.expired():
                del self.live[key]
                self.current -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.fake and func is torch.ops.aten._local_scalar_dense.default:
            return False  # without data, the step's one question of data ("is the batch padded?") answers no
        out = func(*args, **(kwargs or {}))
        storages = [tensor.untyped_storage() for tensor in tree_leaves(out) if isinstance(tensor, torch.Tensor)]
        fresh = {storage._cdata: storage for storage in storages if storage._cdata not in self.live and storage._cdata not in self.known}
        if fresh:
            self._sweep()
            for key, storage in fresh.items():
                self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        return out


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors`."""
    return sum({tensor.untyped_storage()._cdata: tensor.untyped_storage().nbytes() for tensor in tensors}.values())


@dataclass(frozen=True)
class StepPeak:
    """What the real step kept alive: resident before it (weights, adapter, batch) and the peak of what it made."""

    resident_bytes: int
    step_peak_bytes: int
    adapter_parameters: int

    @property
    def total_bytes(self) -> int:
        """The live-tensor peak of the whole step."""
        return self.resident_bytes + self.step_peak_bytes


def _meta_model(config: AceStepConfig, storage: str) -> AceStepConditionGenerationModel:
    """The training parts on the meta device in the storage dtype (fp8: the DiT's Linear weights, the rest bf16)."""
    model = AceStepConditionGenerationModel.on_meta_device(config, TRAINING_PARTS).to(torch.bfloat16 if storage == "fp8" else STORAGE[storage])
    return model.store_decoder_fp8() if storage == "fp8" else model


def _as_fake(model: torch.nn.Module, mode) -> None:
    """Swap every meta parameter and buffer of `model` for a fake CPU tensor of the same dtype and shape."""
    make = lambda tensor: mode.fake_tensor_converter.from_meta_and_device(mode, tensor.detach(), torch.device("cpu"))
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None:
                module._parameters[name] = torch.nn.Parameter(make(param), requires_grad=param.requires_grad)
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = make(buffer)


def measure_step_peak(
    config: AceStepConfig,
    adapter: AdapterConfig,
    storage: str = "bf16",
    checkpointing: bool = True,
    seconds: float = 30.0,
    batch_size: int = 1,
    condition_tokens: int = 769,
    fake: bool = True,
    steps: int = 2,
) -> StepPeak:
    """Run `steps` real trainer steps (TrainingStep.backward under bf16 autocast, CUDA's policy, then `update` with
    the trainer's AdamW) on the CPU and count live tensor bytes; the last step is steady (optimiser state exists)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode() if fake else None
    model_layers._WORKSPACE.buffer = None  # each measurement starts as a fresh process does
    if fake:
        model = _meta_model(config, storage).requires_grad_(False)
        trainable = attach_trainable_adapter(model.decoder, adapter)
        _as_fake(model, mode)
    else:
        model = frozen_model(config, STORAGE[storage], torch.device("cpu"))
        trainable = attach_trainable_adapter(model.decoder, adapter)
    frames = round(seconds * FRAMES_PER_SECOND)
    clip = synthetic_clip(config, frames)
    clip["encoder_hidden_states"] = torch.randn(condition_tokens, config.condition_config.hidden_size)
    clip["encoder_attention_mask"] = torch.ones(condition_tokens)
    if fake:
        clip = {key: mode.from_tensor(value) for key, value in clip.items()}
    with mode or nullcontext():
        batch = {key: value.expand(batch_size, *value.shape).clone() for key, value in clip.items()}
        noise = torch.randn(batch["target_latents"].shape)
        t = torch.full((batch_size,), 0.75)
        model.decoder.gradient_checkpointing = checkpointing
        model.decoder.train()
        parameters = trainable.parameters()
        optimizer, _ = build_optimizer(parameters, TrainConfig(output_dir=""), torch.device("cpu"))
        step = TrainingStep(model.decoder, torch.bfloat16, model.null_condition_emb)
        resident = [*model.parameters(), *model.buffers(), *batch.values(), noise, t]
        with LiveTensorBytes(resident, fake) as counter, warnings.catch_warnings():
            # The time embedding's reuse check reads data pointers; a fake tensor's is stable, so the check still holds.
            warnings.filterwarnings("ignore", "Accessing the data pointer of FakeTensor")
            for _ in range(steps):
                step.backward(batch, noise, t)
                update(parameters, optimizer, None, 1.0)
    return StepPeak(storage_bytes(resident), counter.peak, sum(p.numel() for p in parameters))

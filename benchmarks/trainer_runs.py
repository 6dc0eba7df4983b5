"""The real Trainer, one fresh process per configuration: peak memory, step time, checkpoint saving, file sizes."""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass

from sidestep.memory import ENABLE_VARIABLE
from sidestep.variants import cpu_has_bf16_units

from .memory import run_worker
from .models import benchmark_device, dtype_label
from .report import Row, Stat, Target
from .settings import RunSettings
from .training import ADAPTER_NAMES, CLIPS

MEMORY_LIMIT_GB = 5.5
FP8_MEMORY_LIMIT_GB = 3.5  # the fp8 base's goal for the same step
# Official-style training on this CPU (fp32, checkpointing, full size), as given in the issue (not measured here).
REFERENCE_STEP_SECONDS = (37.0, 41.0)
REFERENCE_MEMORY = "9.5 GB decoder only / 11.1 GB whole model"
MB = 1e6


# SIDESTEP_LOW_MEMORY per run (sidestep/memory.py): None = the default (heap trimmed after every step), "0" = glibc
# untouched (the baseline the default is compared with in the same run), "1" = fixed 128 kB mmap threshold as well.
MEMORY_SETTING = {None: "", "0": f", {ENABLE_VARIABLE}=0", "1": f", {ENABLE_VARIABLE}=1"}


@dataclass(frozen=True)
class TrainRun:
    """One trainer configuration: adapter kind and rank, weight storage, checkpointing, clip, optimiser, allocator."""

    kind: str
    storage: str
    checkpointing: bool
    clip: str = "30 s"
    memory: str | None = None
    rank: int = 64
    optimizer: str = "adamw"
    precision: str = "auto"  # what the products run in (TrainConfig.precision)

    def describe(self) -> str:
        """e.g. 'LoRA r64 attn+MLP, 30 s, checkpointing on'."""
        name = ADAPTER_NAMES[self.kind].replace("r64", f"r{self.rank}")
        optimizer = ", AdamW 8-bit" if self.optimizer == "adamw8bit" else ""
        compute = "" if self.precision == "auto" else f", {self.precision} compute"
        checkpointing = "on" if self.checkpointing else "off"
        return f"{name}, {self.clip}, checkpointing {checkpointing}{optimizer}{compute}{MEMORY_SETTING[self.memory]}"


RUNS = {
    "tiny": (TrainRun("lora", "bf16", True),),
    "small": (
        TrainRun("lora", "bf16", True),
        TrainRun("lora", "bf16", True, memory="1"),
        TrainRun("lora", "fp32", True),
        TrainRun("lora", "bf16", False),
        TrainRun("lora", "fp32", False),
        TrainRun("lokr", "bf16", True),
    ),
    "full": (TrainRun("lora", "bf16", True), TrainRun("lora", "fp8", True), TrainRun("lora", "bf16", True, memory="0")),
}
# On a CPU with bf16 units auto precision computes in bf16: fp32 products run beside it (on CUDA every run is bf16).
FP32_COMPUTE_RUN = TrainRun("lora", "bf16", True, precision="fp32")
NO_BF16_UNITS = (
    "not measured: this CPU has no bf16 units (neither AMX nor AVX-512 BF16), where bf16 products run several times "
    "slower than fp32 and auto precision stays fp32, so a figure would mislead"
)
# On a GPU the full size also fills the VRAM table: rank 16/64 × checkpointing on/off × AdamW/8-bit AdamW, and the fp8
# base beside the bf16 one (r64, checkpointing, AdamW).
CUDA_FULL_RUNS = tuple(
    TrainRun("lora", "bf16", checkpointing, rank=rank, optimizer=optimizer)
    for rank in (16, 64)
    for checkpointing in (True, False)
    for optimizer in ("adamw", "adamw8bit")
) + (TrainRun("lora", "fp8", True),)
STEPS = 2


def _sizes(files: dict[str, int]) -> str:
    return ", ".join(f"{name} {size / MB:.1f} MB" for name, size in files.items())


def _rows(size: str, run: TrainRun, answer: dict) -> list[Row]:
    device = benchmark_device()
    label, name = dtype_label(run.storage, device, run.precision), run.describe()
    row = lambda group, what, unit, stat, note="": Row(group, what, size, device.type, label, unit, stat, note=note)
    resident, total = answer["resident_model_gb"], answer["peak_total_gb"]
    peak_note = f"weights resident {resident:.2f} GB; with checkpoint saving {total:.2f} GB"
    rows = [
        row("memory", f"peak RSS, trainer, {name}", "GB", Stat.of([answer["peak_steps_gb"]]), peak_note),
        row("trainer", f"trainer step, {name}", "s", Stat.of(answer["step_seconds"]), "real Trainer; first step included"),
        row("checkpoint", f"save checkpoint, {name}", "s", Stat.of([answer["checkpoint_seconds"]]),
            _sizes(answer["checkpoint_files"])),
        row("checkpoint", f"save final adapter, {name}", "s", Stat.of([answer["final_seconds"]]),
            _sizes(answer["final_files"])),
    ]
    if answer["cuda_peak_steps_gb"] is not None:
        cuda = Stat.of([answer["cuda_peak_steps_gb"]])
        rows.insert(1, row("memory", f"peak CUDA allocated, trainer, {name}", "GB", cuda))
    return rows


def _loss_difference(size: str, run: TrainRun, losses: list[float], reference: list[float]) -> Row:
    """How far `run`'s losses (an fp8 base, or fp32 compute) are from the default bf16 run's over the same steps (same
    data, seed and draws)."""
    device = benchmark_device()
    relative = [abs(a - b) / abs(b) for a, b in zip(losses, reference)]
    note = "steps: " + ", ".join(f"{a:.4f} vs {b:.4f}" for a, b in zip(losses, reference))
    what = "fp8 vs bf16 base" if run.storage == "fp8" else f"{run.precision} compute vs default"
    return Row("trainer", f"loss difference {what}, {run.describe()}", size, device.type,
               dtype_label(run.storage, device, run.precision), "rel", Stat.of([max(relative)]), note=note)


def _targets(run: TrainRun, answer: dict) -> list[Target]:
    """The full-size memory goal for this run, and the speed goal for the run with default settings."""
    cuda = answer["cuda_peak_steps_gb"]
    peak = cuda if cuda is not None else answer["peak_steps_gb"]
    what = "CUDA max_memory_allocated" if cuda is not None else "peak RSS"
    setting = MEMORY_SETTING[run.memory] + (", fp8 base" if run.storage == "fp8" else "")
    limit = FP8_MEMORY_LIMIT_GB if run.storage == "fp8" else MEMORY_LIMIT_GB
    why = f"reference {REFERENCE_MEMORY}"
    if peak > limit:
        why = f"{peak - limit:.2f} GB over; {why}"
    targets = [
        Target(f"full LoRA step memory (r64, attn+MLP, 30 s, checkpointing){setting}", f"≤ {limit} GB",
               f"{peak:.2f} GB {what}", peak <= limit, why),
    ]
    if run.memory is None and run.storage == "bf16":
        step, (fastest, slowest) = min(answer["step_seconds"][1:] or answer["step_seconds"]), REFERENCE_STEP_SECONDS
        limit = f"≤ reference {fastest:g}–{slowest:g} s"
        measured = f"{step:.1f} s (best step after the first)"
        why = "" if step <= slowest else f"{step - slowest:.1f} s over the slower reference"
        targets.append(Target("full LoRA step time, same setting", limit, measured, step <= slowest, why))
    return targets


def _bf16_compute(size: str) -> tuple[tuple[TrainRun, ...], list[Target]]:
    """Where a CPU has bf16 units (auto computes in bf16 there), the full-size fp32-compute run to compare the default
    with; on other CPUs the target saying why bf16 compute is not measured."""
    if size != "full" or benchmark_device().type == "cuda":
        return (), []
    if cpu_has_bf16_units():
        return (FP32_COMPUTE_RUN,), []
    return (), [Target("full LoRA step, bf16 compute (auto on CPUs with bf16 units)", "faster than fp32, losses within 2e-3",
                       "not measured", None, NO_BF16_UNITS)]


def trainer_rows(size: str, settings: RunSettings) -> tuple[list[Row], list[Target]]:
    """Run every configuration of this size for a couple of steps, each in its own process."""
    rows, losses = [], {}
    extra, targets = _bf16_compute(size)
    runs = CUDA_FULL_RUNS if size == "full" and benchmark_device().type == "cuda" else RUNS[size] + extra
    for index, run in enumerate(runs):
        if run.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
            continue
        params = {
            "size": size,
            "kind": run.kind,
            "rank": run.rank,
            "optimizer": run.optimizer,
            "storage": run.storage,
            "checkpointing": run.checkpointing,
            "precision": run.precision,
            "frames": CLIPS[run.clip],
            "steps": STEPS,
            "workdir": str(settings.workdir / f"trainer-{size}-{index}"),
        }
        answer = run_worker("train", params, None if run.memory is None else {ENABLE_VARIABLE: run.memory})
        rows += _rows(size, run, answer)
        losses[run] = answer["losses"]
        twin = dataclasses.replace(run, storage="bf16", precision="auto")
        if run != twin and twin in losses:
            rows.append(_loss_difference(size, run, losses[run], losses[twin]))
        if size == "full" and run.rank == 64 and run.optimizer == "adamw" and run.checkpointing and run.precision == "auto":
            targets += _targets(run, answer)
    return rows, targets

"""The benchmarked model sizes, frozen decoders with random weights, and synthetic encoded clips."""

from __future__ import annotations

from pathlib import Path

import torch

from sidestep.adapters.kinds.loha import LohaConfig
from sidestep.adapters.kinds.lokr import LokrConfig
from sidestep.adapters.kinds.lora import LoraConfig
from sidestep.adapters.kinds.oft import OftConfig
from sidestep.dataset.tensors import ClipRecord, Manifest, save_clip, write_manifest
from sidestep.model import TRAINING_PARTS, AceStepConditionGenerationModel, AceStepConfig
from sidestep.model.layers import FP8
from sidestep.variants import FRAMES_PER_SECOND, resolve_device, resolve_dtype

SIZES = ("tiny", "small", "full")
# Encoder tokens of a typical condition: caption prompt (~100) plus lyrics (~200).
CONDITION_TOKENS = 300
VARIANT = "turbo"
# The adapters measured, all on attention + MLP: LoRA r=64 and LoKR (Side-Step defaults), LoHA dim 64 and OFT (block
# size 32, its default) — the "rank/dim 64" row of the README's table of kinds.
ADAPTERS = {
    "lora": LoraConfig(rank=64, alpha=128, target="attention_mlp"),
    "lokr": LokrConfig(target="attention_mlp"),
    "loha": LohaConfig(linear_dim=64, linear_alpha=64, target="attention_mlp"),
    "oft": OftConfig(target="attention_mlp"),
}
STORAGE = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp8": FP8}  # fp8: the DiT's Linear weights, the rest bf16


def benchmark_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return resolve_device("auto")


def dtype_label(storage: str, device: torch.device, precision: str = "auto") -> str:
    """How weights are stored and what precision the matrix products run in on `device`."""
    compute = "bf16 autocast" if resolve_dtype(precision, device) == torch.bfloat16 else "fp32 compute"
    return f"{storage} weights, {compute}"


def size_config(size: str) -> AceStepConfig:
    """tiny (the test config), small (512 wide, 8 layers) or full (the real 2B turbo config)."""
    if size == "tiny":
        from sidestep.tiny_models import tiny_model_config  # imports diffusers; the other sizes need none of it

        return tiny_model_config(VARIANT)
    if size == "small":
        return AceStepConfig(
            hidden_size=512,
            intermediate_size=1536,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=64,
            is_turbo=True,
        )
    if size == "full":
        return AceStepConfig(is_turbo=True)
    raise ValueError(f"Unknown benchmark size {size!r}; choose from {SIZES}.")


def frozen_model(
    config: AceStepConfig, dtype: torch.dtype, device: torch.device, seed: int = 0
) -> AceStepConditionGenerationModel:
    """The training parts (decoder + null_condition_emb) with random weights stored in `dtype` (fp8: the DiT's Linear
    weights in e4m3 with scales, the rest bf16), frozen.

    Built on the meta device and filled in place, so no full-precision copy of the weights ever exists.
    """
    model = AceStepConditionGenerationModel.on_meta_device(config, TRAINING_PARTS).to(torch.bfloat16 if dtype == FP8 else dtype)
    model = model.to_empty(device=device).init_random_weights(seed)
    return (model.store_decoder_fp8() if dtype == FP8 else model).requires_grad_(False)


def synthetic_clip(config: AceStepConfig, frames: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """One encoded clip (unbatched, as `load_clip` returns it) with random latents and condition."""
    generator = torch.Generator().manual_seed(seed)
    width = config.condition_config.hidden_size
    return {
        "target_latents": torch.randn(frames, config.audio_acoustic_hidden_dim, generator=generator),
        "attention_mask": torch.ones(frames),
        "encoder_hidden_states": torch.randn(CONDITION_TOKENS, width, generator=generator),
        "encoder_attention_mask": torch.ones(CONDITION_TOKENS),
        "context_latents": torch.randn(frames, 2 * config.audio_acoustic_hidden_dim, generator=generator),
    }


def write_dataset(folder: Path, config: AceStepConfig, frames: int, clips: int, seed: int = 0) -> Path:
    """An encoded dataset folder (safetensors clips + manifest.json) of `clips` random clips of `frames` frames."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(clips):
        name = f"clip{index:03d}.safetensors"
        save_clip(folder / name, synthetic_clip(config, frames, seed + index))
        records.append(
            ClipRecord(
                file=name,
                source=f"synthetic/{name}",
                source_hash="",
                duration=frames / FRAMES_PER_SECOND,
                caption="benchmark",
                lyrics="",
            )
        )
    write_manifest(folder, Manifest(model_variant=VARIANT, encoder_fingerprint="benchmark", clips=records))
    return folder

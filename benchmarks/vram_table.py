"""The README's VRAM table: the estimate (sidestep/training/vram.py) for the 2B and XL models over the settings users
pick, with the smallest common card each fits. `python -m benchmarks.vram_table` prints the markdown rows."""

from __future__ import annotations

from sidestep.adapters.kinds.lora import LoraConfig
from sidestep.model.config import AceStepConfig
from sidestep.training.vram import GIB, estimate_training_vram

# The XL DiT's dimensions (tests/fixtures listing of its state dict): hidden 2560, MLP 9728, 32/8 heads, 32 layers,
# its condition encoder as wide as the 2B's.
XL = AceStepConfig(
    hidden_size=2560, intermediate_size=9728, num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=32,
    encoder_hidden_size=2048, encoder_intermediate_size=6144, encoder_num_attention_heads=16, encoder_num_key_value_heads=8,
)
MODELS = {"2B": AceStepConfig(is_turbo=True), "XL": XL}
CARDS_GB = (8, 12, 16, 24)
# (model, rank, checkpointing, optimizer, base, seconds): LoRA on attention + MLP, batch 1.
ROWS = (
    ("2B", 16, True, "adamw8bit", "fp8", 30), ("2B", 16, True, "adamw", "bf16", 30), ("2B", 64, True, "adamw", "bf16", 30),
    ("2B", 64, True, "adamw8bit", "bf16", 30), ("2B", 64, True, "adamw", "fp8", 30), ("2B", 64, True, "adamw", "bf16", 60),
    ("2B", 64, False, "adamw", "bf16", 30), ("2B", 64, False, "adamw", "bf16", 60), ("2B", 16, False, "adamw8bit", "fp8", 30),
    ("XL", 16, True, "adamw8bit", "fp8", 30), ("XL", 64, True, "adamw", "fp8", 60), ("XL", 64, True, "adamw", "bf16", 30),
    ("XL", 64, True, "adamw", "bf16", 60), ("XL", 64, False, "adamw", "bf16", 60),
)


def smallest_card(total_bytes: int) -> str:
    """The smallest of the common cards (GiB, as sold) the estimate fits, or 'over 24 GB'."""
    return next((f"{gb} GB and up" for gb in CARDS_GB if total_bytes <= gb * GIB), f"over {CARDS_GB[-1]} GB")


def table() -> list[str]:
    """Markdown lines of the table."""
    lines = ["| model | LoRA rank | checkpointing | optimizer | base | clip | estimated | fits (8/12/16/24 GB) |", "|---|---|---|---|---|---|---|---|"]
    for model, rank, checkpointing, optimizer, base, seconds in ROWS:
        adapter = LoraConfig(rank=rank, alpha=2 * rank, target="attention_mlp")
        estimate = estimate_training_vram(MODELS[model], adapter, optimizer, checkpointing, base, seconds)
        lines.append(
            f"| {model} | {rank} | {'on' if checkpointing else 'off'} | {'AdamW 8-bit' if optimizer == 'adamw8bit' else 'AdamW'} "
            f"| {base} | {seconds} s | {estimate.total_bytes / GIB:.1f} GB | {smallest_card(estimate.total_bytes)} |"
        )
    return lines


if __name__ == "__main__":
    print("\n".join(table()))

"""How far an adapter trained on an fp8 base lands from one trained on the bf16 base it was quantised from: the same
random model, clip, seed, draws and steps (LoRA r64 attention+MLP, fp32 compute), then both adapters applied to the
bf16 base and its velocity compared on one fixed noisy input. Also the loss difference step by step.

`python -m benchmarks.fp8_drift [--sizes tiny,small] [--steps 8]` prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

RANK = 64
FRAMES = 750  # a 30 s clip
LEARNING_RATE = 1e-3


def _velocity(decoder: torch.nn.Module, clip: dict[str, torch.Tensor], seed: int = 7) -> torch.Tensor:
    """The decoder's velocity for `clip` at a fixed noise and t = 0.5 (no condition dropped)."""
    from sidestep.training.objective import noisy_latents

    batch = {key: value[None] for key, value in clip.items()}
    noise = torch.randn(batch["target_latents"].shape, generator=torch.Generator().manual_seed(seed))
    t = torch.full((1,), 0.5)
    with torch.no_grad():
        velocity, _ = decoder(
            hidden_states=noisy_latents(batch["target_latents"], noise, t), timestep=t, timestep_r=t,
            attention_mask=batch["attention_mask"], encoder_hidden_states=batch["encoder_hidden_states"],
            encoder_attention_mask=batch["encoder_attention_mask"], context_latents=batch["context_latents"],
        )
    return velocity.float()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def measure(size: str, steps: int, work: Path) -> dict:
    """Train on the bf16 and on the fp8 base, then compare the two adapters on the bf16 base."""
    from sidestep.adapters.config import LoraConfig
    from sidestep.training.config import TrainConfig
    from sidestep.training.loop import RunIdentity, Trainer

    from .models import STORAGE, VARIANT, frozen_model, size_config, synthetic_clip, write_dataset

    config = size_config(size)
    dataset = write_dataset(work / "data", config, FRAMES, clips=1)
    clip = synthetic_clip(config, FRAMES)
    base = _velocity(frozen_model(config, STORAGE["bf16"], torch.device("cpu")).decoder, clip)
    trained = {}
    for storage in ("bf16", "fp8"):
        events: list = []
        settings = TrainConfig(
            output_dir=str(work / storage), epochs=steps, save_every=steps, scheduler="constant", max_latent_frames=None,
            seed=3, precision="fp32", learning_rate=LEARNING_RATE,
        )
        trainer = Trainer(
            frozen_model(config, STORAGE[storage], torch.device("cpu")), dataset,
            LoraConfig(rank=RANK, alpha=2 * RANK, target="attention_mlp"), settings, RunIdentity(VARIANT, "turbo"),
            callback=events.append,
        )
        trainer.run()
        losses = [event.loss for event in events if event.kind == "step"]
        trained[storage] = (trainer, losses, {key: value.clone() for key, value in trainer.adapter.state_dict().items()})
    on_bf16, bf16_losses, bf16_adapter = trained["bf16"]
    _, fp8_losses, fp8_adapter = trained["fp8"]
    with_bf16 = _velocity(on_bf16.decoder, clip)
    on_bf16.adapter.load_state_dict(fp8_adapter)  # the fp8-trained adapter on the bf16 base
    with_fp8 = _velocity(on_bf16.decoder, clip)
    factors = [key for key in bf16_adapter if "lora_B" in key]
    flat = lambda adapter: torch.cat([adapter[key].flatten() for key in factors])
    return {
        "losses": list(zip(fp8_losses, bf16_losses)),
        "loss_rel": max(abs(a - b) / abs(b) for a, b in zip(fp8_losses, bf16_losses)),
        "output_rel": _relative(with_fp8, with_bf16),
        "update_rel": _relative(with_fp8 - base, with_bf16 - base),
        "update_size": _relative(with_bf16, base),
        "lora_b_rel": _relative(flat(fp8_adapter), flat(bf16_adapter)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    print(f"| size | steps (lr {LEARNING_RATE:g}, LoRA r{RANK} α{2 * RANK} attn+MLP, one {FRAMES}-frame clip) | "
          "loss, fp8 vs bf16 base (largest relative difference) | velocity on the bf16 base, fp8- vs bf16-trained adapter "
          "(relative L2) | adapter's change of the velocity, fp8 vs bf16 (relative L2; the change itself) | "
          "LoRA B factors, all layers (relative L2) |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory(prefix="sidestep-fp8-drift-") as work:
            answer = measure(size, args.steps, Path(work))
        first, last = answer["losses"][0], answer["losses"][-1]
        print(f"| {size} | {args.steps} | {answer['loss_rel']:.2%} (step 1 {first[0]:.4f} vs {first[1]:.4f}, step "
              f"{args.steps} {last[0]:.4f} vs {last[1]:.4f}) | {answer['output_rel']:.2e} | {answer['update_rel']:.2%} "
              f"({answer['update_size']:.2e} of the base's velocity) | {answer['lora_b_rel']:.2%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

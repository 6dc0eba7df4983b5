"""`AceStepConditionGenerationModel`: the DiT decoder plus everything that turns text and audio into its condition."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from ..atomic import save_safetensors_atomic, write_text_atomic
from ..errors import SideStepError
from .config import AceStepConfig
from .dit import AceStepDiTModel
from .encoder import ConditionEncoder
from .layers import FP8, SCALE_SUFFIX, Linear, quantize_fp8
from .tokenizer import AudioDetokenizer, AudioTokenizer
from .weights import CONFIG_MISMATCH_FIX, WeightIndex, check_names_and_shapes, folder_index

PARTS = ("decoder", "encoder", "tokenizer", "detokenizer", "null_condition_emb")
TRAINING_PARTS = ("decoder", "null_condition_emb")


class AceStepConditionGenerationModel(nn.Module):
    """ACE-Step 1.5 with the official module tree and state-dict names.

    `parts` keeps only some sub-modules (e.g. `TRAINING_PARTS` to train from an encoded dataset); the others are None.
    """

    def __init__(self, config: AceStepConfig, parts: Iterable[str] = PARTS) -> None:
        super().__init__()
        parts = set(parts)
        unknown = parts - set(PARTS)
        if unknown:
            raise ValueError(f"Unknown model parts {sorted(unknown)}; choose from {PARTS}.")
        self.config = config
        condition = config.condition_config
        is_xl = condition is not config
        self.decoder = AceStepDiTModel(config) if "decoder" in parts else None
        self.encoder = ConditionEncoder(condition, prepend_timbre_token=is_xl) if "encoder" in parts else None
        self.tokenizer = AudioTokenizer(condition) if "tokenizer" in parts else None
        self.detokenizer = AudioDetokenizer(condition) if "detokenizer" in parts else None
        self.null_condition_emb = (
            nn.Parameter(torch.zeros(1, 1, condition.hidden_size)) if "null_condition_emb" in parts else None
        )

    # ------------------------------------------------------------------ building and loading

    def init_random_weights(self, seed: int = 0) -> "AceStepConditionGenerationModel":
        """Fill every weight with seeded, non-degenerate random values (for tests, smoke runs and benchmarks)."""
        generator = torch.Generator().manual_seed(seed)
        for name, param in self.named_parameters():
            shape, fan_in = param.shape, max(1, param[0].numel()) if param.dim() > 1 else param.numel()
            if name.endswith("norm.weight") or "norm." in name and name.endswith(".weight") and param.dim() == 1:
                values = 1 + 0.1 * torch.randn(shape, generator=generator)
            elif name.endswith(".bias"):
                values = 0.05 * torch.randn(shape, generator=generator)
            elif name.endswith("scale_shift_table"):
                values = torch.randn(shape, generator=generator) / math.sqrt(shape[-1])
            elif name.endswith(("special_token", "special_tokens")):
                values = 0.25 * torch.randn(shape, generator=generator)
            elif name == "null_condition_emb":
                values = torch.randn(shape, generator=generator)
            else:
                values = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
            with torch.no_grad():
                param.copy_(values.to(param.dtype))
        return self

    @classmethod
    def on_meta_device(cls, config: AceStepConfig, parts: Iterable[str] = PARTS) -> "AceStepConditionGenerationModel":
        """Build without allocating weights (for key/shape checks and memory-light loading)."""
        with torch.device("meta"):
            return cls(config, parts)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype | None = torch.float32,
        device: torch.device | str = "cpu",
        parts: Iterable[str] = PARTS,
        held: dict[str, torch.Tensor] | None = None,
    ) -> "AceStepConditionGenerationModel":
        """Load an official model folder (config.json + model.safetensors or shards); never runs code from it."""
        folder = Path(path)
        if not folder.is_dir():
            raise SideStepError(f"Model folder {folder} does not exist. Pass a folder such as checkpoints/acestep-v15-turbo.")
        return cls.from_weights(AceStepConfig.from_json(folder), folder_index(folder), str(folder), dtype, device, parts, held=held)

    @classmethod
    def from_weights(
        cls,
        config: AceStepConfig,
        index: WeightIndex,
        source: str,
        dtype: torch.dtype | None = torch.float32,
        device: torch.device | str = "cpu",
        parts: Iterable[str] = PARTS,
        fix: str = CONFIG_MISMATCH_FIX,
        held: dict[str, torch.Tensor] | None = None,
    ) -> "AceStepConditionGenerationModel":
        """Build `config` and fill the wanted `parts` from indexed weights (cast to `dtype`; None keeps each tensor's own),
        after checking every name and shape; tensors
        `held` in memory already (official names, in `dtype` on `device`) are taken as they are instead of read again."""
        model = cls.on_meta_device(config, parts)
        full_expected = {name: tuple(p.shape) for name, p in cls.on_meta_device(config).state_dict().items()}
        check_names_and_shapes(full_expected, index.shapes(), source, fix)
        held = held or {}
        names = [name for name in model.state_dict() if name not in held]
        fp8 = set(model.decoder_linear_weights()) if dtype == FP8 else set()
        read = index.read(names, None if fp8 else dtype, device, fp8)
        return model.assign_weights({**read, **held})

    def decoder_linear_weights(self) -> list[str]:
        """The names of the DiT's Linear weights: what an fp8 base stores in e4m3 (norms, biases, tables stay)."""
        if self.decoder is None:
            return []
        return [f"decoder.{name}.weight" for name, module in self.decoder.named_modules() if isinstance(module, Linear)]

    def store_decoder_fp8(self) -> "AceStepConditionGenerationModel":
        """Re-store the DiT's Linear weights in e4m3 with their scales, one layer at a time (loading does it as it reads)."""
        modules = dict(self.named_modules())
        for name in self.decoder_linear_weights():
            module = modules[name.removesuffix(".weight")]
            weight, module.weight_scale = quantize_fp8(module.weight.detach())
            module.weight = nn.Parameter(weight, requires_grad=False)
        return self

    def frozen_weights(self) -> dict[str, torch.Tensor]:
        """Every weight by official name plus the scales of fp8-stored Linear weights: what `assign_weights` takes."""
        scales = {
            name + SCALE_SUFFIX: module.weight_scale
            for name, module in self.named_modules()
            if isinstance(module, Linear) and module.weight_scale is not None
        }
        return {**self.state_dict(), **scales}

    def assign_weights(self, tensors: dict[str, torch.Tensor]) -> "AceStepConditionGenerationModel":
        """Take `tensors` (official names, every one this model holds; fp8 scales for layers it has) as its weights
        without copying; frozen, eval."""
        scales = {name: tensors[name] for name in tensors if name.endswith(SCALE_SUFFIX)}
        self.load_state_dict({name: t for name, t in tensors.items() if name not in scales}, strict=True, assign=True)
        modules = dict(self.named_modules())
        for name, scale in scales.items():
            if name.removesuffix(SCALE_SUFFIX) in modules:
                modules[name.removesuffix(SCALE_SUFFIX)].weight_scale = scale
        return self.eval().requires_grad_(False)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write config.json and model.safetensors (official names) atomically."""
        folder = Path(folder)
        write_text_atomic(folder / "config.json", json.dumps(self.config.to_dict(), indent=2) + "\n")
        save_safetensors_atomic(self.state_dict(), folder / "model.safetensors", metadata={"format": "pt"})

    # ------------------------------------------------------------------ conditioning

    def tokenize(
        self, latents: torch.Tensor, silence_latent: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """25 Hz latents [B, T, 64] → 5 Hz quantised vectors and codes, padding T with silence frames."""
        window = self.config.pool_window_size
        remainder = latents.shape[1] % window
        if remainder:
            pad = silence_latent[:1, : window - remainder].to(latents.dtype).expand(latents.shape[0], -1, -1)
            latents = torch.cat([latents, pad], dim=1)
        return self.tokenizer(latents)

    @torch.no_grad()
    def prepare_condition(
        self,
        text_hidden_states: torch.Tensor,
        text_attention_mask: torch.Tensor,
        lyric_hidden_states: torch.Tensor,
        lyric_attention_mask: torch.Tensor,
        refer_audio_acoustic_hidden_states_packed: torch.Tensor,
        refer_audio_order_mask: torch.Tensor,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        silence_latent: torch.Tensor,
        src_latents: torch.Tensor,
        chunk_masks: torch.Tensor,
        is_covers: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return `(encoder_hidden_states, encoder_attention_mask, context_latents)` as the official model does.

        Cover rows (`is_covers > 0`) replace their source latents by tokenised-then-detokenised `hidden_states`.
        `attention_mask` is accepted for API parity and, as in the official code, not used.
        """
        encoder_hidden_states, encoder_attention_mask = self.encoder(
            text_hidden_states,
            text_attention_mask,
            lyric_hidden_states,
            lyric_attention_mask,
            refer_audio_acoustic_hidden_states_packed,
            refer_audio_order_mask,
        )
        if bool((is_covers > 0).any()):
            quantized, _ = self.tokenize(hidden_states, silence_latent)
            hints = self.detokenizer(quantized)[:, : src_latents.shape[1], :]
            src_latents = torch.where(is_covers[:, None, None] > 0, hints, src_latents)
        context_latents = torch.cat([src_latents, chunk_masks.to(hidden_states.dtype)], dim=-1)
        return encoder_hidden_states, encoder_attention_mask, context_latents

    def null_condition(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """The unconditional encoder states: `null_condition_emb` at every position."""
        return self.null_condition_emb.to(encoder_hidden_states.dtype).expand_as(encoder_hidden_states)


def silence_context(silence_latent: torch.Tensor, frames: int, batch: int = 1) -> torch.Tensor:
    """Text-to-music context: the first `frames` silence frames with an all-ones chunk mask → [B, frames, 128]."""
    if silence_latent.shape[1] < frames:
        repeats = -(-frames // silence_latent.shape[1])
        silence_latent = silence_latent.repeat(1, repeats, 1)
    src = silence_latent[:1, :frames].expand(batch, -1, -1)
    return torch.cat([src, torch.ones_like(src)], dim=-1)

"""ACE-Step 1.5 model configuration, read from an official `config.json`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError


@dataclass
class AceStepConfig:
    """Dimensions and training facts of one ACE-Step 1.5 model; defaults are the 2B turbo."""

    hidden_size: int = 2048
    intermediate_size: int = 6144
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    use_sliding_window: bool = True
    sliding_window: int | None = 128
    layer_types: list[str] | None = None
    attention_bias: bool = False
    hidden_act: str = "silu"
    text_hidden_dim: int = 1024
    timbre_hidden_dim: int = 64
    audio_acoustic_hidden_dim: int = 64
    in_channels: int = 192
    patch_size: int = 2
    pool_window_size: int = 5
    fsq_dim: int = 2048
    fsq_input_levels: list[int] = field(default_factory=lambda: [8, 8, 8, 5, 5, 5])
    fsq_input_num_quantizers: int = 1
    num_lyric_encoder_hidden_layers: int = 8
    num_timbre_encoder_hidden_layers: int = 4
    num_attention_pooler_hidden_layers: int = 2
    timbre_fix_frame: int = 750
    timestep_mu: float = -0.4
    timestep_sigma: float = 1.0
    is_turbo: bool | None = None
    model_version: str | None = None
    # XL checkpoints run the condition encoder, tokenizer and detokenizer narrower than the DiT.
    encoder_hidden_size: int | None = None
    encoder_intermediate_size: int | None = None
    encoder_num_attention_heads: int | None = None
    encoder_num_key_value_heads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.layer_types is None:
            self.layer_types = [
                "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(self.num_hidden_layers)
            ]
        if not self.use_sliding_window:
            self.sliding_window = None

    @property
    def condition_config(self) -> "AceStepConfig":
        """The config the encoder/tokenizer/detokenizer are built from (differs from the DiT's only for XL)."""
        if self.encoder_hidden_size in (None, self.hidden_size):
            return self
        return dataclasses.replace(
            self,
            hidden_size=self.encoder_hidden_size,
            intermediate_size=self.encoder_intermediate_size or self.intermediate_size,
            num_attention_heads=self.encoder_num_attention_heads or self.num_attention_heads,
            num_key_value_heads=self.encoder_num_key_value_heads or self.num_key_value_heads,
            encoder_hidden_size=None,
        )

    def is_sliding(self, layer_index: int) -> bool:
        """Whether layer `layer_index` of any stack uses sliding-window attention."""
        return self.sliding_window is not None and self.layer_types[layer_index] == "sliding_attention"

    def to_dict(self) -> dict[str, Any]:
        """A config.json-style dictionary (unknown fields read from disk are kept)."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra" and v is not None}
        data.update(self.extra)
        data.setdefault("architectures", ["AceStepConditionGenerationModel"])
        data.setdefault("model_type", "acestep")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "AceStepConfig":
        """Build from a config.json dictionary; refuse configs that are not ACE-Step 1.5."""
        architectures = data.get("architectures") or []
        if data.get("model_type") != "acestep" and "AceStepConditionGenerationModel" not in architectures:
            raise ConfigError(
                f"{source} is not an ACE-Step 1.5 model config (model_type={data.get('model_type')!r}, "
                f"architectures={architectures!r}). Point at a folder such as 'acestep-v15-turbo' that holds "
                "the DiT's config.json and model.safetensors."
            )
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        try:
            config = cls(**known, extra=extra)
        except TypeError as exc:
            raise ConfigError(f"{source} has invalid ACE-Step fields: {exc}") from exc
        if config.num_attention_heads % config.num_key_value_heads:
            raise ConfigError(f"{source}: num_attention_heads must be a multiple of num_key_value_heads.")
        if len(config.layer_types) < config.num_hidden_layers:
            raise ConfigError(f"{source}: layer_types lists fewer layers than num_hidden_layers.")
        return config

    @classmethod
    def from_json(cls, path: str | Path) -> "AceStepConfig":
        """Read a config.json file (or the config.json inside a folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"No config.json at {path}. A model folder needs config.json and model.safetensors.") from exc
        except (OSError, ValueError) as exc:  # ValueError: bad JSON or bytes that are not UTF-8
            raise ConfigError(f"Cannot read {path}: {exc}. Re-download the model's config.json.") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path} does not hold a JSON object; it is not a model config.")
        return cls.from_dict(data, source=str(path))


# Tensors whose shapes reveal the dimensions of a config-less (ComfyUI) ACE-Step 1.5 weight file.
_DECODER_LAYER = "decoder.layers.0."
_LYRIC_LAYER = "encoder.lyric_encoder.layers.0."
SHAPE_KEYS = (
    _DECODER_LAYER + "self_attn_norm.weight",
    _DECODER_LAYER + "mlp.gate_proj.weight",
    _DECODER_LAYER + "self_attn.q_norm.weight",
    _DECODER_LAYER + "self_attn.q_proj.weight",
    _DECODER_LAYER + "self_attn.k_proj.weight",
    _LYRIC_LAYER + "input_layernorm.weight",
    _LYRIC_LAYER + "mlp.gate_proj.weight",
    _LYRIC_LAYER + "self_attn.q_proj.weight",
    _LYRIC_LAYER + "self_attn.k_proj.weight",
    "encoder.text_projector.weight",
    "encoder.timbre_encoder.embed_tokens.weight",
    "tokenizer.audio_acoustic_proj.weight",
    "tokenizer.quantizer.project_in.weight",
    "decoder.proj_in.1.weight",
    "detokenizer.special_tokens",
)


def _count_layers(names: list[str], stack: str) -> int:
    """How many numbered layers `<stack>.N.` the names hold."""
    indices = {name[len(stack) + 1 :].split(".", 1)[0] for name in names if name.startswith(stack + ".")}
    return len([index for index in indices if index.isdigit()])


def config_from_shapes(
    shapes: dict[str, tuple[int, ...]], source: str, is_turbo: bool | None = None, model_version: str | None = None
) -> AceStepConfig:
    """Infer the config of an ACE-Step 1.5 state dict (official names) from its tensor shapes.

    Dimensions come from the shapes; what shapes cannot tell (sliding window, RoPE base, norm epsilon, FSQ levels,
    timestep schedule) keeps the official configs' values, which every published 2B and XL model shares.
    """
    missing = [key for key in SHAPE_KEYS if key not in shapes]
    if missing:
        raise ConfigError(
            f"{source} is not an ACE-Step 1.5 model: it lacks {', '.join(missing[:3])}"
            f"{' and more' if len(missing) > 3 else ''}. Use acestep_v1.5_*.safetensors from ComfyUI's "
            "diffusion_models folder (or an all-in-one ACE-Step 1.5 checkpoint)."
        )
    head_dim = shapes[_DECODER_LAYER + "self_attn.q_norm.weight"][0]
    hidden = shapes[_DECODER_LAYER + "self_attn_norm.weight"][0]
    encoder_hidden = shapes[_LYRIC_LAYER + "input_layernorm.weight"][0]
    levels = shapes["tokenizer.quantizer.project_in.weight"][0]
    default_levels = AceStepConfig().fsq_input_levels
    if levels != len(default_levels):
        raise ConfigError(f"{source}: an FSQ with {levels} levels is not ACE-Step 1.5's ({len(default_levels)}).")
    names = list(shapes)
    proj_in = shapes["decoder.proj_in.1.weight"]
    narrower_encoder = encoder_hidden != hidden
    return AceStepConfig(
        hidden_size=hidden,
        intermediate_size=shapes[_DECODER_LAYER + "mlp.gate_proj.weight"][0],
        num_hidden_layers=_count_layers(names, "decoder.layers"),
        num_attention_heads=shapes[_DECODER_LAYER + "self_attn.q_proj.weight"][0] // head_dim,
        num_key_value_heads=shapes[_DECODER_LAYER + "self_attn.k_proj.weight"][0] // head_dim,
        head_dim=head_dim,
        attention_bias=_DECODER_LAYER + "self_attn.q_proj.bias" in shapes,
        text_hidden_dim=shapes["encoder.text_projector.weight"][1],
        timbre_hidden_dim=shapes["encoder.timbre_encoder.embed_tokens.weight"][1],
        audio_acoustic_hidden_dim=shapes["tokenizer.audio_acoustic_proj.weight"][1],
        in_channels=proj_in[1],
        patch_size=proj_in[2],
        pool_window_size=shapes["detokenizer.special_tokens"][1],
        fsq_dim=shapes["tokenizer.quantizer.project_in.weight"][1],
        num_lyric_encoder_hidden_layers=_count_layers(names, "encoder.lyric_encoder.layers"),
        num_timbre_encoder_hidden_layers=_count_layers(names, "encoder.timbre_encoder.layers"),
        num_attention_pooler_hidden_layers=_count_layers(names, "tokenizer.attention_pooler.layers"),
        is_turbo=is_turbo,
        model_version=model_version,
        encoder_hidden_size=encoder_hidden if narrower_encoder else None,
        encoder_intermediate_size=shapes[_LYRIC_LAYER + "mlp.gate_proj.weight"][0] if narrower_encoder else None,
        encoder_num_attention_heads=shapes[_LYRIC_LAYER + "self_attn.q_proj.weight"][0] // head_dim if narrower_encoder else None,
        encoder_num_key_value_heads=shapes[_LYRIC_LAYER + "self_attn.k_proj.weight"][0] // head_dim if narrower_encoder else None,
    )

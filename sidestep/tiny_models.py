"""Tiny but complete ACE-Step 1.5 checkpoint trees with random weights, for tests, smoke runs and demos.

Everything is built by the same code paths that read the real files: the DiT through our model package's
`save_pretrained`, the VAE as a diffusers `AutoencoderOobleck` (real 48 kHz / 1920-sample geometry, 64 latent
channels, narrow layers), and the text encoder as a one-layer Qwen3 with a real byte-level BPE tokenizer trained
here on a small built-in corpus (Qwen's pre-tokenizer, special tokens and trailing `<|endoftext|>`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderOobleck
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from .atomic import save_safetensors_atomic, staging_folder, torch_save_atomic
from .errors import CheckpointError
from .load_progress import quiet_progress
from .memory import trim_freed_memory
from .model import AceStepConditionGenerationModel, AceStepConfig
from .text import CAPTION_TEMPLATE, DEFAULT_INSTRUCTION, LYRICS_TEMPLATE
from .variants import SAMPLE_RATE
from .vae import LATENT_CHANNELS, quiet_weight_norm

TURBO_FOLDER = "acestep-v15-turbo"
BASE_FOLDER = "acestep-v15-base"
CUSTOM_FOLDER = "my-custom-finetune"
VAE_FOLDER = "vae"
TEXT_ENCODER_FOLDER = "Qwen3-Embedding-0.6B"
SILENCE_FILE = "silence_latent.pt"

TINY_TEXT_HIDDEN = 32
TINY_SILENCE_FRAMES = 1000
TINY_VOCAB_SIZE = 1024
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

_VARIANTS = {"turbo": (True, "turbo"), "base": (False, "base"), "sft": (False, "sft")}

_CAPTIONS = (
    "upbeat synthwave with airy female vocals, driving bassline",
    "calm ambient piano, soft pads, slow tempo",
    "a jazzy lo-fi beat with vinyl crackle and mellow keys",
    "lo-fi hip hop, jazzy, chill",
    "energetic rock anthem with distorted guitars and powerful male vocals",
    "mandopop ballad, warm male vocal, strings and piano",
    "dark techno, pounding kick drum, hypnotic synth arpeggio",
    "acoustic folk song with fingerpicked guitar and harmonica",
    "orchestral cinematic score, epic brass, choir",
    "funky disco groove, slap bass, bright horns",
)
_LYRICS = (
    "[Verse]\nNeon lights on the avenue\nWe keep on moving through\n[Chorus]\nWe run all night\nUntil morning",
    "[Verse 1]\nWalking down the empty street\nEchoes of my heartbeat\n[Bridge]\nHold on, hold on\n[Outro]",
    "[Intro]\n[Instrumental]\n[Chorus]\nSing it loud, sing it proud\nLa la la, oh oh oh",
    "[Verse]\n月光洒在窗前\n思念飘向远方\n[Chorus]\n我们一起唱",
)
_METAS = (
    "- bpm: 120\n- timesignature: 4\n- keyscale: C Major\n- duration: 30 seconds\n",
    "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 187 seconds\n",
)
_WORDS = (
    "F# minor, A minor, E flat major, 3/4, 6/8, 92 bpm, 85 bpm, 140 bpm",
    "en zh ja ko fr de es it pt ru unknown",
)


def tiny_model_config(variant: str) -> AceStepConfig:
    """A 2-layer, 64-wide ACE-Step 1.5 config ('turbo', 'base' or 'sft') whose text width matches the tiny Qwen3."""
    if variant not in _VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; choose one of {sorted(_VARIANTS)}.")
    is_turbo, model_version = _VARIANTS[variant]
    return AceStepConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=128,
        fsq_dim=64,
        text_hidden_dim=TINY_TEXT_HIDDEN,
        timbre_hidden_dim=64,
        audio_acoustic_hidden_dim=64,
        num_lyric_encoder_hidden_layers=2,
        num_timbre_encoder_hidden_layers=2,
        num_attention_pooler_hidden_layers=2,
        timestep_mu=-0.4,
        timestep_sigma=1.0,
        is_turbo=is_turbo,
        model_version=model_version,
    )


def _build_folder(target: Path, fill: Callable[[Path], None]) -> Path:
    """Run `fill(temporary_folder)` beside `target`, then move the finished folder into place."""
    if target.exists():
        raise CheckpointError(f"{target} already exists; build tiny checkpoints into an empty folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = staging_folder(target)
    try:
        with quiet_progress():  # transformers' "Writing model shards" bar would flash for a file written at once
            fill(temporary)
        os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return target


def _seeded(seed: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Build a module whose default initialisation draws from `seed`, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def tiny_silence_latent(seed: int = 0) -> torch.Tensor:
    """A seeded random [1, 64, 1000] tensor in the official on-disk silence-latent layout (one for every folder)."""
    generator = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(1, LATENT_CHANNELS, TINY_SILENCE_FRAMES, generator=generator)


def tiny_dit(config: AceStepConfig, seed: int = 0) -> AceStepConditionGenerationModel:
    """A DiT model of `config` with seeded random weights."""
    return AceStepConditionGenerationModel(config).init_random_weights(seed)


def write_tiny_dit(folder: Path, config: AceStepConfig, seed: int = 0) -> Path:
    """Write config.json, model.safetensors and silence_latent.pt of a randomly initialised DiT model folder."""

    def fill(temporary: Path) -> None:
        model = tiny_dit(config, seed)
        model.save_pretrained(temporary)
        torch_save_atomic(tiny_silence_latent(), temporary / SILENCE_FILE)

    return _build_folder(Path(folder), fill)


def _oobleck(channel_multiples: list[int], decoder_channels: int) -> AutoencoderOobleck:
    """An AutoencoderOobleck with ACE-Step's 48 kHz, 1920-hop, 64-channel geometry and the given widths."""
    with quiet_weight_norm():
        return AutoencoderOobleck(
            encoder_hidden_size=2 * LATENT_CHANNELS,
            downsampling_ratios=[2, 4, 4, 6, 10],
            channel_multiples=channel_multiples,
            decoder_channels=decoder_channels,
            decoder_input_channels=LATENT_CHANNELS,
            audio_channels=2,
            sampling_rate=SAMPLE_RATE,
        )


def tiny_vae(seed: int = 0) -> AutoencoderOobleck:
    """A narrow AutoencoderOobleck with ACE-Step's 48 kHz, 1920-hop, 64-channel geometry and seeded weights."""

    vae = _seeded(seed, lambda: _oobleck(channel_multiples=[1, 1, 1, 1, 1], decoder_channels=8))
    _calibrate_latent_scale(vae, seed)
    return vae


def write_tiny_vae(folder: Path, seed: int = 0) -> Path:
    """Write the tiny VAE as a diffusers folder (config.json + weights)."""
    return _build_folder(Path(folder), lambda temporary: tiny_vae(seed).save_pretrained(temporary))


def _calibrate_latent_scale(vae: AutoencoderOobleck, seed: int) -> None:
    """Scale the encoder's output so latents of music-level audio have unit spread, as the real VAE's roughly do."""
    generator = torch.Generator().manual_seed(seed)
    probe = 0.3 * torch.randn(1, 2, SAMPLE_RATE // 2, generator=generator)
    with torch.no_grad():
        spread = float(vae.encode(probe).latent_dist.mean.std())
        conv = vae.encoder.conv2
        conv.weight_g[:LATENT_CHANNELS] /= spread
        conv.bias[:LATENT_CHANNELS] /= spread


def _corpus() -> list[str]:
    """Training text for the tiny tokenizer: captions, lyrics and both prompt templates filled in."""
    captions = [
        CAPTION_TEMPLATE.format(instruction=DEFAULT_INSTRUCTION, caption=caption, metas=metas)
        for caption in _CAPTIONS
        for metas in _METAS
    ]
    lyrics = [LYRICS_TEMPLATE.format(language="en", lyrics=text) for text in _LYRICS]
    return captions + lyrics + list(_CAPTIONS + _LYRICS + _WORDS)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer in Qwen's layout (pad `<|endoftext|>`, appended after every text), trained here."""
    backend = Tokenizer(BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer)
    end = backend.token_to_id("<|endoftext|>")
    backend.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", pair="$A <|endoftext|> $B:1 <|endoftext|>:1", special_tokens=[("<|endoftext|>", end)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def tiny_text_encoder(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Qwen3Model:
    """A one-layer, 32-wide Qwen3 model with seeded weights and one embedding per token of `tokenizer`."""
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=TINY_TEXT_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=4096,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.pad_token_id,
    )
    return _seeded(seed, lambda: Qwen3Model(config))


def write_tiny_text_encoder(folder: Path, seed: int = 0) -> Path:
    """Write the tiny Qwen3 with its real tokenizer, loadable by AutoModel/AutoTokenizer."""

    def fill(temporary: Path) -> None:
        tokenizer = tiny_tokenizer()
        tiny_text_encoder(tokenizer, seed).save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)

    return _build_folder(Path(folder), fill)


def make_tiny_checkpoints(root: Path, seed: int = 0) -> Path:
    """Write a complete tiny checkpoint root (turbo, base, a custom turbo fine-tune, vae, text encoder, silence)."""
    root = Path(root)
    names = (TURBO_FOLDER, BASE_FOLDER, CUSTOM_FOLDER, VAE_FOLDER, TEXT_ENCODER_FOLDER, SILENCE_FILE)
    taken = [name for name in names if (root / name).exists()]
    if taken:
        raise CheckpointError(f"{root} already holds {', '.join(taken)}; build tiny checkpoints into an empty folder.")
    custom = dataclasses.replace(tiny_model_config("turbo"), model_version=None)
    write_tiny_dit(root / TURBO_FOLDER, tiny_model_config("turbo"), seed)
    write_tiny_dit(root / BASE_FOLDER, tiny_model_config("base"), seed + 1)
    write_tiny_dit(root / CUSTOM_FOLDER, custom, seed + 2)
    write_tiny_vae(root / VAE_FOLDER, seed)
    write_tiny_text_encoder(root / TEXT_ENCODER_FOLDER, seed)
    torch_save_atomic(tiny_silence_latent(), root / SILENCE_FILE)
    return root


COMFY_DIT_FILES = {"turbo": "acestep_v1.5_turbo.safetensors", "base": "acestep_v1.5_base.safetensors"}
COMFY_CUSTOM_FILE = "my_finetune.safetensors"
COMFY_TEXT_ENCODER_FILE = "qwen_0.6b_ace15.safetensors"
COMFY_VAE_FILE = "ace_1.5_vae.safetensors"
COMFY_AIO_FILE = "ace_step_1.5_turbo_aio.safetensors"


def make_tiny_comfy_install(install: Path, seed: int = 0) -> Path:
    """Write ACE-Step 1.5 as ComfyUI users have it, with the same tiny weights as `make_tiny_checkpoints(seed=seed)`.

    `install/models/` gets diffusion_models/acestep_v1.5_{turbo,base}.safetensors, a custom file whose base nothing
    tells, text_encoders/qwen_0.6b_ace15.safetensors, vae/ace_1.5_vae.safetensors and an all-in-one
    checkpoints/ace_step_1.5_turbo_aio.safetensors; `install/comfy/text_encoders/qwen25_tokenizer/` gets the tiny
    tokenizer in the three-file form ComfyUI ships. Returns the models folder.
    """
    from .comfy_formats import (
        AIO_DIT_PREFIX,
        AIO_TEXT_ENCODER_PREFIX,
        AIO_VAE_PREFIX,
        TEXT_ENCODER_PREFIX,
        comfy_text_encoder_state_dict,
        comfy_vae_state_dict,
        write_comfy_tokenizer,
    )
    from .comfy_models import TOKENIZER_IN_COMFYUI

    install = Path(install)
    models = install / "models"
    if models.exists():
        raise CheckpointError(f"{models} already exists; build the tiny ComfyUI files into an empty folder.")
    tokenizer = tiny_tokenizer()
    write_comfy_tokenizer(tokenizer, install / TOKENIZER_IN_COMFYUI)
    turbo = tiny_dit(tiny_model_config("turbo"), seed).state_dict()
    text = comfy_text_encoder_state_dict(tiny_text_encoder(tokenizer, seed))
    vae = comfy_vae_state_dict(tiny_vae(seed))
    custom = tiny_dit(dataclasses.replace(tiny_model_config("turbo"), model_version=None), seed + 2).state_dict()
    files = {
        models / "diffusion_models" / COMFY_DIT_FILES["turbo"]: turbo,
        models / "diffusion_models" / COMFY_DIT_FILES["base"]: tiny_dit(tiny_model_config("base"), seed + 1).state_dict(),
        models / "diffusion_models" / COMFY_CUSTOM_FILE: custom,
        models / "text_encoders" / COMFY_TEXT_ENCODER_FILE: text,
        models / "vae" / COMFY_VAE_FILE: vae,
        models / "checkpoints" / COMFY_AIO_FILE: {
            **{AIO_DIT_PREFIX + name: tensor for name, tensor in turbo.items()},
            **{AIO_VAE_PREFIX + name: tensor for name, tensor in vae.items()},
            **{AIO_TEXT_ENCODER_PREFIX + name.removeprefix(TEXT_ENCODER_PREFIX): tensor for name, tensor in text.items()},
        },
    }
    for path, tensors in files.items():
        save_safetensors_atomic(tensors, path)
    return models


def comfyui_loadable_config(variant: str) -> AceStepConfig:
    """The smallest ACE-Step 1.5 config that ComfyUI's own loader and forward pass accept.

    ComfyUI reads only some sizes from the weights and fixes the rest (head_dim 128, 8 KV heads, 1024-wide text
    features, 8 lyric and 4 timbre layers, a 2048-wide condition encoder whose pooler and detokenizer have 16 heads and
    3 x 2048 intermediate): so the condition encoder is full width while the DiT itself stays small (256 wide, 2 layers,
    8 heads).
    """
    return dataclasses.replace(
        tiny_model_config(variant),
        hidden_size=256,
        intermediate_size=512,
        num_attention_heads=8,
        num_key_value_heads=8,
        head_dim=128,
        text_hidden_dim=1024,
        fsq_dim=2048,
        num_lyric_encoder_hidden_layers=8,
        num_timbre_encoder_hidden_layers=4,
        num_attention_pooler_hidden_layers=2,
        encoder_hidden_size=2048,
        encoder_intermediate_size=6144,
        encoder_num_attention_heads=16,
        encoder_num_key_value_heads=8,
    )


def real_size_text_encoder(seed: int = 0) -> Qwen3Model:
    """Qwen3-Embedding-0.6B's architecture with seeded random weights (what ComfyUI's ACE-Step CLIP loader builds)."""
    from .comfy_formats import QWEN3_EMBEDDING_CONSTANTS

    config = Qwen3Config(
        vocab_size=151_669,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        **QWEN3_EMBEDDING_CONSTANTS,
    )
    return _seeded(seed, lambda: Qwen3Model(config))


def real_size_vae(seed: int = 0) -> AutoencoderOobleck:
    """ACE-Step 1.5's VAE architecture (the geometry ComfyUI's AudioOobleckVAE has) with seeded random weights."""
    return _seeded(seed, lambda: _oobleck(channel_multiples=[1, 2, 4, 8, 16], decoder_channels=128))


def make_comfyui_loadable_models(models: Path, seed: int = 0) -> Path:
    """Write random-weight ACE-Step 1.5 files that ComfyUI's own loaders and samplers run, in bf16 like Comfy-Org's:
    diffusion_models/acestep_v1.5_turbo.safetensors (`comfyui_loadable_config`), a real-size
    text_encoders/qwen_0.6b_ace15.safetensors and vae/ace_1.5_vae.safetensors. Returns `models`."""
    from .comfy_formats import comfy_text_encoder_state_dict, comfy_vae_state_dict

    models = Path(models)
    dit = tiny_dit(comfyui_loadable_config("turbo"), seed).to(torch.bfloat16)
    save_safetensors_atomic(dit.state_dict(), models / "diffusion_models" / COMFY_DIT_FILES["turbo"])
    del dit
    text = real_size_text_encoder(seed).to(torch.bfloat16)
    save_safetensors_atomic(comfy_text_encoder_state_dict(text), models / "text_encoders" / COMFY_TEXT_ENCODER_FILE)
    del text
    save_safetensors_atomic(comfy_vae_state_dict(real_size_vae(seed)), models / "vae" / COMFY_VAE_FILE)
    trim_freed_memory()  # the real-size weights just written stay in glibc's heap otherwise
    return models


LM_FOLDER = "acestep-5Hz-lm-0.6B"
COMFY_LM_FILE = "qwen_1.7b_ace15.safetensors"
COMFY_LM_VOCAB = 217204


def _tiny_lm(vocab_size: int, seed: int, hidden: int = TINY_TEXT_HIDDEN, layers: int = 1):
    """A small Qwen3 causal LM with tied embeddings, the 5 Hz LM's architecture at toy size."""
    from transformers import Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=40960,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )
    return _seeded(seed, lambda: Qwen3ForCausalLM(config))


def write_tiny_lm(folder: Path, seed: int = 0, hidden: int = TINY_TEXT_HIDDEN, layers: int = 1) -> Path:
    """Write an official-layout 5 Hz LM folder: a tiny Qwen3 causal LM whose tokenizer holds the 64000 audio codes."""
    from .labeling.lm import with_audio_codes

    def fill(temporary: Path) -> None:
        tokenizer = with_audio_codes(tiny_tokenizer())
        _tiny_lm(len(tokenizer), seed, hidden, layers).save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)

    return _build_folder(Path(folder), fill)


def write_tiny_comfy_lm(path: Path, vocab_size: int, seed: int = 0) -> Path:
    """Write a ComfyUI-layout LM file (`model.` keys, tied lm_head left out, no tokenizer) with `vocab_size` rows."""
    from .atomic import save_safetensors_atomic

    state = _tiny_lm(vocab_size, seed).state_dict()
    save_safetensors_atomic({name: value for name, value in state.items() if name.startswith("model.")}, Path(path))
    return Path(path)


def write_tiny_text_tokenizer(folder: Path) -> Path:
    """Write the tiny Qwen-layout tokenizer alone (no audio codes), standing in for ComfyUI's Qwen tokenizer files."""
    return _build_folder(Path(folder), lambda temporary: tiny_tokenizer().save_pretrained(temporary))

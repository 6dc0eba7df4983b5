"""ComfyUI's ACE-Step 1.5 file layouts converted to ours, checked against ComfyUI 0.20.1's own code where it runs."""

from __future__ import annotations

import fnmatch
import json
import re
import sys
import tomllib
import unicodedata
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
import regex
import torch
from diffusers import AutoencoderOobleck
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3Model
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from sidestep.comfy_formats import (
    AIO_DIT_PREFIX,
    AIO_TEXT_ENCODER_PREFIX,
    AIO_VAE_PREFIX,
    COMFY_SILENCE_FRAMES,
    END_OF_TEXT,
    comfy_silence_latent,
    comfy_text_encoder_state_dict,
    comfy_vae_state_dict,
    load_comfy_tokenizer,
    load_text_encoder_file,
    load_vae_file,
    read_prefixed,
    text_encoder_from_state_dict,
    vae_from_state_dict,
    write_comfy_tokenizer,
)
from sidestep.errors import CheckpointError
from sidestep.tiny_models import tiny_tokenizer, write_tiny_text_encoder, write_tiny_vae
from sidestep.text import TOKEN_LIMITS, TextEncoder
from sidestep.vae import decode_latents, encode_waveform, load_vae
from tests.comfyui.host import ComfyUINotInstalled, find_comfyui


def _comfyui_source() -> Path | None:
    """The ComfyUI source the tests run (0.20.1 by default), or None when none is installed."""
    try:
        return find_comfyui()
    except ComfyUINotInstalled:
        return None


COMFYUI = _comfyui_source()
HAS_ACE15 = COMFYUI is not None and (COMFYUI / "comfy" / "ldm" / "ace" / "ace_step15.py").is_file()
needs_comfyui = pytest.mark.skipif(not HAS_ACE15, reason="needs a ComfyUI source with ACE-Step 1.5 (0.20.1 or newer)")
COMFY_TOKENIZER = COMFYUI / "comfy" / "text_encoders" / "qwen25_tokenizer" if HAS_ACE15 else None
PROMPTS = json.loads((Path(__file__).parent / "fixtures" / "ace15" / "prompts.json").read_text(encoding="utf-8"))
QWEN3_EMBEDDING_VOCAB = 151669  # rows of Qwen3-Embedding-0.6B's embedding table (config.json vocab_size)


@pytest.fixture(scope="module")
def comfy() -> ModuleType:
    """ComfyUI's `comfy` package importable in this process, in CPU mode."""
    if str(COMFYUI) not in sys.path:
        sys.path.append(str(COMFYUI))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # read when comfy.model_management is first imported
    return comfy


@needs_comfyui
def test_silence_latent_equals_comfyuis_for_every_length(comfy: ModuleType) -> None:
    from comfy.ldm.ace.ace_step15 import get_silence_latent

    for frames in (4, 5, 250, 1501):
        theirs = get_silence_latent(frames, "cpu").transpose(1, 2)
        ours = comfy_silence_latent(frames)
        assert ours.shape == (1, frames, 64) and ours.dtype == torch.float32
        assert torch.equal(ours, theirs)
    longest = comfy_silence_latent()
    assert longest.shape == (1, COMFY_SILENCE_FRAMES, 64)
    assert torch.equal(longest[:, :1501], comfy_silence_latent(1501))


def test_silence_latent_refuses_fewer_frames_than_its_head() -> None:
    with pytest.raises(ValueError, match="at least 4 frames"):
        comfy_silence_latent(3)


def test_silence_data_ships_in_the_package() -> None:
    root = Path(__file__).parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"
    ]
    data = [path.relative_to(root / "sidestep").as_posix() for path in (root / "sidestep" / "data").iterdir()]
    assert data and all(any(fnmatch.fnmatch(name, pattern) for pattern in patterns["sidestep"]) for name in data)


def test_read_prefixed_returns_only_that_part_with_the_prefix_stripped(tmp_path: Path) -> None:
    path = tmp_path / "aio.safetensors"
    save_file(
        {
            f"{AIO_DIT_PREFIX}decoder.proj_in.weight": torch.ones(2),
            f"{AIO_VAE_PREFIX}decoder.layers.0.bias": torch.full((3,), 2.0),
            f"{AIO_TEXT_ENCODER_PREFIX}model.norm.weight": torch.full((4,), 3.0),
        },
        str(path),
    )
    vae = read_prefixed(path, AIO_VAE_PREFIX)
    assert list(vae) == ["decoder.layers.0.bias"] and torch.equal(vae["decoder.layers.0.bias"], torch.full((3,), 2.0))
    assert list(read_prefixed(path, AIO_TEXT_ENCODER_PREFIX)) == ["model.norm.weight"]
    assert len(read_prefixed(path, "")) == 3
    with pytest.raises(CheckpointError, match=r"aio\.safetensors holds no tensors named lyrics\.\*"):
        read_prefixed(path, "lyrics.")


def test_read_prefixed_names_the_file_that_is_not_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "ace_1.5_vae.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"Cannot read .*ace_1\.5_vae\.safetensors.*Comfy-Org"):
        read_prefixed(path, "")


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory: pytest.TempPathFactory) -> AutoencoderOobleck:
    """The tiny tree's VAE, loaded from its diffusers folder."""
    return load_vae(write_tiny_vae(tmp_path_factory.mktemp("vae") / "vae"))


def _random_comfy_vae(comfy: ModuleType) -> torch.nn.Module:
    """ComfyUI's own AudioOobleckVAE at ACE-Step 1.5's size (as comfy/sd.py builds it), with seeded random weights."""
    from comfy.ldm.audio.autoencoder import AudioOobleckVAE

    model = AudioOobleckVAE(strides=[2, 4, 4, 6, 10]).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # ComfyUI leaves weights uninitialised; norms near 1 and small Snake logs keep signals sane
        for name, param in model.named_parameters():
            if name.endswith("original0"):
                param.copy_(0.5 + 0.5 * torch.rand(param.shape, generator=generator))
            elif name.endswith("original1"):
                param.copy_(torch.randn(param.shape, generator=generator))
            else:
                scale = 0.2 if name.endswith(("alpha", "beta")) else 0.02
                param.copy_(scale * torch.randn(param.shape, generator=generator))
    return model


@pytest.mark.slow
@needs_comfyui
def test_vae_file_decodes_and_encodes_like_comfyuis_own_vae(comfy: ModuleType, tmp_path: Path) -> None:
    theirs = _random_comfy_vae(comfy)
    path = tmp_path / "ace_1.5_vae.safetensors"
    save_file(theirs.state_dict(), str(path))
    ours = load_vae_file(path)
    assert ours.config.downsampling_ratios == [2, 4, 4, 6, 10] and ours.config.channel_multiples == [1, 2, 4, 8, 16]
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 40, 64, generator=generator)
    with torch.no_grad():
        expected = theirs.decode(latents.transpose(1, 2))
    assert expected.std() > 0.1
    decoded = decode_latents(ours, latents, chunk_frames=30, overlap_frames=10)  # two tiles
    torch.testing.assert_close(decoded, expected, rtol=0, atol=1e-4)
    waveform = 0.3 * torch.randn(2, 12 * 1920, generator=generator)
    with torch.no_grad():
        mean = theirs.encoder(waveform.unsqueeze(0))[0, :64].T
    torch.testing.assert_close(encode_waveform(ours, waveform), mean, rtol=0, atol=1e-4)


def test_comfy_layout_round_trips_through_both_weight_norm_spellings(
    tiny_vae: AutoencoderOobleck, tmp_path: Path
) -> None:
    comfy_layout = comfy_vae_state_dict(tiny_vae)
    assert "decoder.layers.1.layers.0.beta" in comfy_layout  # the key comfy/sd.py recognises an Oobleck VAE by
    assert comfy_layout["decoder.layers.1.layers.0.beta"].shape == (tiny_vae.config.decoder_channels,)
    old_spelling = {
        name.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): t
        for name, t in comfy_layout.items()
    }
    path = tmp_path / "aio.safetensors"
    save_file({f"{AIO_VAE_PREFIX}{name}": t.contiguous() for name, t in old_spelling.items()}, str(path))
    for loaded in (vae_from_state_dict(comfy_layout, "memory"), load_vae_file(path, prefix=AIO_VAE_PREFIX)):
        assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == {
            k: v for k, v in tiny_vae.config.items() if not k.startswith("_")
        }
        expected = tiny_vae.state_dict()
        assert all(torch.equal(t, expected[name]) for name, t in loaded.state_dict().items())


def test_conversion_shares_tensors_instead_of_copying(tiny_vae: AutoencoderOobleck) -> None:
    comfy_layout = comfy_vae_state_dict(tiny_vae)
    ours = tiny_vae.state_dict()
    assert comfy_layout["encoder.layers.0.bias"].data_ptr() == ours["encoder.conv1.bias"].data_ptr()
    loaded = vae_from_state_dict(comfy_layout, "memory").state_dict()
    assert loaded["decoder.block.0.snake1.alpha"].data_ptr() == ours["decoder.block.0.snake1.alpha"].data_ptr()


def test_files_that_are_not_acestep_vaes_are_refused_with_the_fix(tiny_vae: AutoencoderOobleck, tmp_path: Path) -> None:
    dit = tmp_path / "acestep_v1.5_turbo.safetensors"
    save_file({"decoder.proj_in.1.weight": torch.zeros(2, 2)}, str(dit))
    with pytest.raises(
        CheckpointError, match=r"acestep_v1\.5_turbo\.safetensors is not ACE-Step 1\.5's VAE.*ace_1\.5_vae"
    ):
        load_vae_file(dit)
    truncated = dict(comfy_vae_state_dict(tiny_vae))
    del truncated["decoder.layers.2.layers.2.layers.1.parametrizations.weight.original1"]
    with pytest.raises(CheckpointError, match="Missing key"):
        vae_from_state_dict(truncated, "truncated.safetensors")
    stable_audio = AutoencoderOobleck(
        encoder_hidden_size=128,
        downsampling_ratios=[2, 4, 4, 8, 8],
        channel_multiples=[1, 1, 1, 1, 1],
        decoder_channels=8,
    )
    with pytest.raises(CheckpointError, match=r"stable\.safetensors is not ACE-Step 1\.5's .*hop 2048"):
        vae_from_state_dict(comfy_vae_state_dict(stable_audio), "stable.safetensors")


def _recorded_prompts() -> list[tuple[str, int, str]]:
    """(form, token limit, text) of every caption and lyric prompt the official code built in prompts.json."""
    prompts = []
    for form, section in (("training", "training_preprocess"), ("inference", "inference")):
        limits = TOKEN_LIMITS[form]
        for example in PROMPTS[section]["examples"]:
            prompts.append((form, limits.caption_max_tokens, example["caption_prompt"]))
            prompts.append((form, limits.lyrics_max_tokens, example["lyrics_string"]))
    return prompts


def _byte_symbols() -> dict[int, str]:
    """The byte-level BPE alphabet: printable bytes stand for themselves, the others for code points from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return symbols


@cache
def _reference_bpe(folder: Path) -> tuple[dict[str, int], dict[tuple[str, str], int], dict[str, int]]:
    """vocab, merge ranks and special tokens read straight from the three files, for a plain-Python BPE."""
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [line for line in lines if line and not line.startswith("#")]
    ranks = {tuple(line.split(" ")): rank for rank, line in enumerate(merges)}
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    specials = {token["content"]: int(index) for index, token in config["added_tokens_decoder"].items()}
    return vocab, ranks, specials


def _reference_ids(folder: Path, text: str) -> list[int]:
    """Qwen's tokenization written out by hand: special tokens, NFC, the split pattern, byte-level BPE, trailing end."""
    vocab, ranks, specials = _reference_bpe(folder)
    symbols = _byte_symbols()
    ids = []
    for piece in re.split("(" + "|".join(map(re.escape, specials)) + ")", text):
        if piece in specials:
            ids.append(specials[piece])
            continue
        for word in regex.findall(PRETOKENIZE_REGEX, unicodedata.normalize("NFC", piece)):
            parts = [symbols[byte] for byte in word.encode("utf-8")]
            while len(parts) > 1:
                rank, at = min((ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(parts, parts[1:])))
                if rank == len(ranks):
                    break
                parts[at : at + 2] = [parts[at] + parts[at + 1]]
            ids += [vocab[part] for part in parts]
    return ids + [specials[END_OF_TEXT]]


def _encoder_for(tokenizer) -> TextEncoder:
    """A TextEncoder around a one-layer Qwen3 wide enough for every id of `tokenizer` (only its tokenizing is used)."""
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=4,
    )
    return TextEncoder(Qwen3Model(config), tokenizer)


@needs_comfyui
def test_comfyuis_tokenizer_files_give_the_official_prompt_ids() -> None:
    tokenizer = load_comfy_tokenizer(COMFY_TOKENIZER)
    assert len(tokenizer) == QWEN3_EMBEDDING_VOCAB and tokenizer.pad_token_id == 151643
    encoder = _encoder_for(tokenizer)
    for form, max_length, text in _recorded_prompts():
        expected = _reference_ids(COMFY_TOKENIZER, text)
        padded = TOKEN_LIMITS[form].pad_to_max_length
        ids, mask = encoder._tokenize([text], max_length, padded)
        length = len(expected)
        assert ids[0, :length].tolist() == expected, text
        assert mask[0].sum() == length and (ids[0, length:] == tokenizer.pad_token_id).all()
        assert ids.shape[1] == (max_length if padded else length)
    assert _reference_ids(COMFY_TOKENIZER, "# Caption")[0] == 2  # '#' is id 2 in Qwen's vocabulary


@pytest.mark.slow
@needs_comfyui
def test_all_in_one_prefixes_and_text_encoder_layout_are_comfyuis(comfy: ModuleType) -> None:
    import comfy.supported_models
    from comfy.text_encoders.ace15 import ACE15TEModel

    with torch.device("meta"):  # ComfyUI's own ACE-Step 1.5 text-encoder module at full size, without memory
        text_encoder = ACE15TEModel(device="meta", dtype=torch.float32, lm_model=None)
    checkpoint = comfy.supported_models.ACEStep15({"audio_model": "ace1.5"})  # what ComfyUI saves an AIO file with
    saved = checkpoint.process_clip_state_dict_for_saving(text_encoder.state_dict())
    assert set(saved) - {name for name in saved if name.startswith(AIO_TEXT_ENCODER_PREFIX)} == {
        "text_encoders.qwen3_06b.logit_scale"
    }
    assert list(checkpoint.process_vae_state_dict_for_saving({"decoder.layers.0.bias": 0})) == [
        f"{AIO_VAE_PREFIX}decoder.layers.0.bias"
    ]
    assert list(checkpoint.process_unet_state_dict_for_saving({"decoder.proj_in.1.bias": 0})) == [
        f"{AIO_DIT_PREFIX}decoder.proj_in.1.bias"
    ]
    weights = {
        name.removeprefix(AIO_TEXT_ENCODER_PREFIX): t
        for name, t in saved.items()
        if name.startswith(AIO_TEXT_ENCODER_PREFIX)
    }
    loaded = text_encoder_from_state_dict(weights, load_comfy_tokenizer(COMFY_TOKENIZER), "ComfyUI", device="meta")
    config = loaded.model.config  # loading is strict: every name and shape matched
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (1024, 28, 3072)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (16, 8, 128)
    assert config.vocab_size == QWEN3_EMBEDDING_VOCAB


def test_tiny_tokenizer_round_trips_through_comfyuis_three_file_form(tmp_path: Path) -> None:
    original = tiny_tokenizer()
    folder = write_comfy_tokenizer(original, tmp_path / "qwen25_tokenizer")
    assert sorted(path.name for path in folder.iterdir()) == ["merges.txt", "tokenizer_config.json", "vocab.json"]
    loaded = load_comfy_tokenizer(folder)
    texts = [text for _, _, text in _recorded_prompts()]
    assert loaded(texts)["input_ids"] == original(texts)["input_ids"]
    assert all(ids == _reference_ids(folder, text) for ids, text in zip(loaded(texts)["input_ids"], texts))
    assert loaded.pad_token_id == original.pad_token_id


@pytest.fixture(scope="module")
def tiny_text_encoder(tmp_path_factory: pytest.TempPathFactory) -> TextEncoder:
    """The tiny tree's text encoder, loaded from its official-layout folder."""
    return TextEncoder.load(write_tiny_text_encoder(tmp_path_factory.mktemp("text") / "Qwen3-Embedding-0.6B"))


def test_text_encoder_file_encodes_like_the_official_folder(tiny_text_encoder: TextEncoder, tmp_path: Path) -> None:
    tokenizer_dir = write_comfy_tokenizer(tiny_text_encoder.tokenizer, tmp_path / "qwen25_tokenizer")
    weights = comfy_text_encoder_state_dict(tiny_text_encoder.model)
    assert "model.layers.0.self_attn.q_norm.weight" in weights
    split = tmp_path / "qwen_0.6b_ace15.safetensors"
    save_file({name: t.contiguous() for name, t in weights.items()}, str(split))
    aio = tmp_path / "ace_step_1.5_turbo_aio.safetensors"
    save_file({f"text_encoders.qwen3_06b.transformer.{name}": t.contiguous() for name, t in weights.items()}, str(aio))
    prompts = [text for _, _, text in _recorded_prompts()[:4]]
    for loaded in (
        load_text_encoder_file(split, tokenizer_dir),
        load_text_encoder_file(aio, tokenizer_dir, prefix=AIO_TEXT_ENCODER_PREFIX),
    ):
        assert loaded.model.config.num_key_value_heads == tiny_text_encoder.model.config.num_key_value_heads
        for encode in ("encode_captions", "encode_lyrics"):
            expected, expected_mask = getattr(tiny_text_encoder, encode)(prompts)
            hidden, mask = getattr(loaded, encode)(prompts)
            assert torch.equal(mask, expected_mask)
            torch.testing.assert_close(hidden, expected, rtol=0, atol=1e-6)


def test_text_encoder_shares_the_given_tensors(tiny_text_encoder: TextEncoder) -> None:
    weights = {
        name.removeprefix("model."): t for name, t in comfy_text_encoder_state_dict(tiny_text_encoder.model).items()
    }
    loaded = text_encoder_from_state_dict(weights, tiny_text_encoder.tokenizer, "memory")
    assert loaded.model.embed_tokens.weight.data_ptr() == tiny_text_encoder.model.embed_tokens.weight.data_ptr()


def test_wrong_text_encoder_files_and_tokenizer_folders_are_refused(
    tiny_text_encoder: TextEncoder, tmp_path: Path
) -> None:
    tokenizer_dir = write_comfy_tokenizer(tiny_text_encoder.tokenizer, tmp_path / "qwen25_tokenizer")
    vae = tmp_path / "ace_1.5_vae.safetensors"
    save_file({"decoder.layers.0.bias": torch.zeros(2)}, str(vae))
    with pytest.raises(CheckpointError, match=r"ace_1\.5_vae\.safetensors holds no tensors named model\.\*"):
        load_text_encoder_file(vae, tokenizer_dir)
    weights = {
        name.removeprefix("model."): t for name, t in comfy_text_encoder_state_dict(tiny_text_encoder.model).items()
    }
    with_head = dict(weights, **{"lm_head.weight": weights["embed_tokens.weight"]})
    with pytest.raises(CheckpointError, match=r"head\.safetensors is not ACE-Step 1\.5's Qwen3-Embedding.*lm_head"):
        text_encoder_from_state_dict(with_head, tiny_text_encoder.tokenizer, "head.safetensors")
    tokens = len(tiny_text_encoder.tokenizer)
    audio_codes = torch.zeros(64, weights["embed_tokens.weight"].shape[1])
    language_model = {**weights, "embed_tokens.weight": torch.cat([weights["embed_tokens.weight"], audio_codes])}
    with pytest.raises(
        CheckpointError, match=rf"qwen_1\.7b_ace15.* embeds {tokens + 64} tokens where the tokenizer has {tokens}"
    ):
        text_encoder_from_state_dict(language_model, tiny_text_encoder.tokenizer, "qwen_1.7b_ace15.safetensors")
    del weights["layers.0.self_attn.q_norm.weight"]
    with pytest.raises(CheckpointError, match=r"q_norm.*qwen_0\.6b_ace15"):
        text_encoder_from_state_dict(weights, tiny_text_encoder.tokenizer, "old.safetensors")
    with pytest.raises(CheckpointError, match=r"merges\.txt, tokenizer_config\.json missing.*qwen25_tokenizer"):
        (tmp_path / "half").mkdir()
        (tmp_path / "half" / "vocab.json").write_text("{}", encoding="utf-8")
        load_comfy_tokenizer(tmp_path / "half")

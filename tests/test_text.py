"""Prompt builders against the official worked examples, and the Qwen3-Embedding wrapper on a tiny real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sidestep.errors import CheckpointError
from sidestep.tiny_models import TINY_TEXT_HIDDEN, write_tiny_text_encoder
from sidestep.dataset.sidecars import apply_tag
from sidestep.text import (
    CAPTION_TEMPLATE,
    DEFAULT_INSTRUCTION,
    TOKEN_LIMITS,
    SongMetas,
    TextEncoder,
    caption_prompt,
    format_instruction,
    inference_metas,
    lyrics_prompt,
    training_metas,
)

PROMPTS = json.loads((Path(__file__).parent / "fixtures" / "ace15" / "prompts.json").read_text(encoding="utf-8"))
TRAINING = PROMPTS["training_preprocess"]["examples"]
INFERENCE = PROMPTS["inference"]["examples"]


def assert_tokenizer_kwargs(form: str, caption_kwargs: dict, lyrics_kwargs: dict) -> None:
    """Our limits for `form` equal the tokenizer arguments the official code used."""
    limits = TOKEN_LIMITS[form]
    padding = "max_length" if limits.pad_to_max_length else "longest"
    assert caption_kwargs == {"padding": padding, "max_length": limits.caption_max_tokens, "truncation": True}
    assert lyrics_kwargs == {"padding": padding, "max_length": limits.lyrics_max_tokens, "truncation": True}


def test_templates_match_the_official_constants() -> None:
    templates = PROMPTS["templates"]
    assert CAPTION_TEMPLATE.format(instruction="{}", caption="{}", metas="{}") == templates["SFT_GEN_PROMPT"]
    assert DEFAULT_INSTRUCTION == templates["DEFAULT_DIT_INSTRUCTION"] == templates["TASK_INSTRUCTIONS"]["text2music"]


@pytest.mark.parametrize("example", TRAINING, ids=[e["label"] for e in TRAINING])
def test_training_examples_are_reproduced_exactly(example: dict) -> None:
    fields = example["sample_fields"]
    text = fields["genre"] if example["use_genre"] else fields["caption"]
    caption = apply_tag(text, fields.get("custom_tag") or "", example["tag_position"])
    metas = SongMetas(fields["bpm"], fields["timesignature"], fields["keyscale"], fields["duration"])
    assert caption_prompt(caption, metas, form="training") == example["caption_prompt"]
    assert lyrics_prompt(fields["lyrics"], form="training") == example["lyrics_string"]
    assert_tokenizer_kwargs("training", example["caption_tokenizer_kwargs"], example["lyrics_tokenizer_kwargs"])


@pytest.mark.parametrize("example", INFERENCE, ids=[e["label"] for e in INFERENCE])
def test_inference_examples_are_reproduced_exactly(example: dict) -> None:
    given = example["handler_inputs"]
    metas = SongMetas(given["bpm"], given["time_signature"], given["key_scale"], given["audio_duration"])
    prompt = caption_prompt(given["captions"], metas, form="inference", instruction=given["instruction"])
    assert prompt == example["caption_prompt"]
    assert lyrics_prompt(given["lyrics"], given["vocal_language"], form="inference") == example["lyrics_string"]
    assert_tokenizer_kwargs("inference", example["caption_tokenizer_kwargs"], example["lyrics_tokenizer_kwargs"])


def test_metas_differ_between_forms_for_unknown_and_fractional_durations() -> None:
    assert training_metas(SongMetas(duration=None)).endswith("- duration: 0 seconds\n")
    assert training_metas(SongMetas(duration=95.7)).endswith("- duration: 95.7 seconds\n")
    assert inference_metas(SongMetas(duration=None)).endswith("- duration: 30 seconds\n")
    assert inference_metas(SongMetas(duration=95.7)).endswith("- duration: 95 seconds\n")
    assert inference_metas(SongMetas(bpm=0, timesignature="N/A", keyscale="  ")).startswith(
        "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n"
    )


def test_instruction_gets_a_colon_and_unknown_forms_are_refused() -> None:
    assert format_instruction("Generate the vocals track based on the audio context").endswith("context:")
    assert format_instruction(DEFAULT_INSTRUCTION) == DEFAULT_INSTRUCTION
    with pytest.raises(ValueError, match="training"):
        lyrics_prompt("la la", form="train")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> TextEncoder:
    folder = write_tiny_text_encoder(tmp_path_factory.mktemp("text") / "Qwen3-Embedding-0.6B")
    return TextEncoder.load(folder)


def test_training_form_pads_to_fixed_lengths(encoder: TextEncoder) -> None:
    prompts = [caption_prompt(e["sample_fields"]["caption"], SongMetas()) for e in TRAINING[:2]]
    hidden, mask = encoder.encode_captions(prompts, form="training")
    assert hidden.shape == (2, 256, TINY_TEXT_HIDDEN) and mask.shape == (2, 256)
    assert hidden.dtype == mask.dtype == torch.float32 and not hidden.is_inference()
    lengths = [len(encoder.tokenizer(p)["input_ids"]) for p in prompts]
    assert mask.sum(dim=1).tolist() == lengths
    lyrics, lyric_mask = encoder.encode_lyrics([lyrics_prompt(""), lyrics_prompt("[Verse]\nla la")], form="training")
    assert lyrics.shape == (2, 512, TINY_TEXT_HIDDEN) and lyric_mask.shape == (2, 512)


def test_inference_form_right_pads_to_the_longest_and_rows_are_independent(encoder: TextEncoder) -> None:
    short = caption_prompt("calm piano", SongMetas(), form="inference")
    long = caption_prompt("upbeat synthwave, airy female vocals, driving bassline", SongMetas(120), form="inference")
    hidden, mask = encoder.encode_captions([short, long], form="inference")
    alone, alone_mask = encoder.encode_captions([short], form="inference")
    n_short, n_long = int(alone_mask.sum()), len(encoder.tokenizer(long)["input_ids"])
    assert hidden.shape == (2, n_long, TINY_TEXT_HIDDEN) and alone.shape[1] == n_short < n_long
    assert mask[0].tolist() == [1.0] * n_short + [0.0] * (n_long - n_short)
    # Right padding + causal attention: the valid positions do not see the padding, exactly as when encoded alone.
    torch.testing.assert_close(hidden[0, :n_short], alone[0], rtol=1e-5, atol=1e-5)
    # No attention mask reaches the encoder: padded positions carry real hidden states, as upstream.
    assert hidden[0, n_short:].abs().sum() > 0


def test_captions_use_the_transformer_and_lyrics_only_the_embedding_table(encoder: TextEncoder) -> None:
    prompt = lyrics_prompt("[Chorus]\nWe run all night", "en", form="inference")
    ids = encoder.tokenizer([prompt], return_tensors="pt")["input_ids"]
    table = encoder.model.get_input_embeddings().weight.detach()
    lyrics, _ = encoder.encode_lyrics([prompt], form="inference")
    torch.testing.assert_close(lyrics[0], table[ids[0]])
    captions, _ = encoder.encode_captions([prompt], form="inference")
    assert not torch.allclose(captions, lyrics, atol=1e-3)
    assert encoder.hidden_size == TINY_TEXT_HIDDEN


def test_missing_or_broken_folders_raise_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nowhere"):
        TextEncoder.load(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "qwen3", "hidden_size": 32}), encoding="utf-8")
    with pytest.raises(CheckpointError, match="broken"):
        TextEncoder.load(broken)

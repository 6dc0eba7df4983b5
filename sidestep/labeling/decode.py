"""Generating the LM's answer with constrained decoding, in the official understanding order and limits.

The answer is built field by field as ACE-Step's constrained decoder does in understanding mode: bpm, caption,
duration, genres, keyscale, language, timesignature, then `</think>` and free lyrics. Closed fields are one line chosen
token by token inside a prefix tree of their allowed lines (bpm 30-300, duration 10-600, the official key, language
and time-signature sets). The caption is free text that may run over several lines, as `yaml.dump` wraps it: after a
line break it continues while the LM's most likely next token starts with a space or tab, up to 512 tokens. Genres is
one free line of at most 64 tokens. The lyrics run to the end-of-turn token within the official answer budget. Unconstrained decoding
samples the whole answer freely (it is validated after).
Sampling, as the official PyTorch path: top-p on the raw probabilities, then temperature (0 = greedy); a seed makes
runs repeatable.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache

from .lm import LoadedLm
from .parse import BPM_MAX, BPM_MIN, DURATION_MAX, DURATION_MIN, KEYSCALES, LANGUAGES, TIME_SIGNATURES
from .settings import Sampling

GENRES_TOKENS = 64  # our bound on the genres line (the official one is its genre vocabulary, of short entries)


def _cache_keyword(model: torch.nn.Module) -> str:
    """The forward argument that takes the KV cache: `cache` on transformers 5, `past_key_values` before it."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class _Decoder:
    """One generation: a KV-cached forward pass per token and a seeded sampler over the allowed tokens."""

    def __init__(self, lm: LoadedLm, prompt: str, sampling: Sampling) -> None:
        self.lm, self.sampling = lm, sampling
        self.generator = torch.Generator().manual_seed(sampling.seed)
        self.cache = {_cache_keyword(lm.model): DynamicCache()}  # filled in place by every forward pass
        self.text_ids: list[int] = []
        self.logits = self._forward(lm.tokenizer.encode(prompt, add_special_tokens=False))
        vocab = self.logits.shape[-1]
        added = lm.tokenizer.get_added_vocab().values()  # chat markers, reasoning tags, audio codes: never free text
        self.text_mask = torch.zeros(vocab, dtype=torch.bool)
        self.text_mask[: lm.first_code_id] = True
        self.text_mask[[i for i in added if i < vocab]] = False
        pieces = {token: index for token, index in lm.tokenizer.get_vocab().items() if index < lm.first_code_id}
        self.caption_mask = self.text_mask.clone()
        self.caption_mask[[i for token, i in pieces.items() if "`" in token]] = False  # no backticks, officially
        self.newline_mask = torch.zeros(vocab, dtype=torch.bool)
        self.newline_mask[[i for token, i in pieces.items() if "\u010a" in token]] = True  # byte-level "\n"
        self.indent_mask = torch.zeros(vocab, dtype=torch.bool)
        self.indent_mask[[i for token, i in pieces.items() if token[:1] in ("\u0120", "\u0109")]] = True  # " ", "\t"
        ends = [i for i in lm.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]) if i is not None]
        self.end_mask = torch.zeros(vocab, dtype=torch.bool)
        self.end_mask[ends] = True

    @torch.inference_mode()
    def _forward(self, ids: list[int]) -> torch.Tensor:
        """Run `ids` through the LM after everything fed so far; the next token's logits (float32, CPU)."""
        inputs = torch.tensor([ids], device=self.lm.device)
        out = self.lm.model(input_ids=inputs, use_cache=True, logits_to_keep=1, **self.cache)
        return out.logits[0, -1].float().cpu()

    def feed(self, ids: list[int]) -> None:
        """Append tokens to the answer."""
        self.text_ids += ids
        self.logits = self._forward(ids)

    def choose(self, candidates: torch.Tensor) -> int:
        """Draw the next token among the `candidates` (token ids)."""
        logits = self.logits[candidates]
        if self.sampling.temperature <= 0:
            return int(candidates[logits.argmax()])
        if self.sampling.top_p < 1.0:
            ordered, order = torch.softmax(logits, dim=-1).sort(descending=True)
            logits[order[ordered.cumsum(0) - ordered > self.sampling.top_p]] = float("-inf")
        probs = torch.softmax(logits / self.sampling.temperature, dim=-1)
        return int(candidates[torch.multinomial(probs, 1, generator=self.generator)])

    def force(self, text: str) -> None:
        """Append fixed text."""
        self.feed(self.lm.tokenizer.encode(text, add_special_tokens=False))

    def one_of(self, lines: list[str]) -> None:
        """Append one of `lines`, chosen token by token inside their prefix tree."""
        sequences = [self.lm.tokenizer.encode(line, add_special_tokens=False) for line in lines]
        chosen: list[int] = []
        while chosen not in sequences:
            options = {seq[len(chosen)] for seq in sequences if seq[: len(chosen)] == chosen and len(seq) > len(chosen)}
            token = options.pop() if len(options) == 1 else self.choose(torch.tensor(sorted(options)))
            chosen.append(token)
            self.feed([token])

    def free_text(self, limit: int, stop: torch.Tensor, min_tokens: int = 1) -> bool:
        """Append up to `limit` text tokens, ending after the first token in `stop` (not before `min_tokens`);
        True when it ended there."""
        may_stop, may_not = (self.text_mask | stop).nonzero().squeeze(1), (self.text_mask & ~stop).nonzero().squeeze(1)
        for count in range(limit):
            token = self.choose(may_stop if count >= min_tokens else may_not)
            self.feed([token])
            if stop[token]:
                return True
        return False

    def caption(self, limit: int) -> None:
        """Append a caption that may wrap onto indented lines, ending with a line break (forced at `limit` tokens)."""
        any_text, one_line = self.caption_mask.nonzero().squeeze(1), (self.caption_mask & ~self.newline_mask).nonzero().squeeze(1)
        for count in range(limit):
            token = self.choose(any_text if count else one_line)
            self.feed([token])
            if self.newline_mask[token] and not self.indent_mask[int(self.logits.argmax())]:
                return
        self.force("\n")

    def answer(self) -> str:
        """The answer so far as text (special tokens kept, so tags and end-of-turn stay visible)."""
        return self.lm.tokenizer.decode(self.text_ids, skip_special_tokens=False)


def generate_answer(lm: LoadedLm, prompt: str, sampling: Sampling, lyrics: bool = True) -> str:
    """The LM's answer to an understanding prompt: the `<think>` metadata block, then the lyrics when asked."""
    decoder = _Decoder(lm, prompt, sampling)
    if not sampling.constrained:
        decoder.free_text(sampling.max_answer_tokens, decoder.end_mask, min_tokens=0)
        return decoder.answer()
    decoder.force("<think>\n")
    decoder.one_of([f"bpm: {bpm}\n" for bpm in range(BPM_MIN, BPM_MAX + 1)])
    decoder.force("caption:")
    decoder.caption(sampling.max_caption_tokens)
    decoder.one_of([f"duration: {seconds}\n" for seconds in range(DURATION_MIN, DURATION_MAX + 1)])
    decoder.force("genres:")
    if not decoder.free_text(GENRES_TOKENS, decoder.newline_mask):
        decoder.force("\n")
    decoder.one_of([f"keyscale: {key}\n" for key in KEYSCALES])
    decoder.one_of([f"language: {language}\n" for language in LANGUAGES])
    decoder.one_of([f"timesignature: {signature}\n" for signature in TIME_SIGNATURES])
    decoder.force("</think>")
    if lyrics:
        decoder.free_text(max(0, sampling.max_answer_tokens - len(decoder.text_ids)), decoder.end_mask, min_tokens=0)
    return decoder.answer()

"""Generating the LM's answer with constrained decoding, so every metadata value comes from the official sets.

The answer is built field by field in the official order (bpm, caption, duration, keyscale, language,
timesignature): each closed field is one line chosen token by token inside a prefix tree of its allowed lines, the
caption is free text up to its newline, the duration is the song's measured length, and the lyrics (when asked) are
free text up to the end-of-turn token. Unconstrained decoding samples the whole answer freely (it is validated after).
Sampling: temperature (0 = greedy), top-p, and a seed that makes runs repeatable.
"""

from __future__ import annotations

import torch

from .lm import LoadedLm
from .parse import BPM_MAX, BPM_MIN, KEYSCALES, LANGUAGES, TIME_SIGNATURES
from .settings import Sampling


class _Decoder:
    """One generation: a KV-cached forward pass per token and a seeded sampler over the allowed tokens."""

    def __init__(self, lm: LoadedLm, prompt: str, sampling: Sampling) -> None:
        self.lm, self.sampling = lm, sampling
        self.generator = torch.Generator().manual_seed(sampling.seed)
        self.cache = None
        self.text_ids: list[int] = []
        self.logits = self._forward(lm.tokenizer.encode(prompt, add_special_tokens=False))
        vocab = self.logits.shape[-1]
        added = lm.tokenizer.get_added_vocab().values()  # chat markers, reasoning tags, audio codes: never free text
        self.text_mask = torch.zeros(vocab, dtype=torch.bool)
        self.text_mask[: lm.first_code_id] = True
        self.text_mask[[i for i in added if i < vocab]] = False
        self.newline_mask = torch.zeros(vocab, dtype=torch.bool)
        newline = {index for token, index in lm.tokenizer.get_vocab().items() if "\u010a" in token}  # byte-level "\n"
        self.newline_mask[[i for i in newline if i < lm.first_code_id]] = True
        self.end_ids = [i for i in (lm.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])) if i is not None]

    @torch.inference_mode()
    def _forward(self, ids: list[int]) -> torch.Tensor:
        """Run `ids` through the LM after everything fed so far; the next token's logits (float32, CPU)."""
        inputs = torch.tensor([ids], device=self.lm.device)
        out = self.lm.model(input_ids=inputs, cache=self.cache, use_cache=True, logits_to_keep=1)
        self.cache = out.cache
        return out.logits[0, -1].float().cpu()

    def feed(self, ids: list[int]) -> None:
        """Append tokens to the answer."""
        self.text_ids += ids
        self.logits = self._forward(ids)

    def choose(self, allowed: torch.Tensor) -> int:
        """Draw the next token among the `allowed` ones (a bool mask over the vocabulary)."""
        candidates = allowed.nonzero().squeeze(1)
        logits = self.logits[candidates]
        if self.sampling.temperature <= 0:
            return int(candidates[logits.argmax()])
        probs = torch.softmax(logits / self.sampling.temperature, dim=-1)
        if self.sampling.top_p < 1.0:
            ordered, order = probs.sort(descending=True)
            probs[order[ordered.cumsum(0) - ordered > self.sampling.top_p]] = 0.0
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
            if len(options) == 1:
                token = options.pop()
            else:
                allowed = torch.zeros_like(self.text_mask)
                allowed[list(options)] = True
                token = self.choose(allowed)
            chosen.append(token)
            self.feed([token])

    def free_text(self, limit: int, stop: torch.Tensor, min_tokens: int = 0) -> None:
        """Append up to `limit` text tokens, ending after the first token in `stop` (not before `min_tokens`)."""
        for count in range(limit):
            allowed = self.text_mask | stop if count >= min_tokens else self.text_mask & ~stop
            token = self.choose(allowed)
            self.feed([token])
            if stop[token]:
                return

    def answer(self) -> str:
        """The answer so far as text (special tokens kept, so tags and end-of-turn stay visible)."""
        return self.lm.tokenizer.decode(self.text_ids, skip_special_tokens=False)


def generate_answer(lm: LoadedLm, prompt: str, seconds: float, sampling: Sampling, lyrics: bool = True) -> str:
    """The LM's answer to an understanding prompt: the `<think>` metadata block, then the lyrics when asked."""
    decoder = _Decoder(lm, prompt, sampling)
    ends = torch.zeros_like(decoder.text_mask)
    ends[decoder.end_ids] = True
    if not sampling.constrained:
        decoder.free_text(sampling.max_caption_tokens + sampling.max_lyric_tokens, ends)
        return decoder.answer()
    decoder.force("<think>\n")
    decoder.one_of([f"bpm: {bpm}\n" for bpm in range(BPM_MIN, BPM_MAX + 1)])
    decoder.force("caption:")
    decoder.free_text(sampling.max_caption_tokens, decoder.newline_mask, min_tokens=2)
    if not decoder.answer().endswith("\n"):
        decoder.force("\n")
    decoder.force(f"duration: {max(1, round(seconds))}\n")
    decoder.one_of([f"keyscale: {key}\n" for key in KEYSCALES])
    decoder.one_of([f"language: {language}\n" for language in LANGUAGES])
    decoder.one_of([f"timesignature: {signature}\n" for signature in TIME_SIGNATURES])
    decoder.force("</think>")
    if lyrics:
        decoder.force("\n")
        decoder.free_text(sampling.max_lyric_tokens, ends)
    return decoder.answer()

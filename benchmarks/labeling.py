"""Labelling one 3-minute song with the 5 Hz LM (random weights, real vocabulary size): wall time and peak memory.

The LM is written in ComfyUI's single-file layout with ACE-Step's vocabulary size (217204 rows) and read with the tiny
test tokenizer plus the 64000 audio codes; `full` has the 0.6B LM's dimensions. Random weights never end a lyric early,
so generation runs to its limits (the official ones: 512 caption tokens and a 4032-token answer, plus our 64 genres
tokens): an upper bound. The song is encoded with the narrow
test VAE (the `vae` suite measures the official one). `--quick` skips this suite.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from sidestep.atomic import save_safetensors_atomic
from sidestep.tiny_models import COMFY_LM_VOCAB, TURBO_FOLDER, write_tiny_text_tokenizer

from .encoding import build_tree, write_song
from .memory import run_worker
from .models import benchmark_device
from .report import Row, Stat
from .settings import RunSettings

SONG_SECONDS = 180.0
# (hidden, layers, attention heads, KV heads, head dim, MLP width); full = acestep-5Hz-lm-0.6B.
LM_DIMS = {"tiny": (32, 1, 4, 2, 8, 64), "small": (256, 4, 4, 2, 64, 768), "full": (1024, 28, 16, 8, 128, 3072)}


def write_lm(path: Path, size: str) -> Path:
    """A randomly initialised Qwen3 causal LM of `size` in ComfyUI's layout (`model.` keys, tied head left out)."""
    hidden, layers, heads, kv_heads, head_dim, mlp = LM_DIMS[size]
    config = Qwen3Config(
        vocab_size=COMFY_LM_VOCAB, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = Qwen3ForCausalLM(config).to(torch.bfloat16).state_dict()
    save_safetensors_atomic({name: value for name, value in state.items() if name.startswith("model.")}, path)
    return path


def label_rows(size: str, settings: RunSettings) -> list[Row]:
    """Label one 3-minute song in a fresh process; report the phases' wall time and the resident peak."""
    work = settings.workdir / f"label-{size}"
    tree = build_tree(work / "checkpoints", "test")
    write_song(work / "songs" / "song.wav", SONG_SECONDS)
    params = {
        "root": str(tree), "model": TURBO_FOLDER, "audio_dir": str(work / "songs"),
        "lm": str(write_lm(work / "qwen_bench_ace15.safetensors", size)),
        "tokenizer": str(write_tiny_text_tokenizer(work / "tokenizer")),
    }
    answer = run_worker("label", params)
    device = benchmark_device().type
    label = "fp32 LM" if device == "cpu" else "bf16 LM"
    note = f"codes + LM load {answer['codes_seconds']:.1f} s, generation {answer['generate_seconds']:.1f} s"
    return [
        Row("labelling", "label one 3 min song", size, device, label, "s", Stat.of([answer["seconds"]]), note=note),
        Row("labelling", "label peak RSS, 3 min song", size, device, label, "GB", Stat.of([answer["peak_gb"]]),
            note="fresh process; test VAE"),
    ]

"""The whole job on an embedded default: songs → dataset → LoRA → music, on a tiny model tree or real checkpoints."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import save_audio
from .bundle import open_checkpoint
from .dataset.encode import EncodeConfig, encode_dataset
from .dataset.loader import dataset_index
from .progress import ProgressPrinter
from .tiny_models import LM_FOLDER
from .training.config import TrainConfig
from .training.run import TrainingRun
from .variants import SAMPLE_RATE
from .wording import quantity

DEMO_SONGS = (("warm pad", 110.0), ("bright arpeggio", 440.0), ("pulsing bass", 55.0))
# A small, fast LoRA with a bigger step than `train`'s defaults (rank 64, alpha 128, lr 1e-4), which suit real models
# and real datasets over many epochs: the demo only has a few epochs on a few short clips.
DEMO_RANK, DEMO_ALPHA, DEMO_LR, DEMO_EPOCHS = 16, 32.0, 1e-2, 6
# The tiny model's random VAE turns every song into nearly the same constant latent, so what an adapter can learn is
# that constant (and some of the noise, from its input); its random output layer (a frozen ConvTranspose: 64 channels
# to 2 frames x 64) reaches only half of the output's directions, which caps the fall near a third
# (docs/performance.md). Attention adapters alone barely move the output (the output layer sees normalised hidden
# states), so the tiny demo also adapts the timestep embeddings that scale and shift the output (time_embed_r's, always
# at t = 0, adds a constant: room for the latent's). Real checkpoints use the usual attention target.
TINY_TARGETS = (
    "self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj",
    "time_embed.linear_2", "time_embed.time_proj", "time_embed_r.linear_2",
)
TINY_FALL = 0.25  # the least share by which the tiny demo's validation loss falls in its 6 epochs (measured: -30 %)


def adapter_validation(folder: Path) -> dict:
    """The validation record (split, [step, loss] curve, best epoch) in an adapter's metadata; {} without one."""
    from .training.run import adapter_metadata

    metadata = adapter_metadata(folder)
    return dict((metadata.validation or {}) if metadata else {})


@dataclass
class DemoResult:
    """Where everything the demo made went."""

    checkpoint_dir: Path
    dataset_dir: Path
    adapter_dir: Path
    checkpoints_dir: Path
    log_dir: Path
    audio_path: Path

    songs_dir: Path | None = None

    def next_commands(self) -> list[str]:
        """Commands to try next on the same model tree, runnable as printed from the folder the demo ran in."""
        python = shlex.quote(os.path.relpath(sys.executable) if _inside(Path(sys.executable), Path.cwd()) else sys.executable)
        tree = shlex.quote(str(self.checkpoint_dir))
        commands = [f"{python} -m sidestep models {tree}"]
        if self.songs_dir is not None and (self.checkpoint_dir / LM_FOLDER).is_dir():
            commands.append(f"{python} -m sidestep label --checkpoint-dir {tree} --dataset-dir {shlex.quote(str(self.songs_dir))} --fields metadata --overwrite empty")
        song = shlex.quote(str(self.audio_path.with_name("song.flac")))
        commands.append(
            f"{python} -m sidestep sample --checkpoint-dir {tree} --adapter {shlex.quote(str(self.adapter_dir))} "
            f"--caption \"warm pad\" --duration 5 --out {song}"
        )
        return commands

    def summary(self) -> str:
        """Where everything went, and the command lines to try next on the same model tree."""
        return (
            f"\nDone.\n  adapter:          {self.adapter_dir}\n  checkpoints:      {self.checkpoints_dir}\n"
            f"  TensorBoard logs: {self.log_dir}\n  audio:            {self.audio_path}\n"
            f"  dataset:          {self.dataset_dir}\n  model tree:       {self.checkpoint_dir}\n"
            "Next, on the same model tree:\n" + "".join(f"  {command}\n" for command in self.next_commands())
        ).rstrip("\n")


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` lies under `folder` (so it can be printed relative to it)."""
    return Path(os.path.abspath(path)).is_relative_to(Path(os.path.abspath(folder)))


def write_demo_songs(folder: Path, seconds: float) -> Path:
    """A few short synthetic songs (tones with a pulse) with caption sidecars."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    for index, (caption, frequency) in enumerate(DEMO_SONGS):
        pulse = 0.6 + 0.4 * np.sin(2 * np.pi * (2 + index) * t)
        left = 0.3 * np.sin(2 * np.pi * frequency * t) * pulse
        right = 0.3 * np.sin(2 * np.pi * frequency * 1.5 * t) * pulse
        name = caption.replace(" ", "_")
        save_audio(folder / f"{name}.wav", torch.from_numpy(np.stack([left, right]).astype(np.float32)), SAMPLE_RATE)
        (folder / f"{name}.txt").write_text(f"caption: {caption}, demo\nbpm: {100 + 10 * index}\n", encoding="utf-8")
    return folder


def run_demo(
    workdir: Path,
    checkpoint_dir: Path | None = None,
    model: str = "acestep-v15-turbo",
    audio_dir: Path | None = None,
    epochs: int = DEMO_EPOCHS,
    song_seconds: float = 1.0,
    sample_seconds: float = 5.0,
) -> DemoResult:
    """Build (or use) a checkpoint tree, encode songs, train a LoRA with live progress and sample a clip with it."""
    from .adapters.kinds.lora import LoraConfig
    from .adapters.files import load_adapter
    from .generate import GenerationRequest, generate
    from .tiny_models import make_tiny_checkpoints, write_tiny_lm

    workdir = Path(workdir)
    tiny = checkpoint_dir is None
    if checkpoint_dir is None:
        checkpoint_dir = workdir / "checkpoints"
        if not checkpoint_dir.exists():
            print(f"Building a tiny ACE-Step 1.5 model tree in {checkpoint_dir} ...", flush=True)
            make_tiny_checkpoints(checkpoint_dir)
        if not (checkpoint_dir / LM_FOLDER).exists():  # so `sidestep label` can be tried on the demo's songs
            write_tiny_lm(checkpoint_dir / LM_FOLDER)
    if audio_dir is None:
        audio_dir = write_demo_songs(workdir / "songs", song_seconds)
    bundle = open_checkpoint(checkpoint_dir, model)
    dataset_dir = workdir / "dataset"
    print(f"Encoding {audio_dir} with {bundle.entry.label} ...", flush=True)
    encoded = encode_dataset(
        bundle,
        EncodeConfig(str(audio_dir), str(dataset_dir)),
        callback=lambda event: print(f"  [{event.index}/{event.total}] {event.status} {event.file}", flush=True),
    )
    bundle.release(vae=True, text_encoder=True, dit=True)

    run_dir = workdir / "runs" / "demo-lora"
    if run_dir.exists():
        print(f"Replacing the previous demo run in {run_dir} (a fresh run, so TensorBoard shows each step once) ...")
    config = TrainConfig(
        output_dir=str(run_dir), epochs=epochs, learning_rate=DEMO_LR, save_every=max(1, epochs // 2), overwrite=True
    )
    where = {"target": "custom", "custom_modules": TINY_TARGETS} if tiny else {}
    adapter_config = LoraConfig(rank=DEMO_RANK, alpha=DEMO_ALPHA, **where)
    run = TrainingRun(bundle, dataset_index(dataset_dir, encoded.manifest), adapter_config, config)
    print(
        f"Training a LoRA (rank {DEMO_RANK}, alpha {DEMO_ALPHA:g}, lr {DEMO_LR:g}: small and quick for a demo; `sidestep "
        f"train` defaults to rank 64, alpha 128, lr 1e-4 for real runs) on "
        f"{quantity(len(encoded.manifest.clips), 'clip')} for {quantity(epochs, 'epoch')} ...",
        flush=True,
    )
    print(
        "Watch the validation loss: the same clips, noises and timesteps every time, so it moves only when the adapter "
        "does (the training loss jumps with every random draw)."
        + (f" On the tiny model it falls by {TINY_FALL:.0%} or more in {DEMO_EPOCHS} epochs." if tiny else ""),
        flush=True,
    )
    result = run.train(ProgressPrinter()).result
    validation = adapter_validation(result.adapter_dir)
    history = [loss for _, loss in validation.get("history", [])]
    if len(history) >= 2:
        scored = "held-out songs" if validation.get("held_out") else "the training clips as a reference"
        fall = f"{history[0]:.4f} -> {history[-1]:.4f} ({history[-1] / history[0] - 1:+.0%})"
        print(f"Validation loss ({scored}) {fall}; {result.best_text()}", flush=True)
    adapter = load_adapter(result.adapter_dir)
    request = GenerationRequest(caption="warm pad, demo", duration=sample_seconds, seed=1)
    print("Sampling a clip with the trained LoRA ...", flush=True)
    song = generate(bundle, request, adapters=[(adapter, 1.0)], adapter_metadata=adapter.metadata)
    for warning in song.warnings:
        print(f"warning: {warning}")
    audio_path = save_audio(workdir / "demo_sample.flac", song.waveform[0], song.sample_rate)
    demo = DemoResult(
        checkpoint_dir, dataset_dir, result.adapter_dir, run.layout.checkpoints, run.layout.tensorboard, audio_path, audio_dir
    )
    print(demo.summary())
    return demo

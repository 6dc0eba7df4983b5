"""Command line: `python -m sidestep <command>` for headless machines (the same core the ComfyUI nodes use)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .adapters.config import KINDS, TARGET_PRESETS, LokrConfig, LoraConfig
from .dataset.settings import NORMALIZE_MODES, EncodeConfig
from .dataset.sidecars import TAG_POSITIONS
from .errors import SideStepError
from .labeling.settings import OVERWRITE_MODES, LabelConfig, Sampling
from .request import GUIDANCE_MODES, GenerationRequest
from .training.config import CONTINUOUS_DRAWS, OPTIMIZERS, PRECISIONS, SCHEDULERS, TIMESTEP_MODES, TrainConfig
from .training.layout import SUMMARY
from .variants import FRAMES_PER_SECOND, STORAGE, config_defaults, inference_dtype, per_base, resolve_device, resolve_storage


def cmd_models(args: argparse.Namespace) -> int:
    """List the models found under a checkpoint root."""
    from .bundle import list_models
    from .model_folders import describe_models, filter_models

    entries = list_models(args.checkpoint_dir)
    if args.filter:
        entries = filter_models(entries, args.filter)
    print(describe_models(entries))
    return 0


def cmd_make_tiny_checkpoints(args: argparse.Namespace) -> int:
    """Write a tiny, complete checkpoint tree with random weights (for tests and smoke runs)."""
    from .tiny_models import make_tiny_checkpoints

    root = make_tiny_checkpoints(Path(args.directory), seed=args.seed)
    print(f"Tiny checkpoint tree written to {root}")
    return 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each flag's default, left out where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if any(action.default is empty for empty in (None, False, argparse.SUPPRESS)) or action.default == "" or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _bundle(args: argparse.Namespace):
    """Open the model the common --checkpoint-dir/--model-variant/--base-model flags name."""
    from .bundle import open_checkpoint

    device = resolve_device(args.device)
    return open_checkpoint(
        args.checkpoint_dir, args.model_variant, args.base_model, dtype=resolve_storage(args.dtype), device=device, tokenizer_dir=args.tokenizer
    )


def cmd_encode(args: argparse.Namespace) -> int:
    """Encode a folder of songs into a training-ready tensor dataset."""
    from .dataset.encode import EncodeConfig, encode_dataset

    config = EncodeConfig(
        audio_dir=args.dataset_dir,
        output_dir=args.output_dir,
        max_duration=args.max_duration,
        normalize=args.normalize,
        skip_existing=not args.force,
        min_seconds=args.min_seconds,
        custom_tag=args.trigger,
        tag_position=args.tag_position,
    )

    def report(event) -> None:
        detail = f" ({event.reason})" if event.reason else f" {event.seconds:.1f} s"
        print(f"[{event.index}/{event.total}] {event.status:8s} {event.file}{detail}", flush=True)

    result = encode_dataset(_bundle(args), config, callback=report)
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(
        f"Encoded {result.encoded}, kept {result.skipped} unchanged, rejected {len(result.rejected)}; "
        f"{len(result.manifest.clips)} clips in {result.output_dir}"
    )
    return 0


def _adapter_config(args: argparse.Namespace):
    from .adapters.config import LokrConfig, LoraConfig

    custom = tuple(args.target_modules or ())
    where = {"target": "custom" if custom else args.target, "custom_modules": custom}
    if args.adapter == "lora":
        return LoraConfig(rank=args.rank, alpha=args.alpha, dropout=args.dropout, use_dora=args.dora, **where)
    return LokrConfig(
        linear_dim=args.lokr_linear_dim,
        linear_alpha=args.lokr_linear_alpha,
        factor=args.lokr_factor,
        decompose_both=args.lokr_decompose_both,
        use_tucker=args.lokr_use_tucker,
        weight_decompose=args.lokr_weight_decompose,
        **where,
    )


def cmd_train(args: argparse.Namespace) -> int:
    """Train a LoRA/LoKR adapter on an encoded dataset, printing a progress bar."""
    from .progress import ProgressPrinter
    from .training import distributed
    from .training.config import TrainConfig
    from .training.run import LATEST, TrainingRun

    _check_dataset_dir(Path(args.dataset_dir))
    resume_from = args.resume_from
    if resume_from and resume_from != LATEST:
        _check_resume_from(Path(resume_from), Path(args.output_dir))
        # Relative to the working directory here (the core reads a relative path as inside the run folder).
        resume_from = str(Path(resume_from).absolute())
    adapter = _adapter_config(args)
    config = TrainConfig(
        output_dir=args.output_dir,
        epochs=args.epochs,
        learning_rate=args.lr,
        optimizer=args.optimizer,
        scheduler=args.scheduler,
        warmup_steps=args.warmup_steps,
        batch_size=args.batch_size,
        gradient_accumulation=args.gradient_accumulation,
        max_grad_norm=args.max_grad_norm,
        precision=args.precision,
        gradient_checkpointing=not args.no_gradient_checkpointing,
        seed=args.seed,
        save_every=args.save_every,
        timestep_mode=args.timestep_mode,
        continuous_draws=args.continuous_draws,
        cfg_ratio=args.cfg_ratio,
        min_snr_gamma=args.min_snr_gamma,
        max_latent_frames=args.max_latent_frames or None,
        num_workers=args.num_workers,
        shift=args.shift,
        num_inference_steps=args.num_inference_steps,
        resume_from=resume_from,
        log_dir=args.log_dir,
    )
    _init_distributed()
    run = TrainingRun(_bundle(args), args.dataset_dir, adapter, config)
    run.train(ProgressPrinter())
    if distributed.rank_and_world()[0] == 0:
        print(f"TensorBoard logs in {config.log_dir or run.layout.tensorboard}")
    return 0


def _check_dataset_dir(folder: Path) -> None:
    """A folder of songs instead of an encoded dataset gets the `encode` command to run first."""
    from .audio import AUDIO_EXTENSIONS
    from .dataset.tensors import MANIFEST_NAME
    from .errors import DatasetError

    if not folder.is_dir() or any(folder.glob("*.safetensors")) or any(folder.glob("*.pt")) or (folder / MANIFEST_NAME).is_file():
        return
    if any(path.suffix.lower() in AUDIO_EXTENSIONS for path in folder.rglob("*")):
        raise DatasetError(
            f"{folder} holds songs, not an encoded dataset: run `python -m sidestep encode --checkpoint-dir ... "
            f"--dataset-dir {folder} --output-dir TENSORS` first, then train with --dataset-dir TENSORS."
        )


def _check_resume_from(path: Path, output_dir: Path) -> None:
    """A --resume-from path that does not exist is named, with the checkpoints that do."""
    from .errors import TrainingError
    from .training.layout import EPOCH_PREFIX, RunLayout, complete_checkpoints

    if path.exists():
        return
    folders = [path.parent, RunLayout(output_dir).checkpoints]
    found = sorted(
        {child.resolve() for folder in folders for child in complete_checkpoints(folder)},
        key=lambda child: int(child.name.removeprefix(EPOCH_PREFIX)),
    )
    where = " or ".join(dict.fromkeys(str(folder) for folder in folders))
    listing = f"Checkpoints there: {', '.join(str(child) for child in found)}." if found else f"There are no epoch_N checkpoints in {where}."
    raise TrainingError(f"--resume-from {path} does not exist. {listing} Resume from one of them, or leave out --resume-from.")


def _init_distributed() -> None:
    """Join the process group torchrun describes (one process per device; gloo on CPU, NCCL on CUDA)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint-dir", required=True,
                        help="a ComfyUI models/ folder, or the official tree holding acestep-v15-*/, vae/, Qwen3-Embedding-0.6B/")
    parser.add_argument("--model-variant", default="turbo",
                        help="turbo, base, sft, xl-turbo, xl-base, xl-sft, or a model's name as `sidestep models` lists it")
    parser.add_argument("--tokenizer", default=None,
                        help="ComfyUI's comfy/text_encoders/qwen25_tokenizer folder, for ComfyUI's text-encoder and 5 Hz LM "
                        "files (for the text encoder it is found in the ComfyUI install holding --checkpoint-dir when omitted)")
    parser.add_argument("--base-model", choices=["turbo", "base", "sft"], default=None,
                        help="the base of a custom fine-tune when its config does not say")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when available")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", *STORAGE],
        help="how the frozen weights are stored (auto: as the checkpoint stores them, bf16 for ACE-Step 1.5, upcast per "
        "layer as it runs; fp8: the DiT's Linear weights in e4m3 with per-channel scales, half of bf16)",
    )


def _add_train_parser(commands, name: str, help_text: str) -> None:
    train = commands.add_parser(name, help=help_text, formatter_class=HelpFormatter)
    lora, lokr, config = config_defaults(LoraConfig), config_defaults(LokrConfig), config_defaults(TrainConfig)
    _add_model_flags(train)
    train.add_argument("--dataset-dir", required=True, help="encoded dataset (ours, or Side-Step .pt files)")
    train.add_argument("--output-dir", required=True, help=f"run folder: {SUMMARY}")
    train.add_argument("--adapter", "--adapter-type", default=LoraConfig.kind, choices=KINDS, help="adapter type")
    train.add_argument("--rank", type=int, default=lora["rank"], help="LoRA rank")
    train.add_argument("--alpha", type=float, default=lora["alpha"], help="LoRA alpha (scale = alpha / rank)")
    train.add_argument("--dropout", type=float, default=lora["dropout"], help="LoRA dropout")
    train.add_argument("--dora", action="store_true", default=lora["use_dora"], help="weight-decomposed LoRA")
    train.add_argument("--lokr-linear-dim", type=int, default=lokr["linear_dim"], help="LoKR dimension")
    train.add_argument("--lokr-linear-alpha", type=float, default=lokr["linear_alpha"], help="LoKR alpha")
    train.add_argument("--lokr-factor", type=int, default=lokr["factor"], help="LoKR Kronecker factor (-1 = automatic)")
    train.add_argument("--lokr-decompose-both", action="store_true", default=lokr["decompose_both"], help="LoKR: decompose both Kronecker factors")
    train.add_argument("--lokr-use-tucker", action="store_true", default=lokr["use_tucker"], help="LoKR: Tucker decomposition")
    train.add_argument("--lokr-weight-decompose", action="store_true", default=lokr["weight_decompose"], help="LoKR: weight decomposition (DoRA-style)")
    train.add_argument("--target", default=lora["target"], choices=list(TARGET_PRESETS), help="which decoder layers get the adapter")
    train.add_argument("--target-modules", nargs="+", help="custom module list (overrides --target)")
    train.add_argument("--epochs", type=int, default=config["epochs"], help="passes over the dataset")
    train.add_argument("--lr", "--learning-rate", type=float, default=config["learning_rate"], help="learning rate (on resume the checkpoint's is kept)")
    train.add_argument("--optimizer", "--optimizer-type", default=config["optimizer"], choices=OPTIMIZERS, help="optimiser")
    train.add_argument("--scheduler", "--scheduler-type", default=config["scheduler"], choices=SCHEDULERS, help="learning-rate schedule over all epochs")
    train.add_argument("--warmup-steps", type=int, default=config["warmup_steps"], help="linear warm-up steps")
    train.add_argument("--batch-size", type=int, default=config["batch_size"], help="clips per batch")
    train.add_argument("--gradient-accumulation", type=int, default=config["gradient_accumulation"], help="batches per optimiser step")
    train.add_argument("--max-grad-norm", type=float, default=config["max_grad_norm"], help="gradient clipping norm")
    train.add_argument("--precision", default=config["precision"], choices=PRECISIONS, help="compute precision (auto: bf16 on CUDA and on CPUs with bf16 units (AMX, AVX-512 BF16), fp32 on other CPUs)")
    train.add_argument("--no-gradient-checkpointing", action="store_true", default=not config["gradient_checkpointing"], help="faster steps, more memory")
    train.add_argument("--seed", type=int, default=config["seed"], help="random seed (noise, timesteps, crops, order)")
    train.add_argument("--save-every", type=int, default=config["save_every"], help="write checkpoints/epoch_N every N epochs")
    train.add_argument("--timestep-mode", default=config["timestep_mode"], choices=TIMESTEP_MODES, help="auto: discrete for turbo, continuous for base/sft")
    train.add_argument("--continuous-draws", default=config["continuous_draws"], choices=CONTINUOUS_DRAWS, help="continuous timesteps: the larger of two draws (official) or one")
    train.add_argument("--cfg-ratio", type=float, default=config["cfg_ratio"], help=f"condition dropout (when not given: {per_base(lambda v: v.cfg_ratio)})")
    train.add_argument("--min-snr-gamma", type=float, default=config["min_snr_gamma"], help="min-SNR loss weighting gamma (off when not given)")
    train.add_argument("--max-latent-frames", type=int, default=config["max_latent_frames"], help=f"random crop length in {FRAMES_PER_SECOND} Hz frames (0 = whole clips)")
    train.add_argument("--num-workers", type=int, default=config["num_workers"], help="data loader worker processes")
    train.add_argument("--shift", type=float, default=config["shift"], help=f"recorded for inference (when not given: {per_base(lambda v: v.schedule.shift)})")
    train.add_argument("--num-inference-steps", type=int, default=config["num_inference_steps"], help=f"recorded for inference (when not given: {per_base(lambda v: v.schedule.steps)})")
    train.add_argument("--resume-from", default=config["resume_from"], help="'latest' (the run's newest checkpoint), a checkpoints/epoch_N folder or the training_state.pt inside it")
    train.add_argument("--log-dir", default=config["log_dir"], help="TensorBoard folder (default OUT/runs)")
    train.set_defaults(run=cmd_train)


def cmd_sample(args: argparse.Namespace) -> int:
    """Generate music (optionally with adapters) and write FLAC/WAV files."""
    from .audio import check_save_path, save_audio
    from .generate import GenerationRequest, generate

    check_save_path(args.out)
    bundle = _bundle(args)
    adapters, metadata = [], None
    if args.adapter:
        from .adapters.files import load_adapter

        strengths = args.strength or [1.0]
        for index, path in enumerate(args.adapter):
            loaded = load_adapter(path)
            adapters.append((loaded, strengths[min(index, len(strengths) - 1)]))
        metadata = adapters[0][0].metadata
    request = GenerationRequest(
        caption=args.caption,
        lyrics=args.lyrics,
        language=args.language,
        duration=args.duration,
        bpm=args.bpm,
        keyscale=args.keyscale,
        timesignature=args.timesignature,
        seed=args.seed,
        batch_size=args.batch_size,
        steps=args.steps,
        shift=args.shift,
        guidance=args.guidance,
        guidance_mode=args.guidance_mode,
    )
    result = generate(
        bundle, request, adapters, metadata, progress=lambda done, total: print(f"step {done}/{total}", flush=True)
    )
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    out = Path(args.out)
    for index in range(result.waveform.shape[0]):
        path = out if result.waveform.shape[0] == 1 else out.with_name(f"{out.stem}_{index + 1}{out.suffix}")
        save_audio(path, result.waveform[index], result.sample_rate)
        print(f"wrote {path}")
    return 0


def cmd_export_comfy(args: argparse.Namespace) -> int:
    """Write one .safetensors that ComfyUI's LoraLoaderModelOnly applies to its ACE-Step 1.5 model."""
    from .adapters.export import export_comfy
    from .adapters.files import load_adapter

    path = export_comfy(load_adapter(args.adapter), args.out)
    print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the whole job (songs → dataset → LoRA → music) on a tiny model tree, or on real checkpoints."""
    from .demo import run_demo

    run_demo(
        Path(args.workdir),
        checkpoint_dir=Path(args.checkpoint_dir) if args.checkpoint_dir else None,
        model=args.model_variant,
        audio_dir=Path(args.audio_dir) if args.audio_dir else None,
        epochs=args.epochs,
    )
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    """Label a folder of songs with ACE-Step's 5 Hz LM, writing song.txt sidecars (user-written fields are kept)."""
    from .labeling.decode import Sampling
    from .labeling.label import LabelConfig, label_songs
    from .labeling.lm import find_lms, pick_lm

    bundle = _bundle(args)
    lm = pick_lm(args.lm, find_lms([Path(args.checkpoint_dir)], []))
    sampling = Sampling(temperature=args.temperature, top_p=args.top_p, seed=args.seed, constrained=not args.free_decoding)
    config = LabelConfig(
        audio_dir=args.dataset_dir, lm_path=str(lm), tokenizer_dir=args.tokenizer, fields=tuple(args.fields.split(",")),
        overwrite=args.overwrite, trigger_word=args.trigger, sampling=sampling,
    )
    result = label_songs(
        bundle, config, callback=lambda e: print(f"[{e.index}/{e.total}] {e.status:10s} {e.file} {e.message}".rstrip(), flush=True),
        device=bundle.device, dtype=inference_dtype(bundle.dtype, bundle.device),
    )
    print(result.table())
    print(f"{result.lm_name}: {result.seconds:.1f} s, peak RAM {result.peak_ram_mib:.0f} MiB, peak VRAM {result.peak_vram_mib:.0f} MiB")
    return 1 if any(song.status == "failed" for song in result.songs) else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="sidestep", description="Train LoRA/LoKR adapters for ACE-Step 1.5.", formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser(
        "models", help="list the models in a ComfyUI models/ folder or an official checkpoint folder", formatter_class=HelpFormatter
    )
    models.add_argument("checkpoint_dir", help="a ComfyUI models/ folder, or a folder holding acestep-v15-turbo/, vae/, ...")
    models.add_argument("--filter", default="", help="show only models whose name matches (substring, then close matches)")
    models.set_defaults(run=cmd_models)

    tiny = commands.add_parser("make-tiny-checkpoints", help="write a tiny random checkpoint tree for smoke tests", formatter_class=HelpFormatter)
    tiny.add_argument("directory", help="where to write the tree")
    tiny.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    tiny.set_defaults(run=cmd_make_tiny_checkpoints)

    encode = commands.add_parser("encode", help="encode a folder of songs into a training dataset", formatter_class=HelpFormatter)
    encoding = config_defaults(EncodeConfig)
    _add_model_flags(encode)
    encode.add_argument("--dataset-dir", required=True, help="folder of songs (searched recursively) with optional sidecars")
    encode.add_argument("--output-dir", required=True, help="where the clip tensors and manifest.json go")
    encode.add_argument("--max-duration", type=float, default=encoding["max_duration"], help="split songs into clips of at most this many seconds (0 = keep whole)")
    encode.add_argument("--normalize", default=encoding["normalize"], choices=NORMALIZE_MODES)
    encode.add_argument("--min-seconds", type=float, default=encoding["min_seconds"], help="reject clips shorter than this")
    encode.add_argument("--trigger", default=encoding["custom_tag"], help="trigger word / custom tag added to every caption")
    encode.add_argument("--tag-position", default=encoding["tag_position"], choices=TAG_POSITIONS)
    encode.add_argument("--force", action="store_true", default=not encoding["skip_existing"], help="re-encode clips even when unchanged")
    encode.set_defaults(run=cmd_encode)

    label = commands.add_parser("label", help="caption, tag and transcribe songs with ACE-Step's 5 Hz LM")
    labeling, sampling = config_defaults(LabelConfig), config_defaults(Sampling)
    _add_model_flags(label)
    label.add_argument("--dataset-dir", required=True, help="folder of songs; song.txt sidecars are written beside them")
    label.add_argument("--lm", default="", help="acestep-5Hz-lm-* folder name under --checkpoint-dir, or a path (folder or ComfyUI qwen_*_ace15.safetensors)")
    label.add_argument("--fields", default=",".join(labeling["fields"]), help="comma-separated: caption, metadata, lyrics")
    label.add_argument("--overwrite", default=labeling["overwrite"], choices=OVERWRITE_MODES, help="never: skip labelled songs; empty: fill missing fields; all: rewrite")
    label.add_argument("--trigger", default=labeling["trigger_word"], help="trigger word written to every song's sidecar")
    label.add_argument("--temperature", type=float, default=sampling["temperature"], help="0 = greedy")
    label.add_argument("--top-p", type=float, default=sampling["top_p"])
    label.add_argument("--seed", type=int, default=sampling["seed"])
    label.add_argument("--free-decoding", action="store_true", default=not sampling["constrained"], help="sample freely and validate after (default: constrained)")
    label.set_defaults(run=cmd_label)

    _add_train_parser(commands, "train", "train a LoRA or LoKR adapter")
    _add_train_parser(commands, "fixed", "alias of train (Side-Step's name)")

    sample = commands.add_parser("sample", help="generate music, optionally with trained adapters", formatter_class=HelpFormatter)
    request = config_defaults(GenerationRequest)
    _add_model_flags(sample)
    sample.add_argument("--adapter", action="append", help="adapter folder/file (repeat to stack two)")
    sample.add_argument("--strength", type=float, action="append", help="strength per --adapter (default 1.0)")
    sample.add_argument("--caption", required=True, help="what the music should be")
    sample.add_argument("--lyrics", default=request["lyrics"], help="lyrics (empty: instrumental)")
    sample.add_argument("--language", default=request["language"], help="lyrics language code")
    sample.add_argument("--duration", type=float, default=request["duration"], help="seconds")
    sample.add_argument("--bpm", type=int, default=request["bpm"], help="tempo")
    sample.add_argument("--keyscale", default=request["keyscale"], help="key and scale, e.g. 'C major'")
    sample.add_argument("--timesignature", default=request["timesignature"], help="time signature, e.g. 4")
    sample.add_argument("--seed", type=int, default=request["seed"], help="random seed")
    sample.add_argument("--batch-size", type=int, default=request["batch_size"], help="songs to generate (NAME_1, NAME_2, ...)")
    sample.add_argument("--steps", type=int, default=request["steps"], help=f"0 = from the adapter, else the variant's ({per_base(lambda v: v.schedule.steps)})")
    sample.add_argument("--shift", type=float, default=request["shift"], help=f"0 = from the adapter, else the variant's ({per_base(lambda v: v.schedule.shift)})")
    sample.add_argument("--guidance", type=float, default=request["guidance"], help=f"when not given: the variant's ({per_base(lambda v: v.guidance)}; 1 = off)")
    sample.add_argument("--guidance-mode", default=request["guidance_mode"], choices=GUIDANCE_MODES, help="guidance for base/sft")
    sample.add_argument("--out", default="song.flac", help=".flac or .wav")
    sample.set_defaults(run=cmd_sample)

    export = commands.add_parser("export-comfy", help="export an adapter as one ComfyUI-native .safetensors", formatter_class=HelpFormatter)
    export.add_argument("adapter", help="adapter folder, LoKR file, checkpoint folder or training_state.pt")
    export.add_argument("out", help="output .safetensors (e.g. ComfyUI/models/loras/my_lora.safetensors)")
    export.set_defaults(run=cmd_export_comfy)

    demo = commands.add_parser("demo", help="songs → dataset → LoRA → music on a tiny model tree (or real checkpoints)", formatter_class=HelpFormatter)
    demo.add_argument("--workdir", default="sidestep-demo", help="where everything the demo makes goes")
    demo.add_argument("--checkpoint-dir", default=None, help="use real checkpoints instead of a tiny random tree")
    demo.add_argument("--model-variant", default="turbo", help="model to use with --checkpoint-dir")
    demo.add_argument("--audio-dir", default=None, help="your songs (default: a few synthetic ones)")
    demo.add_argument("--epochs", type=int, default=4, help="training epochs")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print a one-paragraph message and exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except SideStepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the machine, not the input: a full disk, a folder that cannot be written, ...
        print(f"error: {error}. Check that path, its permissions and the free space on its disk.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

"""Command line: `python -m sidestep <command>` for headless machines (the same core the ComfyUI nodes use)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .adapters.adaptive import RANK_MAP_FILE
from .adapters.config import AdapterConfig
from .adapters.kinds import KINDS, kind_named
from .dataset.settings import EncodeConfig
from .errors import SideStepError
from .labeling.settings import LabelConfig, Sampling
from .request import GenerationRequest
from .settings import add_flags, from_flags
from .training.config import TrainConfig
from .training.layout import SUMMARY
from .variants import STORAGE, inference_dtype, resolve_device, resolve_storage
from .wording import quantity

AUTO_RANK_MAP = "auto"
# The training settings the rank analysis draws its clips, noise and timesteps with.
ANALYSIS_TRAINING_SETTINGS = ("seed", "precision", "timestep_mode", "max_latent_frames")


def cmd_models(args: argparse.Namespace) -> int:
    """List the models found under a checkpoint root, then the ACE-Step-looking files skipped and why."""
    from .bundle import no_models_found, survey_models
    from .model_files import describe_skipped
    from .model_folders import describe_models, filter_models

    entries, skipped = survey_models(args.checkpoint_dir)
    if not entries and not skipped:
        raise no_models_found(args.checkpoint_dir, skipped)
    if args.filter:
        entries = filter_models(entries, args.filter)
    print(describe_models(entries))
    if skipped:
        print(f"\nSkipped {len(skipped)} file(s) that look like ACE-Step 1.5 but cannot be used:")
        print(describe_skipped(skipped))
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
    from .dataset.encode import encode_dataset

    config = EncodeConfig(audio_dir=args.dataset_dir, output_dir=args.output_dir, **from_flags(EncodeConfig, args))

    def report(event) -> None:
        detail = f" ({event.reason})" if event.reason else f" {event.seconds:.1f} s"
        print(f"[{event.index}/{event.total}] {event.status:8s} {event.file}{detail}", flush=True)

    result = encode_dataset(_bundle(args), config, callback=report)
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(
        f"Encoded {result.encoded}, kept {result.skipped} unchanged, rejected {len(result.rejected)}; "
        f"{quantity(len(result.manifest.clips), 'clip')} in {result.output_dir}"
    )
    return 0


def _adapter_config(args: argparse.Namespace):
    """The chosen kind's settings the flags describe (--target-modules chooses target custom)."""
    from .adapters.config import CUSTOM_TARGET

    config_class = kind_named(args.adapter).config
    values = from_flags(config_class, args)
    if values["custom_modules"]:
        values["target"] = CUSTOM_TARGET
    return _with_rank_map(args, config_class(**values))


def _with_rank_map(args: argparse.Namespace, config):
    """The LoRA config with the --rank-map file's ranks ('auto': the dataset's rank_map.json), when one is given."""
    if not getattr(args, "rank_map", None):
        return config
    from .adapters.adaptive import config_from_rank_map

    if config.kind != "lora":
        from .errors import AdapterError

        raise AdapterError("--rank-map sizes LoRA modules; leave it out for this kind, or train with --adapter lora.")

    path = Path(args.dataset_dir) / RANK_MAP_FILE if args.rank_map == AUTO_RANK_MAP else Path(args.rank_map)
    return config_from_rank_map(path, config)


def cmd_analyse(args: argparse.Namespace) -> int:
    """Measure each module on the encoded dataset and write the adaptive-rank map beside it (or to --out)."""
    from .training.rank_analysis import analyse_ranks

    _check_dataset_dir(Path(args.dataset_dir))
    adapter = _adapter_config(args)
    from .adapters.adaptive import AdaptiveRankSettings

    train_config = TrainConfig(output_dir="", **from_flags(TrainConfig, args))
    settings = AdaptiveRankSettings(**from_flags(AdaptiveRankSettings, args))
    rank_map = analyse_ranks(_bundle(args), args.dataset_dir, adapter, settings, train_config)
    path = rank_map.save(Path(args.out) if args.out else Path(args.dataset_dir) / RANK_MAP_FILE)
    print(rank_map.summary())
    print(f"wrote {path}; train with --rank-map {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train an adapter (any registered kind) on an encoded dataset, printing a progress bar."""
    from .interrupt import stop_on_signals
    from .progress import ProgressPrinter
    from .training import distributed
    from .training.events import StopSignal
    from .training.run import LATEST, TrainingRun

    _check_dataset_dir(Path(args.dataset_dir))
    resume_from = from_flags(TrainConfig, args)["resume_from"]
    if resume_from and resume_from != LATEST:
        _check_resume_from(resume_from, Path(args.output_dir))
        # Relative to the working directory here (the core reads a relative path as inside the run folder).
        resume_from = str(Path(resume_from).absolute())
    adapter = _adapter_config(args)
    config = TrainConfig(**{**from_flags(TrainConfig, args), "resume_from": resume_from}, output_dir=args.output_dir)
    if args.dry_run:
        return _print_estimate(TrainingRun(_bundle(args), args.dataset_dir, adapter, config))
    _init_distributed()
    run = TrainingRun(_bundle(args), args.dataset_dir, adapter, config)
    stop = StopSignal()
    with stop_on_signals(stop) as received:
        outcome = run.train(ProgressPrinter(), stop)
    if distributed.rank_and_world()[0] != 0:
        return 128 + received[0] if received else 0
    result = outcome.result
    if result.best_epoch is not None:
        print(f"Lowest validation loss: {result.best_text()}, checkpoint {run.layout.checkpoint(result.best_epoch)}")
    print(f"TensorBoard logs in {config.log_dir or run.layout.tensorboard}")
    if received:
        print(
            f"Stopped by {stop.reason.removeprefix('stopped by ')}: checkpoint {outcome.result.last_checkpoint}, "
            f"adapter {outcome.adapter_dir}. Continue with the same command and --resume-from latest.",
            file=sys.stderr,
        )
        return 128 + received[0]
    return 0


def _print_estimate(run) -> int:
    """`train --dry-run`: the run's GPU memory estimate (and a warning when the CUDA device here lacks the room)."""
    from .training.vram import fit_warning

    estimate = run.vram_estimate()
    model = run.bundle.entry.config
    print(f"{run.adapter_config.describe()} on {run.bundle.variant} ({model.num_hidden_layers} layers, hidden {model.hidden_size})")
    print("\n".join(estimate.lines()))
    warning = fit_warning(estimate, run.bundle.device)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print("Dry run: nothing was loaded or trained.")
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


def _check_resume_from(text: str, output_dir: Path) -> None:
    """A --resume-from path that does not exist is named, with the checkpoints that do (and 'latest' if meant)."""
    import difflib

    from .errors import TrainingError
    from .training.layout import EPOCH_PREFIX, RunLayout, complete_checkpoints
    from .training.run import LATEST

    path = Path(text)
    if path.exists():
        return
    if difflib.get_close_matches(text.strip().lower(), [LATEST], n=1, cutoff=0.6):
        raise TrainingError(f"--resume-from {text}: no such checkpoint. Did you mean '{LATEST}'?")
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
    _add_model_flags(train)
    train.add_argument("--dataset-dir", required=True, help="encoded dataset (ours, or Side-Step .pt files)")
    train.add_argument("--output-dir", required=True, help=f"run folder: {SUMMARY}")
    kinds = "; ".join(kind.summary for kind in KINDS.values())
    train.add_argument("--adapter", "--adapter-type", default="lora", choices=list(KINDS), help=f"adapter type ({kinds})")
    add_flags(train, *(kind.config for kind in KINDS.values()), AdapterConfig, TrainConfig)
    train.add_argument("--rank-map", default=None,
                       help=f"LoRA: per-module ranks from `sidestep analyse` (a rank map file; '{AUTO_RANK_MAP}': the dataset's {RANK_MAP_FILE})")
    train.add_argument("--dry-run", action="store_true",
                       help="print the estimated GPU memory of these settings and exit, without loading the model or training")
    train.set_defaults(run=cmd_train)


def _add_analyse_parser(commands) -> None:
    from .adapters.adaptive import AdaptiveRankSettings

    analyse = commands.add_parser(
        "analyse", help="measure each LoRA module on an encoded dataset and write an adaptive-rank map for `train --rank-map`",
        formatter_class=HelpFormatter,
    )
    _add_model_flags(analyse)
    analyse.add_argument("--dataset-dir", required=True, help="encoded dataset; the map is written into it")
    analyse.add_argument("--out", default=None, help=f"where the map goes (default DATASET/{RANK_MAP_FILE})")
    # The uniform LoRA (its parameter count is the budget unless --rank-budget is given) and the training draws it
    # is measured with, as in training.
    add_flags(analyse, kind_named("lora").config, AdapterConfig)
    add_flags(analyse, TrainConfig, only=ANALYSIS_TRAINING_SETTINGS)
    add_flags(analyse, AdaptiveRankSettings)
    analyse.set_defaults(run=cmd_analyse, adapter="lora")


def cmd_sample(args: argparse.Namespace) -> int:
    """Generate music (optionally with adapters) and write FLAC/WAV files."""
    from .audio import check_save_path, save_audio
    from .generate import generate

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
    request = GenerationRequest(caption=args.caption, **from_flags(GenerationRequest, args))
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
        **({"epochs": args.epochs} if args.epochs else {}),
    )
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    """Label a folder of songs with ACE-Step's 5 Hz LM, writing song.txt sidecars (user-written fields are kept)."""
    from .labeling.label import label_songs
    from .labeling.lm import find_lms, pick_lm

    bundle = _bundle(args)
    lm = pick_lm(args.lm, find_lms([Path(args.checkpoint_dir)], []))
    config = LabelConfig(
        audio_dir=args.dataset_dir, lm_path=str(lm), tokenizer_dir=args.tokenizer,
        sampling=Sampling(**from_flags(Sampling, args)), **from_flags(LabelConfig, args),
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
    parser = argparse.ArgumentParser(prog="sidestep", description="Train LoRA, DoRA, LoKR, LoHA and OFT adapters for ACE-Step 1.5.", formatter_class=HelpFormatter)
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
    _add_model_flags(encode)
    encode.add_argument("--dataset-dir", required=True, help="folder of songs (searched recursively) with optional sidecars")
    encode.add_argument("--output-dir", required=True, help="where the clip tensors and manifest.json go")
    add_flags(encode, EncodeConfig)
    encode.set_defaults(run=cmd_encode)

    label = commands.add_parser("label", help="caption, tag and transcribe songs with ACE-Step's 5 Hz LM", formatter_class=HelpFormatter)
    _add_model_flags(label)
    label.add_argument("--dataset-dir", required=True, help="folder of songs; song.txt sidecars are written beside them")
    label.add_argument("--lm", default="", help="acestep-5Hz-lm-* folder name under --checkpoint-dir, or a path (folder or ComfyUI qwen_*_ace15.safetensors); empty: the first one found")
    add_flags(label, LabelConfig, Sampling)
    label.set_defaults(run=cmd_label)

    _add_train_parser(commands, "train", "train an adapter (LoRA, DoRA, LoKR, LoHA, OFT)")
    _add_train_parser(commands, "fixed", "alias of train (Side-Step's name)")
    _add_analyse_parser(commands)

    sample = commands.add_parser("sample", help="generate music, optionally with trained adapters", formatter_class=HelpFormatter)
    _add_model_flags(sample)
    sample.add_argument("--adapter", action="append", help="adapter folder/file (repeat to stack two)")
    sample.add_argument("--strength", type=float, action="append", help="strength per --adapter (default 1.0)")
    sample.add_argument("--caption", required=True, help="what the music should be")
    add_flags(sample, GenerationRequest)
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
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's own, enough for a falling validation loss)")
    demo.set_defaults(run=cmd_demo)
    return parser


def in_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """A core message with each setting it names in backticks (`resume_from`) spelled as its flag (--resume-from)."""
    import re

    flags = {
        action.dest.rsplit(".", 1)[-1]: next(option for option in action.option_strings if option.startswith("--"))
        for commands in parser._subparsers._group_actions
        for command in commands.choices.values()
        for action in command._actions
        if any(option.startswith("--") for option in action.option_strings)
    }
    return re.sub(r"`(\w+)`", lambda match: flags.get(match[1], match[0]), message)


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print a one-paragraph message and exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except SideStepError as error:
        print(f"error: {in_flags(str(error), parser)}", file=sys.stderr)
        return 2
    except OSError as error:  # the machine, not the input: a full disk, a folder that cannot be written, ...
        print(f"error: {error}. Check that path, its permissions and the free space on its disk.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

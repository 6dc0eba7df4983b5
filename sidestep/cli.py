"""Command line: `python -m sidestep <command>` for headless machines (the same core the ComfyUI nodes use)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import SideStepError


def cmd_models(args: argparse.Namespace) -> int:
    """List the models found under a checkpoint root."""
    from .checkpoints import describe_models, filter_models, scan_models

    entries = scan_models(args.checkpoint_dir)
    if args.filter:
        entries = filter_models(entries, args.filter)
    print(describe_models(entries))
    return 0


def cmd_make_tiny_checkpoints(args: argparse.Namespace) -> int:
    """Write a tiny, complete checkpoint tree with random weights (for tests and smoke runs)."""
    from .testing import make_tiny_checkpoints

    root = make_tiny_checkpoints(Path(args.directory), seed=args.seed)
    print(f"Tiny checkpoint tree written to {root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="sidestep", description="Train LoRA/LoKR adapters for ACE-Step 1.5.")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list the models under a checkpoint folder")
    models.add_argument("checkpoint_dir", help="folder holding acestep-v15-turbo/, vae/, Qwen3-Embedding-0.6B/, ...")
    models.add_argument("--filter", default="", help="show only models whose name matches (substring, then close matches)")
    models.set_defaults(run=cmd_models)

    tiny = commands.add_parser("make-tiny-checkpoints", help="write a tiny random checkpoint tree for smoke tests")
    tiny.add_argument("directory")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(run=cmd_make_tiny_checkpoints)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print a one-paragraph message and exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except SideStepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

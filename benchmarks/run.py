"""`python -m benchmarks`: run the suites for the chosen sizes, print the table, write benchmarks/results/<time>.json."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

import torch

from sidestep.memory import return_freed_memory

from .encoding import vae_rows
from .labeling import label_rows
from .models import SIZES
from .report import Report, Row, Target, format_table, write_json
from .sampling import sampling_rows
from .settings import RunSettings
from .timing import Repeats, environment, load_average
from .trainer_runs import trainer_rows
from .training import compile_rows, loading_rows, step_rows

RESULTS = Path(__file__).resolve().parent / "results"
Suite = Callable[[str, RunSettings], "list[Row] | tuple[list[Row], list[Target]]"]
# name → (sizes it runs at, whether --quick skips it, function)
SUITES: dict[str, tuple[tuple[str, ...], bool, Suite]] = {
    "steps": (("tiny", "small", "full"), False, step_rows),
    "compile": (("small",), True, compile_rows),
    "loading": (("tiny", "small"), False, loading_rows),
    "sampling": (("tiny", "small", "full"), False, sampling_rows),
    "trainer": (("tiny", "small", "full"), False, trainer_rows),
    "vae": (("tiny", "full"), False, vae_rows),
    "labeling": (("tiny", "small", "full"), True, label_rows),
}
NOTES = (
    "Each figure is the median of n repetitions (min–max shown); ratios compare medians measured in this run.",
    "CPU memory is the process's resident high-water mark (VmHWM) in a fresh process per configuration; "
    "it includes ~0.7 GB of imported libraries (torch, PEFT, LyCORIS).",
)


def _choices(parser: argparse.ArgumentParser, text: str, allowed: Iterable[str], what: str) -> tuple[str, ...]:
    """A comma-separated list of names, each one of `allowed` (a usage error otherwise)."""
    allowed = tuple(allowed)
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        parser.error(f"unknown {what}(s) {unknown or list(names)}; choose from {', '.join(allowed)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated: tiny, small, full (default: all)")
    parser.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated: {', '.join(SUITES)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="one repetition, no warm-up, 10 s steps only, no torch.compile")
    parser.add_argument("--long", action="store_true", help="also encode a 10-minute song (slow on a CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per figure (default 3)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak in TFLOP/s for MFU (default: looked up by card name)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="where the JSON goes (default benchmarks/results)")
    args = parser.parse_args(argv)
    args.sizes = _choices(parser, args.sizes, SIZES, "size")
    args.suites = _choices(parser, args.suites, SUITES, "suite")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def run_suites(settings: RunSettings, report: Report) -> bool:
    """Run every suite at every chosen size it applies to; a failing suite is noted and the others still run."""
    ok = True
    for size in settings.sizes:
        for name in settings.suites:
            sizes, slow, suite = SUITES[name]
            if size not in sizes or (settings.quick and slow):
                continue
            started = time.perf_counter()
            print(f"[{size}] {name} …", file=sys.stderr, flush=True)
            try:
                result = suite(size, settings)
            except Exception as error:  # one broken suite must not lose the others' figures
                traceback.print_exc()
                report.notes.append(f"FAILED: {name} at {size}: {type(error).__name__}: {str(error).splitlines()[0]}")
                ok = False
                continue
            rows, targets = result if isinstance(result, tuple) else (result, [])
            report.rows += rows
            report.targets += targets
            print(f"[{size}] {name} done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON; exit code 1 if any suite failed."""
    args = parse_args(argv)
    threads, lycoris = torch.get_num_threads(), logging.getLogger("LyCORIS")
    level = lycoris.level
    torch.set_num_threads(args.threads or threads)
    lycoris.setLevel(logging.ERROR)  # its per-module INFO lines would interleave with the table
    return_freed_memory()  # as the trainer does, so in-process steps run with its allocator settings
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)
        lycoris.setLevel(level)


def _run(args: argparse.Namespace) -> int:
    """Everything `main` does once threads and logging are set."""
    repeats = Repeats(warmup=0, repeats=1) if args.quick else Repeats(warmup=1, repeats=args.repeats)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sidestep-bench-") as scratch:
        settings = RunSettings(args.sizes, args.suites, repeats, Path(scratch), quick=args.quick, long=args.long,
                               peak_tflops=args.peak_tflops)
        choices = {"sizes": list(args.sizes), "suites": list(args.suites), "quick": args.quick, "long": args.long}
        report = Report(environment(), {**choices, "warmup": repeats.warmup, "repeats": repeats.repeats})
        ok = run_suites(settings, report)
    report.environment["load_after"] = load_average()
    report.environment["duration_seconds"] = round(time.perf_counter() - started, 1)
    report.notes[:0] = NOTES
    path = write_json(report, args.output_dir / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
    print(format_table(report))
    print(f"\nwrote {path} ({report.environment['duration_seconds']:.0f} s)")
    return 0 if ok else 1

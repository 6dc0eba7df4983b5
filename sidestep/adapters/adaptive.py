"""Adaptive rank ("Preprocessing++"): each LoRA module's rank chosen from measurements on the user's data.

The measurement (`training/rank_analysis.py`) gives every candidate module its Fisher information (how much the
training loss cares about its weight: the mean squared gradient, summed over the weight) split over directions (the
eigenvalues of the per-clip gradients' second moment, which add up to it). Here they become a `RankMap`: ranks are
handed out greedily, a module's first `min_rank` directions or one more direction at a time, to whichever step adds the
most Fisher information per trainable parameter, within a parameter budget and up to a maximum rank; steps that add
nothing are never taken, so modules the loss ignores get no adapter. The map is written beside the dataset as
readable JSON and becomes PEFT's per-module `rank_pattern` / `alpha_pattern` for training.
"""

from __future__ import annotations

import heapq
import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..errors import AdapterError
from ..settings import setting
from .config import CUSTOM_TARGET, TARGET_PRESETS, LoraConfig
from .keys import first_few

RANK_MAP_FILE = "rank_map.json"
MAP_FORMAT = "sidestep-rank-map"
MAP_VERSION = 1
# "Effective rank" in the summary: the directions that hold this share of a module's gradient energy.
ENERGY_SHARE = 0.9
SUMMARY_ROWS = 24


@dataclass(frozen=True)
class AdaptiveRankSettings:
    """How the rank analysis reads the data and shares out the ranks."""

    batches: int = setting(
        8, help="Clips read to measure the modules (each one forward and backward pass); more gives a steadier map.",
        min=1, max=10_000, flags=("--batches",),
    )
    rank_budget: int | None = setting(
        None, help="Trainable LoRA parameters to share out among the modules.", min=1,
        auto="as many as the uniform rank on the same modules", flags=("--rank-budget",),
    )
    min_rank: int = setting(4, help="The smallest rank a module that gets an adapter receives.", min=1, max=1024,
                            flags=("--min-rank",))
    max_rank: int | None = setting(
        None, help="The largest rank one module may receive.", min=1, max=1024, auto="twice the uniform rank",
        flags=("--max-rank",),
    )

    def __post_init__(self) -> None:
        for name in ("batches", "rank_budget", "min_rank", "max_rank"):
            value = getattr(self, name)
            if value is None and name in ("rank_budget", "max_rank"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AdapterError(f"Adaptive-rank setting {name} must be a whole number above 0, got {value!r}.")
        if self.max_rank is not None and self.max_rank < self.min_rank:
            raise AdapterError(
                f"Adaptive-rank max_rank ({self.max_rank}) is below min_rank ({self.min_rank}); raise max_rank or lower min_rank."
            )

    def resolved_max_rank(self, rank: int) -> int:
        """The largest rank per module: the setting, else twice the uniform rank (never below min_rank)."""
        return self.max_rank if self.max_rank is not None else max(2 * rank, self.min_rank)


@dataclass(frozen=True)
class ModuleStats:
    """One candidate module as measured: shape (out, in), Fisher information and its split over directions (largest
    first; they add up to `fisher`)."""

    name: str
    shape: tuple[int, int]
    fisher: float
    spectrum: tuple[float, ...]

    @property
    def cost(self) -> int:
        """Trainable parameters per unit of rank (A's row plus B's column)."""
        return self.shape[0] + self.shape[1]

    def energy(self, rank: int) -> float:
        """The share of the Fisher information the first `rank` directions hold (0 when there is none)."""
        total = sum(self.spectrum)
        return sum(self.spectrum[:rank]) / total if total > 0 else 0.0

    def effective_rank(self) -> int:
        """The directions that hold ENERGY_SHARE of the Fisher information."""
        return next((rank for rank in range(1, len(self.spectrum) + 1) if self.energy(rank) >= ENERGY_SHARE), len(self.spectrum))


def allocate_ranks(stats: list[ModuleStats], budget: int, min_rank: int, max_rank: int) -> dict[str, int]:
    """Ranks within `budget` parameters: greedily the step (a new module at `min_rank`, or one more rank) that adds the
    most Fisher information per parameter; steps that add nothing are never taken (ties: module order)."""
    ranks = {module.name: 0 for module in stats}

    def step(index: int) -> tuple[float, int, int, int] | None:
        module = stats[index]
        now = ranks[module.name]
        after = min_rank if now == 0 else now + 1
        gain = sum(module.spectrum[now:after])
        cost = (after - now) * module.cost
        return (-gain / cost, index, after, cost) if after <= max_rank and gain > 0 else None

    heap = [entry for entry in map(step, range(len(stats))) if entry is not None]
    heapq.heapify(heap)
    left = budget
    while heap:
        _, index, after, cost = heapq.heappop(heap)
        if cost > left:
            continue
        ranks[stats[index].name] = after
        left -= cost
        following = step(index)
        if following is not None:
            heapq.heappush(heap, following)
    return ranks


@dataclass(frozen=True)
class RankMap:
    """The analysis' result: per-module rank and score, with what it was made from (JSON beside the dataset)."""

    modules: tuple[ModuleStats, ...]
    ranks: dict[str, int]
    uniform_rank: int
    alpha: float
    target: str
    custom_modules: tuple[str, ...]
    budget: int
    settings: dict[str, Any]
    model: dict[str, str]
    dataset_hash: str

    @property
    def used(self) -> int:
        """Trainable parameters the map's ranks take."""
        return sum(self.ranks[module.name] * module.cost for module in self.modules)

    def pairs(self) -> tuple[tuple[str, int], ...]:
        """(module, rank) of every module that gets an adapter, in module order (LoraConfig.rank_map)."""
        return tuple((module.name, self.ranks[module.name]) for module in self.modules if self.ranks[module.name] > 0)

    def scores(self) -> dict[str, float]:
        """Each module's Fisher information relative to the largest (1.0 = the module the loss cares most about)."""
        top = max((module.fisher for module in self.modules), default=0.0)
        return {module.name: module.fisher / top if top > 0 else 0.0 for module in self.modules}

    def adapter_config(self, config: LoraConfig) -> LoraConfig:
        """`config` adapting exactly the map's modules at their ranks (scale alpha / rank as `config` says)."""
        return _with_ranks(config, self.pairs(), self.target, self.custom_modules, "The rank analysis")

    def to_json(self) -> dict[str, Any]:
        """The readable file form."""
        scores = self.scores()
        return {
            "format": MAP_FORMAT,
            "version": MAP_VERSION,
            "model": self.model,
            "dataset_hash": self.dataset_hash,
            "adapter": {"kind": "lora", "uniform_rank": self.uniform_rank, "alpha": self.alpha, "target": self.target,
                        "custom_modules": list(self.custom_modules)},
            "budget": {"parameters": self.budget, "used": self.used},
            "settings": self.settings,
            "modules": {
                module.name: {
                    "rank": self.ranks[module.name],
                    "score": round(scores[module.name], 6),
                    "fisher": module.fisher,
                    "effective_rank": module.effective_rank(),
                    "shape": list(module.shape),
                    "spectrum": list(module.spectrum),
                }
                for module in self.modules
            },
        }

    def save(self, path: str | Path) -> Path:
        """Write the map as JSON (atomically); returns the path."""
        path = Path(path)
        write_text_atomic(path, json.dumps(self.to_json(), indent=2) + "\n")
        return path

    def summary(self, rows: int = SUMMARY_ROWS) -> str:
        """A short table: the totals, then the modules by score (the first `rows`)."""
        scores = self.scores()
        chosen = [rank for rank in self.ranks.values() if rank > 0]
        span = f"ranks {min(chosen)}-{max(chosen)}" if chosen else "no module chosen"
        totals = (
            f"Adaptive rank: {len(chosen)} of {len(self.modules)} modules, {span}; {self.used:,} of {self.budget:,} "
            f"parameters (uniform rank {self.uniform_rank} on {self.target})"
        )
        lines = [totals, f"{'module':<40} {'rank':>4} {'score':>6} {'eff.rank':>8}"]
        ordered = sorted(self.modules, key=lambda module: (-scores[module.name], module.name))
        for module in ordered[:rows]:
            lines.append(f"{module.name:<40} {self.ranks[module.name]:>4} {scores[module.name]:>6.3f} {module.effective_rank():>8}")
        if len(ordered) > rows:
            lines.append(f"... {len(ordered) - rows} more modules in {RANK_MAP_FILE}")
        return "\n".join(lines)


def build_rank_map(
    stats: list[ModuleStats], config: LoraConfig, settings: AdaptiveRankSettings, model: dict[str, str], dataset_hash: str
) -> RankMap:
    """The map for measured `stats`: budget (the setting, else the uniform rank's parameters) shared out in bounds."""
    budget = settings.rank_budget or config.rank * sum(module.cost for module in stats)
    ranks = allocate_ranks(stats, budget, settings.min_rank, settings.resolved_max_rank(config.rank))
    return RankMap(
        modules=tuple(stats), ranks=ranks, uniform_rank=config.rank, alpha=float(config.alpha), target=config.target,
        custom_modules=tuple(config.custom_modules), budget=budget,
        settings={"batches": settings.batches, "rank_budget": settings.rank_budget, "min_rank": settings.min_rank,
                  "max_rank": settings.resolved_max_rank(config.rank)},
        model=model, dataset_hash=dataset_hash,
    )


def _map_problem(data: Any) -> str | None:
    """What keeps `data` from being a rank map written by `RankMap.save`, or None."""
    if not isinstance(data, dict) or data.get("format") != MAP_FORMAT:
        return f'it is not a Side-Step rank map (no "format": "{MAP_FORMAT}")'
    adapter, modules = data.get("adapter"), data.get("modules")
    if not isinstance(adapter, dict) or not isinstance(modules, dict) or not modules:
        return 'its "adapter" or "modules" entry is missing or empty'
    if adapter.get("target") not in (CUSTOM_TARGET, *TARGET_PRESETS) or not isinstance(adapter.get("custom_modules", []), list):
        return f'its target {adapter.get("target")!r} is not a target preset or "custom"'
    for name, entry in modules.items():
        rank = entry.get("rank") if isinstance(entry, dict) else None
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            return f"module {name!r} has the rank {rank!r}, not a whole number of 0 or more"
    for name in ("uniform_rank", "alpha"):
        value = adapter.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            return f'its "{name}" is {value!r}, not a number above 0'
    return None


def read_rank_map(path: str | Path) -> dict[str, Any]:
    """A rank map file's JSON, checked; AdapterError naming the file and what is wrong."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / RANK_MAP_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"Rank map {path} does not exist. Run `python -m sidestep analyse` (or Analyse Rank) first.") from None
    except (OSError, ValueError, RecursionError) as error:
        raise AdapterError(f"Rank map {path} cannot be read as JSON ({error}). Run the rank analysis again.") from error
    problem = _map_problem(data)
    if problem:
        raise AdapterError(f"Rank map {path}: {problem}. Run the rank analysis again to write a fresh one.")
    return data


def config_from_rank_map(path: str | Path, config: LoraConfig) -> LoraConfig:
    """`config` with the ranks and modules of the map file at `path` (a folder means its rank_map.json)."""
    data = read_rank_map(path)
    adapter = data["adapter"]
    pairs = tuple((name, entry["rank"]) for name, entry in data["modules"].items() if entry["rank"] > 0)
    return _with_ranks(config, pairs, adapter["target"], tuple(adapter.get("custom_modules", [])), f"Rank map {path}")


def _with_ranks(config: LoraConfig, pairs: tuple[tuple[str, int], ...], target: str, custom: tuple[str, ...], where: str) -> LoraConfig:
    """`config` adapting exactly `pairs` (module, rank) out of `target`; AdapterError when no module gets a rank."""
    if not pairs:
        raise AdapterError(
            f"{where} gives no module an adapter (the loss showed no gradient on the data read). "
            "Check the dataset, or analyse more batches."
        )
    return replace(config, rank_map=pairs, target=target, custom_modules=custom)


def mapped_modules(config: LoraConfig, modules: list[str]) -> list[str]:
    """The modules a LoRA adapts: `modules` (its target's), or those of its rank map, which must be among them."""
    if not config.rank_map:
        return modules
    named = {name for name, _ in config.rank_map}
    unknown = sorted(named - set(modules))
    if unknown:
        raise AdapterError(
            f"The rank map names {first_few(unknown)}, which the target {config.target!r} does not select in this decoder. "
            "Run the rank analysis again on this model."
        )
    return [name for name in modules if name in named]


def peft_patterns(config: LoraConfig) -> dict[str, dict[str, float]]:
    """PEFT's `rank_pattern` / `alpha_pattern` for a rank map (each alpha keeps the scale alpha / rank); {} without."""
    if not config.rank_map:
        return {}
    keys = {name: re.escape(name) for name, _ in config.rank_map}
    return {
        "rank_pattern": {keys[name]: rank for name, rank in config.rank_map},
        "alpha_pattern": {keys[name]: config.alpha * rank / config.rank for name, rank in config.rank_map},
    }

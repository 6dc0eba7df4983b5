"""One default per setting: every setting a node, the CLI and the core share starts from the core's default and
offers the core's choices. The node schemas are read from the pack loaded in-process, as ComfyUI loads it."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

from sidestep.adapters.config import KINDS, TARGET_PRESETS, LokrConfig, LoraConfig
from sidestep.cli import build_parser
from sidestep.dataset.settings import NORMALIZE_MODES, EncodeConfig
from sidestep.dataset.sidecars import TAG_POSITIONS
from sidestep.labeling.settings import OVERWRITE_MODES, LabelConfig, Sampling
from sidestep.request import GUIDANCE_MODES, GenerationRequest
from sidestep.training.config import CONTINUOUS_DRAWS, OPTIMIZERS, PRECISIONS, SCHEDULERS, TIMESTEP_MODES, TrainConfig
from sidestep.variants import STORAGE
from tests.comfyui.test_model_patches import PACK_MODULE, comfy  # noqa: F401  (the in-process ComfyUI fixture)

NODES = {
    "train": ("train", "TrainAdapter"),
    "adapter": ("adapters", "ConfigureAdapter"),
    "encode": ("dataset", "EncodeDataset"),
    "sample": ("sample", "SampleWithShift"),
    "label": ("label", "LabelSongs"),
    "load": ("model", "LoadCheckpoint"),
}
REQUIRED = {
    "train": ["--checkpoint-dir", "m", "--dataset-dir", "d", "--output-dir", "o"],
    "encode": ["--checkpoint-dir", "m", "--dataset-dir", "d", "--output-dir", "o"],
    "label": ["--checkpoint-dir", "m", "--dataset-dir", "d"],
    "sample": ["--checkpoint-dir", "m", "--caption", "c"],
}
same: Callable[[Any], Any] = lambda value: value  # noqa: E731
negated: Callable[[Any], Any] = lambda value: not value  # noqa: E731


def auto_is(auto: Any) -> Callable[[Any], Any]:
    """A widget whose `auto` value stands for the core's None."""
    return lambda value: None if value == auto else value


def has_group(group: str) -> Callable[[Any], Any]:
    """Whether a label field group is among the chosen ones (a tuple in the core, comma-separated on the CLI)."""
    return lambda fields: group in (fields.split(",") if isinstance(fields, str) else fields)


@dataclass(frozen=True)
class Shared:
    """One core setting and where a node or the CLI offers it; `*_value` turn a widget or flag into the core's value."""

    core: type
    name: str
    node: tuple[str, str] | None = None  # (NODES key, input id)
    cli: tuple[str, str] | None = None  # (command, argparse dest)
    node_value: Callable[[Any], Any] = same
    cli_value: Callable[[Any], Any] = same
    core_value: Callable[[Any], Any] = same


SHARED = [
    *(Shared(TrainConfig, name, ("train", name), ("train", name)) for name in (
        "epochs", "optimizer", "scheduler", "warmup_steps", "batch_size", "gradient_accumulation", "precision", "seed",
        "save_every", "timestep_mode",
    )),
    Shared(TrainConfig, "learning_rate", ("train", "learning_rate"), ("train", "lr")),
    Shared(TrainConfig, "gradient_checkpointing", ("train", "gradient_checkpointing"), ("train", "no_gradient_checkpointing"), cli_value=negated),
    Shared(TrainConfig, "cfg_ratio", ("train", "cfg_ratio"), ("train", "cfg_ratio"), node_value=auto_is(-1.0)),
    Shared(TrainConfig, "resume_from", ("train", "resume_from"), ("train", "resume_from"), node_value=auto_is("")),
    *(Shared(TrainConfig, name, ("train", name)) for name in ("preview_caption", "preview_every")),
    *(Shared(TrainConfig, name, cli=("train", name)) for name in (
        "max_grad_norm", "continuous_draws", "min_snr_gamma", "max_latent_frames", "num_workers", "shift",
        "num_inference_steps", "log_dir",
    )),
    Shared(LoraConfig, "kind", ("adapter", "adapter_type"), ("train", "adapter")),
    *(Shared(LoraConfig, name, ("adapter", name), ("train", name)) for name in ("rank", "alpha", "dropout", "target")),
    Shared(LoraConfig, "use_dora", ("adapter", "weight_decompose"), ("train", "dora")),
    Shared(LokrConfig, "weight_decompose", ("adapter", "weight_decompose"), ("train", "lokr_weight_decompose")),
    Shared(LokrConfig, "linear_dim", ("adapter", "rank"), ("train", "lokr_linear_dim")),
    Shared(LokrConfig, "linear_alpha", ("adapter", "alpha"), ("train", "lokr_linear_alpha")),
    Shared(LokrConfig, "factor", ("adapter", "lokr_factor"), ("train", "lokr_factor")),
    Shared(LokrConfig, "decompose_both", ("adapter", "lokr_decompose_both"), ("train", "lokr_decompose_both")),
    Shared(LokrConfig, "use_tucker", cli=("train", "lokr_use_tucker")),
    *(Shared(EncodeConfig, name, ("encode", name), ("encode", name)) for name in ("max_duration", "normalize")),
    Shared(EncodeConfig, "skip_existing", ("encode", "skip_existing"), ("encode", "force"), cli_value=negated),
    Shared(EncodeConfig, "custom_tag", ("encode", "trigger_word"), ("encode", "trigger")),
    Shared(EncodeConfig, "tag_position", ("encode", "trigger_position"), ("encode", "tag_position"), node_value=auto_is("auto")),
    Shared(EncodeConfig, "min_seconds", cli=("encode", "min_seconds")),
    *(Shared(GenerationRequest, name, ("sample", name), ("sample", name)) for name in (
        "duration", "keyscale", "timesignature", "seed", "batch_size", "steps", "shift",
    )),
    Shared(GenerationRequest, "bpm", ("sample", "bpm"), ("sample", "bpm"), node_value=auto_is(0)),
    Shared(GenerationRequest, "guidance", ("sample", "guidance"), ("sample", "guidance"), node_value=auto_is(-1.0)),
    Shared(GenerationRequest, "guidance_mode", cli=("sample", "guidance_mode")),
    *(Shared(LabelConfig, "fields", ("label", group), ("label", "fields"), cli_value=has_group(group), core_value=has_group(group))
      for group in ("caption", "metadata", "lyrics")),
    Shared(LabelConfig, "overwrite", ("label", "overwrite"), ("label", "overwrite")),
    Shared(LabelConfig, "trigger_word", ("label", "trigger_word"), ("label", "trigger")),
    *(Shared(Sampling, name, ("label", name), ("label", name)) for name in ("temperature", "top_p", "seed")),
    Shared(Sampling, "constrained", ("label", "constrained"), ("label", "free_decoding"), cli_value=negated),
]
# Inputs and flags that are not a core setting with a default: what to work on, where files go, and the song text.
NOT_SHARED = {
    "train": {"model", "dataset", "adapter_config", "run_name"},
    "adapter": {"custom_modules"},  # "" in the node, () in the core: the module list of target 'custom'
    "encode": {"model", "audio_folder", "dataset_folder"},
    # The song itself: the node prefills an instrumental example ("[Instrumental]", "en"), the CLI leaves it empty.
    "sample": {"model", "caption", "lyrics", "language"},
    "label": {"model", "lm", "audio_folder"},
    "cli": {
        "command", "run", "checkpoint_dir", "model_variant", "tokenizer", "base_model", "device", "dtype", "dataset_dir",
        "output_dir", "target_modules", "adapter", "strength", "caption", "lyrics", "language", "out", "lm",
    },
}
# The core's choices and where a node (with any extra values it adds first) and the CLI offer them.
CHOICES = [
    (OPTIMIZERS, ("train", "optimizer", ()), ("train", "optimizer")),
    (SCHEDULERS, ("train", "scheduler", ()), ("train", "scheduler")),
    (PRECISIONS, ("train", "precision", ()), ("train", "precision")),
    (TIMESTEP_MODES, ("train", "timestep_mode", ()), ("train", "timestep_mode")),
    (CONTINUOUS_DRAWS, None, ("train", "continuous_draws")),
    (KINDS, ("adapter", "adapter_type", ()), ("train", "adapter")),
    (tuple(TARGET_PRESETS), None, ("train", "target")),
    (NORMALIZE_MODES, ("encode", "normalize", ()), ("encode", "normalize")),
    (TAG_POSITIONS, ("encode", "trigger_position", ("auto",)), ("encode", "tag_position")),
    (OVERWRITE_MODES, ("label", "overwrite", ()), ("label", "overwrite")),
    (GUIDANCE_MODES, None, ("sample", "guidance_mode")),
    (("auto", *STORAGE), None, ("sample", "dtype")),
]


@pytest.fixture(scope="module")
def node_inputs(comfy: ModuleType) -> dict[str, dict[str, Any]]:  # noqa: F811
    """Every node's schema inputs by id, as ComfyUI builds them (after the pack's entry point registered its folders)."""
    # In a thread of its own: the browser tests' session-wide Playwright keeps an event loop running in this one.
    with ThreadPoolExecutor(max_workers=1) as thread:
        thread.submit(asyncio.run, importlib.import_module(PACK_MODULE).comfy_entrypoint()).result()
    inputs = {}
    for key, (module, name) in NODES.items():
        node = getattr(importlib.import_module(f"{PACK_MODULE}.nodes.{module}"), name)
        inputs[key] = {item.id: item for item in node.define_schema().inputs}
    return inputs


@pytest.fixture(scope="module")
def cli_defaults() -> dict[str, argparse.Namespace]:
    """What each command's flags hold when only the required ones are given."""
    return {command: build_parser().parse_args([command, *args]) for command, args in REQUIRED.items()}


def core_default(config: type, name: str) -> Any:
    """A config dataclass's default for `name`, read from its fields (or its class attribute, e.g. an adapter's kind)."""
    field = next((field for field in dataclasses.fields(config) if field.name == name), None)
    if field is None:
        return getattr(config, name)
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


@pytest.mark.parametrize("shared", SHARED, ids=lambda shared: f"{shared.core.__name__}.{shared.name}-{shared.node or shared.cli}")
def test_node_cli_and_core_defaults_agree(shared: Shared, node_inputs: dict, cli_defaults: dict) -> None:
    expected = shared.core_value(core_default(shared.core, shared.name))
    if shared.node is not None:
        node, input_id = shared.node
        assert shared.node_value(node_inputs[node][input_id].default) == expected, f"node {node}.{input_id}"
    if shared.cli is not None:
        command, dest = shared.cli
        assert shared.cli_value(getattr(cli_defaults[command], dest)) == expected, f"{command} --{dest}"


def test_train_runs_as_long_and_saves_as_often_from_the_node_and_the_cli(node_inputs: dict, cli_defaults: dict) -> None:
    """The drift the issue names: the CLI trained 100 epochs saving every 10 while the core said 10 and 1."""
    train = cli_defaults["train"]
    assert (train.epochs, train.save_every) == (node_inputs["train"]["epochs"].default, node_inputs["train"]["save_every"].default)


def test_every_widget_and_flag_is_compared_or_named(node_inputs: dict, cli_defaults: dict) -> None:
    """A new widget or flag with a default must join SHARED (or say why it is not a core setting)."""
    for node, inputs in node_inputs.items():
        if node == "load":
            continue
        compared = {shared.node[1] for shared in SHARED if shared.node and shared.node[0] == node}
        assert set(inputs) - compared - NOT_SHARED[node] == set(), node
    for command, namespace in cli_defaults.items():
        compared = {shared.cli[1] for shared in SHARED if shared.cli and shared.cli[0] == command}
        assert set(vars(namespace)) - compared - NOT_SHARED["cli"] == set(), command


@pytest.mark.parametrize("core, node, cli", CHOICES, ids=[f"{command}-{dest}" for _, _, (command, dest) in CHOICES])
def test_choices_come_from_the_core(core: tuple, node: tuple | None, cli: tuple, node_inputs: dict) -> None:
    if node is not None:
        key, input_id, extra = node
        assert tuple(node_inputs[key][input_id].options) == (*extra, *core)
    command, dest = cli
    action = next(action for action in _subparser(command)._actions if action.dest == dest)
    assert tuple(action.choices) == tuple(core)


def test_model_flags_and_the_load_node_start_from_auto(node_inputs: dict, cli_defaults: dict) -> None:
    """Device and dtype default to 'auto' everywhere; the core's one rule decides what auto means."""
    for namespace in cli_defaults.values():
        assert (namespace.device, namespace.dtype) == ("auto", "auto")
    assert (node_inputs["load"]["device"].default, node_inputs["load"]["dtype"].default) == ("auto", "auto")
    assert set(node_inputs["load"]["dtype"].options) <= {"auto", *STORAGE}


def _subparser(command: str) -> argparse.ArgumentParser:
    """The parser of one sub-command."""
    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    return commands.choices[command]

"""Each setting declared once: the node inputs and the CLI flags are exactly what the declarations on the settings
dataclasses say (name, order, default, limits, choices, help with its "auto" meaning), and both read back to the
core's defaults. Saved workflows keep their widgets' order and meaning, and every flag the CLI ever had still parses.
The node schemas are read from the pack loaded in-process, as ComfyUI loads it."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sidestep.adapters.adaptive import AdaptiveRankSettings
from sidestep.adapters.config import AdapterConfig, LokrConfig, LoraConfig
from sidestep.adapters.kinds.loha import LohaConfig
from sidestep.adapters.kinds.oft import OftConfig
from sidestep.cli import build_parser
from sidestep.dataset.settings import EncodeConfig
from sidestep.labeling.settings import LabelConfig, Sampling
from sidestep.request import GenerationRequest
from sidestep.settings import WIDGET_AUTO, add_flags, from_flags, from_widgets, node_widgets, setting, settings_of
from sidestep.training.config import TrainConfig
from sidestep.variants import STORAGE
from tests.comfyui.test_model_patches import PACK_MODULE, comfy  # noqa: F401  (the in-process ComfyUI fixture)

EXAMPLES = Path(__file__).resolve().parents[1] / "example_workflows"
# The example workflows as saved before settings were declared once (widget order and legacy auto values of then).
SAVED_BEFORE = Path(__file__).resolve().parent / "fixtures" / "saved_workflows"
# node key → (module, class, node id, the hand-written inputs before the generated ones, its settings dataclasses)
NODES = {
    "train": ("train", "TrainAdapter", "SideStepTrainAdapter", ("model", "dataset", "adapter_config", "run_name"), (TrainConfig,)),
    "adapter": ("adapters", "ConfigureAdapter", "SideStepConfigureAdapter", ("adapter_type",), (LoraConfig, LokrConfig, AdapterConfig, LohaConfig, OftConfig)),
    "encode": ("dataset", "EncodeDataset", "SideStepEncodeDataset", ("model", "audio_folder", "dataset_folder"), (EncodeConfig,)),
    "sample": ("sample", "SampleWithShift", "SideStepSampleWithShift", ("model", "caption", "lyrics", "language"), (GenerationRequest,)),
    "label": ("label", "LabelSongs", "SideStepLabelSongs", ("model", "lm", "audio_folder"), (LabelConfig, Sampling)),
    "rank": ("rank", "AnalyseRank", "SideStepAnalyseRank", ("model", "dataset", "adapter_config", "seed"), (AdaptiveRankSettings,)),
}
# command → (required flags, its settings dataclasses)
COMMANDS = {
    "train": (["--checkpoint-dir", "m", "--dataset-dir", "d", "--output-dir", "o"], (LoraConfig, LokrConfig, TrainConfig)),
    "fixed": (["--checkpoint-dir", "m", "--dataset-dir", "d", "--output-dir", "o"], (LoraConfig, LokrConfig, TrainConfig)),
    "encode": (["--checkpoint-dir", "m", "--dataset-dir", "d", "--output-dir", "o"], (EncodeConfig,)),
    "label": (["--checkpoint-dir", "m", "--dataset-dir", "d"], (LabelConfig, Sampling)),
    "sample": (["--checkpoint-dir", "m", "--caption", "c"], (GenerationRequest,)),
}
# Every flag and alias the CLI had before its flags were built from the declarations (they must keep working).
LEGACY_FLAGS = {
    "train": "--adapter --adapter-type --alpha --batch-size --cfg-ratio --continuous-draws --dora --dropout --epochs "
    "--gradient-accumulation --learning-rate --log-dir --lokr-decompose-both --lokr-factor --lokr-linear-alpha "
    "--lokr-linear-dim --lokr-use-tucker --lokr-weight-decompose --lr --max-grad-norm --max-latent-frames "
    "--min-snr-gamma --no-gradient-checkpointing --num-inference-steps --num-workers --optimizer --optimizer-type "
    "--precision --rank --resume-from --save-every --scheduler --scheduler-type --seed --shift --target "
    "--target-modules --timestep-mode --warmup-steps",
    "encode": "--max-duration --normalize --min-seconds --trigger --tag-position --force",
    "label": "--lm --fields --overwrite --trigger --temperature --top-p --seed --free-decoding",
    "sample": "--adapter --strength --caption --lyrics --language --duration --bpm --keyscale --timesignature --seed "
    "--batch-size --steps --shift --guidance --guidance-mode --out",
}


@pytest.fixture(scope="module")
def schemas(comfy: ModuleType) -> dict[str, list[Any]]:  # noqa: F811
    """Every node's schema inputs in order, as ComfyUI builds them (after the pack's entry point registered its folders)."""
    # In a thread of its own: the browser tests' session-wide Playwright keeps an event loop running in this one.
    with ThreadPoolExecutor(max_workers=1) as thread:
        thread.submit(asyncio.run, importlib.import_module(PACK_MODULE).comfy_entrypoint()).result()
    inputs = {}
    for key, (module, name, *_) in NODES.items():
        node = getattr(importlib.import_module(f"{PACK_MODULE}.nodes.{module}"), name)
        inputs[key] = list(node.define_schema().inputs)
    inputs["load"] = list(importlib.import_module(f"{PACK_MODULE}.nodes.model").LoadCheckpoint.define_schema().inputs)
    return inputs


def _subparser(command: str) -> argparse.ArgumentParser:
    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    return commands.choices[command]


def _core_defaults(settings_class: type) -> dict[str, Any]:
    return {item.name: item.default for item in settings_of(settings_class)}


@pytest.mark.parametrize("key", NODES)
def test_node_inputs_are_the_declared_settings(key: str, schemas: dict) -> None:
    """After its own inputs, a node offers exactly its dataclasses' declared settings, in declaration order, with their
    defaults, limits, choices and tooltips; the widgets' defaults read back as the core's defaults."""
    _, _, _, own, classes = NODES[key]
    inputs = schemas[key]
    assert [item.id for item in inputs[: len(own)]] == list(own)
    widgets = node_widgets(*classes)
    generated = inputs[len(own):]
    assert [item.id for item in generated] == [widget.name for widget in widgets]
    for item, widget in zip(generated, widgets, strict=True):
        assert (item.default, item.tooltip, item.optional) == (widget.default, widget.tooltip, True), item.id
        assert tuple(getattr(item, "options", None) or ()) == widget.options, item.id
        assert (getattr(item, "min", None), getattr(item, "max", None)) == (widget.min, widget.max), item.id
    defaults = {widget.name: widget.default for widget in widgets}
    for settings_class in classes:
        if settings_class is AdapterConfig:
            continue
        shown = {item.name for item in settings_of(settings_class) if item.setting.node is not False}
        expected = {name: value for name, value in _core_defaults(settings_class).items() if name in shown}
        assert from_widgets(settings_class, defaults) == expected, settings_class.__name__


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_flags_are_the_declared_settings(command: str) -> None:
    """Every declared setting is a flag (with its aliases) whose help is the declaration's, and the flags' defaults read
    back as the core's defaults."""
    required, classes = COMMANDS[command]
    parser = _subparser(command)
    args = parser.parse_args(required)
    by_dest = {action.dest: action for action in parser._actions}
    for settings_class in classes:
        assert from_flags(settings_class, args) == _core_defaults(settings_class), settings_class.__name__
        for item in settings_of(settings_class):
            action = by_dest[item.dest]
            assert tuple(action.option_strings) == item.flags, item.name
            if item.setting.auto is not None:
                assert f"auto: {item.setting.auto}" in action.help.replace("%%", "%"), item.name


@pytest.mark.parametrize("key", NODES)
def test_auto_is_shown_the_same_way_on_nodes(key: str) -> None:
    """A setting whose None means auto says so in its tooltip; a number widget spells auto -1 and reads -1 as None."""
    for settings_class in NODES[key][4]:
        widgets = {widget.name: widget for widget in node_widgets(settings_class)}
        for item in settings_of(settings_class, own=True):
            if item.setting.auto is None or item.setting.node is False:
                continue
            widget = widgets[item.widget_name]
            assert f"auto: {item.setting.auto}" in widget.tooltip
            if item.kind in (int, float):
                assert widget.min == WIDGET_AUTO and f"{WIDGET_AUTO} = auto" in widget.tooltip
                assert item.read(WIDGET_AUTO) is None


@pytest.mark.parametrize("command", LEGACY_FLAGS)
def test_every_flag_and_alias_the_cli_had_still_parses(command: str) -> None:
    options = {flag for action in _subparser(command)._actions for flag in action.option_strings}
    assert set(LEGACY_FLAGS[command].split()) <= options


def test_a_setting_appended_to_a_dataclass_lands_last_on_the_node_and_as_a_flag() -> None:
    """The mechanism other settings rely on: one declaration, nothing else."""

    @dataclass
    class Extended(TrainConfig):
        warmup_ratio: float | None = setting(None, help="Share of the run spent warming up.", min=0.0, max=1.0, auto="off")

    assert node_widgets(TrainConfig, Extended)[:-1] == node_widgets(TrainConfig)
    assert node_widgets(TrainConfig, Extended)[-1].name == "warmup_ratio"
    parser = argparse.ArgumentParser()
    add_flags(parser, TrainConfig, Extended)
    assert from_flags(Extended, parser.parse_args(["--warmup-ratio", "0.1"]))["warmup_ratio"] == 0.1
    assert from_flags(Extended, parser.parse_args(["--warmup-ratio", "auto"]))["warmup_ratio"] is None
    assert from_widgets(Extended, {"warmup_ratio": WIDGET_AUTO})["warmup_ratio"] is None


def _saved_widgets(node: dict) -> dict[str, Any]:
    """A saved UI-format node's widget values by name (a seed's control_after_generate value skipped)."""
    names = [item["widget"]["name"] for item in node.get("inputs", []) if item.get("widget")]
    values = list(node["widgets_values"])
    found = {}
    for name in names:
        found[name] = values.pop(0)
        if values and values[0] in ("fixed", "increment", "decrement", "randomize"):
            values.pop(0)
    return found


@pytest.mark.parametrize(
    "path", sorted([*EXAMPLES.glob("*.json"), *SAVED_BEFORE.glob("*.json")]), ids=lambda path: f"{path.parent.name}/{path.name}"
)
def test_saved_workflows_keep_their_widget_order_and_meaning(path: Path, schemas: dict) -> None:
    """Each example workflow, as saved before the inputs were generated: its widgets are the first inputs of today's
    node in the same order, and their values build the core's settings (the old auto spellings read as auto)."""
    by_id = {spec[2]: key for key, spec in NODES.items()}
    for node in json.loads(path.read_text(encoding="utf-8"))["nodes"]:
        key = by_id.get(node["type"])
        if key is None:
            continue
        saved = _saved_widgets(node)
        inputs = [item.id for item in schemas[key] if isinstance(item, _widget_types())]
        assert inputs[: len(saved)] == list(saved), node["type"]
        for settings_class in NODES[key][4]:
            if settings_class is not AdapterConfig:
                settings_class(**_required(settings_class), **from_widgets(settings_class, saved))
        # What the old auto spellings (0 for sampling steps, shift and bpm; -1 elsewhere) read as.
        legacy_auto = {"steps": 0, "shift": 0, "bpm": 0, "guidance": -1, "cfg_ratio": -1, "lokr_factor": -1}
        for classes in NODES[key][4]:
            read = from_widgets(classes, saved)
            for item in settings_of(classes):
                if item.widget_name in legacy_auto and saved.get(item.widget_name) == legacy_auto[item.widget_name]:
                    assert read[item.name] is None, (node["type"], item.name)


def _widget_types() -> tuple[type, ...]:
    """Inputs that are widgets (the others are links: model, dataset, adapter ...)."""
    from comfy_api.latest import io

    return (io.Int.Input, io.Float.Input, io.Boolean.Input, io.Combo.Input, io.String.Input)


def _required(settings_class: type) -> dict[str, Any]:
    """Placeholder values for a dataclass's fields without a default (paths)."""
    fields = {"TrainConfig": {"output_dir": "out"}, "EncodeConfig": {"audio_dir": "in", "output_dir": "out"},
              "LabelConfig": {"audio_dir": "in", "lm_path": "lm"}, "GenerationRequest": {"caption": "c"}}
    return fields.get(settings_class.__name__, {})


def test_model_flags_and_the_load_node_start_from_auto(schemas: dict) -> None:
    """Device and dtype default to 'auto' everywhere; the core's one rule decides what auto means."""
    for command, (required, _) in COMMANDS.items():
        namespace = _subparser(command).parse_args(required)
        assert (namespace.device, namespace.dtype) == ("auto", "auto")
    load = {item.id: item for item in schemas["load"]}
    assert (load["device"].default, load["dtype"].default) == ("auto", "auto")
    assert set(load["dtype"].options) <= {"auto", *STORAGE}

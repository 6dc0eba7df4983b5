"""Each user-facing setting declared once, on its settings dataclass field: default, limits, choices, help and what
"auto" means. The node inputs (`node_widgets`, `from_widgets`) and the CLI flags (`add_flags`, `from_flags`) are built
from these declarations, so a new setting is its declaration plus the code that uses it.

"auto" has one spelling in the core: the value `None`, meaning "use the model's or adapter's own value"; `auto`
says what that value is, shown the same way in tooltips and `--help` ("auto: <meaning>"). A number widget cannot
hold None, so on nodes -1 (`WIDGET_AUTO`) is auto for every number setting; a choice setting offers "auto" first; a
text setting is auto when empty. On the CLI a setting is auto when its flag is left out or given as `auto`.

Where a setting lands: a declared field is a flag of every command built from its dataclass and an input of every
node built from it, in field order, so a field appended to a dataclass appears last on its node (saved workflows keep
their widget order). `node=False` keeps a setting off the node, `cli=False` off the CLI.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

AUTO = "auto"
WIDGET_AUTO = -1  # a number widget's spelling of auto (None)


@dataclass(frozen=True)
class Setting:
    """What a front end needs to offer one setting: help text, limits or choices, its "auto" meaning and CLI flags.

    `flags`: the CLI flag and its aliases (default `--field-name`, or `--no-field-name` for a setting that is on by
    default: a true/false flag always switches away from the default). `node`: the widget's name when it is not the
    field's, or False for no widget. `none_aliases`: older spellings of auto that saved workflows and scripts hold
    (read as None everywhere). `widget`: extra ComfyUI widget options (e.g. control_after_generate). `advanced`: shown
    among a node's advanced inputs.
    """

    help: str
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    auto: str | None = None
    flags: tuple[str, ...] = ()
    advanced: bool = False
    node: str | bool = True
    cli: bool = True
    none_aliases: tuple[Any, ...] = ()
    widget: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def setting(default: Any, *, help: str, **declaration: Any) -> Any:
    """A dataclass field whose metadata declares the setting (see `Setting` for the keywords)."""
    return dataclasses.field(default=default, metadata={"setting": Setting(help=help, **declaration)})


def declared(settings_class: type) -> dict[str, tuple[dataclasses.Field, Setting]]:
    """The declared settings of a settings dataclass, in field order: name -> (field, declaration)."""
    return {
        field.name: (field, field.metadata["setting"])
        for field in dataclasses.fields(settings_class)
        if "setting" in field.metadata
    }


@dataclass(frozen=True)
class Declared:
    """One declared setting with what the generators need: its owner class, field name, value type and default."""

    owner: type
    name: str
    kind: type  # int, float, bool, str or tuple
    optional: bool  # None (auto) is a value
    default: Any
    setting: Setting

    @property
    def dest(self) -> str:
        """The argparse destination: owner-qualified, so two dataclasses on one command never collide."""
        return f"{self.owner.__name__}.{self.name}"

    @property
    def widget_name(self) -> str:
        return self.setting.node if isinstance(self.setting.node, str) else self.name

    @property
    def flags(self) -> tuple[str, ...]:
        if self.setting.flags:
            return self.setting.flags
        dashed = self.name.replace("_", "-")
        return (f"--no-{dashed}",) if self.kind is bool and self.default else (f"--{dashed}",)

    def described(self, auto_spelling: str) -> str:
        """The help text, with the one "auto: <meaning>" phrase (`auto_spelling` says how auto is written there)."""
        if self.setting.auto is None:
            return self.setting.help
        return f"{self.setting.help.rstrip('.')} ({auto_spelling}auto: {self.setting.auto})."

    def read(self, value: Any) -> Any:
        """A value from a widget or flag as the core's: auto spellings → None, text trimmed, lists as tuples."""
        if isinstance(value, str) and self.kind is not tuple:
            value = value.strip()
        if self.optional and (value in (None, AUTO, "") or self._auto_number(value)):
            return None
        if value in self.setting.none_aliases and not isinstance(value, bool):
            return None
        if self.kind is tuple:
            if isinstance(value, str):
                value = value.split(",")
            return tuple(item.strip() for item in value or () if item.strip())
        return value

    def _auto_number(self, value: Any) -> bool:
        return self.kind in (int, float) and not isinstance(value, bool) and value == WIDGET_AUTO


def _value_type(hint: Any) -> tuple[type, bool]:
    """(int/float/bool/str/tuple, whether None is allowed) of a field's type hint."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        arguments = [argument for argument in typing.get_args(hint) if argument is not type(None)]
        optional = len(arguments) < len(typing.get_args(hint))
        hint = arguments[0]
    return (typing.get_origin(hint) or hint), optional


def settings_of(settings_class: type, own: bool = False) -> list[Declared]:
    """The declared settings of a dataclass in field order; `own`: only those its own body declares (not inherited)."""
    hints = typing.get_type_hints(settings_class)
    body = settings_class.__dict__.get("__annotations__", {})
    found = []
    for name, (field, declaration) in declared(settings_class).items():
        owner = next(cls for cls in reversed(settings_class.__mro__) if name in cls.__dict__.get("__annotations__", {}))
        if own and name not in body:
            continue
        kind, optional = _value_type(hints[name])
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        found.append(Declared(owner, name, kind, optional, default, declaration))
    return found


# ---------------------------------------------------------------- node widgets


@dataclass(frozen=True)
class Widget:
    """One node input as ComfyUI shows it (`kind`: INT, FLOAT, BOOLEAN, COMBO or STRING), built from declarations."""

    name: str
    kind: str
    default: Any
    tooltip: str
    options: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None
    step: float | None = None
    advanced: bool = False
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _widgets_of(item: Declared) -> list[Widget]:
    """The widget (one per choice for a several-of-these setting) that offers a declared setting."""
    declaration, name = item.setting, item.widget_name
    common = {"advanced": declaration.advanced, "extra": declaration.widget}
    if item.kind is tuple and declaration.choices:
        return [Widget(choice, "BOOLEAN", choice in item.default, f"{declaration.help} ({choice})", **common)
                for choice in declaration.choices]
    if item.kind is bool:
        return [Widget(name, "BOOLEAN", item.default, item.described(""), **common)]
    if item.kind in (int, float):
        low = item.kind(WIDGET_AUTO) if item.optional else declaration.min
        default = item.kind(WIDGET_AUTO) if item.default is None else item.default
        kind = "INT" if item.kind is int else "FLOAT"
        return [Widget(name, kind, default, item.described(f"{WIDGET_AUTO} = "), (), low, declaration.max,
                       declaration.step, **common)]
    if declaration.choices:
        options = ((AUTO,) if item.optional else ()) + tuple(declaration.choices)
        return [Widget(name, "COMBO", AUTO if item.default is None else item.default, item.described(""), options, **common)]
    text = ", ".join(item.default) if item.kind is tuple else (item.default or "")
    return [Widget(name, "STRING", text, item.described("empty = "), **common)]


def node_widgets(*settings_classes: type) -> list[Widget]:
    """The node inputs offering these dataclasses' own declared settings, in order. Settings of several classes that
    name the same widget (LoRA rank and LoKR dimension) share it; its tooltip lists each one's help."""
    widgets: dict[str, Widget] = {}
    for settings_class in settings_classes:
        for item in settings_of(settings_class, own=True):
            if item.setting.node is False:
                continue
            for widget in _widgets_of(item):
                shared = widgets.get(widget.name)
                if shared is None:
                    widgets[widget.name] = widget
                elif widget.tooltip not in shared.tooltip:
                    widgets[widget.name] = dataclasses.replace(shared, tooltip=f"{shared.tooltip} / {widget.tooltip}")
    return list(widgets.values())


def from_widgets(settings_class: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The core's keyword arguments for `settings_class` from a node's widget values (auto spellings → None)."""
    found = {}
    for item in settings_of(settings_class):
        if item.setting.node is False:
            continue
        if item.kind is tuple and item.setting.choices:
            found[item.name] = tuple(choice for choice in item.setting.choices if values.get(choice, choice in item.default))
        elif item.widget_name in values:
            found[item.name] = item.read(values[item.widget_name])
    return found


# ---------------------------------------------------------------- CLI flags


def _number(kind: type):
    """An argparse type for a number setting that also takes `auto`."""

    def parse(text: str):
        return None if text.strip() == AUTO else kind(text)

    parse.__name__ = kind.__name__
    return parse


def add_flags(parser: argparse.ArgumentParser, *settings_classes: type, only: Collection[str] | None = None) -> None:
    """Add a flag (and its aliases) for every own declared setting of these dataclasses (or the settings `only`
    names), help from the declaration."""
    for settings_class in settings_classes:
        for item in settings_of(settings_class, own=True):
            if not item.setting.cli or (only is not None and item.name not in only):
                continue
            options: dict[str, Any] = {"dest": item.dest, "help": item.described("").replace("%", "%%")}
            if item.kind is bool:
                options.update(action="store_false" if item.default else "store_true", default=item.default)
            elif item.kind is tuple and item.setting.choices:
                options.update(default=",".join(item.default), help=f"{item.setting.help} (comma-separated: "
                               f"{', '.join(item.setting.choices)})")
            elif item.kind is tuple:
                options.update(nargs="+", default=list(item.default), metavar="NAME")
            elif item.kind in (int, float):
                kind = _number(item.kind) if item.optional else item.kind
                options.update(type=kind, default=item.default, metavar=item.name.upper())
            else:
                choices = item.setting.choices and [*((AUTO,) if item.optional else ()), *item.setting.choices]
                options.update(default=item.default, choices=choices, metavar=None if choices else item.name.upper())
            parser.add_argument(*item.flags, **options)


def from_flags(settings_class: type, args: argparse.Namespace) -> dict[str, Any]:
    """The core's keyword arguments for `settings_class` from parsed flags (auto spellings → None)."""
    values = vars(args)
    return {item.name: item.read(values[item.dest]) for item in settings_of(settings_class) if item.dest in values}

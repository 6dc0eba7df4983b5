"""Each user-facing setting declared once, on its settings dataclass field: default, limits, choices, help and what
"auto" means. The node inputs and the CLI flags are built from these declarations.

"auto" has one spelling in the core: the value `None`, meaning "use the model's or adapter's own value"; `auto`
says what that value is (shown the same way in tooltips and `--help`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    """What a front end needs to offer one setting: help text, limits or choices, its "auto" meaning and CLI flags."""

    help: str
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    auto: str | None = None
    flags: tuple[str, ...] = ()
    advanced: bool = False


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

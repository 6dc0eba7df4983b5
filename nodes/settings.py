"""Node inputs built from the core's setting declarations (`sidestep/settings.py`): one ComfyUI widget per setting.

Every generated input is optional: a prompt that leaves a setting out (an API graph saved before the setting existed)
trains with the core's default. The hand-written inputs a node puts first stay required."""

from __future__ import annotations

from comfy_api.latest import io

from ..sidestep.settings import Widget, node_widgets

_NUMBERS = {"INT": io.Int, "FLOAT": io.Float}


def _input(widget: Widget) -> io.Input:
    """The ComfyUI input of one widget description."""
    common = {"optional": True, "tooltip": widget.tooltip, "default": widget.default, **widget.extra}
    if widget.advanced:
        common["advanced"] = True
    if widget.kind in _NUMBERS:
        limits = {"min": widget.min, "max": widget.max, "step": widget.step}
        return _NUMBERS[widget.kind].Input(widget.name, **common, **{key: value for key, value in limits.items() if value is not None})
    if widget.kind == "BOOLEAN":
        return io.Boolean.Input(widget.name, **common)
    if widget.kind == "COMBO":
        return io.Combo.Input(widget.name, options=list(widget.options), **common)
    return io.String.Input(widget.name, **common)


def setting_inputs(*settings_classes: type) -> list[io.Input]:
    """The inputs offering these settings dataclasses' declared settings, in declaration order."""
    return [_input(widget) for widget in node_widgets(*settings_classes)]

"""Which layers the diagnostics flag, for views that highlight them (graph, gradient flow, health)."""
from __future__ import annotations

from typing import Iterable

from widgets.colormaps import hex_colour

__all__ = ["SEVERITY_COLOURS", "SEVERITY_RGB", "flagged_layers"]

SEVERITY_RGB = {"error": (255, 107, 107), "warning": (245, 185, 66), "info": (127, 178, 255)}
SEVERITY_COLOURS = {key: hex_colour(rgb) for key, rgb in SEVERITY_RGB.items()}
_RANK = {"error": 0, "warning": 1}


def flagged_layers(diagnoses: Iterable) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``{layer: (worst severity, codes)}`` for layers named by warnings and errors.

    Info notes are left out: a highlight should mean something is wrong.
    """
    flagged: dict[str, tuple[str, tuple[str, ...]]] = {}
    for finding in diagnoses:
        if finding.severity not in _RANK:
            continue
        for layer in finding.layers:
            severity, codes = flagged.get(layer, (finding.severity, ()))
            if _RANK[finding.severity] < _RANK[severity]:
                severity = finding.severity
            if finding.code not in codes:
                codes = (*codes, finding.code)
            flagged[layer] = (severity, codes)
    return flagged

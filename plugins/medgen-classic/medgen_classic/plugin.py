"""Entry-point module of medgen-classic: registers the classical baseline families.

Declared in this distribution's ``pyproject.toml`` as::

    [project.entry-points.napari_medgen]
    classic = "medgen_classic.plugin"
"""

from __future__ import annotations

from typing import Callable

from napari_medgen import hookimpl

from .anomaly import IntensityOutlier
from .harmonize import HistogramMatching, NyulStandardisation
from .lesion import ProceduralLesion
from .superres import CubicBSpline, LinearInterpolation

__all__ = ["FAMILIES", "medgen_register_families"]

#: the family classes this plugin provides, in the order they are registered
FAMILIES = (
    LinearInterpolation,
    CubicBSpline,
    HistogramMatching,
    NyulStandardisation,
    IntensityOutlier,
    ProceduralLesion,
)


@hookimpl
def medgen_register_families(register: Callable[[object], None]) -> None:
    """Register one instance of each classical family."""
    for cls in FAMILIES:
        register(cls())

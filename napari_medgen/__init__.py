"""napari-medgen: generative models for 3D medical volumes, in napari and on the command line."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (
    Cancelled,
    DeviceError,
    FamilyError,
    InputError,
    MedGenError,
    OutputError,
    ParamError,
    PluginError,
    WeightsError,
)
from .family import RESEARCH_USE, InputSpec, Inputs, ModelFamily, Output, OutputSpec, Param, Result, RunContext, Task
from .hookspecs import hookimpl
from .volume import Volume

__all__ = [
    "__version__",
    "hookimpl",
    "ModelFamily",
    "Param",
    "InputSpec",
    "Inputs",
    "Output",
    "OutputSpec",
    "Result",
    "RunContext",
    "Task",
    "Volume",
    "RESEARCH_USE",
    "MedGenError",
    "InputError",
    "ParamError",
    "FamilyError",
    "PluginError",
    "Cancelled",
    "WeightsError",
    "DeviceError",
    "OutputError",
]

"""Exceptions with messages meant for the user (the CLI prints them as one line)."""

from __future__ import annotations

__all__ = [
    "MedGenError",
    "InputError",
    "ParamError",
    "FamilyError",
    "PluginError",
    "Cancelled",
    "WeightsError",
    "DeviceError",
]


class MedGenError(Exception):
    """Base class: anything raised with this type is a user-facing message."""


class InputError(MedGenError, ValueError):
    """The input volume(s), points or mask cannot be used by the chosen family."""


class ParamError(MedGenError, ValueError):
    """A parameter value is missing, of the wrong type, or out of range."""


class FamilyError(MedGenError, RuntimeError):
    """A family's ``run`` failed; the message names the family and the cause."""


class PluginError(MedGenError, RuntimeError):
    """A plugin could not be loaded or registered something malformed."""


class Cancelled(MedGenError):
    """The user cancelled the run; no partial result is produced."""


class WeightsError(MedGenError, RuntimeError):
    """A weights file is missing, corrupted, tampered with or of an unknown format."""


class DeviceError(MedGenError, RuntimeError):
    """The requested compute device is not available or ran out of memory."""

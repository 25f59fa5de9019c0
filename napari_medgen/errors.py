"""Exceptions with messages meant for the user (the CLI prints them as one line).

Each class carries the ``medgen`` exit code it stands for (documented in ``medgen --help``):
0 done, 2 the command line or an input is wrong (nothing ran), 1 a run failed, 130 interrupted.
"""

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
    "DeviceUnavailable",
    "OutputError",
    "OutputPathError",
    "OutputExists",
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "EXIT_CANCELLED",
]

EXIT_OK = 0
#: a run started and failed (a family error, out of memory, a write that failed midway)
EXIT_FAILED = 1
#: the command line or an input is wrong; nothing ran and nothing was written
EXIT_USAGE = 2
#: interrupted (Ctrl-C, Cancel); nothing was written
EXIT_CANCELLED = 130


class MedGenError(Exception):
    """Base class: anything raised with this type is a user-facing message."""

    exit_code: int = EXIT_FAILED


class InputError(MedGenError, ValueError):
    """The input volume(s), points or mask cannot be used by the chosen family."""

    exit_code = EXIT_USAGE


class ParamError(MedGenError, ValueError):
    """A parameter value is missing, of the wrong type, or out of range."""

    exit_code = EXIT_USAGE


class FamilyError(MedGenError, RuntimeError):
    """A family's ``run`` failed; the message names the family and the cause."""


class PluginError(MedGenError, RuntimeError):
    """A plugin could not be loaded, registered something malformed, or a family id is unknown."""

    exit_code = EXIT_USAGE


class Cancelled(MedGenError):
    """The user cancelled the run; no partial result is produced."""

    exit_code = EXIT_CANCELLED


class WeightsError(MedGenError, RuntimeError):
    """A weights file is missing, corrupted, tampered with or of an unknown format."""

    exit_code = EXIT_USAGE


class DeviceError(MedGenError, RuntimeError):
    """The compute device ran out of memory or failed during a run."""


class DeviceUnavailable(DeviceError):
    """The requested compute device does not exist on this machine (a wrong choice, nothing ran)."""

    exit_code = EXIT_USAGE


class OutputError(MedGenError, RuntimeError):
    """Writing a result failed midway (disk full, quota, permissions changed); nothing was left half-written."""


class OutputPathError(OutputError):
    """An output place is refused before any compute: it is an input, exists, or cannot be written."""

    exit_code = EXIT_USAGE


class OutputExists(OutputPathError):
    """An output file exists and replacing it was not allowed; ``path`` names it (the dock asks)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path

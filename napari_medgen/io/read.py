"""The one entry point for reading a scan from disk: :func:`read_volume`.

Every caller (the CLI, batch runs, the napari reader) goes through here or through the
readers it dispatches to, so that a bad file always ends as one
:class:`~napari_medgen.errors.InputError` whose message is a single line naming the file
and what is wrong with it; no exception type of numpy, nibabel, pydicom, zlib or the OS
escapes. The small helpers :func:`one_line` and :func:`quiet_readers` are shared by the
NIfTI and DICOM readers for the same reason.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from ..errors import InputError, MedGenError
from ..volume import Volume

__all__ = ["read_volume", "one_line", "quiet_readers", "guarded", "volume_kind"]

#: loggers of the file libraries, silenced while reading (their warnings are not for users)
_LIBRARY_LOGGERS = ("pydicom", "nibabel", "nibabel.global")
T = TypeVar("T")


def one_line(exc: BaseException | str) -> str:
    """An exception's message on one line (whitespace collapsed), or its type name if empty."""
    text = " ".join(str(exc).split())
    if not text and isinstance(exc, BaseException):
        text = type(exc).__name__
    return text


@contextlib.contextmanager
def quiet_readers() -> Iterator[None]:
    """Silence the warnings and log records of pydicom/nibabel while a file is read.

    Their messages are multi-line, technical, and printed outside our error reporting;
    anything that matters ends up in the one-line :class:`InputError` instead.
    """
    loggers = [logging.getLogger(name) for name in _LIBRARY_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.CRITICAL + 1)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def guarded(failure: str, func: Callable[..., T], *args: Any) -> T:
    """Run a reading step with the file libraries quiet; only :class:`InputError` leaves it.

    Our own other errors keep their message; anything else (numpy, nibabel, pydicom, zlib,
    the OS) becomes ``InputError(f"{failure}: <one-line reason>")``.
    """
    try:
        with quiet_readers():
            return func(*args)
    except InputError:
        raise
    except MedGenError as exc:
        raise InputError(one_line(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - damaged files fail in many ways inside the libraries
        raise InputError(f"{failure}: {one_line(exc)}") from exc


def volume_kind(path: str | os.PathLike) -> str | None:
    """``"nifti"``, ``"dicom"`` or None: which reader a path goes to (no parsing, cheap)."""
    from .dicom import is_dicom_file
    from .nifti import is_analyze_path, is_nifti_path

    p = Path(path)
    if p.is_dir():
        return "dicom"
    if is_nifti_path(p) or is_analyze_path(p):
        return "nifti"
    if is_dicom_file(p):
        return "dicom"
    return None


def _with_role(exc: InputError, role: str) -> InputError:
    """The same error (class and attributes kept) with ``"<role>: "`` in front of its message."""
    message = one_line(exc)
    if message.startswith(role):
        return exc
    new = copy.copy(exc)
    new.args = (f"{role}: {message}",)
    return new


def _read(path: Path, series: str | None) -> Volume:
    """Dispatch to the NIfTI or DICOM reader; lets their InputError through unchanged."""
    from .dicom import read_dicom_series
    from .nifti import read_nifti

    kind = volume_kind(path)
    if kind == "dicom":
        return read_dicom_series(path, series=series)
    if kind == "nifti":
        if series is not None:
            raise InputError(f"'{path.name}' is a NIfTI file; a series can only be chosen in a DICOM folder")
        return read_nifti(path)
    raise InputError(f"'{path.name}' is not a NIfTI file (.nii/.nii.gz) or a DICOM series folder")


def read_volume(path: str | os.PathLike, *, role: str = "input", series: str | None = None) -> Volume:
    """Read a NIfTI file (``.nii``/``.nii.gz``, Analyze ``.hdr``/``.img``), a DICOM file or a DICOM folder.

    ``role`` ("input", "reference 1", "mask"...) starts every error message; ``series``
    picks one series of a DICOM folder (number, UID or a unique UID prefix). Only
    :class:`InputError` (or its subclass :class:`~napari_medgen.io.dicom.MultipleSeriesError`)
    is raised, with a one-line message naming the file and what is wrong.
    """
    p = Path(path)
    shown = str(path)
    try:
        if not p.exists():
            raise InputError(f"{role} '{shown}' does not exist")
        kind = volume_kind(p)
        if kind is None:
            raise InputError(f"{role} '{shown}' is not a NIfTI file (.nii/.nii.gz) or a DICOM series folder")
        return _read(p, series)
    except InputError as exc:
        raise _with_role(exc, role) from exc
    except Exception as exc:  # noqa: BLE001 - the guarantee: nothing else escapes
        raise InputError(f"could not read {role} '{p.name or shown}': {one_line(exc)}") from exc

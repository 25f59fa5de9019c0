"""DICOM series reader: one series of single-frame slices -> a Volume (same convention as NIfTI).

Slices are sorted by the projection of ImagePositionPatient on the slice normal (the cross
product of the two ImageOrientationPatient directions); the slice step comes from the
positions, never from SliceThickness. The LPS patient coordinates of DICOM are converted
to RAS+, and the result goes through the same reorientation as
:func:`napari_medgen.io.nifti.read_nifti`, so the array is ``(S, A, R)`` in napari order.
Only patient-free header fields are kept in ``metadata["dicom"]``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..volume import Volume
from .nifti import volume_from_ras

__all__ = ["read_dicom_series", "is_dicom_file", "folder_has_dicom"]

#: DICOM LPS patient coordinates -> RAS+ (NIfTI) coordinates
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# relative + absolute tolerance (mm) on slice steps before a gap is reported as irregular
_GAP_RTOL = 0.01
_GAP_ATOL = 1e-3

# patient-free, acquisition-describing fields copied into metadata["dicom"]
_KEEP_FIELDS = {
    "Modality": "modality",
    "SeriesDescription": "series_description",
    "SeriesNumber": "series_number",
    "StudyDescription": "study_description",
    "Manufacturer": "manufacturer",
    "ManufacturerModelName": "manufacturer_model",
    "MagneticFieldStrength": "magnetic_field_strength",
    "SliceThickness": "slice_thickness",
    "RepetitionTime": "repetition_time",
    "EchoTime": "echo_time",
    "InversionTime": "inversion_time",
    "FlipAngle": "flip_angle",
    "ScanningSequence": "scanning_sequence",
    "BodyPartExamined": "body_part",
    "KVP": "kvp",
    "ConvolutionKernel": "convolution_kernel",
}


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True if the file has a ``.dcm`` suffix or the ``DICM`` magic at byte 128."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def folder_has_dicom(folder: str | os.PathLike, max_checked: int = 50) -> bool:
    """Quick check (no full parse) that a folder holds at least one DICOM file."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return False
    for n, entry in enumerate(e for e in entries if e.is_file()):
        if n >= max_checked:
            break
        if entry.name.upper() != "DICOMDIR" and is_dicom_file(entry.path):
            return True
    return False


def _read_header(path: Path) -> Any | None:
    """The header of an image DICOM file (no pixels), or None for anything else."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=path.suffix.lower() == ".dcm")
    except (InvalidDicomError, OSError):
        return None
    except Exception:  # noqa: BLE001 - force-reading a damaged .dcm can fail in many ways: skip it
        return None
    if "Rows" not in ds or "Columns" not in ds:
        return None  # DICOMDIR, structured reports, presentation states ...
    return ds


def _series_summary(headers: list[Any]) -> dict[str, Any]:
    ds = headers[0]
    return {
        "series_number": _plain(ds.get("SeriesNumber")),
        "series_description": str(ds.get("SeriesDescription", "")),
        "modality": str(ds.get("Modality", "")),
        "n_files": len(headers),
    }


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a pydicom value (IS -> int, DS -> float, sequences -> lists)."""
    from decimal import Decimal

    if value is None:
        return None
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_plain(v) for v in value]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, (float, Decimal)):
        return float(value)
    return str(value)


def _collect(folder_or_file: Path) -> tuple[list[tuple[Path, Any]], list[dict[str, Any]], Path]:
    """Headers of the chosen series, summaries of the other series, and the folder read."""
    if folder_or_file.is_file():
        folder = folder_or_file.parent
        chosen = _read_header(folder_or_file)
        if chosen is None:
            raise InputError(f"{folder_or_file.name} is not a DICOM image file")
        wanted = str(chosen.get("SeriesInstanceUID", ""))
    elif folder_or_file.is_dir():
        folder = folder_or_file
        wanted = None
    else:
        raise InputError(f"DICOM path not found: {folder_or_file}")
    groups: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    for entry in sorted(folder.iterdir()):
        if not entry.is_file() or entry.name.upper() == "DICOMDIR":
            continue
        ds = _read_header(entry)
        if ds is not None:
            groups[str(ds.get("SeriesInstanceUID", ""))].append((entry, ds))
    if not groups:
        raise InputError(f"no DICOM image files found in {folder}")
    if wanted is None or wanted not in groups:
        wanted = max(groups, key=lambda uid: len(groups[uid]))
    others = [_series_summary([ds for _, ds in items]) for uid, items in groups.items() if uid != wanted]
    return groups[wanted], others, folder


def _float_list(ds: Any, keyword: str, n: int, where: str) -> np.ndarray:
    value = ds.get(keyword)
    if value is None:
        raise InputError(f"{where} has no {keyword}; cannot place the slice in space")
    arr = np.asarray([float(v) for v in value], dtype=float)
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise InputError(f"{where} has a malformed {keyword}: {list(value)}")
    return arr


def _pixels(path: Path, ds_header: Any) -> np.ndarray:
    """The rescaled pixel array of one slice (rows, columns)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), force=True)
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pixel handlers raise many types
        syntax = getattr(getattr(ds_header, "file_meta", None), "TransferSyntaxUID", None)
        raise InputError(
            f"could not decode the pixel data of {path.name} (transfer syntax {getattr(syntax, 'name', syntax)}): {exc}. "
            "Compressed DICOM may need pylibjpeg or GDCM, or convert the series with dcm2niix"
        ) from exc
    if arr.ndim != 2:
        raise InputError(f"{path.name} holds a {arr.ndim}D pixel array (colour or multi-frame); only greyscale single-frame images are supported")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    inter = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if slope != 1.0 or inter != 0.0:
        arr = arr.astype(np.float32) * np.float32(slope) + np.float32(inter)
    return arr


def read_dicom_series(folder_or_file: str | os.PathLike) -> Volume:
    """Read one DICOM series (a folder, or any file of the series) into a Volume in napari order.

    With several series in the folder the largest is read (or the one of the given file)
    and the others are listed in ``metadata["dicom"]["other_series"]``.
    """
    items, others, folder = _collect(Path(folder_or_file))
    first = items[0][1]
    frames = int(first.get("NumberOfFrames", 1) or 1)
    if frames > 1 or "PerFrameFunctionalGroupsSequence" in first:
        raise InputError(
            f"{items[0][0].name} is a multi-frame (enhanced) DICOM image ({frames} frames), which is not "
            "supported; convert the series to NIfTI (e.g. with dcm2niix) and open that"
        )
    rows, cols = int(first.Rows), int(first.Columns)
    where0 = items[0][0].name
    if "ImageOrientationPatient" in first or len(items) > 1:
        iop = _float_list(first, "ImageOrientationPatient", 6, where0)
    else:  # a lone 2D image without patient geometry (e.g. a secondary capture)
        iop = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    if np.linalg.norm(normal) < 1e-3:
        raise InputError(f"{where0} has a degenerate ImageOrientationPatient {iop.tolist()}")
    normal /= np.linalg.norm(normal)
    pixel_spacing = (
        _float_list(first, "PixelSpacing", 2, where0)
        if "PixelSpacing" in first
        else np.asarray([float(v) for v in first.get("ImagerPixelSpacing", [1.0, 1.0])])
    )
    row_step, col_step = float(pixel_spacing[0]), float(pixel_spacing[1])  # between rows, between columns

    positions = []
    for path, ds in items:
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise InputError(f"{path.name} is {ds.Rows}x{ds.Columns} but {where0} is {rows}x{cols}; the series is not one volume")
        if len(items) > 1:
            if not np.allclose(_float_list(ds, "ImageOrientationPatient", 6, path.name), iop, atol=1e-4):
                raise InputError(f"{path.name} has a different slice orientation from {where0}; the series is not one volume")
            positions.append(_float_list(ds, "ImagePositionPatient", 3, path.name))
        else:
            positions.append(np.asarray([float(v) for v in ds.get("ImagePositionPatient", [0.0, 0.0, 0.0])]))
    positions = np.asarray(positions)
    proj = positions @ normal
    order = np.argsort(proj, kind="stable")
    items = [items[i] for i in order]
    positions, proj = positions[order], proj[order]

    if len(items) > 1:
        steps = np.diff(proj)
        dup = np.flatnonzero(steps < _GAP_ATOL)
        if dup.size:
            i = int(dup[0])
            raise InputError(
                f"{items[i][0].name} and {items[i + 1][0].name} are at the same slice position ({proj[i]:.3f} mm); "
                "the series holds several volumes (echoes, time points or repeats) - split it first"
            )
        step = float(np.median(steps))
        bad = np.flatnonzero(np.abs(steps - step) > max(_GAP_RTOL * step, _GAP_ATOL))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"irregular slice spacing: a gap of {steps[i]:.3f} mm between slices {i} and {i + 1} "
                f"({items[i][0].name} -> {items[i + 1][0].name}) where the series steps {step:.3f} mm; "
                "missing slices? the volume cannot be placed on a regular grid"
            )
        slice_vec = (positions[-1] - positions[0]) / (len(items) - 1)  # keeps a gantry tilt as shear
    else:
        thickness = float(first.get("SliceThickness", 1.0) or 1.0)
        slice_vec = normal * thickness

    pixels = [_pixels(path, ds) for path, ds in items]
    stack = np.stack(pixels, axis=-1)  # (rows, cols, slices)
    if any(p.dtype != stack.dtype for p in pixels):
        stack = stack.astype(np.float32)
    data_ijk = stack.transpose(1, 0, 2)  # (cols, rows, slices): i along a row, j down the columns
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * col_step
    affine_lps[:3, 1] = col_dir * row_step
    affine_lps[:3, 2] = slice_vec
    affine_lps[:3, 3] = positions[0]
    affine_ras = _LPS_TO_RAS @ affine_lps
    if len(items) == 1:
        data_ijk = data_ijk[:, :, 0]

    meta: dict[str, Any] = {"source_folder": str(folder), "n_slices": len(items), "rows": rows, "columns": cols}
    for keyword, key in _KEEP_FIELDS.items():
        if keyword in first and first.get(keyword) not in (None, ""):
            meta[key] = _plain(first.get(keyword))
    meta["rescaled"] = bool(np.issubdtype(data_ijk.dtype, np.floating))
    meta["source_affine_ras"] = affine_ras.tolist()
    meta["other_series"] = others
    name = str(first.get("SeriesDescription", "") or "").strip() or folder.name
    return volume_from_ras(data_ijk, affine_ras, name=name, metadata={"dicom": meta})

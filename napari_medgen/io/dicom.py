"""DICOM series reader: one series of single-frame slices -> a Volume (same convention as NIfTI).

Slices are sorted by the projection of ImagePositionPatient on the slice normal (the cross
product of the two ImageOrientationPatient directions); the slice step comes from the
positions, never from SliceThickness. The LPS patient coordinates of DICOM are converted
to RAS+, and the result goes through the same reorientation as
:func:`napari_medgen.io.nifti.read_nifti`, so the array is ``(S, A, R)`` in napari order.
Only patient-free header fields are kept in ``metadata["dicom"]``.

What real folders hold, and what the reader does with it:

* several series: an error listing them (:class:`MultipleSeriesError`, with the list in
  ``.series``) unless one is chosen (``series=`` number, UID or unique UID prefix); a
  path to one file chooses that file's series. The series read is recorded in
  ``metadata["dicom"]`` (UID, number, description).
* a Siemens mosaic (one file holding all slices as tiles): unpacked into its slices with
  nibabel's ``nicom`` (the CSA header gives the layout); several mosaic files of one
  series are time points and are refused unless one file is given.
* MONOCHROME1 images are inverted (high values bright); PALETTE COLOR, RGB and YBR images
  become RGB volumes marked ``metadata["rgb"] = True`` (validation refuses them for the
  families, the napari reader shows them as RGB layers).
* a lone 2D image without patient geometry keeps its pixel order, is named after its
  file and is marked ``geometry_missing``; a multi-slice series without geometry is an
  error. A malformed NumberOfFrames is read as one frame when the pixel data holds one.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..volume import Volume
from .nifti import rgb_volume_from_ras, volume_from_ras
from .read import guarded, one_line, quiet_readers

__all__ = [
    "read_dicom_series",
    "read_each_dicom_series",
    "list_dicom_series",
    "format_series",
    "MultipleSeriesError",
    "is_dicom_file",
    "folder_has_dicom",
]

#: DICOM LPS patient coordinates -> RAS+ (NIfTI) coordinates
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# relative + absolute tolerance (mm) on slice steps before a gap is reported as irregular
_GAP_RTOL = 0.01
_GAP_ATOL = 1e-3
# a slice normal within ~20 degrees of a patient axis is called axial/coronal/sagittal
_PLANE_COS = np.cos(np.deg2rad(20.0))

# patient-free, acquisition-describing fields copied into metadata["dicom"]
_KEEP_FIELDS = {
    "Modality": "modality",
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
    "PhotometricInterpretation": "photometric",
}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class MultipleSeriesError(InputError):
    """A DICOM folder holds several series and none was chosen (or the choice matched none/several).

    ``series`` is the list of series dicts of :func:`list_dicom_series`, so a viewer can
    offer them; the message lists them on one line.
    """

    def __init__(self, message: str, series: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.series: list[dict[str, Any]] = list(series or [])


# -- detection ------------------------------------------------------------------------------
def is_dicom_file(path: str | os.PathLike) -> bool:
    """True if the file has a ``.dcm`` suffix or the ``DICM`` magic at byte 128."""
    path = Path(path)
    try:
        if not path.is_file():
            return False
        if path.suffix.lower() == ".dcm":
            return True
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def folder_has_dicom(folder: str | os.PathLike, max_checked: int = 50) -> bool:
    """Quick check (no full parse) that a folder holds at least one DICOM file."""
    folder = Path(folder)
    try:
        if not folder.is_dir():
            return False
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
        for n, entry in enumerate(e for e in entries if e.is_file()):
            if n >= max_checked:
                break
            if entry.name.upper() != "DICOMDIR" and is_dicom_file(entry.path):
                return True
    except OSError:
        return False
    return False


# -- small value helpers --------------------------------------------------------------------
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


def _get(ds: Any, keyword: str, default: Any = None) -> Any:
    """``ds.get`` that never raises (a damaged element gives ``default``)."""
    try:
        value = ds.get(keyword, default)
    except Exception:  # noqa: BLE001 - pydicom converts values lazily and may fail on damaged ones
        return default
    return default if value is None else value


def _text(ds: Any, keyword: str) -> str:
    return " ".join(str(_get(ds, keyword, "") or "").split())


def _int_or_none(value: Any) -> int | None:
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    if not np.isfinite(number) or number != int(number):
        return None
    return int(number)


def _floats(ds: Any, keyword: str, n: int) -> np.ndarray | None:
    """``n`` finite floats from a multi-valued element, or None when absent or malformed."""
    value = _get(ds, keyword)
    if value is None or value == "":
        return None
    try:
        values = list(value) if not isinstance(value, (str, bytes)) else [value]
        arr = np.asarray([float(v) for v in values], dtype=float)
    except (TypeError, ValueError):
        return None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        return None
    return arr


def _float_list(ds: Any, keyword: str, n: int, where: str) -> np.ndarray:
    arr = _floats(ds, keyword, n)
    if arr is None:
        if _get(ds, keyword) in (None, ""):
            raise InputError(f"{where} has no {keyword}; cannot place the slice in space")
        raise InputError(f"{where} has a malformed {keyword} {one_line(str(_get(ds, keyword)))!r}")
    return arr


def _scalar(ds: Any, keyword: str, default: float, where: str) -> float:
    value = _get(ds, keyword)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where} has a malformed {keyword} {one_line(str(value))!r}") from None
    if not np.isfinite(number):
        raise InputError(f"{where} has a non-finite {keyword} {number}")
    return number


def _is_mosaic(ds: Any) -> bool:
    image_type = _get(ds, "ImageType", [])
    if isinstance(image_type, str):
        image_type = image_type.split("\\")
    try:
        return any(str(v).strip().upper() == "MOSAIC" for v in image_type)
    except TypeError:
        return False


def _frames(ds: Any) -> int | None:
    """NumberOfFrames as a positive int (1 when absent), or None when it is malformed."""
    value = _get(ds, "NumberOfFrames")
    if value is None or str(value).strip() == "":
        return 1
    number = _int_or_none(value)
    return number if number is not None and number >= 1 else None


def _photometric(ds: Any) -> str:
    return _text(ds, "PhotometricInterpretation").upper() or "MONOCHROME2"


def _orientation_name(iop: np.ndarray | None) -> str:
    """axial / coronal / sagittal / oblique from ImageOrientationPatient (LPS)."""
    if iop is None:
        return "unknown orientation"
    normal = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(normal)
    if norm < 1e-3:
        return "unknown orientation"
    normal = np.abs(normal / norm)
    axis = int(np.argmax(normal))
    if normal[axis] < _PLANE_COS:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


# -- scanning a folder ----------------------------------------------------------------------
def _read_header(path: Path, force: bool) -> Any:
    """The header (no pixels) of a DICOM file; raises InputError naming the file."""
    import pydicom

    try:
        with quiet_readers():
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=force)
            _ = ds.get("Rows"), ds.get("Columns"), ds.get("SeriesInstanceUID")  # parse them now
    except Exception as exc:  # noqa: BLE001 - damaged files fail in many ways
        raise InputError(f"{path.name} is not a readable DICOM file ({one_line(exc)})") from exc
    return ds


def _is_image(ds: Any) -> bool:
    """Has Rows/Columns: DICOMDIR, structured reports, presentation states... do not."""
    return _get(ds, "Rows") not in (None, "") and _get(ds, "Columns") not in (None, "")


def _uid(ds: Any) -> str:
    return _text(ds, "SeriesInstanceUID")


def _scan(folder: Path) -> tuple[dict[str, list[tuple[Path, Any]]], list[str]]:
    """Headers of the image files of ``folder`` grouped by SeriesInstanceUID, and unreadable files."""
    groups: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    unreadable: list[str] = []
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise InputError(f"cannot list folder '{folder.name}': {one_line(exc)}") from exc
    for entry in entries:
        try:
            if not entry.is_file() or entry.name.upper() == "DICOMDIR":
                continue
        except OSError:
            continue
        dicom_like = is_dicom_file(entry)
        try:
            ds = _read_header(entry, force=entry.suffix.lower() == ".dcm")
        except InputError as exc:
            if dicom_like:
                unreadable.append(one_line(exc))
            continue
        if _is_image(ds):
            groups[_uid(ds)].append((entry, ds))
    return dict(groups), unreadable


def _spacing(items: list[tuple[Path, Any]]) -> list[float | None]:
    """[between slices, between rows, between columns] in mm, None where unknown."""
    first = items[0][1]
    pixel = _floats(first, "PixelSpacing", 2)
    if pixel is None:
        pixel = _floats(first, "ImagerPixelSpacing", 2)
    row, col = (None, None) if pixel is None else (float(pixel[0]), float(pixel[1]))
    slice_step: float | None = None
    iop = _floats(first, "ImageOrientationPatient", 6)
    if len(items) > 1 and iop is not None and not _is_mosaic(first):
        normal = np.cross(iop[:3], iop[3:])
        positions = [_floats(ds, "ImagePositionPatient", 3) for _, ds in items]
        if np.linalg.norm(normal) > 1e-3 and all(p is not None for p in positions):
            proj = np.sort(np.asarray(positions) @ (normal / np.linalg.norm(normal)))
            steps = np.diff(proj)
            steps = steps[steps > _GAP_ATOL]
            if steps.size:
                slice_step = float(np.median(steps))
    if slice_step is None:
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            value = _floats(first, keyword, 1)
            if value is not None and value[0] > 0:
                slice_step = float(value[0])
                break
    return [None if v is None else round(v, 4) for v in (slice_step, row, col)]


def _summary(uid: str, items: list[tuple[Path, Any]]) -> dict[str, Any]:
    first = items[0][1]
    return {
        "series_instance_uid": uid,
        "series_number": _int_or_none(_get(first, "SeriesNumber")),
        "series_description": _text(first, "SeriesDescription"),
        "modality": _text(first, "Modality"),
        "n_images": len(items),
        "orientation": _orientation_name(_floats(first, "ImageOrientationPatient", 6)),
        "spacing_mm": _spacing(items),
        "mosaic": _is_mosaic(first),
        "files": sorted(str(path) for path, _ in items),
    }


def _sort_key(summary: dict[str, Any]) -> tuple:
    number = summary["series_number"]
    return (number is None, number if number is not None else 0, summary["series_instance_uid"])


def _listing(folder: Path) -> tuple[list[tuple[dict[str, Any], list[tuple[Path, Any]]]], list[str]]:
    groups, unreadable = _scan(folder)
    pairs = [(_summary(uid, items), items) for uid, items in groups.items()]
    pairs.sort(key=lambda pair: _sort_key(pair[0]))
    return pairs, unreadable


def list_dicom_series(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The image series of a DICOM folder (or of the folder of a DICOM file), sorted by number.

    Each dict has ``series_instance_uid``, ``series_number``, ``series_description``,
    ``modality``, ``n_images``, ``orientation`` (axial/coronal/sagittal/oblique),
    ``spacing_mm`` ([between slices, rows, columns], None where unknown), ``mosaic`` and
    ``files`` (sorted paths). Only headers are read.
    """
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"DICOM folder not found: {folder}")
    with quiet_readers():
        pairs, _ = _listing(folder)
    return [summary for summary, _ in pairs]


def _number_text(summary: dict[str, Any]) -> str:
    return "?" if summary["series_number"] is None else str(summary["series_number"])


def format_series(summary: dict[str, Any]) -> str:
    """One series as ``3 'T1 MPRAGE' (176 images, sagittal, 1x1x1 mm, UID 1.2.3)``."""
    spacing = "x".join("?" if v is None else f"{v:g}" for v in summary["spacing_mm"])
    kind = ", mosaic" if summary.get("mosaic") else ""
    n = summary["n_images"]
    return (
        f"{_number_text(summary)} '{summary['series_description']}' ({n} image{'s' if n != 1 else ''}{kind}, "
        f"{summary['orientation']}, {spacing} mm, UID {summary['series_instance_uid'] or '(none)'})"
    )


def _layer_name(summary: dict[str, Any]) -> str:
    """``"3: T1 MPRAGE"``: how a series is named when a folder holds several."""
    desc = summary["series_description"] or summary["modality"] or summary["series_instance_uid"][-12:]
    return f"{_number_text(summary)}: {desc}" if summary["series_number"] is not None else desc


def _choose(
    pairs: list[tuple[dict[str, Any], list[tuple[Path, Any]]]], series: str, folder: Path
) -> tuple[dict[str, Any], list[tuple[Path, Any]]]:
    """The series matching ``series``: exact UID, then SeriesNumber, then a unique UID prefix."""
    wanted = str(series).strip()
    summaries = [s for s, _ in pairs]
    for matcher in (
        lambda s: s["series_instance_uid"] == wanted,
        lambda s: _number_text(s) == wanted or (_int_or_none(wanted) is not None and s["series_number"] == _int_or_none(wanted)),
        lambda s: bool(wanted) and s["series_instance_uid"].startswith(wanted),
    ):
        hits = [pair for pair in pairs if matcher(pair[0])]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            listed = "; ".join(format_series(s) for s, _ in hits)
            raise MultipleSeriesError(
                f"series {wanted!r} matches {len(hits)} series in folder '{folder.name}'; "
                f"give the full UID instead: {listed}",
                [s for s, _ in hits],
            )
    listed = "; ".join(format_series(s) for s in summaries)
    raise MultipleSeriesError(f"folder '{folder.name}' has no DICOM series {wanted!r}; it holds: {listed}", summaries)


def _no_series_error(folder: Path, unreadable: list[str]) -> InputError:
    if unreadable:
        more = f" and {len(unreadable) - 1} more" if len(unreadable) > 1 else ""
        return InputError(f"no readable DICOM image files in folder '{folder.name}': {unreadable[0]}{more}")
    return InputError(f"no DICOM image files found in folder '{folder.name}'")


# -- pixels ---------------------------------------------------------------------------------
def _one_frame_fits(ds: Any) -> bool:
    """Whether the pixel data holds exactly one frame (used when NumberOfFrames is malformed)."""
    try:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        data = ds.PixelData
        if syntax is not None and syntax.is_encapsulated:
            from pydicom.encaps import generate_fragments

            return sum(1 for _ in generate_fragments(data)) == 1
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(_get(ds, "SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
        expected = rows * cols * samples * bits / 8
        return expected > 0 and expected <= len(data) < 2 * expected
    except Exception:  # noqa: BLE001 - a header too damaged to tell: not one frame
        return False


def _palette_to_rgb(arr: np.ndarray, ds: Any) -> np.ndarray:
    try:
        from pydicom.pixels import apply_color_lut
    except ImportError:  # pydicom < 3
        from pydicom.pixel_data_handlers.util import apply_color_lut  # type: ignore[no-redef]
    rgb = apply_color_lut(arr, ds)
    if rgb.dtype != np.uint8:  # 16-bit palette entries -> 8-bit colour (some store 8-bit values in 16 bits)
        wide = np.asarray(rgb, dtype=np.uint32)
        rgb = (wide if wide.max(initial=0) <= 255 else wide >> 8).astype(np.uint8)
    return rgb


def _pixels(path: Path) -> tuple[np.ndarray, str]:
    """One slice: rescaled greyscale ``(rows, columns)`` or RGB ``(rows, columns, 3)``, and its kind.

    The kind is ``"grey"``, ``"grey-inverted"`` (MONOCHROME1, still to be inverted over the
    whole series) or ``"rgb"``.
    """
    import pydicom

    try:
        with quiet_readers():
            ds = pydicom.dcmread(str(path), force=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path.name} is not a readable DICOM file ({one_line(exc)})") from exc
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise InputError(f"{path.name} has no pixel data (it is not an image, or the file is cut short)")
    if _frames(ds) is None:
        raw = one_line(str(_get(ds, "NumberOfFrames", "")))
        if not _one_frame_fits(ds):
            raise InputError(
                f"{path.name} has a malformed NumberOfFrames {raw!r} and its pixel data is not one "
                f"{_get(ds, 'Rows')}x{_get(ds, 'Columns')} image; the file is damaged"
            )
        ds.NumberOfFrames = 1
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        with quiet_readers():
            arr = np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001 - pixel handlers raise many types
        name = getattr(syntax, "name", None) or str(syntax or "unknown transfer syntax")
        if syntax is not None and getattr(syntax, "is_compressed", False):
            hint = (
                f"; decoding {name} needs pylibjpeg (pip install pylibjpeg pylibjpeg-libjpeg "
                "pylibjpeg-openjpeg) or GDCM, or convert the series with dcm2niix"
            )
        else:
            hint = "; the file is probably cut short or damaged"
        raise InputError(f"could not decode the pixel data of {path.name} ({name}): {one_line(exc)}{hint}") from exc
    photometric = _photometric(ds)
    if photometric == "PALETTE COLOR":
        if arr.ndim != 2:
            raise InputError(f"{path.name} holds a {arr.ndim}D palette image; only single-frame images are supported")
        try:
            with quiet_readers():
                return _palette_to_rgb(arr, ds), "rgb"
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{path.name} is a PALETTE COLOR image whose palette cannot be applied ({one_line(exc)})") from exc
    if photometric in ("RGB",) or photometric.startswith("YBR"):
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise InputError(f"{path.name} is {'an' if str(photometric)[:1] in 'AEIOU' else 'a'} {photometric} image of shape {arr.shape}; only single-frame images are supported")
        if photometric.startswith("YBR") and int(pydicom.__version__.split(".")[0]) < 3:
            from pydicom.pixel_data_handlers.util import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        return arr, "rgb"
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(f"{path.name} has photometric interpretation {photometric!r}, which is not supported")
    if arr.ndim != 2:
        raise InputError(
            f"{path.name} holds a {arr.ndim}D pixel array {arr.shape} (colour or multi-frame); "
            "only greyscale single-frame images are supported"
        )
    slope = _scalar(ds, "RescaleSlope", 1.0, path.name) or 1.0
    inter = _scalar(ds, "RescaleIntercept", 0.0, path.name)
    if slope != 1.0 or inter != 0.0:
        arr = arr.astype(np.float32) * np.float32(slope) + np.float32(inter)
    return arr, ("grey-inverted" if photometric == "MONOCHROME1" else "grey")


def _invert(data: np.ndarray) -> np.ndarray:
    """MONOCHROME1 -> MONOCHROME2: ``max + min - x`` over the whole series, same dtype and range."""
    if data.size == 0:
        return data
    lo, hi = data.min(), data.max()
    if np.issubdtype(data.dtype, np.integer):
        return (int(hi) + int(lo) - data.astype(np.int64)).astype(data.dtype)
    return (hi + lo - data).astype(data.dtype)


# -- reading one series ---------------------------------------------------------------------
def _meta_base(folder: Path, summary: dict[str, Any], first: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "source_folder": str(folder),
        "series_instance_uid": summary["series_instance_uid"],
        "series_number": summary["series_number"],
        "series_description": summary["series_description"],
    }
    for keyword, key in _KEEP_FIELDS.items():
        value = _get(first, keyword)
        if value not in (None, ""):
            try:
                meta[key] = _plain(value)
            except Exception:  # noqa: BLE001 - a damaged optional field is dropped
                pass
    return meta


def _read_mosaic(path: Path, folder: Path, summary: dict[str, Any], header: Any) -> Volume:
    """A Siemens mosaic file unpacked into its slices by nibabel's nicom (CSA header layout)."""
    import pydicom

    with quiet_readers():
        from nibabel.nicom import csareader, dicomwrappers  # warns "highly experimental" on import

        try:
            ds = pydicom.dcmread(str(path), force=True)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{path.name} is not a readable DICOM file ({one_line(exc)})") from exc
        try:
            csa = csareader.get_csa_header(ds)
            n_mosaic = csareader.get_n_mosaic(csa) if csa is not None else None
        except Exception:  # noqa: BLE001 - CSAReadError, KeyError, damaged values
            n_mosaic = None
        if not n_mosaic:
            raise InputError(
                f"{path.name} is a Siemens mosaic (ImageType MOSAIC) but its CSA header, which gives the "
                "tile layout, is missing or unreadable, so its tiles cannot be unpacked into slices; "
                "convert the series with dcm2niix"
            )
        try:
            wrapper = dicomwrappers.MosaicWrapper(ds, csa, n_mosaic=int(n_mosaic))
            data = np.asarray(wrapper.get_data())
            affine_lps = np.asarray(wrapper.affine, dtype=float)
        except Exception as exc:  # noqa: BLE001 - reshape errors, missing geometry ...
            raise InputError(
                f"{path.name} is a Siemens mosaic of {int(n_mosaic)} slices whose tiles cannot be unpacked from its "
                f"{_get(ds, 'Rows')}x{_get(ds, 'Columns')} pixel data ({one_line(exc)}); convert the series with dcm2niix"
            ) from exc
    if data.ndim != 3 or not np.all(np.isfinite(affine_lps)) or abs(np.linalg.det(affine_lps[:3, :3])) < 1e-9:
        raise InputError(f"{path.name} is a Siemens mosaic without usable slice geometry; convert the series with dcm2niix")
    if np.issubdtype(data.dtype, np.floating) and data.dtype != np.float32:
        data = data.astype(np.float32)
    affine_ras = _LPS_TO_RAS @ affine_lps
    meta = _meta_base(folder, summary, header)
    meta.update(
        {
            "n_slices": int(data.shape[2]),
            "rows": int(data.shape[0]),
            "columns": int(data.shape[1]),
            "mosaic": True,
            "source_file": str(path),
            "rescaled": bool(np.issubdtype(data.dtype, np.floating)),
            "source_affine_ras": affine_ras.tolist(),
        }
    )
    name = summary["series_description"] or path.stem
    return volume_from_ras(data, affine_ras, name=name, metadata={"dicom": meta})


def _check_series_shape(items: list[tuple[Path, Any]], label: str) -> None:
    """Refuse mosaics of several files and multi-frame images before any pixel is read."""
    first_path, first = items[0]
    if any(_is_mosaic(ds) for _, ds in items) and len(items) > 1:
        raise InputError(
            f"{label} holds {len(items)} volumes (mosaic time points, one per file); open one of its "
            f"files (e.g. {first_path.name}) to read that time point, or convert the series with dcm2niix"
        )
    for path, ds in items:
        frames = _frames(ds)
        if (frames is not None and frames > 1) or "PerFrameFunctionalGroupsSequence" in ds:
            raise InputError(
                f"{path.name} is a multi-frame (enhanced) DICOM image ({frames} frames), which is not "
                "supported; convert the series to NIfTI (e.g. with dcm2niix) and open that"
            )


def _read_group(folder: Path, summary: dict[str, Any], items: list[tuple[Path, Any]]) -> Volume:
    """Read one series (its headers already parsed) into a Volume."""
    label = f"series {_number_text(summary)} '{summary['series_description']}' in folder '{folder.name}'"
    _check_series_shape(items, label)
    first_path, first = items[0]
    if _is_mosaic(first):
        return _read_mosaic(first_path, folder, summary, first)
    rows, cols = int(_scalar(first, "Rows", 0, first_path.name)), int(_scalar(first, "Columns", 0, first_path.name))
    where0 = first_path.name
    has_geometry = _get(first, "ImageOrientationPatient") not in (None, "")
    if len(items) > 1:
        for path, ds in items:
            for keyword in ("ImageOrientationPatient", "ImagePositionPatient"):
                if _get(ds, keyword) in (None, ""):
                    raise InputError(
                        f"{path.name} has no {keyword} (patient geometry), so the {len(items)} images of "
                        f"{label} cannot be stacked into a volume"
                    )
    pixel_spacing = _floats(first, "PixelSpacing", 2)
    if pixel_spacing is None:
        pixel_spacing = _floats(first, "ImagerPixelSpacing", 2)
    spacing_missing = pixel_spacing is None or np.any(pixel_spacing <= 0)
    if spacing_missing:
        pixel_spacing = np.array([1.0, 1.0])
    row_step, col_step = float(pixel_spacing[0]), float(pixel_spacing[1])  # between rows, between columns

    if not has_geometry:  # a lone 2D image (secondary capture, photo, scanned film...): keep it as stored
        arr, kind = _pixels(first_path)
        if kind == "grey-inverted":
            arr = _invert(arr)
        meta = _meta_base(folder, summary, first)
        meta.update(
            {
                "n_slices": 1,
                "rows": rows,
                "columns": cols,
                "source_file": str(first_path),
                "geometry_missing": True,
                "rescaled": bool(np.issubdtype(arr.dtype, np.floating)),
            }
        )
        if kind == "grey-inverted":
            meta["inverted_monochrome1"] = True
        metadata: dict[str, Any] = {"dicom": meta, "geometry_missing": True}
        if spacing_missing:
            metadata["spacing_missing"] = True
        if kind == "rgb":
            metadata["rgb"] = True
        return Volume.from_spacing(arr, spacing=(1.0, row_step, col_step), name=first_path.stem, metadata=metadata)

    iop = _float_list(first, "ImageOrientationPatient", 6, where0)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    if np.linalg.norm(normal) < 1e-3:
        raise InputError(f"{where0} has a degenerate ImageOrientationPatient {iop.tolist()}")
    normal /= np.linalg.norm(normal)

    positions = []
    for path, ds in items:
        size = (int(_scalar(ds, "Rows", 0, path.name)), int(_scalar(ds, "Columns", 0, path.name)))
        if size != (rows, cols):
            raise InputError(f"{path.name} is {size[0]}x{size[1]} but {where0} is {rows}x{cols}; the series is not one volume")
        if len(items) > 1:
            if not np.allclose(_float_list(ds, "ImageOrientationPatient", 6, path.name), iop, atol=1e-4):
                raise InputError(f"{path.name} has a different slice orientation from {where0}; the series is not one volume")
            positions.append(_float_list(ds, "ImagePositionPatient", 3, path.name))
        else:
            position = _floats(ds, "ImagePositionPatient", 3)
            positions.append(np.zeros(3) if position is None else position)
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
        thickness = _floats(first, "SliceThickness", 1)
        slice_vec = normal * (float(thickness[0]) if thickness is not None and thickness[0] > 0 else 1.0)

    slices = [_pixels(path) for path, _ in items]
    kinds = {kind for _, kind in slices}
    if len(kinds) > 1:
        raise InputError(f"{label} mixes greyscale and colour (or MONOCHROME1 and MONOCHROME2) images; it is not one volume")
    kind = kinds.pop()
    pixels = [arr for arr, _ in slices]
    if any(p.shape != pixels[0].shape for p in pixels):
        raise InputError(f"{label} holds images of different pixel array shapes; it is not one volume")
    stack = np.stack(pixels, axis=2)  # (rows, cols, slices[, 3])
    if any(p.dtype != stack.dtype for p in pixels):
        stack = stack.astype(np.float32)
    if kind == "grey-inverted":
        stack = _invert(stack)
    data_ijk = np.swapaxes(stack, 0, 1)  # (cols, rows, slices[, 3]): i along a row, j down the columns
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * col_step
    affine_lps[:3, 1] = col_dir * row_step
    affine_lps[:3, 2] = slice_vec
    affine_lps[:3, 3] = positions[0]
    affine_ras = _LPS_TO_RAS @ affine_lps
    if len(items) == 1:
        data_ijk = data_ijk[:, :, 0]

    meta = _meta_base(folder, summary, first)
    meta.update({"n_slices": len(items), "rows": rows, "columns": cols})
    if len(items) == 1:
        meta["source_file"] = str(first_path)
    meta["rescaled"] = bool(np.issubdtype(data_ijk.dtype, np.floating))
    meta["source_affine_ras"] = affine_ras.tolist()
    if kind == "grey-inverted":
        meta["inverted_monochrome1"] = True
    metadata = {"dicom": meta}
    if spacing_missing:
        metadata["spacing_missing"] = True
    # a 2D image is named after its file; a volume after its series (or its folder)
    name = first_path.stem if len(items) == 1 else (summary["series_description"] or folder.name)
    if kind == "rgb":
        metadata["rgb"] = True
        return rgb_volume_from_ras(data_ijk, affine_ras, name, metadata)
    return volume_from_ras(data_ijk, affine_ras, name=name, metadata=metadata)


def _others(pairs: list[tuple[dict[str, Any], Any]], chosen_uid: str) -> list[dict[str, Any]]:
    keys = ("series_instance_uid", "series_number", "series_description", "modality", "n_images")
    return [{k: s[k] for k in keys} for s, _ in pairs if s["series_instance_uid"] != chosen_uid]


def _read_dicom_series(path: Path, series: str | None) -> Volume:
    if path.is_file():
        folder = path.parent
        chosen_header = _read_header(path, force=True)
        if not _is_image(chosen_header):
            raise InputError(f"{path.name} holds no image (no Rows/Columns in its header): it is cut short or is not an image file")
    elif path.is_dir():
        folder, chosen_header = path, None
    else:
        raise InputError(f"DICOM folder or file not found: {path}")
    pairs, unreadable = _listing(folder)
    if not pairs:
        raise _no_series_error(folder, unreadable)
    if series is not None:
        summary, items = _choose(pairs, series, folder)
    elif chosen_header is not None:
        uid = _uid(chosen_header)
        found = [(s, i) for s, i in pairs if s["series_instance_uid"] == uid]
        # a file the folder scan does not recognise (no .dcm suffix, no DICM magic) is read alone
        summary, items = found[0] if found else (_summary(uid, [(path, chosen_header)]), [(path, chosen_header)])
        if any(_is_mosaic(ds) for _, ds in items) and len(items) > 1:
            # a mosaic file is a whole volume (one time point): read just the file given
            items = [(p, ds) for p, ds in items if p.resolve() == path.resolve()] or items[:1]
    elif len(pairs) == 1:
        summary, items = pairs[0]
    else:
        listed = "; ".join(format_series(s) for s, _ in pairs)
        raise MultipleSeriesError(
            f"folder '{folder.name}' holds {len(pairs)} DICOM series; choose one with --series "
            f"(its number or UID): {listed}",
            [s for s, _ in pairs],
        )
    volume = _read_group(folder, summary, items)
    volume.metadata["dicom"]["other_series"] = _others(pairs, summary["series_instance_uid"])
    return volume


def read_dicom_series(folder_or_file: str | os.PathLike, series: str | None = None) -> Volume:
    """Read one DICOM series (a folder, or any file of the series) into a Volume in napari order.

    ``series`` chooses one series of the folder: its SeriesInstanceUID, its SeriesNumber
    (as text, e.g. ``"3"``) or a unique prefix of the UID. Without it, a folder must hold
    one series (else :class:`MultipleSeriesError` lists them) and a file reads its own
    series. The series read is recorded in ``metadata["dicom"]`` (``series_instance_uid``,
    ``series_number``, ``series_description``) and the others in ``other_series``. Only
    :class:`InputError` is raised, with a one-line message.
    """
    path = Path(folder_or_file)
    return guarded(f"could not read DICOM '{path.name}'", _read_dicom_series, path, series)


def read_each_dicom_series(folder: str | os.PathLike) -> list[tuple[dict[str, Any], Volume | InputError]]:
    """Every image series of a folder, read independently: ``(summary, Volume or the InputError)``.

    Used by the napari reader (one layer per series): a series that cannot be read does
    not stop the others. ``summary["layer_name"]`` is ``"<number>: <description>"``.
    """
    folder = Path(folder)

    def scan() -> tuple[list, list]:
        if not folder.is_dir():
            raise InputError(f"DICOM folder not found: {folder}")
        return _listing(folder)

    pairs, unreadable = guarded(f"could not read DICOM folder '{folder.name}'", scan)
    if not pairs:
        raise _no_series_error(folder, unreadable)
    results: list[tuple[dict[str, Any], Volume | InputError]] = []
    for summary, items in pairs:
        summary = dict(summary, layer_name=_layer_name(summary))
        try:
            volume = guarded(
                f"could not read DICOM series {_number_text(summary)} in folder '{folder.name}'",
                _read_group, folder, summary, items,
            )
            volume.metadata["dicom"]["other_series"] = _others(pairs, summary["series_instance_uid"])
            results.append((summary, volume))
        except InputError as exc:
            results.append((summary, exc))
    return results

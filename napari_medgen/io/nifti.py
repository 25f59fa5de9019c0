"""NIfTI reading and writing with a single, documented orientation convention.

Orientation convention
----------------------
Every volume napari-medgen shows or computes on is stored the same way, whatever the file
on disk looks like:

* **On reading**, the image is reoriented to the closest canonical orientation, RAS+
  (voxel axes i, j, k run towards patient Right, Anterior, Superior; this is
  ``nibabel.as_closest_canonical``: flips and axis swaps only, no resampling), and then
  the three axes are **reversed**. The array napari sees is therefore ``(S, A, R)``:
  axis 0 runs inferior -> superior (the slice slider steps through axial slices),
  axis 1 posterior -> anterior, axis 2 left -> right.
* ``Volume.affine`` maps an array index ``(a0, a1, a2)`` to world millimetres in the same
  reversed order ``(z, y, x)`` = (S, A, R) scanner coordinates. It is the canonical NIfTI
  affine with its first three rows and its first three columns reversed. For an
  axis-aligned scan it is diagonal: napari's ``scale`` is the voxel size (the NIfTI zooms
  in reversed canonical order) and ``translate`` is the world position of the centre of
  voxel 0; oblique scans also get a rotation ``affine``.
* ``Volume.metadata["nifti"]`` keeps the file's own affine (``source_affine``), its axis
  codes (``source_ornt``, e.g. ``"LPS"``), the qform/sform codes, units and intent.
* **On writing**, the steps are undone: the axes are reversed back to (R, A, S), then the
  data are flipped/permuted back to ``source_ornt``. A file that is read and written back
  with unchanged geometry gets exactly its own affine and the same voxel order on disk; a
  result on a new grid (e.g. super-resolution) keeps the source orientation with the new
  voxel size. sform and qform are both set from the affine, units are millimetres.
* Real 4D files (e.g. fMRI, DWI) are read as ``(T, S, A, R)`` (all axes reversed after
  reorienting the spatial ones); a trailing singleton 4th dimension is squeezed away.
  2D files give a 2D array whose affine treats it as slice 0 of axis 0. Validation rejects
  both for 3D families with a message; the reader itself does not fail.
* World coordinates in the file's scanner space are RAS+ millimetres ``(x, y, z)``;
  :func:`world_xyz_to_index` converts them to array indices, and
  :func:`nifti_ijk_to_index` converts voxel indices of the file as stored on disk.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import IO, Any, Callable

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

from ..errors import InputError
from ..volume import Volume
from .read import guarded, one_line

__all__ = [
    "read_nifti",
    "write_nifti",
    "nifti_image",
    "nifti_writer",
    "nifti_output",
    "world_xyz_to_index",
    "nifti_ijk_to_index",
    "volume_from_ras",
    "volume_to_ras",
    "is_nifti_path",
    "is_analyze_path",
    "rgb_volume_from_ras",
    "strip_nifti_suffix",
]

_RAS = nio.axcodes2ornt(("R", "A", "S"))
# reverses the first three rows/columns of a 4x4 affine: (x, y, z) <-> (z, y, x)
_REV = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
_UNIT_TO_MM = {"mm": 1.0, "meter": 1000.0, "micron": 1e-3, "unknown": 1.0}


def is_nifti_path(path: str | os.PathLike) -> bool:
    """True for ``.nii`` and ``.nii.gz`` file names (case-insensitive)."""
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def strip_nifti_suffix(path: str | os.PathLike) -> str:
    """The file name without directory and without ``.nii``/``.nii.gz``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# -- convention helpers (shared with the DICOM reader) ------------------------------------
def volume_from_ras(
    data: np.ndarray, affine_ras: np.ndarray, name: str = "", metadata: dict[str, Any] | None = None
) -> Volume:
    """A Volume in napari order from voxel data ``(i, j, k[, t])`` and its RAS+ affine.

    Reorients to the closest canonical RAS+ orientation, reverses the axes and reverses
    the affine's rows and columns (see the module docstring). 2D data are treated as a
    single slice: the result is 2D and its affine describes slice 0 of axis 0.
    """
    data = np.asanyarray(data)
    affine_ras = np.asarray(affine_ras, dtype=float)
    two_d = data.ndim == 2
    if two_d:
        data = data[:, :, None]
    ornt = nio.io_orientation(affine_ras)
    transform = nio.ornt_transform(ornt, _RAS)
    canon = nio.apply_orientation(data, transform)  # flips/permutes the first 3 axes only
    canon_affine = affine_ras @ nio.inv_ornt_aff(transform, data.shape[:3])
    napari_data = canon.transpose(tuple(range(canon.ndim))[::-1])
    napari_affine = _REV @ canon_affine @ _REV
    if two_d:
        # move the singleton axis to position 0, so the 2D array is slice 0 of axis 0
        single = int(np.flatnonzero(np.asarray(napari_data.shape) == 1)[-1])
        order = [single] + [a for a in range(3) if a != single]
        napari_data = napari_data.transpose(order)[0]
        perm = np.eye(4)[:, order + [3]]
        napari_affine = napari_affine @ perm
    return Volume(np.ascontiguousarray(napari_data), napari_affine, name=name, metadata=dict(metadata or {}))


def volume_to_ras(volume: Volume, target_ornt: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Voxel data ``(i, j, k[, t])`` and RAS+ affine for a Volume: the inverse of :func:`volume_from_ras`.

    With ``target_ornt`` (axis codes such as ``"LPS"``) the data are flipped/permuted to
    that orientation; otherwise they stay canonical-ish (the reversed napari order).
    """
    data = np.asanyarray(volume.data)
    if data.ndim == 2:
        data = data[None]
    if data.ndim < 3:
        raise InputError(f"cannot write a {data.ndim}D array as NIfTI")
    data = data.transpose(tuple(range(data.ndim))[::-1])
    affine = _REV @ np.asarray(volume.affine, dtype=float) @ _REV
    if target_ornt:
        try:
            target = nio.axcodes2ornt(tuple(target_ornt))
        except Exception:  # noqa: BLE001 - malformed metadata: fall back to canonical
            target = None
        if target is not None and not np.any(np.isnan(target)):
            transform = nio.ornt_transform(nio.io_orientation(affine), target)
            affine = affine @ nio.inv_ornt_aff(transform, data.shape[:3])
            data = nio.apply_orientation(data, transform)
    return data, affine


# -- reading --------------------------------------------------------------------------------
#: CIFTI-2 files are NIfTI-2 containers of surface/grayordinate data, not volumes
_CIFTI_SUFFIXES = (
    ".dtseries.nii", ".dscalar.nii", ".dlabel.nii", ".dconn.nii", ".ptseries.nii", ".pscalar.nii",
    ".plabel.nii", ".pconn.nii", ".pdconn.nii", ".dpconn.nii", ".dfan.nii", ".fibertemp.nii",
)
_ANALYZE_HEADER_SUFFIXES = (".hdr", ".hdr.gz")
_ANALYZE_IMAGE_SUFFIXES = (".img", ".img.gz")
# uncompressed size above which a .nii.gz header is checked against the gzip trailer before
# anything is allocated (a damaged dim field must not allocate gigabytes)
_GZIP_CHECK_BYTES = 2**31


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("latin-1", errors="replace").strip("\x00 ")
    return value


def _split_suffix(name: str, suffixes: tuple[str, ...]) -> tuple[str, str] | None:
    lower = name.lower()
    for suffix in sorted(suffixes, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)], name[len(name) - len(suffix) :]
    return None


def _pair_files(path: Path) -> tuple[Path, Path]:
    """(header file, image file) of a NIfTI/Analyze file or ``.hdr``/``.img`` pair; checks both exist."""
    as_header = _split_suffix(path.name, _ANALYZE_HEADER_SUFFIXES)
    as_image = _split_suffix(path.name, _ANALYZE_IMAGE_SUFFIXES)
    if as_header is None and as_image is None:
        return path, path
    stem, suffix = as_header or as_image  # type: ignore[misc]
    gz = suffix.lower().endswith(".gz")
    if as_header is not None:
        candidates = [path.with_name(stem + s) for s in ((".img.gz", ".img") if gz else (".img", ".img.gz"))]
        image = next((c for c in candidates if c.is_file()), None)
        if image is None:
            raise InputError(f"{path.name} has no image file {candidates[0].name} next to it (an Analyze/NIfTI pair needs both)")
        return path, image
    candidates = [path.with_name(stem + s) for s in ((".hdr.gz", ".hdr") if gz else (".hdr", ".hdr.gz"))]
    header = next((c for c in candidates if c.is_file()), None)
    if header is None:
        raise InputError(f"{path.name} has no header file {candidates[0].name} next to it (an Analyze/NIfTI pair needs both)")
    return header, path


def is_analyze_path(path: str | os.PathLike) -> bool:
    """True for the two files of an Analyze/NIfTI pair (``.hdr``/``.img``, optionally gzipped)."""
    return _split_suffix(Path(path).name, _ANALYZE_HEADER_SUFFIXES + _ANALYZE_IMAGE_SUFFIXES) is not None


def _display_name(path: Path) -> str:
    for suffixes in (_ANALYZE_HEADER_SUFFIXES, _ANALYZE_IMAGE_SUFFIXES):
        split = _split_suffix(path.name, suffixes)
        if split is not None:
            return split[0]
    return strip_nifti_suffix(path)


def _cifti_error(name: str) -> InputError:
    return InputError(f"{name} is a CIFTI file (surface/grayordinate data), not a volume; open a NIfTI volume instead")


def _damaged_stream(name: str, exc: BaseException) -> InputError:
    return InputError(f"{name} is truncated or its compressed data is damaged ({one_line(exc)})")


def _gzip_problem(path: Path) -> BaseException | None:
    """The error met decompressing a ``.gz`` file to its end (truncated/corrupt), or None."""
    if not path.name.lower().endswith(".gz"):
        return None
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except (EOFError, zlib.error, OSError) as exc:
        return exc
    return None


def _raw_header(header_path: Path, name: str) -> Any:
    """The header of the file as stored, without nibabel's silent fixes, or an InputError."""
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(header_path)) as fh:
            block = fh.read(540)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _damaged_stream(header_path.name, exc) from exc
    except OSError as exc:
        raise InputError(f"cannot open {header_path.name}: {one_line(exc)}") from exc
    if len(block) == 0:
        raise InputError(f"{header_path.name} is empty")
    if len(block) < 348:
        raise InputError(f"{header_path.name} is too short to be a NIfTI file ({len(block)} bytes; its header alone is 348); it is truncated")
    sizes = {int.from_bytes(block[:4], order): mark for order, mark in (("little", "<"), ("big", ">"))}
    try:
        if 540 in sizes and len(block) >= 540 and block[4:8] in (b"n+2\x00", b"ni2\x00"):
            return nib.Nifti2Header(block[:540], endianness=sizes[540], check=False)
        if 348 in sizes:
            if block[344:348] in (b"n+1\x00", b"ni1\x00"):
                return nib.Nifti1Header(block[:348], endianness=sizes[348], check=False)
            return nib.AnalyzeHeader(block[:348], endianness=sizes[348], check=False)
    except Exception as exc:  # noqa: BLE001 - a damaged block
        raise InputError(f"{header_path.name} has a damaged NIfTI header ({one_line(exc)})") from exc
    raise InputError(f"{name} is not a NIfTI file (its first bytes are not a NIfTI or Analyze header)")


def _zooms_problem(pixdim: np.ndarray, name: str, used_by: str) -> str | None:
    bad = [i + 1 for i, v in enumerate(pixdim) if not np.isfinite(v) or v == 0]
    if bad:
        shown = ", ".join(f"{float(v):g}" for v in pixdim)
        return (
            f"{name} has voxel size ({shown}) in its header (pixdim), which {used_by}; a zero or NaN "
            "voxel size means the file header is damaged"
        )
    return None


def _transform_problem(hdr: Any, name: str, which: str) -> str | None:
    """What is wrong with the sform or the qform of a header, or None."""
    if which == "sform":
        srow = np.stack([np.asarray(hdr[k], dtype=float) for k in ("srow_x", "srow_y", "srow_z")])
        if not np.all(np.isfinite(srow)):
            return f"the sform of {name} holds NaN/Inf values; the file header is damaged"
        if abs(np.linalg.det(srow[:, :3])) < 1e-12:
            return (
                f"the sform of {name} is not a valid voxel-to-world transform (its 3x3 part is singular: "
                "a zero voxel size or collapsed axes); the file header is damaged"
            )
        return None
    quat = np.asarray([hdr[k] for k in ("quatern_b", "quatern_c", "quatern_d")], dtype=float)
    offset = np.asarray([hdr[k] for k in ("qoffset_x", "qoffset_y", "qoffset_z")], dtype=float)
    if not (np.all(np.isfinite(quat)) and np.all(np.isfinite(offset))):
        return f"the qform of {name} holds NaN/Inf values; the file header is damaged"
    norm2 = float(np.sum(quat**2))
    if norm2 > 1.0 + 1e-5:
        shown = ", ".join(f"{v:g}" for v in quat)
        return (
            f"the qform of {name} is not a valid rotation (quaternion b, c, d = {shown}, whose squares sum to "
            f"{norm2:.3g} > 1); the file header is damaged"
        )
    return None


def _header_problem(hdr: Any, name: str, strict: bool = False) -> str | None:
    """A one-line description of what makes the stored header unusable, or None.

    Only the transform nibabel will use is checked (sform, else qform, else pixdim), unless
    ``strict`` (after nibabel failed anyway), when the unused one is checked too.
    """
    dim = np.asarray(hdr["dim"], dtype=np.int64)
    ndim = int(dim[0])
    if not 1 <= ndim <= 7:
        return f"{name} has an invalid number of dimensions ({ndim}) in its header; the file is damaged or not NIfTI"
    sizes = dim[1 : ndim + 1]
    if np.any(sizes < 0):
        return f"{name} has negative image dimensions {sizes.tolist()} in its header; the file header is damaged"
    if np.any(sizes == 0):
        return f"{name} has an empty image (dimensions {sizes.tolist()}) in its header"
    try:
        hdr.get_data_dtype()
    except Exception:  # noqa: BLE001 - nibabel: "data code N not recognized"
        return f"{name} has an unknown data type code {int(hdr['datatype'])} in its header; the file is damaged or not NIfTI"
    pixdim = np.asarray(hdr["pixdim"], dtype=float)[1 : min(ndim, 3) + 1]
    codes = ("sform_code", "qform_code")
    sform_code, qform_code = (int(hdr[c]) if c in hdr else 0 for c in codes)
    problems: list[str | None] = []
    if sform_code > 0:
        problems.append(_transform_problem(hdr, name, "sform"))
    if qform_code > 0 and (sform_code <= 0 or strict):
        problems.append(_transform_problem(hdr, name, "qform"))
        problems.append(_zooms_problem(pixdim, name, "the qform uses"))
    if sform_code <= 0 and qform_code <= 0:
        problems.append(_zooms_problem(pixdim, name, "sets the spacing (the file has no sform/qform)"))
    return next((p for p in problems if p), None)


def _size_problem(img: Any, hdr: Any, name: str) -> str | None:
    """The image data cannot be in the file: refuse before allocating anything."""
    try:
        image_path = Path(img.file_map["image"].filename)
        offset = int(img.header.get_data_offset())
        nbytes = int(np.prod(img.shape, dtype=np.float64) * img.header.get_data_dtype().itemsize)
    except Exception:  # noqa: BLE001 - nothing to compare against
        return None
    expected = offset + nbytes
    shape = "x".join(str(s) for s in img.shape)
    if image_path.name.lower().endswith(".gz"):
        if expected < _GZIP_CHECK_BYTES:
            return None
        try:
            with open(image_path, "rb") as fh:
                fh.seek(-4, os.SEEK_END)
                isize = int.from_bytes(fh.read(4), "little")
        except OSError:
            return None
        if isize != expected % 2**32:
            return (
                f"{name} describes {shape} voxels ({expected / 2**30:.1f} GiB) but its compressed data does not "
                "hold that much; the file is truncated or its header is damaged"
            )
        return None
    try:
        size = image_path.stat().st_size
    except OSError:
        return None
    if size < expected:
        return (
            f"{name} is truncated: its header describes {shape} voxels of {img.header.get_data_dtype()} "
            f"({expected} bytes with the header) but the file holds {size} bytes"
        )
    return None


def rgb_volume_from_ras(data: np.ndarray, affine_ras: np.ndarray, name: str, metadata: dict[str, Any]) -> Volume:
    """RGB(A) voxel data ``(i, j[, k], C)`` -> a Volume in napari order, channel axis last, ``rgb`` marked."""
    channels = [volume_from_ras(data[..., c], affine_ras) for c in range(data.shape[-1])]
    stacked = np.stack([ch.data for ch in channels], axis=-1)
    return Volume(stacked, channels[0].affine, name=name, metadata=dict(metadata, rgb=True))


def _load_data(img: Any, name: str) -> tuple[np.ndarray, bool]:
    """The voxel array (scaled if the header says so) and whether it is RGB(A) colour."""
    header = img.header
    dtype = header.get_data_dtype()
    try:
        if dtype.names:  # RGB24 / RGBA32: a structured dtype with R, G, B(, A) fields
            from numpy.lib import recfunctions

            raw = np.asarray(img.dataobj)
            return np.ascontiguousarray(recfunctions.structured_to_unstructured(raw)), True
        # nibabel moves scl_slope/scl_inter from the loaded header into the array proxy
        slope = float(getattr(img.dataobj, "slope", 1.0))
        inter = float(getattr(img.dataobj, "inter", 0.0))
        if (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_)) and slope == 1.0 and inter == 0.0:
            data = np.asarray(img.dataobj)
        else:
            data = img.get_fdata(dtype=np.float32)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _damaged_stream(name, exc) from exc
    except MemoryError as exc:
        raise InputError(f"{name} describes an image of {img.shape} voxels, too large to load here") from exc
    except (OSError, ValueError) as exc:
        raise InputError(f"the image data of {name} cannot be read; the file is truncated or damaged ({one_line(exc)})") from exc
    # squeeze trailing singleton dimensions beyond the third (e.g. X, Y, Z, 1)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    # colour stored as 8-bit channels along the last axis: (X, Y, Z, C) or (X, Y, Z, 1, C)
    if data.dtype == np.uint8 and data.ndim == 5 and data.shape[3] == 1 and data.shape[4] in (3, 4):
        data = data[:, :, :, 0, :]
    rgb = data.dtype == np.uint8 and data.ndim == 4 and data.shape[-1] in (3, 4)
    return data, rgb


def _read_nifti(path: Path) -> Volume:
    if not path.exists():
        raise InputError(f"NIfTI file not found: {path}")
    if path.is_dir():
        raise InputError(f"{path.name} is a folder, not a NIfTI file")
    name = path.name
    if name.lower().endswith(_CIFTI_SUFFIXES):
        raise _cifti_error(name)
    header_path, _ = _pair_files(path)
    raw = _raw_header(header_path, name)
    problem = _header_problem(raw, name)
    if problem:
        raise InputError(problem)
    intent = int(raw["intent_code"]) if "intent_code" in raw else 0
    if 3000 <= intent < 3100:  # NIFTI_INTENT_CONNECTIVITY_*: CIFTI
        raise _cifti_error(name)
    try:
        img = nib.load(str(path))
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _damaged_stream(name, exc) from exc
    except NotImplementedError as exc:
        raise InputError(f"{name} is a kind of NIfTI file nibabel cannot read as a volume ({one_line(exc) or 'not supported'})") from exc
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad files
        stream = _gzip_problem(path)
        if stream is not None:
            raise _damaged_stream(name, stream) from exc
        raise InputError(_header_problem(raw, name, strict=True) or f"could not read {name} as NIfTI: {one_line(exc)}") from exc
    if isinstance(img, nib.Cifti2Image):
        raise _cifti_error(name)
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        img = nib.Nifti1Image.from_image(img)
    size_problem = _size_problem(img, raw, name)
    if size_problem:
        raise InputError(size_problem)
    header = img.header
    dtype = header.get_data_dtype()
    affine = np.asarray(img.affine, dtype=float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        which = "sform" if int(header["sform_code"]) > 0 else "qform" if int(header["qform_code"]) > 0 else "voxel size"
        raise InputError(f"the {which} of {name} does not give a valid voxel-to-world transform; the file header is damaged")
    data, rgb = _load_data(img, name)

    space_unit, time_unit = header.get_xyzt_units()
    to_mm = _UNIT_TO_MM.get(space_unit, 1.0)
    affine_mm = affine.copy()
    affine_mm[:3, :] *= to_mm
    intent_code, intent_params, intent_name = header.get_intent()
    meta: dict[str, Any] = {
        "nifti": {
            "source_path": str(path),
            "source_affine": affine.tolist(),
            "source_ornt": "".join(nio.aff2axcodes(affine)),
            "source_shape": [int(s) for s in img.shape],
            "source_dtype": str(dtype),
            "qform_code": int(header["qform_code"]),
            "sform_code": int(header["sform_code"]),
            "xyzt_units": [space_unit, time_unit],
            "unit_to_mm": to_mm,
            "intent": {"code": str(intent_code), "params": [float(p) for p in intent_params], "name": str(intent_name)},
            "descrip": _jsonable(header["descrip"][()]),
        }
    }
    if rgb:
        return rgb_volume_from_ras(data, affine_mm, _display_name(path), meta)
    return volume_from_ras(data, affine_mm, name=_display_name(path), metadata=meta)


def read_nifti(path: str | os.PathLike) -> Volume:
    """Read a NIfTI file (``.nii``/``.nii.gz``, or an Analyze/NIfTI ``.hdr``/``.img`` pair) into a Volume.

    The result is in napari order (see the module docstring). RGB24/RGBA32 files, and 4D
    uint8 files whose last axis holds 3 or 4 colour channels, give ``(S, A, R, C)`` data
    with ``metadata["rgb"] = True``. Any problem with the file (missing, truncated, not
    NIfTI, CIFTI, a damaged sform/qform/pixdim/dim) raises :class:`InputError` with one
    line naming the file; nibabel's warnings and log messages are silenced.
    """
    path = Path(path)
    return guarded(f"could not read {path.name} as NIfTI", _read_nifti, path)


# -- writing --------------------------------------------------------------------------------
def _output_dtype(data: np.ndarray, preferred: str | None = None) -> np.dtype:
    """float -> float32; bool -> uint8; integers -> the source dtype if it fits, else the smallest fitting."""
    if data.dtype == np.bool_:
        return np.dtype(np.uint8)
    if not np.issubdtype(data.dtype, np.integer):
        return np.dtype(np.float32)
    lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
    candidates = [np.uint8, np.int16, np.uint16, np.int32]
    if preferred:
        try:
            pref = np.dtype(preferred)
            if np.issubdtype(pref, np.integer):
                candidates.insert(0, pref.type)
        except TypeError:
            pass
    for cand in candidates:
        info = np.iinfo(cand)
        if info.min <= lo and hi <= info.max:
            return np.dtype(cand)
    return np.dtype(np.int64)


def _nifti_meta_from_like(like: Any) -> dict[str, Any]:
    if like is None:
        return {}
    if isinstance(like, Volume):
        return dict(like.metadata.get("nifti") or {})
    if isinstance(like, dict):
        return dict(like.get("nifti", like))
    if isinstance(like, (str, os.PathLike)):
        return dict(read_nifti(like).metadata["nifti"])
    raise InputError(f"'like' must be a Volume, a NIfTI path or a metadata dict, got {type(like).__name__}")


def _resolve_output_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if is_nifti_path(path):
        return path
    if path.suffix == "":
        return path.with_name(path.name + ".nii.gz")
    raise InputError(f"cannot write {path.name}: NIfTI file names end with .nii or .nii.gz")


def nifti_image(volume: Volume, like: Any = None) -> nib.Nifti1Image:
    """The NIfTI image of a Volume in its source orientation (see the module docstring).

    ``like`` (a Volume, a NIfTI path or a ``metadata["nifti"]`` dict) supplies the source
    orientation and header codes when ``volume`` carries none of its own.
    """
    src = dict(volume.metadata.get("nifti") or {}) or _nifti_meta_from_like(like)
    data, affine = volume_to_ras(volume, src.get("source_ornt"))
    # snap to the file's own affine when the geometry did not change (exact round trip)
    src_affine = src.get("source_affine")
    if src_affine is not None:
        src_affine_mm = np.asarray(src_affine, dtype=float).copy()
        src_affine_mm[:3, :] *= float(src.get("unit_to_mm", 1.0))
        if np.allclose(affine, src_affine_mm, atol=1e-6) and float(src.get("unit_to_mm", 1.0)) == 1.0:
            affine = np.asarray(src_affine, dtype=float)
    out_dtype = _output_dtype(np.asarray(data), src.get("source_dtype"))
    data = np.asarray(data).astype(out_dtype, copy=False)

    img = nib.Nifti1Image(data, affine)
    header = img.header
    header.set_data_dtype(out_dtype)
    sform_code = int(src.get("sform_code") or 0)
    qform_code = int(src.get("qform_code") or 0)
    sform_code = sform_code or qform_code or 1
    qform_code = qform_code or sform_code
    img.set_sform(affine, code=sform_code)
    img.set_qform(affine, code=qform_code)
    time_unit = (src.get("xyzt_units") or [None, "sec"])[1]
    if time_unit not in ("sec", "msec", "usec", "hz", "ppm", "rads"):
        time_unit = "sec"
    header.set_xyzt_units("mm", time_unit)
    intent = src.get("intent") or {}
    if intent.get("code") not in (None, "", "none"):
        try:
            header.set_intent(intent["code"], tuple(intent.get("params") or ()), name=intent.get("name") or "")
        except Exception:  # noqa: BLE001 - an intent we cannot restore is not worth failing for
            pass
    header["descrip"] = _descrip(volume.metadata.get("medgen") or {})
    return img


def _descrip(provenance: dict[str, Any]) -> bytes:
    """The header's 80-byte description: napari-medgen, the family that made the volume, and a fallback if any."""
    text = "napari-medgen"
    if provenance.get("family"):
        text += f" {provenance['family']}"
    if provenance.get("fallback"):
        text += f" FALLBACK: {provenance['fallback']}"
    return text.encode("ascii", "replace")[:79]


def nifti_writer(img: nib.Nifti1Image, compressed: bool) -> Callable[[IO[bytes]], None]:
    """A writer of ``img`` into a binary file (gzip level 1 for ``.nii.gz``, as nibabel saves)."""

    def write(fh: IO[bytes]) -> None:
        if compressed:
            with gzip.GzipFile(filename="", fileobj=fh, mode="wb", compresslevel=1, mtime=0) as gz:
                img.to_stream(gz)
        else:
            img.to_stream(fh)

    return write


def nifti_output(volume: Volume, path: str | os.PathLike, like: Any = None) -> tuple[Path, Callable[[IO[bytes]], None]]:
    """The file name (``.nii.gz`` added when there is no suffix) and the writer of ``volume``.

    For callers that commit several outputs together (:class:`~napari_medgen.io.output.OutputTransaction`).
    """
    path = _resolve_output_path(path)
    return path, nifti_writer(nifti_image(volume, like), path.name.lower().endswith(".gz"))


def write_nifti(volume: Volume, path: str | os.PathLike, like: Any = None, *, overwrite: bool = False) -> Path:
    """Write a Volume as ``.nii``/``.nii.gz`` in its source orientation, atomically; returns the path.

    An existing file is replaced only with ``overwrite=True``; a failure midway leaves no file
    under ``path`` and an earlier file there intact (see :mod:`napari_medgen.io.output`).
    """
    from .output import write_file

    path, writer = nifti_output(volume, path, like)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_file(path, writer, overwrite=overwrite, role="output")


# -- coordinates (for the CLI's --points) -------------------------------------------------
def world_xyz_to_index(volume: Volume, xyz: np.ndarray) -> np.ndarray:
    """Scanner RAS+ ``(x, y, z)`` mm -> float array index in napari order, shape (N, 3)."""
    pts = np.atleast_2d(np.asarray(xyz, dtype=float))
    if pts.shape[-1] != 3:
        raise InputError(f"world coordinates need three values (x, y, z) per point, got shape {pts.shape}")
    return volume.world_to_index(pts[:, ::-1])


def nifti_ijk_to_index(volume: Volume, ijk: np.ndarray) -> np.ndarray:
    """Voxel indices ``(i, j, k)`` of the source file as stored on disk -> array index, shape (N, 3)."""
    pts = np.atleast_2d(np.asarray(ijk, dtype=float))
    if pts.shape[-1] != 3:
        raise InputError(f"voxel indices need three values (i, j, k) per point, got shape {pts.shape}")
    aff = _source_affine_mm(volume)
    if aff is None:
        raise InputError(
            f"'{volume.name or 'this volume'}' was not read from a NIfTI file, so file voxel indices "
            "have no meaning; give world (x, y, z) mm coordinates instead"
        )
    xyz = pts @ aff[:3, :3].T + aff[:3, 3]
    return world_xyz_to_index(volume, xyz)


def _source_affine_mm(volume: Volume | None) -> np.ndarray | None:
    """The affine of the NIfTI file the volume was read from, in mm (None: not read from NIfTI)."""
    src = (volume.metadata.get("nifti") or {}) if volume is not None else {}
    if src.get("source_affine") is None:
        return None
    aff = np.asarray(src["source_affine"], dtype=float).copy()
    aff[:3, :] *= float(src.get("unit_to_mm", 1.0))
    return aff


def world_xyz_to_nifti_ijk(volume: Volume | None, xyz: np.ndarray) -> np.ndarray | None:
    """World RAS+ mm -> voxel indices of the NIfTI file the volume was read from (None: not a NIfTI)."""
    aff = _source_affine_mm(volume)
    if aff is None:
        return None
    return np.linalg.solve(aff[:3, :3], np.asarray(xyz, dtype=float) - aff[:3, 3])

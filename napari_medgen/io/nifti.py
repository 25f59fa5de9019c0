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

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

from ..errors import InputError
from ..volume import Volume

__all__ = [
    "read_nifti",
    "write_nifti",
    "world_xyz_to_index",
    "nifti_ijk_to_index",
    "volume_from_ras",
    "volume_to_ras",
    "is_nifti_path",
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
def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("latin-1", errors="replace").strip("\x00 ")
    return value


def read_nifti(path: str | os.PathLike) -> Volume:
    """Read a ``.nii``/``.nii.gz`` file into a Volume in napari order (see module docstring)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"NIfTI file not found: {path}")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad files
        raise InputError(f"could not read {path.name} as NIfTI: {exc}") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        img = nib.Nifti1Image.from_image(img)
    header = img.header
    dtype = header.get_data_dtype()
    # nibabel moves scl_slope/scl_inter from the loaded header into the array proxy
    slope = float(getattr(img.dataobj, "slope", 1.0))
    inter = float(getattr(img.dataobj, "inter", 0.0))
    trivial_scaling = slope == 1.0 and inter == 0.0
    if (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_)) and trivial_scaling:
        data = np.asarray(img.dataobj)
    else:
        data = img.get_fdata(dtype=np.float32)
    # squeeze trailing singleton dimensions beyond the third (e.g. X, Y, Z, 1)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]

    affine = np.asarray(img.affine, dtype=float)
    space_unit, time_unit = header.get_xyzt_units()
    to_mm = _UNIT_TO_MM.get(space_unit, 1.0)
    affine_mm = affine.copy()
    affine_mm[:3, :] *= to_mm
    intent_code, intent_params, intent_name = header.get_intent()
    meta = {
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
    return volume_from_ras(data, affine_mm, name=strip_nifti_suffix(path), metadata=meta)


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


def write_nifti(volume: Volume, path: str | os.PathLike, like: Any = None) -> Path:
    """Write a Volume as ``.nii``/``.nii.gz`` in its source orientation; returns the path written.

    ``like`` (a Volume, a NIfTI path or a ``metadata["nifti"]`` dict) supplies the source
    orientation and header codes when ``volume`` carries none of its own.
    """
    path = _resolve_output_path(path)
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
    header["descrip"] = b"napari-medgen"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        nib.save(img, str(path))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"could not write {path}: {exc}") from exc
    return path


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
    src = volume.metadata.get("nifti") or {}
    if src.get("source_affine") is None:
        raise InputError(
            f"'{volume.name or 'this volume'}' was not read from a NIfTI file, so file voxel indices "
            "have no meaning; give world (x, y, z) mm coordinates instead"
        )
    aff = np.asarray(src["source_affine"], dtype=float).copy()
    aff[:3, :] *= float(src.get("unit_to_mm", 1.0))
    xyz = pts @ aff[:3, :3].T + aff[:3, 3]
    return world_xyz_to_index(volume, xyz)

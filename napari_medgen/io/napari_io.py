"""npe2 reader/writer contributions, and the one converter between napari layers and Volumes.

:func:`volume_to_layer_data` and :func:`layer_to_volume` are the only place where napari's
``scale``/``translate``/``affine`` meet :class:`~napari_medgen.volume.Volume`; widgets, the
reader and the writers all go through them. napari itself is never imported here at
module level (layers are duck-typed), so this module works in the CLI and in tests.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError
from ..volume import Volume
from .dicom import folder_has_dicom, read_dicom_series
from .nifti import is_nifti_path, read_nifti, write_nifti

__all__ = [
    "get_reader",
    "write_image",
    "write_labels",
    "layer_to_volume",
    "volume_to_layer_data",
    "contrast_limits",
    "looks_like_labels",
]

LayerDataTuple = tuple  # (data, kwargs, layer_type), as napari.types.LayerDataTuple

#: metadata key holding the Volume geometry a layer was made from
GEOMETRY_KEY = "medgen_volume"
#: integer volumes with at most this many distinct non-negative values open as labels
MAX_LABEL_VALUES = 64
_LABEL_NAME = re.compile(r"(label|seg|mask)", re.IGNORECASE)
_LABEL_INTENTS = {"label", "neuroname"}


# -- reader ---------------------------------------------------------------------------------
def _single_path(path: str | os.PathLike | Sequence[str | os.PathLike]) -> Path | None:
    """One path to read, or None: a list must be one file, or DICOM files of one folder."""
    if isinstance(path, (list, tuple)):
        if len(path) == 1:
            return Path(path[0])
        paths = [Path(p) for p in path]
        if paths and all(p.suffix.lower() == ".dcm" for p in paths) and len({p.parent for p in paths}) == 1:
            return paths[0]
        return None
    return Path(path)


def get_reader(path: str | os.PathLike | Sequence[str | os.PathLike]) -> Callable[..., list[LayerDataTuple]] | None:
    """npe2 reader hook: a reader for NIfTI files, DICOM folders and ``.dcm`` files, else None."""
    p = _single_path(path)
    if p is None:
        return None
    if is_nifti_path(p) and not p.is_dir():
        return _read_nifti_layers
    if p.is_dir():
        return _read_dicom_layers if folder_has_dicom(p) else None
    if p.suffix.lower() == ".dcm":
        return _read_dicom_layers
    return None


def _read_nifti_layers(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerDataTuple]:
    p = _single_path(path)
    volume = read_nifti(p)
    kind = "labels" if looks_like_labels(volume) else "image"
    return [volume_to_layer_data(volume, kind=kind)]


def _read_dicom_layers(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerDataTuple]:
    p = _single_path(path)
    volume = read_dicom_series(p)
    return [volume_to_layer_data(volume, kind="image")]


def looks_like_labels(volume: Volume) -> bool:
    """Integer NIfTI whose name/intent says label/seg/mask, or with few non-negative values."""
    data = np.asarray(volume.data)
    if not (np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_):
        return False
    nifti = volume.metadata.get("nifti") or {}
    name = " ".join(str(s) for s in (volume.name, Path(str(nifti.get("source_path", ""))).name))
    intent = str((nifti.get("intent") or {}).get("code", "")).lower()
    if _LABEL_NAME.search(name) or intent in _LABEL_INTENTS:
        return True
    if data.size == 0:
        return False
    flat = data.reshape(-1)
    sample = flat[:: max(1, flat.size // 200_000)]
    if sample.min() < 0 or np.unique(sample).size > MAX_LABEL_VALUES:
        return False
    return bool(flat.min() >= 0 and np.unique(flat).size <= MAX_LABEL_VALUES)


def contrast_limits(data: np.ndarray) -> list[float]:
    """Display range from the 0.5 and 99.5 percentiles of the finite values (a subsample if large)."""
    arr = np.asarray(data)
    if arr.dtype == np.bool_ or arr.size == 0:
        return [0.0, 1.0]
    flat = arr.reshape(-1)
    sample = flat[:: max(1, flat.size // 2_000_000)]
    sample = sample[np.isfinite(sample)] if np.issubdtype(sample.dtype, np.floating) else sample
    if sample.size == 0:
        return [0.0, 1.0]
    lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    if not hi > lo:
        lo, hi = float(sample.min()), float(sample.max())
    if not hi > lo:
        hi = lo + 1.0
    return [lo, hi]


# -- Volume <-> layer -------------------------------------------------------------------------
def _geometry_kwargs(volume: Volume) -> dict[str, Any]:
    """napari scale/translate(/affine) for a Volume of any supported dimensionality."""
    ndim = np.ndim(volume.data)
    kw = volume.napari_kwargs()
    kw = {k: (np.asarray(v).tolist() if k != "affine" else np.asarray(v, dtype=float)) for k, v in kw.items()}
    if ndim == 3:
        return kw
    if ndim == 2:  # slice 0 of axis 0: show the in-plane geometry only
        return {"scale": kw["scale"][1:], "translate": kw["translate"][1:]}
    if ndim > 3:  # leading non-spatial axes (time, channels): unit scale
        lead = ndim - 3
        out: dict[str, Any] = {"scale": [1.0] * lead + kw["scale"], "translate": [0.0] * lead + kw["translate"]}
        if "affine" in kw:
            aff = np.eye(ndim + 1)
            aff[lead:, lead:] = kw["affine"]
            out["affine"] = aff
        return out
    raise InputError(f"cannot show a {ndim}D array as an image layer")


def volume_to_layer_data(
    volume: Volume,
    kind: str = "image",
    name: str | None = None,
    extra_metadata: dict[str, Any] | None = None,
    **layer_kwargs: Any,
) -> LayerDataTuple:
    """A napari layer-data tuple ``(data, kwargs, layer_type)`` with the Volume's geometry.

    ``kind`` is ``"image"``, ``"labels"`` or ``"heatmap"`` (an image layer in inferno with
    additive blending). ``layer_kwargs`` override the defaults (colormap, contrast...).
    """
    if kind not in ("image", "labels", "heatmap"):
        raise InputError(f"unknown layer kind {kind!r}; expected image, labels or heatmap")
    data = np.asarray(volume.data)
    metadata: dict[str, Any] = dict(volume.metadata)
    metadata[GEOMETRY_KEY] = {
        "affine": np.asarray(volume.affine, dtype=float).tolist(),
        "shape": [int(s) for s in data.shape],
        "axes": "napari order; world (z, y, x) = (S, A, R) mm",
    }
    if extra_metadata:
        metadata.update(extra_metadata)
    kwargs: dict[str, Any] = _geometry_kwargs(volume)
    kwargs["name"] = name or volume.name or "volume"
    kwargs["metadata"] = metadata
    if kind == "labels":
        layer_type = "labels"
        if data.dtype == np.bool_:
            data = data.astype(np.uint8)
        elif not np.issubdtype(data.dtype, np.integer):
            if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
                raise InputError(f"labels must be whole numbers; '{kwargs['name']}' holds fractional values")
            data = data.astype(np.int32)
    else:
        layer_type = "image"
        kwargs["contrast_limits"] = contrast_limits(data)
        kwargs["colormap"] = "inferno" if kind == "heatmap" else "gray"
        if kind == "heatmap":
            kwargs["blending"] = "additive"
    kwargs.update(layer_kwargs)
    return (data, kwargs, layer_type)


def _attr(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _matrix(value: Any, n: int) -> np.ndarray:
    """An (n+1)x(n+1) matrix from a napari Affine, an array, or None (identity)."""
    if value is None:
        return np.eye(n + 1)
    value = getattr(value, "affine_matrix", value)
    mat = np.asarray(value, dtype=float)
    if mat.shape == (n + 1, n + 1):
        return mat
    if mat.ndim == 2 and mat.shape[0] == mat.shape[1] and mat.shape[0] < n + 1:  # pad leading axes
        out = np.eye(n + 1)
        k = mat.shape[0] - 1
        out[n - k :, n - k :] = mat
        return out
    if mat.ndim == 2 and mat.shape[0] == mat.shape[1] and mat.shape[0] > n + 1:  # keep trailing axes
        return mat[-(n + 1) :, -(n + 1) :]
    raise InputError(f"layer affine of shape {mat.shape} does not match a {n}D layer")


def _data_to_physical(n: int, scale: np.ndarray, translate: np.ndarray, rotate: Any, shear: Any) -> np.ndarray:
    """napari's data->physical transform: translate @ rotate @ shear @ scale."""
    trivial_rotate = rotate is None or np.allclose(np.asarray(rotate, dtype=float), np.eye(n)) or np.ndim(rotate) == 0 and float(rotate) == 0
    trivial_shear = shear is None or np.size(shear) == 0 or not np.any(np.asarray(shear, dtype=float) - (np.eye(n) if np.ndim(shear) == 2 else 0))
    if trivial_rotate and trivial_shear:
        mat = np.eye(n + 1)
        mat[:n, :n] = np.diag(scale)
        mat[:n, n] = translate
        return mat
    from napari.utils.transforms import Affine  # only for rotated/sheared layers

    return np.asarray(Affine(scale=scale, translate=translate, rotate=rotate, shear=shear).affine_matrix, dtype=float)


def layer_to_volume(layer_or_attrs: Any) -> Volume:
    """A Volume from a napari layer (duck-typed) or a writer's attribute dict (with ``data``).

    The layer's ``scale``/``translate``/``affine`` are authoritative for spacing and
    origin (a super-resolved layer has a new scale); the direction cosines of an oblique
    source are restored from the stored geometry when the layer has no affine of its own.
    """
    data = _attr(layer_or_attrs, "data")
    if data is None:
        raise InputError("the layer has no data")
    if isinstance(data, (list, tuple)):  # multiscale: the full-resolution level
        data = data[0]
    data = np.asarray(data)
    ndim = data.ndim
    if ndim < 2:
        raise InputError(f"a {ndim}D layer cannot be a volume")
    metadata = dict(_attr(layer_or_attrs, "metadata") or {})
    stored = metadata.pop(GEOMETRY_KEY, None) or {}
    stored_affine = np.asarray(stored["affine"], dtype=float) if "affine" in stored else None
    name = str(_attr(layer_or_attrs, "name") or "")

    scale = _attr(layer_or_attrs, "scale")
    translate = _attr(layer_or_attrs, "translate")
    scale = np.ones(ndim) if scale is None else np.asarray(scale, dtype=float)[-ndim:]
    translate = np.zeros(ndim) if translate is None else np.asarray(translate, dtype=float)[-ndim:]
    if scale.size < ndim:
        scale = np.concatenate([np.ones(ndim - scale.size), scale])
    if translate.size < ndim:
        translate = np.concatenate([np.zeros(ndim - translate.size), translate])
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        shown = tuple(round(float(v), 6) for v in scale)
        raise InputError(f"layer '{name}' has scale {shown}; voxel spacing must be positive (mm)")
    if not stored and "nifti" not in metadata and "dicom" not in metadata and np.allclose(scale, 1.0):
        # nothing says what the voxel size is: napari's default scale of 1
        metadata["spacing_missing"] = True
    layer_affine = _matrix(_attr(layer_or_attrs, "affine"), ndim)
    physical = _data_to_physical(ndim, scale, translate, _attr(layer_or_attrs, "rotate"), _attr(layer_or_attrs, "shear"))
    full = layer_affine @ physical

    if ndim >= 3:
        affine = full[ndim - 3 :, ndim - 3 :].copy()
        linear_trivial = np.allclose(full[ndim - 3 : ndim, ndim - 3 : ndim], np.diag(np.diag(physical)[ndim - 3 : ndim]))
        if linear_trivial and stored_affine is not None:
            # no rotation on the layer: restore the source direction cosines (oblique scans)
            direction = stored_affine[:3, :3] / np.where(
                np.linalg.norm(stored_affine[:3, :3], axis=0) == 0, 1.0, np.linalg.norm(stored_affine[:3, :3], axis=0)
            )
            sp = np.abs(np.diag(affine[:3, :3]))
            signs = np.sign(np.diag(affine[:3, :3]))
            affine[:3, :3] = direction * (sp * np.where(signs == 0, 1.0, signs))
    else:  # 2D: slice 0 of axis 0, in-plane geometry from the layer
        affine = stored_affine.copy() if stored_affine is not None else np.eye(4)
        affine[1:3, 1:3] = full[:2, :2]
        affine[1:3, 3] = full[:2, 2]
    return Volume(data, affine, name=name, metadata=metadata)


# -- writers --------------------------------------------------------------------------------
def _nifti_target(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p if is_nifti_path(p) else p.with_name(p.name + ".nii.gz")


def _write_layer(path: str, data: Any, meta: dict[str, Any], labels: bool) -> list[str]:
    attrs = dict(meta or {})
    attrs["data"] = data
    volume = layer_to_volume(attrs)
    if labels:
        arr = np.asarray(volume.data)
        if arr.dtype == np.bool_:
            volume.data = arr.astype(np.uint8)
        elif not np.issubdtype(arr.dtype, np.integer):
            volume.data = np.round(arr).astype(np.int32)
    written = write_nifti(volume, _nifti_target(path))
    return [str(written)]


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: an image layer to ``.nii``/``.nii.gz`` in its source orientation."""
    return _write_layer(path, data, meta, labels=False)


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: a labels layer to an integer ``.nii``/``.nii.gz``."""
    return _write_layer(path, data, meta, labels=True)

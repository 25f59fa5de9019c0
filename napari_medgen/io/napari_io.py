"""npe2 reader/writer contributions, and the one converter between napari layers and Volumes.

:func:`volume_to_layer_data` and :func:`layer_to_volume` are the only place where napari's
``scale``/``translate``/``affine`` meet :class:`~napari_medgen.volume.Volume`; widgets, the
reader and the writers all go through them. napari itself is never imported here at
module level (layers are duck-typed), so this module works in the CLI and in tests.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError
from ..volume import Volume
from .dicom import folder_has_dicom, read_dicom_series, read_each_dicom_series
from .nifti import is_nifti_path, nifti_output, read_nifti
from .output import check_outputs, write_file
from .read import one_line, volume_kind

__all__ = [
    "get_reader",
    "write_image",
    "write_labels",
    "layer_to_volume",
    "volume_to_layer_data",
    "contrast_limits",
    "looks_like_labels",
    "heatmap_colormap",
    "heatmap_kwargs",
    "HEATMAP_COLORMAP_NAME",
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
    """npe2 reader hook: a reader for NIfTI files, DICOM folders and DICOM files, else None.

    Only looks at names and magic bytes (napari calls it for every candidate path), and
    never raises.
    """
    try:
        p = _single_path(path)
        if p is None:
            return None
        if p.is_dir():
            return _read_dicom_layers if folder_has_dicom(p) else None
        kind = volume_kind(p)
    except Exception:  # noqa: BLE001 - a path we cannot even look at is not ours to read
        return None
    if kind == "nifti":
        return _read_nifti_layers
    if kind == "dicom":
        return _read_dicom_layers
    return None


def _reader_errors(reader: Callable[..., list[LayerDataTuple]]) -> Callable[..., list[LayerDataTuple]]:
    """Only :class:`InputError` (one line, naming the file) leaves a reader: napari shows it as is."""

    @functools.wraps(reader)
    def wrapper(path: Any) -> list[LayerDataTuple]:
        try:
            return reader(path)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - the guarantee: no third-party type reaches napari
            first = path[0] if isinstance(path, (list, tuple)) and path else path
            raise InputError(f"could not open '{Path(str(first)).name}': {one_line(exc)}") from exc

    return wrapper


def _layer(volume: Volume, kind: str = "image", name: str | None = None) -> LayerDataTuple:
    """A layer-data tuple; RGB(A) volumes (channel axis last) become ``rgb=True`` image layers."""
    if not volume.metadata.get("rgb"):
        return volume_to_layer_data(volume, kind=kind, name=name)
    colour = np.asarray(volume.data)
    _, kwargs, _ = volume_to_layer_data(volume.with_data(colour[..., 0]), kind="image", name=name)
    kwargs.pop("colormap", None)
    kwargs.pop("contrast_limits", None)
    kwargs["rgb"] = True
    return (colour, kwargs, "image")


def _one_path(path: Any, what: str) -> Path:
    p = _single_path(path)
    if p is None:
        raise InputError(f"MedGen opens one {what} at a time; got {len(path)} paths")
    return p


@_reader_errors
def _read_nifti_layers(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerDataTuple]:
    volume = read_nifti(_one_path(path, "NIfTI file"))
    kind = "labels" if not volume.metadata.get("rgb") and looks_like_labels(volume) else "image"
    return _present([_layer(volume, kind=kind)])


@_reader_errors
def _read_dicom_layers(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerDataTuple]:
    """A DICOM file (its series), or a folder: one layer per series; a bad series does not block the others."""
    p = _one_path(path, "DICOM folder")
    if not p.is_dir():
        return _present([_layer(read_dicom_series(p))])
    results = read_each_dicom_series(p)
    if len(results) == 1:
        _, outcome = results[0]
        if isinstance(outcome, InputError):
            raise outcome
        return _present([_layer(outcome)])
    layers: list[LayerDataTuple] = []
    failures: list[str] = []
    for summary, outcome in results:
        if isinstance(outcome, InputError):
            failures.append(f"{summary['layer_name']}: {one_line(outcome)}")
            continue
        # a volume is named "<number>: <description>"; a 2D image after its file
        name = summary["layer_name"] if np.ndim(outcome.data) - bool(outcome.metadata.get("rgb")) >= 3 else outcome.name
        layers.append(_layer(outcome, name=name))
    if not layers:
        raise InputError(f"none of the {len(results)} DICOM series in folder '{p.name}' could be read: {'; '.join(failures)}")
    if failures:  # napari shows warnings raised while reading as notifications
        warnings.warn(
            f"MedGen skipped {len(failures)} of the {len(results)} DICOM series in folder '{p.name}': {'; '.join(failures)}",
            UserWarning,
            stacklevel=2,
        )
    return _present(layers)


def _present(layer_data: list[LayerDataTuple]) -> list[LayerDataTuple]:
    """Last step of every reader: prepare the viewer to show the scans (display convention)."""
    try:  # a display nicety must never stop a file from opening
        import napari

        from ..display import install_reading_convention

        viewer = napari.current_viewer()
        if viewer is not None:
            install_reading_convention(viewer)  # applied when these layers are inserted
    except Exception:  # noqa: BLE001 - no napari (CLI), or no viewer
        import logging

        logging.getLogger("napari_medgen.io").debug("reading convention not installed", exc_info=True)
    return layer_data


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


# -- heatmaps ---------------------------------------------------------------------------------
#: the registered name of the heatmap colormap (see :func:`heatmap_colormap`)
HEATMAP_COLORMAP_NAME = "medgen_heat"
# (position in the contrast range, RGBA): with limits [0, 2 x threshold], fully transparent up
# to half the threshold, a translucent red at the threshold, opaque orange to yellow above it
_HEAT_STOPS = (
    (0.0, (0.75, 0.0, 0.0, 0.0)),
    (0.25, (0.75, 0.0, 0.0, 0.0)),
    (0.5, (1.0, 0.1, 0.0, 0.6)),
    (0.75, (1.0, 0.55, 0.0, 0.9)),
    (1.0, (1.0, 1.0, 0.3, 1.0)),
)


def heatmap_colormap() -> dict[str, Any]:
    """The heatmap colormap, as napari's ``Colormap(**this)`` arguments (no napari import here).

    Transparent over the lower quarter of the contrast range, so that the anatomy beneath
    stays readable where the score is low, then red -> orange -> yellow with rising opacity.
    """
    return {
        "name": HEATMAP_COLORMAP_NAME,
        "display_name": "MedGen heat",
        "colors": [list(rgba) for _, rgba in _HEAT_STOPS],
        "controls": [at for at, _ in _HEAT_STOPS],
    }


def heatmap_kwargs(data: Any = None, threshold: float | None = None) -> dict[str, Any]:
    """Layer settings of a heatmap: the colormap above, translucent blending, contrast limits.

    The limits are ``[0, 2 x threshold]`` when a threshold is known (the threshold then sits
    at mid-colour, and scores below half of it are invisible), else ``[0, the 99.5th
    percentile]`` of ``data`` (from its minimum when that is negative).
    """
    kwargs: dict[str, Any] = {"colormap": heatmap_colormap(), "blending": "translucent"}
    limit = None
    try:
        if threshold is not None and np.isfinite(float(threshold)) and float(threshold) > 0:
            limit = [0.0, 2.0 * float(threshold)]
    except (TypeError, ValueError):
        limit = None
    if limit is None and data is not None:
        lo, hi = contrast_limits(data)
        limit = [min(0.0, lo), hi]
    if limit is not None:
        kwargs["contrast_limits"] = limit
    return kwargs


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
    *,
    threshold: float | None = None,
    **layer_kwargs: Any,
) -> LayerDataTuple:
    """A napari layer-data tuple ``(data, kwargs, layer_type)`` with the Volume's geometry.

    ``kind`` is ``"image"``, ``"labels"`` or ``"heatmap"`` (an image layer that leaves the
    anatomy beneath readable: see :func:`heatmap_kwargs`; ``threshold`` is the heatmap's
    candidate threshold, when known). ``layer_kwargs`` override the defaults (colormap,
    contrast...).
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
        if kind == "heatmap":
            kwargs.update(heatmap_kwargs(data, threshold))
        else:
            kwargs["contrast_limits"] = contrast_limits(data)
            kwargs["colormap"] = "gray"
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
    """Save a layer through the one output path: atomic, and never over the scan a result came from.

    napari's Save dialog has already asked before replacing an existing file, so the file is
    replaced; but a MedGen result is never written over the file of the run's input (its
    ``metadata["nifti"]["source_path"]``): that would destroy the scan it was computed from.
    """
    attrs = dict(meta or {})
    attrs["data"] = data
    volume = layer_to_volume(attrs)
    if labels:
        arr = np.asarray(volume.data)
        if arr.dtype == np.bool_:
            volume.data = arr.astype(np.uint8)
        elif not np.issubdtype(arr.dtype, np.integer):
            volume.data = np.round(arr).astype(np.int32)
    target, writer = nifti_output(volume, _nifti_target(path))
    layer_meta = attrs.get("metadata") or {}
    source = (layer_meta.get("nifti") or {}).get("source_path")
    if "medgen" in layer_meta and source:
        check_outputs([target], [("input scan of this result", source)], overwrite=True, roles=["save"])
    written = write_file(target, writer, overwrite=True, role="layer file")
    return [str(written)]


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: an image layer to ``.nii``/``.nii.gz`` in its source orientation."""
    return _write_layer(path, data, meta, labels=False)


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: a labels layer to an integer ``.nii``/``.nii.gz``."""
    return _write_layer(path, data, meta, labels=True)

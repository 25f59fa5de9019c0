"""Input checks shared by the CLI and the docks: one clear sentence per problem.

Everything a family receives has passed these checks, so families can assume a finite,
non-constant 3D intensity volume with sane spacing and extra inputs of the declared kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError
from .volume import MAX_SPACING_MM, MIN_SPACING_MM, Volume

if TYPE_CHECKING:  # pragma: no cover
    from .family import Inputs, ModelFamily

__all__ = ["validate_image", "validate_inputs", "check_points", "MIN_AXIS_VOXELS"]

#: fewest voxels along any axis for a volume to count as 3D
MIN_AXIS_VOXELS = 3
#: an integer volume with at most this many distinct values looks like a label map
LABEL_LIKE_MAX_VALUES = 8


def _label(volume: Volume, role: str) -> str:
    return f"{role} '{volume.name}'" if volume.name else role


def validate_image(volume: Volume, role: str = "input") -> None:
    """Raise :class:`InputError` unless ``volume`` is a usable 3D intensity image."""
    what = _label(volume, role)
    meta = volume.metadata or {}
    data = volume.data
    if meta.get("layer_type") == "labels":
        raise InputError(f"{what} is a Labels layer; pick an image layer (labels are masks, not intensities)")
    if meta.get("rgb"):
        raise InputError(f"{what} is an RGB(A) image; MedGen needs a single-channel 3D scan")
    shape = tuple(int(s) for s in np.shape(data))
    if len(shape) == 2:
        raise InputError(f"{what} is 2D {shape}; MedGen needs a 3D volume (load the whole series, not one slice)")
    if len(shape) == 4 and shape[-1] in (3, 4) and np.asarray(data).dtype == np.uint8:
        raise InputError(f"{what} looks like an RGB(A) volume {shape}; MedGen needs a single-channel 3D scan")
    if len(shape) >= 4:
        raise InputError(
            f"{what} is {len(shape)}D {shape}; MedGen needs one 3D volume "
            "(pick a single time point or channel first, e.g. layer.data[0])"
        )
    if len(shape) != 3:
        raise InputError(f"{what} has {len(shape)} dimensions {shape}; MedGen needs a 3D volume")
    if shape[-1] in (3, 4) and min(shape[:2]) >= 8 * shape[-1]:
        raise InputError(
            f"{what} has shape {shape}: that is a 2D picture with {shape[-1]} colour channels (RGB(A), "
            "channels last), not a 3D scan"
        )
    if min(shape) < MIN_AXIS_VOXELS:
        raise InputError(f"{what} has shape {shape}; every axis needs at least {MIN_AXIS_VOXELS} voxels")
    arr = np.asarray(data)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{what} has data type {arr.dtype}; expected numbers")
    if arr.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise InputError(
                f"{what} has {bad} NaN/Inf voxels; replace them (e.g. with 0 or the background value) before running"
            )
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi:
        raise InputError(f"{what} is constant (every voxel = {lo:g}); there is nothing to process")
    if arr.dtype.kind in "biu" or arr.dtype == bool:
        n_values = len(np.unique(arr[:: max(1, arr.shape[0] // 16)])) if arr.size > 1e6 else len(np.unique(arr))
        if n_values <= LABEL_LIKE_MAX_VALUES:
            raise InputError(
                f"{what} holds only {n_values} distinct integer values, so it looks like a label map or mask; "
                "pick the intensity image"
            )
    sp = np.asarray(volume.spacing)
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"{what} has invalid voxel spacing {tuple(sp)} mm; spacing must be positive")
    if np.any(sp < MIN_SPACING_MM) or np.any(sp > MAX_SPACING_MM):
        raise InputError(
            f"{what} has voxel spacing {tuple(round(float(s), 6) for s in sp)} mm, outside "
            f"[{MIN_SPACING_MM:g}, {MAX_SPACING_MM:g}] mm; check the file header's units"
        )
    if not np.all(np.isfinite(volume.affine)):
        raise InputError(f"{what} has a non-finite affine; check the file header")


def check_points(points: np.ndarray, image: Volume) -> np.ndarray:
    """Validate (N, 3) voxel-index points against ``image``; returns a float array."""
    pts = np.asarray(points, dtype=float)
    if pts.ndim == 1 and pts.size == 3:
        pts = pts[None, :]
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError(f"points must be an (N, 3) array of 3D positions, got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise InputError("points contain NaN/Inf coordinates")
    upper = np.asarray(image.shape) - 0.5
    outside = np.any((pts < -0.5) | (pts > upper), axis=1)
    if np.any(outside):
        first = pts[np.argmax(outside)]
        raise InputError(
            f"{int(outside.sum())} point(s) lie outside the image {image.shape}, e.g. voxel "
            f"({first[0]:.1f}, {first[1]:.1f}, {first[2]:.1f})"
        )
    return pts


def validate_inputs(family: "ModelFamily", inputs: "Inputs") -> None:
    """Check the main image and every extra input against what ``family`` declares."""
    validate_image(inputs.image, "input")
    from .family import Task

    if Task(family.task) is Task.SUPERRES and inputs.image.metadata.get("spacing_missing"):
        raise InputError(
            f"{_label(inputs.image, 'input')} has no voxel spacing (napari scale 1, 1, 1 and no file header); "
            "super-resolution needs it: open the scan from its NIfTI/DICOM file or set the layer's scale "
            "to the voxel size in mm, e.g. layer.scale = (5, 0.9, 0.9)"
        )
    ref_spec = family.input_spec("references")
    if inputs.references and ref_spec is None:
        raise InputError(f"family {family.id!r} takes no reference volumes")
    if ref_spec is not None:
        n = len(inputs.references)
        if ref_spec.required and n < ref_spec.min_count:
            need = ref_spec.min_count
            raise InputError(
                f"{family.display_name or family.id} needs {'at least ' if n else ''}{need} reference "
                f"scan{'s' if need > 1 else ''} (given: {n or 'none'})."
                + (f" {ref_spec.help.rstrip('.')}." if ref_spec.help else "")
                + " (--reference PATH on the command line)"
            )
        if ref_spec.max_count is not None and n > ref_spec.max_count:
            raise InputError(f"family {family.id!r} takes at most {ref_spec.max_count} reference volume(s); got {n}")
        for i, ref in enumerate(inputs.references):
            validate_image(ref, f"reference {i + 1}")
            if ref_spec.same_grid and not inputs.image.same_grid(ref, atol=1e-3):
                raise InputError(
                    f"{_label(ref, f'reference {i + 1}')} has shape {ref.shape} and spacing "
                    f"{tuple(round(s, 4) for s in ref.spacing)} mm, but family {family.id!r} needs the input's grid "
                    f"(shape {inputs.image.shape}, spacing {tuple(round(s, 4) for s in inputs.image.spacing)} mm); "
                    "resample it first"
                )
    pts_spec = family.input_spec("points")
    has_points = inputs.points is not None and np.asarray(inputs.points).size > 0
    if pts_spec is None and has_points:
        raise InputError(f"family {family.id!r} does not use points")
    if pts_spec is not None:
        if pts_spec.required and not has_points:
            raise InputError(
                f"family {family.id!r} needs at least one point" + (f" ({pts_spec.help})" if pts_spec.help else "")
            )
        if has_points:
            inputs.points = check_points(inputs.points, inputs.image)
    mask_spec = family.input_spec("mask")
    if mask_spec is None and inputs.mask is not None:
        raise InputError(f"family {family.id!r} does not use a mask")
    if mask_spec is not None:
        if inputs.mask is None:
            if mask_spec.required:
                raise InputError(f"family {family.id!r} needs a mask on the input's grid")
        else:
            mask = inputs.mask
            if tuple(np.shape(mask.data)) != inputs.image.shape:
                raise InputError(
                    f"the mask has shape {tuple(np.shape(mask.data))} but the input has shape {inputs.image.shape}; "
                    "they must share one grid"
                )
            if not np.allclose(mask.spacing, inputs.image.spacing, rtol=1e-3):
                raise InputError(
                    f"the mask has spacing {tuple(round(s, 4) for s in mask.spacing)} mm but the input has "
                    f"{tuple(round(s, 4) for s in inputs.image.spacing)} mm; they must share one grid"
                )
            if not np.any(np.asarray(mask.data)):
                raise InputError("the mask is empty (no voxel is set)")

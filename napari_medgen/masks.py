"""Automatic foreground (head/brain) masks, shared by the built-in and classical families."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from .errors import InputError
from .volume import Volume

__all__ = ["foreground_mask", "ellipsoid_structure", "given_mask", "mask_input", "random_rotation"]


def ellipsoid_structure(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """A boolean ball of ``radius_mm`` on an anisotropic voxel grid (at least 3 voxels wide)."""
    sp = np.asarray(spacing, dtype=float)
    half = np.maximum(1, np.floor(radius_mm / sp)).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, sp)], indexing="ij")
    dist2 = sum((g / max(radius_mm, 1e-6)) ** 2 for g in grids)
    ball = dist2 <= 1.0
    # never degenerate to a single voxel: keep the 6-neighbourhood at least
    centre = tuple(half)
    ball[centre] = True
    for axis in range(3):
        for step in (-1, 1):
            idx = list(centre)
            idx[axis] += step
            ball[tuple(idx)] = True
    return ball


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation (QR of a Gaussian matrix with the sign fixed): a lesion's orientation."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def foreground_mask(
    data: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    check: Callable[[], None] | None = None,
) -> np.ndarray:
    """Boolean head/tissue mask: Otsu on a lightly smoothed copy, holes filled, largest part kept.

    Steps: Gaussian smoothing (about 1 mm), Otsu threshold, largest 26-connected component,
    a small (2 mm) closing and a 3D hole fill. The input is never modified. If Otsu finds
    nothing (a nearly uniform image) every voxel above the minimum is returned instead.
    ``check`` (e.g. ``ctx.check_cancelled``) is called between steps so a run can be cancelled.
    """
    check = check or (lambda: None)
    sp = np.maximum(np.asarray(spacing, dtype=float), 1e-6)
    arr = np.asarray(data, dtype=np.float32)
    smooth = ndimage.gaussian_filter(arr, sigma=np.clip(1.0 / sp, 0.3, 3.0), mode="nearest")
    check()
    sample = smooth.ravel()[:: max(1, smooth.size // 2_000_000)]
    sample = sample[np.isfinite(sample)]
    lo, hi = (float(sample.min()), float(sample.max())) if sample.size else (0.0, 0.0)
    if hi <= lo:
        return np.ones(arr.shape, dtype=bool)
    # ignore extreme outliers (e.g. a few hot voxels) so they do not pull the threshold
    p_lo, p_hi = np.percentile(sample, [0.0, 99.9])
    if p_hi > p_lo:
        sample = np.clip(sample, p_lo, p_hi)
    try:
        thr = float(threshold_otsu(sample))
    except ValueError:
        thr = lo
    fg = smooth > thr
    del smooth
    if not fg.any():
        fg = arr > lo
        if not fg.any():
            return np.ones(arr.shape, dtype=bool)
    check()
    labels, n = ndimage.label(fg, structure=np.ones((3, 3, 3), dtype=bool))
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        fg = labels == int(np.argmax(sizes))
    del labels
    check()
    # closing with padding, so objects that touch the border are not eroded there
    ball = ellipsoid_structure(2.0, sp)
    pad = [(h, h) for h in (np.asarray(ball.shape) // 2)]
    padded = np.pad(fg, pad, mode="edge")
    closed = ndimage.binary_closing(padded, structure=ball)
    fg = closed[tuple(slice(p, p + n) for (p, _), n in zip(pad, fg.shape))]
    check()
    return ndimage.binary_fill_holes(fg)


def given_mask(mask: Volume, image: Volume, purpose: str = "") -> np.ndarray:
    """A user-given mask as booleans on the image's grid; InputError if misplaced or empty."""
    data = np.asarray(mask.data)
    if data.shape != image.shape:
        raise InputError(
            f"the mask has shape {data.shape} but the image has shape {image.shape}; it must be on the image's grid"
        )
    region = data != 0
    if not region.any():
        raise InputError("the mask is empty: it has no non-zero voxel" + (f" {purpose}" if purpose else ""))
    return region


def mask_input(mask: Volume) -> Volume:
    """A mask file or Labels layer as a family receives it: its labels kept, nothing below zero.

    Integer-valued data stay labels (one lesion shape per label for a lesion family; every
    family that needs a region reads ``!= 0``); other data (a probability map) become
    ``> 0``. Binarising everything merged the labels of a label image into one.
    """
    data = np.asarray(mask.data)
    finite = np.isfinite(data) if data.dtype.kind == "f" else np.ones(data.shape, dtype=bool)
    if data.dtype.kind in "iub" or (finite.all() and np.array_equal(data, np.rint(data))):
        labels = np.where(data > 0, data, 0)
        top = int(labels.max()) if labels.size else 0
        dtype = np.uint8 if top < 256 else (np.uint16 if top < 65536 else np.uint32)
        return mask.with_data(labels.astype(dtype))
    return mask.with_data(data > 0)

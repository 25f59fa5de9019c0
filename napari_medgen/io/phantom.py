"""A procedural head phantom: fast, deterministic test data with known structure."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from ..volume import Volume

__all__ = ["make_phantom", "PHANTOM_LABELS"]

#: label values of :func:`make_phantom`'s ``labels`` output
PHANTOM_LABELS = {"background": 0, "skull": 1, "csf": 2, "grey": 3, "white": 4}


def make_phantom(
    shape: Sequence[int] = (48, 64, 64),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    noise: float = 0.02,
    seed: int = 0,
    name: str = "phantom",
) -> tuple[Volume, np.ndarray]:
    """A T1-like head: skull, CSF, folded grey matter and white matter, plus smooth texture.

    Returns ``(volume, labels)`` with intensities roughly in [0, 1] (white matter
    brightest, as in T1) and a label array using :data:`PHANTOM_LABELS`. The geometry is
    defined in millimetres, so changing ``spacing`` samples the same head more or less
    finely.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    spacing = np.asarray(spacing, dtype=float)
    extent = np.asarray(shape) * spacing
    grids = np.meshgrid(*[(np.arange(n) + 0.5) * s - e / 2 for n, s, e in zip(shape, spacing, extent)], indexing="ij")
    half = extent / 2
    r = np.sqrt(sum((g / (0.92 * h)) ** 2 for g, h in zip(grids, half)))
    # folding: a smooth angular modulation of the cortex boundary
    theta = np.arctan2(grids[1], grids[2])
    phi = np.arctan2(grids[0], np.sqrt(grids[1] ** 2 + grids[2] ** 2) + 1e-6)
    fold = 0.06 * np.sin(7 * theta) * np.cos(5 * phi)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[r < 1.0] = 1
    labels[r < 0.88] = 2
    labels[r < 0.82 + fold * 0.3] = 3
    labels[r < 0.60 + fold] = 4
    means = np.array([0.0, 0.15, 0.25, 0.55, 0.8])
    img = means[labels].astype(np.float64)
    # smooth low-frequency texture inside the head so the image is not piecewise constant
    tex = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=3.0 / spacing.clip(min=1e-3))
    tex /= tex.std() + 1e-8
    img += 0.03 * tex * (labels > 0)
    img = ndimage.gaussian_filter(img, sigma=0.6 / spacing)
    img += noise * rng.standard_normal(shape) * (labels > 0)
    img = np.clip(img, 0, None).astype(np.float32)
    return Volume.from_spacing(img, spacing, origin=-half + spacing / 2, name=name), labels

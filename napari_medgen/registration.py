"""Align another subject's scan to this one with SimpleITK (rigid then affine, Mattes MI).

The normative anomaly families train on healthy reference scans of other subjects: other
shape, spacing, position and intensity scale. Each reference is registered to the scan and
resampled onto its grid here. Mutual information makes the match independent of the
intensity scale; the contrast itself is checked separately (:func:`contrast_agreement`)
because MI would happily align a T2 to a T1 and the families must refuse that pairing.

Geometry: a :class:`~napari_medgen.volume.Volume` maps napari index order (i0, i1, i2) to
world (z, y, x) mm. A SimpleITK image made from the same array indexes (x, y, z), the reverse,
so its physical frame is the world frame with the axes reversed: origin and spacing are
reversed and its direction x spacing matrix is ``P A P`` for the reversal ``P``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from scipy import ndimage

from .errors import Cancelled, InputError
from .volume import Volume

__all__ = ["Registration", "register", "align_reference", "to_sitk", "contrast_agreement"]

_REVERSE = np.eye(3)[::-1]
AFFINE_STEP = 1.0


def to_sitk(volume: Volume, data: np.ndarray | None = None):
    """A float32 SimpleITK image with the volume's geometry (world axes reversed, see module)."""
    import SimpleITK as sitk

    arr = np.ascontiguousarray(np.asarray(volume.data if data is None else data, dtype=np.float32))
    img = sitk.GetImageFromArray(arr)
    mat = _REVERSE @ volume.affine[:3, :3] @ _REVERSE
    spacing = np.linalg.norm(mat, axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"'{volume.name or 'volume'}' has a degenerate voxel size {tuple(spacing)}")
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(v) for v in _REVERSE @ volume.affine[:3, 3]])
    img.SetDirection([float(v) for v in (mat / spacing).ravel()])
    return img


@dataclass
class Registration:
    """A reference resampled onto the scan's grid, with how well it fits."""

    data: np.ndarray  # float32 on the fixed grid; outside the moving field of view: 0
    inside: np.ndarray  # bool: fixed voxels that the moving image covers
    metric: float  # final Mattes mutual information (negative; lower is better)
    transform: list[float] = field(default_factory=list)  # affine parameters (SimpleITK order)
    info: dict[str, Any] = field(default_factory=dict)


def register(
    fixed: Volume,
    moving: Volume,
    fixed_mask: np.ndarray | None = None,
    *,
    kind: str = "affine",
    check_cancelled: Callable[[], None] | None = None,
    iterations: int = 200,
    sampling: float = 0.05,
    seed: int = 0,
    shrink: tuple[int, ...] | None = None,
) -> Registration:
    """Register ``moving`` to ``fixed`` (``kind`` "rigid" or "affine") and resample it there.

    Centre of mass initialisation, then a rigid (Euler) stage and, for "affine", a full
    affine stage, each over a pyramid (``shrink``; by default 4x then 2x for a large volume,
    whose 2x level already places it to well under a voxel, and 4x, 2x, 1x for a small one)
    with Mattes mutual
    information on a random sample of voxels (``sampling`` fraction, seeded) and
    regular-step gradient descent. ``fixed_mask`` restricts the metric to the foreground.
    ``check_cancelled`` is called every iteration; cancelling aborts the registration.
    """
    import SimpleITK as sitk

    if kind not in ("rigid", "affine"):
        raise InputError(f"unknown registration kind {kind!r}; use 'rigid' or 'affine'")
    if shrink is None:
        shrink = (4, 2) if np.prod(fixed.shape) > 4_000_000 else (4, 2, 1)
    f_img = to_sitk(fixed)
    mask_img = _mask_image(fixed, fixed_mask)
    m_img = to_sitk(moving)
    init = sitk.CenteredTransformInitializer(
        f_img, m_img, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    cancelled = {"flag": False}

    def stage(initial, transform_kind):
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(float(sampling), seed=int(seed) + 1)
        if mask_img is not None:
            reg.SetMetricFixedMask(mask_img)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0 if transform_kind == "rigid" else AFFINE_STEP, minStep=1e-4,
            numberOfIterations=int(iterations), gradientMagnitudeTolerance=1e-8,
        )
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([int(v) for v in shrink])
        reg.SetSmoothingSigmasPerLevel([0.5 * float(v) if v > 1 else 0.0 for v in shrink])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        if transform_kind == "affine":
            tx = sitk.AffineTransform(3)
            tx.SetMatrix(initial.GetMatrix())
            tx.SetTranslation(initial.GetTranslation())
            tx.SetCenter(initial.GetCenter())
        else:
            tx = initial
        reg.SetInitialTransform(tx, inPlace=False)
        if check_cancelled is not None:

            def on_iteration():
                try:
                    check_cancelled()
                except Cancelled:
                    cancelled["flag"] = True
                    reg.StopRegistration()

            reg.AddCommand(sitk.sitkIterationEvent, on_iteration)
        out = _single(reg.Execute(f_img, m_img))
        if cancelled["flag"]:
            raise Cancelled("run cancelled by the user")
        return out, reg.GetMetricValue(), reg.GetOptimizerStopConditionDescription()

    rigid, metric, stop = stage(init, "rigid")
    final = rigid
    if kind == "affine":
        affine, a_metric, a_stop = stage(rigid, "affine")
        # keep the affine only where it fits better on all foreground voxels (not on the
        # random sample it was optimised on): on a small or smooth image it can drift
        if _metric(f_img, m_img, affine, mask_img) <= _metric(f_img, m_img, rigid, mask_img):
            final, metric, stop = affine, a_metric, a_stop
        else:
            stop = f"rigid kept: the affine stage fitted worse ({a_stop})"
    resampled = sitk.Resample(m_img, f_img, final, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    ones = sitk.Resample(
        sitk.Cast(m_img * 0 + 1, sitk.sitkFloat32), f_img, final, sitk.sitkNearestNeighbor, 0.0, sitk.sitkFloat32
    )
    data = sitk.GetArrayFromImage(resampled).astype(np.float32, copy=False)
    inside = sitk.GetArrayFromImage(ones) > 0.5
    return Registration(
        data=data,
        inside=inside,
        metric=float(metric),
        transform=[float(v) for v in final.GetParameters()],
        info={"kind": kind, "stop": stop},
    )


def align_reference(image: Volume, ref: Volume, fg: np.ndarray, name: str, check_cancelled=None,
                    seed: int = 0) -> tuple[Registration, np.ndarray, np.ndarray]:
    """A reference scan (another subject) aligned onto ``image``: (registration, overlap, its foreground there).

    Affine registration with ``fg`` as the metric mask; a reference that covers less than half
    of the scan's foreground after alignment (another body part or field of view) is refused.
    The reference's own automatic foreground is taken on the aligned data, inside its coverage.
    """
    from .masks import foreground_mask

    reg = register(image, ref, fg, kind="affine", check_cancelled=check_cancelled, seed=seed)
    overlap = fg & reg.inside
    if overlap.sum() < 0.5 * fg.sum():
        raise InputError(
            f"reference '{name}' covers only {100 * overlap.sum() / fg.sum():.0f}% of the scan's foreground after "
            "alignment: it shows another body part or field of view"
        )
    r_fg = foreground_mask(reg.data, image.spacing, check=check_cancelled) & reg.inside
    return reg, overlap, r_fg


def _mask_image(fixed: Volume, fixed_mask: np.ndarray | None):
    """The metric mask as a SimpleITK uint8 image on the fixed grid (None: no mask)."""
    import SimpleITK as sitk

    if fixed_mask is None:
        return None
    return sitk.Cast(to_sitk(fixed, np.asarray(fixed_mask, dtype=np.float32)) > 0.5, sitk.sitkUInt8)


def _metric(f_img, m_img, transform, mask_img) -> float:
    """Mattes mutual information of ``transform`` over every (masked) voxel; lower is better."""
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.NONE)
    if mask_img is not None:
        reg.SetMetricFixedMask(mask_img)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetInitialTransform(transform)
    return float(reg.MetricEvaluate(f_img, m_img))


def _single(tx):
    """The one transform inside the composite that ``Execute`` returns, as its own type."""
    import SimpleITK as sitk

    while isinstance(tx, sitk.CompositeTransform) and tx.GetNumberOfTransforms() == 1:
        tx = tx.GetNthTransform(0)
    return tx.Downcast() if hasattr(tx, "Downcast") else tx


def contrast_agreement(
    scan: np.ndarray, reference: np.ndarray, mask: np.ndarray, seed: int = 0, sigma: float = 1.0
) -> float:
    """Spearman rank correlation of two aligned images over ``mask`` (smoothed by ``sigma`` voxels first).

    Same contrast (T1 vs T1): clearly positive (about 0.6 to 0.9 after an affine alignment
    of two subjects). A reversed tissue order (T1 vs T2): negative.
    """
    rng = np.random.default_rng(seed)
    a = np.asarray(scan, dtype=np.float32)
    b = np.asarray(reference, dtype=np.float32)
    if sigma > 0:  # against noise at full resolution; a coarse template is compared as it is
        a, b = ndimage.gaussian_filter(a, sigma), ndimage.gaussian_filter(b, sigma)
    idx = np.flatnonzero(mask)
    if idx.size < 100:
        return float("nan")
    if idx.size > 200_000:
        idx = rng.choice(idx, 200_000, replace=False)
    ra = np.argsort(np.argsort(a.ravel()[idx])).astype(np.float64)
    rb = np.argsort(np.argsort(b.ravel()[idx])).astype(np.float64)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")

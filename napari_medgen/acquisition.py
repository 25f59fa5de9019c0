"""What a scan says about its own acquisition: noise level and grain, effective resolution per
axis, tissue intensities, CT or MR.

Used wherever something is drawn into a scan and must look acquired with it (lesion
insertion), and by the classical families. Everything here is measured on the scan alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "noise_sigma",
    "effective_fwhm",
    "TissueLevels",
    "tissue_levels",
    "looks_like_ct",
    "tissue_texture",
    "band_pass",
    "FWHM_PER_SPACING",
    "FWHM_PER_SIGMA",
    "SliceProfile",
    "estimate_slice_profile",
]

_MAD_TO_SIGMA = 1.4826
#: the resolution assumed along the sharpest axis, in voxels (an acquisition sampled at its
#: own resolution); the other axes are measured relative to it
FWHM_PER_SPACING = 1.0
#: a Gaussian's full width at half maximum per standard deviation
FWHM_PER_SIGMA = float(2.0 * np.sqrt(2.0 * np.log(2.0)))


def _laplacian_kernel(axes: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    kernel = np.zeros((3, 3, 3), dtype=np.float32)
    kernel[1, 1, 1] = 1.0
    for axis in axes:
        for side in (0, 2):
            idx = [1, 1, 1]
            idx[axis] = side
            kernel[tuple(idx)] = -1.0 / (2 * len(axes))
    return kernel


def _fine_axes(spacing: Sequence[float] | None) -> tuple[int, ...]:
    """The axes of about the finest voxel size (a thick slice's neighbours differ by anatomy too)."""
    if spacing is None:
        return (0, 1, 2)
    sp = np.asarray(spacing, dtype=float)
    return tuple(a for a in range(3) if sp[a] < 1.5 * sp.min())


def _flat_region(arr: np.ndarray, fg: np.ndarray | None) -> np.ndarray:
    region = fg if fg is not None and fg.any() else np.ones(arr.shape, dtype=bool)
    grad = ndimage.gaussian_gradient_magnitude(arr, sigma=1.5, mode="nearest")
    flat = region & (grad <= np.median(grad[region]))
    return flat if flat.sum() >= 100 else region


def noise_sigma(
    data: np.ndarray,
    fg: np.ndarray | None,
    check: Callable[[], None] | None = None,
    spacing: Sequence[float] | None = None,
) -> float:
    """Noise standard deviation from the MAD of a high-pass residual inside ``fg``.

    The residual is the 6-neighbour Laplacian (voxel minus the mean of its face
    neighbours), divided by the filter's own noise gain so white noise of standard
    deviation s gives back about s. Only the flatter half of the foreground (lowest
    smoothed gradient magnitude) is used, so anatomical edges barely inflate the estimate.
    With ``spacing``, only the axes of about the finest voxel size are used (a thick-slice
    scan's neighbouring slices differ by anatomy, not only by noise).
    """
    arr = np.asarray(data, dtype=np.float32)
    kernel = _laplacian_kernel(_fine_axes(spacing))
    resid = ndimage.convolve(arr, kernel, mode="nearest")
    if check is not None:
        check()
    values = resid[_flat_region(arr, fg)]
    values = values[:: max(1, values.size // 4_000_000)].astype(np.float64)
    if values.size == 0:
        return 0.0
    mad = float(np.median(np.abs(values - np.median(values))))
    gain = float(np.sqrt(np.sum(kernel.astype(np.float64) ** 2)))
    return _MAD_TO_SIGMA * mad / gain


def _lag_energy(arr: np.ndarray, region: np.ndarray, axis: int, lag: int) -> float:
    n = arr.shape[axis]
    if lag >= n:
        return 0.0
    a = [slice(None)] * 3
    b = [slice(None)] * 3
    a[axis], b[axis] = slice(lag, None), slice(0, n - lag)
    diff = arr[tuple(a)] - arr[tuple(b)]
    keep = region[tuple(a)] & region[tuple(b)]
    values = diff[keep]
    return float(np.mean(values.astype(np.float64) ** 2)) if values.size else 0.0


def effective_fwhm(
    data: np.ndarray,
    spacing: Sequence[float],
    fg: np.ndarray | None,
    sigma: float | None = None,
    check: Callable[[], None] | None = None,
) -> list[float]:
    """Effective resolution (FWHM of an equivalent Gaussian point-spread function, mm) per axis.

    Anatomy has about the same detail in every direction, so an axis that shows less
    intensity change over the same distance is blurred more (a thick slice, a smoothing
    reconstruction). For each axis the mean squared difference over one common distance
    (the largest voxel size) is measured inside the foreground, less the noise's share
    (2 s^2). The sharpest axis is taken as resolved at its own voxel size
    (:data:`FWHM_PER_SPACING`); another axis's extra blur is the Gaussian that, applied
    along the sharpest axis, brings its difference energy down to that axis's. A relative
    measurement (in the spirit of slice-profile estimation from the in-plane data, e.g.
    ESPRESO), cheaper and with one stated assumption.
    """
    check = check or (lambda: None)
    arr = np.asarray(data, dtype=np.float32)
    sp = np.asarray(spacing, dtype=float)
    sigma = noise_sigma(arr, fg, spacing=sp) if sigma is None else float(sigma)
    region = fg if fg is not None and fg.any() else np.ones(arr.shape, dtype=bool)
    # keep it fast: a central block of at most ~2M voxels of the foreground's bounding box
    idx = np.argwhere(region)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    size = hi - lo
    shrink = max(1.0, (np.prod(size) / 2.0e6) ** (1.0 / 3.0))
    half = np.maximum((size / shrink / 2).astype(int), 4)
    mid = (lo + hi) // 2
    box = tuple(slice(max(0, m - h), min(n, m + h)) for m, h, n in zip(mid, half, arr.shape))
    arr, region = arr[box], region[box]
    dist = float(sp.max())
    lags = [max(1, int(round(dist / s))) for s in sp]
    noise_e = 2.0 * sigma**2
    energy = [max(_lag_energy(arr, region, a, lags[a]) - noise_e, 1e-12) for a in range(3)]
    check()
    # the sharpest axis: most change over the common distance (among axes long enough to measure)
    usable = [a for a in range(3) if arr.shape[a] > lags[a] + 1]
    if not usable:
        return [float(FWHM_PER_SPACING * s) for s in sp]
    ref = max(usable, key=lambda a: energy[a])
    base = FWHM_PER_SPACING * sp[ref]
    out = []
    for axis in range(3):
        # axes of about the sharpest one's voxel size are taken as resolved like it: anatomy is not
        # isotropic enough (nor is a template) to measure a fraction of a voxel
        if axis == ref or axis not in usable or sp[axis] < 1.5 * sp[ref] or energy[axis] >= energy[ref]:
            out.append(float(FWHM_PER_SPACING * sp[axis]))
            continue
        lo_s, hi_s = 0.0, 4.0 * dist
        for _ in range(18):  # bisection on the extra blur (mm)
            mid_s = 0.5 * (lo_s + hi_s)
            blurred = ndimage.gaussian_filter1d(arr, mid_s / sp[ref], axis=ref, mode="nearest")
            e = _lag_energy(blurred, region, ref, lags[ref]) - noise_e
            if e > energy[axis]:
                lo_s = mid_s
            else:
                hi_s = mid_s
        check()
        extra = 0.5 * (lo_s + hi_s)
        # at least the voxel's own integration (a box of its size) on top of the sharpest axis' blur
        floor = FWHM_PER_SIGMA * np.sqrt(sp[axis] ** 2 / 12.0 + (base / FWHM_PER_SIGMA) ** 2 - sp[ref] ** 2 / 12.0)
        out.append(float(max(np.hypot(base, FWHM_PER_SIGMA * extra), floor)))
    return out


#: an estimated slice profile from fewer slices than this is flagged as uncertain
MIN_PROFILE_SLICES = 20
#: a spectral misfit (RMS of log power) above this means no Gaussian profile explains the scan (anatomy fits
#: within 0.05-0.2); the profile is then assumed equal to the spacing, and says so
MAX_PROFILE_MISFIT = 1.0


@dataclass
class SliceProfile:
    """The through-plane slice profile of a thick-slice scan: a Gaussian of ``fwhm_mm``.

    ``fwhm_mm`` is the blur that, applied to the in-plane data and sampled at the slice
    spacing, reproduces the through-plane statistics (what a self-supervised method must
    simulate). ``source`` is "estimated" or "given"; ``gap_mm`` = spacing - FWHM when positive
    (negative overlap is reported as 0). ``fit_rms``: the spectral fit's residual (log power).
    """

    fwhm_mm: float
    spacing_mm: float
    axis: int
    source: str = "estimated"
    fit_rms: float = 0.0
    #: slices the estimate was made from (0 when given)
    slices: int = 0

    @property
    def note(self) -> str:
        """A caveat about an estimate from few slices ("" otherwise)."""
        if self.source == "estimated" and 0 < self.slices < MIN_PROFILE_SLICES:
            return f"from only {self.slices} slices: uncertain, give the thickness if it is known"
        return ""

    @property
    def gap_mm(self) -> float:
        return max(0.0, self.spacing_mm - self.fwhm_mm)

    def record(self) -> dict:
        return {"fwhm_mm": round(self.fwhm_mm, 3), "spacing_mm": round(self.spacing_mm, 4), "gap_mm": round(self.gap_mm, 3),
                "axis": self.axis, "source": self.source, "fit_rms": round(self.fit_rms, 4), "slices": self.slices,
                "note": self.note}


def _segment_psd(arr: np.ndarray, fg: np.ndarray, axis: int, spacing: float, n: int,
                 max_segments: int = 40_000) -> np.ndarray:
    """Mean power spectral density (per mm) of ``n``-sample line segments along ``axis``.

    Segments overlap by half and are kept when at least 3/4 of them lies in ``fg``; each is
    made zero-mean and Hann-windowed. White noise of variance v gives v x spacing at every
    frequency, whatever the spacing, so spectra along axes of different spacing compare.
    """
    a = np.moveaxis(arr, axis, -1)
    m = np.moveaxis(fg, axis, -1)
    length = a.shape[-1]
    n = min(n, length)
    parts = []
    for start in range(0, length - n + 1, max(1, n // 2)):
        seg = a[..., start : start + n].reshape(-1, n)
        inside = m[..., start : start + n].reshape(-1, n).mean(axis=1) >= 0.75
        parts.append(seg[inside])
    seg = np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, n))
    if len(seg) == 0:
        return np.zeros(n // 2 + 1)
    if len(seg) > max_segments:  # evenly spread, deterministic
        seg = seg[np.linspace(0, len(seg) - 1, max_segments).astype(np.int64)]
    seg -= seg.mean(axis=1, keepdims=True)
    window = np.hanning(n + 2)[1:-1]
    power = np.abs(np.fft.rfft(seg * window, axis=1)) ** 2
    return spacing * power.mean(axis=0) / float(np.sum(window**2))


def estimate_slice_profile(
    data: np.ndarray,
    spacing: Sequence[float],
    axis: int,
    fg: np.ndarray | None = None,
    check: Callable[[], None] | None = None,
    segment: int = 16,
    max_voxels: float = 2.0e6,
) -> SliceProfile:
    """Estimate the slice profile's FWHM of a thick-slice scan from the scan alone.

    In the spirit of ESPRESO (Han et al., 2021/2023): an in-plane axis, blurred with a
    candidate profile and sampled at the slice spacing, must look like the through-plane
    axis. The comparison is spectral: the power spectrum of through-plane line segments
    (``segment`` slices long) against the in-plane one (the same physical length, less the
    noise's share) times the Gaussian profile's transfer function, folded at the slice
    spacing (aliasing), times a free scale, plus the noise floor. For the comparison to be
    fair, the through-plane lines are taken from the scan blurred along that in-plane axis
    with the same candidate profile: an in-plane line of a thick-slice scan integrates across
    the thick profile, so a through-plane line must integrate across the candidate the same
    way (without it the estimate runs low, the more so the thicker the slices). Both in-plane
    axes are used; the FWHM with the smallest log-spectral residual wins (a coarse search over
    0.2-2.5 x the spacing, then a golden-section search). Assumes anatomy with about the same
    detail in every direction and a Gaussian profile; a second or two on a typical scan (a
    central in-plane block of at most ``max_voxels`` voxels is used).
    """
    check = check or (lambda: None)
    sp = np.asarray(spacing, dtype=float)
    arr = np.asarray(data, dtype=np.float32)
    lo, hi = (float(v) for v in np.percentile(arr, [0.5, 99.5]))
    arr = (arr - lo) / (hi - lo if hi > lo else 1.0)
    if fg is None:
        fg = ndimage.gaussian_filter(arr, 1.0) > 0.1
    s = float(sp[axis])
    inplane = [a for a in range(3) if a != axis]
    shrink = max(1.0, np.sqrt(arr.size / float(max_voxels)))
    if shrink > 1.0:
        box = [slice(None)] * 3
        for a in inplane:
            keep = max(16, int(arr.shape[a] / shrink))
            start = (arr.shape[a] - keep) // 2
            box[a] = slice(start, start + keep)
        arr, fg = arr[tuple(box)], fg[tuple(box)]
    if arr.shape[axis] < 6 or not fg.any():
        return SliceProfile(s, s, axis, source="assumed = the spacing (too few slices to estimate)")
    sigma = noise_sigma(arr, fg, spacing=sp)
    check()
    # segments of at most half the slices: a segment spanning the whole field of view is dominated
    # by the object's outline (air to air), not by its detail
    n_t = min(segment, max(6, arr.shape[axis] // 2))
    k = np.fft.rfftfreq(n_t, d=s)[1:]
    kk = np.abs(k[:, None] + (np.arange(-6, 7) / s)[None, :])  # the frequencies folded onto each bin
    reference = {}
    for a in inplane:
        d = float(sp[a])
        n_f = max(4, int(round(n_t * s / d)))
        p = _segment_psd(arr, fg, a, d, n_f)
        p = np.maximum(p - sigma**2 * d, 1e-3 * p)
        kf = np.fft.rfftfreq(n_f, d=d)
        reference[a] = np.where(kk <= kf[-1], np.interp(kk, kf, p), 0.0)  # 0 beyond the in-plane Nyquist

    def misfit(fwhm: float) -> float:
        check()
        g = fwhm / FWHM_PER_SIGMA
        transfer = np.exp(-((2.0 * np.pi * g * kk) ** 2))
        total = 0.0
        for a, spectrum in reference.items():
            g_vox = g / sp[a]
            across = ndimage.gaussian_filter1d(arr, g_vox, axis=a, mode="nearest")
            y = np.log(np.maximum(_segment_psd(across, fg, axis, s, n_t)[1:], 1e-30))
            x = np.arange(-int(4 * g_vox + 1), int(4 * g_vox + 1) + 1)
            kernel = np.exp(-0.5 * (x / max(g_vox, 1e-6)) ** 2)
            noise = sigma**2 * s * float(np.sum((kernel / kernel.sum()) ** 2))
            model = (spectrum * transfer).sum(axis=1)
            centre = float(np.mean(y - np.log(np.maximum(model, 1e-30))))
            total += min(float(np.mean((y - np.log(np.exp(c) * model + noise)) ** 2))
                         for c in centre + np.linspace(-1.0, 1.0, 41))
        return total / len(reference)

    grid = np.arange(0.2, 2.51, 0.1) * s
    errors = [misfit(f) for f in grid]
    i = int(np.argmin(errors))
    a, b = float(grid[max(0, i - 1)]), float(grid[min(len(grid) - 1, i + 1)])
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = misfit(c), misfit(d)
    for _ in range(8):  # golden-section refinement to ~1% of the spacing
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = misfit(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = misfit(d)
    best = min((fc, c), (fd, d))
    fit = float(np.sqrt(best[0]))
    if fit > MAX_PROFILE_MISFIT:  # no Gaussian profile explains it: not a thick-slice scan of anatomy as assumed
        return SliceProfile(s, s, int(axis), source="assumed = the spacing (the scan's detail fits no slice profile)",
                            fit_rms=fit, slices=int(arr.shape[axis]))
    return SliceProfile(fwhm_mm=float(best[1]), spacing_mm=s, axis=int(axis), source="estimated",
                        fit_rms=fit, slices=int(arr.shape[axis]))


@dataclass
class TissueLevels:
    """Typical intensities of the tissues of an MR brain scan (three classes) and the weighting.

    ``weighting``: "T1-like" (white matter brighter than grey) or "T2-like" (grey brighter
    than white; T2 and FLAIR). ``labels``: 0 outside, 1 CSF, 2 GM, 3 WM.
    """

    csf: float
    gm: float
    wm: float
    weighting: str
    labels: np.ndarray

    def record(self) -> dict:
        d = asdict(self)
        d.pop("labels")
        return d


def tissue_levels(data: np.ndarray, fg: np.ndarray, spacing: Sequence[float]) -> TissueLevels:
    """Three intensity classes of the foreground (k-means on intensity), named by size and depth.

    Each class's level is the median of its voxels inside the class (not on its border).

    The two largest classes are grey and white matter; of those, white matter lies deeper
    (larger mean distance to the foreground's border); the third is CSF. No assumption on
    which is brighter, so it holds for T1, T2 and FLAIR.
    """
    arr = np.asarray(data, dtype=np.float32)
    values = arr[fg]
    sample = values[:: max(1, values.size // 400_000)].astype(np.float64)
    lo, hi = np.percentile(sample, [1.0, 99.0])
    sample = sample[(sample >= lo) & (sample <= hi)]
    centres = np.percentile(sample, [15.0, 50.0, 85.0])
    for _ in range(50):  # 1D k-means
        assign = np.argmin(np.abs(sample[:, None] - centres[None, :]), axis=1)
        new = np.array([sample[assign == k].mean() if np.any(assign == k) else centres[k] for k in range(3)])
        if np.allclose(new, centres, rtol=0, atol=1e-6 * max(1.0, abs(hi))):
            break
        centres = new
    cuts = (centres[:-1] + centres[1:]) / 2.0
    cls = np.zeros(arr.shape, dtype=np.uint8)
    cls[fg] = (np.searchsorted(cuts, arr[fg]) + 1).astype(np.uint8)  # 1..3 by brightness
    sizes = np.bincount(cls.ravel(), minlength=4)[1:]
    depth = ndimage.distance_transform_edt(fg, sampling=spacing)
    mean_depth = np.array([depth[cls == k + 1].mean() if sizes[k] else 0.0 for k in range(3)])
    big = sorted(np.argsort(sizes)[-2:])
    wm = max(big, key=lambda k: mean_depth[k])
    gm = min(big, key=lambda k: mean_depth[k])
    csf = ({0, 1, 2} - {wm, gm}).pop()
    labels = np.zeros(arr.shape, dtype=np.uint8)
    for k, name in ((csf, 1), (gm, 2), (wm, 3)):
        labels[cls == k + 1] = name
    # each tissue's own level: the median of its voxels whose face neighbours are of the same
    # class (k-means centres are pulled towards each other by the partial-volume voxels between)
    pure = []
    for k in range(3):
        inner = ndimage.binary_erosion(cls == k + 1)
        vals = arr[inner] if inner.sum() >= 100 else arr[cls == k + 1]
        pure.append(float(np.median(vals)) if vals.size else float(centres[k]))
    centres = np.asarray(pure)
    return TissueLevels(
        csf=float(centres[csf]), gm=float(centres[gm]), wm=float(centres[wm]),
        weighting="T1-like" if centres[wm] > centres[gm] else "T2-like", labels=labels,
    )


def looks_like_ct(data: np.ndarray) -> bool:
    """Hounsfield units: air near -1000 and soft tissue near 0 (an MR magnitude is never negative)."""
    arr = np.asarray(data)
    sample = arr.ravel()[:: max(1, arr.size // 2_000_000)].astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return False
    p1, p99 = np.percentile(sample, [1.0, 99.0])
    return bool(-1200.0 <= p1 <= -500.0 and p99 >= -100.0)


#: the scale band of tissue texture (mm): finer than the anatomy's structures, coarser than the voxel noise
TEXTURE_BAND_MM = (0.7, 3.0)


def band_pass(data: np.ndarray, spacing: Sequence[float], band: tuple[float, float] = TEXTURE_BAND_MM) -> np.ndarray:
    """Difference of two Gaussians (sigmas in mm) on an anisotropic grid."""
    sp = np.asarray(spacing, dtype=float)
    arr = np.asarray(data, dtype=np.float32)
    fine = ndimage.gaussian_filter(arr, band[0] / sp, mode="nearest")
    coarse = ndimage.gaussian_filter(arr, band[1] / sp, mode="nearest")
    return fine - coarse


def tissue_texture(data: np.ndarray, region: np.ndarray, spacing: Sequence[float], sigma: float) -> float:
    """How much a tissue's intensity varies beyond the noise, in the texture band (absolute units).

    The robust standard deviation of :func:`band_pass` over the flatter half of the region's inner
    voxels (lowest smoothed gradient, so borders and partial volume do not count), less the
    share white noise of standard deviation ``sigma`` would give through the same filter.
    """
    inner = ndimage.binary_erosion(region, iterations=2)
    if inner.sum() < 200:
        inner = region
    if inner.sum() < 50:
        return 0.0
    # the flatter half only: what remains of the tissue's borders (partial volume) is not texture
    inner = _flat_region(np.asarray(data, dtype=np.float32), inner) & inner
    idx = np.argwhere(inner)
    lo = np.maximum(idx.min(axis=0) - 8, 0)
    hi = np.minimum(idx.max(axis=0) + 9, np.asarray(data.shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    values = band_pass(np.asarray(data)[box], spacing)[inner[box]].astype(np.float64)
    values = values[:: max(1, values.size // 2_000_000)]
    var = (_MAD_TO_SIGMA * np.median(np.abs(values - np.median(values)))) ** 2
    impulse = np.zeros((33, 33, 33), dtype=np.float32)
    impulse[16, 16, 16] = 1.0
    gain = float(np.sum(band_pass(impulse, spacing).astype(np.float64) ** 2))
    return float(np.sqrt(max(var - gain * sigma**2, 0.0)))

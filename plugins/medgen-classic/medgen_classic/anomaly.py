"""Intensity-outlier anomaly map: robust z-score of the residual from a local median.

The baseline a learned (normative / reconstruction) anomaly model must beat: a voxel is
suspicious when it differs from its neighbourhood much more than the scan's typical
local variation. With reference scans of healthy subjects the "typical variation" is
estimated from them instead of from the scan itself.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from napari_medgen import (
    RESEARCH_USE,
    InputError,
    Inputs,
    InputSpec,
    ModelFamily,
    Output,
    OutputSpec,
    Param,
    Result,
    RunContext,
    Task,
)
from napari_medgen.masks import foreground_mask
from napari_medgen.regions import label_regions

__all__ = ["IntensityOutlier", "local_median", "median_window"]

_MAD_TO_SIGMA = 1.4826
_CHUNK_VOXELS = 600_000
#: what the heatmap's scale means (``result.info["score_units"]``)
SCORE_UNITS = "robust z-score of the local-median residual"


def median_window(median_mm: float, spacing: Sequence[float]) -> tuple[int, int, int]:
    """Odd window size in voxels per axis that spans about ``median_mm`` millimetres."""
    sizes = []
    for sp in spacing:
        n = max(1, int(round(median_mm / max(float(sp), 1e-6))))
        sizes.append(n if n % 2 == 1 else n + 1)
    return (sizes[0], sizes[1], sizes[2])


def local_median(
    data: np.ndarray,
    size: Sequence[int],
    ctx: RunContext | None = None,
    progress: tuple[int, int, int] = (0, 1, 1),
) -> np.ndarray:
    """Median filter (mode 'nearest') computed in slabs along axis 0 so it can be cancelled.

    ``progress = (start, stop, total)``: the slabs report ``start..stop`` out of ``total``.
    """
    arr = np.asarray(data, dtype=np.float32)
    out = np.empty(arr.shape, dtype=np.float32)
    halo = int(size[0]) // 2
    per_slice = max(1, int(np.prod(arr.shape[1:])))
    step = max(1, _CHUNK_VOXELS // per_slice)
    n_chunks = math.ceil(arr.shape[0] / step)
    p_start, p_stop, p_total = progress
    for c, start in enumerate(range(0, arr.shape[0], step)):
        stop = min(start + step, arr.shape[0])
        lo, hi = max(0, start - halo), min(arr.shape[0], stop + halo)
        block = ndimage.median_filter(arr[lo:hi], size=tuple(int(s) for s in size), mode="nearest")
        out[start:stop] = block[start - lo : start - lo + (stop - start)]
        if ctx is not None:
            done = p_start + (p_stop - p_start) * (c + 1) // n_chunks
            ctx.progress(done, p_total, f"local median: {stop}/{arr.shape[0]} slices")
    return out


def _robust_location_scale(values: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based sigma; falls back to the standard deviation when the MAD is 0."""
    values = np.asarray(values, dtype=np.float64)
    loc = float(np.median(values))
    scale = float(np.median(np.abs(values - loc))) * _MAD_TO_SIGMA
    if not scale > 0:
        scale = float(np.std(values))
    return loc, scale


def _relative_residual(
    data: np.ndarray, spacing: Sequence[float], median_mm: float, ctx: RunContext, progress: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, float]:
    """(residual / foreground level, foreground mask, foreground level) of one scan."""
    fg = foreground_mask(data, spacing, check=ctx.check_cancelled)
    if not fg.any():
        raise InputError("no foreground found in the scan; is it empty?")
    arr = np.asarray(data, dtype=np.float32)
    level = float(np.median(arr[fg]))
    if not level > 0:
        p1, p99 = np.percentile(arr[fg], [1, 99])
        level = float(p99 - p1) or 1.0
    med = local_median(arr, median_window(median_mm, spacing), ctx, progress)
    med -= arr
    med *= -1.0 / level
    return med, fg, level


class IntensityOutlier(ModelFamily):
    """Robust z-score of (image - local median) inside the foreground, plus thresholded regions."""

    id = "classic.outlier"
    task = Task.ANOMALY
    display_name = "Intensity outlier map"
    version = "0.1.0"
    description = (
        "Heatmap = |robust z-score| of the difference between the image and its local median "
        "(window median_mm), inside an automatic foreground mask; 0 outside. The residual's "
        "centre and spread (median, 1.4826 x MAD) come from the scan itself, or from the "
        "reference (normal) scans when given, after dividing each scan by its median "
        "foreground intensity. Connected voxels above 'threshold' larger than "
        "'min_region_mm3' become candidate regions (26-connected), labelled 1..K by decreasing peak score. "
        "Flags local intensity outliers, including normal sharp edges: a floor to beat, not "
        "a detector."
    )
    citation = (
        "Iglewicz B, Hoaglin DC. How to Detect and Handle Outliers (robust modified z-score, "
        "MAD). ASQC Quality Press, 1993."
    )
    license = "BSD-3-Clause"
    intended_use = RESEARCH_USE
    wants_gpu = False
    deterministic = True  # local statistics: no randomness
    outputs = (
        OutputSpec("heatmap", "heatmap", "absolute robust z-score of the local-median residual"),
        OutputSpec("regions", "labels", "candidate regions above the threshold, 1..K by decreasing peak"),
    )
    params = (
        Param("median_mm", "float", 5.0, help="Size of the local-median window.", minimum=1.0, maximum=50.0,
              label="median window", unit="mm"),
        Param("threshold", "float", 4.0, help="Robust z-score above which a voxel is a candidate.",
              minimum=0.5, maximum=100.0),
        Param("min_region_mm3", "float", 20.0, help="Candidate regions smaller than this are dropped.",
              minimum=0.0, maximum=1e6, label="min region", unit="mm3"),
    )
    inputs = (
        InputSpec(
            "references",
            required=False,
            min_count=1,
            same_grid=False,
            help="Optional scans of normal subjects (any grid): they set the expected residual spread.",
        ),
    )

    def run(self, inputs: Inputs, params: dict[str, Any], ctx: RunContext) -> Result:
        image = inputs.image
        median_mm = float(params.get("median_mm", 5.0))
        threshold = float(params.get("threshold", 4.0))
        min_mm3 = float(params.get("min_region_mm3", 20.0))
        refs = list(inputs.references or [])
        total = 10 * (1 + len(refs)) + 2
        ctx.progress(0, total, "foreground and local median")
        resid, fg, level = _relative_residual(image.data, image.spacing, median_mm, ctx, (0, 10, total))

        if refs:
            samples = []
            for i, ref in enumerate(refs):
                r_res, r_fg, _ = _relative_residual(
                    ref.data, ref.spacing, median_mm, ctx, (10 * (i + 1), 10 * (i + 2), total)
                )
                vals = r_res[r_fg]
                samples.append(vals[:: max(1, vals.size // 2_000_000)])
                del r_res, r_fg
            loc, scale = _robust_location_scale(np.concatenate(samples))
            scale_source = f"{len(refs)} reference scan(s)"
        else:
            vals = resid[fg]
            loc, scale = _robust_location_scale(vals[:: max(1, vals.size // 4_000_000)])
            scale_source = "the scan itself"
        if not scale > 0:
            raise InputError("the image has no local intensity variation inside the foreground; nothing to score")
        ctx.progress(total - 2, total, "scoring")
        heat = resid
        heat -= loc
        heat /= scale
        np.abs(heat, out=heat)
        heat[~fg] = 0.0

        ctx.progress(total - 1, total, "candidate regions")
        labels, regions, n_regions = label_regions(heat, image, threshold, min_mm3)
        ctx.progress(total, total, "done")

        base = image.name or "image"
        heat_vol = image.with_data(heat, name=f"{base} (outlier z)")
        label_vol = image.with_data(labels, name=f"{base} (outlier regions)")
        outputs = [
            Output(
                "heatmap",
                heat_vol,
                kind="heatmap",
                description="absolute robust z-score of the local-median residual",
            ),
            Output("regions", label_vol, kind="labels", description=f"regions with z > {threshold:g}"),
        ]
        info = {
            "median_window_voxels": list(median_window(median_mm, image.spacing)),
            "residual_location": loc,
            "residual_scale": scale,
            "scale_from": scale_source,
            "foreground_level": level,
            "foreground_voxels": int(fg.sum()),
            "threshold": threshold,
            "min_region_mm3": min_mm3,
            "score_units": SCORE_UNITS,
            "n_regions": n_regions,
            "regions": regions,
        }
        return Result(outputs, info)

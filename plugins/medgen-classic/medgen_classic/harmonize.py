"""Intensity harmonization baselines: histogram (quantile) matching and Nyul standardisation.

Both learn a monotone piecewise-linear intensity map from foreground statistics and apply
it to the whole volume, so background and tissue stay consistent (no holes, no reordering
of intensities). The input is never modified; the output is float32 on the input grid.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_medgen import (
    RESEARCH_USE,
    InputError,
    Inputs,
    InputSpec,
    ModelFamily,
    Output,
    Param,
    ParamError,
    Result,
    RunContext,
    Task,
)
from napari_medgen.masks import foreground_mask, given_mask

__all__ = ["HistogramMatching", "NyulStandardisation", "parse_landmarks", "apply_piecewise_linear"]

#: at most this many voxels per volume enter the quantile estimates (strided subsample)
_MAX_SAMPLES = 4_000_000
_CHUNK_VOXELS = 4_000_000


def parse_landmarks(text: str) -> np.ndarray:
    """Percentiles such as ``"1,10,...,90,99"``: at least three, strictly increasing, in [0, 100]."""
    try:
        values = np.array([float(p) for p in str(text).replace(" ", ",").split(",") if p.strip()])
    except ValueError:
        raise ParamError(
            f"landmarks must be comma-separated percentiles such as '1,10,50,90,99'; got {text!r}"
        ) from None
    if values.size < 3:
        raise ParamError(f"landmarks needs at least three percentiles (low, middle, high); got {text!r}")
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 100:
        raise ParamError(f"landmarks must be percentiles between 0 and 100; got {text!r}")
    if np.any(np.diff(values) <= 0):
        raise ParamError(f"landmarks must be strictly increasing; got {text!r}")
    return values


def _monotone_knots(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Collapse tied ``x`` knots (averaging their ``y``) so ``x`` is strictly increasing."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ux, inverse = np.unique(x, return_inverse=True)
    uy = np.bincount(inverse, weights=y) / np.bincount(inverse)
    return ux, np.maximum.accumulate(uy)


def apply_piecewise_linear(
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    ctx: RunContext | None = None,
    extrapolate: bool = True,
    progress: tuple[int, int] | None = None,
) -> np.ndarray:
    """Map ``data`` through knots ``x -> y`` as float32, in chunks; linear extrapolation at both ends."""
    x, y = _monotone_knots(x, y)
    src = np.asarray(data)
    out = np.empty(src.shape, dtype=np.float32)
    if x.size == 1:
        out[...] = y[0] + (src - x[0])
        return out
    slope_lo = (y[1] - y[0]) / (x[1] - x[0])
    slope_hi = (y[-1] - y[-2]) / (x[-1] - x[-2])
    per_slice = max(1, int(np.prod(src.shape[1:])))
    step = max(1, _CHUNK_VOXELS // per_slice)
    for start in range(0, src.shape[0], step):
        if ctx is not None:
            ctx.check_cancelled()
        block = np.asarray(src[start : start + step], dtype=np.float64)
        mapped = np.interp(block, x, y)
        if extrapolate:
            below = block < x[0]
            mapped[below] = y[0] + (block[below] - x[0]) * slope_lo
            above = block > x[-1]
            mapped[above] = y[-1] + (block[above] - x[-1]) * slope_hi
        out[start : start + step] = mapped
    return out


def _sample(values: np.ndarray) -> np.ndarray:
    step = max(1, values.size // _MAX_SAMPLES)
    return np.asarray(values[::step], dtype=np.float64)


def _image_foreground(inputs: Inputs, ctx: RunContext) -> tuple[np.ndarray, str]:
    """The input's foreground: the given mask (non-zero voxels) or the automatic Otsu mask."""
    image = inputs.image
    if inputs.mask is not None:
        fg = given_mask(inputs.mask, image)
        return fg, "given mask"
    return foreground_mask(image.data, image.spacing, check=ctx.check_cancelled), "automatic (Otsu)"


def _foreground_values(data: np.ndarray, fg: np.ndarray, what: str) -> np.ndarray:
    values = _sample(np.asarray(data)[fg])
    if values.size < 10:
        raise InputError(f"the {what} has too few foreground voxels ({values.size}) to estimate its histogram")
    return values


class _HarmonizeFamily(ModelFamily):
    """Shared declarations of the harmonization baselines."""

    task = Task.HARMONIZE
    version = "0.1.0"
    license = "BSD-3-Clause"
    intended_use = RESEARCH_USE
    wants_gpu = False
    deterministic = True  # histogram landmarks: no randomness
    method = ""
    inputs = (
        InputSpec(
            "references",
            required=True,
            min_count=1,
            same_grid=False,
            help="One or more scans whose intensity profile the input should take (any grid).",
        ),
        InputSpec(
            "mask",
            required=False,
            help="Foreground mask on the input's grid (non-zero = tissue); automatic Otsu mask if omitted.",
        ),
    )

    def _references(self, inputs: Inputs, ctx: RunContext) -> list[tuple[np.ndarray, np.ndarray]]:
        """(foreground sample, whole-volume min/max) per reference."""
        if not inputs.references:
            raise InputError(f"{self.display_name} needs at least one reference scan")
        out = []
        for i, ref in enumerate(inputs.references):
            ctx.progress(i, len(inputs.references) + 2, f"reference {i + 1}/{len(inputs.references)}: foreground")
            fg = foreground_mask(ref.data, ref.spacing, check=ctx.check_cancelled)
            values = _foreground_values(ref.data, fg, f"reference {i + 1} ({ref.name or 'unnamed'})")
            data = np.asarray(ref.data)
            out.append((values, np.array([float(data.min()), float(data.max())])))
        return out

    def _output(self, inputs: Inputs, data: np.ndarray, info: dict[str, Any]) -> Result:
        image = inputs.image
        name = f"{image.name or 'image'} (harmonized: {self.method})"
        vol = image.with_data(data, name=name)
        return Result([Output("image", vol, kind="image", description=f"{self.display_name} of {image.name}")], info)


class HistogramMatching(_HarmonizeFamily):
    """Quantile mapping of the input's foreground onto the pooled references' foreground."""

    id = "classic.histmatch"
    display_name = "Histogram matching"
    method = "histmatch"
    description = (
        "Maps the input's foreground intensity quantiles onto those of the reference scans "
        "(pooled), as one monotone piecewise-linear function applied to the whole volume. "
        "Below the foreground the map runs linearly to the references' minimum, so background "
        "and tissue stay consistent."
    )
    citation = (
        "Gonzalez RC, Woods RE. Digital Image Processing, histogram specification; "
        "scikit-image exposure.match_histograms (van der Walt et al., PeerJ 2014;2:e453)."
    )
    params = (
        Param(
            "n_quantiles",
            "int",
            1024,
            help="Number of quantiles of the piecewise-linear map (more = closer histogram match).",
            minimum=16,
            maximum=100000,
        ),
    )

    def run(self, inputs: Inputs, params: dict[str, Any], ctx: RunContext) -> Result:
        image = inputs.image
        refs = self._references(inputs, ctx)
        n_refs = len(refs)
        fg, mask_source = _image_foreground(inputs, ctx)
        src_values = _foreground_values(image.data, fg, "image")
        ref_values = np.concatenate([r[0] for r in refs])
        q = np.linspace(0.0, 1.0, int(params.get("n_quantiles", 1024)))
        src_q = np.quantile(src_values, q)
        ref_q = np.quantile(ref_values, q)
        # anchor the whole-volume extremes so background (and rare bright voxels) map consistently
        data = np.asarray(image.data)
        img_lo, img_hi = float(data.min()), float(data.max())
        ref_lo = float(min(r[1][0] for r in refs))
        ref_hi = float(max(r[1][1] for r in refs))
        x = np.concatenate([[img_lo], src_q, [img_hi]])
        y = np.concatenate([[min(ref_lo, ref_q[0])], ref_q, [max(ref_hi, ref_q[-1])]])
        ctx.progress(n_refs + 1, n_refs + 2, "applying the intensity map")
        out = apply_piecewise_linear(data, x, y, ctx, extrapolate=False)
        ctx.progress(n_refs + 2, n_refs + 2, "done")
        info = {
            "method": "histmatch",
            "n_references": n_refs,
            "mask": mask_source,
            "foreground_voxels": int(fg.sum()),
            "landmarks": {
                "quantiles": [float(v) for v in q[:: max(1, q.size // 16)]],
                "input": [float(v) for v in src_q[:: max(1, q.size // 16)]],
                "reference": [float(v) for v in ref_q[:: max(1, q.size // 16)]],
                "n_quantiles": int(q.size),
            },
        }
        return self._output(inputs, out, info)


class NyulStandardisation(_HarmonizeFamily):
    """Nyul & Udupa piecewise-linear histogram standardisation against a learned standard scale."""

    id = "classic.nyul"
    display_name = "Nyul standardisation"
    method = "nyul"
    description = (
        "Nyul & Udupa standardisation: the foreground percentiles (landmarks) of each reference "
        "are mapped linearly onto a common range [s1, s2] (the references' mean low/high "
        "landmarks) and averaged into a standard scale; the input's landmarks are then mapped "
        "piecewise-linearly onto that scale (linear extrapolation beyond the outer landmarks)."
    )
    citation = (
        "Nyul LG, Udupa JK. On standardizing the MR image intensity scale. Magn Reson Med "
        "1999;42(6):1072-1081. Nyul LG, Udupa JK, Zhang X. New variants of a method of MRI scale "
        "standardization. IEEE Trans Med Imaging 2000;19(2):143-150."
    )
    params = (
        Param(
            "landmarks",
            "str",
            "1,10,20,30,40,50,60,70,80,90,99",
            help="Foreground percentiles used as landmarks; the first and last are p_low and p_high.",
        ),
    )

    def run(self, inputs: Inputs, params: dict[str, Any], ctx: RunContext) -> Result:
        image = inputs.image
        pct = parse_landmarks(params.get("landmarks", "1,10,20,30,40,50,60,70,80,90,99"))
        refs = self._references(inputs, ctx)
        n_refs = len(refs)
        ref_landmarks = np.stack([np.percentile(values, pct) for values, _ in refs])
        s1 = float(ref_landmarks[:, 0].mean())
        s2 = float(ref_landmarks[:, -1].mean())
        spans = ref_landmarks[:, -1] - ref_landmarks[:, 0]
        if np.any(spans <= 0):
            raise InputError("a reference has identical low and high landmarks (a flat foreground histogram)")
        mapped = s1 + (ref_landmarks - ref_landmarks[:, :1]) * ((s2 - s1) / spans[:, None])
        standard = mapped.mean(axis=0)
        fg, mask_source = _image_foreground(inputs, ctx)
        in_landmarks = np.percentile(_foreground_values(image.data, fg, "image"), pct)
        if in_landmarks[-1] <= in_landmarks[0]:
            raise InputError("the image's foreground is flat between the low and high landmarks; nothing to map")
        ctx.progress(n_refs + 1, n_refs + 2, "applying the standard scale")
        out = apply_piecewise_linear(image.data, in_landmarks, standard, ctx, extrapolate=True)
        ctx.progress(n_refs + 2, n_refs + 2, "done")
        info = {
            "method": "nyul",
            "n_references": n_refs,
            "mask": mask_source,
            "foreground_voxels": int(fg.sum()),
            "landmarks": {
                "percentiles": [float(p) for p in pct],
                "input": [float(v) for v in in_landmarks],
                "standard_scale": [float(v) for v in standard],
                "s1": s1,
                "s2": s2,
            },
        }
        return self._output(inputs, out, info)

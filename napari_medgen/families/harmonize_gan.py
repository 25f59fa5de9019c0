"""Constrained adversarial harmonization: a smooth, spatially varying intensity mapping learned unpaired.

The scan (site A) is made to look as if acquired at a target site, given only that site's
scans of other subjects (the references). The generator cannot draw. At every voxel the
output is ``h(x) * C(g(x) * s(x))``: one piecewise-linear curve ``C`` of the voxel's own
intensity between two smooth gain fields on a coarse grid (trilinear, cells of about 2 cm):
``g`` undoes the scan's spatial response (bias field), ``h`` lays on the target site's. It is a
bilateral grid (Chen, Paris & Durand, SIGGRAPH 2007; learned as in HDRNet, Gharbi et al.,
SIGGRAPH 2017) whose local curves may differ from place to place only by those two gains. The
curve may fall as well as rise, so a change of weighting (T1 to T2, where the tissue order
reverses) is within reach, but:

* a lesion maps through the same curve as every other voxel of its intensity, so no place can
  learn to map it onto the tissue that the references show there (a free per-place curve did
  exactly that in development and erased lesions);
* an edge in the output can only come from an edge in the input: the curve's slope is limited
  (:data:`MAX_SLOPE`, enforced exactly after training by :func:`limit_slopes`), so a region the
  input shows flat stays flat up to the gains' slow drift.

Training (all unpaired: no subject is seen at both sites):

1. each reference is registered to the scan with SimpleITK (rigid then affine, mutual
   information, which works across weightings) and resampled onto its grid;
2. the curve starts from the references' conditional median given the scan's intensity
   (a joint histogram over the aligned voxels) sharpened by quantile matching onto the
   references' pooled histogram: this finds the tissue order, reversed or not;
3. a MONAI ``PatchDiscriminator`` (least-squares ``PatchAdversarialLoss``) judges 2D
   output patches against reference patches, and the generator is trained against it with an
   L1 *anchor* to the aligned references (robust to their misalignment: a conditional
   median), a structure term (MONAI ``LocalNormalizedCrossCorrelationLoss`` between input
   and output: local squared correlation, blind to the sign of the mapping) and smoothness of
   the gains;
4. several members are trained at once, each anchored to another subset of the references
   (leave one out); the output is their mean and the **hallucination map** their spread plus
   any part of the output that the constrained mapping does not explain (nonzero only for the
   unconstrained comparison generator), in percent of the target's tissue range.

A trained site model (curves, gains placed in the scanner's frame, intensity scales, a 4 mm
template of the training scan) is saved as safetensors with a card naming the references'
hashes and reused on every later scan from site A without training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import InputError, WeightsError
from ..family import (
    RESEARCH_USE,
    Inputs,
    InputSpec,
    ModelFamily,
    Output,
    OutputSpec,
    Param,
    Result,
    RunContext,
    Task,
    training_steps_param,
)
from ..masks import foreground_mask, given_mask
from ..volume import Volume

__all__ = ["PRESETS", "ConstrainedHarmonization", "HarmonizePreset", "limit_slopes"]

#: below this rank correlation two aligned references are taken for different weightings
MIN_REFERENCE_AGREEMENT = 0.3
#: a reference whose aligned foreground is this many times larger (or smaller) than the scan's
#: shows another field of view (a whole head against a skull-stripped brain)
MAX_FOV_RATIO = 1.6
#: intensity percentiles that define each image's working scale (0..1 between them)
SCALE_PCT = (1.0, 99.0)
#: the hallucination map's flag level (percent of the target's tissue range)
FLAG_PERCENT = 10.0
#: steepest allowed slope of the mapping, in target tissue ranges per scan tissue range: no output edge
#: is more than this many times as steep as the input's (a change of weighting needs about 5 to 7, where
#: dark T1 CSF turns bright beside the dark background). The curve's own limit leaves room for the gains.
MAX_SLOPE = 12.0
#: the gains vary within exp(+-GAIN_RANGE): a site's bias field, up to about +-30%
GAIN_RANGE = 0.3
CURVE_SLOPE = MAX_SLOPE * float(np.exp(-2 * GAIN_RANGE))


@dataclass(frozen=True)
class HarmonizePreset:
    """Grid, discriminator and schedule; ``train_seconds`` applies when no time budget is given."""

    cell_mm: float  # spacing of the grid's spatial cells
    knots: int  # knots of each intensity curve
    members: int  # ensemble members (the hallucination map's spread)
    patch: int  # 2D patch side (voxels)
    batch: int  # patches per member and step
    disc_channels: int
    disc_layers: int
    lr: float  # the grid's learning rate
    lr_disc: float
    train_seconds: float
    max_steps: int


PRESETS: dict[str, HarmonizePreset] = {
    # about 3 minutes of training on 2 CPU cores (plus registration of the references)
    "fast": HarmonizePreset(cell_mm=24.0, knots=20, members=3, patch=40, batch=12, disc_channels=32,
                            disc_layers=3, lr=1e-2, lr_disc=2e-4, train_seconds=180.0, max_steps=100_000),
    # a GPU: finer grid and curves, more members, larger patches and discriminator
    "quality": HarmonizePreset(cell_mm=16.0, knots=32, members=5, patch=64, batch=32, disc_channels=64,
                               disc_layers=3, lr=1e-2, lr_disc=2e-4, train_seconds=600.0, max_steps=1_000_000),
}


# -- intensities --------------------------------------------------------------------------------
def _scale(data: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(np.asarray(data)[mask], SCALE_PCT)
    if not hi > lo:
        raise InputError("the foreground has no intensity contrast (its 1st and 99th percentiles are equal)")
    return float(lo), float(hi)


def _support(data: np.ndarray) -> np.ndarray:
    """Everything brighter than a twentieth of the tissue range above the background, holes filled.

    Unlike the Otsu foreground it keeps a dark skull and scalp, so a whole head and a skull-stripped
    brain differ clearly.
    """
    lo, hi = float(np.min(data)), float(np.percentile(data, 99.0))
    return ndimage.binary_fill_holes(np.asarray(data) > lo + 0.05 * (hi - lo))


def _knots(s: np.ndarray, fg: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Knot positions and how many of them are background (strictly increasing).

    The background's minimum and, where it stays below the foreground, its 99th percentile (so
    its noise maps onto one flat background value), then the foreground's quantiles, then the
    maximum.
    """
    inner = np.quantile(s[fg][:: max(1, int(fg.sum()) // 2_000_000)], np.linspace(0.0, 1.0, k - 3))
    lo, hi = float(min(s.min(), inner[0] - 0.05)), float(max(s.max(), inner[-1] + 0.05))
    bg = ~ndimage.binary_dilation(fg, iterations=2)
    noise_top = float(np.percentile(s[bg], 99.0)) if bg.sum() > 100 else lo
    if lo < noise_top < inner[0] - 0.02:
        knots, n_bg = np.concatenate([[lo, noise_top], inner, [hi]]), 2
    else:
        knots, n_bg = np.concatenate([[lo], np.quantile(inner, np.linspace(0, 1, k - 2)), [hi]]), 1
    knots = knots.astype(np.float64)
    for i in range(1, knots.size):  # strictly increasing (a flat histogram stretch gives ties)
        knots[i] = max(knots[i], knots[i - 1] + 1e-4)
    return knots, n_bg


def _initial_curve(s: np.ndarray, fg: np.ndarray, refs: list[np.ndarray], ref_masks: list[np.ndarray],
                   ref_bg: float, knots: np.ndarray, n_bg: int, rng: np.random.Generator) -> np.ndarray:
    """The references' conditional median given the scan's intensity, sharpened by quantile matching.

    Over the voxels where the scan and an aligned reference both show tissue, the median of the
    reference in each bin of the scan's intensity (bins centred on the knots) gives a curve that
    finds the tissue order, reversed or not; misalignment pulls it towards the middle, so the
    curve is then composed with the monotone map that gives the mapped scan the references'
    pooled histogram. The background knots map to the references' background.
    """
    xs, ys = [], []
    for r, m in zip(refs, ref_masks):
        both = np.flatnonzero(fg & m)
        if both.size > 400_000:
            both = rng.choice(both, 400_000, replace=False)
        xs.append(s.ravel()[both])
        ys.append(r.ravel()[both])
    x, y = np.concatenate(xs), np.concatenate(ys)
    edges = np.concatenate([[-np.inf], (knots[1:] + knots[:-1]) / 2, [np.inf]])
    which = np.searchsorted(edges, x) - 1
    med = np.full(knots.size, np.nan)
    for k in range(n_bg, knots.size):
        v = y[which == k]
        if v.size >= 30:
            med[k] = np.median(v)
    good = np.isfinite(med)
    if good.sum() < 2:
        raise InputError("the scan and the references overlap too little after alignment to learn a mapping")
    med = np.interp(np.arange(knots.size), np.flatnonzero(good), med[good])
    # sharpen: quantile-match the mapped foreground onto the references' pooled foreground
    sample = s[fg][:: max(1, int(fg.sum()) // 1_000_000)]
    mapped = np.interp(sample, knots[n_bg:], med[n_bg:])
    pooled = np.concatenate([r[m][:: max(1, int(m.sum()) // 300_000)] for r, m in zip(refs, ref_masks)])
    q = np.linspace(0.0, 1.0, 257)
    src_q, ref_q = np.quantile(mapped, q), np.quantile(pooled, q)
    src_q = np.maximum.accumulate(src_q + np.arange(q.size) * 1e-9)
    curve = np.interp(med, src_q, ref_q)
    curve[:n_bg] = ref_bg
    return limit_slopes(curve, knots)


def limit_slopes(values: np.ndarray, knots: np.ndarray, max_slope: float = CURVE_SLOPE, axis: int = 0) -> np.ndarray:
    """Curves (knot values along ``axis``) made no steeper than ``max_slope``, keeping the middle knot's value.

    Between two knots the output may change by at most ``max_slope`` times the input's change, so
    an intensity step of the input grows into at most that step times ``max_slope`` and a region
    the input shows flat stays flat. The limit is a projection: each segment's rise is clipped
    and the curve re-integrated outwards from its middle knot.
    """
    v = np.moveaxis(np.asarray(values, dtype=np.float64), axis, 0)
    cap = (max_slope * np.diff(knots)).reshape((-1,) + (1,) * (v.ndim - 1))
    d = np.clip(np.diff(v, axis=0), -cap, cap)
    mid = v.shape[0] // 2
    out = np.empty_like(v)
    out[mid] = v[mid]
    out[mid + 1:] = v[mid] + np.cumsum(d[mid:], axis=0)
    out[:mid] = v[mid] - np.cumsum(d[:mid][::-1], axis=0)[::-1]
    return np.moveaxis(out, 0, axis).astype(np.float32)


# -- the generator ----------------------------------------------------------------------------
def _grid_shape(shape, spacing, cell_mm: float) -> tuple[int, int, int]:
    extent = np.asarray(shape) * np.asarray(spacing)
    return tuple(int(max(2, math.ceil(e / cell_mm) + 1)) for e in extent)


def _build_grid(curve: np.ndarray, gshape: tuple[int, int, int], members: int, rng: np.random.Generator):
    """The generator as a torch module: per member, one intensity curve and two smooth gain fields.

    ``out(x) = h(x) * C(g(x) * s(x))`` in raw intensity units: ``g`` undoes the scan's smooth
    spatial response (its bias field), ``C`` maps tissue intensities across scanners or weightings
    (piecewise linear over the knots, any direction), ``h`` lays the target site's own bias field
    over the result. The local curve ``s -> h C(g s)`` differs from place to place only by these
    two smooth gains, so a lesion maps through the same curve as every other voxel of its intensity:
    no place can learn to map it onto the tissue the references show there.
    """
    import torch

    class GainCurve(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            init = np.repeat(curve[None], members, axis=0)
            if members > 1:  # members start apart, so their spread says where the data do not decide
                init = init + rng.normal(0.0, 0.01, init.shape).astype(np.float32)
            self.curve = torch.nn.Parameter(torch.from_numpy(init.astype(np.float32)))
            self.gains = torch.nn.Parameter(torch.zeros((members, 2) + tuple(gshape)))
            self.s0 = 0.0  # the scan's and the target's raw zero in working units (gains act on raw intensity)
            self.t0 = 0.0

        def log_gains(self, coords):
            """(M, 2, N) log input and output gains at ``coords`` (N, 3), grid coordinates in [-1, 1]."""
            m = self.gains.shape[0]
            grid = coords.flip(-1).reshape(1, 1, 1, -1, 3).expand(m, 1, 1, -1, 3)
            g = torch.nn.functional.grid_sample(self.gains, grid, mode="bilinear", align_corners=True)
            return GAIN_RANGE * torch.tanh(g.reshape(m, 2, -1))

        def forward(self, s, coords, knots):
            """Mapped intensities (M, N) of working intensities ``s`` (N,) at ``coords`` (N, 3)."""
            lg = self.log_gains(coords)
            si = (s[None] + self.s0) * torch.exp(lg[:, 0]) - self.s0  # (M, N)
            kn = knots.to(s.dtype)
            sc = si.clamp(kn[0], kn[-1])
            idx = torch.searchsorted(kn, sc.contiguous(), right=True).clamp(1, kn.numel() - 1)
            lo, hi = kn[idx - 1], kn[idx]
            f = ((sc - lo) / (hi - lo)).clamp(0, 1)
            v0 = torch.gather(self.curve, 1, idx - 1)
            v1 = torch.gather(self.curve, 1, idx)
            return (v0 * (1 - f) + v1 * f + self.t0) * torch.exp(lg[:, 1]) - self.t0

        def smoothness(self, knots):
            """Smooth and small gain fields, and curves within the slope limit."""
            g = self.gains
            terms = [(g.diff(dim=a) ** 2).mean() for a in (2, 3, 4) if g.shape[a] > 1]
            cap = CURVE_SLOPE * knots.diff()
            steep = (torch.relu(self.curve.diff(dim=1).abs() - cap) ** 2).mean()
            return 10.0 * sum(terms) + 0.1 * (g**2).mean() + 100.0 * steep

        def project(self, knots: np.ndarray) -> None:
            """Enforce the slope limit on the curves exactly."""
            with torch.no_grad():
                limited = limit_slopes(self.curve.detach().cpu().numpy(), knots, axis=1)
                self.curve.copy_(torch.from_numpy(limited))

    return GainCurve()


def _coords(idx0, idx1, idx2, shape) -> np.ndarray:
    """Grid coordinates in [-1, 1] of voxel indices (each an array of the same shape)."""
    out = np.stack([2.0 * np.asarray(i, np.float32) / max(n - 1, 1) - 1.0 for i, n in zip((idx0, idx1, idx2), shape)],
                   axis=-1)
    return out.astype(np.float32)


class _Patches:
    """2D patches in planes across ``axis``, centred on random voxels of a mask, with their grid coordinates."""

    def __init__(self, shape, axis: int, patch: int, rng: np.random.Generator) -> None:
        self.shape, self.axis, self.rng = tuple(shape), axis, rng
        self.plane_axes = [a for a in range(3) if a != axis]
        self.p = int(min(patch, *(shape[a] for a in self.plane_axes)))

    def positions(self, mask_idx: np.ndarray, n: int) -> np.ndarray:
        """(n, 3) corner indices: the plane index along ``axis`` and the patch's corner in the plane."""
        pick = self.rng.choice(mask_idx, n)
        centres = np.stack(np.unravel_index(pick, self.shape), axis=1)
        out = centres.copy()
        for a in self.plane_axes:
            out[:, a] = np.clip(centres[:, a] - self.p // 2, 0, self.shape[a] - self.p)
        return out

    def take(self, vol: np.ndarray, corners: np.ndarray) -> np.ndarray:
        a, b = self.plane_axes
        out = np.empty((len(corners), self.p, self.p), dtype=vol.dtype)
        for i, c in enumerate(corners):
            sl = [slice(None)] * 3
            sl[self.axis] = int(c[self.axis])
            sl[a] = slice(int(c[a]), int(c[a]) + self.p)
            sl[b] = slice(int(c[b]), int(c[b]) + self.p)
            out[i] = vol[tuple(sl)]
        return out

    def coords(self, corners: np.ndarray) -> np.ndarray:
        """(n, p, p, 3) grid coordinates of the patches' voxels."""
        a, b = self.plane_axes
        r = np.arange(self.p)
        idx = np.zeros((len(corners), self.p, self.p, 3), dtype=np.float32)
        idx[..., self.axis] = corners[:, self.axis, None, None]
        idx[..., a] = corners[:, a, None, None] + r[None, :, None]
        idx[..., b] = corners[:, b, None, None] + r[None, None, :]
        return _coords(idx[..., 0], idx[..., 1], idx[..., 2], self.shape)


# -- the family ---------------------------------------------------------------------------------
class ConstrainedHarmonization(ModelFamily):
    id = "medgen.harmonize_gan"
    task = Task.HARMONIZE
    display_name = "Adversarial harmonization (constrained)"
    version = "0.1.0"
    priority = 10
    wants_gpu = True
    trains = True  # trained on the input and the target-site references
    license = "BSD-3-Clause"
    intended_use = RESEARCH_USE
    description = (
        "Learns, unpaired, to make the scan look as if acquired at the site of the reference scans (other "
        "subjects), including another weighting (e.g. T1 to T2). The generator is one curve of each voxel's "
        "own intensity between two smooth gain fields (the two sites' bias), so it can change contrast, bias "
        "and the scanner's response but cannot draw or erase structure, and a lesion maps like any tissue of "
        "its intensity. A MONAI patch "
        "discriminator judges output patches against the references'; an L1 anchor to the references "
        "(registered with SimpleITK) and a local-correlation structure term keep it on course. Beside the "
        "output, a hallucination map shows where the result is uncertain (spread of an ensemble) in percent "
        "of the target's tissue range."
    )
    citation = (
        "Chen J, Paris S, Durand F. Real-time edge-aware image processing with the bilateral grid. ACM TOG "
        "2007;26(3):103. Gharbi M et al. Deep bilateral learning for real-time image enhancement. ACM TOG "
        "2017;36(4):118. Isola P et al. Image-to-image translation with conditional adversarial networks "
        "(PatchGAN). CVPR 2017. Cohen JP, Luck M, Honari S. Distribution matching losses can hallucinate "
        "features in medical image translation. MICCAI 2018."
    )
    inputs = (
        InputSpec(
            "references",
            required=False,
            min_count=1,
            max_count=10,
            same_grid=False,
            help="1 to 10 scans from the target site (other subjects, any grid, one weighting): the output "
            "takes their look. Not needed when a saved site model is applied.",
        ),
        InputSpec("mask", required=False, same_grid=True,
                  help="Optional foreground of the scan (e.g. a brain mask); default: the automatic foreground."),
    )
    outputs = (
        OutputSpec("image", "image", "the scan as if acquired at the target site, on the scan's grid"),
        OutputSpec("hallucination", "heatmap",
                   "where not to trust the output: ensemble spread and any unexplained change, % of the "
                   "target's tissue range"),
    )
    params = (
        Param("preset", "choice", "fast", choices=tuple(PRESETS),
              help="fast: a few minutes on a CPU; quality: a GPU (finer grid, more members, larger discriminator)"),
        Param("generator", "choice", "constrained", choices=("constrained", "unconstrained"),
              help="constrained: a smooth intensity mapping (cannot add or remove structure). unconstrained: "
              "adds a free per-voxel correction net, for comparison only: it can hallucinate"),
        Param("adversarial_weight", "float", 0.05, minimum=0.0, maximum=10.0, label="adversarial weight",
              help="weight of the patch discriminator's loss against the anchor to the references"),
        Param("structure_weight", "float", 0.1, minimum=0.0, maximum=10.0, label="structure weight",
              help="weight of the local squared correlation between input and output (keeps edges in place)"),
        Param("plane_axis", "choice", "auto", choices=("auto", "0", "1", "2"),
              help="the discriminator sees 2D patches in planes across this axis; auto = the coarsest "
              "(axis 0 if isotropic)"),
        training_steps_param(),
        Param("model_file", "str", "", help="apply a saved site model (.safetensors) instead of training",
              path="read", suffixes=(".safetensors", ".json")),
        Param("save_model", "str", "", help="save the trained site model here (.safetensors + .json card)",
              path="write", suffixes=(".safetensors", ".json")),
    )

    # -- the run ----------------------------------------------------------------------------------
    def run(self, inputs: Inputs, params: dict[str, Any], ctx: RunContext) -> Result:
        from ..normative import plane_axis

        image = inputs.image
        if not inputs.references and not params["model_file"]:
            raise InputError("harmonization needs at least 1 reference scan from the target site (or a saved site "
                             "model in model_file)")
        if image.data.ndim != 3 or min(image.shape) < 8:
            raise InputError(f"harmonization needs a 3D volume at least 8 voxels on each side, got {image.shape}")
        data = np.asarray(image.data, dtype=np.float32)
        if not np.all(np.isfinite(data)):
            raise InputError("the scan holds NaN or infinite values")
        if not float(data.max()) > float(data.min()):
            raise InputError("the scan is constant: there is nothing to harmonize")
        preset_name = params["preset"]
        axis = plane_axis(image.spacing, params["plane_axis"])
        warnings: list[str] = []
        info: dict[str, Any] = {"preset": preset_name, "generator": params["generator"], "plane_axis": axis}
        ctx.progress(0, 100, "foreground")
        if inputs.mask is not None:
            fg = given_mask(inputs.mask, image)
        else:
            fg = foreground_mask(data, image.spacing, check=ctx.check_cancelled)
        if fg.sum() < 1000:
            raise InputError(f"only {int(fg.sum())} foreground voxels: harmonization needs a volume with tissue in it")
        s_lo, s_hi = _scale(data, fg)
        s = (data - s_lo) / (s_hi - s_lo)

        if params["model_file"]:
            grid, knots, t_lo, t_hi, card = self._load(params["model_file"], image, data, fg, ctx)
            if inputs.references:
                warnings.append("the references were not used: the saved site model was applied as it is")
            info["model_file"] = str(params["model_file"])
            info["training"] = card.get("training", {})
            info["references"] = card.get("references", [])
            grid.s0, grid.t0 = s_lo / (s_hi - s_lo), t_lo / (t_hi - t_lo)
            world = True
        else:
            preset = PRESETS[preset_name]
            refs, ref_masks, ref_info, t_lo, t_hi, ref_bg = self._prepare_references(
                image, data, fg, inputs.references, ctx, warnings, mask_given=inputs.mask is not None)
            info["references"] = ref_info
            knots, n_bg = _knots(s, fg, preset.knots)
            curve = _initial_curve(s, fg, refs, ref_masks, ref_bg, knots, n_bg, ctx.rng)
            info["initial_curve"] = {"knots": [round(float(v), 4) for v in knots],
                                     "values": [round(float(v), 4) for v in curve]}
            offsets = (s_lo / (s_hi - s_lo), t_lo / (t_hi - t_lo))
            grid, training = self._train(preset, params, s, fg, refs, ref_masks, knots, curve, axis, image, offsets,
                                         ctx)
            info["training"] = training
            world = False

        ctx.progress(88, 100, "applying the mapping")
        out, spread = self._apply(grid, knots, s, image, world, ctx)
        halluc = 100.0 * spread
        free_used = params["generator"] == "unconstrained" and not params["model_file"]
        if params["generator"] == "unconstrained" and params["model_file"]:
            warnings.append("a saved site model holds the constrained mapping only: the unconstrained correction "
                            "was not applied")
        if free_used:
            ctx.progress(93, 100, "free correction")
            free = self._free_correction(refs, ref_masks, s, fg, out, axis, params, ctx)
            halluc = np.sqrt(halluc**2 + (100.0 * ndimage.gaussian_filter(np.abs(free), 1.0)) ** 2)
            out = out + free
        result = (t_lo + out * (t_hi - t_lo)).astype(np.float32)
        halluc = halluc.astype(np.float32)
        if params["save_model"] and not params["model_file"]:
            info["saved_model"] = self._save(params, grid, knots, t_lo, t_hi, image, data, fg, info, ctx)
        frac = float((halluc[fg] > FLAG_PERCENT).mean())
        info.update(
            hallucination_units=f"percent of the target's tissue range ({t_hi - t_lo:.4g})",
            hallucination_flag_percent=FLAG_PERCENT,
            foreground_fraction_flagged=round(frac, 5),
            target_scale=[t_lo, t_hi],
            scan_scale=[s_lo, s_hi],
        )
        if frac > 0.02:
            warnings.append(
                f"{100 * frac:.1f}% of the foreground is uncertain by more than {FLAG_PERCENT:g}% of the target's "
                "tissue range (hallucination map): read those regions with care"
            )
        if warnings:
            info["warning"] = "; ".join(warnings)
        base = image.name or "image"
        method = "adversarial, unconstrained" if free_used else "adversarial"
        info["generator"] = "unconstrained" if free_used else "constrained"
        outputs = [
            Output("image", image.with_data(result, name=f"{base} (harmonized: {method})"), kind="image",
                   description=f"{self.display_name} of {base}"),
            Output("hallucination", image.with_data(halluc, name=f"{base} (harmonization uncertainty %)"),
                   kind="heatmap", description="ensemble spread and unexplained change, % of the target's range",
                   display={"contrast_limits": [0.0, 2.0 * FLAG_PERCENT]}),
        ]
        ctx.progress(100, 100, "done")
        return Result(outputs, info)

    # -- references -------------------------------------------------------------------------------
    def _prepare_references(self, image: Volume, data: np.ndarray, fg: np.ndarray, refs: list[Volume],
                            ctx: RunContext, warnings: list[str], mask_given: bool = False):
        """Check, register and normalise the references; arrays on the scan's grid in 0..1 working units."""
        from ..normative import _hash
        from ..registration import align_reference, contrast_agreement

        scan_hash = _hash(image)
        scan_support = fg if mask_given else _support(data)  # a given mask says what the scan covers
        scan_volume = max(1.0, float(scan_support.sum()) * float(np.prod(image.spacing)))
        work, masks, info, scales, bgs = [], [], [], [], []
        for i, ref in enumerate(refs):
            name = ref.name or f"reference {i + 1}"
            ctx.progress(1 + 14 * i // max(1, len(refs)), 100, f"registering reference {i + 1}/{len(refs)}")
            rdata = np.asarray(ref.data, dtype=np.float32)
            if rdata.ndim != 3:
                raise InputError(f"reference '{name}' is not a 3D volume (shape {rdata.shape})")
            if not np.all(np.isfinite(rdata)):
                raise InputError(f"reference '{name}' holds NaN or infinite values")
            if not float(rdata.max()) > float(rdata.min()):
                raise InputError(f"reference '{name}' is constant: it shows no tissue")
            ref_hash = _hash(ref)
            if ref_hash == scan_hash or (rdata.shape == data.shape and np.array_equal(rdata, data)):
                raise InputError(
                    f"reference '{name}' is the scan itself: the references must be scans of other subjects "
                    "from the target site"
                )
            reg, overlap, r_fg = align_reference(image, ref, fg, name, ctx.check_cancelled, ctx.seed)
            # tissue volume in mm3, each image on its own grid (a crop is the coverage check's business above)
            ratio = float(_support(rdata).sum()) * float(np.prod(ref.spacing)) / scan_volume
            if ratio > MAX_FOV_RATIO or ratio < 1.0 / MAX_FOV_RATIO:
                bigger = "larger" if ratio > 1 else "smaller"
                raise InputError(
                    f"reference '{name}' shows a {bigger} field of view than the scan: its tissue covers "
                    f"{ratio:.1f} times the scan's after alignment (e.g. a whole head against a skull-stripped "
                    "brain). Use references prepared like the scan (same skull stripping and coverage), or give a "
                    "mask"
                )
            if float(np.corrcoef(data[overlap][::7], reg.data[overlap][::7])[0, 1]) > 0.995:
                raise InputError(
                    f"reference '{name}' is the scan itself on another grid: the references must be scans of other "
                    "subjects from the target site"
                )
            lo, hi = _scale(reg.data, r_fg)
            work.append(((reg.data - lo) / (hi - lo)).astype(np.float32))
            masks.append(r_fg)
            scales.append((lo, hi))
            bg = reg.inside & ~ndimage.binary_dilation(r_fg, iterations=2)
            bgs.append(float(np.median(work[-1][bg])) if bg.sum() > 100 else float(work[-1][reg.inside].min()))
            info.append({"name": name, "sha256": ref_hash, "shape": list(ref.shape),
                         "spacing_mm": list(ref.spacing), "mutual_information": round(reg.metric, 4)})
        # one weighting among the references: each against the first
        for i in range(1, len(work)):
            both = masks[0] & masks[i]
            agree = contrast_agreement(work[0], work[i], both, seed=ctx.seed)
            info[i]["agreement_with_first"] = round(agree, 3)
            if not agree >= MIN_REFERENCE_AGREEMENT:
                raise InputError(
                    f"the references mix contrasts: '{info[i]['name']}' and '{info[0]['name']}' rank-correlate at "
                    f"{agree:+.2f} after alignment"
                    + (" (the tissue order is reversed, as between T1 and T2)" if agree < 0 else "")
                    + ". Give references of one weighting from the target site"
                )
        if len(refs) == 1:
            warnings.append("one reference only: the target site is learned from a single subject; 3 to 5 "
                            "references give a steadier mapping")
        t_lo = float(np.mean([sc[0] for sc in scales]))
        t_hi = float(np.mean([sc[1] for sc in scales]))
        return work, masks, info, t_lo, t_hi, float(np.median(bgs))

    # -- training ---------------------------------------------------------------------------------
    def _train(self, preset: HarmonizePreset, params, s, fg, refs, ref_masks, knots, curve, axis, image, offsets,
               ctx):
        import torch
        from monai.losses import LocalNormalizedCrossCorrelationLoss, PatchAdversarialLoss
        from monai.networks.nets import PatchDiscriminator

        from ..engine import TimeCosine, TrainConfig, Trainer, training_limits
        from ..normative import _Sub

        device = torch.device(ctx.device)
        rng = ctx.rng
        n_refs, m = len(refs), preset.members
        gshape = _grid_shape(s.shape, image.spacing, preset.cell_mm)
        grid = _build_grid(curve, gshape, m, rng)
        grid.s0, grid.t0 = (float(v) for v in offsets)
        disc = PatchDiscriminator(spatial_dims=2, channels=preset.disc_channels, in_channels=1, out_channels=1,
                                  num_layers_d=preset.disc_layers, norm="INSTANCE").to(device)
        adv = PatchAdversarialLoss(criterion="least_squares", reduction="mean")
        lncc = LocalNormalizedCrossCorrelationLoss(spatial_dims=2, kernel_size=7, kernel_type="rectangular")
        opt_d = torch.optim.Adam(disc.parameters(), lr=preset.lr_disc, betas=(0.5, 0.999))
        opt_g = torch.optim.Adam(grid.parameters(), lr=preset.lr)
        w_adv, w_struct = float(params["adversarial_weight"]), float(params["structure_weight"])
        patches = _Patches(s.shape, axis, preset.patch, rng)
        fg_idx = np.flatnonzero(fg)
        ref_idx = [np.flatnonzero(mk) for mk in ref_masks]
        # member j is anchored to all references but one (leave one out) when there are 3 or more
        anchors = [[r for r in range(n_refs) if n_refs < 3 or r != j % n_refs] for j in range(m)]
        knots_t = torch.from_numpy(knots.astype(np.float32)).to(device)
        ref_valid = [np.where(mk, 1.0, 0.0).astype(np.float32) for mk in ref_masks]
        max_steps, budget = training_limits(params["max_steps"], preset.max_steps, preset.train_seconds,
                                            ctx.time_budget)
        schedule = TimeCosine(opt_g, preset.lr, budget, max_steps)
        b, p = preset.batch, patches.p
        stats: dict[str, float] = {}

        def step_fn(model, step):
            corners = patches.positions(fg_idx, b)
            src = torch.from_numpy(patches.take(s, corners)).to(device)
            xyz = torch.from_numpy(patches.coords(corners)).to(device)
            fake = model(src.reshape(-1), xyz.reshape(-1, 3), knots_t).reshape(m, b, 1, p, p)
            # the discriminator: reference patches (random places) against every member's output
            real = []
            for _ in range(b):
                r = int(rng.integers(n_refs))
                real.append(patches.take(refs[r], patches.positions(ref_idx[r], 1)))
            real_t = torch.from_numpy(np.concatenate(real)[:, None]).to(device)
            if w_adv > 0:
                opt_d.zero_grad(set_to_none=True)
                d_loss = 0.5 * (adv(disc(real_t)[-1], target_is_real=True, for_discriminator=True)
                                + adv(disc(fake.detach().reshape(m * b, 1, p, p))[-1], target_is_real=False,
                                      for_discriminator=True))
                d_loss.backward()
                opt_d.step()
                g_adv = adv(disc(fake.reshape(m * b, 1, p, p))[-1], target_is_real=True, for_discriminator=False)
            else:
                g_adv = fake.sum() * 0.0
            # the anchor: L1 to the aligned references at the same place (each member its own subset)
            anchor = 0.0
            for j in range(m):
                r = anchors[j][int(rng.integers(len(anchors[j])))]
                tgt = torch.from_numpy(patches.take(refs[r], corners)).to(device)
                val = torch.from_numpy(patches.take(ref_valid[r], corners) * patches.take(fg, corners)).to(device)
                anchor = anchor + ((fake[j, :, 0] - tgt).abs() * val).sum() / val.sum().clamp_min(1.0)
            anchor = anchor / m
            struct = lncc(fake.reshape(m * b, 1, p, p), src[None].expand(m, -1, -1, -1).reshape(m * b, 1, p, p)) + 1.0
            loss = anchor + w_adv * g_adv + w_struct * struct + model.smoothness(knots_t)
            if step % 25 == 0:
                stats.update(anchor=float(anchor.detach()), adversarial=float(g_adv.detach()), structure=float(struct.detach()))
            return loss

        ctx.progress(16, 100, "training")
        trainer = Trainer(grid, opt_g, step_fn,
                          TrainConfig(max_steps=max_steps, time_budget=budget, lr=preset.lr, log_every=25,
                                      grad_clip=None, amp=False),
                          _Sub(ctx, 16, 86), scheduler=schedule)
        history = trainer.fit()
        grid.eval()
        grid.project(knots)
        return grid, {
            "steps": history.steps,
            "seconds": round(history.elapsed, 1),
            "stop_reason": history.stop_reason,
            "final_loss": history.losses[-1] if history.losses else None,
            "final_terms": {k: round(v, 5) for k, v in stats.items()},
            "grid": list(gshape),
            "members": m,
            "device": str(device),
        }

    # -- applying ---------------------------------------------------------------------------------
    def _apply(self, grid, knots, s, image: Volume, world: bool, ctx: RunContext):
        """Mean and spread of the members' outputs over the whole volume (0..1 target units)."""
        import torch

        device = next(grid.parameters()).device
        knots_t = torch.from_numpy(np.asarray(knots, np.float32)).to(device)
        out = np.empty(s.shape, dtype=np.float32)
        spread = np.empty(s.shape, dtype=np.float32)
        n0, n1, n2 = s.shape
        i1, i2 = np.meshgrid(np.arange(n1), np.arange(n2), indexing="ij")
        step = max(1, 2_000_000 // (n1 * n2))
        with torch.no_grad():
            for z in range(0, n0, step):
                ctx.check_cancelled()
                zs = np.arange(z, min(n0, z + step))
                i0 = np.broadcast_to(zs[:, None, None], (zs.size, n1, n2))
                j1 = np.broadcast_to(i1, i0.shape)
                j2 = np.broadcast_to(i2, i0.shape)
                if world:
                    xyz = self._world_coords(grid, image, i0, j1, j2)
                else:
                    xyz = _coords(i0, j1, j2, s.shape)
                vals = grid(torch.from_numpy(s[z: z + step].reshape(-1)).to(device),
                            torch.from_numpy(xyz.reshape(-1, 3)).to(device), knots_t)
                vals = vals.float().cpu().numpy().reshape((-1,) + i0.shape)
                out[z: z + step] = vals.mean(0)
                spread[z: z + step] = vals.std(0) if vals.shape[0] > 1 else 0.0
                ctx.progress(88 + int(5 * (z + step) / n0), 100, "applying the mapping")
        return out, spread

    @staticmethod
    def _world_coords(grid, image: Volume, i0, j1, j2) -> np.ndarray:
        """Grid coordinates of this scan's voxels in a saved model's grid (the training scan's, in world mm).

        The grid is placed in the scanner's frame, where a site's coil and field patterns stay;
        beyond the training scan's box it continues flat (coordinates clamped).
        """
        idx = np.stack([i0, j1, j2], axis=-1).reshape(-1, 3).astype(np.float64)
        world = idx @ image.affine[:3, :3].T + image.affine[:3, 3]
        inv = np.linalg.inv(grid.train_affine)
        train_idx = world @ inv[:3, :3].T + inv[:3, 3]
        c = 2.0 * train_idx / np.maximum(grid.train_shape - 1.0, 1.0) - 1.0
        return np.clip(c, -1.0, 1.0).astype(np.float32).reshape(i0.shape + (3,))

    # -- save / reuse ------------------------------------------------------------------------------
    def _save(self, params, grid, knots, t_lo, t_hi, image: Volume, data, fg, info, ctx: RunContext) -> str:
        import torch

        from ..engine import save_weights
        from ..normative import _template

        tmpl, tmpl_affine = _template(image, np.where(fg, data, 0.0))
        state = {
            "curve": grid.curve.detach().float().cpu().contiguous(),
            "gains": grid.gains.detach().float().cpu().contiguous(),
            "knots": torch.from_numpy(np.asarray(knots, np.float32)),
            "template": torch.from_numpy(tmpl),
        }
        card = {
            "family": self.id,
            "family_version": self.version,
            "preset": info["preset"],
            "target_scale": [t_lo, t_hi],
            "train_affine": image.affine.tolist(),
            "train_shape": list(image.shape),
            "template_affine": tmpl_affine.tolist(),
            "spacing_mm": list(image.spacing),
            "trained_on": image.name,
            "references": info.get("references", []),
            "training": info.get("training", {}),
            "contrast_check": "rank correlation of the scan with the training scan's template >= 0.3",
            "intended_use": self.intended_use,
            "license": self.license,
        }
        return str(save_weights(params["save_model"], state, card, overwrite=ctx.overwrite))

    def _load(self, path, image: Volume, data, fg, ctx: RunContext):
        """A saved site model: its grid (placed in world mm), knots, target scale; refused for another weighting."""
        import torch

        from ..engine import load_weights
        from ..normative import MIN_CONTRAST_AGREEMENT, template_agreement

        state, card = load_weights(path, expected_family=self.id)
        for key in ("curve", "gains", "knots", "template"):
            if key not in state:
                raise WeightsError(f"the site model lacks '{key}'; it was not saved by this family")
        for key in ("target_scale", "train_affine", "train_shape", "template_affine"):
            if key not in card:
                raise WeightsError(f"the site model's card lacks '{key}'; it was not saved by this family")
        curve, gains = state["curve"].float(), state["gains"].float()
        if (curve.ndim != 2 or gains.ndim != 5 or gains.shape[:2] != (curve.shape[0], 2)
                or state["knots"].numel() != curve.shape[1]):
            raise WeightsError("the site model's arrays do not fit together; the file is damaged")
        template = Volume(state["template"].numpy().astype(np.float32), np.asarray(card["template_affine"]), "template")
        agree = template_agreement(image, data, fg, template, ctx)
        if not agree >= MIN_CONTRAST_AGREEMENT:
            raise InputError(
                f"the site model was trained on a scan of another weighting than this one: after alignment its "
                f"template and the scan rank-correlate at {agree:+.2f}. Train a site model on a scan like this one"
            )
        grid = _build_grid(curve[0].numpy(), tuple(gains.shape[2:]), int(curve.shape[0]), ctx.rng)
        with torch.no_grad():
            grid.curve.copy_(curve)
            grid.gains.copy_(gains)
        grid.train_affine = np.asarray(card["train_affine"], dtype=np.float64)
        grid.train_shape = np.asarray(card["train_shape"], dtype=np.float64)
        grid.to(ctx.device).eval()
        t_lo, t_hi = (float(v) for v in card["target_scale"])
        return grid, state["knots"].numpy().astype(np.float64), t_lo, t_hi, card

    def _free_correction(self, refs, ref_masks, s, fg, base, axis, params, ctx) -> np.ndarray:
        """The unconstrained comparison: a small U-Net adds a free per-voxel correction to the constrained output.

        Trained for a quarter of the time against the same discriminator setting (reference patches
        as real) with an L1 pull towards the constrained output, so the difference is only what the
        adversary asks for beyond a smooth intensity mapping: what the hallucination map reports.
        """
        import torch
        from monai.losses import PatchAdversarialLoss
        from monai.networks.nets import BasicUNet, PatchDiscriminator

        from ..engine import training_limits

        preset = PRESETS[params["preset"]]
        device = torch.device(ctx.device)
        rng = ctx.rng
        net = BasicUNet(spatial_dims=2, in_channels=2, out_channels=1, features=(16, 16, 32, 32, 64, 16)).to(device)
        disc = PatchDiscriminator(spatial_dims=2, channels=preset.disc_channels, in_channels=1,
                                  num_layers_d=preset.disc_layers, norm="INSTANCE").to(device)
        adv = PatchAdversarialLoss(criterion="least_squares", reduction="mean")
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        opt_d = torch.optim.Adam(disc.parameters(), lr=preset.lr_disc, betas=(0.5, 0.999))
        patches = _Patches(s.shape, axis, 32 * (preset.patch // 32 or 1), rng)
        fg_idx = np.flatnonzero(fg)
        ref_idx = [np.flatnonzero(mk) for mk in ref_masks]
        steps, budget = training_limits(params["max_steps"], 4 * 10**9, preset.train_seconds, ctx.time_budget)
        steps, budget = max(1, steps // 4), budget / 4
        import time

        start = time.perf_counter()
        b = preset.batch
        step = 0
        while step < steps and time.perf_counter() - start < budget:
            ctx.check_cancelled()
            corners = patches.positions(fg_idx, b)
            x = torch.from_numpy(np.stack([patches.take(s, corners), patches.take(base, corners)], 1)).to(device)
            y = x[:, 1:] + net(x)
            real = []
            for _ in range(b):
                r = int(rng.integers(len(refs)))
                real.append(patches.take(refs[r], patches.positions(ref_idx[r], 1)))
            real_t = torch.from_numpy(np.concatenate(real)[:, None]).to(device)
            opt_d.zero_grad(set_to_none=True)
            (adv(disc(real_t)[-1], True, True) + adv(disc(y.detach())[-1], False, True)).backward()
            opt_d.step()
            opt.zero_grad(set_to_none=True)
            loss = (y - x[:, 1:]).abs().mean() + float(params["adversarial_weight"]) * adv(disc(y)[-1], True, False)
            loss.backward()
            opt.step()
            step += 1
        net.eval()
        out = np.zeros_like(base)
        planes_s = np.moveaxis(s, axis, 0)
        planes_b = np.moveaxis(base, axis, 0)
        res = np.moveaxis(out, axis, 0)
        with torch.no_grad():
            for k in range(planes_s.shape[0]):
                x = np.stack([planes_s[k], planes_b[k]])[None]
                pad = [(0, 0), (0, 0)] + [(0, (-n) % 16) for n in x.shape[2:]]
                xt = torch.from_numpy(np.pad(x, pad, mode="edge")).to(device)
                res[k] = net(xt)[0, 0, : x.shape[2], : x.shape[3]].cpu().numpy()
        return out

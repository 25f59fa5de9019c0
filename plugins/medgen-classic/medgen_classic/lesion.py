"""Procedural lesion insertion: irregular soft-edged blobs that carry the scan's own noise.

The baseline a generative lesion model must beat (for realism) and a ground-truth
generator for testing detectors: every inserted lesion comes with an exact label mask.
Each lesion is an ellipsoid of random orientation and aspect whose radius is modulated
by a smoothed random field; it is evaluated only inside its own bounding box.
"""

from __future__ import annotations

from typing import Any

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
    Volume,
)
from napari_medgen.acquisition import noise_sigma
from napari_medgen.masks import ellipsoid_structure, foreground_mask, given_mask, random_rotation

__all__ = ["ProceduralLesion", "estimate_noise_sigma"]

#: refuse a single lesion whose bounding box would exceed this many voxels
MAX_BOX_VOXELS = 60_000_000


#: the scan's noise level, as measured for every family (kept here under its old name)
estimate_noise_sigma = noise_sigma


def _fmt_point(p: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in p) + ")"


class ProceduralLesion(ModelFamily):
    """Irregular soft-edged lesions with the scan's own noise, plus their exact label mask."""

    id = "classic.procedural"
    task = Task.LESION
    display_name = "Procedural lesion"
    version = "0.1.0"
    description = (
        "Inserts irregular lesions: ellipsoids of random orientation and aspect whose radius is "
        "modulated by a smoothed random field, blended with a soft edge into the image at "
        "'contrast' relative to the local tissue level (median of a shell around the lesion). "
        "The scan's own noise (estimated from a high-pass residual) is restored inside the "
        "lesion, so it is not suspiciously smooth. Positions: the clicked points, random voxels "
        "of the given mask, or random voxels of the automatic foreground eroded by the lesion "
        "radius. The label mask (1..N per lesion, later lesions win overlaps) marks voxels where "
        "the lesion weight is at least one half."
    )
    citation = (
        "In the spirit of procedural tumour synthesis: Hu Q et al. Label-free liver tumor "
        "segmentation. CVPR 2023:7422-7432."
    )
    license = "BSD-3-Clause"
    intended_use = RESEARCH_USE
    wants_gpu = False
    outputs = (
        OutputSpec("image", "image", "the scan with the lesions inserted"),
        OutputSpec("mask", "labels", "lesion labels 1..N"),
    )
    params = (
        Param("n_lesions", "int", 3, help="Number of lesions when no points are given.", minimum=1, maximum=100,
              label="number of lesions"),
        Param("diameter_mm", "float", 8.0, help="Mean lesion diameter.", minimum=1.0, maximum=60.0,
              label="diameter", unit="mm"),
        Param("diameter_jitter", "float", 0.3, help="Relative random variation of each diameter (0 = all equal).",
              minimum=0.0, maximum=0.9),
        Param("contrast", "float", 0.6,
              help="Intensity relative to the local tissue: +0.6 = 60% brighter, -0.5 = half as bright.",
              minimum=-1.0, maximum=3.0),
        Param("irregularity", "float", 0.4, help="0 = smooth ellipsoid, 1 = very lumpy outline.",
              minimum=0.0, maximum=1.0),
        Param("edge_mm", "float", 1.0, help="Width of the soft transition at the lesion border (0 = hard edge).",
              minimum=0.0, maximum=20.0, label="edge width", unit="mm"),
        Param("placement", "choice", "auto",
              help="auto: points if given, else the mask, else random; points: the clicked points; "
              "mask: random voxels of the mask; random: random voxels of the automatic foreground.",
              choices=("auto", "points", "mask", "random")),
    )
    inputs = (
        InputSpec("points", required=False, help="Lesion centres (one lesion per point)."),
        InputSpec("mask", required=False, help="Region (non-zero voxels, on the image grid) to place lesions in."),
    )

    # -- placement ---------------------------------------------------------------
    @staticmethod
    def _mode(placement: str, inputs: Inputs) -> str:
        has_points = inputs.points is not None and np.asarray(inputs.points).size > 0
        if placement == "auto":
            return "points" if has_points else ("mask" if inputs.mask is not None else "random")
        if placement == "points" and not has_points:
            raise InputError("placement 'points' needs at least one point: add points to the Points layer")
        if placement == "mask" and inputs.mask is None:
            raise InputError("placement 'mask' needs a mask on the image's grid")
        return placement

    @staticmethod
    def _check_points(points: np.ndarray, image: Volume) -> np.ndarray:
        pts = np.asarray(points, dtype=float)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise InputError(f"points must be an (N, 3) array of voxel indices; got shape {pts.shape}")
        upper = np.asarray(image.shape) - 0.5
        for i, p in enumerate(pts):
            if not np.all(np.isfinite(p)) or np.any(p < -0.5) or np.any(p > upper):
                raise InputError(
                    f"point {i + 1} at index {_fmt_point(p)} lies outside the image (shape {image.shape})"
                )
        return pts

    def _sample_in(self, region: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        flat = np.flatnonzero(region)
        chosen = rng.choice(flat, size=n, replace=flat.size < n)
        return np.stack(np.unravel_index(chosen, region.shape), axis=1).astype(float)

    def _centres(self, mode: str, inputs: Inputs, fg: np.ndarray, n: int, radius_mm: float, rng) -> np.ndarray:
        image = inputs.image
        if mode == "points":
            return self._check_points(np.atleast_2d(inputs.points), image)
        if mode == "mask":
            region = given_mask(inputs.mask, image, "to place lesions in")
            return self._sample_in(region, n, rng)
        if not fg.any():
            raise InputError("no foreground found to place lesions in; give points or a mask")
        return self._sample_in_tissue(fg, n, radius_mm, np.asarray(image.spacing), rng)

    @staticmethod
    def _sample_in_tissue(fg: np.ndarray, n: int, radius_mm: float, spacing: np.ndarray, rng) -> np.ndarray:
        """``n`` voxels of ``fg`` eroded by ``radius_mm`` (uniform, by rejection: no full-volume transform).

        A candidate drawn uniformly from ``fg`` is kept when the whole ball of ``radius_mm``
        around it lies in ``fg``; if the eroded region is too thin the radius is halved.
        """
        flat = np.flatnonzero(fg)
        shape = np.asarray(fg.shape)
        centres: list[np.ndarray] = []
        for radius in (radius_mm, radius_mm / 2.0, radius_mm / 4.0, 0.0):
            ball = ellipsoid_structure(radius, spacing) if radius > 0 else np.ones((1, 1, 1), dtype=bool)
            half = np.asarray(ball.shape) // 2
            for _ in range(max(200, 50 * n)):
                if len(centres) == n:
                    return np.asarray(centres, dtype=float)
                c = np.asarray(np.unravel_index(int(flat[rng.integers(flat.size)]), fg.shape))
                lo, hi = c - half, c + half + 1
                if np.any(lo < 0) or np.any(hi > shape):
                    continue
                window = fg[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
                if np.all(window[ball]):
                    centres.append(c)
        while len(centres) < n:  # pragma: no cover - radius 0 always accepts inner voxels
            centres.append(np.asarray(np.unravel_index(int(flat[rng.integers(flat.size)]), fg.shape)))
        return np.asarray(centres, dtype=float)

    # -- run ---------------------------------------------------------------------
    def run(self, inputs: Inputs, params: dict[str, Any], ctx: RunContext) -> Result:
        image = inputs.image
        data = np.asarray(image.data)
        spacing = np.asarray(image.spacing)
        rng = ctx.rng
        diameter = float(params["diameter_mm"])
        jitter = float(params["diameter_jitter"])
        contrast = float(params["contrast"])
        irregularity = float(params["irregularity"])
        edge = float(params["edge_mm"])

        mode = self._mode(params["placement"], inputs)
        ctx.progress(0, 1, "foreground and noise level")
        fg = foreground_mask(data, spacing, check=ctx.check_cancelled)
        ctx.check_cancelled()
        centres = self._centres(mode, inputs, fg, int(params["n_lesions"]), diameter / 2.0, rng)
        ctx.check_cancelled()
        sigma = estimate_noise_sigma(data, fg, check=ctx.check_cancelled)
        global_level = float(np.median(data[fg])) if fg.any() else float(np.median(data))

        out = np.array(data, dtype=np.float32, copy=True)
        labels = np.zeros(data.shape, dtype=np.uint16)
        lin = image.affine[:3, :3]
        lesions = []
        n = len(centres)
        for i, centre in enumerate(centres):
            ctx.progress(i, n, f"lesion {i + 1}/{n}")
            record = self._insert(
                out, labels, data, fg, centre, i + 1, lin, spacing, rng,
                diameter=diameter * max(0.05, 1.0 + jitter * rng.uniform(-1.0, 1.0)),
                contrast=contrast, irregularity=irregularity, edge=edge, sigma=sigma,
                global_level=global_level,
            )
            record["centre_world_mm"] = [float(v) for v in image.index_to_world(centre)[0]]
            lesions.append(record)
        ctx.progress(n, n, "done")

        counts = np.bincount(labels.ravel(), minlength=n + 1)
        voxel_mm3 = float(np.prod(spacing))
        for rec in lesions:
            rec["voxels"] = int(counts[rec["label"]])
            rec["volume_mm3"] = rec["voxels"] * voxel_mm3
        base = image.name or "image"
        outputs = [
            Output("image", image.with_data(out, name=f"{base} (lesions)"), kind="image",
                   description=f"{n} procedural lesion(s) inserted"),
            Output("mask", image.with_data(labels, name=f"{base} (lesion mask)"), kind="labels",
                   description="lesion labels 1..N (weight >= 0.5)"),
        ]
        info = {"placement": mode, "noise_sigma": sigma, "lesions": lesions}
        return Result(outputs, info)

    def _insert(
        self, out, labels, data, fg, centre, label, lin, spacing, rng, *, diameter, contrast,
        irregularity, edge, sigma, global_level,
    ) -> dict[str, Any]:
        """Blend one lesion into ``out`` (in place) and write its label; return its record."""
        r_mean = diameter / 2.0
        spread = rng.normal(0.0, 0.15 + 0.25 * irregularity, 3)
        semi = r_mean * np.exp(spread - spread.mean())
        rot = random_rotation(rng)
        amp = 0.35 * irregularity
        half_mm = float(semi.max()) * float(np.exp(2.0 * amp)) + edge / 2.0 + float(spacing.max())
        half_vox = np.ceil(half_mm / spacing).astype(int)
        lo = np.maximum(np.floor(centre).astype(int) - half_vox, 0)
        hi = np.minimum(np.ceil(centre).astype(int) + half_vox + 1, np.asarray(data.shape))
        box_shape = tuple(int(v) for v in hi - lo)
        if int(np.prod(box_shape)) > MAX_BOX_VOXELS:
            raise InputError(
                f"a {diameter:.0f} mm lesion needs too many voxels at this resolution; use a smaller diameter"
            )
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))

        # offsets of the box voxels from the centre, in world mm, then in the lesion's frame
        grids = [(np.arange(a, b, dtype=np.float32) - np.float32(c)) for a, b, c in zip(lo, hi, centre)]
        axes = np.asarray(rot.T @ lin, dtype=np.float32)  # lesion frame <- index offsets
        q2 = np.zeros(box_shape, dtype=np.float32)
        for k in range(3):
            u = (
                axes[k, 0] * grids[0][:, None, None]
                + axes[k, 1] * grids[1][None, :, None]
                + axes[k, 2] * grids[2][None, None, :]
            )
            q2 += (u / np.float32(semi[k])) ** 2
        q = np.sqrt(q2)
        if amp > 0:
            field = rng.standard_normal(box_shape).astype(np.float32)
            field = ndimage.gaussian_filter(field, sigma=np.maximum(0.5 * r_mean / spacing, 0.5), mode="nearest")
            field /= max(float(field.std()), 1e-6)
            np.clip(field, -2.0, 2.0, out=field)
            q *= np.exp(amp * field)
        # signed distance to the border (mm), first order: (q - 1) / |grad q|
        grads = np.gradient(q, *[float(s) for s in spacing]) if min(box_shape) > 1 else None
        if grads is not None:
            gnorm = np.sqrt(sum(g * g for g in grads))
            sd = (q - 1.0) / np.maximum(gnorm, np.float32(0.05 / r_mean))
            del grads, gnorm
        else:
            sd = (q - 1.0) * np.float32(r_mean)
        if edge > 0:
            t = np.clip(0.5 - sd / np.float32(edge), 0.0, 1.0)
            alpha = t * t * (3.0 - 2.0 * t)
        else:
            alpha = (sd <= 0).astype(np.float32)
        nearest = tuple(int(v) for v in np.clip(np.round(centre).astype(int) - lo, 0, np.asarray(box_shape) - 1))
        alpha[nearest] = 1.0  # the lesion always contains its own centre

        shell = (sd > edge / 2.0) & (sd <= edge / 2.0 + max(2.0, 0.5 * r_mean))
        local = data[box]
        in_tissue = shell & fg[box]
        if in_tissue.sum() >= 10:
            level = float(np.median(local[in_tissue]))
        elif shell.sum() >= 10:
            level = float(np.median(local[shell]))
        else:
            level = global_level
        # level * (1 + contrast) for positive levels; for negative ones (CT fat) 'brighter' still means up
        target = level + contrast * abs(level)

        region = out[box]
        noise = rng.standard_normal(box_shape).astype(np.float32)
        restore = np.sqrt(np.clip(1.0 - (1.0 - alpha) ** 2, 0.0, 1.0)) * np.float32(sigma)
        out[box] = (1.0 - alpha) * region + alpha * np.float32(target) + restore * noise
        labels[box][alpha >= 0.5] = label
        return {
            "label": int(label),
            "centre_index": [float(v) for v in centre],
            "diameter_mm": float(diameter),
            "semi_axes_mm": [float(v) for v in semi],
            "contrast": float(contrast),
            "tissue_level": level,
            "target_intensity": float(target),
        }

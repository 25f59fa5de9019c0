"""Anomaly-detection test set: pseudo-subjects made from the MNI152 template and its tissue maps.

Nothing is downloaded: the template, GM and WM maps are package data of the installed nilearn
wheel (:func:`napari_medgen.io.sample.load_mni152`). The template is skull-stripped (brain and
a rim of CSF), so every pseudo-subject is a brain-only scan.

A pseudo-subject (:func:`make_subject`) is built in this order:

1. **Anatomy**: the template (T1 intensities, GM and WM probabilities) pulled through a random
   transform: a small affine about the brain centre (rotation up to 5 degrees about each axis,
   scale 0.93-1.07 per axis, translation up to 8 mm) plus a smooth displacement field
   (Gaussian-smoothed noise on a 12 mm control grid, 2-4 mm at most), resampled onto the
   subject's own grid (the template's grid cropped to the head, or cropped at random), so no
   two subjects are aligned. ``shape_scale`` multiplies the size of the displacement field (the
   part an affine registration cannot undo; 0: affine only).
2. **Contrast**: ``"t1"`` = the deformed T1 template; ``"t2"`` = synthesised from the deformed
   tissue maps with partial volume (CSF 1.0, GM 0.55, WM 0.35), modulated by a high-passed copy
   of the T1 so it is not piecewise constant. A faint subject-specific texture (smoothed noise,
   2% of the WM intensity) is added to both so no two normal brains are identical.
3. **Lesions** (before the acquisition): ellipsoids with irregular (noise-perturbed) borders and
   a one-voxel partial-volume edge, 3-20 mm across, centred in white matter (WM probability
   > 0.9) or at the GM/WM boundary (juxtacortical), never outside the brain. Kinds: ``hyper``
   (+25-60% of the WM intensity), ``hypo`` (-25-50%), ``texture`` (same mean, added spatially
   correlated noise with a std of 15-25% of the WM intensity). Ground truth: voxels the lesion
   occupies by at least 50%.
4. **Acquisition**: Gaussian blur (FWHM one voxel), a multiplicative smooth bias field (a random
   cubic polynomial, 10-20% at most inside the head), Rician noise (sigma 2-3% of the WM
   intensity), a global intensity scale (x 200-2000) and rounding to integers (a scanner's
   int16).

Everything is drawn from independent streams of ``numpy.random.default_rng([seed, stream])``, so
a subject is fully determined by its seed, and adding lesions to a seed does not change its
anatomy, bias or noise. ``small=True`` builds the same subject at 2 mm (template block-averaged
2 x 2 x 2), about 8 times faster, for quick runs and tests.

:func:`benchmark_set` is the fixed split (references 100-104, validation 200, test 300-302,
healthy 400), cached as ``.npz`` under ``benchmarks/out/anomaly_cache/``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from napari_medgen.io.sample import load_mni152
from napari_medgen.volume import Volume

__all__ = [
    "LesionSpec",
    "Subject",
    "make_subject",
    "default_lesions",
    "benchmark_set",
    "load_or_make",
    "CACHE_DIR",
    "KINDS",
    "SPLIT_SEEDS",
]

#: bump when the generator changes: cached subjects of another version are not reused
GENERATOR_VERSION = "1"
CACHE_DIR = Path(__file__).with_name("out") / "anomaly_cache"
KINDS = ("hyper", "hypo", "texture")
LOCATIONS = ("wm", "juxtacortical")
SPLIT_SEEDS = {
    "references": (100, 101, 102, 103, 104),
    "validation": 200,
    "test": (300, 301, 302),
    "healthy": 400,
}
#: random streams (so that, e.g., the lesions never change the anatomy drawn from the same seed)
_GEOMETRY, _TEXTURE, _LESIONS, _BIAS, _NOISE, _SCALE, _CROP, _LESION_LIST = range(8)
#: margin (mm) kept around the template's head when cropping its grid
_HEAD_MARGIN_MM = 10.0


@dataclass(frozen=True)
class LesionSpec:
    """One lesion to place; ``None`` fields are drawn at random (from the subject's seed)."""

    kind: str = "hyper"  # "hyper" | "hypo" | "texture"
    diameter_mm: float | None = None  # 3-20 mm (juxtacortical: 3-12 mm)
    location: str | None = None  # "wm" | "juxtacortical"
    strength: float | None = (
        None  # fraction of the WM intensity (hyper 0.25-0.6, hypo 0.25-0.5, texture std 0.15-0.25)
    )

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"lesion kind must be one of {KINDS}, got {self.kind!r}")
        if self.location is not None and self.location not in LOCATIONS:
            raise ValueError(f"lesion location must be one of {LOCATIONS}, got {self.location!r}")


@dataclass
class Subject:
    """A pseudo-subject: the scan, its ground truth and a description of each lesion."""

    volume: Volume
    lesion_mask: np.ndarray  # bool, on the volume's grid
    brain_mask: np.ndarray  # bool: brain parenchyma with ventricles (where metrics are computed)
    lesions: list[dict[str, Any]] = field(default_factory=list)
    lesion_labels: np.ndarray | None = None  # uint8: 0 background, k = lesions[k - 1]

    def __post_init__(self) -> None:
        if self.lesion_labels is None:
            self.lesion_labels = ndimage.label(self.lesion_mask)[0].astype(np.uint8)


# -- the template at the working resolution -----------------------------------------------------------
@lru_cache(maxsize=2)
def _template(small: bool) -> dict[str, Any]:
    """T1, GM, WM on the template grid cropped to the head (+10 mm), block-averaged to 2 mm if small."""
    t1v = load_mni152("t1")
    t1 = np.asarray(t1v.data, dtype=np.float32)
    gm = np.asarray(load_mni152("gm").data, dtype=np.float32)
    wm = np.asarray(load_mni152("wm").data, dtype=np.float32)
    head = t1 > 0.05
    margin = int(round(_HEAD_MARGIN_MM / min(t1v.spacing)))
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.nonzero(head.any(axis=other))[0]
        lo, hi = max(0, int(idx[0]) - margin), min(t1.shape[axis], int(idx[-1]) + 1 + margin)
        if small and (hi - lo) % 2:
            hi = hi - 1 if hi == t1.shape[axis] else hi + 1
        box.append((lo, hi))
    sl = tuple(slice(lo, hi) for lo, hi in box)
    affine = t1v.affine.copy()
    affine[:3, 3] = t1v.index_to_world([b[0] for b in box])[0]
    arrays = [a[sl] for a in (t1, gm, wm)]
    if small:

        def block(a):
            s = a.shape
            return a.reshape(s[0] // 2, 2, s[1] // 2, 2, s[2] // 2, 2).mean(axis=(1, 3, 5), dtype=np.float32)

        arrays = [block(a) for a in arrays]
        centre_shift = affine[:3, :3] @ np.full(3, 0.5)  # block centre = between the two first voxels
        affine[:3, :3] = affine[:3, :3] * 2.0
        affine[:3, 3] = affine[:3, 3] + centre_shift
    t1, gm, wm = (np.ascontiguousarray(a) for a in arrays)
    brain = (gm + wm) > 0.5
    centre = np.asarray(ndimage.center_of_mass(brain))
    return {
        "t1": t1,
        "gm": gm,
        "wm": wm,
        "affine": affine,
        "centre_world": affine[:3, :3] @ centre + affine[:3, 3],
    }


def _rotation(angles_rad: Sequence[float]) -> np.ndarray:
    a, b, c = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _warp(tpl: dict[str, Any], out_shape, out_affine, rng: np.random.Generator, shape_scale: float):
    """Pull the template's T1, GM and WM onto the subject grid through a random affine + smooth field."""
    spacing = np.linalg.norm(out_affine[:3, :3], axis=0)
    angles = np.deg2rad(rng.uniform(-5.0, 5.0, 3))
    scales = 1.0 + rng.uniform(-0.07, 0.07, 3)
    shift = rng.uniform(-8.0, 8.0, 3)
    linear = _rotation(angles) @ np.diag(scales)
    centre = tpl["centre_world"]
    # smooth displacement field (mm) on a 12 mm control grid covering the output grid
    control_mm = 12.0
    extent = np.asarray(out_shape) * spacing
    cshape = tuple(int(np.ceil(e / control_mm)) + 3 for e in extent)
    field = rng.standard_normal((3,) + cshape)
    field = np.stack([ndimage.gaussian_filter(f, 1.0, mode="nearest") for f in field])
    peak = float(np.max(np.linalg.norm(field, axis=0))) or 1.0
    max_disp = rng.uniform(2.0, 4.0) * shape_scale
    field *= max_disp / peak
    # output index -> world -> template world (affine about the brain centre, plus the field) -> template index
    tpl_inv = np.linalg.inv(tpl["affine"])
    out = {k: np.empty(out_shape, dtype=np.float32) for k in ("t1", "gm", "wm")}
    grid1, grid2 = np.meshgrid(np.arange(out_shape[1]), np.arange(out_shape[2]), indexing="ij")
    slab = max(1, 2_000_000 // (out_shape[1] * out_shape[2]))
    for start in range(0, out_shape[0], slab):
        stop = min(out_shape[0], start + slab)
        i0 = np.arange(start, stop)[:, None, None] + np.zeros_like(grid1)[None]
        idx = np.stack([i0, np.broadcast_to(grid1, i0.shape), np.broadcast_to(grid2, i0.shape)]).reshape(
            3, -1
        )
        world = out_affine[:3, :3] @ idx + out_affine[:3, 3:4]
        ccoord = ((world - out_affine[:3, 3:4]) / control_mm) + 1.0  # control grid index (1 cell of padding)
        disp = np.stack([ndimage.map_coordinates(f, ccoord, order=1, mode="nearest") for f in field])
        src_world = linear @ (world - centre[:, None]) + centre[:, None] + shift[:, None] + disp
        src = tpl_inv[:3, :3] @ src_world + tpl_inv[:3, 3:4]
        for key in out:
            vals = ndimage.map_coordinates(tpl[key], src, order=1, mode="constant", cval=0.0)
            out[key][start:stop] = vals.reshape(stop - start, out_shape[1], out_shape[2])
    geometry = {
        "rotation_deg": np.rad2deg(angles).round(3).tolist(),
        "scale": scales.round(4).tolist(),
        "translation_mm": shift.round(3).tolist(),
        "max_displacement_mm": round(float(max_disp), 3),
    }
    return out["t1"], out["gm"], out["wm"], geometry


def _brain_and_head(gm: np.ndarray, wm: np.ndarray, t1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brain mask (parenchyma closed, ventricles filled) and the head (brain + CSF rim) mask."""
    parenchyma = (gm + wm) > 0.5
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(parenchyma, iterations=2))
    head = ndimage.binary_fill_holes((t1 > 0.05) | brain)
    return brain, head


def _synth_t2(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, head: np.ndarray, spacing) -> np.ndarray:
    """T2-like: CSF bright, GM medium, WM dark, partial volume from the maps, the T1's texture inverted."""
    inside = ndimage.gaussian_filter(head.astype(np.float32), 0.7 / np.asarray(spacing))
    csf = np.clip(inside - gm - wm, 0.0, 1.0)
    base = 1.0 * csf + 0.55 * gm + 0.35 * wm
    # high-pass of the T1 (detail finer than ~3 mm) relative to the WM intensity, inverted:
    # the T2 darkens where the T1 brightens
    hp = (t1 - ndimage.gaussian_filter(t1, 1.5 / np.asarray(spacing))) / 0.87
    return np.clip(base * (1.0 - 0.6 * hp), 0.0, None).astype(np.float32)


# -- lesions -------------------------------------------------------------------------------------
def default_lesions(seed: int, n: int | None = None) -> list[LesionSpec]:
    """6-10 lesions (or ``n``) mixing the three kinds (each at least twice), sizes and locations."""
    rng = np.random.default_rng([seed, _LESION_LIST])
    n = int(rng.integers(6, 11)) if n is None else int(n)
    kinds = [KINDS[i % 3] for i in range(n)]
    rng.shuffle(kinds)
    specs = []
    for i, kind in enumerate(kinds):
        location = "juxtacortical" if i % 3 == 2 else "wm"
        top = 12.0 if location == "juxtacortical" else 20.0
        diameter = float(np.exp(rng.uniform(np.log(3.0), np.log(top))))
        specs.append(LesionSpec(kind=kind, diameter_mm=round(diameter, 2), location=location))
    return specs


def _lesion_shape(rng, centre_idx, diameter_mm, spacing, shape):
    """Occupancy (0..1) and box of an irregular ellipsoid centred at ``centre_idx``."""
    radius = diameter_mm / 2.0
    axes = radius * rng.uniform(0.65, 1.0, 3)
    axes *= radius / float(np.prod(axes) ** (1 / 3))  # equivalent-sphere diameter = diameter_mm
    rot = _rotation(rng.uniform(0, 2 * np.pi, 3))
    reach = float(axes.max()) * 1.35 + 2.0 * float(max(spacing))
    half = np.ceil(reach / np.asarray(spacing)).astype(int)
    lo = np.maximum(0, np.floor(centre_idx).astype(int) - half)
    hi = np.minimum(np.asarray(shape), np.floor(centre_idx).astype(int) + half + 2)
    grids = np.meshgrid(
        *[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre_idx, spacing)], indexing="ij"
    )
    pts = np.stack([g.ravel() for g in grids])  # mm offsets from the centre
    local = rot.T @ pts
    rho = np.sqrt(np.sum((local / axes[:, None]) ** 2, axis=0)).reshape(grids[0].shape)
    noise = ndimage.gaussian_filter(
        rng.standard_normal(rho.shape), max(0.8, 0.3 * radius) / np.asarray(spacing)
    )
    noise /= float(noise.std()) or 1.0
    rho = rho * (1.0 + rng.uniform(0.08, 0.2) * noise)
    signed_mm = (rho - 1.0) * float(axes.mean())
    occ = np.clip(0.5 - signed_mm / float(np.mean(spacing)), 0.0, 1.0).astype(np.float32)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    return occ, box, axes


def _place_lesions(image, gm, wm, brain, specs, wm_level, spacing, affine, rng):
    """Add the lesions to ``image`` in place; returns the label map and their descriptions."""
    labels = np.zeros(image.shape, dtype=np.uint8)
    parenchyma = (gm + wm) > 0.5
    centres = {
        "wm": np.argwhere(wm > 0.9),
        "juxtacortical": np.argwhere(
            (wm > 0.35) & (wm < 0.65) & (gm > 0.3) & ndimage.binary_erosion(brain, iterations=2)
        ),
    }
    taken = np.zeros(image.shape, dtype=bool)
    described = []
    for k, spec in enumerate(specs):
        location = spec.location or ("wm" if rng.random() < 0.67 else "juxtacortical")
        diameter = spec.diameter_mm
        if diameter is None:
            top = 12.0 if location == "juxtacortical" else 20.0
            diameter = float(np.exp(rng.uniform(np.log(3.0), np.log(top))))
        placed = None
        for attempt in range(400):
            if attempt and attempt % 100 == 0:
                diameter = max(3.0, diameter * 0.8)  # a big lesion that fits nowhere is made smaller
            pool = centres[location]
            centre = pool[rng.integers(len(pool))] + rng.uniform(-0.5, 0.5, 3)
            occ, box, axes = _lesion_shape(rng, centre, diameter, spacing, image.shape)
            inside = occ >= 0.5
            if not inside.any() or (occ > 0).sum() < 1:
                continue
            if not brain[box][occ > 0].all():
                continue
            if parenchyma[box][inside].mean() < 0.9:
                continue
            if location == "wm" and (wm[box][inside] > 0.5).mean() < 0.6:
                continue
            if location == "juxtacortical" and not (gm[box][inside] > 0.4).any():
                continue
            if taken[box][occ > 0].any():
                continue
            placed = (centre, occ, box, axes, inside)
            break
        if placed is None:
            raise RuntimeError(f"could not place lesion {k + 1} ({spec}) after 400 tries")
        centre, occ, box, axes, inside = placed
        if spec.kind == "hyper":
            strength = spec.strength if spec.strength is not None else rng.uniform(0.25, 0.60)
            image[box] += occ * np.float32(strength * wm_level)
        elif spec.kind == "hypo":
            strength = spec.strength if spec.strength is not None else rng.uniform(0.25, 0.50)
            image[box] -= occ * np.float32(strength * wm_level)
            np.maximum(image[box], 0.0, out=image[box])
        else:
            strength = spec.strength if spec.strength is not None else rng.uniform(0.15, 0.25)
            grain_mm = rng.uniform(0.8, 1.5)
            tex = ndimage.gaussian_filter(rng.standard_normal(occ.shape), grain_mm / np.asarray(spacing))
            w = occ.astype(np.float64)
            tex -= float(
                (tex * w).sum() / w.sum()
            )  # same occupancy-weighted mean: the tissue's mean is unchanged
            tex /= float(np.sqrt((tex[inside] ** 2).mean())) or 1.0
            image[box] += (occ * tex * strength * wm_level).astype(np.float32)
        # the lesion keeps a 1-voxel gap from the next (each stays its own connected component)
        taken[box] |= ndimage.binary_dilation(occ > 0, iterations=2)
        region = labels[box]
        region[inside & (region == 0)] = k + 1
        voxels = int(inside.sum())
        centre_world = (affine[:3, :3] @ centre + affine[:3, 3]).round(2).tolist()
        described.append(
            {
                "label": k + 1,
                "kind": spec.kind,
                "location": location,
                "diameter_mm": round(float(diameter), 2),
                "semi_axes_mm": axes.round(2).tolist(),
                "strength": round(float(strength), 4),
                "centre_index": centre.round(2).tolist(),
                "centre_world_mm": centre_world,
                "voxels": voxels,
                "volume_mm3": round(voxels * float(np.prod(spacing)), 1),
            }
        )
    return labels, described


# -- acquisition ---------------------------------------------------------------------------------
def _bias_field(shape, head, rng) -> tuple[np.ndarray, float]:
    """1 + a random cubic polynomial of the normalised coordinates, at most +-10-20% inside the head."""
    coords = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    z, y, x = coords[0][:, None, None], coords[1][None, :, None], coords[2][None, None, :]
    poly = np.zeros(shape, dtype=np.float32)
    for i in range(4):
        for j in range(4 - i):
            for k in range(4 - i - j):
                if i + j + k == 0:
                    continue
                poly += np.float32(rng.standard_normal() / (1 + i + j + k)) * (z**i) * (y**j) * (x**k)
    vals = poly[head]
    poly -= np.float32(vals.mean())
    amp = rng.uniform(0.10, 0.20)
    poly *= np.float32(amp / (float(np.abs(poly[head]).max()) or 1.0))
    poly += 1.0
    return poly, float(amp)


def _crop_box(crop, shape, rng, spacing) -> tuple[slice, slice, slice]:
    if crop is None:
        return (slice(None),) * 3
    if isinstance(crop, str):
        if crop != "random":
            raise ValueError(f"crop must be None, 'random' or three (start, stop) pairs, got {crop!r}")
        most = [int(round(6.0 / s)) for s in spacing]
        return tuple(
            slice(int(rng.integers(0, m + 1)), n - int(rng.integers(0, m + 1))) for m, n in zip(most, shape)
        )
    pairs = [tuple(p) for p in crop]
    if len(pairs) != 3:
        raise ValueError("crop needs three (start, stop) pairs")
    return tuple(slice(int(a), int(b)) for a, b in pairs)


def make_subject(
    seed: int,
    contrast: str = "t1",
    lesions: Sequence[LesionSpec] | None = None,
    shape_scale: float = 1.0,
    crop: Any = None,
    small: bool = False,
) -> Subject:
    """A pseudo-subject drawn from ``seed`` (see the module docstring); deterministic.

    ``lesions``: what to place (``None`` or ``[]``: a healthy subject). ``shape_scale``: size of
    the smooth displacement field (0: affine only, 1: 2-4 mm at most, 2: 4-8 mm). ``crop``: None,
    ``"random"`` (0-6 mm off each side, drawn from the seed) or three (start, stop) voxel pairs of
    the template's head grid. ``small``: build it at 2 mm instead of 1 mm.
    """
    contrast = str(contrast).lower()
    if contrast not in ("t1", "t2"):
        raise ValueError(f"contrast must be 't1' or 't2', got {contrast!r}")
    streams = {s: np.random.default_rng([int(seed), s]) for s in range(8)}
    tpl = _template(bool(small))
    spacing = np.linalg.norm(tpl["affine"][:3, :3], axis=0)
    box = _crop_box(crop, tpl["t1"].shape, streams[_CROP], spacing)
    full_shape = tpl["t1"].shape
    starts = [b.start or 0 for b in box]
    stops = [b.stop if b.stop is not None else n for b, n in zip(box, full_shape)]
    shape = tuple(int(b - a) for a, b in zip(starts, stops))
    affine = tpl["affine"].copy()
    affine[:3, 3] = tpl["affine"][:3, :3] @ np.asarray(starts, float) + tpl["affine"][:3, 3]

    t1, gm, wm, geometry = _warp(tpl, shape, affine, streams[_GEOMETRY], float(shape_scale))
    brain, head = _brain_and_head(gm, wm, t1)
    image = _synth_t2(t1, gm, wm, head, spacing) if contrast == "t2" else t1.copy()
    del t1
    wm_level = float(np.median(image[wm > 0.9]))
    # faint subject-specific texture of normal tissue
    tex = ndimage.gaussian_filter(streams[_TEXTURE].standard_normal(shape).astype(np.float32), 1.0 / spacing)
    tex *= np.float32(0.02 * wm_level / (float(tex.std()) or 1.0))
    image += tex * head
    del tex

    labels, described = _place_lesions(
        image, gm, wm, brain, list(lesions or []), wm_level, spacing, affine, streams[_LESIONS]
    )
    # acquisition: blur (FWHM one voxel), bias, Rician noise, global scale, integer rounding
    image = ndimage.gaussian_filter(image, 1.0 / 2.3548)
    bias, bias_amp = _bias_field(shape, head, streams[_BIAS])
    image *= bias
    del bias
    noise_rng = streams[_NOISE]
    sigma = np.float32(noise_rng.uniform(0.02, 0.03) * wm_level)
    n1 = noise_rng.standard_normal(shape, dtype=np.float32)
    n1 *= sigma
    image += n1
    np.square(image, out=image)
    n1 = noise_rng.standard_normal(shape, dtype=np.float32)
    n1 *= sigma
    np.square(n1, out=n1)
    image += n1
    np.sqrt(image, out=image)
    del n1
    scale = float(streams[_SCALE].uniform(200.0, 2000.0))
    image *= np.float32(scale)
    np.rint(image, out=image)

    metadata = {
        "anomaly_subject": {
            "seed": int(seed),
            "contrast": contrast,
            "small": bool(small),
            "shape_scale": float(shape_scale),
            "geometry": geometry,
            "bias_max": round(bias_amp, 4),
            "noise_sigma_of_wm": round(float(sigma) / wm_level, 4),
            "intensity_scale": round(scale, 2),
            "wm_level": round(wm_level * scale, 2),
            "generator": GENERATOR_VERSION,
        }
    }
    name = f"subject {seed} {contrast.upper()}" + (" 2mm" if small else "")
    volume = Volume(image.astype(np.float32, copy=False), affine, name=name, metadata=metadata)
    return Subject(volume, labels > 0, brain, described, labels)


# -- cache and the fixed split ---------------------------------------------------------------------
def _key(seed, contrast, lesions, shape_scale, crop, small) -> str:
    text = json.dumps(
        [
            GENERATOR_VERSION,
            int(seed),
            contrast,
            [asdict(s) for s in (lesions or [])],
            float(shape_scale),
            crop if not isinstance(crop, (list, tuple)) else [list(c) for c in crop],
            bool(small),
        ],
        sort_keys=True,
    )
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def load_or_make(
    seed: int,
    contrast: str = "t1",
    lesions: Sequence[LesionSpec] | None = None,
    shape_scale: float = 1.0,
    crop: Any = None,
    small: bool = False,
    cache_dir: Path | str | None = CACHE_DIR,
) -> Subject:
    """:func:`make_subject`, read from / written to ``cache_dir`` (None: no cache)."""
    if cache_dir is None:
        return make_subject(seed, contrast, lesions, shape_scale, crop, small)
    cache_dir = Path(cache_dir)
    key = _key(seed, contrast, lesions, shape_scale, crop, small)
    path = cache_dir / f"{contrast}_{'2mm' if small else '1mm'}_seed{seed}_{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                volume = Volume(
                    z["data"].astype(np.float32), z["affine"], name=meta["name"], metadata=meta["metadata"]
                )
                labels = z["labels"]
                return Subject(volume, labels > 0, z["brain"], meta["lesions"], labels)
        except (OSError, KeyError, ValueError):
            pass  # a damaged cache file is rebuilt
    subject = make_subject(seed, contrast, lesions, shape_scale, crop, small)
    cache_dir.mkdir(parents=True, exist_ok=True)
    data = subject.volume.data
    assert np.all(data == np.rint(data)) and data.max() < 32767 and data.min() >= 0
    meta = {"name": subject.volume.name, "metadata": subject.volume.metadata, "lesions": subject.lesions}
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        data=data.astype(np.int16),
        affine=subject.volume.affine,
        labels=subject.lesion_labels,
        brain=subject.brain_mask,
        meta=np.array(json.dumps(meta)),
    )
    tmp.replace(path)
    return subject


def benchmark_set(
    contrast: str = "t1",
    small: bool = False,
    cache_dir: Path | str | None = CACHE_DIR,
    shape_scale: float = 1.0,
) -> dict[str, Any]:
    """The fixed split: ``references`` (5 healthy, randomly cropped grids), ``validation`` (1 with lesions),
    ``test`` (3 with 6-10 lesions each) and ``healthy`` (1 lesion-free). ``shape_scale``: see :func:`make_subject`."""

    def get(seed, lesions, crop=None):
        return load_or_make(
            seed, contrast, lesions, shape_scale=shape_scale, crop=crop, small=small, cache_dir=cache_dir
        )

    return {
        "references": [get(s, None, "random") for s in SPLIT_SEEDS["references"]],
        "validation": get(SPLIT_SEEDS["validation"], default_lesions(SPLIT_SEEDS["validation"])),
        "test": [get(s, default_lesions(s)) for s in SPLIT_SEEDS["test"]],
        "healthy": get(SPLIT_SEEDS["healthy"], None),
    }

"""Lesion-realism test set: MS-like lesions placed in the MNI152 anatomy BEFORE a simulated acquisition.

Nothing is downloaded (the template and its GM/WM maps are package data of nilearn, see
:mod:`benchmarks.anomaly_data`). A case (:func:`make_case`) is one seed in one setting
(:data:`SETTINGS`: ``t1``, ``t2``, ``t1thick``), built in this order:

1. **Anatomy**, exactly as :func:`benchmarks.anomaly_data.make_subject` draws it for the same
   seed (same random streams and helpers): the template pulled through a random affine plus a
   smooth displacement, the brain/head masks, the noise-free tissue T1 (template intensities)
   or the synthetic T2 (:func:`benchmarks.anomaly_data._synth_t2`), plus the faint subject
   texture (smoothed noise, 2% of the WM level) as harmonize_data adds it.
2. **Lesions** ("real"), in the noise-free anatomy on its own grid (1 mm, or 2 mm if small):

   * number: :data:`N_LESIONS` per case (30 at 1 mm, 12 at 2 mm);
   * size: equivalent-sphere diameter drawn log-uniform in :data:`DIAMETER_MM` (3-15 mm; 4-15
     mm at 2 mm); the reported ``diameter_mm`` is the equivalent diameter of the rendered
     occupancy (volume = sum of the partial-volume occupancy);
   * shape: an ovoid (semi-axes ratios 0.55-1.0, random orientation) whose radius is modulated
     along the direction by 5 random cosine terms on the unit sphere (relative amplitude
     :data:`IRREGULARITY` 0.06-0.15): a smooth, irregular outline;
   * partial volume: the occupancy of each voxel is the fraction of ``SS^3`` sub-voxel samples
     inside the outline, ``SS = ceil(spacing / 0.3 mm)`` (4 at 1 mm, 7 at 2 mm);
   * placement: centre on a voxel with WM probability > 0.9; the whole lesion inside the brain
     mask, >= 75% of its voxels in WM (WM probability > 0.5), 2 voxels of gap to any other lesion;
   * intensity: ``WM + c (GM - WM)`` in the noise-free anatomy (GM, WM = the medians of the
     lesion-free tissue image over GM > 0.7 and WM > 0.9), ``c`` drawn once per case in
     :data:`C_RANGE` (1.5-2.5): the one formula gives T1-hypo and T2-hyper lesions;
   * interior heterogeneity: that level times ``1 + h f``, ``f`` a Gaussian-smoothed
     (sigma :data:`HETERO_SIGMA_MM` = 1.5 mm) unit-variance random field, ``h`` drawn per lesion
     in :data:`HETERO_RANGE` (2-5% of the level); the subject texture (2% of WM) stays too;
   * the lesion replaces the tissue by its occupancy: ``x (1 - occ) + occ (lesion)``.
3. **Acquisition** (the same for the scan with lesions, its lesion-free twin and a rescan):

   * blur: Gaussian, FWHM one voxel of the anatomy grid on every axis; ``t1thick``: the
     through-plane axis (axis 0) is then block-averaged over ``4 mm / spacing`` slices (a
     slice profile: Gaussian FWHM one anatomy voxel convolved with a 4 mm box), so its scan
     has 1 x 1 x 4 mm voxels (2 x 2 x 4 mm if small);
   * a smooth multiplicative bias field (:func:`benchmarks.anomaly_data._bias_field`, +-10-20%);
   * Rician noise, sigma 2-3% of the (blurred) WM level;
   * a global intensity scale x200-2000 and rounding to integers (a scanner's int16).

   The **twin** is the same anatomy acquired WITHOUT the lesions with the same bias, noise
   draw and scale: it is identical to the scan outside the lesions' blurred support
   (``Case.support``: the partly occupied voxels dilated by the blur kernel's reach, mapped to the
   scan grid). The **rescan** is the scan with lesions acquired with an independent noise draw
   (the null control of the realism test: same lesions, another acquisition).

Ground truth on the scan grid: ``labels`` (lesion k = the voxels it occupies by >= 50%; a lesion
too small for that gets its most occupied voxel), ``occupancy`` (0..1) and per lesion: label,
``centre_index`` (its centre, a float voxel index on the scan grid), ``diameter_mm``, ``c``,
``level`` (noise-free tissue units), ``local_level`` (the median of the noise-free lesion-free
image in a shell 0.5 to 0.5 + max(2, r/2) mm outside its outline, as classic.procedural measures
it) and ``ratio_to_local`` = (level - local) / local.

Everything is drawn from ``numpy.random.default_rng([seed, stream])`` streams, so a case is fully
determined by its setting and seed. :func:`benchmark_set`: two seeds per setting
(:data:`SPLIT_SEEDS`), cached as ``.npz`` under ``benchmarks/out/lesion_cache/``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from napari_medgen.volume import Volume

from .anomaly_data import (
    _BIAS,
    _GEOMETRY,
    _NOISE,
    _SCALE,
    _TEXTURE,
    _bias_field,
    _brain_and_head,
    _rotation,
    _synth_t2,
    _template,
    _warp,
)

__all__ = [
    "CACHE_DIR",
    "C_RANGE",
    "DIAMETER_MM",
    "N_LESIONS",
    "SETTINGS",
    "SPLIT_SEEDS",
    "LCase",
    "benchmark_set",
    "load_or_make",
    "make_case",
]

#: bump when the generator changes: cached cases of another version are not reused
GENERATOR_VERSION = "1"
CACHE_DIR = Path(__file__).with_name("out") / "lesion_cache"
#: setting -> (contrast, through-plane slice thickness in mm or None for isotropic)
SETTINGS: dict[str, tuple[str, float | None]] = {
    "t1": ("t1", None),
    "t2": ("t2", None),
    "t1thick": ("t1", 4.0),
}
SPLIT_SEEDS: dict[str, tuple[int, ...]] = {"t1": (600, 601), "t2": (610, 611), "t1thick": (620, 621)}
#: lesions per case (key: small)
N_LESIONS = {False: 30, True: 12}
#: equivalent-sphere diameter range (mm), log-uniform (key: small)
DIAMETER_MM = {False: (3.0, 15.0), True: (4.0, 15.0)}
#: lesion level = WM + c (GM - WM), c per case
C_RANGE = (1.5, 2.5)
#: interior heterogeneity: relative amplitude range and the smoothing of its random field
HETERO_RANGE = (0.02, 0.05)
HETERO_SIGMA_MM = 1.5
#: relative amplitude of the outline's modulation, and its number of cosine terms
IRREGULARITY = (0.06, 0.15)
_N_COSINES = 5
#: ovoid semi-axes ratios (the longest is 1)
ASPECT = (0.55, 1.0)
#: sub-voxel samples along each axis: ceil(spacing / this)
SUBVOXEL_MM = 0.3
NOISE_RANGE = (0.02, 0.03)
SCALE_RANGE = (200.0, 2000.0)
#: own random streams (above anomaly_data's 0-7)
_LESION_STREAM, _C_STREAM, _RESCAN_STREAM = 20, 21, 22


@dataclass
class LCase:
    """One case: the scan with real lesions, its lesion-free twin, a rescan and the ground truth."""

    setting: str
    seed: int
    scan: Volume  # with the real lesions (integer-valued float32)
    twin: Volume  # the same anatomy and acquisition without lesions
    rescan: Volume  # the scan with lesions, another noise draw
    labels: np.ndarray  # uint8 (scan grid): lesion k = lesions[k - 1]
    occupancy: np.ndarray  # float32 0..1 (scan grid)
    support: np.ndarray  # bool (scan grid): where the lesions can change the acquisition
    brain: np.ndarray  # bool (scan grid)
    gm: np.ndarray  # float32 (scan grid)
    wm: np.ndarray  # float32 (scan grid)
    lesions: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.setting}/{self.seed}"

    @property
    def c(self) -> float:
        return float(self.meta["c"])


# -- lesion shape ---------------------------------------------------------------------------------
def _shape_params(rng, diameter_mm: float) -> dict[str, Any]:
    """An irregular ovoid of equivalent diameter ``diameter_mm`` (before the outline's modulation)."""
    radius = diameter_mm / 2.0
    axes = np.sort(rng.uniform(ASPECT[0], ASPECT[1], 3))[::-1].copy()
    axes[0] = 1.0
    axes *= radius / float(np.prod(axes) ** (1 / 3))
    return {
        "axes": axes,
        "rot": _rotation(rng.uniform(0, 2 * np.pi, 3)),
        "amp": float(rng.uniform(*IRREGULARITY)),
        "freqs": rng.normal(0.0, 0.7, (_N_COSINES, 3)),
        "phases": rng.uniform(0, 2 * np.pi, _N_COSINES),
    }


def _render(par: dict[str, Any], centre_idx, spacing, shape, ss: int):
    """Occupancy (0..1, the fraction of ``ss^3`` sub-voxel samples inside the outline) in its box."""
    spacing = np.asarray(spacing, dtype=float)
    axes, rot, amp = par["axes"], par["rot"], par["amp"]
    weights = np.sqrt(2.0 / _N_COSINES)
    reach = float(axes.max()) * (1.0 + 3.0 * amp) + spacing.max()
    half = np.ceil(reach / spacing).astype(int) + 1
    c0 = np.floor(centre_idx).astype(int)
    lo = np.maximum(0, c0 - half)
    hi = np.minimum(np.asarray(shape), c0 + half + 2)
    box_shape = tuple(int(b - a) for a, b in zip(lo, hi))
    sub = ((np.arange(ss) + 0.5) / ss - 0.5).astype(np.float32)  # sub-voxel offsets (voxels)
    # fine-grid coordinates (mm from the lesion centre) per axis, voxel-major then sub-voxel
    coords = [
        (
            ((np.arange(a, b, dtype=np.float32)[:, None] + sub[None, :]) - np.float32(c)) * np.float32(s)
        ).ravel()
        for a, b, c, s in zip(lo, hi, centre_idx, spacing)
    ]
    z, y, x = coords[0][:, None, None], coords[1][None, :, None], coords[2][None, None, :]
    r = rot.astype(np.float32)
    local = [r[0, k] * z + r[1, k] * y + r[2, k] * x for k in range(3)]  # rot.T @ offset
    norm = np.sqrt(local[0] ** 2 + local[1] ** 2 + local[2] ** 2) + np.float32(1e-6)
    rho = np.sqrt(sum((local[k] / np.float32(axes[k])) ** 2 for k in range(3)))
    mod = np.zeros(rho.shape, dtype=np.float32)
    for f, p in zip(par["freqs"].astype(np.float32), par["phases"]):
        mod += np.cos(
            np.float32(2 * np.pi) * (f[0] * local[0] + f[1] * local[1] + f[2] * local[2]) / norm
            + np.float32(p)
        )
    inside = (rho <= 1.0 + amp * weights * mod).astype(np.float32)
    occ = inside.reshape(box_shape[0], ss, box_shape[1], ss, box_shape[2], ss).mean(axis=(1, 3, 5))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    return occ.astype(np.float32), box


def _fits(occ, box, brain, wm, taken) -> bool:
    part = occ > 0
    if not part.any() or not brain[box][part].all():
        return False
    inside = occ >= 0.5
    if inside.any() and (wm[box][inside] > 0.5).mean() < 0.75:
        return False
    return not taken[box][part].any()


def _place(image, gm, wm, brain, spacing, n, diameters, rng):
    """Place ``n`` lesions; returns a list of (centre, occupancy, box, shape parameters)."""
    taken = np.zeros(image.shape, dtype=bool)
    pool = np.argwhere(wm > 0.9)
    ss = int(np.ceil(float(np.max(spacing)) / SUBVOXEL_MM))
    placed = []
    for k in range(n):
        diameter = float(np.exp(rng.uniform(np.log(diameters[0]), np.log(diameters[1]))))
        found = None
        for attempt in range(600):
            if attempt and attempt % 150 == 0:
                diameter = max(diameters[0], diameter * 0.8)  # what fits nowhere is made smaller
            centre = pool[rng.integers(len(pool))] + rng.uniform(-0.5, 0.5, 3)
            par = _shape_params(rng, diameter)
            if not _fits(*_render(par, centre, spacing, image.shape, 2), brain, wm, taken):
                continue  # a coarse test first (2^3 samples per voxel), then the fine rendering
            occ, box = _render(par, centre, spacing, image.shape, ss)
            if _fits(occ, box, brain, wm, taken):
                found = (centre, occ, box, par)
                break
        if found is None:
            raise RuntimeError(f"could not place lesion {k + 1} ({diameter:.1f} mm) after 600 tries")
        _, occ, box, _ = found
        region = taken[box]
        region |= ndimage.binary_dilation(occ > 0, iterations=2)
        placed.append(found)
    return placed


# -- grids ----------------------------------------------------------------------------------------
def _factor(setting: str, spacing) -> int:
    thick = SETTINGS[setting][1]
    return 1 if thick is None else max(1, round(thick / float(spacing[0])))


def _to_scan(a: np.ndarray, f: int) -> np.ndarray:
    """Block-average ``f`` slices of axis 0 (the thick-slice grid); identity for f = 1."""
    if f == 1:
        return a
    n = a.shape[0] // f
    return a[: n * f].reshape((n, f) + a.shape[1:]).mean(axis=1, dtype=np.float32)


def _scan_affine(affine: np.ndarray, f: int) -> np.ndarray:
    out = affine.copy()
    if f > 1:
        out[:3, 3] = affine[:3, 3] + affine[:3, 0] * (f - 1) / 2.0  # block centre
        out[:3, 0] = affine[:3, 0] * f
    return out


def _blur(image: np.ndarray) -> np.ndarray:
    """FWHM one voxel of the anatomy grid on every axis (the thick slice's box comes after)."""
    return ndimage.gaussian_filter(image, 1.0 / 2.3548)


#: reach of the blur kernel (scipy's truncate 4 sigma) in voxels of the anatomy grid
_BLUR_REACH = int(4.0 * (1.0 / 2.3548) + 0.5)


def _acquire(tissue, f, bias, sigma, scale, noise_rng):
    image = _to_scan(_blur(tissue), f)
    image = image * bias
    n1 = noise_rng.standard_normal(image.shape, dtype=np.float32)
    n1 *= sigma
    image += n1
    np.square(image, out=image)
    n1 = noise_rng.standard_normal(image.shape, dtype=np.float32)
    n1 *= sigma
    np.square(n1, out=n1)
    image += n1
    np.sqrt(image, out=image)
    image *= np.float32(scale)
    np.rint(image, out=image)
    return image


# -- a case ---------------------------------------------------------------------------------------
def make_case(setting: str, seed: int, small: bool = False, n_lesions: int | None = None) -> LCase:
    """The anatomy of ``seed`` with real lesions, acquired as ``setting`` says (see the module docstring)."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {tuple(SETTINGS)}, got {setting!r}")
    contrast, _thick = SETTINGS[setting]
    seed = int(seed)
    streams = {s: np.random.default_rng([seed, s]) for s in range(8)}
    tpl = _template(bool(small))
    affine = tpl["affine"].copy()
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    shape = tpl["t1"].shape

    x, gm, wm, geometry = _warp(tpl, shape, affine, streams[_GEOMETRY], 1.0)
    brain, head = _brain_and_head(gm, wm, x)
    image = _synth_t2(x, gm, wm, head, spacing) if contrast == "t2" else x
    wm_level = float(np.median(image[wm > 0.9]))
    tex = ndimage.gaussian_filter(streams[_TEXTURE].standard_normal(shape).astype(np.float32), 1.0 / spacing)
    tex /= np.float32(float(tex.std()) or 1.0)
    tex *= head
    tex *= np.float32(0.02 * wm_level)
    image = image + tex
    free_tissue = brain & (gm + wm > 0.5)
    gm_level = float(np.median(image[(gm > 0.7) & free_tissue]))
    wm_level = float(np.median(image[wm > 0.9]))
    c = float(np.random.default_rng([seed, _C_STREAM]).uniform(*C_RANGE))
    level = wm_level + c * (gm_level - wm_level)

    # -- real lesions in the noise-free anatomy
    rng = np.random.default_rng([seed, _LESION_STREAM])
    n = N_LESIONS[bool(small)] if n_lesions is None else int(n_lesions)
    placed = _place(image, gm, wm, brain, spacing, n, DIAMETER_MM[bool(small)], rng)
    with_lesions = image.copy()
    voxel_mm3 = float(np.prod(spacing))
    f = _factor(setting, spacing)
    described = []
    partial = np.zeros(shape, dtype=bool)
    for k, (centre, occ, box, par) in enumerate(placed, start=1):
        h = float(rng.uniform(*HETERO_RANGE))
        field_ = ndimage.gaussian_filter(rng.standard_normal(occ.shape), HETERO_SIGMA_MM / spacing)
        field_ /= float(field_.std()) or 1.0
        value = (level * (1.0 + h * field_)).astype(np.float32) + tex[box]
        part = occ > 0
        region = with_lesions[box]
        region[part] = (region * (1.0 - occ) + occ * value)[part]
        partial[box] |= part
        volume = float(occ.sum()) * voxel_mm3
        diameter = float((6.0 * volume / np.pi) ** (1 / 3))
        # the local tissue level, as classic.procedural measures it (shell 0.5 .. 0.5 + max(2, r/2) mm)
        d_out = ndimage.distance_transform_edt(occ < 0.5, sampling=spacing)
        shell = (d_out > 0.5) & (d_out <= 0.5 + max(2.0, diameter / 4.0)) & brain[box]
        local = float(np.median(image[box][shell])) if shell.any() else wm_level
        described.append(
            {
                "label": k,
                "centre_anatomy_index": [round(float(v), 3) for v in centre],
                "diameter_mm": round(diameter, 3),
                "semi_axes_mm": [round(float(v), 3) for v in par["axes"]],
                "irregularity": round(par["amp"], 4),
                "heterogeneity": round(h, 4),
                "c": round(c, 4),
                "level": round(level, 5),
                "local_level": round(local, 5),
                "ratio_to_local": round((level - local) / local, 4),
                "_occ": (occ, box),
            }
        )

    # -- the scan grid
    n_scan = shape[0] // f
    scan_shape = (n_scan,) + shape[1:]
    scan_affine = _scan_affine(affine, f)
    labels = np.zeros(scan_shape, dtype=np.uint8)
    occupancy = np.zeros(scan_shape, dtype=np.float32)
    for d in described:
        occ, box = d.pop("_occ")
        lo = box[0].start // f
        hi = min(n_scan, -(-box[0].stop // f))
        padded = np.zeros((hi * f - lo * f,) + occ.shape[1:], dtype=np.float32)
        keep = min(occ.shape[0], hi * f - box[0].start)  # slices past the last whole block are dropped
        padded[box[0].start - lo * f : box[0].start - lo * f + keep] = occ[:keep]
        s_occ = _to_scan(padded, f)
        sbox = (slice(lo, hi),) + box[1:]
        occupancy[sbox] = np.maximum(occupancy[sbox], s_occ)
        inside = s_occ >= 0.5
        if not inside.any():  # a lesion too small for 50%: its most occupied voxel
            inside = s_occ == s_occ.max()
        lab = labels[sbox]
        lab[inside & (lab == 0)] = d["label"]
        ca = np.asarray(d["centre_anatomy_index"], dtype=float)
        cs = ca.copy()
        cs[0] = (ca[0] + 0.5) / f - 0.5  # anatomy index -> scan index (block centre)
        d["centre_index"] = [round(float(v), 3) for v in cs]
        d["voxels"] = int((lab == d["label"]).sum())
        d["centre_world_mm"] = [round(float(v), 2) for v in (scan_affine[:3, :3] @ cs + scan_affine[:3, 3])]
    reach = ndimage.binary_dilation(partial, structure=np.ones((3, 3, 3), bool), iterations=_BLUR_REACH)
    support = _to_scan(reach.astype(np.float32), f) > 0

    # -- acquisition: the same bias, noise draw and scale for the scan and its twin
    head_s = _to_scan(head.astype(np.float32), f) > 0.5
    wm_s = _to_scan(wm, f)
    gm_s = _to_scan(gm, f)
    brain_s = _to_scan(brain.astype(np.float32), f) > 0.5
    bias, bias_amp = _bias_field(scan_shape, head_s, streams[_BIAS])
    blurred_wm = float(np.median(_to_scan(_blur(image), f)[wm_s > 0.9]))
    sigma = np.float32(streams[_NOISE].uniform(*NOISE_RANGE) * blurred_wm)
    scale = float(streams[_SCALE].uniform(*SCALE_RANGE))
    noise_seed = [seed, _NOISE, 1]
    scan = _acquire(with_lesions, f, bias, sigma, scale, np.random.default_rng(noise_seed))
    twin = _acquire(image, f, bias, sigma, scale, np.random.default_rng(noise_seed))
    rescan = _acquire(with_lesions, f, bias, sigma, scale, np.random.default_rng([seed, _RESCAN_STREAM]))

    meta = {
        "setting": setting,
        "contrast": contrast,
        "seed": seed,
        "small": bool(small),
        "generator": GENERATOR_VERSION,
        "geometry": geometry,
        "c": round(c, 4),
        "tissue_levels": {"gm": round(gm_level, 5), "wm": round(wm_level, 5), "lesion": round(level, 5)},
        "anatomy_spacing_mm": [float(s) for s in spacing],
        "slice_factor": f,
        "bias_max": round(bias_amp, 4),
        "noise_sigma_of_wm": round(float(sigma) / blurred_wm, 4),
        "intensity_scale": round(scale, 2),
        "wm_level": round(blurred_wm * scale, 2),
    }
    size = " 2mm" if small else ""
    vols = {
        key: Volume(
            arr.astype(np.float32, copy=False),
            scan_affine.copy(),
            name=f"lesion case {setting} {seed} {key}{size}",
            metadata={"lesion_case": meta},
        )
        for key, arr in (("scan", scan), ("twin", twin), ("rescan", rescan))
    }
    return LCase(
        setting=setting,
        seed=seed,
        scan=vols["scan"],
        twin=vols["twin"],
        rescan=vols["rescan"],
        labels=labels,
        occupancy=occupancy,
        support=support,
        brain=brain_s,
        gm=gm_s.astype(np.float32),
        wm=wm_s.astype(np.float32),
        lesions=described,
        meta=meta,
    )


# -- cache and the fixed split ---------------------------------------------------------------------
def _key(setting, seed, small, n_lesions) -> str:
    text = json.dumps(
        [
            GENERATOR_VERSION,
            setting,
            list(map(str, SETTINGS[setting])),
            int(seed),
            bool(small),
            n_lesions,
            N_LESIONS[bool(small)],
            list(DIAMETER_MM[bool(small)]),
            list(C_RANGE),
            list(HETERO_RANGE),
            HETERO_SIGMA_MM,
            list(IRREGULARITY),
            list(ASPECT),
            SUBVOXEL_MM,
            list(NOISE_RANGE),
            list(SCALE_RANGE),
        ],
        sort_keys=True,
    )
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _read(path: Path) -> LCase | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            affine = z["affine"]
            vols = {
                k: Volume(
                    z[k].astype(np.float32),
                    affine.copy(),
                    name=meta["names"][k],
                    metadata={"lesion_case": meta["meta"]},
                )
                for k in ("scan", "twin", "rescan")
            }
            return LCase(
                setting=meta["meta"]["setting"],
                seed=int(meta["meta"]["seed"]),
                scan=vols["scan"],
                twin=vols["twin"],
                rescan=vols["rescan"],
                labels=z["labels"],
                occupancy=z["occupancy"].astype(np.float32),
                support=z["support"],
                brain=z["brain"],
                gm=z["gm"].astype(np.float32),
                wm=z["wm"].astype(np.float32),
                lesions=meta["lesions"],
                meta=meta["meta"],
            )
    except (OSError, KeyError, ValueError, EOFError):
        return None


def load_or_make(
    setting: str,
    seed: int,
    small: bool = False,
    n_lesions: int | None = None,
    cache_dir: Path | str | None = CACHE_DIR,
) -> LCase:
    """:func:`make_case`, read from / written to ``cache_dir`` (None: no cache)."""
    if cache_dir is None:
        return make_case(setting, seed, small, n_lesions)
    cache_dir = Path(cache_dir)
    path = (
        cache_dir
        / f"{setting}_{'2mm' if small else '1mm'}_seed{seed}_{_key(setting, seed, small, n_lesions)}.npz"
    )
    if path.is_file():
        case = _read(path)
        if case is not None:
            return case
    case = make_case(setting, seed, small, n_lesions)
    cache_dir.mkdir(parents=True, exist_ok=True)
    arrays = {"scan": case.scan.data, "twin": case.twin.data, "rescan": case.rescan.data}
    for name, data in arrays.items():
        assert np.all(data == np.rint(data)) and data.max() < 32767 and data.min() >= 0, name
    meta = {
        "names": {k: getattr(case, k).name for k in arrays},
        "meta": case.meta,
        "lesions": case.lesions,
    }
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        affine=case.scan.affine,
        **{k: np.asarray(v).astype(np.int16) for k, v in arrays.items()},
        labels=case.labels,
        occupancy=case.occupancy.astype(np.float16),
        support=case.support,
        brain=case.brain,
        gm=case.gm.astype(np.float16),
        wm=case.wm.astype(np.float16),
        meta=np.array(json.dumps(meta)),
    )
    tmp.replace(path)
    return _read(path) or case


def benchmark_set(
    small: bool = False,
    settings: tuple[str, ...] | list[str] | None = None,
    cache_dir: Path | str | None = CACHE_DIR,
    seeds: dict[str, tuple[int, ...]] | None = None,
    n_lesions: int | None = None,
) -> dict[str, list[LCase]]:
    """setting -> its cases (two seeds each, :data:`SPLIT_SEEDS`)."""
    seeds = seeds or SPLIT_SEEDS
    return {
        s: [load_or_make(s, seed, small, n_lesions, cache_dir) for seed in seeds[s]]
        for s in (settings or tuple(SETTINGS))
    }

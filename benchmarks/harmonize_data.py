"""Harmonization test set: the same anatomy acquired at two sites, from the MNI152 template.

Nothing is downloaded (the template and its GM/WM maps are package data of nilearn, see
:mod:`benchmarks.anomaly_data`). A case (:func:`make_case`) is built in this order:

1. **Anatomy**, exactly as :func:`benchmarks.anomaly_data.make_subject` draws it for the same
   seed (the same random streams and helpers): the template pulled through a random affine
   plus a smooth displacement onto the case's own grid (the template's head grid, or a random
   crop of it), the brain and head masks, and a faint subject texture (2% of the WM level).
   From it: the noise-free "tissue T1" ``x`` (the template's T1 intensities) and a T2 image
   (:func:`benchmarks.anomaly_data._synth_t2`: CSF bright, GM medium, WM dark).
2. **Lesions** (test cases only), placed in the anatomy before any acquisition so both
   contrasts hold the same lesion: 3-6 per case, 4-20 mm across (juxtacortical: 4-12 mm), in
   white matter or at the GM/WM boundary, irregular borders and a one-voxel partial-volume
   edge (the placement of ``anomaly_data``). Each lesion replaces the tissue with one T1 and
   one T2 value, given relative to each contrast's own WM level (so the contrasts agree):

   * ``t1hypo_t2hyper`` (MS plaque / oedema): T1 0.55-0.75 x WM, T2 1.5-2.2 x WM;
   * ``t1hyper_t2hypo`` (e.g. haemorrhage, calcification): T1 1.15-1.35 x WM, T2 0.6-0.8 x WM;
   * ``t1iso_t2hyper``: T1 0.9-1.0 x WM (nearly invisible in T1), T2 1.6-2.0 x WM. No intensity
     mapping can show what the site-A T1 does not hold: reported as "not visible at site A".

   Ground truth: labels 1..K (voxels the lesion occupies by at least 50%) and the occupancy.
3. **Acquisition** at a site: a monotone intensity response applied to the tissue image, a
   Gaussian blur, the site's smooth bias field, Rician noise, a global intensity scale and
   rounding to integers (a scanner's int16). The sites (:data:`SITES`):

   * ``a`` (the scan to harmonize): T1, response ``u ** 1.05`` (``u`` = tissue T1 / 0.87, the
     template's WM level: near identity), blur FWHM 2 voxels through-plane (axis 0) and 1 voxel
     in-plane, bias +-18%, noise sigma 2-3% of WM, scale x200-2000.
   * ``t1b`` (another T1 scanner): response ``K tanh(u ** 0.6 / K)``, ``K = 1.2`` (a gamma 0.6
     with a soft knee: GM/WM 0.88 instead of 0.75, CSF/WM 0.55 instead of 0.29), blur FWHM one
     voxel, bias +-12%, noise 1.5-2.5% of WM, scale 1000 x 0.85-1.15 per scan.
   * ``t2`` (a T2-weighted site): the T2 image (linear response), blur FWHM one voxel, bias
     +-15%, noise 2-3% of WM, scale 1000 x 0.85-1.15 per scan.

   A site's bias field is fixed: one random cubic polynomial per site
   (:func:`benchmarks.anomaly_data._bias_field` on the template's grid, rescaled to the site's
   amplitude), so it depends on the position in the scanner, not on the scan's crop.

The **truth** of a test case for target ``t1b`` or ``t2`` is that site's noise-free image of
the same anatomy (its response, its bias field, its one-voxel blur; no noise, no rounding) on
the site-A scan's grid, in the site's units at one fixed scale: 1000 x the median of the five
references' per-scan factors (:func:`truth_scale`), the scale a harmonizer matching the
references' intensities should land on.

Everything is drawn from ``numpy.random.default_rng([seed, stream])`` streams, so a case is
fully determined by its seed; ``small=True`` builds it at 2 mm (block-averaged template).

:func:`benchmark_set`: references 100-104 (site-B acquisitions, grids cropped at random),
test 300-302 (with lesions), healthy 400 (no lesions), cached under
``benchmarks/out/harmonize_cache/``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from napari_medgen.volume import Volume

from .anomaly_data import (
    _BIAS,
    _CROP,
    _GEOMETRY,
    _LESION_LIST,
    _LESIONS,
    _NOISE,
    _SCALE,
    _TEXTURE,
    LesionSpec,
    _bias_field,
    _brain_and_head,
    _crop_box,
    _place_lesions,
    _synth_t2,
    _template,
    _warp,
)

__all__ = [
    "CACHE_DIR",
    "HKINDS",
    "SITES",
    "SPLIT_SEEDS",
    "TARGETS",
    "VISIBLE_KINDS",
    "Case",
    "HLesion",
    "benchmark_set",
    "harmonize_lesions",
    "load_or_make",
    "make_case",
    "truth_scale",
]

#: bump when the generator changes: cached cases of another version are not reused
GENERATOR_VERSION = "1"
CACHE_DIR = Path(__file__).with_name("out") / "harmonize_cache"
TARGETS = ("t1b", "t2")
HKINDS = ("t1hypo_t2hyper", "t1hyper_t2hypo", "t1iso_t2hyper")
#: kinds that the site-A T1 shows (t1iso_t2hyper is nearly invisible in T1)
VISIBLE_KINDS = ("t1hypo_t2hyper", "t1hyper_t2hypo")
#: (T1 factor range, T2 factor range) relative to each contrast's WM level
KIND_FACTORS = {
    "t1hypo_t2hyper": ((0.55, 0.75), (1.5, 2.2)),
    "t1hyper_t2hypo": ((1.15, 1.35), (0.6, 0.8)),
    "t1iso_t2hyper": ((0.9, 1.0), (1.6, 2.0)),
}
SPLIT_SEEDS = {"references": (100, 101, 102, 103, 104), "test": (300, 301, 302), "healthy": 400}
#: the template's WM intensity: the tissue T1 divided by this is ``u`` (WM ~ 1)
WM_REF = 0.87
#: the site-B intensity scale (per scan x 0.85-1.15); the truth uses 1000 x the references' median factor
SITE_B_SCALE = 1000.0
_KNEE = 1.2

SITES: dict[str, dict[str, Any]] = {
    "a": {
        "contrast": "t1",
        "response": "u ** 1.05",
        "fwhm_vox": (2.0, 1.0, 1.0),
        "bias_amp": 0.18,
        "bias_seed": 9101,
        "noise": (0.02, 0.03),
        "scale": (200.0, 2000.0),
    },
    "t1b": {
        "contrast": "t1",
        "response": f"{_KNEE} tanh(u ** 0.6 / {_KNEE})",
        "fwhm_vox": (1.0, 1.0, 1.0),
        "bias_amp": 0.12,
        "bias_seed": 9102,
        "noise": (0.015, 0.025),
        "scale": (0.85 * SITE_B_SCALE, 1.15 * SITE_B_SCALE),
    },
    "t2": {
        "contrast": "t2",
        "response": "linear",
        "fwhm_vox": (1.0, 1.0, 1.0),
        "bias_amp": 0.15,
        "bias_seed": 9103,
        "noise": (0.02, 0.03),
        "scale": (0.85 * SITE_B_SCALE, 1.15 * SITE_B_SCALE),
    },
}
_SITE_INDEX = {"a": 0, "t1b": 1, "t2": 2}


@dataclass(frozen=True)
class HLesion:
    """One lesion: its kind, size, location and its T1 / T2 values relative to each contrast's WM level."""

    kind: str
    diameter_mm: float
    location: str  # "wm" | "juxtacortical"
    t1_factor: float
    t2_factor: float

    def __post_init__(self) -> None:
        if self.kind not in HKINDS:
            raise ValueError(f"lesion kind must be one of {HKINDS}, got {self.kind!r}")


@dataclass
class Case:
    """The same anatomy at site A (the scan) and at the site-B targets, with its ground truth."""

    seed: int
    scan: Volume  # site-A T1 acquisition (integer-valued float32)
    site_b: dict[str, Volume]  # target -> that site's acquisition of the same anatomy (its own noise)
    truth: dict[str, np.ndarray]  # target -> noise-free site image on the scan's grid (empty for references)
    brain_mask: np.ndarray  # bool: parenchyma + ventricles
    gm: np.ndarray  # float32 tissue probabilities on the grid
    wm: np.ndarray
    lesion_labels: np.ndarray  # uint8: 0 background, k = lesions[k - 1]
    lesion_occupancy: np.ndarray  # float32 0..1 (partial-volume edge included)
    lesions: list[dict[str, Any]] = field(default_factory=list)
    truth_scales: dict[str, float] = field(default_factory=dict)


# -- sites ---------------------------------------------------------------------------------------
def _response(site: str, image: np.ndarray) -> np.ndarray:
    """The site's intensity response to the tissue image (T1: of ``u = x / WM_REF``; T2: linear)."""
    if site == "t2":
        return image.astype(np.float32, copy=True)
    u = np.maximum(image, 0.0, dtype=np.float32) / np.float32(WM_REF)
    if site == "a":
        return np.power(u, np.float32(1.05))
    return (np.float32(_KNEE) * np.tanh(np.power(u, np.float32(0.6)) / np.float32(_KNEE))).astype(np.float32)


@lru_cache(maxsize=8)
def _site_bias(site: str, small: bool) -> np.ndarray:
    """The site's bias field on the template's (head-cropped) grid: 1 +- its amplitude inside the head."""
    tpl = _template(bool(small))
    head = ndimage.binary_fill_holes(tpl["t1"] > 0.05)
    rng = np.random.default_rng([SITES[site]["bias_seed"], _BIAS])
    poly, amp = _bias_field(tpl["t1"].shape, head, rng)
    poly -= np.float32(1.0)
    poly *= np.float32(SITES[site]["bias_amp"] / amp)
    poly += np.float32(1.0)
    poly.setflags(write=False)
    return poly


def _scale_draws(seed: int) -> dict[str, float]:
    """Per-scan intensity scales of a seed: site A's, and each site-B target's."""
    rng = np.random.default_rng([int(seed), _SCALE])
    return {site: float(rng.uniform(*SITES[site]["scale"])) for site in ("a", "t1b", "t2")}


def truth_scale(target: str, reference_seeds: Sequence[int] = SPLIT_SEEDS["references"]) -> float:
    """The truth's fixed site-B scale: the median of the references' per-scan scales."""
    return float(np.median([_scale_draws(s)[target] for s in reference_seeds]))


def _blur(image: np.ndarray, fwhm_vox) -> np.ndarray:
    return ndimage.gaussian_filter(image, np.asarray(fwhm_vox, dtype=float) / 2.3548)


def _acquire(tissue: np.ndarray, site: str, bias: np.ndarray, wm: np.ndarray, seed: int, scale: float):
    """Response, blur, bias, Rician noise, scale and integer rounding; returns (image, description)."""
    spec = SITES[site]
    image = _blur(_response(site, tissue), spec["fwhm_vox"])
    wm_level = float(np.median(image[wm > 0.9]))
    image *= bias
    rng = np.random.default_rng([int(seed), _NOISE, _SITE_INDEX[site]])
    sigma = np.float32(rng.uniform(*spec["noise"]) * wm_level)
    n1 = rng.standard_normal(image.shape, dtype=np.float32)
    n1 *= sigma
    image += n1
    np.square(image, out=image)
    n1 = rng.standard_normal(image.shape, dtype=np.float32)
    n1 *= sigma
    np.square(n1, out=n1)
    image += n1
    np.sqrt(image, out=image)
    del n1
    image *= np.float32(scale)
    np.rint(image, out=image)
    return image, {
        "site": site,
        "response": spec["response"],
        "fwhm_vox": list(spec["fwhm_vox"]),
        "bias_max": spec["bias_amp"],
        "noise_sigma_of_wm": round(float(sigma) / wm_level, 4),
        "intensity_scale": round(float(scale), 2),
        "wm_level": round(wm_level * scale, 2),
    }


def _truth(tissue: np.ndarray, site: str, bias: np.ndarray, scale: float) -> np.ndarray:
    """The site's noise-free image: response, its one-voxel blur, bias and the fixed truth scale."""
    image = _blur(_response(site, tissue), SITES[site]["fwhm_vox"])
    image *= bias
    image *= np.float32(scale)
    return image.astype(np.float32, copy=False)


# -- lesions -------------------------------------------------------------------------------------
def harmonize_lesions(seed: int, n: int | None = None) -> list[HLesion]:
    """3-6 lesions (or ``n``), the kinds taken in turn (each at least once from 3 on), sizes and locations."""
    rng = np.random.default_rng([int(seed), _LESION_LIST, 1])
    n = int(rng.integers(3, 7)) if n is None else int(n)
    kinds = [HKINDS[i % 3] for i in range(n)]
    rng.shuffle(kinds)
    out = []
    for i, kind in enumerate(kinds):
        location = "juxtacortical" if i % 3 == 2 else "wm"
        top = 12.0 if location == "juxtacortical" else 20.0
        diameter = float(np.exp(rng.uniform(np.log(4.0), np.log(top))))
        (a1, b1), (a2, b2) = KIND_FACTORS[kind]
        out.append(
            HLesion(
                kind=kind,
                diameter_mm=round(diameter, 2),
                location=location,
                t1_factor=round(float(rng.uniform(a1, b1)), 4),
                t2_factor=round(float(rng.uniform(a2, b2)), 4),
            )
        )
    return out


def _lesion_maps(gm, wm, brain, lesions, spacing, affine, rng):
    """Occupancy (0..1), labels and the owner of every partly occupied voxel (1..K), with descriptions.

    The placement is ``anomaly_data._place_lesions`` on a zero image (each lesion added with
    strength 1 at WM level 1, so the image becomes the occupancy).
    """
    occupancy = np.zeros(gm.shape, dtype=np.float32)
    specs = [LesionSpec("hyper", les.diameter_mm, les.location, 1.0) for les in lesions]
    labels, described = _place_lesions(occupancy, gm, wm, brain, specs, 1.0, spacing, affine, rng)
    owner = np.zeros(gm.shape, dtype=np.uint8)
    support = occupancy > 0
    if labels.max() > 0:
        idx = [np.nonzero(support.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
        box = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)
        lab = labels[box]
        nearest = ndimage.distance_transform_edt(lab == 0, return_distances=False, return_indices=True)
        owned = lab[tuple(nearest)]
        owned[~support[box]] = 0
        owner[box] = owned
    for d, les in zip(described, lesions):
        d.update(asdict(les))
        d.pop("strength", None)
        d["visible_at_site_a"] = les.kind in VISIBLE_KINDS
    return occupancy, labels, owner, described


# -- a case -------------------------------------------------------------------------------------
def make_case(
    seed: int,
    lesions: Sequence[HLesion] | None = None,
    crop: Any = None,
    small: bool = False,
    with_truth: bool = True,
) -> Case:
    """The anatomy of ``seed`` (as anomaly_data draws it) acquired at site A and at each target site.

    ``lesions``: what to place (None or []: healthy). ``crop``: None, ``"random"`` or three
    (start, stop) pairs of the template's head grid. ``with_truth``: also the noise-free
    site-B images on this grid (test cases).
    """
    seed = int(seed)
    streams = {s: np.random.default_rng([seed, s]) for s in range(8)}
    tpl = _template(bool(small))
    spacing = np.linalg.norm(tpl["affine"][:3, :3], axis=0)
    box = _crop_box(crop, tpl["t1"].shape, streams[_CROP], spacing)
    full_shape = tpl["t1"].shape
    starts = [b.start or 0 for b in box]
    stops = [b.stop if b.stop is not None else n for b, n in zip(box, full_shape)]
    shape = tuple(int(b - a) for a, b in zip(starts, stops))
    affine = tpl["affine"].copy()
    affine[:3, 3] = tpl["affine"][:3, :3] @ np.asarray(starts, float) + tpl["affine"][:3, 3]
    sl = tuple(slice(a, b) for a, b in zip(starts, stops))

    x, gm, wm, geometry = _warp(tpl, shape, affine, streams[_GEOMETRY], 1.0)
    brain, head = _brain_and_head(gm, wm, x)
    t2 = _synth_t2(x, gm, wm, head, spacing)
    wm1 = float(np.median(x[wm > 0.9]))
    wm2 = float(np.median(t2[wm > 0.9]))
    # the faint subject texture, as anomaly_data draws it (2% of each contrast's WM level)
    tex = ndimage.gaussian_filter(streams[_TEXTURE].standard_normal(shape).astype(np.float32), 1.0 / spacing)
    tex /= np.float32(float(tex.std()) or 1.0)
    tex *= head
    x += tex * np.float32(0.02 * wm1)
    t2 += tex * np.float32(0.02 * wm2)

    occupancy, labels, owner, described = _lesion_maps(
        gm, wm, brain, list(lesions or []), spacing, affine, streams[_LESIONS]
    )
    if described:
        v1 = np.zeros(len(described) + 1, dtype=np.float32)
        v2 = np.zeros(len(described) + 1, dtype=np.float32)
        for d in described:
            v1[d["label"]] = d["t1_factor"] * wm1
            v2[d["label"]] = d["t2_factor"] * wm2
        # the lesion replaces the tissue (partial volume at its edge) and keeps the fine texture
        for image, values, level in ((x, v1, wm1), (t2, v2, wm2)):
            image *= 1.0 - occupancy
            image += occupancy * (values[owner] + tex * np.float32(0.02 * level))
        for d in described:
            d["t1_value_of_wm"] = d["t1_factor"]
            d["t2_value_of_wm"] = d["t2_factor"]
    del tex

    scales = _scale_draws(seed)
    tissue = {"a": x, "t1b": x, "t2": t2}
    acquired = {}
    meta_sites = {}
    for site in ("a",) + TARGETS:
        bias = _site_bias(site, bool(small))[sl]
        acquired[site], meta_sites[site] = _acquire(tissue[site], site, bias, wm, seed, scales[site])
    truth, tscales = {}, {}
    if with_truth:
        for target in TARGETS:
            tscales[target] = truth_scale(target)
            truth[target] = _truth(
                tissue[target], target, _site_bias(target, bool(small))[sl], tscales[target]
            )
    common = {
        "seed": seed,
        "small": bool(small),
        "geometry": geometry,
        "generator": GENERATOR_VERSION,
        "tissue_wm_level": {"t1": round(wm1, 4), "t2": round(wm2, 4)},
    }
    size = " 2mm" if small else ""
    scan = Volume(
        acquired["a"],
        affine,
        name=f"case {seed} site A T1{size}",
        metadata={"harmonize_case": {**common, **meta_sites["a"]}},
    )
    site_b = {
        t: Volume(
            acquired[t],
            affine.copy(),
            name=f"case {seed} site {t}{size}",
            metadata={"harmonize_case": {**common, **meta_sites[t]}},
        )
        for t in TARGETS
    }
    return Case(
        seed=seed,
        scan=scan,
        site_b=site_b,
        truth=truth,
        brain_mask=brain,
        gm=gm,
        wm=wm,
        lesion_labels=labels,
        lesion_occupancy=occupancy,
        lesions=described,
        truth_scales=tscales,
    )


# -- cache and the fixed split ---------------------------------------------------------------------
def _key(seed, lesions, crop, small, with_truth) -> str:
    text = json.dumps(
        [
            GENERATOR_VERSION,
            int(seed),
            [asdict(s) for s in (lesions or [])],
            crop if not isinstance(crop, (list, tuple)) else [list(c) for c in crop],
            bool(small),
            bool(with_truth),
            {
                k: {kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()}
                for k, v in SITES.items()
            },
        ],
        sort_keys=True,
    )
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _read(path: Path) -> Case | None:
    """A cached case, or None when the file is damaged."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            affine = z["affine"]
            scan = Volume(
                z["scan"].astype(np.float32), affine, name=meta["names"]["a"], metadata=meta["meta"]["a"]
            )
            site_b = {
                t: Volume(
                    z[f"site_{t}"].astype(np.float32),
                    affine.copy(),
                    name=meta["names"][t],
                    metadata=meta["meta"][t],
                )
                for t in TARGETS
            }
            return Case(
                seed=int(meta["seed"]),
                scan=scan,
                site_b=site_b,
                truth={t: z[f"truth_{t}"] for t in TARGETS if f"truth_{t}" in z.files},
                brain_mask=z["brain"],
                gm=z["gm"].astype(np.float32),
                wm=z["wm"].astype(np.float32),
                lesion_labels=z["labels"],
                lesion_occupancy=z["occupancy"].astype(np.float32),
                lesions=meta["lesions"],
                truth_scales=meta["truth_scales"],
            )
    except (OSError, KeyError, ValueError, EOFError):
        return None


def load_or_make(
    seed: int,
    lesions: Sequence[HLesion] | None = None,
    crop: Any = None,
    small: bool = False,
    with_truth: bool = True,
    cache_dir: Path | str | None = CACHE_DIR,
) -> Case:
    """:func:`make_case`, read from / written to ``cache_dir`` (None: no cache)."""
    if cache_dir is None:
        return make_case(seed, lesions, crop, small, with_truth)
    cache_dir = Path(cache_dir)
    key = _key(seed, lesions, crop, small, with_truth)
    path = cache_dir / f"{'2mm' if small else '1mm'}_seed{seed}_{key}.npz"
    if path.is_file():
        case = _read(path)
        if case is not None:
            return case
    case = make_case(seed, lesions, crop, small, with_truth)
    cache_dir.mkdir(parents=True, exist_ok=True)
    arrays = {"scan": case.scan.data, **{f"site_{t}": case.site_b[t].data for t in TARGETS}}
    for name, data in arrays.items():
        assert np.all(data == np.rint(data)) and data.max() < 32767 and data.min() >= 0, name
    meta = {
        "seed": case.seed,
        "names": {"a": case.scan.name, **{t: case.site_b[t].name for t in TARGETS}},
        "meta": {"a": case.scan.metadata, **{t: case.site_b[t].metadata for t in TARGETS}},
        "lesions": case.lesions,
        "truth_scales": case.truth_scales,
    }
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        affine=case.scan.affine,
        **{k: v.astype(np.int16) for k, v in arrays.items()},
        **{f"truth_{t}": v for t, v in case.truth.items()},
        brain=case.brain_mask,
        gm=case.gm.astype(np.float16),
        wm=case.wm.astype(np.float16),
        labels=case.lesion_labels,
        occupancy=case.lesion_occupancy.astype(np.float16),
        meta=np.array(json.dumps(meta)),
    )
    tmp.replace(path)
    # the case as it is read back (float16 maps), so a cached and a fresh run give the same numbers
    return _read(path) or case


def benchmark_set(small: bool = False, cache_dir: Path | str | None = CACHE_DIR) -> dict[str, Any]:
    """The fixed split.

    ``references``: target -> the 5 site-B acquisitions (seeds 100-104, grids cropped at random);
    ``test``: 3 cases with 3-6 lesions (seeds 300-302, the template's head grid); ``healthy``:
    one lesion-free case (seed 400); ``truth_scale``: target -> the truth's site-B scale.
    """
    refs = [
        load_or_make(s, None, "random", small, with_truth=False, cache_dir=cache_dir)
        for s in SPLIT_SEEDS["references"]
    ]
    return {
        "references": {t: [c.site_b[t] for c in refs] for t in TARGETS},
        "test": [
            load_or_make(s, harmonize_lesions(s), None, small, cache_dir=cache_dir)
            for s in SPLIT_SEEDS["test"]
        ],
        "healthy": load_or_make(SPLIT_SEEDS["healthy"], None, None, small, cache_dir=cache_dir),
        "truth_scale": {t: truth_scale(t) for t in TARGETS},
    }

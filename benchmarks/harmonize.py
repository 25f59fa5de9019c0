"""Harmonization: a site-A T1 mapped into a site-B contrast, scored against site B's noise-free image.

Data (:mod:`benchmarks.harmonize_data`): the same MNI152 pseudo-anatomy acquired at site A (T1:
near-identity response, +-18% bias, through-plane blur FWHM 2 voxels, 2-3% Rician noise, scale
x200-2000) and at a site-B target: ``t1b`` (another T1 scanner: gamma 0.6 with a soft knee,
its own +-12% bias field, blur FWHM 1 voxel, 1.5-2.5% noise) or ``t2`` (a T2-weighted site). 5
site-B references (seeds 100-104, other grids), 3 test cases with 3-6 lesions each (300-302)
and a healthy case (400). The truth is site B's noise-free image of the test case's anatomy on
the scan's grid, at one fixed site-B scale (the median of the references' scales).

Methods: ``identity`` (the scan as it is), any registered harmonization family as
``family_id[:preset]`` (``classic.histmatch``, ``classic.nyul``, ``medgen.harmonize_gan:fast``,
...) run through :func:`napari_medgen.runner.run_family` with ``Inputs(image=scan,
references=the 5 references)``, seed 0, its primary output taken as the result; and
``inorm.<method>``: the ``intensity-normalization`` package (PyPI, MIT) run in its own virtual
environment (``INORM_PYTHON``, default ``benchmarks/.venv-inorm/bin/python``; ``make
inorm-env``) on NIfTI files, never imported here (:data:`INORM_METHODS`).

Metrics per test case (and their mean), inside the ground-truth brain mask:

* PSNR and SSIM against the truth, data range = the truth's brain 99.5th percentile minus its
  brain minimum (a few bright voxels do not set the range; the output is not rescaled, so a
  method must land on the references' intensity scale).
* each lesion's contrast: mean over its core (its label eroded by one voxel; the label itself
  when that empties it) minus the mean over a shell of lesion-free brain 2-5 mm from it (at
  least 2 mm from every lesion), in the output and in the truth; ratio = output / truth; kept
  when ratio >= 0.5 (the sign right and at least half the contrast). ``t1iso_t2hyper`` lesions
  (not visible at site A) are counted apart.
* new structures: 26-connected regions of at least 20 mm3 in lesion-free brain (>= 3 mm from
  every lesion) where the band-passed error ``b(e) = |G1(e) - G3(e)|``, ``e = output - truth``,
  ``Gs`` a Gaussian of sigma s mm normalised inside the brain, exceeds 20% of the truth's GM-WM
  difference (medians over GM > 0.7 and WM > 0.9) plus half the truth's own ``b(truth)`` there.
  The 1 mm smoothing keeps voxel noise out (an output with 2% white noise and a 10% smooth bias
  counts 0 at 1 mm), the 3 mm one removes smooth (bias) errors, and the allowance keeps edges
  rendered with another blur or contrast out (without it Nyul counts ~200 regions on the
  healthy case, nearly all on tissue edges; kept in the JSON as ``strict_count``). Counted on
  the healthy case and on the test cases.
* wall time per scan and the peak resident memory above the level at the call's start.

    python -m benchmarks.harmonize [--targets t1b,t2] [--methods identity,classic.histmatch,...]
                                   [--small] [--time-budget S] [--write] [--report]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from napari_medgen import Inputs
from napari_medgen.masks import foreground_mask
from napari_medgen.volume import Volume

from .anomaly import RssPeak
from .common import family_registry, fmt, merge_json, psnr, size_tag, small_info, ssim, write_section
from .harmonize_data import HKINDS, SITES, TARGETS, VISIBLE_KINDS, Case, benchmark_set

__all__ = [
    "data_range",
    "evaluate_case",
    "lesion_contrasts",
    "main",
    "new_structures",
    "run_method",
]

OUT_DIR = Path(__file__).with_name("out")
JSON_PATH = OUT_DIR / "harmonize.json"
INORM_METHODS = ("nyul", "zscore", "whitestripe", "kde", "fcm")
#: methods of the package that map into the references' units for a T2 target (a monotone
#: histogram map); the others are one linear map of a T1 and cannot make a T2 contrast
INORM_FOR_T2 = ("nyul",)
DEFAULT_METHODS = (
    "identity,classic.histmatch,classic.nyul,"
    + ",".join(f"inorm.{m}" for m in INORM_METHODS)
    + ",medgen.harmonize_gan:fast"
)
KEEP_RATIO = 0.5
SHELL_MM = (2.0, 5.0)
NEW_EXCLUDE_MM = 3.0
NEW_SIGMA_MM = 3.0
#: the error is smoothed this much first, so voxel noise (which makes no structure) is not counted
NEW_SMOOTH_MM = 1.0
#: where the truth has structure, an error up to this fraction of it is not a new structure
NEW_TOLERANCE = 0.5
NEW_FRACTION = 0.2
NEW_MIN_MM3 = 20.0
TITLES = {"t1b": "Harmonization: another T1 scanner", "t2": "Harmonization: T1 to a T2-weighted site"}
_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


class _Skip(Exception):
    pass


# ---------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------
def _bbox(mask: np.ndarray, pad: int = 0) -> tuple[slice, ...]:
    idx = [np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
    return tuple(
        slice(max(0, int(i[0]) - pad), min(n, int(i[-1]) + 1 + pad)) for i, n in zip(idx, mask.shape)
    )


def data_range(truth: np.ndarray, brain: np.ndarray) -> float:
    """The truth's brain 99.5th percentile minus its brain minimum."""
    vals = np.asarray(truth)[brain]
    return float(np.percentile(vals, 99.5) - vals.min())


def _tissue_levels(truth, case: Case) -> tuple[float, float]:
    """(GM, WM) medians of the truth in lesion-free brain (GM > 0.7, WM > 0.9)."""
    free = case.brain_mask & (case.lesion_occupancy == 0)
    return float(np.median(truth[free & (case.gm > 0.7)])), float(np.median(truth[free & (case.wm > 0.9)]))


def lesion_contrasts(out: np.ndarray, truth: np.ndarray, case: Case) -> list[dict[str, Any]]:
    """Per lesion: core mean minus the 2-5 mm lesion-free shell mean, in the output and the truth."""
    spacing = np.asarray(case.scan.spacing, dtype=float)
    labels, occ, brain = case.lesion_labels, case.lesion_occupancy, case.brain_mask
    pad = np.ceil((SHELL_MM[1] + 3.0) / spacing).astype(int)
    wm_level = _tissue_levels(truth, case)[1]
    rows = []
    for lesion in case.lesions:
        k = int(lesion["label"])
        mask = labels == k
        if not mask.any():
            continue
        support = ndimage.binary_dilation(mask, iterations=2) & (occ > 0)  # lesion k's partial-volume edge
        box = tuple(
            slice(max(0, s.start - int(p)), min(n, s.stop + int(p)))
            for s, p, n in zip(_bbox(support), pad, mask.shape)
        )
        d_k = ndimage.distance_transform_edt(~support[box], sampling=spacing)
        d_any = ndimage.distance_transform_edt(occ[box] == 0, sampling=spacing)
        shell = brain[box] & (d_k >= SHELL_MM[0]) & (d_k <= SHELL_MM[1]) & (d_any >= SHELL_MM[0])
        m = mask[box]
        core = ndimage.binary_erosion(m)
        if not core.any():
            core = m
        o, t = out[box], truth[box]
        c_out = float(o[core].mean() - o[shell].mean())
        c_truth = float(t[core].mean() - t[shell].mean())
        ratio = c_out / c_truth if c_truth != 0 else float("nan")
        rows.append(
            {
                "label": k,
                "kind": lesion["kind"],
                "location": lesion["location"],
                "diameter_mm": lesion["diameter_mm"],
                "voxels": int(m.sum()),
                "core_voxels": int(core.sum()),
                "shell_voxels": int(shell.sum()),
                "visible_at_site_a": lesion["kind"] in VISIBLE_KINDS,
                "contrast_truth": c_truth,
                "contrast_truth_of_wm": c_truth / wm_level if wm_level else float("nan"),
                "contrast_out": c_out,
                "ratio": ratio,
                "kept": bool(np.isfinite(ratio) and ratio >= KEEP_RATIO),
            }
        )
    return rows


def _regions(above: np.ndarray, min_voxels: int, voxel_mm3: float) -> dict[str, Any]:
    comp, n = ndimage.label(above, structure=_CONNECTIVITY)
    sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
    kept = sizes[sizes >= min_voxels]
    return {
        "count": int(kept.size),
        "volume_mm3": float(kept.sum() * voxel_mm3),
        "largest_mm3": float(kept.max() * voxel_mm3) if kept.size else 0.0,
    }


def new_structures(out: np.ndarray, truth: np.ndarray, case: Case) -> dict[str, Any]:
    """Regions of lesion-free brain (>= 3 mm from lesions) where the output has structure the truth has not.

    ``b(.)`` = band-pass (Gaussian 1 mm minus Gaussian 3 mm, both normalised inside the brain).
    A voxel is flagged where ``|b(out - truth)| > thr + 0.5 |b(truth)|``, ``thr`` = 20% of the
    truth's GM-WM difference: what the truth does not have at all counts from ``thr``; where
    the truth has structure (an edge), an error up to half of that structure is a structure
    rendered differently (blur, contrast), not a new one. Regions: 26-connected, >= 20 mm3.
    ``strict_*``: the same without that allowance (``|b(out - truth)| > thr``).
    """
    spacing = np.asarray(case.scan.spacing, dtype=float)
    gm_level, wm_level = _tissue_levels(truth, case)
    thr = NEW_FRACTION * abs(gm_level - wm_level)
    box = _bbox(case.brain_mask, pad=int(np.ceil(2 * NEW_SIGMA_MM / spacing.min())))
    brain = case.brain_mask[box]
    occ = case.lesion_occupancy[box]
    if (case.lesion_occupancy > 0).any():
        region = brain & (ndimage.distance_transform_edt(occ == 0, sampling=spacing) >= NEW_EXCLUDE_MM)
    else:
        region = brain
    m = brain.astype(np.float32)
    norm = {
        s: np.maximum(ndimage.gaussian_filter(m, s / spacing), 1e-3) for s in (NEW_SMOOTH_MM, NEW_SIGMA_MM)
    }

    def band(x):  # Gaussians normalised inside the brain (the outside does not leak in)
        x = x * m
        lo, hi = (ndimage.gaussian_filter(x, s / spacing) / norm[s] for s in (NEW_SMOOTH_MM, NEW_SIGMA_MM))
        return np.abs(lo - hi)

    t = np.asarray(truth[box], np.float32)
    err = band(np.asarray(out[box], np.float32) - t)
    allowance = NEW_TOLERANCE * band(t)
    voxel_mm3 = float(np.prod(spacing))
    min_voxels = max(1, int(np.ceil(NEW_MIN_MM3 / voxel_mm3 - 1e-9)))
    flagged = (err > thr + allowance) & region
    strict = (err > thr) & region
    result = _regions(flagged, min_voxels, voxel_mm3)
    result.update({f"strict_{k}": v for k, v in _regions(strict, min_voxels, voxel_mm3).items()})
    result.update(
        {
            "threshold": float(thr),
            "flagged_fraction": float(flagged.sum() / max(1, int(region.sum()))),
            "strict_fraction": float(strict.sum() / max(1, int(region.sum()))),
        }
    )
    return result


def evaluate_case(out: np.ndarray, case: Case, target: str) -> dict[str, Any]:
    truth = case.truth[target]
    brain = case.brain_mask
    dr = data_range(truth, brain)
    box = _bbox(brain, pad=5)
    return {
        "seed": case.seed,
        "psnr": psnr(truth, out, brain, dr),
        "ssim": ssim(truth[box], np.asarray(out)[box], brain[box], dr),
        "data_range": dr,
        "lesions": lesion_contrasts(out, truth, case),
        "new_structures": new_structures(out, truth, case),
    }


# ---------------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------------
def _registered(
    family_id: str, preset: str | None, scan: Volume, refs, time_budget, extra: dict | None = None
) -> tuple[np.ndarray, dict]:
    from napari_medgen.runner import run_family

    entry = family_registry().get(family_id)
    names = {p.name for p in entry.family.params}
    params = {"preset": preset} if preset and "preset" in names else {}
    params.update({k: entry.family.param(k).parse(v) for k, v in (extra or {}).items()})
    result = run_family(
        entry.family,
        Inputs(image=scan, references=list(refs)),
        params,
        seed=0,
        time_budget=time_budget,
        overwrite=True,
    )
    data = np.asarray(result.primary.volume.data, dtype=np.float32)
    if data.shape != scan.shape:
        raise RuntimeError(f"{family_id}: output shape {data.shape} != scan shape {scan.shape}")
    return data, result.info


def _timed(fn):
    with RssPeak() as mem:
        t0 = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - t0
    return value, seconds, mem.peak - mem.start


#: run in intensity-normalization's own interpreter: fit on the references, then map each scan
#: into the references' units (normalise it, invert with the references' mean statistics)
INORM_SCRIPT = r'''
import json, resource, sys, time
import nibabel as nib
import numpy as np
import intensity_normalization as inorm
from intensity_normalization import (FCMNormalizer, KDENormalizer, Modality, NyulNormalizer, TissueType,
                                     WhiteStripeNormalizer, ZScoreNormalizer, create_image)
cfg = json.loads(sys.argv[1])
method = cfg["method"]
modality = {"t1": Modality.T1, "t2": Modality.T2}
def load(p):
    return create_image(p)
def stats(img, mask, mod):
    """(offset, unit): the normalised image is (x - offset) / unit."""
    if method == "zscore":
        n = ZScoreNormalizer().fit(img, mask); return n.mean, n.std
    if method == "whitestripe":
        n = WhiteStripeNormalizer(modality=modality[mod]).fit(img, mask); return n.mean, n.std
    if method == "kde":
        n = KDENormalizer(modality=modality[mod]).fit(img, mask); return 0.0, n.tissue_mode
    if method == "fcm":
        n = FCMNormalizer(tissue_type=TissueType.WM).fit(img, mask)
        return 0.0, float(np.average(img.get_data(), weights=n.tissue_membership))
    raise ValueError(method)
t0 = time.perf_counter()
refs = [load(p) for p in cfg["refs"]]
ref_masks = [load(p) for p in cfg["ref_masks"]]
details = {"version": inorm.__version__}
if method == "nyul":
    # the standard scale's ends = the references' mean 1st / 99th foreground percentiles (their units)
    lo = float(np.mean([np.percentile(r.get_data()[m.get_data() > 0], 1) for r, m in zip(refs, ref_masks)]))
    hi = float(np.mean([np.percentile(r.get_data()[m.get_data() > 0], 99) for r, m in zip(refs, ref_masks)]))
    model = NyulNormalizer(output_min_value=lo, output_max_value=hi).fit_population(refs, ref_masks)
    details["standard_scale"] = [round(float(v), 2) for v in model.standard_scale]
else:
    ref_stats = [stats(r, m, cfg["ref_modality"]) for r, m in zip(refs, ref_masks)]
    offset = float(np.mean([s[0] for s in ref_stats]))
    unit = float(np.mean([s[1] for s in ref_stats]))
    details["reference_offset_unit"] = [offset, unit]
ref_fit_s = time.perf_counter() - t0
del refs
scan_s, scan_stats = [], []
for item in cfg["scans"]:
    t1 = time.perf_counter()
    img, mask = load(item["in"]), load(item["mask"])
    if method == "nyul":
        out = model.transform(img, mask).get_data()
    else:
        o, u = stats(img, mask, "t1")
        out = (img.get_data() - o) / u * unit + offset
        scan_stats.append([float(o), float(u)])
    nib.save(nib.Nifti1Image(np.asarray(out, np.float32), img.affine, img.header), item["out"])
    scan_s.append(time.perf_counter() - t1)
details["scan_offset_unit"] = scan_stats
# VmHWM: this process's own peak (ru_maxrss would keep the forked parent's size across exec)
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
peak = float(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"ref_fit_s": ref_fit_s, "scan_s": scan_s, "maxrss_mb": peak, "details": details}))
'''


def inorm_python() -> str:
    return os.environ.get("INORM_PYTHON", str(Path(__file__).with_name(".venv-inorm") / "bin" / "python"))


def run_inorm(method: str, target: str, scans: Sequence[Volume], refs: Sequence[Volume]):
    """intensity-normalization's ``method`` in its own interpreter.

    Returns the outputs, seconds per scan, the process's peak MB, notes and details.

    Foreground masks: the automatic Otsu mask the classic families use
    (:func:`napari_medgen.masks.foreground_mask`), computed here and written beside the
    images; their time is added (references: to every scan, as a family recomputes them).
    """
    from napari_medgen.io.nifti import read_nifti, write_nifti

    python = inorm_python()
    if not Path(python).exists():
        raise _Skip(f"intensity-normalization's interpreter {python} is missing: run `make inorm-env`")
    if target == "t2" and method not in INORM_FOR_T2:
        raise _Skip("one linear map of a T1 cannot give a T2 contrast (run for the T1 target only)")
    with tempfile.TemporaryDirectory(prefix="inorm-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        cfg: dict[str, Any] = {
            "method": method,
            "refs": [],
            "ref_masks": [],
            "scans": [],
            "ref_modality": SITES[target]["contrast"],
        }
        for i, ref in enumerate(refs):
            fg = foreground_mask(ref.data, ref.spacing)
            cfg["refs"].append(str(write_nifti(ref, tmp / f"ref{i}.nii")))
            cfg["ref_masks"].append(
                str(write_nifti(ref.with_data(fg.astype(np.uint8)), tmp / f"ref{i}_mask.nii"))
            )
        ref_mask_s = time.perf_counter() - t0
        mask_s = []
        for i, scan in enumerate(scans):
            t1 = time.perf_counter()
            fg = foreground_mask(scan.data, scan.spacing)
            mask_s.append(time.perf_counter() - t1)
            cfg["scans"].append(
                {
                    "in": str(write_nifti(scan, tmp / f"scan{i}.nii")),
                    "mask": str(write_nifti(scan.with_data(fg.astype(np.uint8)), tmp / f"scan{i}_mask.nii")),
                    "out": str(tmp / f"out{i}.nii"),
                }
            )
        proc = subprocess.run(
            [python, "-c", INORM_SCRIPT, json.dumps(cfg)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
        )
        if proc.returncode != 0:
            raise RuntimeError(f"intensity-normalization failed: {proc.stderr.strip()[-800:]}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        outs = []
        for item, scan in zip(cfg["scans"], scans):
            data = np.asarray(read_nifti(item["out"]).data, dtype=np.float32)
            if data.shape != scan.shape:
                raise RuntimeError(f"inorm.{method}: output shape {data.shape} != scan shape {scan.shape}")
            outs.append(data)
    seconds = [s + m + report["ref_fit_s"] + ref_mask_s for s, m in zip(report["scan_s"], mask_s)]
    notes = [
        f"intensity-normalization {report['details'].get('version')}",
        f"fit on the references {report['ref_fit_s'] + ref_mask_s:.1f} s (in each scan's time)",
    ]
    return outs, seconds, report["maxrss_mb"], notes, report["details"]


def run_method(method: str, target: str, split: dict[str, Any], time_budget: float | None, log=print):
    """Every test case and the healthy one through ``method``: (outputs, seconds, extra MB, notes, info)."""
    cases = list(split["test"]) + [split["healthy"]]
    refs = split["references"][target]
    if method == "identity":
        outs, secs = [], []
        for case in cases:
            data, sec, _ = _timed(lambda case=case: np.asarray(case.scan.data, dtype=np.float32).copy())
            outs.append(data)
            secs.append(sec)
        return outs, secs, 0.0, ["the site-A scan as it is"], {}
    if method.startswith("inorm."):
        name = method.split(".", 1)[1]
        if name not in INORM_METHODS:
            raise _Skip(f"unknown intensity-normalization method {name!r} (here: {', '.join(INORM_METHODS)})")
        outs, secs, peak, notes, details = run_inorm(name, target, [c.scan for c in cases], refs)
        return outs, secs, peak, notes + ["peak RSS: the child process's whole peak"], details
    family_id, _, rest = method.partition(":")
    preset, _, overrides = rest.partition(":")  # family_id[:preset[:key=value;key=value]] (ablations)
    param_overrides = dict(kv.split("=", 1) for kv in overrides.split(";") if "=" in kv)
    registry = family_registry()
    if family_id not in registry:
        harm = ", ".join(e.id for e in registry.families("harmonize")) or "none"
        raise _Skip(f"no family {family_id!r} is registered (registered harmonization families: {harm})")
    entry = registry.get(family_id)
    notes = []
    if preset and "preset" not in {p.name for p in entry.family.params}:
        notes.append(f"no 'preset' parameter: defaults used instead of {preset!r}")
    outs, secs, extra, infos = [], [], 0.0, []
    for case in cases:
        (data, info), sec, mb = _timed(
            lambda case=case: _registered(family_id, preset or None, case.scan, refs, time_budget, param_overrides)
        )
        outs.append(data)
        secs.append(sec)
        extra = max(extra, mb)
        infos.append(small_info(info))
        log(f"  {method} on case {case.seed}: {sec:.1f} s")
    return outs, secs, extra, notes, {"info": infos}


# ---------------------------------------------------------------------------------------------------
# one method on one target
# ---------------------------------------------------------------------------------------------------
def evaluate(outs: Sequence[np.ndarray], split: dict[str, Any], target: str) -> dict[str, Any]:
    tests = split["test"]
    per = [evaluate_case(o, c, target) for o, c in zip(outs, tests)]
    healthy = split["healthy"]
    h = evaluate_case(outs[len(tests)], healthy, target)
    lesions = [les for p in per for les in p["lesions"]]
    visible = [les for les in lesions if les["visible_at_site_a"]]
    hidden = [les for les in lesions if not les["visible_at_site_a"]]
    by_kind = {
        k: [sum(les["kept"] for les in lesions if les["kind"] == k), sum(les["kind"] == k for les in lesions)]
        for k in HKINDS
    }
    return {
        "psnr": float(np.mean([p["psnr"] for p in per])),
        "ssim": float(np.mean([p["ssim"] for p in per])),
        "psnr_per_case": [p["psnr"] for p in per],
        "ssim_per_case": [p["ssim"] for p in per],
        "healthy_psnr": h["psnr"],
        "healthy_ssim": h["ssim"],
        "data_range": [p["data_range"] for p in per],
        "lesions_kept": int(sum(les["kept"] for les in visible)),
        "lesions_visible": len(visible),
        "lesions_min_ratio": float(min((les["ratio"] for les in visible), default=float("nan"))),
        "hidden_kept": int(sum(les["kept"] for les in hidden)),
        "hidden_total": len(hidden),
        "hidden_ratios": [les["ratio"] for les in hidden],
        "kept_by_kind": by_kind,
        "new_healthy": h["new_structures"],
        "new_test": {
            "count": int(sum(p["new_structures"]["count"] for p in per)),
            "volume_mm3": float(sum(p["new_structures"]["volume_mm3"] for p in per)),
        },
        "per_case": per,
    }


HEADER = [
    (
        "| method | PSNR brain (dB) | SSIM brain | PSNR per case | lesions kept (visible at site A) | "
        "min ratio | "
        "T1-iso lesions kept (not visible at site A) | new structures healthy: n (mm3) | "
        "new structures test: n (mm3) | per scan (s) | peak RSS +MB | notes |"
    ),
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
]


def table_row(method: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"| {method} | | | | | | | | | | | {r['error']} |"
    hidden = ", ".join(fmt(x) for x in r["hidden_ratios"])
    return (
        f"| {method} | {fmt(r['psnr'])} | {fmt(r['ssim'], '.3f')} | "
        f"{' / '.join(fmt(x, '.1f') for x in r['psnr_per_case'])} | "
        f"{r['lesions_kept']}/{r['lesions_visible']} | "
        f"{fmt(r['lesions_min_ratio'])} | {r['hidden_kept']}/{r['hidden_total']} (ratios {hidden}) | "
        f"{r['new_healthy']['count']} ({fmt(r['new_healthy']['volume_mm3'], '.0f')}) | "
        f"{r['new_test']['count']} ({fmt(r['new_test']['volume_mm3'], '.0f')}) | "
        f"{fmt(r['seconds_mean'], '.1f')} | {fmt(r['extra_rss_mb'], '.0f')} | {'; '.join(r['notes'])} |"
    )


def _merge_json(entries: dict[str, Any]) -> None:
    merge_json(JSON_PATH, entries)


def run(targets: Sequence[str], methods: Sequence[str], small: bool, time_budget: float | None, log=print):
    """Every method on every target; rows per target, and the JSON entries (merged into harmonize.json)."""
    from napari_medgen.engine.device import resolve_device

    resolve_device("auto")  # one-off torch import, kept out of the timings
    t0 = time.perf_counter()
    split = benchmark_set(small=small)
    n_les = sum(len(c.lesions) for c in split["test"])
    log(f"[{size_tag(small)}] data ready in {time.perf_counter() - t0:.1f} s ({n_les} test lesions)")
    rows: dict[str, list[str]] = {}
    entries: dict[str, Any] = {}
    for target in targets:
        rows[target] = list(HEADER)
        for method in methods:
            key = f"{target}/{size_tag(small)}/{method}"
            try:
                outs, secs, extra, notes, details = run_method(method, target, split, time_budget, log)
            except _Skip as why:
                log(f"[{key}] skipped: {why}")
                rows[target].append(f"| {method} | | | | | | | | | | | skipped: {why} |")
                continue
            except Exception as exc:  # noqa: BLE001 - one failing method does not stop the others
                log(f"[{key}] FAILED: {type(exc).__name__}: {exc}")
                result = {"error": f"failed: {type(exc).__name__}: {str(exc)[:300]}"}
            else:
                result = evaluate(outs, split, target)
                result.update(
                    {
                        "seconds": secs,
                        "seconds_mean": float(np.mean(secs)),
                        "extra_rss_mb": extra,
                        "notes": notes,
                        "details": details,
                    }
                )
            entries[key] = result
            rows[target].append(table_row(method, result))
            log(f"[{key}] {rows[target][-1]}")
    _merge_json(entries)
    return rows, entries


def stored_rows(targets, methods, small: bool) -> dict[str, list[str]]:
    """Table rows of the results kept in harmonize.json (missing ones are left out)."""
    data = json.loads(JSON_PATH.read_text()) if JSON_PATH.is_file() else {}
    rows = {}
    for target in targets:
        rows[target] = list(HEADER)
        for method in methods:
            result = data.get(f"{target}/{size_tag(small)}/{method}")
            if result is not None:
                rows[target].append(table_row(method, result))
    return rows


def _body(target: str, small: bool, rows: list[str]) -> str:
    site = SITES[target]
    what = (
        "another T1 scanner (`t1b`: response 1.2 tanh(u^0.6 / 1.2), u = tissue T1 / WM; its own +-12% bias "
        "field; blur FWHM 1 voxel; 1.5-2.5% noise)"
        if target == "t1b"
        else "a T2-weighted site (`t2`: the synthetic T2 of the tissue maps, CSF bright and WM dark; its own "
        "+-15% bias field; blur FWHM 1 voxel; 2-3% noise)"
    )
    return (
        f"MNI152 pseudo-anatomy at {'2 mm (--small)' if small else '1 mm'} (`benchmarks/harmonize_data.py`), "
        "drawn as the anomaly benchmark draws it. The scan: site A's T1 (response u^1.05, +-18% bias, "
        "through-plane blur FWHM 2 voxels, Rician noise 2-3% of WM, scale x200-2000, integers). The target: "
        f"{what}, scale 1000 x 0.85-1.15 per scan. References: 5 site-B scans of other anatomies (seeds "
        "100-104, grids cropped at random). Test: seeds 300-302 with 3-6 lesions each, placed before the "
        "acquisitions with one T1 and one T2 value relative to each contrast's WM level (t1hypo_t2hyper: T1 "
        "0.55-0.75, T2 1.5-2.2; t1hyper_t2hypo: T1 1.15-1.35, T2 0.6-0.8; t1iso_t2hyper: T1 0.9-1.0, T2 "
        "1.6-2.0, not visible at site A and counted apart); healthy: seed 400. Truth: site B's noise-free "
        "image of the same anatomy on the scan's grid at the references' median scale "
        f"(x{site['scale'][0] / 0.85:.0f} x their median factor). PSNR and SSIM inside the brain mask, "
        "mean of the 3 test cases, data range = the truth's brain 99.5th percentile minus its brain minimum "
        "(the output is not rescaled: a method must land on the references' scale). Lesion contrast = core "
        "mean minus the mean of lesion-free brain 2-5 mm around it; kept when output/truth >= 0.5. New "
        "structures: 26-connected regions >= 20 mm3 of lesion-free brain (>= 3 mm from lesions) where "
        "|G1(e) - G3(e)| (e = output - truth, Gs a Gaussian of sigma s mm inside the brain: voxel noise and "
        "smooth bias errors are not counted) exceeds 20% of the truth's GM-WM difference plus half of "
        "|G1 - G3| of the truth there (an edge drawn with another blur or contrast is not new; without that "
        "allowance, `strict_count` in the JSON, Nyul counts ~200 regions on the healthy case, nearly all on "
        "edges). "
        "Time: wall time per scan (healthy and test; intensity-normalization: its "
        "process, the masks and its fit on the references included); peak RSS +MB: resident memory above "
        "the call's start (intensity-normalization: its process's peak). inorm.* = the intensity-"
        "normalization package (3.0.1, its own venv, `make inorm-env`) with the same automatic Otsu "
        "foreground masks as the classic families: nyul = its Nyul fitted on the references with the "
        "standard scale's ends at their mean 1st/99th percentiles (their units); zscore / whitestripe / "
        "kde / fcm normalise the scan and invert with the references' mean statistics (mean and std; "
        "WhiteStripe mean and std; the KDE WM mode; the FCM WM mean), so the result is in the "
        "references' units. For the T2 target only its Nyul applies (one linear map cannot turn a T1 "
        "into a T2). Targets for the learned family (fast preset, CPU): another T1 scanner >= 2 dB above "
        "histogram matching; T2-weighted site >= 20 dB; every lesion visible at site A kept, no new "
        "structure in the healthy case; <= 10 minutes per scan.\n\n" + "\n".join(rows) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated: t1b, t2")
    parser.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help="comma-separated: identity, family_id[:preset[:key=value;key=value]], "
        "inorm.<nyul|zscore|whitestripe|kde|fcm>",
    )
    parser.add_argument(
        "--small", action="store_true", help="2 mm cases (about 8x fewer voxels), for quick runs"
    )
    parser.add_argument("--time-budget", type=float, default=None, help="seconds per run_family call")
    parser.add_argument("--write", action="store_true", help="write the sections to benchmarks/RESULTS.md")
    parser.add_argument(
        "--report",
        action="store_true",
        help="run nothing: render the rows stored in benchmarks/out/harmonize.json",
    )
    args = parser.parse_args(argv)
    argv_list = sys.argv[1:] if argv is None else list(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in targets:
        if t not in TARGETS:
            parser.error(f"unknown target {t!r} (targets: {', '.join(TARGETS)})")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.report:
        rows = stored_rows(targets, methods, args.small)
    else:
        rows, _ = run(targets, methods, args.small, args.time_budget)
    for t in targets:
        print(f"\n{TITLES[t]}\n" + "\n".join(rows[t]))
    if args.write:
        command = "python -m benchmarks.harmonize " + " ".join(argv_list)
        for t in targets:
            title = TITLES[t] + (" (2 mm, --small)" if args.small else "")
            write_section(title, command, _body(t, args.small, rows[t]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

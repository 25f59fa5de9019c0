"""Anomaly detection: learned normative families against three baselines on MNI152 pseudo-subjects.

Data (:mod:`benchmarks.anomaly_data`): 5 healthy references (seeds 100-104), 1 validation
subject with lesions (200: fixes each method's threshold, the one maximising Dice), 3 test
subjects with 6-10 lesions each (300-302) and 1 healthy subject (400: false positives).
Every metric is computed inside the ground-truth brain mask (parenchyma + ventricles).

Methods, each a score map on the scan's grid:

* any registered anomaly family (``medgen.vae_anomaly``, ``medgen.ddpm_anomaly``,
  ``classic.outlier``, ...) run through :func:`napari_medgen.runner.run_family`; its output
  "heatmap" is the score. Mode ``references``: the 5 references as ``Inputs.references``; a
  family with the parameters ``save_model`` and ``model_file`` is trained once (on the
  validation run, ``save_model``) and the saved model is reused on the test and healthy
  subjects (``model_file``); other families run with the references on every subject. Mode
  ``per-scan``: no references, the family trains on each scan itself.
* ``refz``: voxel z-score against the references registered to the scan (SimpleITK affine,
  Mattes MI, :func:`register_affine`), each scan divided by its median foreground intensity:
  ``|scan - mean(refs)| / max(std(refs), median std)``. References mode only.
* ``plain``: plain thresholding (Meissen et al. 2021): ``|I - median| / (1.4826 MAD)`` over
  the scan's estimated foreground. It uses no references (its rows are the same in both modes).

Metrics (pooled over the 3 test subjects' brain voxels): voxel AUROC, AUPRC (average
precision), best Dice over one threshold for the whole set (and that threshold), Dice at the
validation threshold, the fraction of the healthy subject's brain voxels at or above that
threshold, and lesions found at <= 3 false-positive regions per scan (FROC point: one threshold
for all test scans; regions are 26-connected components of ``score >= t`` inside the brain, at
least ``MIN_REGION_MM3``; a region hits a lesion it overlaps when at least 10% of its voxels are
lesion voxels, otherwise it is a false positive).

    python -m benchmarks.anomaly [--contrasts t1 t2] [--families ...] [--modes references per-scan]
                                 [--small] [--time-budget S] [--preset fast] [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

from napari_medgen import Inputs
from napari_medgen.masks import foreground_mask
from napari_medgen.volume import Volume

from .anomaly_data import KINDS, LOCATIONS, Subject, benchmark_set
from .common import family_registry, fmt, merge_json, write_section

__all__ = [
    "auroc",
    "average_precision",
    "best_dice",
    "dice_at",
    "fp_fraction",
    "lesion_detection",
    "register_affine",
    "refz_score",
    "plain_score",
    "outlier_score",
    "main",
]

OUT_DIR = Path(__file__).with_name("out")
JSON_PATH = OUT_DIR / "anomaly.json"
MODEL_DIR = OUT_DIR / "anomaly_models"
LEARNED = ("medgen.vae_anomaly", "medgen.ddpm_anomaly")
BASELINES = ("classic.outlier", "refz", "plain")
MODES = ("references", "per-scan")
MAX_FP_PER_SCAN = 3.0
MIN_REGION_MM3 = 10.0
#: a region counts as a hit only if at least this fraction of its voxels are lesion voxels
MIN_REGION_PRECISION = 0.1
_MAD_TO_SIGMA = 1.4826
_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
LIMITS_PLACEHOLDER = "_What limits: to be written by the lead from these numbers._"


# ---------------------------------------------------------------------------------------------------
# voxel metrics
# ---------------------------------------------------------------------------------------------------
def _pool(score, truth, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels inside the mask(s), as flat float64 / bool arrays; lists are pooled."""
    if isinstance(score, (list, tuple)):
        masks = mask if isinstance(mask, (list, tuple)) else [mask] * len(score)
        parts = [_pool(s, t, m) for s, t, m in zip(score, truth, masks)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    s = np.asarray(score, dtype=np.float64)
    t = np.asarray(truth, dtype=bool)
    if s.shape != t.shape:
        raise ValueError(f"score shape {s.shape} != truth shape {t.shape}")
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        return s[m], t[m]
    return s.ravel(), t.ravel()


def auroc(score, truth, mask=None) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN without both classes."""
    s, t = _pool(score, truth, mask)
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _curve(s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At each distinct score (descending): threshold, true positives and predicted count of ``s >= thr``."""
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    tp = np.cumsum(t[order], dtype=np.int64)
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]  # last index of each tie group
    return s_sorted[last], tp[last], last + 1


def average_precision(score, truth, mask=None) -> float:
    """Average precision (area under the precision-recall curve, step-wise, as scikit-learn)."""
    s, t = _pool(score, truth, mask)
    n_pos = int(t.sum())
    if n_pos == 0:
        return float("nan")
    _, tp, npred = _curve(s, t)
    precision = tp / npred
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_dice(score, truth, mask=None) -> tuple[float, float]:
    """The highest Dice of ``score >= thr`` over every threshold, and that threshold."""
    s, t = _pool(score, truth, mask)
    n_pos = int(t.sum())
    if n_pos == 0 or s.size == 0:
        return float("nan"), float("nan")
    thr, tp, npred = _curve(s, t)
    dice = 2.0 * tp / (npred + n_pos)
    k = int(np.argmax(dice))
    return float(dice[k]), float(thr[k])


def dice_at(score, truth, mask=None, threshold: float = 0.5) -> float:
    """Dice of ``score >= threshold`` against the truth (1.0 when both are empty)."""
    s, t = _pool(score, truth, mask)
    pred = s >= threshold
    denom = int(pred.sum()) + int(t.sum())
    return 1.0 if denom == 0 else float(2.0 * np.sum(pred & t) / denom)


def fp_fraction(score, mask=None, threshold: float = 0.5) -> float:
    """Fraction of the (lesion-free) mask's voxels with ``score >= threshold``."""
    s = np.asarray(score, dtype=np.float64)
    s = s[np.asarray(mask, dtype=bool)] if mask is not None else s.ravel()
    return float(np.mean(s >= threshold)) if s.size else float("nan")


# ---------------------------------------------------------------------------------------------------
# lesion-level detection (one FROC point)
# ---------------------------------------------------------------------------------------------------
def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    idx = [
        np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))[0] for ax in range(mask.ndim)
    ]
    return tuple(slice(int(i[0]), int(i[-1]) + 1) if i.size else slice(0, 0) for i in idx)


def _regions_at(score, brain, labels, thr, min_voxels, n_lesions) -> tuple[np.ndarray, int]:
    """(found flag per lesion 1..n, number of false-positive regions) of ``score >= thr`` in the brain."""
    comp, n = ndimage.label((score >= thr) & brain, structure=_CONNECTIVITY)
    found = np.zeros(n_lesions + 1, dtype=bool)
    if n == 0:
        return found[1:], 0
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    in_lesion = labels > 0
    comp_l = comp[in_lesion]
    lesion_voxels = np.bincount(comp_l, minlength=n + 1)
    kept = sizes >= min_voxels
    kept[0] = False
    hits = kept & (lesion_voxels >= MIN_REGION_PRECISION * sizes) & (lesion_voxels > 0)
    n_fp = int(np.sum(kept & ~hits))
    pairs = comp_l > 0
    hit_lesions = labels[in_lesion][pairs][hits[comp_l[pairs]]]
    found[np.unique(hit_lesions)] = True
    return found[1:], n_fp


def lesion_detection(
    scores: Sequence[np.ndarray],
    lesion_labels: Sequence[np.ndarray],
    brains: Sequence[np.ndarray],
    voxel_mm3: float = 1.0,
    max_fp_per_scan: float = MAX_FP_PER_SCAN,
    min_region_mm3: float = MIN_REGION_MM3,
    n_thresholds: int = 48,
) -> dict[str, Any]:
    """Lesions found at one threshold shared by all scans, at most ``max_fp_per_scan`` FP regions per scan.

    Thresholds tried: each lesion's peak score and the pooled brain scores' quantiles leaving
    1e-6 .. 0.2 of the voxels above. Of those meeting the FP limit, the one finding most lesions
    (then: the highest) is the operating point. Returns ``found_fraction``, ``threshold``,
    ``fp_per_scan``, ``found`` (one list of booleans per scan, lesion 1..n order) and ``n_lesions``.
    """
    boxes = [_bbox(b) for b in brains]
    crops = [
        (np.asarray(s)[bx], np.asarray(b, bool)[bx], np.asarray(lab)[bx])
        for s, b, lab, bx in zip(scores, brains, lesion_labels, boxes)
    ]
    counts = [int(np.asarray(lab).max()) for lab in lesion_labels]
    total = sum(counts)
    min_voxels = max(1, int(np.ceil(min_region_mm3 / voxel_mm3 - 1e-9)))
    pooled = np.concatenate([s[b] for s, b, _ in crops]).astype(np.float64)
    tops = 1.0 - np.logspace(-6, np.log10(0.2), n_thresholds)[::-1]
    cands = list(np.quantile(pooled, np.clip(tops, 0, 1)))
    for s, b, lab in crops:
        if lab.max() > 0:
            peaks = ndimage.maximum(s, labels=np.where(b, lab, 0), index=np.arange(1, lab.max() + 1))
            cands += [float(p) for p in np.atleast_1d(peaks)]
    cands = sorted({float(c) for c in cands if np.isfinite(c)}, reverse=True)
    best = None
    for thr in cands:
        found, n_fp = [], 0
        for (s, b, lab), n in zip(crops, counts):
            f, fp = _regions_at(s, b, lab, thr, min_voxels, n)
            found.append(f)
            n_fp += fp
        n_found = int(sum(int(f.sum()) for f in found))
        fp_per_scan = n_fp / max(1, len(crops))
        if fp_per_scan <= max_fp_per_scan and (best is None or n_found > best[0]):
            best = (n_found, thr, fp_per_scan, found)
    if best is None:  # no threshold meets the limit: nothing found
        return {
            "found_fraction": 0.0,
            "n_found": 0,
            "n_lesions": total,
            "threshold": None,
            "fp_per_scan": None,
            "found": [[False] * n for n in counts],
        }
    n_found, thr, fp_per_scan, found = best
    return {
        "found_fraction": n_found / total if total else float("nan"),
        "n_found": n_found,
        "n_lesions": total,
        "threshold": thr,
        "fp_per_scan": fp_per_scan,
        "found": [f.tolist() for f in found],
    }


# ---------------------------------------------------------------------------------------------------
# registration and baselines
# ---------------------------------------------------------------------------------------------------
def register_affine(fixed: Volume, moving: Volume, seed: int = 0) -> np.ndarray:
    """``moving`` registered to ``fixed`` and resampled onto its grid (0 where it does not reach).

    The same SimpleITK registration the normative families use
    (:func:`napari_medgen.registration.register`), so the baseline and the families see
    equally well aligned references.
    """
    from napari_medgen.registration import register

    return register(fixed, moving, kind="affine", seed=seed).data


def _normalised(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """(intensity / median foreground intensity, estimated foreground)."""
    data = np.asarray(volume.data, dtype=np.float32)
    fg = foreground_mask(data, volume.spacing)
    level = float(np.median(data[fg])) or 1.0
    return data / np.float32(level), fg


def refz_score(scan: Volume, refs: Sequence[Volume]) -> np.ndarray:
    """``|scan - mean(refs)| / max(std(refs), median std)`` after affine registration; 0 outside the foreground.

    Each volume is divided by its median foreground intensity (each reference's own foreground,
    estimated before registration), then each reference is registered to the scan
    (:func:`register_affine`). The std floor is the median of the per-voxel std over the scan's foreground.
    """
    if len(refs) < 2:
        raise ValueError("the reference z-score needs at least 2 references")
    x, fg = _normalised(scan)
    stack = np.empty((len(refs),) + x.shape, dtype=np.float32)
    for i, ref in enumerate(refs):
        ref_n, _ = _normalised(ref)
        stack[i] = register_affine(scan, ref.with_data(ref_n))
    mean = stack.mean(axis=0)
    std = stack.std(axis=0, ddof=1)
    del stack
    floor = float(np.median(std[fg])) or 1e-6
    score = np.abs(x - mean) / np.maximum(std, np.float32(floor))
    score[~fg] = 0.0
    return score.astype(np.float32)


def plain_score(scan: Volume, refs: Sequence[Volume] = ()) -> np.ndarray:
    """Plain thresholding: ``|I - median| / (1.4826 MAD)`` over the estimated foreground; 0 outside."""
    data = np.asarray(scan.data, dtype=np.float32)
    fg = foreground_mask(data, scan.spacing)
    vals = data[fg].astype(np.float64)
    med = float(np.median(vals))
    mad = float(np.median(np.abs(vals - med))) * _MAD_TO_SIGMA or float(vals.std()) or 1.0
    score = np.abs(data - np.float32(med)) / np.float32(mad)
    score[~fg] = 0.0
    return score


def run_registered(
    family_id: str,
    scan: Volume,
    refs: Sequence[Volume] = (),
    params: dict | None = None,
    time_budget: float | None = None,
) -> tuple[np.ndarray, dict]:
    """A registered family through run_family; its "heatmap" output (else its first) and its info."""
    from napari_medgen.runner import run_family

    entry = family_registry().get(family_id)
    result = run_family(
        entry.family,
        Inputs(image=scan, references=list(refs)),
        params or {},
        seed=0,
        time_budget=time_budget,
        overwrite=True,
    )
    outs = {o.name: o for o in result.outputs}
    out = outs.get("heatmap") or result.primary
    data = np.asarray(out.volume.data, dtype=np.float32)
    if data.shape != scan.shape:
        raise RuntimeError(f"{family_id}: heatmap shape {data.shape} != scan shape {scan.shape}")
    return data, result.info


def outlier_score(scan: Volume, refs: Sequence[Volume] = ()) -> np.ndarray:
    """``classic.outlier``'s heatmap (its defaults), with the references when given."""
    return run_registered("classic.outlier", scan, refs)[0]


# ---------------------------------------------------------------------------------------------------
# measuring a run
# ---------------------------------------------------------------------------------------------------
def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class RssPeak:
    """Peak resident memory of this process while the block runs (sampled every 50 ms)."""

    def __enter__(self):
        self.start = _rss_mb()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())
        return False


@dataclass
class MethodRun:
    """Score maps of one method x mode on the split, with times and memory."""

    scores: dict[str, np.ndarray] = field(default_factory=dict)  # "validation", "test0".., "healthy"
    train_s: float | None = None
    apply_s: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    extra_rss_mb: float = 0.0
    notes: list[str] = field(default_factory=list)


def _timed_call(run: MethodRun, fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    with RssPeak() as mem:
        t0 = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - t0
    run.peak_rss_mb = max(run.peak_rss_mb, mem.peak)
    run.extra_rss_mb = max(run.extra_rss_mb, mem.peak - mem.start)
    return value, seconds


def _scans(split: dict[str, Any]) -> list[tuple[str, Subject]]:
    return (
        [("validation", split["validation"])]
        + [(f"test{i}", s) for i, s in enumerate(split["test"])]
        + [("healthy", split["healthy"])]
    )


def run_method(
    method: str,
    mode: str,
    split: dict[str, Any],
    contrast: str,
    small: bool,
    preset: str | None,
    time_budget: float | None,
) -> MethodRun:
    """Score every validation/test/healthy scan with ``method`` in ``mode``."""
    refs = [s.volume for s in split["references"]] if mode == "references" else []
    run = MethodRun()
    scans = _scans(split)
    if method == "plain":
        for key, subj in scans:
            run.scores[key], sec = _timed_call(run, lambda subj=subj: plain_score(subj.volume))
            run.apply_s.append(sec)
        run.notes.append("uses no references")
        return run
    if method == "refz":
        if mode != "references":
            raise _Skip("needs references")
        for key, subj in scans:
            run.scores[key], sec = _timed_call(run, lambda subj=subj: refz_score(subj.volume, refs))
            run.apply_s.append(sec)
        run.notes.append("affine registration of 5 references per scan (included in the time)")
        return run
    # a registered family
    entry = family_registry().get(method)
    names = {p.name: p for p in entry.family.params}
    params: dict[str, Any] = {}
    if preset and "preset" in names:
        params["preset"] = preset
    reuse = mode == "references" and "save_model" in names and "model_file" in names
    model_path = None
    if reuse:
        suffixes = names["save_model"].suffixes
        MODEL_DIR.mkdir(parents=True, exist_ok=True)
        model_path = (
            MODEL_DIR
            / f"{method}_{contrast}_{'2mm' if small else '1mm'}{suffixes[0] if suffixes else '.safetensors'}"
        )
    for key, subj in scans:
        p = dict(params)
        call_refs = refs
        if reuse:
            p.update(
                {"save_model": str(model_path)} if key == "validation" else {"model_file": str(model_path)}
            )
            call_refs = (
                refs if key == "validation" else []
            )  # the saved model is applied alone, as in the clinic
        (heat, info), sec = _timed_call(
            run,
            lambda subj=subj, call_refs=call_refs, p=p: run_registered(
                method, subj.volume, call_refs, p, time_budget
            ),
        )
        run.scores[key] = heat
        if reuse and key == "validation":
            run.train_s = sec
            steps = (info.get("training") or {}).get("steps")
            if steps:
                run.notes.append(f"{steps} training steps")
        else:
            run.apply_s.append(sec)
    if reuse:
        run.notes.append("trained once on the references (validation run), saved model reused")
    elif mode == "references" and method in LEARNED:
        run.notes.append("no save_model/model_file: trained on every scan")
    return run


class _Skip(Exception):
    pass


# ---------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------
def evaluate(run: MethodRun, split: dict[str, Any]) -> dict[str, Any]:
    val = split["validation"]
    tests = split["test"]
    healthy = split["healthy"]
    t_scores = [run.scores[f"test{i}"] for i in range(len(tests))]
    t_truth = [s.lesion_mask for s in tests]
    t_brain = [s.brain_mask for s in tests]
    val_dice, val_thr = best_dice(run.scores["validation"], val.lesion_mask, val.brain_mask)
    bd, bd_thr = best_dice(t_scores, t_truth, t_brain)
    voxel_mm3 = float(np.prod(tests[0].volume.spacing))
    det = lesion_detection(t_scores, [s.lesion_labels for s in tests], t_brain, voxel_mm3=voxel_mm3)
    by_kind: dict[str, list[int]] = {k: [0, 0] for k in KINDS + LOCATIONS}
    for subj, flags in zip(tests, det["found"]):
        for lesion, hit in zip(subj.lesions, flags):
            for key in (lesion["kind"], lesion["location"]):
                by_kind[key][0] += int(hit)
                by_kind[key][1] += 1
    per_subject = [
        {
            "auroc": auroc(s, t, b),
            "auprc": average_precision(s, t, b),
            "best_dice": best_dice(s, t, b)[0],
            "dice_at_val_threshold": dice_at(s, t, b, val_thr),
        }
        for s, t, b in zip(t_scores, t_truth, t_brain)
    ]
    healthy_score = run.scores["healthy"]
    return {
        "auroc": auroc(t_scores, t_truth, t_brain),
        "auprc": average_precision(t_scores, t_truth, t_brain),
        "prevalence": float(
            sum(int((t & b).sum()) for t, b in zip(t_truth, t_brain)) / sum(int(b.sum()) for b in t_brain)
        ),
        "best_dice": bd,
        "best_dice_threshold": bd_thr,
        "validation_threshold": val_thr,
        "validation_dice": val_dice,
        "dice_at_val_threshold": dice_at(t_scores, t_truth, t_brain, val_thr),
        "healthy_fp_fraction": fp_fraction(healthy_score, healthy.brain_mask, val_thr),
        "lesions_found": det["found_fraction"],
        "lesions_n_found": det["n_found"],
        "lesions_total": det["n_lesions"],
        "detection_threshold": det["threshold"],
        "detection_fp_per_scan": det["fp_per_scan"],
        "found_by_kind": by_kind,
        "found_per_lesion": det["found"],
        "per_subject": per_subject,
        "train_s": run.train_s,
        "apply_s_mean": float(np.mean(run.apply_s)) if run.apply_s else None,
        "apply_s": run.apply_s,
        "peak_rss_mb": run.peak_rss_mb,
        "extra_rss_mb": run.extra_rss_mb,
        "notes": run.notes,
    }


def _fmt(v, spec=".3f", none="-"):  # this table's cells default to 3 decimals
    return fmt(v, spec, none)


TABLE_HEADER = [
    "| contrast | method | mode | AUROC | AUPRC | best Dice (thr) | Dice @ val thr | FP % healthy @ val thr | "
    "lesions found @ <=3 FP/scan | train (s) | per scan (s) | peak RSS +MB | notes |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]
KIND_HEADER = [
    "| contrast | method | mode | " + " | ".join(KINDS + LOCATIONS) + " |",
    "|---|---|---|" + "---|" * (len(KINDS) + len(LOCATIONS)),
]


def table_row(contrast: str, method: str, mode: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"| {contrast} | {method} | {mode} | | | | | | | | | | {r['error']} |"
    return (
        f"| {contrast} | {method} | {mode} | {_fmt(r['auroc'])} | {_fmt(r['auprc'])} | "
        f"{_fmt(r['best_dice'])} ({_fmt(r['best_dice_threshold'], '.3g')}) | {_fmt(r['dice_at_val_threshold'])} "
        f"(thr {_fmt(r['validation_threshold'], '.3g')}) | {_fmt(100 * r['healthy_fp_fraction'], '.3f')} | "
        f"{r['lesions_n_found']}/{r['lesions_total']} ({_fmt(r['detection_fp_per_scan'], '.1f')} FP/scan) | "
        f"{_fmt(r['train_s'], '.0f')} | {_fmt(r['apply_s_mean'], '.0f')} | {_fmt(r['extra_rss_mb'], '.0f')} | "
        f"{'; '.join(r['notes'])} |"
    )


def kind_row(contrast: str, method: str, mode: str, r: dict[str, Any]) -> str | None:
    if "error" in r:
        return None
    cells = [f"{r['found_by_kind'][k][0]}/{r['found_by_kind'][k][1]}" for k in KINDS + LOCATIONS]
    return f"| {contrast} | {method} | {mode} | " + " | ".join(cells) + " |"


def _merge_json(entries: dict[str, Any]) -> None:
    merge_json(JSON_PATH, entries)


def run(
    contrasts: Sequence[str],
    families: Sequence[str],
    modes: Sequence[str],
    small: bool,
    time_budget: float | None,
    preset: str | None,
    shape_scale: float = 1.0,
    log=print,
) -> tuple[list[str], list[str], dict[str, Any]]:
    from napari_medgen.engine.device import resolve_device

    resolve_device("auto")  # one-off torch import, kept out of the timings
    registry = family_registry()
    methods = []
    for fid in families:
        if fid in ("refz", "plain") or fid in registry:
            methods.append(fid)
        else:
            log(
                f"skipping {fid}: no family with this id is registered (registered anomaly families: "
                f"{', '.join(e.id for e in registry.families('anomaly')) or 'none'}; baselines here: refz, plain)"
            )
    rows, kinds, entries = list(TABLE_HEADER), list(KIND_HEADER), {}
    size = ("2mm" if small else "1mm") + (f"-shape{shape_scale:g}" if shape_scale != 1.0 else "")
    for contrast in contrasts:
        t0 = time.perf_counter()
        split = benchmark_set(contrast, small=small, shape_scale=shape_scale)
        log(
            f"[{contrast} {size}] test set ready in {time.perf_counter() - t0:.1f} s "
            f"({sum(len(s.lesions) for s in split['test'])} test lesions)"
        )
        for method in methods:
            for mode in modes:
                key = f"{contrast}/{size}/{method}/{mode}"
                try:
                    mrun = run_method(method, mode, split, contrast, small, preset, time_budget)
                except _Skip as why:
                    log(f"[{key}] skipped: {why}")
                    continue
                except Exception as exc:  # one failing method does not stop the others
                    log(f"[{key}] FAILED: {type(exc).__name__}: {exc}")
                    result = {"error": f"failed: {type(exc).__name__}: {str(exc)[:200]}"}
                else:
                    result = evaluate(mrun, split)
                entries[key] = result
                rows.append(table_row(contrast, method, mode, result))
                krow = kind_row(contrast, method, mode, result)
                if krow:
                    kinds.append(krow)
                log(rows[-1])
    _merge_json(entries)
    return rows, kinds, entries


def stored_rows(contrasts, families, modes, small: bool, shape_scale: float = 1.0) -> tuple[list[str], list[str]]:
    """The table rows of results kept in the JSON file (missing ones are left out)."""
    data = json.loads(JSON_PATH.read_text()) if JSON_PATH.is_file() else {}
    size = ("2mm" if small else "1mm") + (f"-shape{shape_scale:g}" if shape_scale != 1.0 else "")
    rows, kinds = list(TABLE_HEADER), list(KIND_HEADER)
    for contrast in contrasts:
        for method in families:
            for mode in modes:
                result = data.get(f"{contrast}/{size}/{method}/{mode}")
                if result is None:
                    continue
                rows.append(table_row(contrast, method, mode, result))
                krow = kind_row(contrast, method, mode, result)
                if krow:
                    kinds.append(krow)
    return rows, kinds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contrasts", nargs="+", default=["t1", "t2"], choices=["t1", "t2"])
    parser.add_argument(
        "--families",
        nargs="+",
        default=list(LEARNED + BASELINES),
        help="family ids, plus 'refz' and 'plain' (the baselines computed here)",
    )
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument(
        "--small", action="store_true", help="2 mm subjects (about 8x fewer voxels), for quick runs"
    )
    parser.add_argument(
        "--time-budget", type=float, default=None, help="seconds per run_family call (learned families)"
    )
    parser.add_argument("--preset", default="fast", help="the 'preset' parameter of families that have one")
    parser.add_argument(
        "--shape-scale",
        type=float,
        default=1.0,
        help="multiplies the subjects' smooth displacement (1: 2-4 mm at most; larger: harder to register)",
    )
    parser.add_argument("--write", action="store_true", help="write the section to benchmarks/RESULTS.md")
    parser.add_argument(
        "--report",
        action="store_true",
        help="run nothing: render the rows stored in benchmarks/out/anomaly.json for these contrasts, "
        "families and modes (runs made separately on this machine)",
    )
    parser.add_argument("--section", default=None)
    args = parser.parse_args(argv)
    argv_list = sys.argv[1:] if argv is None else list(argv)
    if args.report:
        rows, kinds = stored_rows(args.contrasts, args.families, args.modes, args.small, args.shape_scale)
        print("\n".join(rows))
    else:
        rows, kinds, _ = run(
            args.contrasts, args.families, args.modes, args.small, args.time_budget, args.preset, args.shape_scale
        )
    if args.write:
        size = ("2 mm, --small" if args.small else "1 mm") + (
            f", shape scale {args.shape_scale:g}" if args.shape_scale != 1.0 else ""
        )
        command = "python -m benchmarks.anomaly " + " ".join(argv_list)
        body = (
            f"Pseudo-subjects from the MNI152 template and its GM/WM maps at {size} (`benchmarks/anomaly_data.py`): "
            "random affine (rotation <= 5 deg, scale 0.93-1.07, translation <= 8 mm) plus a smooth 2-4 mm "
            "displacement, bias field +-10-20%, Rician noise 2-3% of WM, intensity scale x200-2000; lesions "
            "(hyper +25-60% of WM, hypo -25-50%, texture std 15-25% at the same mean; 3-20 mm, in white matter "
            "or juxtacortical) placed before blur, bias and noise. References: 5 healthy subjects (seeds 100-104, "
            "grids cropped at random); validation: seed 200 (fixes the threshold that maximises Dice there); "
            "test: seeds 300-302; healthy: seed 400. Metrics inside the brain mask, pooled over the 3 test "
            "subjects; best Dice uses one threshold for the whole test set; FP % = healthy brain voxels at or "
            f"above the validation threshold; lesions found at <= {MAX_FP_PER_SCAN:g} false-positive regions per "
            f"scan (one threshold for all test scans; regions >= {MIN_REGION_MM3:g} mm3, 26-connected; a region "
            f"hits a lesion when >= {100 * MIN_REGION_PRECISION:g}% of it is lesion). Time: train = the run that "
            "trained and saved the model; per scan = mean wall time of the other runs. Peak RSS +MB: the "
            "process's resident memory above its level at the start of the call (sampled every 50 ms). "
            "refz = voxel z-score against the 5 references after SimpleITK affine registration; plain = "
            "|I - median| / MAD over the foreground (Meissen et al. 2021).\n\n"
            + "\n".join(rows)
            + "\n\nLesions found at the operating point, by kind and location (found/total):\n\n"
            + "\n".join(kinds)
            + "\n\n"
            + LIMITS_PLACEHOLDER
            + "\n"
        )
        write_section(args.section or f"Anomaly detection ({size})", command, body)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

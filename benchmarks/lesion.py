"""Lesion realism: a classifier two-sample test (C2ST) of inserted lesions against real ones.

Data (:mod:`benchmarks.lesion_data`): MS-like white-matter lesions (3-15 mm, irregular ovoid
outlines rendered with sub-voxel partial volume, level WM + c (GM - WM), c = 1.5-2.5 per case, a
smooth interior heterogeneity of 2-5%) placed in the noise-free MNI152 pseudo-anatomy BEFORE a
simulated acquisition (blur FWHM one voxel, for ``t1thick`` a 4 mm slice profile through-plane;
a +-10-20% bias field; Rician noise 2-3% of WM; scale x200-2000; integers). Settings: ``t1`` and
``t2`` at 1 mm, ``t1thick`` at 1 x 1 x 4 mm; two seeds each, 30 lesions per case (``--small``: 2
mm, 12 lesions per case). Each case also comes as its lesion-free **twin** (the same anatomy,
bias, noise draw and scale) and as a **rescan** (the same lesions, another noise draw).

Method = how the "synthetic" sample is made: the family inserts lesions into the twin at the same
places, sizes and contrasts as the real ones:

* ``classic.procedural``: called once per lesion (each call's output is the next one's input,
  seed = case seed x 1000 + label), placement="points" at the lesion's centre, n_lesions=1,
  diameter_mm = the lesion's equivalent diameter, diameter_jitter=0, contrast = its ratio to the
  local tissue level ((lesion - local) / local, measured as the family measures it); the other
  parameters at their defaults. Its label 1 of each call becomes the lesion's label.
* ``medgen.lesion_diffusion`` (or any lesion family, as ``family_id[:preset[:key=value;...]]``):
  one call, mask = the real lesions' label mask on the scan grid, placement="masks",
  lesion_type="ms", contrast=c, contrast_jitter=0, and relative_contrast = lesion level / WM level - 1
  of the noise-free anatomy where the family declares it (the ratio classic.procedural is given
  too; it overrides c); only the parameters the family declares are passed, the rest is said in
  the notes.
* controls: ``rescan`` (the real lesions acquired again with another noise draw: the C2ST must
  give ~0.5) and ``none`` (nothing inserted: the twin itself; ~1.0).

The C2ST compares, lesion by lesion, the "real" sample (the scan with real lesions, its label
mask) against the "synthetic" one (the family's image, rounded to integers when the input is
integer-valued so the integer grid is no giveaway, with the family's own label of that lesion,
the real label where the family returned none). Both classifiers are scored by 5-fold
cross-validation with both samples of a lesion in the same fold; the AUROC is the mean of the
five test folds' AUROCs (0.5: indistinguishable, 1.0: always told apart; the AUROC of the pooled
out-of-fold scores is kept in the JSON as ``pooled_auroc``):

* hand features (:data:`FEATURES`, logistic regression on standardised features): the lesion's
  contrast to a shell of lesion-free brain 2-5 mm around it (every intensity divided by that
  shell's median); noise inside (MAD of the 6-neighbour Laplacian residual) and its ratio to the
  shell's; the correlation of the high-pass residual (voxel minus its 3x3x3 mean) between
  neighbours, in-plane and through-plane (axis 0); the edge: mean absolute gradient along each
  axis over the voxels within one voxel of the mask's border, divided by the contrast, in-plane
  and through-plane; the interior texture: std / mean, mean local (3x3x3) variance and the std of
  a one-voxel Gaussian smoothing (the texture beyond the voxel noise). "Inside" and the interior
  are the core: the mask eroded by one voxel (the mask itself where that leaves < 2 voxels).
  The JSON also keeps each feature's own AUROC, its mean in each sample, and each group of
  features' (:data:`FEATURE_GROUPS`) C2ST AUROC alone and without it (``group_auroc``).
* a small CNN (4 conv layers with batch norm, 16-32 channels, global average pool; trained per
  fold, 300 Adam steps of 16 patches, flips as augmentation) on three orthogonal 24 x 24 voxel
  patches through the lesion centre, divided by the shell median minus 1.

Also per case: voxels changed outside the returned mask dilated by the family's stated margin
(``info["margin_voxels"]``, 3 if absent; Euclidean distance in voxels; output != input), requested
lesions present in the returned mask (>= 1 voxel of their label), wall time and peak resident
memory above the call's start per scan.

    python -m benchmarks.lesion [--methods classic.procedural medgen.lesion_diffusion ...]
                                [--settings t1,t2,t1thick] [--small] [--no-cnn] [--write] [--report]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

from napari_medgen import Inputs

from .anomaly import RssPeak
from .common import family_registry, fmt, merge_json, size_tag, small_info, write_section
from .lesion_data import SETTINGS, LCase, benchmark_set

__all__ = [
    "FEATURES",
    "FEATURE_GROUPS",
    "auroc",
    "c2st_cnn",
    "c2st_features",
    "lesion_features",
    "lesion_patches",
    "main",
    "outside_margin",
    "requested_present",
    "run_method",
]

OUT_DIR = Path(__file__).with_name("out")
JSON_PATH = OUT_DIR / "lesion.json"
DEFAULT_METHODS = ("rescan", "classic.procedural", "medgen.lesion_diffusion")
DEFAULT_MARGIN = 3
FOLDS = 5
PATCH = 24
CNN_STEPS = 300
SHELL_MM = (2.0, 5.0)
FEATURES = (
    "contrast",
    "noise_in",
    "noise_ratio",
    "corr_inplane",
    "corr_through",
    "edge_inplane",
    "edge_through",
    "cv",
    "local_var",
    "smooth_std",
)
#: feature groups, for the ablation kept in the JSON (AUROC with the group alone / without it)
FEATURE_GROUPS = {
    "contrast": ("contrast",),
    "noise": ("noise_in", "noise_ratio"),
    "noise_correlation": ("corr_inplane", "corr_through"),
    "edge": ("edge_inplane", "edge_through"),
    "texture": ("cv", "local_var", "smooth_std"),
}
TITLE = "Lesion realism: classifier two-sample test"
_MAD_TO_SIGMA = 1.4826
_LAPLACE_GAIN = float(np.sqrt(1.0 + 6.0 / 36.0))


class _Skip(Exception):
    pass


# ---------------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------------
def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half)."""
    y = np.asarray(y).astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(np.asarray(score, dtype=float))
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _folds(groups: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Group-wise folds: both samples of a lesion in the same fold (so each fold is balanced)."""
    uniq = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(uniq))
    parts = np.array_split(uniq[order], min(k, len(uniq)))
    return [np.isin(groups, p) for p in parts]


def _summary(y, oof, fold_aucs) -> dict[str, Any]:
    return {
        "auroc": float(np.nanmean(fold_aucs)) if len(fold_aucs) else float("nan"),
        "pooled_auroc": auroc(y, oof),
        "fold_auroc": [float(a) for a in fold_aucs],
        "fold_std": float(np.nanstd(fold_aucs)) if len(fold_aucs) else float("nan"),
        "n_real": int((y == 1).sum()),
        "n_synthetic": int((y == 0).sum()),
    }


def c2st_features(
    x_real: np.ndarray, x_syn: np.ndarray, groups: np.ndarray | None = None, k: int = FOLDS, seed: int = 0
) -> dict[str, Any]:
    """C2ST with a logistic regression on standardised features: real = 1, synthetic = 0.

    ``groups``: one id per lesion (the same for its real and its synthetic row; default: the row
    index, i.e. row i of both arrays is one lesion). Returns ``auroc`` (the mean of the 5 folds'
    AUROCs), ``pooled_auroc`` (of the pooled out-of-fold scores), the per-fold AUROCs and each
    feature's own (univariate) AUROC over all rows.
    """
    from sklearn.linear_model import LogisticRegression

    x_real, x_syn = np.asarray(x_real, float), np.asarray(x_syn, float)
    x = np.concatenate([x_real, x_syn])
    y = np.r_[np.ones(len(x_real)), np.zeros(len(x_syn))]
    g = np.arange(len(x_real)) if groups is None else np.asarray(groups)
    g = np.concatenate([g, g])
    x = np.where(np.isfinite(x), x, np.nan)
    med = np.nanmedian(x, axis=0)
    x = np.where(np.isnan(x), np.where(np.isnan(med), 0.0, med), x)
    oof = np.zeros(len(y))
    aucs = []
    for test in _folds(g, k, seed):
        train = ~test
        mu, sd = x[train].mean(0), x[train].std(0)
        sd[sd == 0] = 1.0
        model = LogisticRegression(C=1.0, max_iter=2000)
        model.fit((x[train] - mu) / sd, y[train])
        oof[test] = model.decision_function((x[test] - mu) / sd)
        aucs.append(auroc(y[test], oof[test]))
    out = _summary(y, oof, aucs)
    out["feature_auroc"] = [auroc(y, x[:, j]) for j in range(x.shape[1])]
    return out


def _net(channels: int):
    from torch import nn

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(channels, 16),
        *block(16, 16),
        nn.MaxPool2d(2),
        *block(16, 32),
        nn.MaxPool2d(2),
        *block(32, 32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(32, 1),
    )


def c2st_cnn(
    p_real: np.ndarray,
    p_syn: np.ndarray,
    groups: np.ndarray | None = None,
    k: int = FOLDS,
    seed: int = 0,
    steps: int = CNN_STEPS,
    batch: int = 16,
) -> dict[str, Any]:
    """C2ST with a small CNN on (N, C, H, W) patches (the C orthogonal planes as channels), trained per fold.

    ``steps`` Adam steps (lr 1e-3) of ``batch`` random training samples, random flips of both
    patch axes; the test scores average the four flips.
    """
    import torch

    torch.set_num_threads(1)
    x = np.concatenate([np.asarray(p_real, np.float32), np.asarray(p_syn, np.float32)])
    x = np.nan_to_num(x)
    y = np.r_[np.ones(len(p_real)), np.zeros(len(p_syn))].astype(np.float32)
    g = np.arange(len(p_real)) if groups is None else np.asarray(groups)
    g = np.concatenate([g, g])
    oof = np.zeros(len(y))
    aucs = []
    for f, test in enumerate(_folds(g, k, seed)):
        torch.manual_seed(1000 * seed + f)
        rng = np.random.default_rng([seed, f])
        net = _net(x.shape[1])
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        xt, yt = x[~test], y[~test]
        net.train()
        for _ in range(steps):
            idx = rng.choice(len(xt), min(batch, len(xt)), replace=False)
            xb = xt[idx]
            if rng.random() < 0.5:
                xb = xb[:, :, ::-1]
            if rng.random() < 0.5:
                xb = xb[:, :, :, ::-1]
            opt.zero_grad()
            logits = net(torch.from_numpy(np.ascontiguousarray(xb))).squeeze(1)
            loss_fn(logits, torch.from_numpy(yt[idx])).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            xs = torch.from_numpy(x[test])
            logits = sum(net(v).squeeze(1) for v in (xs, xs.flip(2), xs.flip(3), xs.flip(2).flip(3))) / 4.0
        oof[test] = logits.numpy()
        aucs.append(auroc(y[test], oof[test]))
    return _summary(y, oof, aucs)


# ---------------------------------------------------------------------------------------------------
# per-lesion features and patches
# ---------------------------------------------------------------------------------------------------
def _bbox(mask: np.ndarray, pad) -> tuple[slice, ...]:
    idx = [np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
    return tuple(
        slice(max(0, int(i[0]) - int(p)), min(n, int(i[-1]) + 1 + int(p)))
        for i, p, n in zip(idx, pad, mask.shape)
    )


def _laplace(x: np.ndarray) -> np.ndarray:
    k = np.zeros((3, 3, 3))
    k[1, 1, 1] = 1.0
    for axis in range(3):
        for side in (0, 2):
            idx = [1, 1, 1]
            idx[axis] = side
            k[tuple(idx)] = -1.0 / 6.0
    return ndimage.convolve(x, k, mode="nearest")


def _mad_sigma(v: np.ndarray) -> float:
    if v.size < 2:
        return float("nan")
    return _MAD_TO_SIGMA * float(np.median(np.abs(v - np.median(v)))) / _LAPLACE_GAIN


def _neighbour_corr(r: np.ndarray, m: np.ndarray, axis: int) -> float:
    a = [slice(None)] * 3
    b = [slice(None)] * 3
    a[axis], b[axis] = slice(0, -1), slice(1, None)
    both = m[tuple(a)] & m[tuple(b)]
    if both.sum() < 3:
        return float("nan")
    u, v = r[tuple(a)][both], r[tuple(b)][both]
    if u.std() == 0 or v.std() == 0:
        return float("nan")
    return float(np.corrcoef(u, v)[0, 1])


def lesion_features(
    image: np.ndarray,
    mask: np.ndarray,
    spacing: Sequence[float],
    brain: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
) -> tuple[dict[str, float], float]:
    """The :data:`FEATURES` of one lesion (``mask``: bool, the lesion's voxels) and its shell level.

    ``exclude``: voxels kept out of the shell (other lesions). Intensities are divided by the
    median of the shell (lesion-free brain 2-5 mm from the mask) first.
    """
    sp = np.asarray(spacing, dtype=float)
    pad = np.ceil((SHELL_MM[1] + 2.0) / sp).astype(int) + 1
    box = _bbox(mask, pad)
    m = mask[box]
    img = np.asarray(image[box], dtype=np.float64)
    d_out = ndimage.distance_transform_edt(~m, sampling=sp)
    shell = (d_out >= SHELL_MM[0]) & (d_out <= SHELL_MM[1])
    if brain is not None:
        shell &= brain[box]
    if exclude is not None:
        shell &= ~ndimage.binary_dilation(exclude[box] & ~m, iterations=1)
    if shell.sum() < 10:
        shell = (d_out >= SHELL_MM[0]) & (d_out <= SHELL_MM[1])
    level = float(np.median(img[shell])) if shell.any() else float(np.median(img))
    level = level if level != 0 else 1.0
    x = img / level
    core = ndimage.binary_erosion(m)
    if core.sum() < 2:
        core = m
    contrast = float(np.median(x[core]) - np.median(x[shell]))
    lap = _laplace(x)
    noise_in = _mad_sigma(lap[core])
    noise_shell = _mad_sigma(lap[shell])
    resid = x - ndimage.uniform_filter(x, 3, mode="nearest")
    corr_axes = [_neighbour_corr(resid, core, a) for a in range(3)]
    grads = np.gradient(x)  # per voxel (the grid's own sampling)
    border = ndimage.binary_dilation(m) & ~ndimage.binary_erosion(m)
    scale = max(1e-6, abs(contrast))
    edge = [float(np.abs(g[border]).mean()) / scale for g in grads]
    vals = x[core]
    mean = float(vals.mean())
    local_var = (
        ndimage.uniform_filter(x * x, 3, mode="nearest") - ndimage.uniform_filter(x, 3, mode="nearest") ** 2
    )
    smooth = ndimage.gaussian_filter(x, 1.0)
    feats = {
        "contrast": contrast,
        "noise_in": noise_in,
        "noise_ratio": noise_in / noise_shell if noise_shell and np.isfinite(noise_shell) else float("nan"),
        "corr_inplane": float(np.nanmean(corr_axes[1:]))
        if np.isfinite(corr_axes[1:]).any()
        else float("nan"),
        "corr_through": corr_axes[0],
        "edge_inplane": float(np.mean(edge[1:])),
        "edge_through": edge[0],
        "cv": float(vals.std() / mean) if mean else float("nan"),
        "local_var": float(local_var[core].mean()),
        "smooth_std": float(smooth[core].std()),
    }
    return feats, level


def lesion_patches(image: np.ndarray, centre: Sequence[float], level: float, size: int = PATCH) -> np.ndarray:
    """Three orthogonal ``size`` x ``size`` planes through ``centre`` (voxel index), / level - 1."""
    c = np.round(np.asarray(centre, dtype=float)).astype(int)
    c = np.clip(c, 0, np.asarray(image.shape) - 1)
    h = size // 2
    padded = np.pad(np.asarray(image, dtype=np.float32), h, mode="edge")
    p = c + h  # centre in the padded array
    win = [slice(p[a] - h, p[a] - h + size) for a in range(3)]
    planes = [
        padded[p[0], win[1], win[2]],
        padded[win[0], p[1], win[2]],
        padded[win[0], win[1], p[2]],
    ]
    return (np.stack(planes) / np.float32(level if level else 1.0) - 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# margin and presence
# ---------------------------------------------------------------------------------------------------
def outside_margin(before: np.ndarray, after: np.ndarray, mask: np.ndarray, margin: float) -> int:
    """Voxels where ``after != before`` farther than ``margin`` voxels (Euclidean) from the mask."""
    changed = np.asarray(after) != np.asarray(before)
    if not changed.any():
        return 0
    m = np.asarray(mask) > 0
    if not m.any():
        return int(changed.sum())
    dist = ndimage.distance_transform_edt(~m)
    return int((changed & (dist > margin)).sum())


def requested_present(mask: np.ndarray, labels: Sequence[int]) -> list[bool]:
    """For each requested label: does the mask hold at least one voxel of it?"""
    counts = np.bincount(np.asarray(mask).astype(np.int64).ravel(), minlength=max(labels, default=0) + 1)
    return [bool(counts[k] > 0) for k in labels]


# ---------------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------------
@dataclass
class MethodRun:
    """One method on one case: its image and label mask (labels = the real lesions'), and the checks."""

    image: np.ndarray
    mask: np.ndarray
    seconds: float = 0.0
    extra_mb: float = 0.0
    outside: int | None = None
    margin: float | None = None
    present: list[bool] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def _output(result, name: str, kind: str):
    for out in result.outputs:
        if out.name == name:
            return out
    for out in result.outputs:
        if out.kind == kind:
            return out
    raise RuntimeError(f"the result has no {name!r} output (outputs: {[o.name for o in result.outputs]})")


def _params(family, wanted: dict[str, Any], overrides: dict[str, str], preset: str | None, notes: list[str]):
    names = {p.name for p in family.params}
    params = {k: v for k, v in wanted.items() if k in names}
    missing = sorted(set(wanted) - names)
    if missing:
        notes.append("not a parameter of the family (left out): " + ", ".join(missing))
    if preset:
        if "preset" in names:
            params["preset"] = preset
        else:
            notes.append(f"no 'preset' parameter: defaults used instead of {preset!r}")
    params.update({k: family.param(k).parse(v) for k, v in overrides.items()})
    return params


def _is_integer(a: np.ndarray) -> bool:
    return bool(np.all(a == np.rint(a)))


def _procedural(entry, case: LCase, overrides, preset, seed_base: int, time_budget=None) -> MethodRun:
    from napari_medgen.runner import run_family

    twin = case.twin
    notes: list[str] = ["one call per lesion (each call's output is the next one's input)"]
    current = twin
    mask = np.zeros(case.labels.shape, dtype=np.uint16)
    present = []
    margin = None
    for les in case.lesions:
        k = int(les["label"])
        wanted = {
            "placement": "points",
            "n_lesions": 1,
            "diameter_mm": float(les["diameter_mm"]),
            "diameter_jitter": 0.0,
            "contrast": float(les["ratio_to_local"]),
        }
        params = _params(entry.family, wanted, overrides, preset, notes if k == 1 else [])
        pts = np.asarray([les["centre_index"]], dtype=float)
        result = run_family(
            entry.family,
            Inputs(image=current, points=pts),
            params,
            seed=seed_base + k,
            time_budget=time_budget,
            overwrite=True,
        )
        out = np.asarray(_output(result, "image", "image").volume.data, dtype=np.float32)
        lab = np.asarray(_output(result, "mask", "labels").volume.data)
        if margin is None:
            margin = float(result.info.get("margin_voxels", DEFAULT_MARGIN))
        mask[lab == 1] = k
        present.append(bool((lab == 1).any()))
        current = twin.with_data(out, name=twin.name)
    image = np.asarray(current.data, dtype=np.float32)
    return MethodRun(image=image, mask=mask, margin=margin, present=present, notes=notes)


def _one_call(entry, case: LCase, overrides, preset, seed: int, time_budget=None) -> MethodRun:
    from napari_medgen.runner import run_family

    notes: list[str] = []
    wanted = {"placement": "masks", "lesion_type": "ms", "contrast": case.c, "contrast_jitter": 0.0}
    names = {p.name for p in entry.family.params}
    levels = case.meta.get("tissue_levels", {})
    if "relative_contrast" in names and levels.get("wm"):
        # the information classic.procedural gets too: the lesion's level relative to the white matter
        # of the noise-free anatomy (c alone needs the family to estimate pure grey and white matter levels)
        wanted["relative_contrast"] = float(levels["lesion"]) / float(levels["wm"]) - 1.0
    params = _params(entry.family, wanted, overrides, preset, notes)
    mask_in = case.twin.with_data(case.labels.astype(np.uint16), name="real lesion labels")
    result = run_family(
        entry.family,
        Inputs(image=case.twin, mask=mask_in),
        params,
        seed=seed,
        time_budget=time_budget,
        overwrite=True,
    )
    image = np.asarray(_output(result, "image", "image").volume.data, dtype=np.float32)
    lab = np.asarray(_output(result, "mask", "labels").volume.data)
    if image.shape != case.twin.shape or lab.shape != case.twin.shape:
        raise RuntimeError(f"output shapes {image.shape}, {lab.shape} != scan shape {case.twin.shape}")
    labels = [int(d["label"]) for d in case.lesions]
    present = requested_present(lab, labels)
    margin = float(result.info.get("margin_voxels", DEFAULT_MARGIN))
    info = small_info({k: v for k, v in result.info.items() if k != "lesions"})
    return MethodRun(image=image, mask=lab, margin=margin, present=present, notes=notes, info=info)


def run_method(method: str, case: LCase, time_budget: float | None = None) -> MethodRun:
    """``method`` on one case (see the module docstring): the synthetic image, its mask and the checks."""
    labels = [int(d["label"]) for d in case.lesions]
    if method == "rescan":
        return MethodRun(
            image=np.asarray(case.rescan.data, np.float32),
            mask=case.labels,
            present=[True] * len(labels),
            notes=["control: the real lesions, another noise draw"],
        )
    if method == "none":
        return MethodRun(
            image=np.asarray(case.twin.data, np.float32),
            mask=np.zeros_like(case.labels),
            present=[False] * len(labels),
            outside=0,
            margin=0.0,
            notes=["control: nothing inserted"],
        )
    family_id, _, rest = method.partition(":")
    preset, _, tail = rest.partition(":")  # family_id[:preset[:key=value;key=value]] (ablations)
    overrides = dict(kv.split("=", 1) for kv in tail.split(";") if "=" in kv)
    registry = family_registry()
    if family_id not in registry:
        have = ", ".join(e.id for e in registry.families("lesion")) or "none"
        raise _Skip(f"no family {family_id!r} is registered (registered lesion families: {have})")
    entry = registry.get(family_id)
    with RssPeak() as mem:
        t0 = time.perf_counter()
        if family_id == "classic.procedural":
            run = _procedural(entry, case, overrides, preset or None, case.seed * 1000, time_budget)
        else:
            run = _one_call(entry, case, overrides, preset or None, case.seed, time_budget)
        run.seconds = time.perf_counter() - t0
    run.extra_mb = mem.peak - mem.start
    before = np.asarray(case.twin.data, np.float32)
    run.outside = outside_margin(before, run.image, run.mask, run.margin)
    if _is_integer(before) and not _is_integer(run.image):
        run.image = np.rint(run.image)
        run.notes.append("output rounded to integers for the C2ST (the input is integer-valued)")
    return run


# ---------------------------------------------------------------------------------------------------
# one method on one setting
# ---------------------------------------------------------------------------------------------------
def collect(case: LCase, run: MethodRun) -> dict[str, Any]:
    """Features and patches of every lesion, real and synthetic."""
    spacing = case.scan.spacing
    real = np.asarray(case.scan.data, np.float32)
    syn = run.image
    feats_r, feats_s, patch_r, patch_s, own_mask = [], [], [], [], 0
    for les in case.lesions:
        k = int(les["label"])
        m_real = case.labels == k
        m_syn = run.mask == k
        if m_syn.any():
            own_mask += 1
        else:
            m_syn = m_real
        f_r, lev_r = lesion_features(real, m_real, spacing, case.brain, case.labels > 0)
        f_s, lev_s = lesion_features(syn, m_syn, spacing, case.brain, (case.labels > 0) | (run.mask > 0))
        feats_r.append([f_r[n] for n in FEATURES])
        feats_s.append([f_s[n] for n in FEATURES])
        patch_r.append(lesion_patches(real, les["centre_index"], lev_r))
        patch_s.append(lesion_patches(syn, les["centre_index"], lev_s))
    return {
        "features_real": np.asarray(feats_r),
        "features_syn": np.asarray(feats_s),
        "patches_real": np.asarray(patch_r),
        "patches_syn": np.asarray(patch_s),
        "groups": np.asarray([case.seed * 1000 + int(d["label"]) for d in case.lesions]),
        "own_mask": own_mask,
    }


def evaluate_setting(cases: Sequence[LCase], runs: Sequence[MethodRun], cnn: bool = True) -> dict[str, Any]:
    parts = [collect(c, r) for c, r in zip(cases, runs)]
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "own_mask"}
    feat = c2st_features(cat["features_real"], cat["features_syn"], cat["groups"])
    per_feature = dict(zip(FEATURES, feat.pop("feature_auroc")))
    res: dict[str, Any] = {"features": feat, "feature_auroc": per_feature}
    groups = {}
    for name, members in FEATURE_GROUPS.items():
        cols = np.asarray([n in members for n in FEATURES])
        alone = c2st_features(cat["features_real"][:, cols], cat["features_syn"][:, cols], cat["groups"])
        rest = c2st_features(cat["features_real"][:, ~cols], cat["features_syn"][:, ~cols], cat["groups"])
        groups[name] = {"alone": alone["auroc"], "without": rest["auroc"]}
    res["group_auroc"] = groups
    if cnn:
        res["cnn"] = c2st_cnn(cat["patches_real"], cat["patches_syn"], cat["groups"])
    means = {
        n: [float(np.nanmean(cat["features_real"][:, j])), float(np.nanmean(cat["features_syn"][:, j]))]
        for j, n in enumerate(FEATURES)
    }
    res["feature_means_real_syn"] = means
    res["lesions"] = len(cat["groups"])
    res["own_mask"] = int(sum(p["own_mask"] for p in parts))
    res["outside_margin"] = [r.outside for r in runs]
    res["margin_voxels"] = [r.margin for r in runs]
    res["present"] = int(sum(sum(r.present) for r in runs))
    res["requested"] = int(sum(len(c.lesions) for c in cases))
    res["seconds"] = [r.seconds for r in runs]
    res["seconds_mean"] = float(np.mean([r.seconds for r in runs]))
    res["extra_rss_mb"] = float(max(r.extra_mb for r in runs))
    res["cases"] = [c.name for c in cases]
    res["notes"] = sorted({n for r in runs for n in r.notes})
    if res["own_mask"] < res["lesions"]:
        res["notes"].append(
            f"{res['lesions'] - res['own_mask']} lesion(s) without a label in the family's mask: "
            "their features use the real mask"
        )
    res["info"] = [r.info for r in runs if r.info]
    return res


HEADER = [
    (
        "| setting | method | lesions (real + synthetic) | AUROC features | AUROC CNN | most separating features "
        "(own AUROC) | voxels changed outside mask + margin | lesions present / requested | per scan (s) | "
        "peak RSS +MB | notes |"
    ),
    "|---|---|---|---|---|---|---|---|---|---|---|",
]


def table_row(setting: str, method: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"| {setting} | {method} | | | | | | | | | {r['error']} |"
    top = sorted(r["feature_auroc"].items(), key=lambda kv: -abs(kv[1] - 0.5) if np.isfinite(kv[1]) else 0)[
        :3
    ]
    tops = ", ".join(f"{k} {fmt(v)}" for k, v in top)
    outside = r["outside_margin"]
    out_text = "-" if any(o is None for o in outside) else " / ".join(str(o) for o in outside)
    margin = {m for m in r["margin_voxels"] if m is not None}
    if margin and out_text != "-":
        out_text += f" (margin {', '.join(fmt(m, 'g') for m in sorted(margin))})"
    cnn = r.get("cnn", {}).get("auroc")
    n = r["features"]["n_real"]
    return (
        f"| {setting} | {method} | {n} + {r['features']['n_synthetic']} | {fmt(r['features']['auroc'])} | "
        f"{fmt(cnn)} | {tops} | {out_text} | {r['present']}/{r['requested']} | "
        f"{fmt(r['seconds_mean'], '.1f')} | {fmt(r['extra_rss_mb'], '.0f')} | {'; '.join(r['notes'])} |"
    )


def run(
    settings: Sequence[str],
    methods: Sequence[str],
    small: bool,
    cnn: bool = True,
    time_budget: float | None = None,
    log=print,
    cache_dir=None,
):
    """Every method on every setting: table rows and the JSON entries (merged into lesion.json)."""
    from napari_medgen.engine.device import resolve_device

    resolve_device("auto")  # one-off torch import, kept out of the timings
    t0 = time.perf_counter()
    kw = {} if cache_dir is None else {"cache_dir": cache_dir}
    split = benchmark_set(small=small, settings=list(settings), **kw)
    n_les = sum(len(c.lesions) for cs in split.values() for c in cs)
    log(f"[{size_tag(small)}] data ready in {time.perf_counter() - t0:.1f} s ({n_les} real lesions)")
    rows = list(HEADER)
    entries: dict[str, Any] = {}
    for method in methods:
        for setting in settings:
            key = f"{setting}/{size_tag(small)}/{method}"
            cases = split[setting]
            try:
                runs = []
                for case in cases:
                    r = run_method(method, case, time_budget)
                    log(f"  {method} on {case.name}: {r.seconds:.1f} s")
                    runs.append(r)
                t1 = time.perf_counter()
                result = evaluate_setting(cases, runs, cnn=cnn)
                log(f"  C2ST {time.perf_counter() - t1:.1f} s")
            except _Skip as why:
                log(f"[{key}] skipped: {why}")
                rows.append(f"| {setting} | {method} | | | | | | | | | skipped: {why} |")
                break  # the same for every setting
            except Exception as exc:  # noqa: BLE001 - one failing method does not stop the others
                log(f"[{key}] FAILED: {type(exc).__name__}: {exc}")
                result = {"error": f"failed: {type(exc).__name__}: {str(exc)[:300]}"}
            entries[key] = result
            rows.append(table_row(setting, method, result))
            log(f"[{key}] {rows[-1]}")
    merge_json(JSON_PATH, entries)
    return rows, entries


def stored_rows(settings, methods, small: bool) -> list[str]:
    data = json.loads(JSON_PATH.read_text()) if JSON_PATH.is_file() else {}
    rows = list(HEADER)
    for method in methods:
        for setting in settings:
            result = data.get(f"{setting}/{size_tag(small)}/{method}")
            if result is not None:
                rows.append(table_row(setting, method, result))
    return rows


def _body(small: bool, rows: list[str]) -> str:
    from .lesion_data import N_LESIONS

    n = N_LESIONS[bool(small)]
    return (
        f"MNI152 pseudo-anatomy at {'2 mm (--small)' if small else '1 mm'} (`benchmarks/lesion_data.py`). "
        f"Real lesions: {n} MS-like white-matter lesions per case, two cases (seeds) per setting, "
        f"{'4' if small else '3'}-15 mm irregular ovoids rendered with sub-voxel partial volume, level "
        "WM + c (GM - WM) with c = 1.5-2.5 per case (T1-hypo, T2-hyper), 2-5% smooth interior heterogeneity, "
        "placed in the noise-free anatomy before the acquisition (blur FWHM 1 voxel; t1thick: 4 mm slices, "
        "a box of 4 mm after the Gaussian; +-10-20% bias; Rician noise 2-3% of WM; x200-2000; integers). "
        "Synthetic: the method inserts lesions into the same anatomy acquired without lesions (the twin: "
        "same bias, noise draw and scale) at the real lesions' places: classic.procedural once per lesion at "
        "its centre with its equivalent diameter, no jitter, contrast = its ratio to the local tissue; "
        "mask-driven families with the real label mask, placement=masks, lesion_type=ms, contrast=c, no "
        "jitter, and (where the family declares it) relative_contrast = lesion level / WM level - 1 of the noise-free "
        "anatomy, the information classic.procedural gets as its ratio. Controls: `rescan` (the real lesions, another noise draw: should be ~0.5) and `none` "
        "(nothing inserted). Classifier two-sample test, 5-fold cross-validated (both samples of a lesion in "
        "one fold), AUROC = the mean of the 5 test folds' AUROCs (0.5: indistinguishable; the `rescan` rows "
        "show how far from 0.5 chance takes it): "
        "features = logistic regression on 10 hand features (contrast to a 2-5 mm shell, Laplacian-residual "
        "noise inside and its ratio to the shell's, neighbour correlation of the high-pass residual in-plane "
        "and through-plane, mean |gradient| at the mask border / contrast in-plane and through-plane, std / "
        "mean, local 3x3x3 variance, std after a 1-voxel Gaussian); CNN = 4 conv layers (batch norm) on "
        "three orthogonal 24 x 24 voxel patches through the centre, divided by the shell median, trained "
        "per fold. The synthetic image is rounded to integers for the test (the scans are integer-valued). "
        "Most separating features: each feature's own AUROC (real = positive; < 0.5: larger in the "
        "synthetic). Voxels changed outside the returned mask dilated by the family's `margin_voxels` (3 if "
        "it states none), per case. Time and peak resident memory above the call's start per scan "
        "(classic.procedural: all its calls).\n\n" + "\n".join(rows) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        help="space- or comma-separated: rescan, none, family_id[:preset[:key=value;key=value]]",
    )
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated: t1, t2, t1thick")
    parser.add_argument(
        "--small", action="store_true", help="2 mm cases with 12 lesions each, for quick runs"
    )
    parser.add_argument("--no-cnn", action="store_true", help="the feature classifier only")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds per run_family call")
    parser.add_argument("--write", action="store_true", help="write the section to benchmarks/RESULTS.md")
    parser.add_argument(
        "--report", action="store_true", help="run nothing: render the rows stored in lesion.json"
    )
    args = parser.parse_args(argv)
    argv_list = sys.argv[1:] if argv is None else list(argv)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for s in settings:
        if s not in SETTINGS:
            parser.error(f"unknown setting {s!r} (settings: {', '.join(SETTINGS)})")
    methods = [m.strip() for item in args.methods for m in item.split(",") if m.strip()]
    if args.report:
        rows = stored_rows(settings, methods, args.small)
    else:
        rows, _ = run(settings, methods, args.small, cnn=not args.no_cnn, time_budget=args.time_budget)
    print(f"\n{TITLE}\n" + "\n".join(rows))
    if args.write:
        title = TITLE + (" (2 mm, --small)" if args.small else "")
        write_section(title, "python -m benchmarks.lesion " + " ".join(argv_list), _body(args.small, rows))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

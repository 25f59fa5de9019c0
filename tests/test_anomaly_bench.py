"""The anomaly benchmark's own parts: its metrics, its pseudo-subjects and its registration.

Small and fast: metrics on arrays with known answers, one 2 mm pseudo-subject (no cache),
and a phantom translated by a known amount.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks package lives beside tests/

from benchmarks.anomaly import (
    auroc,
    average_precision,
    best_dice,
    dice_at,
    fp_fraction,
    lesion_detection,
)
from benchmarks.anomaly_data import LesionSpec, default_lesions, make_subject


@pytest.fixture(scope="module")
def truth():
    rng = np.random.default_rng(0)
    t = np.zeros((20, 20, 20), dtype=bool)
    t[5:9, 5:9, 5:9] = True
    noise = rng.normal(0, 1, t.shape)
    return t, noise


def test_perfect_and_constant_maps(truth):
    t, noise = truth
    perfect = t.astype(float) + 0.01 * noise  # every lesion voxel above every normal one
    assert auroc(perfect, t) == pytest.approx(1.0)
    assert average_precision(perfect, t) == pytest.approx(1.0)
    dice, thr = best_dice(perfect, t)
    assert dice == pytest.approx(1.0) and 0.05 < thr < 1.0
    constant = np.zeros(t.shape)
    assert auroc(constant, t) == pytest.approx(0.5)
    assert average_precision(constant, t) == pytest.approx(t.mean())
    inverted = -perfect
    assert auroc(inverted, t) == pytest.approx(0.0)


def test_metrics_match_brute_force(truth):
    t, noise = truth
    s = np.round(t * 1.0 + noise, 1)  # ties on purpose
    pos, neg = s[t], s[~t]
    brute_auc = np.mean((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None]))
    assert auroc(s, t) == pytest.approx(brute_auc)
    ap, prev = 0.0, 0.0
    for th in np.unique(s)[::-1]:
        pred = s >= th
        recall = (pred & t).sum() / t.sum()
        ap += (recall - prev) * (pred & t).sum() / pred.sum()
        prev = recall
    assert average_precision(s, t) == pytest.approx(ap)
    dice, thr = best_dice(s, t)
    assert dice == pytest.approx(dice_at(s, t, None, thr))
    assert dice == pytest.approx(max(dice_at(s, t, None, th) for th in np.unique(s)))


def test_dice_fp_fraction_and_masks(truth):
    t, _ = truth
    pred = np.zeros(t.shape)
    pred[5:9, 5:9, 5:7] = 1.0  # half the lesion, nothing else
    assert dice_at(pred, t, None, 0.5) == pytest.approx(2 * 32 / (32 + 64))
    mask = np.zeros(t.shape, dtype=bool)
    mask[:10] = True
    assert fp_fraction(pred, mask, 0.5) == pytest.approx(32 / mask.sum())
    # outside the mask nothing counts: a false positive there changes no metric
    noisy = pred.copy()
    noisy[15:, 15:, 15:] = 5.0
    assert dice_at(noisy, t, mask, 0.5) == dice_at(pred, t, mask, 0.5)
    # lists are pooled
    assert auroc([pred, pred], [t, t], [mask, mask]) == pytest.approx(auroc(pred, t, mask))


def test_lesion_detection_counts_hits_and_false_positives():
    labels = np.zeros((30, 30, 30), dtype=np.uint8)
    labels[4:8, 4:8, 4:8] = 1
    labels[20:24, 20:24, 20:24] = 2
    brain = np.ones(labels.shape, dtype=bool)
    score = np.zeros(labels.shape)
    score[labels == 1] = 5.0  # lesion 1 scored high, lesion 2 low
    score[labels == 2] = 1.0
    score[12:15, 4:7, 20:23] = 3.0  # one false-positive blob between them
    res = lesion_detection([score], [labels], [brain], voxel_mm3=1.0, max_fp_per_scan=0, min_region_mm3=5)
    assert res["found"] == [[True, False]] and res["fp_per_scan"] == 0  # above the blob: lesion 1 only
    res = lesion_detection([score], [labels], [brain], voxel_mm3=1.0, max_fp_per_scan=1, min_region_mm3=5)
    assert res["found"] == [[True, True]] and res["fp_per_scan"] == 1 and res["found_fraction"] == 1.0
    # a region that is mostly normal tissue is a false positive, not a hit
    flood = np.full(labels.shape, 0.5)
    flood[labels == 1] = 5.0
    res = lesion_detection([flood], [labels], [brain], voxel_mm3=1.0, max_fp_per_scan=0, min_region_mm3=5)
    assert res["found"] == [[True, False]]


@pytest.fixture(scope="module")
def small_subject():
    specs = [
        LesionSpec("hyper", 10.0, "wm"),
        LesionSpec("hypo", 6.0, "juxtacortical"),
        LesionSpec("texture", 12.0, "wm"),
    ]
    return specs, make_subject(7, "t1", specs, small=True)


def test_small_subject_has_lesions_inside_the_brain(small_subject):
    _, subj = small_subject
    vol = subj.volume
    assert vol.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert vol.data.dtype == np.float32 and vol.data.shape == subj.lesion_mask.shape == subj.brain_mask.shape
    assert subj.lesion_mask.any() and not (subj.lesion_mask & ~subj.brain_mask).any()
    assert [d["kind"] for d in subj.lesions] == ["hyper", "hypo", "texture"]
    assert set(np.unique(subj.lesion_labels)) == {0, 1, 2, 3}
    for d in subj.lesions:
        assert d["voxels"] == int((subj.lesion_labels == d["label"]).sum()) > 0
    # hyper brighter, hypo darker than the healthy scan of the same seed (same anatomy, bias and noise)
    healthy = make_subject(7, "t1", None, small=True)
    diff = vol.data - healthy.volume.data
    assert diff[subj.lesion_labels == 1].mean() > 0.15 * vol.metadata["anomaly_subject"]["wm_level"]
    assert diff[subj.lesion_labels == 2].mean() < -0.1 * vol.metadata["anomaly_subject"]["wm_level"]
    assert abs(diff[subj.lesion_labels == 3].mean()) < 0.05 * vol.metadata["anomaly_subject"]["wm_level"]
    assert diff[subj.lesion_labels == 3].std() > 0.08 * vol.metadata["anomaly_subject"]["wm_level"]
    far = ~ndimage.binary_dilation(subj.lesion_mask, iterations=4)
    assert np.array_equal(vol.data[far], healthy.volume.data[far])


def test_subjects_are_deterministic_and_differ_by_seed(small_subject):
    specs, subj = small_subject
    again = make_subject(7, "t1", specs, small=True)
    assert np.array_equal(again.volume.data, subj.volume.data)
    assert np.array_equal(again.lesion_mask, subj.lesion_mask) and again.lesions == subj.lesions
    other = make_subject(8, "t1", None, small=True, crop="random")
    assert other.volume.shape != subj.volume.shape or not np.array_equal(other.volume.data, subj.volume.data)
    assert default_lesions(300) == default_lesions(300) and 6 <= len(default_lesions(300)) <= 10


def test_t2_contrast_inverts_the_tissues():
    subj = make_subject(9, "t2", None, small=True)
    t1 = make_subject(9, "t1", None, small=True)
    assert np.array_equal(subj.brain_mask, t1.brain_mask)
    # ventricles (inside the brain, far from parenchyma in the T1's darkest part) are bright in T2
    inside = subj.brain_mask
    dark_t1 = inside & (t1.volume.data < np.percentile(t1.volume.data[inside], 5))
    bright_t1 = inside & (t1.volume.data > np.percentile(t1.volume.data[inside], 80))
    assert subj.volume.data[dark_t1].mean() > 1.5 * subj.volume.data[bright_t1].mean()

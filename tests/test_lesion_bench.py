"""The lesion-realism benchmark's own parts: its simulated lesions, the lesion-free twin, the C2ST and
the margin counter.

Quick: three 2 mm cases are built without a cache (about a second each); the CNN trains for 80
steps on tiny synthetic sets.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks package lives beside tests/

from benchmarks import lesion
from benchmarks.lesion_data import C_RANGE, N_LESIONS, load_or_make, make_case


@pytest.fixture(scope="module")
def cases():
    return {s: make_case(s, 600, small=True) for s in ("t1", "t2", "t1thick")}


def test_lesions_in_white_matter_with_their_labels_and_centres(cases):
    for setting, case in cases.items():
        assert len(case.lesions) == N_LESIONS[True] == case.labels.max()
        assert C_RANGE[0] <= case.c <= C_RANGE[1]
        assert case.labels.shape == case.scan.shape == case.twin.shape == case.wm.shape
        for les in case.lesions:
            m = case.labels == les["label"]
            assert m.any() and les["voxels"] == int(m.sum())
            assert np.all(case.brain[m]), (setting, les["label"])
            assert case.wm[m].mean() > 0.6, (setting, les["label"])
            centre = tuple(np.round(les["centre_index"]).astype(int))
            assert case.occupancy[centre] > 0.2, (setting, les["label"])
            assert 3.0 <= les["diameter_mm"] <= 16.0
        # the thick-slice case: 4 mm through-plane, the same anatomy's in-plane grid
    assert cases["t1thick"].scan.spacing[0] == pytest.approx(4.0)
    assert cases["t1thick"].scan.spacing[1:] == pytest.approx(cases["t1"].scan.spacing[1:])


def test_lesion_intensity_is_wm_plus_c_grey_white_units(cases):
    """In fully occupied voxels, scan / twin = the lesion level over the WM level (T1 hypo, T2 hyper)."""
    for setting in ("t1", "t2"):
        case = cases[setting]
        levels = case.meta["tissue_levels"]
        assert levels["lesion"] == pytest.approx(
            levels["wm"] + case.c * (levels["gm"] - levels["wm"]), rel=1e-3
        )
        expected = levels["lesion"] / levels["wm"] - 1.0
        assert (expected < -0.3) if setting == "t1" else (expected > 0.5)
        scan, twin = np.asarray(case.scan.data), np.asarray(case.twin.data)
        seen = []
        for les in case.lesions:
            core = ndimage.binary_erosion((case.occupancy >= 0.999) & (case.labels == les["label"]))
            if core.sum() >= 2:
                seen.append(float(np.median(scan[core] / twin[core])) - 1.0)
        assert len(seen) >= 3, setting
        assert np.mean(seen) == pytest.approx(expected, abs=0.05 + 0.05 * abs(expected)), (setting, seen)
        for les in case.lesions:  # the ratio the procedural baseline is given has the same sign
            assert np.sign(les["ratio_to_local"]) == np.sign(expected)


def test_twin_is_identical_outside_the_lesions_blurred_support(cases):
    for setting, case in cases.items():
        scan, twin, rescan = (np.asarray(v.data) for v in (case.scan, case.twin, case.rescan))
        assert np.all(scan == np.rint(scan)) and np.all(twin == np.rint(twin))
        assert np.array_equal(scan[~case.support], twin[~case.support]), setting
        assert np.all(case.support[case.labels > 0])
        assert (scan != twin)[case.labels > 0].mean() > 0.9, setting
        # the rescan: the same lesions, another noise draw
        assert (rescan != scan).mean() > 0.5


def test_cache_round_trip(tmp_path):
    a = load_or_make("t1", 603, small=True, n_lesions=3, cache_dir=tmp_path)
    b = load_or_make("t1", 603, small=True, n_lesions=3, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    assert np.array_equal(a.scan.data, b.scan.data) and np.array_equal(a.labels, b.labels)
    assert a.lesions == b.lesions and np.allclose(a.scan.affine, b.scan.affine)


def test_auroc_and_the_feature_c2st():
    assert lesion.auroc([1, 1, 0, 0], [3, 2, 1, 0]) == 1.0
    assert lesion.auroc([1, 1, 0, 0], [0, 1, 2, 3]) == 0.0
    assert lesion.auroc([1, 0], [1, 1]) == 0.5
    rng = np.random.default_rng(0)
    same = lesion.c2st_features(rng.normal(size=(80, 6)), rng.normal(size=(80, 6)))
    assert abs(same["auroc"] - 0.5) < 0.12 and abs(same["pooled_auroc"] - 0.5) < 0.12
    b = rng.normal(size=(80, 6))
    b[:, 2] += 4.0
    diff = lesion.c2st_features(rng.normal(size=(80, 6)), b)
    assert diff["auroc"] > 0.97
    assert diff["feature_auroc"][2] < 0.05  # larger in the synthetic sample: below 0.5


def test_cnn_c2st_chance_for_one_distribution_and_near_one_for_another():
    rng = np.random.default_rng(1)
    n = 40
    same = lesion.c2st_cnn(rng.normal(size=(n, 3, 24, 24)), rng.normal(size=(n, 3, 24, 24)), steps=80)
    assert abs(same["auroc"] - 0.5) < 0.2
    yy, xx = np.mgrid[:24, :24]
    blob = ((yy - 11.5) ** 2 + (xx - 11.5) ** 2 < 25).astype(float) * 1.5
    real = rng.normal(size=(n, 3, 24, 24)) + blob
    diff = lesion.c2st_cnn(real, rng.normal(size=(n, 3, 24, 24)), steps=80)
    assert diff["auroc"] > 0.9


def test_margin_counter_and_presence():
    before = np.zeros((21, 21, 21), dtype=np.float32)
    mask = np.zeros(before.shape, dtype=np.uint8)
    mask[10, 10, 10] = 1
    after = before.copy()
    after[10, 10, 10] = 5.0  # inside the mask
    after[10, 10, 12] = 1.0  # 2 voxels away
    after[10, 10, 13] = 1.0  # 3 voxels: still inside the margin
    after[10, 12, 13] = 1.0  # sqrt(13) = 3.6 voxels: outside
    after[0, 0, 0] = 1.0  # far outside
    assert lesion.outside_margin(before, after, mask, 3) == 2
    assert lesion.outside_margin(before, after, mask, 4) == 1
    assert lesion.outside_margin(before, before, mask, 0) == 0
    assert lesion.outside_margin(before, after, np.zeros_like(mask), 3) == 5  # no mask: every change counts
    mask[0, 0, 1] = 3
    assert lesion.requested_present(mask, [1, 2, 3]) == [True, False, True]


def test_end_to_end_controls_and_the_procedural_baseline(cases):
    case = cases["t1"]
    none = lesion.evaluate_setting([case], [lesion.run_method("none", case)], cnn=False)
    assert none["features"]["auroc"] > 0.95 and none["present"] == 0
    proc = lesion.run_method("classic.procedural", case)
    assert proc.outside == 0 and proc.margin == 3 and all(proc.present)
    assert proc.image.shape == case.scan.shape and np.all(proc.image == np.rint(proc.image))
    # nothing outside the lesions' neighbourhood is touched
    far = ndimage.distance_transform_edt(proc.mask == 0) > 3
    assert np.array_equal(proc.image[far], np.asarray(case.twin.data)[far])
    row = lesion.table_row("t1", "classic.procedural", lesion.evaluate_setting([case], [proc], cnn=False))
    assert row.startswith("| t1 | classic.procedural | 12 + 12 |")


def test_run_stores_json_and_report_writes_the_section(tmp_path, monkeypatch):
    from benchmarks import common

    monkeypatch.setattr(lesion, "JSON_PATH", tmp_path / "lesion.json")
    monkeypatch.setattr(common, "RESULTS", tmp_path / "RESULTS.md")
    rows, entries = lesion.run(
        ["t1"],
        ["none", "no.such_family"],
        small=True,
        cnn=False,
        log=lambda *a: None,
        cache_dir=tmp_path / "cache",
    )
    assert list(entries) == ["t1/2mm/none"] and entries["t1/2mm/none"]["requested"] == 2 * N_LESIONS[True]
    assert any("skipped: no family 'no.such_family'" in r for r in rows)
    assert lesion.main(["--report", "--write", "--small", "--settings", "t1", "--methods", "none"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert f"## {lesion.TITLE} (2 mm, --small)" in text and "| t1 | none | 24 + 24 |" in text

"""The harmonization benchmark's own parts: its paired cases at 2 mm and its metrics.

Quick: the 2 mm split is built once into a temporary cache (about 10 s); only what holds for
any sensible generator is asserted (grids, masks, lesion signs, identity below histogram
matching, perfect scores for the truth itself).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks package lives beside tests/

from benchmarks import harmonize
from benchmarks.harmonize_data import HKINDS, TARGETS, benchmark_set, harmonize_lesions, truth_scale


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return benchmark_set(small=True, cache_dir=tmp_path_factory.mktemp("harmonize_cache"))


def test_pairs_share_the_scan_grid(split):
    for case in split["test"] + [split["healthy"]]:
        scan = case.scan
        assert case.brain_mask.shape == scan.shape
        for t in TARGETS:
            truth = case.truth[t]
            assert truth.shape == scan.shape and truth.dtype == np.float32
            assert np.all(np.isfinite(truth)) and truth[case.brain_mask].min() > 0
            assert np.allclose(case.site_b[t].affine, scan.affine)
        data = np.asarray(scan.data)
        assert np.all(data == np.rint(data)) and data.min() >= 0
    assert split["healthy"].lesion_labels.max() == 0


def test_references_are_other_scans_on_other_grids(split):
    test_grids = {(c.scan.shape, tuple(np.round(c.scan.affine[:3, 3], 3))) for c in split["test"]}
    for t in TARGETS:
        refs = split["references"][t]
        assert len(refs) == 5
        for ref in refs:
            assert (ref.shape, tuple(np.round(ref.affine[:3, 3], 3))) not in test_grids
        # per-scan scales of the same order; the truth sits at their median
        scales = [float(r.metadata["harmonize_case"]["intensity_scale"]) for r in refs]
        assert max(scales) / min(scales) < 1.4
        assert truth_scale(t) == pytest.approx(np.median(scales), rel=1e-4)


def test_anatomy_is_the_anomaly_benchmarks(split):
    from benchmarks.anomaly_data import make_subject

    healthy = split["healthy"]
    subject = make_subject(healthy.seed, "t1", None, small=True)
    assert np.array_equal(subject.brain_mask, healthy.brain_mask)


def test_lesions_inside_the_brain_with_the_specified_signs(split):
    n_kinds = dict.fromkeys(HKINDS, 0)
    for case in split["test"]:
        labels = case.lesion_labels
        assert 3 <= labels.max() <= 6 and labels.max() == len(case.lesions)
        assert np.all(case.brain_mask[labels > 0])
        assert [d["kind"] for d in case.lesions] == [s.kind for s in harmonize_lesions(case.seed)]
        for t in TARGETS:
            rows = harmonize.lesion_contrasts(case.truth[t], case.truth[t], case)
            for row in rows:
                n_kinds[row["kind"]] += 1
                c = row["contrast_truth"]
                if t == "t2":  # hyper-/hypointense in the T2 as the kind says
                    assert (c > 0) if row["kind"].endswith("t2hyper") else (c < 0), (case.seed, row)
                elif row["kind"] == "t1hypo_t2hyper":
                    assert c < 0, (case.seed, row)
                elif row["kind"] == "t1hyper_t2hypo":
                    assert c > 0, (case.seed, row)
                assert row["ratio"] == pytest.approx(1.0) and row["kept"]
    assert all(n > 0 for n in n_kinds.values())


def test_the_truth_scores_perfectly(split):
    case = split["test"][0]
    for t in TARGETS:
        r = harmonize.evaluate_case(case.truth[t], case, t)
        assert r["psnr"] == float("inf")
        assert r["ssim"] == pytest.approx(1.0)
        assert r["new_structures"]["count"] == 0
        assert r["data_range"] > 0


def test_histogram_matching_beats_identity_on_another_t1(split):
    outs = {
        m: harmonize.run_method(m, "t1b", split, None, log=lambda *_: None)[0]
        for m in ("identity", "classic.histmatch")
    }
    ident = harmonize.evaluate(outs["identity"], split, "t1b")
    hist = harmonize.evaluate(outs["classic.histmatch"], split, "t1b")
    assert hist["psnr"] > ident["psnr"] + 5.0
    assert hist["ssim"] > ident["ssim"]
    assert hist["lesions_visible"] == ident["lesions_visible"] > 0
    # a smooth error and voxel noise are no new structures; a blob is
    case = split["healthy"]
    truth = case.truth["t1b"]
    grad = np.linspace(0.9, 1.1, truth.shape[0], dtype=np.float32)[:, None, None]
    assert harmonize.new_structures(truth * grad, truth, case)["count"] == 0
    blob = truth.copy()
    centre = np.argwhere(case.wm > 0.9)[len(np.argwhere(case.wm > 0.9)) // 2]
    sl = tuple(slice(int(c) - 2, int(c) + 2) for c in centre)
    blob[sl] += 0.5 * float(np.median(truth[case.wm > 0.9]))
    assert harmonize.new_structures(blob, truth, case)["count"] == 1


def test_a_missing_family_is_skipped(split):
    with pytest.raises(harmonize._Skip):
        harmonize.run_method("medgen.no_such_family:fast", "t1b", split, None)


@pytest.mark.skipif(not Path(harmonize.inorm_python()).exists(), reason="make inorm-env not run")
def test_intensity_normalization_peer_lands_in_reference_units(split):
    refs = split["references"]["t1b"]
    case = split["test"][0]
    outs, secs, peak, _notes, _ = harmonize.run_inorm("zscore", "t1b", [case.scan], refs)
    assert outs[0].shape == case.scan.shape and secs[0] > 0 and peak > 0
    r = harmonize.evaluate_case(outs[0], case, "t1b")
    assert r["psnr"] > harmonize.evaluate_case(np.asarray(case.scan.data), case, "t1b")["psnr"] + 5.0

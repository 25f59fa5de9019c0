"""Candidate regions (napari_medgen.regions): labelling, order, size filter, world centres, CSV."""

from __future__ import annotations

import csv
import io
import time

import numpy as np
import pytest

from napari_medgen.errors import InputError
from napari_medgen.regions import (
    REGION_COLUMNS,
    REGIONS_KEY,
    describe_regions,
    label_regions,
    region_columns,
    regions_csv_bytes,
    regions_metadata,
)
from napari_medgen.volume import Volume


def synthetic():
    """Three blobs on a 2 x 1 x 0.5 mm grid: a big weak one, a small strong one, a tiny hot one."""
    score = np.zeros((20, 30, 40), np.float32)
    score[2:6, 2:8, 2:12] = 4.0  # 240 voxels, peak 4 (one hotter voxel below)
    score[3, 4, 5] = 5.0
    score[10:12, 15:18, 20:24] = 9.0  # 24 voxels, peak 9
    score[18, 28, 38] = 20.0  # one voxel: 1 mm3
    # two voxels that touch only at a corner are one region (26-connectivity)
    score[14, 5, 30] = score[15, 6, 31] = 6.0
    volume = Volume.from_spacing(np.zeros(score.shape), (2.0, 1.0, 0.5), origin=(-10.0, 5.0, 100.0))
    return score, volume


def test_components_are_ordered_by_peak_and_small_ones_dropped():
    score, volume = synthetic()
    labels, regions, n = label_regions(score, volume, 3.0, 0.0)
    assert n == 4 and labels.dtype == np.uint16 and labels.shape == score.shape
    assert [r["peak"] for r in regions] == [20.0, 9.0, 6.0, 5.0]
    assert [r["label"] for r in regions] == [1, 2, 3, 4]
    assert labels[18, 28, 38] == 1 and labels[10, 15, 20] == 2 and labels[14, 5, 30] == labels[15, 6, 31] == 3
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4}
    big = regions[3]
    assert big["voxels"] == 240 and big["volume_mm3"] == pytest.approx(240.0)  # 1 mm3 voxels
    assert big["mean"] == pytest.approx((239 * 4.0 + 5.0) / 240)
    for r in regions:
        assert int((labels == r["label"]).sum()) == r["voxels"]
    # minimum size: the 1 mm3 and 2 mm3 regions go; labels are renumbered by peak
    labels, regions, n = label_regions(score, volume, 3.0, 10.0)
    assert n == 2 and [r["peak"] for r in regions] == [9.0, 5.0]
    assert labels[18, 28, 38] == 0 and labels[10, 15, 20] == 1 and labels[3, 4, 5] == 2
    # a higher threshold keeps only what is above it
    _, regions, n = label_regions(score, volume, 8.0, 0.0)
    assert n == 2 and [r["peak"] for r in regions] == [20.0, 9.0]
    # nothing above: an empty result, not an error
    labels, regions, n = label_regions(score, volume, 50.0, 0.0)
    assert n == 0 and regions == [] and not labels.any()


def test_centres_in_index_and_world_coordinates():
    score, volume = synthetic()
    _, regions, _ = label_regions(score, volume, 3.0, 0.0)
    second = regions[1]
    np.testing.assert_allclose(second["centroid_index"], [10.5, 16.0, 21.5])
    np.testing.assert_allclose(second["centroid_world_mm"], [-10 + 2 * 10.5, 5 + 16.0, 100 + 0.5 * 21.5])
    world = volume.index_to_world(second["centroid_index"])[0]
    np.testing.assert_allclose(second["centroid_world_mm"], world)


def test_max_listed_keeps_the_count_and_the_labels():
    score = np.zeros((5, 5, 40), np.float32)
    score[2, 2, ::2] = np.arange(1, 21, dtype=np.float32) + 10  # 20 separate single voxels
    volume = Volume.from_spacing(np.zeros(score.shape), (1.0, 1.0, 1.0))
    labels, regions, n = label_regions(score, volume, 5.0, 0.0, max_listed=3)
    assert n == 20 and len(regions) == 3 and int(labels.max()) == 20
    assert [r["peak"] for r in regions] == [30.0, 29.0, 28.0]


def test_nan_scores_are_not_candidates_and_shapes_must_match():
    score, volume = synthetic()
    score[0, 0, 0] = np.nan
    labels, _, n = label_regions(score, volume, 3.0, 0.0)
    assert n == 4 and labels[0, 0, 0] == 0
    with pytest.raises(InputError, match="does not match"):
        label_regions(score[:-1], volume, 3.0, 0.0)


def test_describe_existing_labels_matches_label_regions():
    score, volume = synthetic()
    labels, regions, _ = label_regions(score, volume, 3.0, 0.0)
    assert describe_regions(labels, score, volume) == regions


def test_fast_on_a_brain_sized_map():
    rng = np.random.default_rng(0)
    score = np.abs(rng.normal(size=(182, 218, 182))).astype(np.float32)
    volume = Volume.from_spacing(np.zeros((1, 1, 1)), (1.0, 1.0, 1.0))
    volume = Volume(score, volume.affine)
    start = time.perf_counter()
    _, regions, n = label_regions(score, volume, 3.0, 0.0)
    elapsed = time.perf_counter() - start
    assert n > 1000 and len(regions) == 200
    assert elapsed < 3.0, f"{elapsed:.2f} s"


def test_csv_columns_and_rows():
    score, volume = synthetic()
    _, regions, _ = label_regions(score, volume, 3.0, 0.0)
    data = regions_csv_bytes(regions)
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    assert tuple(rows[0]) == REGION_COLUMNS == (
        "label", "volume_mm3", "voxels", "peak", "mean", "centre_index_0", "centre_index_1", "centre_index_2",
        "centre_S_mm", "centre_A_mm", "centre_R_mm",
    )
    assert len(rows) == 4
    second = rows[1]
    assert int(second["label"]) == 2 and int(second["voxels"]) == 24
    assert float(second["volume_mm3"]) == pytest.approx(24.0) and float(second["peak"]) == 9.0
    assert [float(second[f"centre_{a}_mm"]) for a in "SAR"] == pytest.approx([11.0, 21.0, 110.75])
    assert regions_csv_bytes([]) == (",".join(REGION_COLUMNS) + "\n").encode()
    assert region_columns(("z", "y", "x"))[-3:] == ("centre_z_mm", "centre_y_mm", "centre_x_mm")


def test_heatmap_metadata_entry():
    assert REGIONS_KEY == "medgen_regions"
    meta = regions_metadata({"threshold": 3, "min_region_mm3": 10, "score_units": "z-score vs normal tissue"})
    assert meta == {"threshold": 3.0, "min_region_mm3": 10.0, "score": "z-score vs normal tissue"}
    assert regions_metadata({"threshold": 2.5}) == {"threshold": 2.5, "min_region_mm3": 0.0, "score": "score"}
    assert regions_metadata({}) is None and regions_metadata({"threshold": None}) is None

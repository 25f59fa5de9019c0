"""classic.outlier: a bright blob in an otherwise normal scan is the top candidate region."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from napari_medgen import Inputs, RunContext, Volume
from napari_medgen.errors import Cancelled
from napari_medgen.io.phantom import make_phantom

from medgen_classic.anomaly import IntensityOutlier, median_window

BLOB_CENTRE = (24, 32, 40)


def mni_volume(step: int = 2) -> Volume:
    """The MNI152 template shipped in the nilearn wheel, in napari axis order, every ``step`` voxel."""
    import nilearn

    path = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data",
                        "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    img = nib.as_closest_canonical(nib.load(path))
    data = np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0)[::step, ::step, ::step]
    return Volume.from_spacing(np.ascontiguousarray(data), (step,) * 3, origin=img.affine[:3, 3][::-1], name="MNI152")


def with_blob(volume: Volume, centre, radius_vox: float, delta: float) -> Volume:
    grids = np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij")
    r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    data = volume.data.copy()
    data[r2 <= radius_vox**2] += delta
    return volume.with_data(data, name=f"{volume.name} + blob")


@pytest.fixture(scope="module")
def phantom_blob():
    vol, labels = make_phantom((48, 64, 64), noise=0.02, seed=0)
    assert labels[BLOB_CENTRE] == 4  # in white matter
    return with_blob(vol, BLOB_CENTRE, 3.0, 0.4), labels


def run(image, refs=(), ctx=None, **params):
    family = IntensityOutlier()
    return family.run(Inputs(image, references=list(refs)), family.resolve_params(params), ctx or RunContext(seed=0))


def test_blob_is_the_top_region(phantom_blob):
    image, _ = phantom_blob
    result = run(image)
    heat_out, regions_out = result.outputs
    assert heat_out.kind == "heatmap" and regions_out.kind == "labels"
    assert heat_out.display == {}  # the one heatmap display (io.napari_io.heatmap_kwargs) applies
    assert result.info["min_region_mm3"] == 20.0 and "z-score" in result.info["score_units"]
    heat, labels = heat_out.volume.data, regions_out.volume.data
    assert heat.dtype == np.float32 and heat.shape == image.shape
    assert np.array_equal(heat_out.volume.affine, image.affine)
    top = result.info["regions"][0]
    assert top["label"] == 1
    assert np.linalg.norm(np.subtract(top["centroid_index"], BLOB_CENTRE)) < 2.0
    assert np.allclose(top["centroid_world_mm"], image.index_to_world(top["centroid_index"])[0])
    # the top region is the blob's rim (the local median follows the blob inside it)
    grids = np.meshgrid(*[np.arange(n) for n in image.shape], indexing="ij")
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, BLOB_CENTRE)))
    assert dist[labels == 1].max() <= 4.0 and top["voxels"] >= 50
    assert top["peak"] > 2 * result.info["threshold"]
    assert heat.max() == pytest.approx(top["peak"])
    assert top["mean"] == pytest.approx(float(heat[labels == 1].mean()), rel=1e-5)
    # labels 1..K, sorted by decreasing peak, sizes as reported
    peaks = [r["peak"] for r in result.info["regions"]]
    assert peaks == sorted(peaks, reverse=True)
    assert set(np.unique(labels)) == set(range(result.info["n_regions"] + 1))
    for r in result.info["regions"]:
        assert int((labels == r["label"]).sum()) == r["voxels"]
        assert r["volume_mm3"] >= 20.0


def test_heatmap_is_zero_outside_the_head(phantom_blob):
    image, labels = phantom_blob
    heat = run(image).outputs[0].volume.data
    assert np.all(heat[labels == 0] == 0)
    assert np.all(heat >= 0)


def test_without_a_blob_nothing_stands_out_as_much(phantom_blob):
    image, _ = phantom_blob
    clean, _ = make_phantom((48, 64, 64), noise=0.02, seed=0)
    with_blob_peak = run(image).info["regions"][0]["peak"]
    clean_regions = run(clean).info["regions"]
    clean_peak = clean_regions[0]["peak"] if clean_regions else 0.0
    assert with_blob_peak > 1.5 * clean_peak


def test_references_set_the_residual_scale(phantom_blob):
    image, _ = phantom_blob
    normal, _ = make_phantom((40, 60, 56), spacing=(1.2, 1.0, 1.1), noise=0.02, seed=5)
    result = run(image, refs=[normal])
    assert result.info["scale_from"] == "1 reference scan(s)"
    assert np.linalg.norm(np.subtract(result.info["regions"][0]["centroid_index"], BLOB_CENTRE)) < 2.0
    extra_noise = np.random.default_rng(0).normal(0, 0.1, normal.shape).astype(np.float32)
    noisy_ref = normal.with_data(normal.data + extra_noise)
    calmer = run(image, refs=[noisy_ref])
    assert calmer.info["residual_scale"] > 2 * result.info["residual_scale"]
    assert calmer.outputs[0].volume.data.max() < 0.5 * result.outputs[0].volume.data.max()


def test_small_regions_are_dropped(phantom_blob):
    image, _ = phantom_blob
    result = run(image, min_region_mm3=1e5)
    assert result.info["regions"] == [] and result.info["n_regions"] == 0
    assert not result.outputs[1].volume.data.any()


def test_median_window_follows_the_spacing():
    assert median_window(5.0, (1.0, 1.0, 1.0)) == (5, 5, 5)
    assert median_window(5.0, (4.0, 1.0, 0.5)) == (1, 5, 11)
    assert median_window(4.0, (1.0, 2.0, 1.0)) == (5, 3, 5)


def test_read_only_inputs_are_not_modified(phantom_blob):
    image, _ = phantom_blob
    frozen = image.with_data(image.data.copy())
    frozen.data.setflags(write=False)
    ref, _ = make_phantom((32, 40, 40), noise=0.02, seed=3)
    ref_before = ref.data.copy()
    ref.data.setflags(write=False)
    run(frozen, refs=[ref])
    assert np.array_equal(frozen.data, image.data) and np.array_equal(ref.data, ref_before)


def test_cancel_before_and_during_the_run(phantom_blob):
    image, _ = phantom_blob
    ctx = RunContext(seed=0)
    ctx.cancel()
    with pytest.raises(Cancelled):
        run(image, ctx=ctx)
    calls = []

    def progress(done, total, message):
        calls.append(message)
        ctx.cancel()

    ctx = RunContext(seed=0, progress=progress)
    with pytest.raises(Cancelled):
        run(image, ctx=ctx)
    assert len(calls) == 1


def test_mni152_blob_in_white_matter_is_found():
    mni = mni_volume(2)
    centre = (40, 70, 36)  # right hemisphere white matter at 2 mm
    assert mni.data[centre] > 180
    # The template is an average: noise-free, so its sharp CSF/grey-matter edges score z ~ 15
    # with a 9 mm window. A small (3 mm) hyperintense lesion, like an enhancing one, tops them.
    image = with_blob(mni, centre, 1.5, 300.0)
    result = run(image, median_mm=9.0)
    top = result.info["regions"][0]
    assert np.linalg.norm(np.subtract(top["centroid_index"], centre)) < 2.0
    outside = ndimage.distance_transform_edt(mni.data == 0) > 3  # clearly outside the brain
    assert result.outputs[0].volume.data[outside].max() == 0

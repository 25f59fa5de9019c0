"""classic.histmatch / classic.nyul: the harmonized histogram matches the reference's."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from napari_medgen import Inputs, RunContext, Volume
from napari_medgen.errors import Cancelled, InputError, ParamError
from napari_medgen.io.phantom import make_phantom

from medgen_classic.harmonize import HistogramMatching, NyulStandardisation, parse_landmarks

FAMILIES = [HistogramMatching(), NyulStandardisation()]
IDS = ["histmatch", "nyul"]


def mni_volume(step: int = 2) -> Volume:
    """The MNI152 template shipped in the nilearn wheel, in napari axis order, every ``step`` voxel."""
    import nilearn

    path = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data",
                        "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    img = nib.as_closest_canonical(nib.load(path))
    data = np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0)[::step, ::step, ::step]
    return Volume.from_spacing(np.ascontiguousarray(data), (step,) * 3, origin=img.affine[:3, 3][::-1], name="MNI152")


@pytest.fixture(scope="module")
def scans():
    """A 'site A' scan (nonlinear gain) and a 'site B' reference on another grid, with tissue labels."""
    vol, labels = make_phantom((40, 56, 56), noise=0.02, seed=1)
    site_a = vol.with_data((vol.data**1.5) * 300.0 + 20.0, name="site A")
    ref, ref_labels = make_phantom((36, 60, 52), spacing=(1.2, 1.0, 1.1), noise=0.02, seed=2, name="site B")
    return site_a, labels, ref, ref_labels


def tissue_w1(out: np.ndarray, labels: np.ndarray, ref: Volume, ref_labels: np.ndarray) -> float:
    return wasserstein_distance(out[labels >= 3], ref.data[ref_labels >= 3])  # grey + white matter


def run(family, image, refs, mask=None, ctx=None, **params):
    return family.run(Inputs(image, references=list(refs), mask=mask), family.resolve_params(params),
                      ctx or RunContext(seed=0))


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_histogram_moves_onto_the_reference(family, scans):
    site_a, labels, ref, ref_labels = scans
    before = tissue_w1(site_a.data, labels, ref, ref_labels)
    result = run(family, site_a, [ref])
    out = result.primary.volume
    after = tissue_w1(out.data, labels, ref, ref_labels)
    assert after < 0.001 * before, (before, after)
    assert after < 0.05 * float(np.ptp(ref.data))
    assert out.shape == site_a.shape and np.array_equal(out.affine, site_a.affine)
    assert out.data.dtype == np.float32
    assert out.name == f"site A (harmonized: {family.method})"
    assert "landmarks" in result.info and result.info["n_references"] == 1


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_map_is_monotone_over_the_whole_volume(family, scans):
    site_a, labels, ref, _ = scans
    out = run(family, site_a, [ref]).primary.volume.data
    order = np.argsort(site_a.data.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(np.float64)) >= -1e-4)
    # background and tissue stay consistent: no tissue voxel darker than the background
    assert out[labels >= 3].min() > out[labels == 0].max()


def test_histmatch_background_goes_to_the_reference_background(scans):
    site_a, labels, ref, ref_labels = scans
    out = run(HistogramMatching(), site_a, [ref]).primary.volume.data
    assert abs(float(np.median(out[labels == 0])) - float(np.median(ref.data[ref_labels == 0]))) < 0.05


def test_several_references_are_pooled(scans):
    site_a, labels, ref, ref_labels = scans
    bright = ref.with_data(ref.data * 2.0, name="bright")
    single = run(HistogramMatching(), site_a, [ref]).primary.volume.data
    pooled = run(HistogramMatching(), site_a, [ref, bright]).primary.volume.data
    m_single, m_pooled = np.median(single[labels >= 3]), np.median(pooled[labels >= 3])
    assert m_single * 1.1 < m_pooled < 2.0 * m_single
    nyul = run(NyulStandardisation(), site_a, [ref, bright])
    assert nyul.info["n_references"] == 2
    assert nyul.info["landmarks"]["s2"] == pytest.approx(1.5 * np.percentile(
        ref.data[ref_labels >= 3], 99), rel=0.1)


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_given_mask_is_used_and_checked(family, scans):
    site_a, labels, ref, _ = scans
    mask = site_a.with_data((labels >= 2).astype(np.uint8), name="tissue")
    result = run(family, site_a, [ref], mask=mask)
    assert result.info["mask"] == "given mask"
    assert result.info["foreground_voxels"] == int((labels >= 2).sum())
    with pytest.raises(InputError, match="mask is empty"):
        run(family, site_a, [ref], mask=mask.with_data(np.zeros_like(labels)))
    with pytest.raises(InputError, match="grid"):
        run(family, site_a, [ref], mask=Volume.from_spacing(np.ones((4, 4, 4), np.uint8)))


def test_nyul_landmarks_parameter():
    assert list(parse_landmarks("1, 50,99")) == [1.0, 50.0, 99.0]
    for bad in ("1,99", "10,5,90", "a,b,c", "0,50,101", "-1,50,99"):
        with pytest.raises(ParamError, match="landmarks"):
            parse_landmarks(bad)


def test_nyul_info_lists_the_landmarks(scans):
    site_a, _, ref, _ = scans
    info = run(NyulStandardisation(), site_a, [ref], landmarks="2,25,50,75,98").info["landmarks"]
    assert info["percentiles"] == [2.0, 25.0, 50.0, 75.0, 98.0]
    assert len(info["input"]) == len(info["standard_scale"]) == 5
    assert np.all(np.diff(info["standard_scale"]) > 0)


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_read_only_inputs_are_not_modified(family, scans):
    site_a, labels, ref, _ = scans
    image = site_a.with_data(site_a.data.copy())
    reference = ref.with_data(ref.data.copy())
    mask = site_a.with_data((labels >= 2).astype(np.uint8))
    for v in (image, reference, mask):
        v.data.setflags(write=False)
    run(family, image, [reference], mask=mask)
    assert np.array_equal(image.data, site_a.data) and np.array_equal(reference.data, ref.data)


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_cancel_raises(family, scans):
    site_a, _, ref, _ = scans
    ctx = RunContext(seed=0)
    ctx.cancel()
    with pytest.raises(Cancelled):
        run(family, site_a, [ref], ctx=ctx)
    seen = []

    def progress(done, total, message):
        seen.append(message)
        ctx.cancel()

    ctx = RunContext(seed=0, progress=progress)
    with pytest.raises(Cancelled):
        run(family, site_a, [ref], ctx=ctx)
    assert len(seen) == 1


def test_mni152_site_difference_is_removed():
    ref = mni_volume(2)
    # another "site": a different sampling of the template with a nonlinear scanner gain
    src_data = mni_volume(1).data[1::2, 1::2, 1::2]
    site = Volume.from_spacing(np.sqrt(src_data) * 40.0 + 5.0, (2, 2, 2), name="site")
    fg_src, fg_ref = src_data > 20, ref.data > 20
    before = wasserstein_distance(site.data[fg_src], ref.data[fg_ref])
    for family in FAMILIES:
        out = run(family, site, [ref]).primary.volume.data
        after = wasserstein_distance(out[fg_src], ref.data[fg_ref])
        assert after < 0.1 * before, (family.id, before, after)

"""classic.procedural: lesions where asked, reproducible, with exact masks and the scan's noise."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from napari_medgen import Inputs, RunContext, Volume
from napari_medgen.errors import Cancelled, InputError, ParamError
from napari_medgen.io.phantom import make_phantom

from medgen_classic.lesion import ProceduralLesion, estimate_noise_sigma
from napari_medgen.masks import foreground_mask

NOISE = 0.02


def mni_volume(step: int = 2) -> Volume:
    """The MNI152 template shipped in the nilearn wheel, in napari axis order, every ``step`` voxel."""
    import nilearn

    path = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data",
                        "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    img = nib.as_closest_canonical(nib.load(path))
    data = np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0)[::step, ::step, ::step]
    return Volume.from_spacing(np.ascontiguousarray(data), (step,) * 3, origin=img.affine[:3, 3][::-1], name="MNI152")


@pytest.fixture(scope="module")
def head():
    return make_phantom((48, 64, 64), noise=NOISE, seed=0)


def run(image, points=None, mask=None, seed=0, ctx=None, **params):
    family = ProceduralLesion()
    ctx = ctx or RunContext(seed=seed)
    return family.run(Inputs(image, points=points, mask=mask), family.resolve_params(params), ctx)


def test_same_seed_same_lesions_different_seed_different(head):
    vol, _ = head
    a, b, c = run(vol, seed=7), run(vol, seed=7), run(vol, seed=8)
    assert np.array_equal(a.outputs[0].volume.data, b.outputs[0].volume.data)
    assert np.array_equal(a.outputs[1].volume.data, b.outputs[1].volume.data)
    assert not np.array_equal(a.outputs[1].volume.data, c.outputs[1].volume.data)
    assert [r["centre_index"] for r in a.info["lesions"]] != [r["centre_index"] for r in c.info["lesions"]]


def test_outputs_geometry_and_labels(head):
    vol, _ = head
    result = run(vol, n_lesions=4)
    image_out, mask_out = result.outputs
    assert image_out.kind == "image" and mask_out.kind == "labels"
    assert image_out.volume.data.dtype == np.float32 and mask_out.volume.data.dtype == np.uint16
    for out in (image_out.volume, mask_out.volume):
        assert out.shape == vol.shape and np.array_equal(out.affine, vol.affine)
    assert image_out.volume.name == "phantom (lesions)"
    assert len(result.info["lesions"]) == 4 and result.info["placement"] == "random"
    labels = mask_out.volume.data
    for rec in result.info["lesions"]:
        assert rec["voxels"] == int((labels == rec["label"]).sum())
        assert np.allclose(rec["centre_world_mm"], vol.index_to_world(rec["centre_index"])[0])
        assert 0.7 * 8.0 * 0.65 <= rec["diameter_mm"] <= 8.0 * 1.3 + 1e-9
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4}


def test_random_lesions_sit_in_tissue(head):
    vol, _ = head
    fg = foreground_mask(vol.data, vol.spacing)
    result = run(vol, n_lesions=6, seed=3)
    for rec in result.info["lesions"]:
        assert fg[tuple(int(round(v)) for v in rec["centre_index"])]
    assert fg[result.outputs[1].volume.data > 0].mean() > 0.95


def test_mask_marks_exactly_the_changed_voxels(head):
    vol, _ = head
    result = run(vol, n_lesions=3, edge_mm=0.0, contrast=1.0, seed=1)
    diff = np.abs(result.outputs[0].volume.data - vol.data)
    labels = result.outputs[1].volume.data
    assert np.all(diff[labels == 0] == 0)  # hard edge: nothing changes outside the mask
    changed = diff > 3 * NOISE
    assert changed[labels > 0].mean() > 0.97
    # with a soft edge, changes outside the mask stay within the edge band
    soft = run(vol, n_lesions=3, edge_mm=2.0, contrast=1.0, seed=1)
    soft_labels = soft.outputs[1].volume.data
    moved = np.abs(soft.outputs[0].volume.data - vol.data) > 0
    band = ndimage.distance_transform_edt(soft_labels == 0, sampling=vol.spacing) <= 1.0 + 1.0
    assert np.all(band[moved])


def test_lesions_at_clicked_points_contain_them(head):
    vol, _ = head
    points = np.array([[24.2, 30.0, 20.6], [20.0, 40.0, 44.0]])
    result = run(vol, points=points, diameter_mm=6.0)
    labels = result.outputs[1].volume.data
    assert result.info["placement"] == "points" and len(result.info["lesions"]) == 2
    for i, p in enumerate(points):
        assert labels[tuple(np.round(p).astype(int))] == i + 1
        assert np.allclose(result.info["lesions"][i]["centre_index"], p)


def test_contrast_is_relative_to_local_tissue(head):
    vol, _ = head
    point = np.array([[24.0, 32.0, 32.0]])
    for contrast in (0.6, -0.5):
        result = run(vol, points=point, contrast=contrast, irregularity=0.0, diameter_mm=10.0, edge_mm=0.0)
        rec = result.info["lesions"][0]
        inside = result.outputs[0].volume.data[result.outputs[1].volume.data == 1]
        assert np.median(inside) == pytest.approx(rec["tissue_level"] * (1 + contrast), rel=0.05)
        assert rec["target_intensity"] == pytest.approx(rec["tissue_level"] * (1 + contrast))


def test_lesion_carries_the_scans_noise(head):
    vol, _ = head
    sigma = estimate_noise_sigma(vol.data, foreground_mask(vol.data, vol.spacing))
    assert sigma == pytest.approx(NOISE, rel=0.25)
    result = run(vol, points=np.array([[24.0, 32.0, 32.0]]), irregularity=0.0, diameter_mm=12.0, edge_mm=0.0)
    core = ndimage.binary_erosion(result.outputs[1].volume.data == 1, iterations=1)
    inside = result.outputs[0].volume.data[core]
    assert np.std(inside) == pytest.approx(NOISE, rel=0.35)


def test_mask_placement(head):
    vol, labels = head
    region = np.zeros(vol.shape, dtype=np.uint8)
    region[20:28, 10:20, 28:36] = 1
    result = run(vol, mask=vol.with_data(region), n_lesions=5)
    assert result.info["placement"] == "mask" and len(result.info["lesions"]) == 5
    for rec in result.info["lesions"]:
        assert region[tuple(int(round(v)) for v in rec["centre_index"])]
    with pytest.raises(InputError, match="mask is empty"):
        run(vol, mask=vol.with_data(np.zeros_like(region)))
    with pytest.raises(InputError, match="needs a mask"):
        run(vol, placement="mask")


def test_clear_errors_for_points(head):
    vol, _ = head
    with pytest.raises(InputError, match="needs at least one point"):
        run(vol, placement="points")
    with pytest.raises(InputError, match=r"point 2 at index \(60\.0, 10\.0, 10\.0\) lies outside"):
        run(vol, points=np.array([[10.0, 10.0, 10.0], [60.0, 10.0, 10.0]]))
    with pytest.raises(ParamError):
        ProceduralLesion().resolve_params({"contrast": 5.0})
    with pytest.raises(ParamError):
        ProceduralLesion().resolve_params({"placement": "anywhere"})


def test_read_only_inputs_are_not_modified(head):
    vol, _ = head
    image = vol.with_data(vol.data.copy())
    image.data.setflags(write=False)
    points = np.array([[24.0, 32.0, 32.0]])
    points.setflags(write=False)
    region = np.zeros(vol.shape, dtype=np.uint8)
    region[20:28, 20:40, 20:40] = 1
    region.setflags(write=False)
    run(image, points=points, mask=vol.with_data(region))
    run(image, mask=vol.with_data(region))
    assert np.array_equal(image.data, vol.data)
    assert points.tolist() == [[24.0, 32.0, 32.0]] and region.sum() == 8 * 20 * 20


def test_cancel(head):
    vol, _ = head
    ctx = RunContext(seed=0)
    ctx.cancel()
    with pytest.raises(Cancelled):
        run(vol, ctx=ctx)
    seen = []

    def progress(done, total, message):
        seen.append(message)
        if message.startswith("lesion 1"):
            ctx.cancel()

    ctx = RunContext(seed=0, progress=progress)
    with pytest.raises(Cancelled):
        run(vol, ctx=ctx, n_lesions=5)
    assert not any(m.startswith("lesion 3") for m in seen)


def test_mni152_lesions_in_the_brain():
    mni = mni_volume(2)
    result = run(mni, n_lesions=3, diameter_mm=10.0, seed=4)
    labels = result.outputs[1].volume.data
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    brain = mni.data > 20
    for rec in result.info["lesions"]:
        assert brain[tuple(int(round(v)) for v in rec["centre_index"])]
        assert rec["volume_mm3"] > 50
        assert 50 < rec["tissue_level"] < 255
    out = result.outputs[0].volume.data
    assert np.mean(out[labels > 0]) > 1.3 * np.mean(mni.data[labels > 0])
    away = ndimage.distance_transform_edt(labels == 0, sampling=mni.spacing) > 3.0
    assert np.array_equal(out[away], mni.data[away])

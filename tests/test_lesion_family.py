"""medgen.lesion_diffusion: lesions where asked, with exact masks, the scan's noise, and nothing else touched."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy import ndimage

from napari_medgen import Inputs, Volume
from napari_medgen.acquisition import noise_sigma
from napari_medgen.errors import Cancelled, InputError
from napari_medgen.families.lesion_diffusion import DiffusionLesion
from napari_medgen.io.phantom import PHANTOM_LABELS, make_phantom
from napari_medgen.runner import run_family

FAMILY = DiffusionLesion()


def run(image, points=None, mask=None, seed=0, **params):
    params.setdefault("texture", "none")
    return run_family(FAMILY, Inputs(image, points=points, mask=mask), params, seed=seed)


def _rotated(vol: Volume, degrees: float) -> Volume:
    a = np.deg2rad(degrees)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    aff = vol.affine.copy()
    aff[:3, :3] = rot @ aff[:3, :3]
    return Volume(vol.data, aff, vol.name)


@pytest.fixture(scope="module")
def head():
    vol, labels = make_phantom((40, 64, 64), noise=0.02, seed=0)
    return vol.with_data((vol.data * 1000).astype(np.float32)), labels


def _outside_margin_changes(vol, res):
    out = res.outputs[0].volume.data
    lab = res.outputs[1].volume.data
    zone = ndimage.binary_dilation(lab > 0, iterations=res.info["margin_voxels"])
    return int(((out != vol.data) & ~zone).sum())


@pytest.mark.parametrize("geometry", ["iso", "anisotropic", "oblique"])
def test_only_voxels_near_the_mask_change_and_every_lesion_is_labelled(head, geometry):
    vol, _ = head
    if geometry == "anisotropic":
        vol, _ = make_phantom((20, 64, 64), spacing=(2.0, 1.0, 1.0), noise=0.02, seed=1)
        vol = vol.with_data((vol.data * 1000).astype(np.float32))
    elif geometry == "oblique":
        vol = _rotated(vol, 25.0)
    before = vol.data.copy()
    res = run(vol, n_lesions=4, diameter_min_mm=4.0, diameter_max_mm=8.0, seed=3)
    assert np.array_equal(vol.data, before)  # the input is never modified
    out, lab = res.outputs[0].volume, res.outputs[1].volume
    assert out.shape == vol.shape and np.array_equal(out.affine, vol.affine)
    assert lab.data.dtype == np.uint16 and set(np.unique(lab.data)) == {0, 1, 2, 3, 4}
    assert _outside_margin_changes(vol, res) == 0
    assert 1 <= res.info["margin_voxels"] <= 3
    for rec in res.info["lesions"]:
        m = lab.data == rec["label"]
        assert rec["voxels"] == int(m.sum()) > 0
        assert m[tuple(np.round(rec["centre_index"]).astype(int))]
        # a T1-like phantom: an MS plaque is darker than the white matter around it
        assert out.data[m].mean() < rec["local_tissue"]


def test_lesions_sit_in_white_matter_apart_from_each_other(head):
    vol, labels = head
    res = run(vol, n_lesions=5, diameter_min_mm=4.0, diameter_max_mm=6.0, seed=1)
    lab = res.outputs[1].volume.data
    for rec in res.info["lesions"]:
        c = tuple(np.round(rec["centre_index"]).astype(int))
        assert labels[c] == PHANTOM_LABELS["white"]
    # not overlapping: each label is one connected piece
    for k in range(1, 6):
        assert ndimage.label(lab == k)[1] == 1


def test_reproducible_from_the_seed(head):
    vol, _ = head
    a, b, c = (run(vol, n_lesions=3, diameter_min_mm=4.0, diameter_max_mm=6.0, seed=s) for s in (7, 7, 8))
    assert np.array_equal(a.outputs[0].volume.data, b.outputs[0].volume.data)
    assert np.array_equal(a.outputs[1].volume.data, b.outputs[1].volume.data)
    assert not np.array_equal(a.outputs[1].volume.data, c.outputs[1].volume.data)


def test_the_scan_noise_is_kept_inside_lesions():
    vol, labels = make_phantom((48, 72, 72), noise=0.03, seed=2)
    vol = vol.with_data((vol.data * 1000).astype(np.float32))
    res = run(vol, n_lesions=3, diameter_min_mm=10.0, diameter_max_mm=12.0, contrast_jitter=0.0, seed=2)
    lab = res.outputs[1].volume.data
    inner = ndimage.binary_erosion(lab > 0, iterations=2)
    assert inner.sum() > 200
    scan = noise_sigma(vol.data, labels == PHANTOM_LABELS["white"])
    inside = noise_sigma(res.outputs[0].volume.data, inner)
    assert inside == pytest.approx(scan, rel=0.25)


def test_tumour_has_core_rim_and_oedema_labels(head):
    vol, _ = head
    res = run(vol, lesion_type="tumour", n_lesions=1, diameter_min_mm=11.0, diameter_max_mm=12.0, seed=4)
    names = [o.name for o in res.outputs]
    assert names == ["image", "mask", "compartments"]
    comps = res.outputs[2].volume.data
    lab = res.outputs[1].volume.data
    assert set(np.unique(comps[lab > 0])) == {1, 2, 3}
    assert not (comps[lab == 0]).any()
    rec = res.info["lesions"][0]
    assert all(v > 0 for v in rec["compartment_voxels"])
    assert _outside_margin_changes(vol, res) == 0


def _ct_chest(shape=(32, 64, 64)) -> Volume:
    """A body of soft tissue (40 HU) with two lungs (-850 HU) in air (-1000 HU), noise 15 HU."""
    z, y, x = np.indices(shape).astype(float)
    c = (np.asarray(shape) - 1) / 2.0
    body = ((y - c[1]) / 28) ** 2 + ((x - c[2]) / 30) ** 2 <= 1.0
    lungs = np.zeros(shape, bool)
    for side in (-1, 1):
        lungs |= ((y - c[1]) / 18) ** 2 + ((x - c[2] - side * 14) / 11) ** 2 + ((z - c[0]) / 14) ** 2 <= 1.0
    img = np.where(body, 40.0, -1000.0)
    img[lungs & body] = -850.0
    img += np.random.default_rng(0).normal(0, 15, shape)
    return Volume.from_spacing(img.astype(np.float32), (1.0, 1.0, 1.0), name="chest")


@pytest.mark.parametrize("kind", ["nodule-solid", "nodule-ground-glass"])
def test_lung_nodules_on_ct(kind):
    vol = _ct_chest()
    res = run(vol, lesion_type=kind, n_lesions=2, diameter_min_mm=6.0, diameter_max_mm=8.0, seed=5)
    out, lab = res.outputs[0].volume.data, res.outputs[1].volume.data
    assert _outside_margin_changes(vol, res) == 0
    inner = ndimage.binary_erosion(lab > 0)
    mean = float(out[inner].mean())
    assert (-100 < mean < 150) if kind == "nodule-solid" else (-750 < mean < -300)
    for rec in res.info["lesions"]:
        assert vol.data[tuple(np.round(rec["centre_index"]).astype(int))] < -500  # in the lung


def test_given_masks_are_rendered_exactly(head):
    vol, _ = head
    shapes = np.zeros(vol.shape, np.uint8)
    shapes[18:23, 28:33, 28:33] = 1
    shapes[18:22, 38:42, 30:34] = 2
    res = run(vol, mask=vol.with_data(shapes), placement="masks", contrast=2.0, contrast_jitter=0.0)
    lab = res.outputs[1].volume.data
    assert np.array_equal(lab > 0, shapes > 0)
    assert _outside_margin_changes(vol, res) == 0


@pytest.mark.parametrize(
    "case, message",
    [
        ("point_outside_volume", "outside the image"),
        ("point_outside_tissue", "not in the"),
        ("too_large", "larger than"),
        ("too_many", "holds only"),
        ("ct_preset_on_mr", "is for CT"),
        ("mr_preset_on_ct", "looks like CT"),
        ("thick_slices", "thinner than this scan's"),
    ],
)
def test_bad_input_gives_a_clear_message_and_changes_nothing(head, case, message):
    vol, _ = head
    points, params = None, {}
    if case == "point_outside_volume":
        points = np.array([[100.0, 5.0, 5.0]])
    elif case == "point_outside_tissue":
        points = np.array([[1.0, 1.0, 1.0]])
    elif case == "too_large":
        params = {"diameter_min_mm": 120.0, "diameter_max_mm": 130.0}
    elif case == "too_many":
        params = {"n_lesions": 200, "diameter_min_mm": 12.0, "diameter_max_mm": 14.0}
    elif case == "ct_preset_on_mr":
        params = {"lesion_type": "nodule-solid"}
    elif case == "mr_preset_on_ct":
        vol = _ct_chest()
    elif case == "thick_slices":
        vol, _ = make_phantom((10, 64, 64), spacing=(5.0, 1.0, 1.0), seed=3)
        params = {"diameter_min_mm": 3.0}
    before = vol.data.copy()
    with pytest.raises(InputError, match=message):
        run(vol, points=points, **params)
    assert np.array_equal(vol.data, before)


def test_cancel_stops_the_run(head):
    vol, _ = head
    event = threading.Event()

    def progress(done, total, message):
        if message.startswith("lesion"):
            event.set()

    with pytest.raises(Cancelled):
        run_family(FAMILY, Inputs(vol), {"texture": "none", "n_lesions": 3, "diameter_min_mm": 4.0,
                                         "diameter_max_mm": 6.0}, progress=progress, cancel_event=event)


def test_diffusion_texture_trains_saves_and_reuses(head, tmp_path):
    vol, _ = head
    params = dict(texture="diffusion", max_steps=3, n_lesions=2, diameter_min_mm=5.0, diameter_max_mm=7.0,
                  contrast_jitter=0.0)
    model = tmp_path / "texture.safetensors"
    res = run(vol, seed=1, save_model=str(model), **params)
    assert model.exists() and res.info["texture_model"]["steps"] == 3
    assert _outside_margin_changes(vol, res) == 0
    lab = res.outputs[1].volume.data
    delta = res.outputs[0].volume.data - vol.data
    assert delta[lab > 0].mean() < 0  # the requested (dark) contrast is kept through the edit
    again = run(vol, seed=1, model_file=str(model), **params)
    assert "loaded_from" in again.info["texture_model"]
    assert np.array_equal(again.outputs[1].volume.data, lab)


def test_relative_contrast_sets_the_lesion_level_against_the_white_matter(head):
    vol, _ = head
    res = run(vol, n_lesions=2, diameter_min_mm=10.0, diameter_max_mm=11.0, relative_contrast=0.5,
              contrast_jitter=0.0, seed=6)
    lab = res.outputs[1].volume.data
    inner = ndimage.binary_erosion(lab > 0, iterations=2)
    for rec in res.info["lesions"]:
        assert rec["intensity"] == pytest.approx(1.5 * rec["local_tissue"], rel=1e-6)
        m = inner & (lab == rec["label"])
        assert res.outputs[0].volume.data[m].mean() == pytest.approx(rec["intensity"], rel=0.08)



def test_tissue_texture_stays_inside_the_margin_and_keeps_the_contrast(head):
    vol, _ = head
    plain = run(vol, n_lesions=3, diameter_min_mm=8.0, diameter_max_mm=9.0, contrast_jitter=0.0, seed=2)
    tex = run(vol, n_lesions=3, diameter_min_mm=8.0, diameter_max_mm=9.0, contrast_jitter=0.0, seed=2,
              texture="tissue")
    assert tex.info["tissue_texture"] > 0 and _outside_margin_changes(vol, tex) == 0
    lab = tex.outputs[1].volume.data
    assert np.array_equal(lab, plain.outputs[1].volume.data)
    a, b = plain.outputs[0].volume.data[lab > 0], tex.outputs[0].volume.data[lab > 0]
    assert not np.array_equal(a, b)
    assert b.mean() == pytest.approx(a.mean(), rel=0.03)

"""Sample data (MNI152 from nilearn's package files) and the thick-slice simulator."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from napari_medgen.errors import InputError, ParamError
from napari_medgen.io import sample
from napari_medgen.io.sample import load_mni152, mni152_path, sample_brain, sample_thick_brain, simulate_thick_slices
from napari_medgen.volume import Volume


def test_mni152_files_are_found_offline():
    for kind in ("t1", "gm", "wm", "T1"):
        assert mni152_path(kind).is_file()
    with pytest.raises(InputError, match="unknown MNI152 template"):
        mni152_path("flair")


def test_missing_nilearn_gives_clear_message(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(sample.importlib.util, "find_spec", lambda name, *a: None if name == "nilearn" else real(name, *a))
    with pytest.raises(InputError, match="nilearn"):
        mni152_path("t1")


def test_sample_layers_shapes_spacing_and_bounds():
    (data, kwargs, kind), = sample_brain()
    assert kind == "image" and kwargs["name"] == "MNI152 T1"
    assert data.shape == (189, 233, 197) and data.dtype == np.float32  # (S, A, R)
    assert 0.0 <= data.min() and data.max() <= 1.0
    np.testing.assert_allclose(kwargs["scale"], (1.0, 1.0, 1.0))
    np.testing.assert_allclose(kwargs["translate"], (-72.0, -134.0, -98.0))  # MNI origin, reversed

    (tdata, tkwargs, tkind), = sample_thick_brain()
    assert tkind == "image" and tkwargs["name"] == "MNI152 T1 4mm"
    assert tdata.shape == (47, 233, 197)
    np.testing.assert_allclose(tkwargs["scale"], (4.0, 1.0, 1.0))
    fine = Volume.from_spacing(data, kwargs["scale"], kwargs["translate"])
    thick = Volume.from_spacing(tdata, tkwargs["scale"], tkwargs["translate"])
    # world boxes agree within half an output voxel
    diff = np.abs(thick.world_bounds() - fine.world_bounds())
    assert np.all(diff[:, 0] <= 2.0) and np.allclose(diff[:, 1:], 0.0)
    assert tkwargs["metadata"]["simulated_thick_slices"]["slice_mm"] == 4.0
    # the thick brain is a blurred, not a shifted, copy: its slice matches the fine slab around it
    centre_world = thick.index_to_world([[23, 0, 0]])[0, 0]
    fine_index = int(round(fine.world_to_index([[centre_world, 0, 0]])[0, 0]))
    corr = np.corrcoef(tdata[23].ravel(), data[fine_index].ravel())[0, 1]
    assert corr > 0.95


def test_load_mni152_gm_is_a_probability_map():
    gm = load_mni152("gm")
    assert gm.name == "MNI152 GM" and gm.data.dtype == np.float32
    assert gm.data.min() == 0.0 and gm.data.max() == pytest.approx(1.0)


def slab_volume(n=40, spacing=(1.0, 1.0, 1.0)):
    data = np.zeros((n, 4, 5), np.float32)
    data[21:23] = 1.0  # a 2 mm slab centred on index 21.5
    return Volume.from_spacing(data, spacing, origin=(10.0, -3.0, 2.0), name="slab")


def test_thick_slices_geometry_and_profile_centre():
    vol = slab_volume()
    before = vol.data.copy()
    thick = simulate_thick_slices(vol, slice_mm=4.0)
    np.testing.assert_array_equal(vol.data, before)  # input not modified
    assert thick.shape == (10, 4, 5) and thick.data.dtype == np.float32
    np.testing.assert_allclose(thick.spacing, (4.0, 1.0, 1.0))
    np.testing.assert_allclose(thick.world_bounds(), vol.world_bounds(), atol=1e-9)
    # slice 5 is centred at input index 21.5 (the slab centre): highest, with symmetric neighbours
    centre = vol.world_to_index(thick.index_to_world([[5, 0, 0]]))[0, 0]
    assert centre == pytest.approx(21.5)
    profile = thick.data[:, 2, 2]
    assert int(np.argmax(profile)) == 5
    assert profile[4] == pytest.approx(profile[6], rel=1e-5)
    assert profile[4] < profile[5] and profile[0] < 1e-3
    assert thick.name == "slab 4mm"
    assert thick.metadata["simulated_thick_slices"]["fwhm_mm"] == 4.0


def test_thick_slices_without_blur_samples_the_centres():
    data = np.random.default_rng(0).random((30, 3, 3)).astype(np.float32)
    vol = Volume.from_spacing(data, (1.0, 1.0, 1.0))
    thick = simulate_thick_slices(vol, slice_mm=3.0, fwhm_mm=0.0)
    np.testing.assert_allclose(thick.data, data[1::3], atol=1e-6)  # centres of 3-voxel blocks


def test_thick_slices_with_gap_and_other_axis():
    vol = slab_volume(spacing=(1.0, 0.5, 0.5))
    thick = simulate_thick_slices(vol, slice_mm=3.0, gap_mm=1.0, axis=0)
    np.testing.assert_allclose(thick.spacing, (4.0, 0.5, 0.5))
    assert thick.metadata["simulated_thick_slices"]["fwhm_mm"] == 3.0
    side = Volume.from_spacing(np.ones((6, 7, 40), np.float32), (1.0, 1.0, 0.5))
    thick2 = simulate_thick_slices(side, slice_mm=2.0, axis=2)
    assert thick2.shape == (6, 7, 10)
    np.testing.assert_allclose(thick2.spacing, (1.0, 1.0, 2.0))
    np.testing.assert_allclose(thick2.data, 1.0, atol=1e-6)  # a flat image stays flat


def test_thick_slices_keep_oblique_direction():
    t = np.deg2rad(10)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    vol = Volume(np.ones((20, 6, 6), np.float32), affine)
    thick = simulate_thick_slices(vol, slice_mm=5.0)
    np.testing.assert_allclose(thick.direction, vol.direction, atol=1e-9)
    np.testing.assert_allclose(thick.world_bounds(), vol.world_bounds(), atol=1e-9)


def test_thick_slices_bad_arguments():
    vol = slab_volume()
    with pytest.raises(ParamError, match="thickness"):
        simulate_thick_slices(vol, slice_mm=0)
    with pytest.raises(ParamError, match="gap"):
        simulate_thick_slices(vol, slice_mm=2, gap_mm=-1)
    with pytest.raises(ParamError, match="axis"):
        simulate_thick_slices(vol, slice_mm=2, axis=3)
    with pytest.raises(InputError, match="3D"):
        simulate_thick_slices(Volume(np.zeros((4, 4), np.float32)), slice_mm=2)

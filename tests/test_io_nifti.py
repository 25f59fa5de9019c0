"""NIfTI reader/writer: orientation convention, exact round trips, dtypes, coordinates."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_medgen.errors import InputError
from napari_medgen.io.nifti import (
    nifti_ijk_to_index,
    read_nifti,
    world_xyz_to_index,
    write_nifti,
)
from napari_medgen.volume import Volume, resample_geometry

ZOOMS = (1.5, 2.0, 3.0)
SHAPE = (5, 6, 7)
ORIGIN = (12.5, -30.25, 41.0)


def make_affine(codes: str, zooms=ZOOMS, origin=ORIGIN, rotate_deg: float = 0.0) -> np.ndarray:
    """A file affine whose voxel axes point along ``codes`` (e.g. "LPS"), optionally rotated about z."""
    aff = np.eye(4)
    for i, c in enumerate(codes):
        world = "RLAPSI".index(c) // 2
        aff[:3, i] = 0.0
        aff[world, i] = (1.0 if c in "RAS" else -1.0) * zooms[i]
    aff[:3, 3] = origin
    if rotate_deg:
        t = np.deg2rad(rotate_deg)
        rot = np.eye(4)
        rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
        aff = rot @ aff
    return aff


def save(tmp_path, data, affine, name="scan.nii.gz", **header):
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=header.get("sform_code", 1))
    img.set_qform(affine, code=header.get("qform_code", 1))
    if "slope" in header:
        img.header.set_slope_inter(header["slope"], header.get("inter", 0.0))
    if "units" in header:
        img.header.set_xyzt_units(header["units"], "sec")
    path = tmp_path / name
    nib.save(img, str(path))
    return path


CASES = {
    "LPS": make_affine("LPS"),
    "RAS": make_affine("RAS"),
    "LAS": make_affine("LAS"),
    "oblique10": make_affine("RAS", rotate_deg=10.0),
    "ASL-permuted": make_affine("ASL"),
}


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("case", list(CASES))
def test_read_gives_canonical_ras_reversed_to_napari_order(tmp_path, rng, case):
    data = rng.random(SHAPE).astype(np.float32)
    path = save(tmp_path, data, CASES[case])
    vol = read_nifti(path)
    canon = nib.as_closest_canonical(nib.load(str(path)))
    np.testing.assert_array_equal(vol.data, canon.get_fdata(dtype=np.float32).T)
    assert vol.data.dtype == np.float32
    # napari scale = zooms in reversed canonical order; translate = world (z, y, x) of voxel 0
    kw = vol.napari_kwargs()
    np.testing.assert_allclose(kw["scale"], canon.header.get_zooms()[::-1], atol=1e-6)
    np.testing.assert_allclose(kw["translate"], canon.affine[:3, 3][::-1], atol=1e-5)
    np.testing.assert_allclose(vol.affine[:3, :3], canon.affine[:3, :3][::-1, ::-1], atol=1e-6)
    if case != "oblique10":
        assert vol.is_axis_aligned and "affine" not in kw
    else:
        assert not vol.is_axis_aligned and "affine" in kw
    meta = vol.metadata["nifti"]
    assert meta["source_ornt"] == "".join(nib.aff2axcodes(CASES[case]))
    np.testing.assert_allclose(meta["source_affine"], nib.load(str(path)).affine)
    for key in ("source_path", "qform_code", "sform_code", "xyzt_units", "intent"):
        assert key in meta
    assert vol.name == "scan"


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_round_trip_restores_source_affine_and_voxel_order(tmp_path, rng, case, suffix):
    data = rng.random(SHAPE).astype(np.float32)
    src = save(tmp_path, data, CASES[case])
    vol = read_nifti(src)
    out = write_nifti(vol, tmp_path / f"out{suffix}")
    assert out.name == f"out{suffix}" and out.exists()
    written = nib.load(str(out))
    # the file on disk has the source's own orientation, affine and voxel order
    np.testing.assert_allclose(written.affine, nib.load(str(src)).affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(written.dataobj), data)
    assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(CASES[case])
    assert written.header.get_xyzt_units()[0] == "mm"
    again = read_nifti(out)
    np.testing.assert_array_equal(again.data, vol.data)
    np.testing.assert_allclose(again.affine, vol.affine, atol=1e-5)


def test_same_point_given_as_world_and_file_voxel_maps_to_same_index(tmp_path, rng):
    data = rng.random(SHAPE).astype(np.float32)
    aff = CASES["LPS"]
    vol = read_nifti(save(tmp_path, data, aff))
    ijk = np.array([[1, 2, 3], [4, 0, 6], [0, 5, 0]], dtype=float)
    xyz = ijk @ aff[:3, :3].T + aff[:3, 3]
    from_ijk = nifti_ijk_to_index(vol, ijk)
    from_xyz = world_xyz_to_index(vol, xyz)
    np.testing.assert_allclose(from_ijk, from_xyz, atol=1e-6)
    idx = np.round(from_ijk).astype(int)
    np.testing.assert_allclose(from_ijk, idx, atol=1e-6)  # voxel centres land on voxel centres
    for (i, j, k), (a0, a1, a2) in zip(ijk.astype(int), idx):
        assert vol.data[a0, a1, a2] == data[i, j, k]
    # a single point is accepted too
    assert world_xyz_to_index(vol, xyz[0]).shape == (1, 3)


def test_integer_labels_stay_integer_and_keep_dtype(tmp_path, rng):
    labels = rng.integers(0, 5, SHAPE).astype(np.int16)
    vol = read_nifti(save(tmp_path, labels, CASES["LPS"], name="seg.nii.gz"))
    assert vol.data.dtype == np.int16
    out = write_nifti(vol, tmp_path / "seg_out.nii.gz")
    written = nib.load(str(out))
    assert written.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels)


def test_scaled_integers_become_float32_with_slope_applied(tmp_path):
    raw = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    vol = read_nifti(save(tmp_path, raw, CASES["RAS"], slope=0.5, inter=-10.0))
    assert vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.data.T, raw * 0.5 - 10.0)


def test_written_dtypes(tmp_path):
    geom = Volume.from_spacing(np.zeros((3, 4, 5)), (1, 1, 1))
    cases = {
        np.float64: np.float32,
        np.bool_: np.uint8,
        np.int64: np.uint8,  # small non-negative integers fit in uint8
    }
    for in_dtype, expected in cases.items():
        vol = geom.with_data(np.ones((3, 4, 5), dtype=in_dtype))
        assert nib.load(str(write_nifti(vol, tmp_path / "x.nii.gz"))).get_data_dtype() == expected
    vol = geom.with_data(np.full((3, 4, 5), -3000, dtype=np.int64))
    assert nib.load(str(write_nifti(vol, tmp_path / "y.nii.gz"))).get_data_dtype() == np.int16
    vol = geom.with_data(np.full((3, 4, 5), 70000, dtype=np.int64))
    assert nib.load(str(write_nifti(vol, tmp_path / "z.nii.gz"))).get_data_dtype() == np.int32


def test_header_codes_preserved_else_scanner(tmp_path, rng):
    data = rng.random(SHAPE).astype(np.float32)
    vol = read_nifti(save(tmp_path, data, CASES["RAS"], sform_code=4, qform_code=2))
    written = nib.load(str(write_nifti(vol, tmp_path / "o.nii.gz")))
    assert int(written.header["sform_code"]) == 4 and int(written.header["qform_code"]) == 2
    fresh = Volume.from_spacing(data, (2.0, 1.0, 1.0))
    written = nib.load(str(write_nifti(fresh, tmp_path / "fresh.nii")))
    assert int(written.header["sform_code"]) == 1 and int(written.header["qform_code"]) == 1
    # a volume without NIfTI metadata is written in canonical RAS, zooms reversed
    assert nib.aff2axcodes(written.affine) == ("R", "A", "S")
    np.testing.assert_allclose(written.header.get_zooms(), (1.0, 1.0, 2.0))


def test_new_grid_keeps_source_orientation_and_world_box(tmp_path, rng):
    data = rng.random(SHAPE).astype(np.float32)
    vol = read_nifti(save(tmp_path, data, CASES["LPS"]))
    target = np.asarray(vol.spacing) * np.array([0.5, 1.0, 1.0])  # finer along axis 0 (S)
    shape, affine = resample_geometry(vol, target)
    fine = Volume(np.zeros(shape, np.float32), affine, name="fine", metadata=vol.metadata)
    written = nib.load(str(write_nifti(fine, tmp_path / "fine.nii.gz")))
    assert nib.aff2axcodes(written.affine) == ("L", "P", "S")
    np.testing.assert_allclose(written.header.get_zooms(), (1.5, 2.0, 1.5), atol=1e-6)
    back = read_nifti(tmp_path / "fine.nii.gz")
    np.testing.assert_allclose(back.world_bounds(), vol.world_bounds(), atol=1e-4)


def test_write_does_not_modify_the_volume(tmp_path, rng):
    vol = read_nifti(save(tmp_path, rng.random(SHAPE).astype(np.float32), CASES["LPS"]))
    data, affine = vol.data.copy(), vol.affine.copy()
    write_nifti(vol, tmp_path / "o.nii.gz")
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_array_equal(vol.affine, affine)


def test_singleton_4d_squeezed_real_4d_and_2d_do_not_crash(tmp_path, rng):
    d4 = rng.random(SHAPE + (1,)).astype(np.float32)
    assert read_nifti(save(tmp_path, d4, CASES["LPS"], name="a.nii.gz")).data.ndim == 3
    t4 = rng.random(SHAPE + (3,)).astype(np.float32)
    vol4 = read_nifti(save(tmp_path, t4, CASES["RAS"], name="b.nii.gz"))
    assert vol4.shape == (3, 7, 6, 5)  # time first, then (S, A, R)
    np.testing.assert_array_equal(vol4.data[1], t4[..., 1].T)
    written = nib.load(str(write_nifti(vol4, tmp_path / "b_out.nii.gz")))
    np.testing.assert_array_equal(np.asarray(written.dataobj), t4)
    d2 = rng.random((8, 9)).astype(np.float32)
    vol2 = read_nifti(save(tmp_path, d2, CASES["RAS"], name="c.nii.gz"))
    assert vol2.data.ndim == 2 and vol2.shape == (9, 8)


def test_spatial_units_in_metres_are_converted_to_mm(tmp_path, rng):
    aff = make_affine("RAS", zooms=(0.001, 0.001, 0.002), origin=(0.01, 0.0, 0.0))
    vol = read_nifti(save(tmp_path, rng.random(SHAPE).astype(np.float32), aff, units="meter"))
    np.testing.assert_allclose(vol.spacing, (2.0, 1.0, 1.0))
    np.testing.assert_allclose(vol.origin, (0.0, 0.0, 10.0))


def test_clear_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_nifti(tmp_path / "missing.nii.gz")
    bad = tmp_path / "bad.nii"
    bad.write_bytes(b"not a nifti file at all")
    with pytest.raises(InputError, match="bad.nii"):
        read_nifti(bad)
    vol = Volume.from_spacing(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(InputError, match=".nii"):
        write_nifti(vol, tmp_path / "x.png")
    assert write_nifti(vol, tmp_path / "noext").name == "noext.nii.gz"
    with pytest.raises(InputError, match="world"):
        nifti_ijk_to_index(vol, [0, 0, 0])


def test_like_supplies_source_orientation(tmp_path, rng):
    src = read_nifti(save(tmp_path, rng.random(SHAPE).astype(np.float32), CASES["LPS"]))
    bare = Volume(src.data * 2, src.affine, name="derived")  # e.g. built by a family, no metadata
    for like in (src, tmp_path / "scan.nii.gz"):
        written = nib.load(str(write_nifti(bare, tmp_path / "derived.nii.gz", like=like)))
        np.testing.assert_allclose(written.affine, CASES["LPS"], atol=1e-5)
        np.testing.assert_allclose(np.asarray(written.dataobj), np.asarray(nib.load(str(tmp_path / "scan.nii.gz")).dataobj) * 2, rtol=1e-6)

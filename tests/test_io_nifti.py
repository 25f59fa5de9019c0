"""NIfTI reader/writer: orientation convention, exact round trips, dtypes, coordinates.

And damaged or foreign files (truncated, CIFTI, Analyze pairs, bad sform/qform, colour):
the reader raises one InputError line naming the file.
"""

from __future__ import annotations

from pathlib import Path

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
        assert nib.load(str(write_nifti(vol, tmp_path / "x.nii.gz", overwrite=True))).get_data_dtype() == expected
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


def test_an_existing_file_is_replaced_only_with_overwrite(tmp_path, rng):
    from napari_medgen.errors import OutputExists

    vol = Volume.from_spacing(rng.random((4, 5, 6)).astype(np.float32))
    path = write_nifti(vol, tmp_path / "a.nii.gz")
    before = path.read_bytes()
    with pytest.raises(OutputExists, match="already exists"):
        write_nifti(vol.with_data(vol.data * 2), path)
    assert path.read_bytes() == before
    write_nifti(vol.with_data(vol.data * 2), path, overwrite=True)
    np.testing.assert_allclose(read_nifti(path).data, vol.data * 2, rtol=1e-6)


def test_like_supplies_source_orientation(tmp_path, rng):
    src = read_nifti(save(tmp_path, rng.random(SHAPE).astype(np.float32), CASES["LPS"]))
    bare = Volume(src.data * 2, src.affine, name="derived")  # e.g. built by a family, no metadata
    for like in (src, tmp_path / "scan.nii.gz"):
        written = nib.load(str(write_nifti(bare, tmp_path / "derived.nii.gz", like=like, overwrite=True)))
        np.testing.assert_allclose(written.affine, CASES["LPS"], atol=1e-5)
        np.testing.assert_allclose(np.asarray(written.dataobj), np.asarray(nib.load(str(tmp_path / "scan.nii.gz")).dataobj) * 2, rtol=1e-6)


# -- damaged and foreign files: one InputError line naming the file ---------------------------
def nifti_bytes(tmp_path, name="good.nii", shape=(10, 11, 12)):
    data = np.random.default_rng(0).random(shape).astype(np.float32)
    path = save(tmp_path, data, np.diag([2.0, 2.0, 2.0, 1.0]), name=name)
    return path.read_bytes()


def with_header(tmp_path, name, **fields):
    """A copy of a valid .nii whose stored header fields are overwritten (no nibabel fixes)."""
    raw = bytearray(nifti_bytes(tmp_path))
    hdr = nib.Nifti1Header(bytes(raw[:348]), check=False)
    for key, value in fields.items():
        hdr[key] = value
    raw[:348] = hdr.binaryblock
    path = tmp_path / name
    path.write_bytes(bytes(raw))
    return path


def truncated(tmp_path, name, fraction=0.5):
    if name.endswith(".gz"):
        import gzip

        raw = gzip.compress(nifti_bytes(tmp_path))
    else:
        raw = nifti_bytes(tmp_path)
    path = tmp_path / name
    path.write_bytes(raw[: int(len(raw) * fraction)])
    return path


def written(path, raw: bytes):
    path.write_bytes(raw)
    return path


DAMAGED = {
    "truncated .nii.gz": (lambda t: truncated(t, "cut.nii.gz"), r"cut\.nii\.gz is truncated"),
    "truncated .nii": (lambda t: truncated(t, "cut.nii"), r"cut\.nii is truncated"),
    "header only": (lambda t: truncated(t, "short.nii", 0.05), r"short\.nii is too short"),
    "empty": (lambda t: written(t / "empty.nii", b""), r"empty\.nii is empty"),
    "not nifti": (lambda t: written(t / "text.nii", b"hello " * 100), r"text\.nii is not a NIfTI file"),
    "bad qform": (lambda t: with_header(t, "q.nii", sform_code=0, qform_code=1, quatern_b=0.9, quatern_c=0.9, quatern_d=0.9),
                  r"the qform of q\.nii is not a valid rotation"),
    "zero sform": (lambda t: with_header(t, "s.nii", sform_code=1, srow_x=[0, 0, 0, 0], srow_y=[0, 0, 0, 0], srow_z=[0, 0, 0, 0]),
                   r"the sform of s\.nii is not a valid voxel-to-world transform"),
    "nan sform": (lambda t: with_header(t, "n.nii", sform_code=1, srow_x=[np.nan, 0, 0, 0]), r"the sform of n\.nii holds NaN"),
    "zero pixdim": (lambda t: with_header(t, "p.nii", sform_code=0, qform_code=1, pixdim=[1, 0, 2, 2, 1, 1, 1, 1]),
                    r"p\.nii has voxel size \(0, 2, 2\)"),
    "nan pixdim": (lambda t: with_header(t, "pn.nii", sform_code=0, qform_code=0, pixdim=[1, 2, np.nan, 2, 1, 1, 1, 1]),
                   r"pn\.nii has voxel size \(2, nan, 2\)"),
    "negative dim": (lambda t: with_header(t, "d.nii", dim=[3, -10, 11, 12, 1, 1, 1, 1]), r"d\.nii has negative image dimensions"),
    "unknown dtype": (lambda t: with_header(t, "dt.nii", datatype=999), r"dt\.nii has an unknown data type code 999"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_file_is_one_input_error_line_naming_it(tmp_path, case, capfd):
    make, pattern = DAMAGED[case]
    path = make(tmp_path)
    with pytest.raises(InputError, match=pattern) as info:
        read_nifti(path)
    assert type(info.value) is InputError and "\n" not in str(info.value)
    assert capfd.readouterr().err == ""  # nibabel's own log lines are not printed


def test_analyze_pair_is_read_and_a_missing_half_is_named(tmp_path):
    import os

    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    nib.save(nib.AnalyzeImage(data, np.diag([-2.0, 2.0, 3.0, 1.0])), str(tmp_path / "an.hdr"))
    for name in ("an.hdr", "an.img"):
        vol = read_nifti(tmp_path / name)
        assert vol.name == "an" and sorted(vol.spacing) == [2.0, 2.0, 3.0]
    os.remove(tmp_path / "an.img")
    with pytest.raises(InputError, match=r"an\.hdr has no image file an\.img next to it"):
        read_nifti(tmp_path / "an.hdr")
    nib.save(nib.Nifti1Pair(data, np.eye(4)), str(tmp_path / "pair.img"))
    os.remove(tmp_path / "pair.hdr")
    with pytest.raises(InputError, match=r"pair\.img has no header file pair\.hdr"):
        read_nifti(tmp_path / "pair.img")


def test_cifti_file_is_refused_as_not_a_volume(tmp_path):
    import shutil

    src = Path(nib.__file__).parent / "tests" / "data" / "row_major.dconn.nii"
    for name in ("conn.dconn.nii", "renamed.nii"):
        path = Path(shutil.copy(src, tmp_path / name))
        with pytest.raises(InputError, match=rf"{name} is a CIFTI file \(surface/grayordinate data\), not a volume"):
            read_nifti(path)


@pytest.mark.parametrize("kind", ["RGB24", "RGBA32", "4D uint8"])
def test_colour_nifti_is_marked_rgb_and_refused_by_validation(tmp_path, kind):
    from napari_medgen.validation import validate_image

    rng = np.random.default_rng(0)
    channels = 4 if kind == "RGBA32" else 3
    colour = rng.integers(0, 255, SHAPE + (channels,), dtype=np.uint8)
    if kind == "4D uint8":
        stored = colour
    else:
        fields = [(c, "u1") for c in "RGBA"[:channels]]
        stored = np.zeros(SHAPE, dtype=fields)
        for i, (c, _) in enumerate(fields):
            stored[c] = colour[..., i]
    path = save(tmp_path, stored, CASES["LPS"], name="colour.nii.gz")
    vol = read_nifti(path)
    assert vol.metadata["rgb"] is True
    assert vol.shape == SHAPE[::-1] + (channels,) and vol.data.dtype == np.uint8  # channels last, (S, A, R)
    canon = nib.as_closest_canonical(nib.Nifti1Image(colour, CASES["LPS"]))
    np.testing.assert_array_equal(vol.data, np.asarray(canon.dataobj).transpose(2, 1, 0, 3))
    np.testing.assert_allclose(vol.spacing, read_nifti(save(tmp_path, colour[..., 0], CASES["LPS"], name="g.nii")).spacing)
    with pytest.raises(InputError, match=r"is an RGB\(A\) image; MedGen needs a single-channel 3D scan"):
        validate_image(vol)

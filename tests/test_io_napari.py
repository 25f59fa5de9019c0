"""npe2 reader/writers and the napari layer <-> Volume converter (no viewer needed)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from napari_medgen.errors import InputError
from napari_medgen.io.napari_io import (
    get_reader,
    layer_to_volume,
    volume_to_layer_data,
    write_image,
    write_labels,
)
from napari_medgen.io.nifti import read_nifti
from napari_medgen.volume import Volume

from test_io_dicom import write_series
from test_io_nifti import CASES, make_affine

SHAPE = (5, 6, 8)


def save(path, data, affine):
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))
    return path


@pytest.fixture
def image_file(tmp_path):
    data = np.random.default_rng(0).random(SHAPE).astype(np.float32) * 100
    return save(tmp_path / "t1_scan.nii.gz", data, make_affine("LPS")), data


def test_get_reader_accepts_nifti_and_dicom_only(tmp_path, image_file):
    path, _ = image_file
    plain = save(tmp_path / "plain.nii", np.zeros(SHAPE, np.float32), np.eye(4))
    assert callable(get_reader(str(path)))
    assert callable(get_reader(str(plain)))
    assert callable(get_reader([str(plain)]))
    write_series(tmp_path / "dcm")
    assert callable(get_reader(str(tmp_path / "dcm")))
    assert callable(get_reader(str(sorted((tmp_path / "dcm").glob("*.dcm"))[0])))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader(str(tmp_path / "image.png")) is None
    assert get_reader([str(path), str(plain)]) is None


def test_reader_layer_tuple(image_file):
    path, _ = image_file
    (data, kwargs, kind), *rest = get_reader(str(path))(str(path))
    assert not rest and kind == "image"
    vol = read_nifti(path)
    np.testing.assert_array_equal(data, vol.data)
    np.testing.assert_allclose(kwargs["scale"], vol.spacing)
    np.testing.assert_allclose(kwargs["translate"], vol.origin)
    assert kwargs["name"] == "t1_scan" and kwargs["colormap"] == "gray"
    lo, hi = kwargs["contrast_limits"]
    assert 0 <= lo < 2 and 98 < hi <= 100
    assert kwargs["metadata"]["nifti"]["source_ornt"] == "LPS"
    assert "medgen_volume" in kwargs["metadata"]


def test_dicom_folder_reader(tmp_path):
    write_series(tmp_path / "dcm")
    (data, kwargs, kind), = get_reader(str(tmp_path / "dcm"))(str(tmp_path / "dcm"))
    assert kind == "image" and data.shape[0] == 5 and kwargs["name"] == "T1 3D"
    np.testing.assert_allclose(kwargs["scale"], (2.5, 0.8, 0.9))


@pytest.mark.parametrize(
    "name, values, dtype, expected",
    [
        ("brain.nii.gz", 5, np.int16, "labels"),  # few non-negative integers
        ("brain.nii.gz", 500, np.int16, "image"),  # an integer-valued image
        ("lesion_seg.nii.gz", 500, np.int16, "labels"),  # the name says so
        ("brain.nii.gz", 5, np.float32, "image"),  # float is never labels
    ],
)
def test_labels_detection(tmp_path, name, values, dtype, expected):
    data = (np.arange(np.prod(SHAPE)) % values).reshape(SHAPE).astype(dtype)
    path = save(tmp_path / name, data, np.eye(4))
    (_, kwargs, kind), = get_reader(str(path))(str(path))
    assert kind == expected
    if kind == "labels":
        assert "colormap" not in kwargs and "contrast_limits" not in kwargs


@pytest.mark.parametrize("case", ["LPS", "oblique10", "ASL-permuted"])
def test_read_write_round_trip_through_layer_tuple(tmp_path, case):
    data = np.random.default_rng(1).random(SHAPE).astype(np.float32)
    src = save(tmp_path / "src.nii.gz", data, CASES[case])
    (layer_data, kwargs, kind), = get_reader(str(src))(str(src))
    written = write_image(str(tmp_path / "out.nii.gz"), layer_data, kwargs)
    assert written == [str(tmp_path / "out.nii.gz")]
    img = nib.load(written[0])
    np.testing.assert_allclose(img.affine, nib.load(str(src)).affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), data)


def test_labels_round_trip_and_extension_appended(tmp_path):
    labels = (np.arange(np.prod(SHAPE)) % 4).reshape(SHAPE).astype(np.uint8)
    src = save(tmp_path / "mask.nii.gz", labels, CASES["LAS"])
    (layer_data, kwargs, kind), = get_reader(str(src))(str(src))
    assert kind == "labels"
    written = write_labels(str(tmp_path / "mask_out"), layer_data, kwargs)
    assert written == [str(tmp_path / "mask_out.nii.gz")]
    img = nib.load(written[0])
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(img.dataobj), labels)
    np.testing.assert_allclose(img.affine, CASES["LAS"], atol=1e-5)


def test_writing_a_layer_with_new_scale_keeps_world_box(tmp_path, image_file):
    path, _ = image_file
    source = read_nifti(path)
    (layer_data, kwargs, _), = get_reader(str(path))(str(path))
    assert layer_data.shape[0] % 2 == 0
    # a "coarser" result: double spacing along axis 0, half as many slices, centres shifted
    new_kwargs = dict(kwargs)
    new_kwargs["scale"] = [kwargs["scale"][0] * 2, *kwargs["scale"][1:]]
    new_kwargs["translate"] = [kwargs["translate"][0] + kwargs["scale"][0] / 2, *kwargs["translate"][1:]]
    coarse = layer_data.reshape(layer_data.shape[0] // 2, 2, *layer_data.shape[1:]).mean(axis=1)
    out = write_image(str(tmp_path / "coarse.nii.gz"), coarse, new_kwargs)[0]
    img = nib.load(out)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")  # source orientation kept
    np.testing.assert_allclose(img.header.get_zooms(), source.spacing[::-1] * np.array([1, 1, 2]), atol=1e-6)
    np.testing.assert_allclose(read_nifti(out).world_bounds(), source.world_bounds(), atol=1e-4)


def _duck_layer(data, kwargs):
    """A stand-in for a napari layer: attributes, and an affine object with .affine_matrix."""
    aff = kwargs.get("affine")
    return SimpleNamespace(
        data=data,
        scale=np.asarray(kwargs["scale"]),
        translate=np.asarray(kwargs["translate"]),
        affine=SimpleNamespace(affine_matrix=np.eye(4) if aff is None else np.asarray(aff)),
        metadata=kwargs["metadata"],
        name=kwargs["name"],
    )


@pytest.mark.parametrize("oblique", [False, True])
def test_volume_layer_round_trip_with_object_and_dict(oblique):
    affine = np.diag([3.0, 1.2, 0.9, 1.0])
    affine[:3, 3] = [-40.0, 12.0, 7.5]
    if oblique:
        t = np.deg2rad(10)
        rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
        affine[:3, :3] = rot @ affine[:3, :3]
    vol = Volume(np.random.default_rng(2).random((4, 5, 6)).astype(np.float32), affine, name="v", metadata={"k": 1})
    data, kwargs, kind = volume_to_layer_data(vol, extra_metadata={"provenance": {"family": "x"}}, opacity=0.5)
    assert kind == "image" and kwargs["opacity"] == 0.5 and ("affine" in kwargs) == oblique
    for layer in (_duck_layer(data, kwargs), {**kwargs, "data": data}):
        back = layer_to_volume(layer)
        np.testing.assert_allclose(back.affine, vol.affine, atol=1e-9)
        np.testing.assert_array_equal(back.data, vol.data)
        assert back.name == "v" and back.metadata["k"] == 1 and back.metadata["provenance"] == {"family": "x"}
        assert "medgen_volume" not in back.metadata
    # a layer that lost its rotation affine still gets the source direction back
    no_affine = {k: v for k, v in kwargs.items() if k != "affine"}
    np.testing.assert_allclose(layer_to_volume({**no_affine, "data": data}).affine, vol.affine, atol=1e-9)


@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing:UserWarning")  # an oblique layer, as intended
def test_real_napari_layers_round_trip():
    napari_layers = pytest.importorskip("napari.layers")
    t = np.deg2rad(10)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]) @ np.diag([2.0, 1.0, 0.5])
    affine[:3, 3] = [5.0, -3.0, 1.0]
    vol = Volume(np.random.default_rng(3).random((4, 5, 6)).astype(np.float32), affine, name="obl")
    data, kwargs, kind = volume_to_layer_data(vol)
    layer = napari_layers.Image(data, **kwargs)
    np.testing.assert_allclose(layer_to_volume(layer).affine, affine, atol=1e-9)
    # the writer receives layer.as_layer_data_tuple()'s attributes, as napari's Save does
    ldata, state, _ = layer.as_layer_data_tuple()
    np.testing.assert_allclose(layer_to_volume({**state, "data": ldata}).affine, affine, atol=1e-9)
    lab_data, lab_kwargs, lab_kind = volume_to_layer_data(vol.with_data((vol.data > 0.5).astype(np.uint8)), kind="labels")
    labels = napari_layers.Labels(lab_data, **lab_kwargs)
    np.testing.assert_allclose(layer_to_volume(labels).affine, affine, atol=1e-9)


def test_other_kinds_and_dimensions():
    vol = Volume.from_spacing(np.random.default_rng(4).random((3, 4, 5)), (2.0, 1.0, 1.0))
    _, kwargs, kind = volume_to_layer_data(vol, kind="heatmap")
    assert kind == "image" and kwargs["colormap"]["name"] == "medgen_heat"
    assert kwargs["blending"] == "translucent"
    assert kwargs["contrast_limits"][0] == 0.0
    _, kwargs, _ = volume_to_layer_data(vol, kind="heatmap", threshold=3.0)
    assert kwargs["contrast_limits"] == [0.0, 6.0]
    with pytest.raises(InputError, match="whole numbers"):
        volume_to_layer_data(vol, kind="labels")
    four = Volume(np.zeros((2, 3, 4, 5), np.float32), vol.affine)
    data, kwargs, _ = volume_to_layer_data(four)
    assert len(kwargs["scale"]) == 4 and kwargs["scale"][0] == 1.0
    back = layer_to_volume({**kwargs, "data": data})
    np.testing.assert_allclose(back.affine, vol.affine)


def test_module_does_not_import_napari():
    code = "import sys, napari_medgen.io.napari_io, napari_medgen.io.sample; assert 'napari' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)

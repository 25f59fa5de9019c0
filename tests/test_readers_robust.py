"""Every way of reading a file (``read_volume``, the NIfTI/DICOM readers, the napari reader)
fails with one project InputError line naming the file, never a third-party exception;
a DICOM folder with several series opens one layer per series in napari."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_medgen.errors import InputError
from napari_medgen.io import read_volume
from napari_medgen.io.dicom import MultipleSeriesError, read_dicom_series
from napari_medgen.io.napari_io import get_reader
from napari_medgen.io.nifti import read_nifti

from test_io_dicom import COLS, ROWS, write_series


def save_nifti(path: Path, data: np.ndarray, affine=None) -> Path:
    img = nib.Nifti1Image(data, np.diag([2.0, 1.5, 1.0, 1.0]) if affine is None else affine)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, str(path))
    return path


def read_with_napari(path: Path) -> list:
    reader = get_reader(str(path))
    assert callable(reader), f"no napari reader for {path}"
    return reader(str(path))


def write_study(folder: Path) -> None:
    write_series(folder, n=5, description="T1 MPRAGE", prefix="a", series_number=3)
    write_series(folder, n=3, description="T2 FLAIR", prefix="b", series_number=4)


# -- read_volume: the one API entry -------------------------------------------------------
def test_read_volume_dispatches_nifti_dicom_folder_and_dicom_magic_file(tmp_path):
    nii = save_nifti(tmp_path / "scan.nii.gz", np.random.default_rng(0).random((4, 5, 6)).astype(np.float32))
    assert read_volume(nii).shape == (6, 5, 4)
    write_series(tmp_path / "dcm", n=3)
    assert read_volume(tmp_path / "dcm").shape == (3, ROWS, COLS)
    # a DICOM file without the .dcm suffix (IM0001 style) is recognised by its DICM magic
    plain = tmp_path / "IM0001"
    plain.write_bytes(sorted((tmp_path / "dcm").glob("*.dcm"))[0].read_bytes())
    assert read_volume(plain).metadata["dicom"]["series_number"] == 7


def test_read_volume_messages_start_with_the_role(tmp_path):
    with pytest.raises(InputError, match=r"^input 'nowhere\.nii\.gz' does not exist$"):
        read_volume("nowhere.nii.gz")
    (tmp_path / "x.png").write_bytes(b"\x89PNG....")
    with pytest.raises(InputError, match=r"^reference 1 '.*x\.png' is not a NIfTI file \(\.nii/\.nii\.gz\) or a DICOM series folder$"):
        read_volume(tmp_path / "x.png", role="reference 1")
    whole = gzip.compress(save_nifti(tmp_path / "m.nii", np.ones((8, 8, 8), np.float32)).read_bytes())
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=r"^mask: cut\.nii\.gz is truncated"):
        read_volume(cut, role="mask")
    write_study(tmp_path / "study")
    with pytest.raises(MultipleSeriesError, match=r"^input: folder 'study' holds 2 DICOM series") as info:
        read_volume(tmp_path / "study")
    assert [s["series_description"] for s in info.value.series] == ["T1 MPRAGE", "T2 FLAIR"]
    assert read_volume(tmp_path / "study", series="4").metadata["dicom"]["series_description"] == "T2 FLAIR"
    with pytest.raises(InputError, match="a series can only be chosen in a DICOM folder"):
        read_volume(save_nifti(tmp_path / "a.nii", np.zeros((3, 3, 3), np.float32)), series="3")


def test_read_volume_wraps_anything_unexpected(tmp_path, monkeypatch):
    import napari_medgen.io.nifti as nifti_mod

    def broken(path):
        raise TypeError("unexpected\nmulti-line failure")

    monkeypatch.setattr(nifti_mod, "read_nifti", broken)
    path = save_nifti(tmp_path / "a.nii", np.zeros((3, 3, 3), np.float32))
    with pytest.raises(InputError, match=r"^could not read input 'a\.nii': unexpected multi-line failure$") as info:
        read_volume(path)
    assert type(info.value) is InputError


# -- the napari reader --------------------------------------------------------------------
def test_napari_reader_opens_each_series_of_a_folder_as_its_own_layer(tmp_path):
    write_study(tmp_path / "study")
    layers = read_with_napari(tmp_path / "study")
    assert [kw["name"] for _, kw, _ in layers] == ["3: T1 MPRAGE", "4: T2 FLAIR"]
    assert [data.shape[0] for data, _, _ in layers] == [5, 3]
    assert [kw["metadata"]["dicom"]["series_number"] for _, kw, _ in layers] == [3, 4]
    np.testing.assert_allclose(layers[0][1]["scale"], (2.5, 0.8, 0.9))


def test_a_series_that_fails_does_not_block_the_others(tmp_path):
    folder = tmp_path / "study"
    write_study(folder)
    # the T2 series lost a slice position: it cannot be read, the T1 still opens
    write_series(folder, n=3, description="broken", prefix="c", series_number=5, extra={"ImagePositionPatient": None})
    with pytest.warns(UserWarning, match=r"skipped 1 of the 3 DICOM series in folder 'study': 5: broken: .*ImagePositionPatient"):
        layers = read_with_napari(folder)
    assert [kw["name"] for _, kw, _ in layers] == ["3: T1 MPRAGE", "4: T2 FLAIR"]


def test_when_every_series_fails_the_reader_raises_one_input_error_line(tmp_path):
    folder = tmp_path / "study"
    write_series(folder, n=3, description="one", prefix="a", series_number=1, extra={"ImagePositionPatient": None})
    write_series(folder, n=3, description="two", prefix="b", series_number=2, extra={"ImagePositionPatient": None})
    with pytest.raises(InputError, match=r"none of the 2 DICOM series in folder 'study' could be read: 1: one: .*; 2: two: ") as info:
        read_with_napari(folder)
    assert type(info.value) is InputError and "\n" not in str(info.value)


def test_napari_reader_names_a_2d_file_after_the_file(tmp_path):
    write_series(tmp_path / "sc", n=1, description="Screen capture", extra={"ImageOrientationPatient": None, "ImagePositionPatient": None})
    path = next((tmp_path / "sc").glob("*.dcm"))
    (data, kwargs, kind), = read_with_napari(path)
    assert kind == "image" and data.shape == (ROWS, COLS) and kwargs["name"] == path.stem
    assert kwargs["metadata"]["geometry_missing"] is True and len(kwargs["scale"]) == 2


def test_napari_reader_opens_colour_nifti_as_an_rgb_layer(tmp_path):
    colour = np.random.default_rng(0).integers(0, 255, (4, 5, 6, 3), dtype=np.uint8)
    path = save_nifti(tmp_path / "colour.nii.gz", colour)
    (data, kwargs, kind), = read_with_napari(path)
    assert kind == "image" and kwargs["rgb"] is True and data.shape == (6, 5, 4, 3)
    assert len(kwargs["scale"]) == 3 and kwargs["metadata"]["rgb"] is True
    assert "colormap" not in kwargs


def test_napari_reader_errors_are_one_input_error_line(tmp_path):
    good = save_nifti(tmp_path / "good.nii", np.zeros((4, 5, 6), np.float32))
    cut = tmp_path / "cut.nii"
    cut.write_bytes(good.read_bytes()[:400])
    with pytest.raises(InputError, match=r"^cut\.nii is truncated") as info:
        read_with_napari(cut)
    assert type(info.value) is InputError and "\n" not in str(info.value)


def test_napari_viewer_open_shows_our_message(tmp_path):
    """Through napari itself (as File > Open does): the error is our InputError, one line."""
    napari_components = pytest.importorskip("napari.components")
    from napari.plugins import _initialize_plugins

    _initialize_plugins()
    cut = tmp_path / "cut.nii.gz"
    whole = gzip.compress(save_nifti(tmp_path / "g.nii", np.random.default_rng(0).random((4, 5, 6))).read_bytes())
    cut.write_bytes(whole[: len(whole) // 2])
    viewer = napari_components.ViewerModel()
    with pytest.raises(Exception) as info:
        viewer.open(str(cut), plugin="napari-medgen")
    error = getattr(info.value, "original_error", None) or info.value
    assert type(error) is InputError and "\n" not in str(error) and "cut.nii.gz is truncated" in str(error)
    write_study(tmp_path / "study")
    layers = viewer.open(str(tmp_path / "study"), plugin="napari-medgen")
    assert [layer.name for layer in layers] == ["3: T1 MPRAGE", "4: T2 FLAIR"]


# -- fuzz: truncations and byte flips through every reader ----------------------------------
def _mutations(raw: bytes, rng: np.random.Generator, n: int, header_bytes: int) -> list[bytes]:
    """``n`` damaged copies: truncations anywhere, and 1-4 byte flips mostly in the header."""
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(raw[: int(rng.integers(0, len(raw)))])
            continue
        data = bytearray(raw)
        for _ in range(int(rng.integers(1, 5))):
            where = int(rng.integers(0, header_bytes if rng.random() < 0.8 else len(raw)))
            data[where] = int(rng.integers(0, 256)) if rng.random() < 0.5 else data[where] ^ (1 << int(rng.integers(0, 8)))
        out.append(bytes(data))
    return out


def _check_one(path: Path, readers) -> None:
    for name, read in readers:
        try:
            read(path)
        except InputError as exc:
            message = str(exc)
            assert "\n" not in message, f"{name}: multi-line message {message!r}"
            assert path.name in message or path.parent.name in message, f"{name}: message does not name the file: {message!r}"
        except BaseException as exc:  # noqa: BLE001 - the point of the test
            raise AssertionError(f"{name} let {type(exc).__name__} escape on {path.name}: {exc}") from exc


def test_fuzzed_files_raise_only_input_error(tmp_path):
    rng = np.random.default_rng(20240601)
    base = tmp_path / "base"
    base.mkdir()
    data = (np.arange(6 * 7 * 8) % 251).reshape(6, 7, 8).astype(np.int16)
    nii = save_nifti(base / "scan.nii", data).read_bytes()
    niigz = save_nifti(base / "scan.nii.gz", data).read_bytes()
    write_series(base / "dcm", n=1)
    dcm = next((base / "dcm").glob("*.dcm")).read_bytes()

    def napari_read(path):
        reader = get_reader(str(path))
        if reader is not None:
            reader(str(path))

    sources = [
        ("scan.nii", nii, 352, [("read_nifti", read_nifti)]),
        ("scan.nii.gz", niigz, len(niigz), [("read_nifti", read_nifti)]),
        ("image.dcm", dcm, len(dcm) - ROWS * COLS * 2, [("read_dicom_series", read_dicom_series)]),
    ]
    count = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a library warning leaking out is a failure too
        for name, raw, header_bytes, own in sources:
            for i, mutated in enumerate(_mutations(raw, rng, 110, header_bytes)):
                folder = tmp_path / f"{name}-{i}"
                folder.mkdir()
                path = folder / name
                path.write_bytes(mutated)
                _check_one(path, own + [("read_volume", read_volume), ("napari reader", napari_read)])
                count += 1
    assert count == 330

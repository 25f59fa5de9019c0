"""DICOM series reader: slice sorting, geometry in the NIfTI convention, rescale, clear errors.

Also the files real scanners and tools produce: several series in one folder, Siemens
mosaics, MONOCHROME1 and colour images, images without patient geometry, damaged
NumberOfFrames, files without pixel data; every failure is one InputError line.
"""

from __future__ import annotations

import gzip
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from napari_medgen.errors import InputError
from napari_medgen.io.dicom import read_dicom_series

ROWS, COLS = 12, 16
PIXEL_SPACING = (0.8, 0.9)  # (between rows, between columns)
STEP = 2.5
ORIGIN = np.array([-10.0, -20.0, 30.0])

ORIENTATIONS = {
    "axial": (1, 0, 0, 0, 1, 0),
    "sagittal": (0, 1, 0, 0, 0, -1),
    "coronal": (1, 0, 0, 0, 0, -1),
    "oblique": (np.cos(np.deg2rad(10)), np.sin(np.deg2rad(10)), 0, -np.sin(np.deg2rad(10)), np.cos(np.deg2rad(10)), 0),
}


def encode(k: int, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """A raw pixel value that identifies slice k, row r, column c."""
    return (k * 1000 + r * COLS + c).astype(np.int16)


def write_series(
    folder: Path,
    n: int = 5,
    iop=ORIENTATIONS["axial"],
    offsets=None,
    slope: float = 2.0,
    inter: float = -100.0,
    series_uid: str | None = None,
    description: str = "T1 3D",
    prefix: str = "img",
    seed: int = 0,
    series_number: int = 7,
    extra: dict | None = None,
) -> dict:
    """Write a synthetic single-frame MR series with file names in scrambled order.

    ``extra`` sets (or, with value None, removes) header attributes of every file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    iop = np.asarray(iop, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    offsets = np.arange(n) * STEP if offsets is None else np.asarray(offsets, dtype=float)
    series_uid = series_uid or generate_uid()
    names = np.random.default_rng(seed).permutation(len(offsets))
    r, c = np.mgrid[:ROWS, :COLS]
    for k, off in enumerate(offsets):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientName = "Doe^Jane"
        ds.PatientID = "PID-12345"
        ds.PatientBirthDate = "19700101"
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series_uid
        ds.StudyInstanceUID = "1.2.3"
        ds.SeriesDescription = description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = ROWS, COLS
        ds.PixelSpacing = list(PIXEL_SPACING)
        ds.SliceThickness = 99.0  # deliberately wrong: spacing must come from positions
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in ORIGIN + off * normal]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = slope
        ds.RescaleIntercept = inter
        ds.PixelData = encode(k, r, c).astype("<i2").tobytes()
        for keyword, value in (extra or {}).items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(folder / f"{prefix}{names[k]:03d}.dcm", enforce_file_format=True)
    return {"iop": iop, "normal": normal, "offsets": offsets}


def expected_world(iop, normal, k, r, c):
    """World (z, y, x) = reversed RAS of the centre of pixel (r, c) of slice k."""
    lps = ORIGIN + c[:, None] * PIXEL_SPACING[1] * iop[:3] + r[:, None] * PIXEL_SPACING[0] * iop[3:] + (k[:, None] * STEP) * normal
    ras = lps * np.array([-1.0, -1.0, 1.0])
    return ras[:, ::-1]


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_series_geometry_and_values(tmp_path, orientation):
    info = write_series(tmp_path / "series", iop=ORIENTATIONS[orientation])
    (tmp_path / "series" / "README.txt").write_text("not dicom")  # ignored
    vol = read_dicom_series(tmp_path / "series")
    assert vol.data.ndim == 3 and vol.data.size == 5 * ROWS * COLS
    assert vol.data.dtype == np.float32
    np.testing.assert_allclose(sorted(vol.spacing), sorted([STEP, *PIXEL_SPACING]), atol=1e-6)
    if orientation == "axial":
        assert vol.shape == (5, ROWS, COLS)
        np.testing.assert_allclose(vol.spacing, (STEP, *PIXEL_SPACING))
    # every voxel sits where the DICOM header says its pixel is (RAS, reversed to napari order)
    raw = np.round((vol.data + 100.0) / 2.0).astype(int)  # undo RescaleSlope/Intercept
    k, rc = np.divmod(raw.reshape(-1), 1000)
    r, c = np.divmod(rc, COLS)
    idx = np.stack(np.unravel_index(np.arange(raw.size), vol.shape), axis=1)
    np.testing.assert_allclose(vol.index_to_world(idx), expected_world(info["iop"], info["normal"], k, r, c), atol=1e-4)
    assert set(np.unique(k)) == set(range(5))
    assert vol.is_axis_aligned == (orientation != "oblique")


def test_rescale_applied_and_metadata_is_patient_free(tmp_path):
    write_series(tmp_path / "s", slope=1.0, inter=0.0)
    vol = read_dicom_series(tmp_path / "s")
    assert np.issubdtype(vol.data.dtype, np.integer)  # no rescale: stays integer
    assert vol.data.min() == 0 and vol.data.max() == 4 * 1000 + ROWS * COLS - 1
    meta = vol.metadata["dicom"]
    assert meta["modality"] == "MR" and meta["series_description"] == "T1 3D"
    assert meta["n_slices"] == 5 and meta["other_series"] == []
    assert meta["series_number"] == 7 and meta["series_instance_uid"] and meta["source_folder"].endswith("s")
    text = repr(vol.metadata)
    for secret in ("Doe", "PID-12345", "19700101", "Patient"):
        assert secret not in text
    assert vol.name == "T1 3D"


def test_irregular_gap_is_named(tmp_path):
    write_series(tmp_path / "gap", offsets=[0, 2.5, 5.0, 10.0, 12.5])
    with pytest.raises(InputError, match=r"gap of 5\.000 mm between slices 2 and 3"):
        read_dicom_series(tmp_path / "gap")


def test_duplicate_positions_are_refused(tmp_path):
    write_series(tmp_path / "dup", offsets=[0, 2.5, 2.5, 5.0])
    with pytest.raises(InputError, match="same slice position"):
        read_dicom_series(tmp_path / "dup")


def test_no_dicom_in_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM"):
        read_dicom_series(tmp_path)
    with pytest.raises(InputError, match="not found"):
        read_dicom_series(tmp_path / "absent")


def test_multiframe_is_refused(tmp_path):
    import pydicom

    write_series(tmp_path / "mf", n=2)
    path = sorted((tmp_path / "mf").glob("*.dcm"))[0]
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InputError, match="multi-frame"):
        read_dicom_series(path)


def test_single_ct_slice_gives_2d_volume(tmp_path):
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file("CT_small.dcm"))
    shutil.copy(src, tmp_path / "CT_small.dcm")
    vol = read_dicom_series(tmp_path / "CT_small.dcm")
    assert vol.data.ndim == 2 and vol.data.shape == (128, 128)
    assert vol.data.dtype == np.float32 and vol.data.min() < 0  # RescaleIntercept -1024 applied
    assert vol.metadata["dicom"]["modality"] == "CT"


# -- several series in one folder ---------------------------------------------------------
def write_two_series(folder: Path) -> None:
    write_series(folder, n=5, description="T1 MPRAGE", prefix="a", series_number=3, series_uid="1.2.3.4.100")
    write_series(folder, n=3, description="T2 FLAIR", prefix="b", series_number=4, series_uid="1.2.3.4.200",
                 iop=ORIENTATIONS["sagittal"])


def test_several_series_is_an_error_listing_them_on_one_line(tmp_path):
    from napari_medgen.io.dicom import MultipleSeriesError

    folder = tmp_path / "study"
    write_two_series(folder)
    with pytest.raises(MultipleSeriesError) as info:
        read_dicom_series(folder)
    message = str(info.value)
    assert "\n" not in message and "study" in message and "2 DICOM series" in message and "--series" in message
    for text in ("3 'T1 MPRAGE' (5 images, axial, 2.5x0.8x0.9 mm, UID 1.2.3.4.100)",
                 "4 'T2 FLAIR' (3 images, sagittal, 2.5x0.8x0.9 mm, UID 1.2.3.4.200)"):
        assert text in message
    assert isinstance(info.value, InputError)
    assert [s["series_number"] for s in info.value.series] == [3, 4]


@pytest.mark.parametrize("choice", ["4", "1.2.3.4.200", "1.2.3.4.2"])
def test_series_is_chosen_by_number_uid_or_prefix_and_recorded(tmp_path, choice):
    folder = tmp_path / "study"
    write_two_series(folder)
    vol = read_dicom_series(folder, series=choice)
    meta = vol.metadata["dicom"]
    assert vol.data.size == 3 * ROWS * COLS
    assert (meta["series_number"], meta["series_description"], meta["series_instance_uid"]) == (4, "T2 FLAIR", "1.2.3.4.200")
    assert meta["source_folder"] == str(folder) and meta["n_slices"] == 3
    assert [o["series_number"] for o in meta["other_series"]] == [3]
    # giving one file reads that file's series, as before
    one = read_dicom_series(sorted(folder.glob("a*.dcm"))[0])
    assert one.metadata["dicom"]["series_description"] == "T1 MPRAGE" and one.shape[0] == 5


def test_unknown_or_ambiguous_series_choice_lists_the_series(tmp_path):
    folder = tmp_path / "study"
    write_two_series(folder)
    with pytest.raises(InputError, match=r"no DICOM series '9'.*3 'T1 MPRAGE'.*4 'T2 FLAIR'"):
        read_dicom_series(folder, series="9")
    with pytest.raises(InputError, match=r"'1\.2\.3\.4' matches 2 series"):
        read_dicom_series(folder, series="1.2.3.4")


def test_list_dicom_series(tmp_path):
    from napari_medgen.io.dicom import list_dicom_series

    folder = tmp_path / "study"
    write_two_series(folder)
    (t1, t2) = list_dicom_series(folder)
    assert t1["series_instance_uid"] == "1.2.3.4.100" and t1["series_number"] == 3
    assert t1["series_description"] == "T1 MPRAGE" and t1["modality"] == "MR" and t1["n_images"] == 5
    assert t1["orientation"] == "axial" and t2["orientation"] == "sagittal"
    assert t1["spacing_mm"] == [2.5, 0.8, 0.9]
    assert t1["files"] == sorted(str(p) for p in folder.glob("a*.dcm"))


# -- Siemens mosaic -------------------------------------------------------------------------
NICOM_DATA = Path(__import__("nibabel").__file__).parent / "nicom" / "tests" / "data"


def nicom_file(name: str, dest: Path) -> Path:
    """A copy of one of nibabel's Siemens test files (gunzipped) in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    src = NICOM_DATA / name
    out = dest / name.removesuffix(".gz")
    out.write_bytes(gzip.decompress(src.read_bytes()) if name.endswith(".gz") else src.read_bytes())
    return out


def test_mosaic_is_unpacked_into_slices_with_geometry(tmp_path):
    import pydicom

    path = nicom_file("siemens_dwi_0.dcm.gz", tmp_path / "dwi")
    vol = read_dicom_series(path)
    assert vol.data.ndim == 3 and sorted(vol.shape) == [48, 128, 128]  # not one 896x896 sheet of tiles
    np.testing.assert_allclose(sorted(vol.spacing), sorted([1.796875, 1.796875, 3.0]), atol=1e-3)
    assert vol.metadata["dicom"]["mosaic"] is True and vol.metadata["dicom"]["n_slices"] == 48
    # every voxel sits where nibabel's mosaic geometry puts it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nibabel.nicom import dicomwrappers

        wrapper = dicomwrappers.wrapper_from_data(pydicom.dcmread(path))
        ref = wrapper.get_data()
        affine = wrapper.affine
    rng = np.random.default_rng(0)
    ijk = np.stack([rng.integers(0, n, 50) for n in ref.shape], axis=1)
    lps = ijk @ affine[:3, :3].T + affine[:3, 3]
    world = (lps * [-1, -1, 1])[:, ::-1]
    idx = np.round(vol.world_to_index(world)).astype(int)
    np.testing.assert_array_equal(vol.data[tuple(idx.T)], ref[tuple(ijk.T)])


def test_mosaic_time_points_are_refused_unless_one_file_is_given(tmp_path):
    folder = tmp_path / "dwi"
    first = nicom_file("siemens_dwi_0.dcm.gz", folder)
    nicom_file("siemens_dwi_1000.dcm.gz", folder)
    with pytest.raises(InputError, match=r"holds 2 volumes \(mosaic time points"):
        read_dicom_series(folder)
    assert sorted(read_dicom_series(first).shape) == [48, 128, 128]


def test_mosaic_that_cannot_be_unpacked_is_refused(tmp_path):
    # nibabel's 0.dcm: a mosaic header whose pixel data is a downsampled 256x256 sheet
    with pytest.raises(InputError, match=r"0\.dcm is a Siemens mosaic of 48 slices whose tiles cannot be unpacked"):
        read_dicom_series(nicom_file("0.dcm", tmp_path / "m"))
    # ImageType MOSAIC without the Siemens CSA header that gives the layout
    write_series(tmp_path / "nocsa", n=1, extra={"ImageType": ["ORIGINAL", "PRIMARY", "M", "MOSAIC"]})
    with pytest.raises(InputError, match="Siemens mosaic .* CSA header.* cannot be unpacked"):
        read_dicom_series(tmp_path / "nocsa")


# -- damaged NumberOfFrames -----------------------------------------------------------------
def set_raw_number_of_frames(path: Path, raw: bytes) -> None:
    """Store a NumberOfFrames value pydicom would refuse to write (patched in the bytes)."""
    import pydicom

    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = "9" * len(raw)
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    key = b"\x28\x00\x08\x00IS" + len(raw).to_bytes(2, "little")
    at = data.index(key) + len(key)
    path.write_bytes(data[:at] + raw + data[at + len(raw):])


@pytest.mark.parametrize("raw", [b"abc ", b"0 ", b"-1", b"1.5 "])
def test_malformed_number_of_frames_is_one_frame_and_does_not_block_the_series(tmp_path, raw):
    write_series(tmp_path / "s", n=3)
    files = sorted((tmp_path / "s").glob("*.dcm"))
    set_raw_number_of_frames(files[0], raw)
    assert read_dicom_series(tmp_path / "s").shape == (3, ROWS, COLS)
    assert read_dicom_series(files[1]).shape == (3, ROWS, COLS)


def test_malformed_number_of_frames_with_more_pixel_data_is_refused_naming_the_file(tmp_path):
    import pydicom

    write_series(tmp_path / "s", n=3)
    bad = sorted((tmp_path / "s").glob("*.dcm"))[0]
    ds = pydicom.dcmread(bad)
    ds.PixelData = ds.PixelData * 2  # two frames' worth of pixels
    ds.save_as(bad, enforce_file_format=True)
    set_raw_number_of_frames(bad, b"abc ")
    with pytest.raises(InputError, match=rf"{bad.name} has a malformed NumberOfFrames 'abc'"):
        read_dicom_series(tmp_path / "s")


# -- photometric interpretations ------------------------------------------------------------
def test_monochrome1_is_inverted_so_high_values_are_bright(tmp_path):
    write_series(tmp_path / "m2", n=3, slope=1.0, inter=0.0)
    write_series(tmp_path / "m1", n=3, slope=1.0, inter=0.0, extra={"PhotometricInterpretation": "MONOCHROME1"})
    normal = read_dicom_series(tmp_path / "m2").data
    vol = read_dicom_series(tmp_path / "m1")
    np.testing.assert_array_equal(vol.data, normal.max() + normal.min() - normal)
    assert vol.metadata["dicom"]["inverted_monochrome1"] is True
    assert "inverted_monochrome1" not in read_dicom_series(tmp_path / "m2").metadata["dicom"]


@pytest.mark.parametrize("name", ["examples_palette.dcm", "examples_rgb_color.dcm", "SC_ybr_full_422_uncompressed.dcm"])
def test_colour_images_become_rgb_volumes_that_validation_refuses(tmp_path, name):
    import pydicom
    from pydicom.data import get_testdata_file

    from napari_medgen.validation import validate_image

    path = Path(shutil.copy(get_testdata_file(name), tmp_path / name))
    vol = read_dicom_series(path)
    ds = pydicom.dcmread(path)
    assert vol.metadata["rgb"] is True and vol.data.dtype == np.uint8
    assert vol.data.shape == (ds.Rows, ds.Columns, 3)  # colours, not palette indices
    if name == "examples_palette.dcm":
        from pydicom.pixels import apply_color_lut

        np.testing.assert_array_equal(vol.data, (apply_color_lut(ds.pixel_array, ds) >> 8).astype(np.uint8))
    with pytest.raises(InputError, match="RGB"):
        validate_image(vol)


# -- geometry and names ---------------------------------------------------------------------
def test_lone_image_without_patient_geometry_keeps_its_pixels_and_file_name(tmp_path):
    import pydicom

    write_series(tmp_path / "sc", n=1, slope=1.0, inter=0.0, description="Screen capture",
                 extra={"ImageOrientationPatient": None, "ImagePositionPatient": None})
    path = next((tmp_path / "sc").glob("*.dcm"))
    vol = read_dicom_series(path)
    np.testing.assert_array_equal(vol.data, pydicom.dcmread(path).pixel_array)  # as stored, not flipped
    assert vol.metadata["geometry_missing"] is True and vol.metadata["dicom"]["geometry_missing"] is True
    assert vol.name == path.stem
    np.testing.assert_allclose(vol.spacing[1:], PIXEL_SPACING)


def test_series_without_patient_geometry_is_refused(tmp_path):
    write_series(tmp_path / "s", n=3, extra={"ImagePositionPatient": None})
    with pytest.raises(InputError, match=r"has no ImagePositionPatient \(patient geometry\).*3 images"):
        read_dicom_series(tmp_path / "s")


def test_2d_file_is_named_after_the_file(tmp_path):
    from pydicom.data import get_testdata_file

    path = Path(shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "CT_small.dcm"))
    vol = read_dicom_series(path)
    assert vol.name == "CT_small" and vol.data.ndim == 2
    assert "geometry_missing" not in vol.metadata


# -- pixel data errors and messages ---------------------------------------------------------
def test_file_without_pixel_data_says_so_not_compressed(tmp_path):
    write_series(tmp_path / "s", n=1, extra={"PixelData": None})
    with pytest.raises(InputError, match="has no pixel data") as info:
        read_dicom_series(tmp_path / "s")
    assert "pylibjpeg" not in str(info.value) and "ompressed" not in str(info.value)


def test_compressed_file_without_decoder_suggests_one(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    path = Path(shutil.copy(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"), tmp_path / "MR_small_jpeg_ls_lossless.dcm"))
    try:
        pydicom.dcmread(path).pixel_array
    except Exception:  # noqa: BLE001 - no JPEG-LS decoder installed: the case under test
        pass
    else:
        pytest.skip("a JPEG-LS decoder is installed")
    with pytest.raises(InputError, match="MR_small_jpeg_ls_lossless.dcm .*pylibjpeg"):
        read_dicom_series(path)


def test_truncated_file_is_one_line_without_library_warnings(tmp_path, caplog, capfd):
    from pydicom.data import get_testdata_file

    write_series(tmp_path / "s", n=3)
    files = sorted((tmp_path / "s").glob("*.dcm"))
    set_raw_number_of_frames(files[0], b"1.5 ")  # pydicom warns about the invalid IS value
    truncated = tmp_path / "t" / "MR_truncated.dcm"
    truncated.parent.mkdir()
    shutil.copy(get_testdata_file("MR_truncated.dcm"), truncated)
    with warnings.catch_warnings(), caplog.at_level(logging.DEBUG):
        warnings.simplefilter("error")
        read_dicom_series(tmp_path / "s")
        with pytest.raises(InputError) as info:
            read_dicom_series(truncated)
    assert "MR_truncated.dcm" in str(info.value) and "\n" not in str(info.value)
    assert "pylibjpeg" not in str(info.value)
    assert not [r for r in caplog.records if r.name.startswith(("pydicom", "nibabel"))]
    assert capfd.readouterr().err == ""

"""DICOM series reader: slice sorting, geometry in the NIfTI convention, rescale, clear errors."""

from __future__ import annotations

import shutil
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
) -> dict:
    """Write a synthetic single-frame MR series with file names in scrambled order."""
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
        ds.SeriesNumber = 7
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
    text = repr(vol.metadata)
    for secret in ("Doe", "PID-12345", "19700101", "Patient"):
        assert secret not in text
    assert vol.name == "T1 3D"


def test_largest_series_is_read_and_others_listed(tmp_path):
    folder = tmp_path / "mixed"
    write_series(folder, n=5, description="big", prefix="a")
    write_series(folder, n=3, description="small", prefix="b")
    vol = read_dicom_series(folder)
    assert vol.data.shape[0] == 5
    others = vol.metadata["dicom"]["other_series"]
    assert len(others) == 1 and others[0]["series_description"] == "small" and others[0]["n_files"] == 3
    # giving one file reads that file's series
    small = read_dicom_series(sorted(folder.glob("b*.dcm"))[0])
    assert small.data.shape[0] == 3 and small.metadata["dicom"]["series_description"] == "small"


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

"""Finding the scans of a batch run and naming its outputs (napari_medgen.batch.bids)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_medgen.batch.bids import (
    BIDS_VERSION,
    ScanInput,
    bids_roots,
    check_desc,
    collect_inputs,
    dataset_description,
    desc_label,
    output_paths,
    parse_bids_name,
    plan_outputs,
    sources_entry,
)
from napari_medgen.errors import InputError, OutputPathError


def nifti(path: Path) -> Path:
    """A tiny 4x4x4 NIfTI file (zeros) at ``path``, folders created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(path))
    return path


def touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def describe(root: Path, **extra) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    description = {"Name": "test", "BIDSVersion": "1.9.0", **extra}
    (root / "dataset_description.json").write_text(json.dumps(description))
    return root


RAW_ANAT = [
    "sub-01/anat/sub-01_FLAIR.nii.gz",
    "sub-01/anat/sub-01_T1w.nii.gz",
    "sub-02/ses-post/anat/sub-02_ses-post_acq-fast_run-2_T1w.nii.gz",
    "sub-02/ses-pre/anat/sub-02_ses-pre_FLAIR.nii",
    "sub-02/ses-pre/anat/sub-02_ses-pre_T1w.nii.gz",
    "sub-03/anat/sub-03_T1w.nii.gz",
]
RAW_FUNC = ["sub-01/func/sub-01_task-rest_bold.nii.gz"]


@pytest.fixture
def ds(tmp_path) -> Path:
    """A BIDS dataset: 3 subjects, sessions on sub-02, T1w + FLAIR, a bold run, and things to skip."""
    root = describe(tmp_path / "ds")
    (root / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\nsub-03\n")
    for rel in RAW_ANAT + RAW_FUNC:
        nifti(root / rel)
    touch(root / "sub-01/anat/sub-01_T1w.json", b"{}")
    # skipped: names that do not parse or disagree with their folders, hidden files
    nifti(root / "sub-03/anat/notes.nii.gz")
    nifti(root / "sub-03/anat/sub-04_T1w.nii.gz")
    nifti(root / "sub-03/anat/sub-03_ses-x_T1w.nii.gz")
    touch(root / "sub-01/anat/._sub-01_T1w.nii.gz", b"\0" * 10)
    nifti(root / "sub-01/.cache/anat/sub-01_T1w.nii.gz")
    nifti(root / "sub-01_T1w.nii.gz")
    # skipped: derivatives (one a BIDS dataset itself), sourcedata, code, hidden folders
    describe(root / "derivatives/fmriprep", DatasetType="derivative")
    nifti(root / "derivatives/fmriprep/sub-01/anat/sub-01_desc-preproc_T1w.nii.gz")
    nifti(root / "derivatives/other/sub-01/anat/sub-01_desc-x_T1w.nii.gz")
    nifti(root / "sourcedata/sub-01/anat/sub-01_T1w.nii.gz")
    touch(root / "sourcedata/dicom/IM0001.dcm", b"\0" * 132)
    nifti(root / "code/sub-01/anat/sub-01_T1w.nii.gz")
    nifti(root / ".git/sub-01/anat/sub-01_T1w.nii.gz")
    return root


@pytest.fixture
def plain(tmp_path) -> Path:
    """A plain folder: the same file name in several sub-folders, hidden and non-NIfTI files."""
    root = tmp_path / "data"
    for rel in ("a/scan.nii.gz", "b/scan.nii.gz", "b/c/scan.nii", "top.nii.gz"):
        nifti(root / rel)
    nifti(root / ".hidden/scan.nii.gz")
    touch(root / "a/._scan.nii.gz", b"\0" * 10)
    touch(root / "notes.txt", b"hello")
    touch(root / "a/scan.json", b"{}")
    return root


def rels(scans):
    return [s.relpath for s in scans]


# --------------------------------------------------------------------------- parse_bids_name


def test_parse_bids_name_full():
    assert parse_bids_name("sub-01_ses-pre_acq-fast_run-2_T1w.nii.gz") == (
        (("sub", "01"), ("ses", "pre"), ("acq", "fast"), ("run", "2")), "T1w", ".nii.gz")
    assert parse_bids_name("sub-01_T1w.nii") == ((("sub", "01"),), "T1w", ".nii")
    assert parse_bids_name("sub-ABC1_FLAIR") == ((("sub", "ABC1"),), "FLAIR", "")
    assert parse_bids_name("sub-01_T1w.json") == ((("sub", "01"),), "T1w", ".json")
    assert parse_bids_name("sub-01_echo-1_desc-preproc_bold.nii.gz")[0][-1] == ("desc", "preproc")


@pytest.mark.parametrize("name", [
    "T1w.nii.gz",                          # no sub
    "ses-1_sub-01_T1w.nii.gz",             # sub not first
    "sub-01.nii.gz",                       # no suffix
    "sub-01_.nii.gz",                      # empty suffix
    "sub_01_T1w.nii.gz",                   # no dash
    "sub-_T1w.nii.gz",                     # empty label
    "sub-0 1_T1w.nii.gz",                  # space in a label
    "sub-01_acq-fa_st_T1w.nii.gz",         # underscore inside a label
    "sub-01_acq-a-b_T1w.nii.gz",           # dash inside a label
    "sub-01_Acq-x_T1w.nii.gz",             # key not lowercase
    "sub-01_ses-pre_ses-post_T1w.nii.gz",  # a key twice
    "sub-01__T1w.nii.gz",                  # empty pair
    "sub-01_T1-w.nii.gz",                  # suffix not alphanumeric
    "sub-é1_T1w.nii.gz",                   # not ASCII
    "sub-01_T1w..nii",                     # empty extension part
    "sub-01/anat/sub-01_T1w.nii",          # a path, not a name
    "",
])
def test_parse_bids_name_refuses(name):
    assert parse_bids_name(name) is None


# --------------------------------------------------------------------------- BIDS datasets


def test_bids_root_anat_by_default(ds):
    scans = collect_inputs([ds])
    assert rels(scans) == sorted(RAW_ANAT)
    for scan in scans:
        assert scan.is_bids and scan.bids_root == ds and scan.datatype == "anat"
        assert scan.path == (ds / scan.relpath).resolve() and scan.path.is_absolute()
        assert scan.key == scan.relpath
    by_rel = {s.relpath: s for s in scans}
    post = by_rel["sub-02/ses-post/anat/sub-02_ses-post_acq-fast_run-2_T1w.nii.gz"]
    assert post.entities == (("sub", "02"), ("ses", "post"), ("acq", "fast"), ("run", "2"))
    assert (post.suffix, post.subject, post.session, post.entity("run"), post.entity("echo", "-")) == (
        "T1w", "02", "post", "2", "-")
    assert by_rel["sub-01/anat/sub-01_FLAIR.nii.gz"].session == ""


def test_bids_datatypes(ds):
    assert rels(collect_inputs([ds], datatypes=())) == sorted(RAW_ANAT + RAW_FUNC)
    assert rels(collect_inputs([ds], datatypes=("func",))) == RAW_FUNC
    assert rels(collect_inputs([ds], datatypes=None)) == sorted(RAW_ANAT + RAW_FUNC)
    assert collect_inputs([ds], datatypes="func")[0].suffix == "bold"


@pytest.mark.parametrize("labels", [("01",), ("sub-01",), "01", [" sub-01 "]])
def test_filter_participant(ds, labels):
    assert rels(collect_inputs([ds], participant_labels=labels)) == [
        "sub-01/anat/sub-01_FLAIR.nii.gz", "sub-01/anat/sub-01_T1w.nii.gz"]


def test_filter_participants_sessions_suffixes(ds):
    assert {s.subject for s in collect_inputs([ds], participant_labels=["01", "sub-03"])} == {"01", "03"}
    for labels in (["pre"], ["ses-pre"]):
        assert rels(collect_inputs([ds], session_labels=labels)) == [
            "sub-02/ses-pre/anat/sub-02_ses-pre_FLAIR.nii", "sub-02/ses-pre/anat/sub-02_ses-pre_T1w.nii.gz"]
    flair = collect_inputs([ds], suffixes=["FLAIR"])
    assert [s.subject for s in flair] == ["01", "02"] and {s.suffix for s in flair} == {"FLAIR"}
    both = collect_inputs([ds], participant_labels=["02"], session_labels=["post"], suffixes=["T1w"])
    assert rels(both) == ["sub-02/ses-post/anat/sub-02_ses-post_acq-fast_run-2_T1w.nii.gz"]
    assert rels(collect_inputs([ds], suffixes=["bold"], datatypes=())) == RAW_FUNC


def test_filter_value_matching_nothing(ds):
    with pytest.raises(InputError, match=r"--participant-label 04 matches no scan \(found: 01, 02, 03\)"):
        collect_inputs([ds], participant_labels=["01", "04"])
    with pytest.raises(InputError, match=r"--session-label baseline matches no scan \(found: post, pre\)"):
        collect_inputs([ds], session_labels=["baseline"])
    with pytest.raises(InputError, match=r"--suffix t1w matches no scan \(found: FLAIR, T1w, bold\)"):
        collect_inputs([ds], suffixes=["t1w"])


def test_filters_leaving_nothing_name_the_filters(ds):
    with pytest.raises(InputError) as info:
        collect_inputs([ds], participant_labels=["01"], session_labels=["pre"])
    message = str(info.value)
    assert "participant 01" in message and "session pre" in message and "datatype anat" in message
    with pytest.raises(InputError, match="suffix bold, datatype anat"):
        collect_inputs([ds], suffixes=["bold"])


@pytest.mark.parametrize("kwargs, flag", [
    ({"participant_labels": ["0 1"]}, "--participant-label"),
    ({"session_labels": ["ses-"]}, "--session-label"),
    ({"suffixes": ["T1w_x"]}, "--suffix"),
    ({"datatypes": ["Anat!"]}, "--datatype"),
])
def test_filter_value_not_a_label(ds, kwargs, flag):
    with pytest.raises(InputError, match=flag):
        collect_inputs([ds], **kwargs)


def test_bids_filter_refuses_non_bids_scans(ds, plain):
    with pytest.raises(InputError) as info:
        collect_inputs([ds, plain], participant_labels=["01"])
    message = str(info.value)
    assert message.startswith("--participant-label works on BIDS datasets; ")
    assert f"'{(plain / 'a/scan.nii.gz').resolve()}' is not part of one" in message
    with pytest.raises(InputError, match="^--suffix works on BIDS datasets"):
        collect_inputs([plain], suffixes=["T1w"])
    # a BIDS-like name without dataset_description.json above it is not BIDS either
    loose = nifti(plain.parent / "loose/sub-01/anat/sub-01_T1w.nii.gz")
    with pytest.raises(InputError, match="is not part of one"):
        collect_inputs([loose], session_labels=["pre"])
    # the datatype filter (it has a default) keeps non-BIDS scans
    assert len(collect_inputs([ds, plain], datatypes=("anat",))) == len(RAW_ANAT) + 4


def test_bids_root_without_scans(tmp_path):
    root = describe(tmp_path / "empty")
    nifti(root / "derivatives/sub-01/anat/sub-01_T1w.nii.gz")
    with pytest.raises(InputError, match="no NIfTI scans found in BIDS dataset .*empty'"):
        collect_inputs([root])


def test_derivative_dataset_is_a_bids_root(ds):
    deriv = ds / "derivatives/fmriprep"
    (scan,) = collect_inputs([deriv])
    assert scan.bids_root == deriv and scan.relpath == "sub-01/anat/sub-01_desc-preproc_T1w.nii.gz"
    assert scan.entity("desc") == "preproc"


# --------------------------------------------------------------------------- files, folders, globs


def test_bids_file_given_directly(ds):
    (scan,) = collect_inputs([ds / "sub-02/ses-pre/anat/sub-02_ses-pre_T1w.nii.gz"])
    assert scan.is_bids and scan.bids_root == ds
    assert scan.relpath == "sub-02/ses-pre/anat/sub-02_ses-pre_T1w.nii.gz"
    assert (scan.subject, scan.session, scan.suffix, scan.datatype) == ("02", "pre", "T1w", "anat")
    # a file of a nested derivative dataset belongs to that one
    (prep,) = collect_inputs([ds / "derivatives/fmriprep/sub-01/anat/sub-01_desc-preproc_T1w.nii.gz"])
    assert prep.bids_root == ds / "derivatives/fmriprep" and prep.is_bids
    # a file of a BIDS dataset outside its layout is a plain scan (named, not placed, like BIDS)
    (other,) = collect_inputs([ds / "derivatives/other/sub-01/anat/sub-01_desc-x_T1w.nii.gz"])
    assert not other.is_bids and other.bids_root is None and other.datatype == ""
    assert other.relpath == "sub-01_desc-x_T1w.nii.gz" and other.suffix == "T1w" and other.subject == "01"
    assert other.key == str(other.path)


def test_folder_inside_bids_root(ds):
    scans = collect_inputs([ds / "sub-02"])
    assert rels(scans) == [r for r in RAW_ANAT if r.startswith("sub-02/")]
    assert all(s.bids_root == ds for s in scans)
    # a stray file there is kept (it was asked for), as a plain scan named from the folder given
    nifti(ds / "sub-02/extra/scan.nii.gz")
    stray = [s for s in collect_inputs([ds / "sub-02"]) if not s.is_bids]
    assert rels(stray) == ["extra/scan.nii.gz"]


def test_plain_folder_nested_same_names(plain):
    scans = collect_inputs([plain])
    assert rels(scans) == ["a/scan.nii.gz", "b/c/scan.nii", "b/scan.nii.gz", "top.nii.gz"]
    assert not any(s.is_bids for s in scans)
    assert all(s.bids_root is None and s.entities == () for s in scans)
    assert all(s.suffix == "" and s.datatype == "" for s in scans)
    assert all(s.key == str(s.path) for s in scans)


def test_plain_folder_holding_a_bids_dataset(tmp_path, ds, plain):
    scans = collect_inputs([tmp_path])
    assert [s.relpath for s in scans if s.is_bids] == sorted(RAW_ANAT)
    assert {s.bids_root for s in scans if s.is_bids} == {ds}
    assert [s.relpath for s in scans if not s.is_bids] == [
        "data/a/scan.nii.gz", "data/b/c/scan.nii", "data/b/scan.nii.gz", "data/top.nii.gz"]
    # sorted by (bids_root or "", relpath): plain scans first
    assert scans[0].bids_root is None and scans[-1].bids_root == ds


def test_uppercase_extension_outside_bids(tmp_path):
    nifti(tmp_path / "in/scan.nii.gz").rename(tmp_path / "in/SCAN.NII.GZ")
    (scan,) = collect_inputs([tmp_path / "in"])
    assert scan.relpath == "SCAN.NII.GZ"
    paths = output_paths(scan, tmp_path / "out", desc="x", output_names=["image"])
    assert paths["image"].name == "SCAN_desc-x.nii.gz"


def test_glob(plain, ds, monkeypatch):
    scans = collect_inputs([str(plain / "*" / "scan.nii.gz")])
    assert rels(scans) == ["a/scan.nii.gz", "b/scan.nii.gz"]  # relative to the pattern's fixed folders
    assert rels(collect_inputs([str(plain / "**" / "*.nii")])) == ["b/c/scan.nii"]
    assert rels(collect_inputs([str(plain / "[ab]")])) == ["a/scan.nii.gz", "b/c/scan.nii", "b/scan.nii.gz"]
    monkeypatch.chdir(plain)
    assert rels(collect_inputs(["*.nii.gz"])) == ["top.nii.gz"]
    assert rels(collect_inputs(["*/*.nii.gz"])) == ["a/scan.nii.gz", "b/scan.nii.gz"]
    # BIDS files matched by a pattern are BIDS scans; the matched json is skipped
    monkeypatch.chdir(ds)
    bids = collect_inputs(["sub-0[12]/anat/*"])
    assert rels(bids) == ["sub-01/anat/sub-01_FLAIR.nii.gz", "sub-01/anat/sub-01_T1w.nii.gz"]
    assert all(s.is_bids and s.bids_root == ds for s in bids)


def test_glob_errors(plain):
    pattern = str(plain / "*" / "*.mgz")
    with pytest.raises(InputError, match=f"^no file matches '{re.escape(pattern)}'$"):
        collect_inputs([pattern])
    with pytest.raises(InputError, match=r"^no NIfTI scans among the paths matching '.*\*\.json' \(looked"):
        collect_inputs([str(plain / "*" / "*.json")])


def test_dedupe_by_resolved_path(ds, monkeypatch):
    t1 = ds / "sub-01/anat/sub-01_T1w.nii.gz"
    dotted = ds / "sub-01" / ".." / "sub-01/anat/sub-01_T1w.nii.gz"
    scans = collect_inputs([ds, t1, str(dotted), str(ds / "sub-0[12]/anat/*_T1w.nii.gz")])
    assert rels(scans) == sorted(RAW_ANAT)
    monkeypatch.chdir(ds.parent)
    assert rels(collect_inputs(["ds", "./ds/", t1])) == sorted(RAW_ANAT)


def test_dedupe_through_a_linked_folder(tmp_path, ds):
    link = tmp_path / "link"
    try:
        link.symlink_to(ds, target_is_directory=True)
    except (OSError, NotImplementedError):
        pytest.skip("no symlinks here")
    scans = collect_inputs([ds, link])
    assert rels(scans) == sorted(RAW_ANAT) and all(s.bids_root == ds for s in scans)
    via_link = collect_inputs([link])
    assert via_link[0].bids_root == link and via_link[0].path == scans[0].path


def test_linked_file_keeps_its_name(tmp_path, ds):
    """A git-annex/DataLad file links to an object with another name; the scan keeps the link's."""
    target = ds / "sub-03/anat/sub-03_T1w.nii.gz"
    store = touch(tmp_path / "annex/objects/MD5E-s1--abc", target.read_bytes())
    target.unlink()
    try:
        target.symlink_to(store)
    except (OSError, NotImplementedError):
        pytest.skip("no symlinks here")
    scan = next(s for s in collect_inputs([ds]) if s.subject == "03")
    assert scan.path.name == "sub-03_T1w.nii.gz" and scan.path.exists()


def test_exclude_output_folder(plain):
    nifti(plain / "out/a/scan_desc-x.nii.gz")
    assert "out/a/scan_desc-x.nii.gz" in rels(collect_inputs([plain]))
    assert rels(collect_inputs([plain], exclude=[plain / "out"])) == [
        "a/scan.nii.gz", "b/c/scan.nii", "b/scan.nii.gz", "top.nii.gz"]


# --------------------------------------------------------------------------- errors


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match=r"^input '.*nope\.nii\.gz' does not exist$"):
        collect_inputs([tmp_path / "nope.nii.gz"])


def test_not_nifti(tmp_path):
    for name in ("notes.txt", "scan.hdr", "scan.mgz"):
        path = touch(tmp_path / name, b"x")
        with pytest.raises(InputError, match=rf"^'.*{name}' is not a NIfTI file \(\.nii, \.nii\.gz\)$"):
            collect_inputs([path])


def test_nothing_found(tmp_path, plain):
    (tmp_path / "empty").mkdir()
    touch(tmp_path / "other/readme.txt", b"x")
    for folder in ("empty", "other"):
        expected = r"^no NIfTI scans found in '.*' \(looked for \*\.nii, \*\.nii\.gz\)$"
        with pytest.raises(InputError, match=expected):
            collect_inputs([plain, tmp_path / folder])
    with pytest.raises(InputError, match="^no input was given"):
        collect_inputs([])
    with pytest.raises(InputError, match="empty"):
        collect_inputs([""])


def test_dicom_folders_and_files(tmp_path):
    series = tmp_path / "series"
    for i in range(3):
        touch(series / f"IM{i:04d}.dcm", b"\0" * 200)
    with pytest.raises(InputError) as info:
        collect_inputs([series])
    assert "holds DICOM files" in str(info.value) and "dcm2niix" in str(info.value)
    # DICOM without a .dcm name: the DICM magic at byte 128
    magic = tmp_path / "magic"
    touch(magic / "sub/IM0001", b"\0" * 128 + b"DICM" + b"\0" * 20)
    with pytest.raises(InputError, match="dcm2niix"):
        collect_inputs([magic])
    with pytest.raises(InputError, match="is a DICOM file.*dcm2niix"):
        collect_inputs([series / "IM0000.dcm"])
    with pytest.raises(InputError, match="are DICOM.*dcm2niix"):
        collect_inputs([str(series / "*")])


def test_broken_link(tmp_path, ds):
    target = ds / "sub-03/anat/sub-03_T1w.nii.gz"
    target.unlink()
    try:
        target.symlink_to(tmp_path / "annex/missing")
    except (OSError, NotImplementedError):
        pytest.skip("no symlinks here")
    with pytest.raises(InputError, match="sub-03_T1w.nii.gz' is a broken link.*datalad get"):
        collect_inputs([ds])
    # only scans that are kept matter
    assert len(collect_inputs([ds], participant_labels=["01"])) == 2
    with pytest.raises(InputError, match="broken link"):
        collect_inputs([target])


def test_same_output_name_refused(tmp_path, plain):
    with pytest.raises(InputError, match=r"would be written to the same output name 'scan_desc-<desc>\.nii"):
        collect_inputs([plain / "a/scan.nii.gz", plain / "b/scan.nii.gz"])
    nifti(plain / "b/scan.nii")  # beside b/scan.nii.gz: both give b/scan_desc-X.nii.gz
    with pytest.raises(InputError, match="same output name 'b/scan_desc-<desc>.nii.gz'"):
        collect_inputs([plain])


def test_same_output_name_letter_case(tmp_path):
    nifti(tmp_path / "in/Scan.nii.gz")
    nifti(tmp_path / "in/scan.nii.gz")
    if len(list((tmp_path / "in").iterdir())) == 2:  # a case-sensitive file system
        with pytest.raises(InputError, match="same output name"):
            collect_inputs([tmp_path / "in"])


def test_same_bids_output_name_refused(tmp_path, ds):
    other = describe(tmp_path / "ds2")
    nifti(other / "sub-01/anat/sub-01_T1w.nii.gz")
    with pytest.raises(InputError, match="same output name 'sub-01/anat/sub-01_desc-<desc>_T1w.nii.gz'"):
        collect_inputs([ds, other])
    assert len(collect_inputs([ds, other], participant_labels=["02"])) == 3
    # two derivatives differing only by their desc would get the same new desc
    deriv = ds / "derivatives/fmriprep"
    nifti(deriv / "sub-01/anat/sub-01_desc-brain_T1w.nii.gz")
    with pytest.raises(InputError, match="same output name"):
        collect_inputs([deriv])


# --------------------------------------------------------------------------- output names


def bids_scan(rel: str, root: Path = Path("/data/ds")) -> ScanInput:
    entities, suffix, _ = parse_bids_name(rel.rsplit("/", 1)[-1])
    return ScanInput(root / rel, rel, root, entities, suffix, rel.split("/")[-2])


def test_output_paths_bids(tmp_path):
    out = tmp_path / "out"
    scan = bids_scan("sub-01/anat/sub-01_T1w.nii.gz")
    paths = output_paths(scan, out, desc="cubic", output_names=["image"])
    assert paths == {
        "image": out / "sub-01/anat/sub-01_desc-cubic_T1w.nii.gz",
        "sidecar": out / "sub-01/anat/sub-01_desc-cubic_T1w.json",
    }
    scan = bids_scan("sub-02/ses-post/anat/sub-02_ses-post_acq-fast_run-2_FLAIR.nii")
    paths = output_paths(scan, out, desc="harmonizegan",
                         output_names=["harmonized", "regions", "hallucination_map"])
    where = out / "sub-02/ses-post/anat"
    stem = "sub-02_ses-post_acq-fast_run-2_desc-harmonizegan"
    assert paths == {
        "harmonized": where / f"{stem}_FLAIR.nii.gz",
        "regions": where / f"{stem}_regions.nii.gz",
        "hallucination_map": where / f"{stem}_hallucinationmap.nii.gz",
        "sidecar": where / f"{stem}_FLAIR.json",
    }
    assert list(paths) == ["harmonized", "regions", "hallucination_map", "sidecar"]


def test_output_paths_replaces_desc(ds, tmp_path):
    (scan,) = collect_inputs([ds / "derivatives/fmriprep"])
    paths = output_paths(scan, tmp_path, desc="zscore", output_names=["image", "mask"])
    assert paths["image"] == tmp_path / "sub-01/anat/sub-01_desc-zscore_T1w.nii.gz"
    assert paths["mask"] == tmp_path / "sub-01/anat/sub-01_desc-zscore_mask.nii.gz"
    # a desc entity before others keeps its place
    odd = bids_scan("sub-01/anat/sub-01_desc-a_run-1_T1w.nii.gz")
    paths = output_paths(odd, tmp_path, desc="b", output_names=["x"])
    assert paths["x"].name == "sub-01_desc-b_run-1_T1w.nii.gz"


def test_output_paths_plain_nested(plain, tmp_path):
    out = tmp_path / "out"
    scans = {s.relpath: s for s in collect_inputs([plain])}
    names = ["image", "hallucination_map"]
    paths = output_paths(scans["b/c/scan.nii"], out, desc="cubic", output_names=names)
    assert paths == {
        "image": out / "b/c/scan_desc-cubic.nii.gz",
        "hallucination_map": out / "b/c/scan_desc-cubic_hallucinationmap.nii.gz",
        "sidecar": out / "b/c/scan_desc-cubic.json",
    }
    top = output_paths(scans["top.nii.gz"], out, desc="x", output_names=["i"])
    assert top["i"] == out / "top_desc-x.nii.gz"
    every = []
    for scan in scans.values():
        every.extend(output_paths(scan, out, desc="x", output_names=["i", "m"]).values())
    assert len(set(every)) == len(every)


def test_output_paths_refusals(tmp_path):
    escaping = ScanInput(Path("/x/scan.nii.gz"), "../scan.nii.gz")
    with pytest.raises(OutputPathError, match="would leave the output folder"):
        output_paths(escaping, tmp_path, desc="x", output_names=["image"])
    with pytest.raises(OutputPathError, match="would leave the output folder"):
        absolute = ScanInput(Path("/x/scan.nii.gz"), "/etc/scan.nii.gz")
        output_paths(absolute, tmp_path, desc="x", output_names=["i"])
    good = ScanInput(Path("/x/scan.nii.gz"), "scan.nii.gz")
    with pytest.raises(InputError, match="--desc"):
        output_paths(good, tmp_path, desc="a_b", output_names=["image"])
    for names in ([], ["image", "image"], ["image", "sidecar"], ["image", "__"], ["image", "a_b", "ab"]):
        with pytest.raises(ValueError):
            output_paths(good, tmp_path, desc="x", output_names=names)
    # an input whose suffix is the name of another output
    mask = bids_scan("sub-01/anat/sub-01_mask.nii.gz")
    with pytest.raises(OutputPathError, match="would share a file name"):
        output_paths(mask, tmp_path, desc="x", output_names=["image", "mask"])


def test_plan_outputs(plain, tmp_path):
    scans = collect_inputs([plain])
    plan = plan_outputs(scans, tmp_path, desc="x", output_names=["image", "mask"])
    assert list(plan) == [s.key for s in scans]
    assert plan[scans[0].key]["mask"] == tmp_path / "a/scan_desc-x_mask.nii.gz"
    # scans not from collect_inputs (which refuses these) that would write the same files
    clash = [ScanInput(Path("/a/s.nii.gz"), "s.nii.gz"), ScanInput(Path("/b/S.nii"), "S.nii")]
    with pytest.raises(OutputPathError, match="would both write"):
        plan_outputs(clash, tmp_path, desc="x", output_names=["image", "mask"])


def test_every_collected_scan_gets_paths_under_outdir(ds, plain, tmp_path):
    out = tmp_path / "out"
    for scan in collect_inputs([ds, plain], datatypes=()):
        for path in output_paths(scan, out, desc="d", output_names=["image", "x_y"]).values():
            assert out in path.parents


def test_desc_label():
    assert desc_label("medgen.harmonize_gan") == "harmonizegan"
    assert desc_label("classic.cubic") == "cubic"
    assert desc_label("template.zscore") == "zscore"
    assert desc_label("a.b.c-d") == "bcd"
    assert desc_label("nodot_id") == "nodotid"
    assert desc_label("medgen._") == "medgen"
    assert desc_label("__") == "medgen"


def test_check_desc():
    assert check_desc("cubic2") == "cubic2"
    for bad in ("", "a_b", "a-b", "a b", "é", None):
        with pytest.raises(InputError, match="--desc"):
            check_desc(bad)
    with pytest.raises(InputError, match="e.g. 'ab'"):
        check_desc("a_b")


# --------------------------------------------------------------------------- metadata


def test_dataset_description(tmp_path):
    root = tmp_path / "ds"
    desc = dataset_description(family_id="classic.cubic", family_version="1.2", package="medgen-classic",
                               napari_medgen_version="0.1.0", source_roots=[root])
    assert list(desc) == [
        "Name", "BIDSVersion", "DatasetType", "GeneratedBy", "SourceDatasets", "DatasetLinks"]
    assert desc["Name"] == "napari-medgen classic.cubic"
    assert desc["BIDSVersion"] == BIDS_VERSION == "1.9.0" and desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"] == [
        {"Name": "napari-medgen", "Version": "0.1.0", "Description": "classic.cubic 1.2 (medgen-classic)"}]
    assert desc["SourceDatasets"] == [{"URL": root.as_uri()}]
    assert desc["DatasetLinks"] == {"raw": root.as_uri()}
    json.dumps(desc)
    two = dataset_description(family_id="f", family_version="1", package="p", napari_medgen_version="0",
                              source_roots=[root, tmp_path / "b"], name="My run")
    assert two["Name"] == "My run" and len(two["SourceDatasets"]) == 2 and "DatasetLinks" not in two


def test_sources_entry_and_roots(ds, plain):
    scans = collect_inputs([ds, plain])
    bids = next(s for s in scans if s.is_bids)
    other = next(s for s in scans if not s.is_bids)
    assert sources_entry(bids) == "bids:raw:sub-01/anat/sub-01_FLAIR.nii.gz"
    assert sources_entry(bids, link=None) == bids.path.as_uri()
    assert sources_entry(other) == other.path.as_uri() and sources_entry(other).startswith("file://")
    assert bids_roots(scans) == [ds]


def test_scan_input_is_frozen():
    scan = ScanInput(Path("/x.nii"), "x.nii")
    with pytest.raises(dataclasses.FrozenInstanceError):
        scan.relpath = "y"  # type: ignore[misc]
    assert (scan.subject, scan.session, scan.is_bids, scan.key) == ("", "", False, "/x.nii")


def test_imports_stay_light():
    code = (
        "import sys, napari_medgen.batch, napari_medgen.batch.bids\n"
        "names = ('dask', 'distributed', 'napari', 'qtpy', 'PyQt5', 'bids', 'torch')\n"
        "heavy = [m for m in names if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)

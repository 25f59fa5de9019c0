"""`medgen run lesion SCAN -o out/ --count N --variants V`: a reproducible batch of image + mask pairs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_medgen.cli import batch_paths, main
from napari_medgen.errors import Cancelled
from napari_medgen.family import OutputSpec
from napari_medgen.io.nifti import write_nifti

FAMILY = ("--family", "classic.procedural")
LESION = ["run", "lesion", "{scan}", *FAMILY]


@pytest.fixture
def scan(tmp_path):
    from napari_medgen.io.phantom import make_phantom

    vol, _ = make_phantom((24, 40, 40), spacing=(1.0, 1.0, 1.0), seed=1)
    path = tmp_path / "scan.nii.gz"
    write_nifti(vol, path)
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def lesion(scan, *argv):
    return ("run", "lesion", scan, *FAMILY, *argv)


def table(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def data(path):
    return np.asarray(nib.load(path).dataobj)


@pytest.fixture
def runs(monkeypatch):
    """Counts the family's runs; ``runs.fail_at = (n, exc)`` makes the n-th run raise ``exc``."""
    from medgen_classic.lesion import ProceduralLesion

    original = ProceduralLesion.run

    class Runs(list):
        fail_at: tuple[int, BaseException] | None = None

    calls = Runs()

    def run(self, inputs, params, ctx):
        calls.append(ctx.seed)
        if calls.fail_at is not None and len(calls) == calls.fail_at[0]:
            raise calls.fail_at[1]
        return original(self, inputs, params, ctx)

    monkeypatch.setattr(ProceduralLesion, "run", run)
    return calls


def test_batch_writes_every_pair_one_table_and_one_sidecar(capsys, scan, tmp_path, runs):
    out = tmp_path / "out"
    argv = lesion(scan, "-o", f"{out}/", "--count", 4, "--variants", 3, "--seed", 7)
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert runs == [7, 8, 9]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [f"scan_lesions_v{k}{s}.nii.gz" for k in (1, 2, 3) for s in ("", "_mask")]
        + ["scan_lesions.csv", "scan_lesions.medgen.json"]
    )
    # progress says which variant, then the family's own progress
    assert "variant 2/3: " in err and "variant 3/3: done" in err
    assert "wrote " + str(out / "scan_lesions.csv") + " (lesion table, 12 row(s))" in stdout

    rows = table(out / "scan_lesions.csv")
    assert len(rows) == 4 * 3
    header = list(rows[0])
    assert header[:12] == "variant seed image mask label i j k x y z volume_mm3".split()
    assert header[12:] == sorted(header[12:])
    assert {"diameter_mm", "semi_axes_mm", "contrast", "voxels"} <= set(header)
    assert [(r["variant"], r["seed"], r["label"]) for r in rows] == [
        (str(k), str(6 + k), str(lab)) for k in (1, 2, 3) for lab in (1, 2, 3, 4)
    ]
    affine = nib.load(scan).affine
    for r in rows:
        k = int(r["variant"])
        assert r["image"] == f"scan_lesions_v{k}.nii.gz" and r["mask"] == f"scan_lesions_v{k}_mask.nii.gz"
        mask = data(out / r["mask"])
        ijk = np.array([float(r[a]) for a in "ijk"])
        # the centre, in the file's voxels, lies in a lesion; x,y,z is the same point in world mm
        assert mask[tuple(np.round(ijk).astype(int))] > 0
        xyz = [float(r[a]) for a in "xyz"]
        np.testing.assert_allclose(nib.affines.apply_affine(affine, ijk), xyz, atol=2e-3)
        assert float(r["volume_mm3"]) == pytest.approx(int((mask == int(r["label"])).sum()), abs=1e-3)
        assert len(r["semi_axes_mm"].split(";")) == 3
    sidecar = json.loads((out / "scan_lesions.medgen.json").read_text())
    assert sidecar["batch"]["variants_done"] == 3 and sidecar["batch"]["status"] == "done"
    assert sidecar["batch"]["seeds"] == [7, 8, 9] and sidecar["batch"]["count"] == 4
    assert [v["seed"] for v in sidecar["variants"]] == [7, 8, 9]
    assert [v["provenance"]["seed"] for v in sidecar["variants"]] == [7, 8, 9]
    assert all(v["provenance"]["params"]["n_lesions"] == 4 for v in sidecar["variants"])
    assert sidecar["variants"][1]["outputs"]["mask"].endswith("scan_lesions_v2_mask.nii.gz")


def test_variant_k_is_the_single_run_with_seed_s_plus_k_minus_1(capsys, scan, tmp_path):
    code, _, err = run_cli(capsys, *lesion(scan, "-o", tmp_path / "out", "--count", 2, "--variants", 2,
                                           "--seed", 3, "--quiet"))
    assert code == 0, err
    single = tmp_path / "single.nii.gz"
    code, _, err = run_cli(capsys, *lesion(scan, "-o", single, "--count", 2, "--seed", 4, "--quiet"))
    assert code == 0, err
    pairs = [(single, "scan_lesions_v2.nii.gz"),
             (tmp_path / "single_mask.nii.gz", "scan_lesions_v2_mask.nii.gz")]
    for mine, theirs in pairs:
        a, b = data(mine), data(tmp_path / "out" / theirs)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert data(tmp_path / "out" / "scan_lesions_v1.nii.gz").tobytes() != data(single).tobytes()
    # the single run's --count is the family's n_lesions
    assert len(json.loads((tmp_path / "single.medgen.json").read_text())["lesions"]) == 2
    # the table's rows of variant 2 are the lesions of the single run
    rows = [r for r in table(tmp_path / "out" / "scan_lesions.csv") if r["variant"] == "2"]
    lesions = json.loads((tmp_path / "single.medgen.json").read_text())["lesions"]
    assert [float(r["diameter_mm"]) for r in rows] == [les["diameter_mm"] for les in lesions]


def test_file_names_are_padded_to_the_width_of_variants():
    specs = [OutputSpec("image"), OutputSpec("mask", "labels"), OutputSpec("weights")]
    plan = batch_paths(Path("o"), Path("/d/ct.nii"), specs, 10)
    assert [p.name for p in plan["variants"][0]] == [
        "ct_lesions_v01.nii.gz", "ct_lesions_v01_mask.nii.gz", "ct_lesions_v01_weights.nii.gz"
    ]
    assert plan["variants"][9][0].name == "ct_lesions_v10.nii.gz" and len(plan["variants"]) == 10
    assert (plan["table"].name, plan["sidecar"].name) == ("ct_lesions.csv", "ct_lesions.medgen.json")


def test_an_existing_output_of_any_variant_refuses_the_batch_before_any_compute(capsys, scan, tmp_path, runs):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scan_lesions_v3_mask.nii.gz").write_bytes(b"earlier")
    code, _, err = run_cli(capsys, *lesion(scan, "-o", out, "--variants", 3, "--quiet"))
    assert code == 2 and "variant 3 output 'mask'" in err and "already exists; use --overwrite" in err
    (out / "scan_lesions_v3_mask.nii.gz").unlink()
    (out / "scan_lesions.csv").write_bytes(b"earlier")
    code, _, err = run_cli(capsys, *lesion(scan, "-o", out, "--variants", 3, "--quiet"))
    assert code == 2 and "lesion table" in err and "already exists" in err
    # an output that is an input is refused even with --overwrite
    (out / "scan_lesions.csv").unlink()
    region = out / "scan_lesions_v2_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(nib.load(scan).shape, np.uint8), nib.load(scan).affine), region)
    code, _, err = run_cli(capsys, *lesion(scan, "-o", out, "--variants", 3, "--quiet", "--mask", region,
                                           "--overwrite"))
    assert code == 2 and "is the mask file" in err
    assert runs == []
    assert sorted(p.name for p in out.iterdir()) == ["scan_lesions_v2_mask.nii.gz"]
    # a folder that does not exist yet is created only once everything was checked
    deeper = tmp_path / "new" / "deeper"
    argv = lesion(scan, "-o", deeper, "--variants", 2, "--quiet", "--param", "nope=1")
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "superres", "{scan}", "-o", "{tmp}/x.nii.gz", "--count", "3"],
         "--count (lesions per output) is only for task lesion"),
        (["run", "superres", "{scan}", "-o", "{tmp}/o/", "--variants", "3"],
         "--variants (batch of lesion images) is only for task lesion"),
        ([*LESION, "-o", "{tmp}/x.nii.gz", "--count", "3", "--param", "n_lesions=4"],
         "disagree"),
        ([*LESION, "-o", "{tmp}/x.nii.gz", "--count", "0"], "--count must be at least 1"),
        ([*LESION, "-o", "{tmp}/o/", "--variants", "0"], "--variants must be at least 1"),
        ([*LESION, "-o", "{tmp}/x.nii.gz", "--variants", "3"], "looks like a file name"),
        ([*LESION, "-o", "{scan}", "--variants", "3"], "is a file"),
        ([*LESION, "-o", "{tmp}/o", "--variants", "2", "--mask-output", "{tmp}/m.nii.gz"],
         "--mask-output"),
    ],
)
def test_batch_mistakes_give_one_line_and_write_nothing(capsys, scan, tmp_path, runs, argv, message):
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [a.format(scan=scan, tmp=tmp_path) for a in argv]
    code, _, err = run_cli(capsys, *argv)
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("medgen: error:"), err
    assert message in lines[0]
    assert runs == [] and sorted(p.name for p in tmp_path.iterdir()) == before


def test_count_with_a_family_without_n_lesions_is_refused(capsys, scan, tmp_path, monkeypatch, runs):
    from medgen_classic.lesion import ProceduralLesion

    params = tuple(p for p in ProceduralLesion.params if p.name != "n_lesions")
    monkeypatch.setattr(ProceduralLesion, "params", params)
    code, _, err = run_cli(capsys, *lesion(scan, "-o", tmp_path / "x.nii.gz", "--count", 3))
    assert code == 2 and "has no 'n_lesions' parameter" in err and runs == []


def test_count_and_the_same_n_lesions_param_agree(capsys, scan, tmp_path):
    code, _, err = run_cli(capsys, *lesion(scan, "-o", tmp_path / "x.nii.gz", "--count", 2,
                                           "--param", "n_lesions=2", "--quiet"))
    assert code == 0, err
    assert len(json.loads((tmp_path / "x.medgen.json").read_text())["lesions"]) == 2


@pytest.mark.parametrize("stop", ["cancel", "fail"])
def test_a_batch_stopped_at_variant_2_keeps_variant_1_with_its_table(capsys, scan, tmp_path, runs, stop):
    runs.fail_at = (2, Cancelled("cancelled") if stop == "cancel" else RuntimeError("boom"))
    out = tmp_path / "out"
    argv = lesion(scan, "-o", out, "--count", 2, "--variants", 3, "--seed", 5, "--quiet")
    code, _, err = run_cli(capsys, *argv)
    assert runs == [5, 6]
    if stop == "cancel":
        assert code == 130
        assert "medgen: cancelled after 1 of 3 variants; files of variant 1 kept" in err
    else:
        assert code == 1
        assert "medgen: error: variant 2 of 3: family 'classic.procedural' failed: RuntimeError: boom" in err
        assert "files of variant 1 kept" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == [
        "scan_lesions.csv", "scan_lesions.medgen.json",
        "scan_lesions_v1.nii.gz", "scan_lesions_v1_mask.nii.gz",
    ]
    rows = table(out / "scan_lesions.csv")
    assert [r["variant"] for r in rows] == ["1", "1"]
    batch = json.loads((out / "scan_lesions.medgen.json").read_text())["batch"]
    assert batch["variants_done"] == 1 and batch["variants_requested"] == 3
    assert batch["status"] == ("cancelled" if stop == "cancel" else "failed")


def test_a_batch_cancelled_in_its_first_variant_writes_nothing(capsys, scan, tmp_path, runs):
    runs.fail_at = (1, Cancelled("cancelled"))
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, *lesion(scan, "-o", f"{out}/", "--variants", 3, "--quiet"))
    assert code == 130 and "cancelled; no output written" in err
    assert list(out.iterdir()) == []


def test_overwrite_replaces_a_batch(capsys, scan, tmp_path):
    out = tmp_path / "out"
    args = lesion(scan, "-o", out, "--count", 1, "--variants", 2, "--quiet")
    assert run_cli(capsys, *args)[0] == 0
    first = (out / "scan_lesions.csv").read_bytes()
    code, _, err = run_cli(capsys, *args, "--seed", 9, "--overwrite")
    assert code == 0, err
    assert (out / "scan_lesions.csv").read_bytes() != first
    assert [r["seed"] for r in table(out / "scan_lesions.csv")] == ["9", "10"]


def test_points_give_the_lesions_and_a_different_count_is_warned_once(capsys, scan, tmp_path):
    centre = np.array(nib.load(scan).shape) // 2
    points = tmp_path / "points.csv"
    points.write_text("i,j,k\n" + ",".join(map(str, centre)) + "\n")
    argv = lesion(scan, "-o", tmp_path / "out", "--points", points, "--count", 3, "--variants", 2, "--quiet")
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert err.count("medgen: warning: variant 1 has 1 lesion(s), not the 3 of --count") == 1
    rows = table(tmp_path / "out" / "scan_lesions.csv")
    # the table's i,j,k are the file's voxels, as --points reads them
    assert [[float(r[a]) for a in "ijk"] for r in rows] == [list(map(float, centre))] * 2


def test_a_file_the_family_saves_itself_is_written_by_variant_1_only(capsys, scan, tmp_path, monkeypatch):
    from medgen_classic.lesion import ProceduralLesion

    from napari_medgen.family import Param

    original = ProceduralLesion.run
    saves = []

    def run(self, inputs, params, ctx):
        saves.append(params["save_model"])
        if params["save_model"]:
            Path(params["save_model"]).write_text("a model\n")
        return original(self, inputs, params, ctx)

    save = Param("save_model", "str", "", help="save the model", path="write", suffixes=(".txt",))
    monkeypatch.setattr(ProceduralLesion, "params", (*ProceduralLesion.params, save))
    monkeypatch.setattr(ProceduralLesion, "run", run)
    model = tmp_path / "model.txt"
    argv = lesion(scan, "-o", tmp_path / "out", "--variants", 3, "--param", f"save_model={model}", "--quiet")
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert saves == [str(model), "", ""] and model.read_text() == "a model\n"


def test_a_label_mask_given_on_the_command_line_keeps_its_labels(capsys, tmp_path):
    """placement=masks renders each label of --mask as one lesion (a binarised mask merged them)."""
    from napari_medgen.io.phantom import make_phantom

    vol, _ = make_phantom((32, 48, 48), seed=2)
    vol = vol.with_data((vol.data * 1000).astype(np.float32))
    scan = tmp_path / "scan.nii.gz"
    write_nifti(vol, scan)
    shapes = np.zeros(vol.shape, np.uint8)
    shapes[14:18, 20:24, 20:24] = 1
    shapes[14:18, 20:24, 28:32] = 2
    mask = tmp_path / "shapes.nii.gz"
    write_nifti(vol.with_data(shapes), mask)
    out = tmp_path / "les.nii.gz"
    code, _, err = run_cli(capsys, "run", "lesion", scan, "-o", out, "--mask", mask, "--param", "placement=masks",
                           "--quiet")
    assert code == 0, err
    written = data(tmp_path / "les_mask.nii.gz")
    assert sorted(np.unique(written)) == [0, 1, 2]
    np.testing.assert_array_equal(written > 0, data(mask) > 0)


def test_mask_input_keeps_labels_and_thresholds_a_probability_map():
    from napari_medgen import Volume
    from napari_medgen.masks import mask_input

    labels = Volume.from_spacing(np.array([[[0, 1, 2, -1]]], dtype=np.int16), (1.0, 1.0, 1.0))
    assert mask_input(labels).data.tolist() == [[[0, 1, 2, 0]]]
    floats = labels.with_data(np.array([[[0.0, 3.0, 7.0, -2.0]]], dtype=np.float32))
    assert mask_input(floats).data.tolist() == [[[0, 3, 7, 0]]]
    prob = labels.with_data(np.array([[[0.0, 0.2, 0.9, -0.1]]], dtype=np.float32))
    assert mask_input(prob).data.tolist() == [[[False, True, True, False]]]

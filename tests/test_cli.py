"""`medgen families` and `medgen run`, as a user types them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_medgen.cli import main
from napari_medgen.io.nifti import read_nifti, write_nifti


@pytest.fixture
def scans(tmp_path, phantom):
    from napari_medgen.io.phantom import make_phantom

    fine, _ = make_phantom((24, 40, 40), spacing=(1.0, 1.0, 1.0), seed=1)
    thick, _ = make_phantom((8, 40, 40), spacing=(3.0, 1.0, 1.0), seed=2)
    ref, _ = make_phantom((24, 40, 40), spacing=(1.0, 1.0, 1.0), seed=3)
    ref = ref.with_data(ref.data * 3.0 + 10.0)
    paths = {}
    for name, v in {"fine": fine, "thick": thick, "ref": ref}.items():
        paths[name] = tmp_path / f"{name}.nii.gz"
        write_nifti(v, paths[name])
    return paths


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_families_json(capsys):
    code, out, _ = run_cli(capsys, "families", "--json")
    assert code == 0
    rows = json.loads(out)
    ids = {r["id"] for r in rows}
    assert {"classic.linear", "classic.cubic", "classic.histmatch", "classic.nyul", "classic.outlier",
            "classic.procedural", "template.zscore"} <= ids
    for row in rows:
        assert {"id", "task", "version", "package", "status"} <= set(row)
    assert next(r for r in rows if r["id"] == "classic.cubic")["package"] == "medgen-classic"



def test_run_superres_writes_output_with_new_spacing(capsys, scans, tmp_path):
    out = tmp_path / "sr.nii.gz"
    code, stdout, err = run_cli(capsys, "run", "superres", scans["thick"], "-o", out, "--family", "classic.cubic",
                                "--quiet")
    assert code == 0, err
    img = nib.load(out)
    np.testing.assert_allclose(img.header.get_zooms()[:3], (1.0, 1.0, 1.0), atol=1e-5)
    src = nib.load(scans["thick"])
    assert img.shape[2] == pytest.approx(src.shape[2] * 3, abs=1)
    sidecar = json.loads((tmp_path / "sr.medgen.json").read_text())
    assert sidecar["provenance"]["family"] == "classic.cubic"


def test_run_lesion_with_points_csv_writes_mask(capsys, scans, tmp_path):
    vol = read_nifti(scans["fine"])
    centre_ijk = np.array(nib.load(scans["fine"]).shape) // 2
    csv_path = tmp_path / "points.csv"
    csv_path.write_text("i,j,k\n" + ",".join(map(str, centre_ijk)) + "\n")
    out = tmp_path / "les.nii.gz"
    code, _, err = run_cli(capsys, "run", "lesion", scans["fine"], "-o", out, "--points", csv_path,
                           "--param", "diameter_mm=6", "--param", "placement=points", "--seed", "4", "--quiet",
                           "--family", "classic.procedural")
    assert code == 0, err
    mask = nib.load(tmp_path / "les_mask.nii.gz")
    m = np.asarray(mask.dataobj)
    assert m[tuple(centre_ijk)] > 0
    assert m.shape == nib.load(scans["fine"]).shape
    changed = np.abs(np.asarray(nib.load(out).dataobj) - np.asarray(nib.load(scans["fine"]).dataobj)) > 1e-6
    assert changed[m > 0].mean() > 0.9
    # world-mm points give the same lesion
    xyz = nib.affines.apply_affine(nib.load(scans["fine"]).affine, centre_ijk)
    csv2 = tmp_path / "points_mm.csv"
    csv2.write_text("x,y,z\n" + ",".join(f"{v:.4f}" for v in xyz) + "\n")
    out2 = tmp_path / "les2.nii.gz"
    code, _, err = run_cli(capsys, "run", "lesion", scans["fine"], "-o", out2, "--points", csv2,
                           "--param", "diameter_mm=6", "--param", "placement=points", "--seed", "4", "--quiet",
                           "--family", "classic.procedural", "--mask-output", tmp_path / "custom_mask.nii.gz")
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "custom_mask.nii.gz").dataobj), m)
    assert vol.shape == tuple(reversed(m.shape))


def test_run_anomaly_and_harmonize(capsys, scans, tmp_path):
    code, _, err = run_cli(capsys, "run", "anomaly", scans["fine"], "-o", tmp_path / "heat.nii.gz", "--quiet",
                           "--family", "classic.outlier")
    assert code == 0, err
    assert (tmp_path / "heat_regions.nii.gz").exists()
    code, _, err = run_cli(capsys, "run", "harmonize", scans["fine"], "-o", tmp_path / "h.nii.gz",
                           "--reference", scans["ref"], "--family", "classic.histmatch", "--quiet")
    assert code == 0, err
    h = np.asarray(nib.load(tmp_path / "h.nii.gz").dataobj)
    ref = np.asarray(nib.load(scans["ref"]).dataobj)
    assert abs(np.percentile(h, 95) - np.percentile(ref, 95)) < 0.1 * np.percentile(ref, 95)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "superres", "missing.nii.gz", "-o", "x.nii.gz"], "does not exist"),
        (["run", "harmonize", "{fine}", "-o", "{tmp}/x.nii.gz"], "needs at least 1 reference"),
        (["run", "superres", "{thick}", "-o", "{tmp}/x.nii.gz", "--family", "nope"], "unknown family 'nope'"),
        (["run", "superres", "{thick}", "-o", "{tmp}/x.nii.gz", "--param", "zzz=1"], "no parameter zzz"),
        (["run", "lesion", "{fine}", "-o", "{tmp}/x.nii.gz", "--param", "n_lesions=abc"], "expects an integer"),
        (["run", "lesion", "{fine}", "-o", "{tmp}/x.nii.gz", "--param", "placement=points"], "point"),
        (["run", "superres", "{flat}", "-o", "{tmp}/x.nii.gz"], "is 2D"),
        (["run", "superres", "{thick}", "-o", "{tmp}/x.png"], "must end in .nii"),
        (["run", "superres", "{thick}", "-o", "{tmp}/x.nii.gz", "--device", "cuda"], "CUDA"),
    ],
)
def test_user_mistakes_give_one_line_and_nonzero_exit(capsys, scans, tmp_path, argv, message):
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(16, 16).astype(np.float32), np.eye(4)), flat)
    argv = [a.format(fine=scans["fine"], thick=scans["thick"], tmp=tmp_path, flat=flat) for a in argv]
    code, out, err = run_cli(capsys, *argv)
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert lines[0].startswith("medgen: error:")
    assert message in lines[0]
    assert "Traceback" not in err


def test_installed_console_script(tmp_path):
    exe = Path(sys.executable).parent / "medgen"
    proc = subprocess.run([str(exe), "families"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "classic.cubic" in proc.stdout and "template.zscore" in proc.stdout


# -- the candidate regions table (issue 9) ------------------------------------------------------
def outlier(scans, *argv):
    """``medgen run anomaly <fine scan> --family classic.outlier ARGV``."""
    return ("run", "anomaly", scans["fine"], "--family", "classic.outlier", *argv)


def _table(path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_run_anomaly_writes_the_regions_table_beside_the_heatmap(capsys, scans, tmp_path):
    from napari_medgen.regions import REGION_COLUMNS, regions_csv_bytes

    code, out, err = run_cli(capsys, *outlier(scans), "-o", tmp_path / "heat.nii.gz",
                             "--param", "threshold=3", "--param", "min_region_mm3=2")
    assert code == 0, err
    table = tmp_path / "heat_regions.csv"
    assert f"wrote {table} (candidate regions table" in out
    sidecar = json.loads((tmp_path / "heat.medgen.json").read_text())
    assert sidecar["outputs"]["regions_table"] == str(table)
    assert sidecar["n_regions"] >= 1
    # the same bytes as the dock's "Save table..."
    assert table.read_bytes() == regions_csv_bytes(sidecar["regions"])
    rows = _table(table)
    assert tuple(rows[0]) == REGION_COLUMNS and len(rows) == len(sidecar["regions"])
    labels = np.asarray(nib.load(tmp_path / "heat_regions.nii.gz").dataobj)
    assert int((labels == 1).sum()) == int(rows[0]["voxels"])
    # --regions-output chooses the place
    chosen = tmp_path / "tables" / "cands.csv"
    chosen.parent.mkdir()
    code, _, err = run_cli(capsys, *outlier(scans), "-o", tmp_path / "h2.nii.gz", "--quiet", "--param",
                           "threshold=3", "--param", "min_region_mm3=2", "--regions-output", chosen)
    assert code == 0, err
    assert chosen.read_bytes() == table.read_bytes() and not (tmp_path / "h2_regions.csv").exists()


def test_an_existing_regions_table_is_refused_before_any_compute(capsys, scans, tmp_path, monkeypatch):
    from medgen_classic.anomaly import IntensityOutlier

    runs = []
    monkeypatch.setattr(IntensityOutlier, "run", lambda self, *a, **k: runs.append(1))
    table = tmp_path / "heat_regions.csv"
    table.write_text("an earlier table\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_cli(capsys, *outlier(scans), "-o", tmp_path / "heat.nii.gz", "--quiet")
    assert code == 2 and "regions table" in err and "already exists; use --overwrite" in err
    chosen = tmp_path / "mine.csv"
    chosen.write_text("mine\n")
    code, _, err = run_cli(capsys, *outlier(scans), "-o", tmp_path / "h.nii.gz", "--quiet",
                           "--regions-output", chosen)
    assert code == 2 and "already exists" in err
    code, _, err = run_cli(capsys, *outlier(scans), "-o", tmp_path / "h.nii.gz", "--quiet",
                           "--regions-output", scans["fine"], "--overwrite")
    assert code == 2 and "regions table" in err and "is the input file" in err
    code, _, err = run_cli(capsys, "run", "superres", scans["thick"], "-o", tmp_path / "sr.nii.gz", "--quiet",
                           "--family", "classic.cubic", "--regions-output", tmp_path / "r.csv")
    assert code == 2 and "writes no candidate regions" in err
    assert runs == []
    assert table.read_text() == "an earlier table\n" and chosen.read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "mine.csv"])

"""`medgen batch` on a Dask LocalCluster of 2 processes, on phantoms: outputs and manifest, resume,
a failing scan among good ones, BIDS-derivative naming, and the bad-input cases."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_medgen import cli
from napari_medgen.io.nifti import write_nifti
from napari_medgen.io.phantom import make_phantom

pytestmark = pytest.mark.slow

FAMILY = ("superres", "classic.linear")


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    cl = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR)
    yield cl
    cl.close()


def _scan(path: Path, seed: int) -> Path:
    vol, _ = make_phantom((10, 20, 20), spacing=(3.0, 1.0, 1.0), seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(vol, path)
    return path


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "scans"
    for i, rel in enumerate(["a.nii.gz", "b.nii.gz", "site2/a.nii.gz"]):
        _scan(src / rel, i)
    return src


def batch(*args, cluster=None):
    extra = ["--scheduler", cluster.scheduler_address] if cluster is not None else ["--workers", "1"]
    return cli.main(["batch", FAMILY[0], *map(str, args), "--family", FAMILY[1], "-q", *extra])


def manifest(out: Path) -> dict[str, dict]:
    with open(out / "manifest.csv", newline="") as fh:
        return {Path(r["input"]).relative_to(out.parent / "scans").as_posix() if "scans" in r["input"] else r["input"]: r
                for r in csv.DictReader(fh)}


def test_outputs_manifest_and_resume(folder, tmp_path, cluster, capsys):
    out = tmp_path / "out"
    assert batch(folder, "-o", out, cluster=cluster) == 0
    rows = manifest(out)
    assert set(rows) == {"a.nii.gz", "b.nii.gz", "site2/a.nii.gz"}
    assert {r["status"] for r in rows.values()} == {"done"}
    for rel in ("a", "b", "site2/a"):  # the sub-folders are kept: same names never collide
        image = out / f"{rel}_desc-linear.nii.gz"
        side = json.loads((out / f"{rel}_desc-linear.json").read_text())
        assert nib.load(image).header.get_zooms()[:3] == pytest.approx((1.0, 1.0, 1.0))
        assert side["medgen"]["family"] == "classic.linear" and side["medgen"]["batch"]["input_sha256"]
        assert side["Sources"][0].startswith("file://")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    capsys.readouterr()
    # resume: nothing reruns; a scan whose sidecar is gone (killed before its commit) reruns alone
    assert batch(folder, "-o", out, cluster=cluster) == 0
    assert "0 done, 3 skipped" in capsys.readouterr().out
    (out / "b_desc-linear.json").unlink()
    assert batch(folder, "-o", out, cluster=cluster) == 0
    rows = manifest(out)
    assert rows["b.nii.gz"]["status"] == "done" and rows["a.nii.gz"]["status"] == "skipped"
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    assert [p.name for p in after if after[p] != before[p]] == ["b_desc-linear.nii.gz"]
    # other settings: refused before any compute, unless --force
    code = batch(folder, "-o", out, "--param", "target_spacing=2", cluster=cluster)
    assert code == 2 and "other settings" in capsys.readouterr().err
    assert batch(folder, "-o", out, "--param", "target_spacing=2", "--force", cluster=cluster) == 0
    assert nib.load(out / "a_desc-linear.nii.gz").header.get_zooms()[:3] == pytest.approx((2.0, 2.0, 2.0))


def test_a_failing_scan_does_not_stop_the_others(folder, tmp_path, cluster, capsys):
    (folder / "broken.nii.gz").write_bytes(b"not a nifti at all")
    out = tmp_path / "out"
    assert batch(folder, "-o", out, cluster=cluster) == 1
    err = capsys.readouterr().err
    assert "scan failed" in err and "broken.nii.gz" in err
    rows = manifest(out)
    assert rows["broken.nii.gz"]["status"] == "failed" and rows["broken.nii.gz"]["error"]
    assert [r["status"] for k, r in sorted(rows.items()) if k != "broken.nii.gz"] == ["done"] * 3
    assert not list(out.glob("broken*"))
    # --retry-failed reruns only the failure (still broken: still failed, the others untouched)
    assert batch(folder, "-o", out, "--retry-failed", cluster=cluster) == 1
    rows = manifest(out)
    assert rows["broken.nii.gz"]["status"] == "failed" and rows["a.nii.gz"]["status"] == "skipped"


def test_bids_dataset_gives_bids_derivatives(tmp_path, cluster):
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.9.0"}))
    _scan(root / "sub-01/anat/sub-01_T1w.nii.gz", 1)
    _scan(root / "sub-02/ses-pre/anat/sub-02_ses-pre_acq-fast_T1w.nii.gz", 2)
    _scan(root / "sub-02/ses-pre/anat/sub-02_ses-pre_FLAIR.nii.gz", 3)
    out = root / "derivatives" / "medgen"
    assert batch(root, "-o", out, "--suffix", "T1w", cluster=cluster) == 0
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "napari-medgen"
    assert (out / "sub-01/anat/sub-01_desc-linear_T1w.nii.gz").exists()
    side = json.loads((out / "sub-02/ses-pre/anat/sub-02_ses-pre_acq-fast_desc-linear_T1w.json").read_text())
    assert side["Sources"] == ["bids:raw:sub-02/ses-pre/anat/sub-02_ses-pre_acq-fast_T1w.nii.gz"]
    assert not list(out.rglob("*FLAIR*"))  # --suffix T1w
    assert batch(root, "-o", root, cluster=cluster) == 2  # never into the raw dataset itself


def test_the_default_local_cluster_runs_it(folder, tmp_path):
    out = tmp_path / "out"
    assert batch(folder / "site2", "-o", out) == 0  # --workers 1: a LocalCluster of its own
    assert (out / "a_desc-linear.nii.gz").exists()


def test_bad_inputs_are_one_clear_line(folder, tmp_path, capsys):
    t0 = time.monotonic()
    code = cli.main(["batch", "superres", str(folder), "-o", str(tmp_path / "o"), "--family", "classic.linear",
                     "--scheduler", "tcp://127.0.0.1:1"])
    assert code == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in capsys.readouterr().err
    assert time.monotonic() - t0 < 30
    assert cli.main(["batch", "superres", str(tmp_path / "nothing"), "-o", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert cli.main(["batch", "superres", str(folder), "-o", str(blocker / "out")]) == 2
    assert "cannot create the output folder" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root ignores the mode: the file case above covers it
            assert cli.main(["batch", "superres", str(folder), "-o", str(locked / "out")]) == 2
    finally:
        locked.chmod(0o700)


def test_a_worker_killed_while_writing_leaves_no_file_under_a_final_name(folder, tmp_path):
    """The worker process dies in the middle of writing the image: nothing under its name, no sidecar."""
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os
        from napari_medgen.batch import engine
        from napari_medgen.io import nifti

        real = nifti.nifti_writer

        def dying_writer(image, gz):
            write = real(image, gz)
            def writer(fh):
                fh.write(b"half a file")
                fh.flush()
                os._exit(9)  # killed mid-write
            return writer

        nifti.nifti_writer = dying_writer
        job = {{"key": "k", "input": {str(folder / "a.nii.gz")!r}, "outputs": {{"image": {str(out / "a.nii.gz")!r}}},
               "sidecar": {str(out / "a.json")!r}, "family": "classic.linear", "params": {{}}, "seed": 0,
               "device": "cpu", "time_budget": None, "references": [], "sources": [], "match": {{}},
               "gpus": 0, "threads": 1}}
        engine.process_scan(job)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr
    left = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    assert "a.nii.gz" not in left and "a.json" not in left


def test_a_site_model_is_trained_once_and_applied_to_every_scan(folder, tmp_path, capsys):
    """A family that learns from references trains on the first scan; the others get the model."""
    import fake_plugins.site_model as site
    from conftest import project_registry
    from distributed import LocalCluster

    from napari_medgen import registry as reg_mod

    reg_mod.set_registry(project_registry(extra=[("fake-site", site)]))
    site.TRAINED.clear()
    refs = [_scan(tmp_path / "refs" / f"r{i}.nii.gz", 10 + i) for i in range(2)]
    out = tmp_path / "out"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cl:  # threads in this process: they see the fake plugin
        args = ["batch", "harmonize", str(folder), "-o", str(out), "--family", "fake.sitemodel", "-q",
                "--reference", *map(str, refs), "--scheduler", cl.scheduler_address]
        assert cli.main(args) == 0
        assert site.TRAINED == [2]  # once, with both references
        model = out / "models" / "sitemodel.safetensors"
        assert f"shared model: {model}" in capsys.readouterr().out
        sides = [json.loads(p.read_text()) for p in sorted(out.rglob("*_desc-sitemodel.json"))]
        assert len(sides) == 3 and len({s["info"]["level"] for s in sides}) == 1
        assert sum("model_sha256" in s["medgen"]["batch"] for s in sides) == 2
        # resume: the model this batch saved is reused, nothing trains again
        (out / "b_desc-sitemodel.json").unlink()
        assert cli.main(args) == 0
        assert site.TRAINED == [2]


def test_ctrl_c_stops_the_batch_and_keeps_the_finished_scans(tmp_path):
    import signal

    src = tmp_path / "many"
    for i in range(10):
        _scan(src / f"s{i:02d}.nii.gz", i)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "napari_medgen", "batch", "superres", str(src), "-o", str(out),
            "--family", "medgen.selfsr", "--param", "max_steps=40", "--workers", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.3)
        jsonl = out / "manifest.jsonl"
        if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 1:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "finished scans are kept" in err
    with open(out / "manifest.csv", newline="") as fh:
        statuses = [r["status"] for r in csv.DictReader(fh)]
    assert "done" in statuses and "cancelled" in statuses and len(statuses) == 10
    for image in out.glob("*.nii.gz"):  # every file under a final name is whole
        assert np.isfinite(nib.load(image).get_fdata()).all()
        assert image.with_name(image.name.replace(".nii.gz", ".json")).exists()
    assert len(list(out.glob("*.nii.gz"))) == statuses.count("done")

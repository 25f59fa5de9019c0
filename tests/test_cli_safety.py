"""The CLI with wrong and hostile inputs: one test per defect of the reliability issue (items 1-7, 11).

Each asserts what a user would notice: the exit code, one clear line on stderr, the input
untouched and nothing (or only complete files) left in the output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_medgen.cli import main
from napari_medgen.io.nifti import write_nifti
from napari_medgen.io.phantom import make_phantom


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert lines[0].startswith("medgen: error:"), err
    assert "Traceback" not in err and "internal error" not in err
    return lines[0]


@pytest.fixture
def scans(tmp_path):
    fine, _ = make_phantom((16, 32, 32), spacing=(1.0, 1.0, 1.0), seed=1)
    ref, _ = make_phantom((16, 32, 32), spacing=(1.0, 1.0, 1.0), seed=3)
    paths = {"fine": tmp_path / "fine.nii.gz", "ref": tmp_path / "ref.nii.gz"}
    write_nifti(fine, paths["fine"])
    write_nifti(ref.with_data(ref.data * 3.0 + 10.0), paths["ref"])
    return paths


# -- 1. an output that is an input ------------------------------------------------------------
@pytest.mark.parametrize(
    "case",
    ["output is input", "output is reference", "symlink to input", "dir/.. to input", "mask-output is input",
     "automatic regions output is input", "relative path to input"],
)
def test_1_an_output_that_is_an_input_is_refused_and_the_input_survives(capsys, scans, tmp_path, case, monkeypatch):
    (tmp_path / "sub").mkdir()
    fine, ref = scans["fine"], scans["ref"]
    before = {p: digest(p) for p in (fine, ref)}
    task, extra = "harmonize", ["--reference", ref, "--family", "classic.histmatch"]
    if case == "output is input":
        out = fine
    elif case == "output is reference":
        out = ref
    elif case == "symlink to input":
        out = tmp_path / "alias.nii.gz"
        out.symlink_to(fine)
    elif case == "dir/.. to input":
        out = tmp_path / "sub" / ".." / "fine.nii.gz"
    elif case == "relative path to input":
        monkeypatch.chdir(tmp_path / "sub")
        out = Path("..") / "fine.nii.gz"
    elif case == "mask-output is input":
        task, extra, out = "lesion", ["--mask-output", fine], tmp_path / "les.nii.gz"
    else:  # anomaly's second output <stem>_regions.nii.gz is the input's own name
        regions_input = tmp_path / "scan_regions.nii.gz"
        regions_input.write_bytes(fine.read_bytes())
        fine, before = regions_input, {**before, regions_input: digest(regions_input)}
        task, extra, out = "anomaly", ["--family", "classic.outlier"], tmp_path / "scan.nii.gz"
    files = listing(tmp_path)
    for overwrite in ([], ["--overwrite"]):
        code, _, err = run_cli(capsys, "run", task, fine, "-o", out, *extra, *overwrite, "--quiet")
        assert code == 2
        line = one_error_line(err)
        assert "file" in line and "choose another name" in line, line
    assert {p: digest(p) for p in before} == before
    assert listing(tmp_path) == files


# -- 2. a write that fails midway ---------------------------------------------------------------
def _failing_writer_for(monkeypatch, predicate):
    """Make the NIfTI writer of outputs whose path matches ``predicate`` fail after 1 kB (disk full)."""
    from napari_medgen.io import nifti

    real = nifti.nifti_output

    def nifti_output(volume, path, like=None):
        target, writer = real(volume, path, like)
        if not predicate(Path(target)):
            return target, writer

        def fail(fh):
            fh.write(b"\0" * 1024)
            raise OSError(28, "No space left on device")

        return target, fail

    monkeypatch.setattr(nifti, "nifti_output", nifti_output)


def test_2_a_write_that_fails_midway_leaves_the_earlier_result_whole(capsys, scans, tmp_path, monkeypatch):
    out = tmp_path / "h.nii.gz"
    argv = ["run", "harmonize", scans["fine"], "-o", out, "--reference", scans["ref"], "--family", "classic.histmatch",
            "--quiet"]
    assert run_cli(capsys, *argv)[0] == 0
    earlier = {p: digest(p) for p in (out, tmp_path / "h.medgen.json")}
    files = listing(tmp_path)
    _failing_writer_for(monkeypatch, lambda p: True)
    code, _, err = run_cli(capsys, *argv, "--overwrite")
    assert code == 1
    assert "no space left on the device; nothing was written" in one_error_line(err)
    assert {p: digest(p) for p in earlier} == earlier
    assert listing(tmp_path) == files
    nib.load(out).get_fdata()  # still a readable NIfTI


# -- 3. a plugin cannot take over a built-in family id -------------------------------------------
@pytest.fixture
def takeover_plugin(tmp_path, monkeypatch):
    """An installed distribution (entry point 'aaa', sorting before 'builtin') that claims built-in ids."""
    site = tmp_path / "site"
    pkg = site / "takeover_medgen"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(
        """
        from napari_medgen import ModelFamily, Output, Result, Task, hookimpl

        class Impostor(ModelFamily):
            task = Task.SUPERRES
            display_name = "Impostor"
            version = "6.6.6"

            def run(self, inputs, params, ctx):
                raise RuntimeError("the impostor ran")

        def make(fid):
            fam = Impostor()
            fam.id = fid
            return fam

        @hookimpl
        def medgen_register_families(register):
            register(make("medgen.selfsr"))
            register(make("classic.cubic"))
            register(make("takeover.own"))
        """
    ))
    dist = site / "takeover_medgen-6.6.6.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: takeover-medgen\nVersion: 6.6.6\n")
    (dist / "entry_points.txt").write_text("[napari_medgen]\naaa = takeover_medgen\n")
    monkeypatch.syspath_prepend(str(site))
    from napari_medgen import registry as reg_mod

    reg_mod.set_registry(None)  # real entry-point discovery, as after `pip install takeover-medgen`
    yield
    reg_mod.set_registry(None)


def test_3_a_plugin_that_registers_a_builtin_id_loses_it_and_is_reported(capsys, takeover_plugin):
    from napari_medgen.registry import get_registry

    reg = get_registry()
    assert reg.get("medgen.selfsr").package == "napari-medgen"
    assert reg.get("classic.cubic").package == "medgen-classic"
    assert reg.get("takeover.own").package == "takeover-medgen"  # its own id is fine
    clashes = {e.family_id: e.message for e in reg.errors if e.stage == "clash"}
    assert set(clashes) == {"medgen.selfsr", "classic.cubic"}
    assert "takeover-medgen" in clashes["medgen.selfsr"] and "napari-medgen" in clashes["medgen.selfsr"]
    assert "takeover-medgen" in clashes["classic.cubic"] and "medgen-classic" in clashes["classic.cubic"]
    code, out, err = run_cli(capsys, "families")
    assert code == 0
    warnings = [line for line in err.splitlines() if "takeover-medgen" in line]
    assert len(warnings) == 2 and "medgen.selfsr" in err  # reported once per clash


# -- 4. several outputs: all or none -----------------------------------------------------------
def test_4_when_the_mask_write_fails_no_lesion_image_is_left(capsys, scans, tmp_path, monkeypatch):
    _failing_writer_for(monkeypatch, lambda p: p.name.startswith("les_mask"))
    files = listing(tmp_path)
    code, _, err = run_cli(capsys, "run", "lesion", scans["fine"], "-o", tmp_path / "les.nii.gz", "--quiet",
                           "--family", "classic.procedural")
    assert code == 1
    assert "mask" in one_error_line(err)
    assert listing(tmp_path) == files  # neither the image, nor the mask, nor the sidecar


# -- 5. an unwritable place is found before any compute ----------------------------------------
@pytest.fixture
def family_must_not_run(monkeypatch):
    from napari_medgen.families.superres import SelfSupervisedSR

    def run(self, inputs, params, ctx):
        raise AssertionError("compute started although an output place was unusable")

    monkeypatch.setattr(SelfSupervisedSR, "run", run)


def _unwritable_folder() -> Path:
    folder = Path("/sys")
    try:
        (folder / ".medgen-probe").touch()
    except OSError:
        return folder
    pytest.skip("/sys is writable here; no read-only folder to test with")


def test_5_unwritable_output_and_model_places_fail_before_training(capsys, tmp_path, family_must_not_run):
    thick, _ = make_phantom((8, 32, 32), spacing=(3.0, 1.0, 1.0))
    src = tmp_path / "thick.nii.gz"
    write_nifti(thick, src)
    ro = _unwritable_folder()
    code, _, err = run_cli(capsys, "run", "superres", src, "-o", ro / "sr.nii.gz", "--quiet")
    assert code == 2 and "cannot write output '/sys/sr.nii.gz': cannot write in the folder '/sys'" in one_error_line(err)
    code, _, err = run_cli(capsys, "run", "superres", src, "-o", tmp_path / "sr.nii.gz", "--quiet",
                           "--param", f"save_model={ro}/models/t2")
    assert code == 2 and "cannot write save_model file '/sys/models/t2.safetensors'" in one_error_line(err)
    # a model file that exists is kept unless --overwrite
    (tmp_path / "m.safetensors").write_bytes(b"an earlier model")
    code, _, err = run_cli(capsys, "run", "superres", src, "-o", tmp_path / "sr.nii.gz", "--quiet",
                           "--param", f"save_model={tmp_path / 'm'}")
    assert code == 2 and "m.safetensors' already exists; use --overwrite" in one_error_line(err)
    # a model file may not replace the input either
    code, _, err = run_cli(capsys, "run", "superres", src, "-o", tmp_path / "sr.nii.gz", "--quiet",
                           "--param", f"save_model={tmp_path / 'x'}", "--param", f"model_file={tmp_path / 'nope.safetensors'}")
    assert code == 2 and "model_file: the file" in one_error_line(err) and "does not exist" in err
    assert listing(tmp_path) == ["m.safetensors", "thick.nii.gz"]


# -- 6. an out-of-range number names the range -------------------------------------------------
def test_6_out_of_range_parameter_names_its_range(capsys, scans, tmp_path):
    code, _, err = run_cli(capsys, "run", "anomaly", scans["fine"], "-o", tmp_path / "a.nii.gz",
                           "--param", "threshold=0.1")
    assert code == 2
    assert "parameter 'threshold' must be between 0.5 and 100, got 0.1" in one_error_line(err)
    code, _, err = run_cli(capsys, "run", "lesion", scans["fine"], "-o", tmp_path / "l.nii.gz", "--param", "n_lesions=0")
    assert code == 2 and "must be between 1 and 200, got 0" in one_error_line(err)
    code, _, err = run_cli(capsys, "run", "anomaly", scans["fine"], "-o", tmp_path / "a.nii.gz",
                           "--param", "threshold=lots")
    assert code == 2 and "expects a number, got 'lots'" in one_error_line(err)


# -- 7. an output whose parent is a regular file -----------------------------------------------
def test_7_an_output_under_a_regular_file_is_a_clear_usage_error(capsys, scans, tmp_path):
    (tmp_path / "notes.txt").write_text("not a folder")
    code, _, err = run_cli(capsys, "run", "anomaly", scans["fine"], "-o", tmp_path / "notes.txt" / "a.nii.gz")
    assert code == 2
    assert "notes.txt' is a file, not a folder" in one_error_line(err)


# -- 8. a DICOM folder with several series ------------------------------------------------------
def test_8_several_dicom_series_are_listed_and_the_chosen_one_is_recorded(capsys, tmp_path):
    from test_io_dicom import write_two_series

    folder = tmp_path / "study"
    write_two_series(folder)
    out = tmp_path / "heat.nii.gz"
    code, _, err = run_cli(capsys, "run", "anomaly", folder, "-o", out, "-q")
    assert code == 2
    line = one_error_line(err)
    assert "2 DICOM series" in line and "--series" in line and "T1 MPRAGE" in line and "T2 FLAIR" in line
    assert not out.exists()
    code, _, err = run_cli(capsys, "run", "anomaly", folder, "-o", out, "-q", "--series", "3",
                           "--family", "classic.outlier")
    assert code == 0, err
    source = json.loads((tmp_path / "heat.medgen.json").read_text())["provenance"]["input_source"]
    assert source["series_instance_uid"] == "1.2.3.4.100" and source["series_number"] == 3
    assert source["series_description"] == "T1 MPRAGE" and source["source_folder"] == str(folder)


# -- 9 (weights). a missing weights file is "not found" ----------------------------------------
def test_9_a_missing_weights_file_is_reported_as_missing(tmp_path):
    from napari_medgen.engine import load_weights
    from napari_medgen.errors import WeightsError

    for name in ("model.pt", "model.safetensors", "model"):
        with pytest.raises(WeightsError, match="not found"):
            load_weights(tmp_path / name)


# -- 11. exit codes, quiet, plugin warnings, small ones -----------------------------------------
def test_11_exit_codes_are_documented_and_consistent(capsys, scans, tmp_path, with_fake_plugins):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    for code, words in ((0, "done"), (2, "the command line or an input is wrong"), (1, "a run failed"),
                        (130, "interrupted")):
        assert f"{code}" in help_text and words in help_text
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    run_help = " ".join(capsys.readouterr().out.split())
    assert "--overwrite" in run_help and "default: refuse" in run_help and "-q, --quiet" in run_help
    out = tmp_path / "x.nii.gz"
    cases = [
        (["run", "anomaly", tmp_path / "missing.nii.gz", "-o", out], 2),  # input
        (["run", "anomaly", scans["fine"], "-o", out, "--family", "nope"], 2),  # unknown family
        (["run", "anomaly", scans["fine"], "-o", out, "--param", "zzz=1"], 2),  # parameter
        (["run", "anomaly", scans["fine"], "-o", out, "--device", "cuda"], 2),  # device that is not there
        (["run", "harmonize", scans["fine"], "-o", out, "--family", "fake.echo"], 2),  # missing reference
        (["run", "harmonize", scans["fine"], "-o", out, "--reference", scans["ref"], "--family", "fake.explodes"], 1),
    ]
    for argv, expected in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == expected, (argv, err)
        one_error_line(err)
    assert not out.exists()


def test_11_a_broken_plugin_is_reported_by_families_once_not_by_every_command(tmp_path, scans):
    site = tmp_path / "site"
    (site / "broken_medgen").mkdir(parents=True)
    (site / "broken_medgen" / "__init__.py").write_text("raise ImportError('a dependency is missing')\n")
    dist = site / "broken_medgen-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-medgen\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[napari_medgen]\nbroken = broken_medgen\n")
    env = dict(os.environ, PYTHONPATH=str(site))
    exe = str(Path(sys.executable).parent / "medgen")
    fam = subprocess.run([exe, "families"], capture_output=True, text=True, env=env, timeout=120)
    assert fam.returncode == 0 and fam.stderr.count("broken-medgen") == 1, fam.stderr
    run = subprocess.run([exe, "run", "anomaly", str(scans["fine"]), "-o", str(tmp_path / "a.nii.gz"), "-q",
                          "--family", "classic.outlier"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stderr == "" and run.stdout == ""


def test_11_quiet_leaves_only_the_result_warning(capsys, tmp_path):
    thick, _ = make_phantom((8, 32, 32), spacing=(3.0, 1.0, 1.0))
    src = tmp_path / "thick.nii.gz"
    write_nifti(thick, src)
    # two training steps cannot beat B-spline: the family falls back and says so
    code, out, err = run_cli(capsys, "run", "superres", src, "-o", tmp_path / "sr.nii.gz", "-q",
                             "--param", "max_steps=2")
    assert code == 0 and out == ""
    assert err.startswith("medgen: warning:") and "B-spline" in err and len(err.strip().splitlines()) == 1
    assert "mean error" in err  # with the figures


def test_11_several_references_after_one_flag(capsys, scans, tmp_path):
    other = tmp_path / "ref2.nii.gz"
    other.write_bytes(scans["ref"].read_bytes())
    code, _, err = run_cli(capsys, "run", "harmonize", scans["fine"], "-o", tmp_path / "h.nii.gz",
                           "--family", "classic.nyul", "--reference", scans["ref"], other, "--quiet")
    assert code == 0, err
    sidecar = json.loads((tmp_path / "h.medgen.json").read_text())
    assert len(sidecar["provenance"]["references"]) == 2
    assert sidecar["provenance"]["input_source"]["path"].endswith("fine.nii.gz")


def test_11_an_anomaly_family_is_named_with_the_right_article(registry):
    from napari_medgen.errors import PluginError

    with pytest.raises(PluginError, match="is an anomaly family, not a superres family"):
        registry.get("classic.outlier", "superres")


def test_11_a_colour_picture_and_a_metre_wide_voxel_are_refused(registry):
    from napari_medgen import Inputs, Volume
    from napari_medgen.errors import InputError
    from napari_medgen.runner import run_family

    fam = registry.get("classic.outlier").family
    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.float32)
    with pytest.raises(InputError, match="2D picture with 3 colour channels"):
        run_family(fam, Inputs(image=Volume.from_spacing(rgb)))
    vol, _ = make_phantom((16, 32, 32))
    with pytest.raises(InputError, match="outside"):
        run_family(fam, Inputs(image=vol.with_data(vol.data, affine=np.diag([1000.0, 1, 1, 1]))))


def test_11_families_json_into_a_closed_pipe_is_not_an_error():
    exe = str(Path(sys.executable).parent / "medgen")
    proc = subprocess.run(["bash", "-c", f"'{exe}' families --json | head -c 10"], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout == "[\n  {\n    \""[:10]
    assert "Error" not in proc.stderr and "error" not in proc.stderr, proc.stderr


def test_overwrite_replaces_every_output_and_the_sidecar(capsys, scans, tmp_path):
    out = tmp_path / "a.nii.gz"
    argv = ["run", "anomaly", scans["fine"], "-o", out, "--quiet", "--family", "classic.outlier"]
    assert run_cli(capsys, *argv)[0] == 0
    written = ["a.medgen.json", "a.nii.gz", "a_regions.csv", "a_regions.nii.gz", "fine.nii.gz", "ref.nii.gz"]
    assert listing(tmp_path) == written
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "already exists; use --overwrite to replace it" in one_error_line(err)
    code, _, err = run_cli(capsys, *argv, "--param", "threshold=6", "--overwrite")
    assert code == 0, err
    assert json.loads((tmp_path / "a.medgen.json").read_text())["provenance"]["params"]["threshold"] == 6.0
    assert listing(tmp_path) == written

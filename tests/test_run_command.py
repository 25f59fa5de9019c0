""""Copy as command": the `medgen run ...` line that repeats a run, from the runner, the CLI and the docks."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
from conftest import open_dock

from napari_medgen import cli
from napari_medgen.commands import (
    build_command,
    command_from_provenance,
    default_output,
    format_param,
    placeholder_note,
    run_command,
    volume_source,
)
from napari_medgen.family import AUTO, Inputs, Param
from napari_medgen.io.nifti import read_nifti, write_nifti
from napari_medgen.io.read import read_volume
from napari_medgen.registry import get_registry
from napari_medgen.runner import run_family


def parsed(line: str, family=None):
    """The line as `medgen` reads it: its namespace and (with ``family``) its parsed parameters."""
    argv = shlex.split(line)
    assert argv[:2] == ["medgen", "run"]
    args = cli.build_parser().parse_args(argv[1:])
    params = cli.parse_params(args.param, family) if family is not None else None
    return args, params


def family(fid):
    return get_registry().get(fid).family


@pytest.fixture
def thick_file(tmp_path):
    from napari_medgen.io.phantom import make_phantom

    thick, _ = make_phantom((8, 40, 40), spacing=(3.0, 1.0, 1.0), seed=2)
    path = tmp_path / "my scan.nii.gz"  # a space: the line must quote it
    write_nifti(thick, path)
    return path


# -- the pure function ---------------------------------------------------------------------------
def test_paths_with_spaces_and_quotes_survive_the_shell(tmp_path):
    src = "/data/site A/o'brien \"t1\".nii.gz"
    ref = "/data/refs/$HOME `x`.nii.gz"
    line = run_command("harmonize", "classic.histmatch", {"n_quantiles": 256}, seed=3, device="cpu",
                       input_source={"path": src}, input_name="o'brien",
                       reference_sources=[{"path": ref}], reference_names=["ref"])
    args, _ = parsed(line)
    assert str(args.input) == src and [str(r) for r in args.reference] == [ref]
    assert args.output == "/data/site A/o'brien \"t1\"_harmonize.nii.gz"
    assert args.task == "harmonize" and args.family == "classic.histmatch"
    assert args.param == ["n_quantiles=256"] and args.seed == 3 and args.device == "cpu"
    assert args.time_budget is None and args.series is None and args.mask is None and args.points is None
    assert line.startswith("medgen run harmonize '/data/site A/")


def test_values_read_back_by_param_parse():
    cases = [
        (Param("on", "bool", True), True, "true"),
        (Param("off", "bool", True), False, "false"),
        (Param("n", "int", 3, minimum=1), np.int64(7), "7"),
        (Param("x", "float", 0.5), 0.1 + 0.2, "0.30000000000000004"),
        (Param("y", "float", 0.5), np.float32(0.1), repr(float(np.float32(0.1)))),
        (Param("z", "float", 0.5), 1e-7, "1e-07"),
        (Param("w", "float", 0.5), 4, "4.0"),
        (Param("steps", "int", AUTO, minimum=1, auto="the preset"), AUTO, "auto"),
        (Param("thick", "float", AUTO, auto="estimated"), 2.5, "2.5"),
        (Param("mode", "choice", "a", choices=("a", "b c")), "b c", "b c"),
        (Param("text", "str", ""), "1,10,20 x", "1,10,20 x"),
    ]
    for param, value, text in cases:
        assert format_param(value, param) == text, param.name
        back = param.parse(text)
        assert back == param.validate(value) and type(back) is type(param.validate(value)), param.name
    # without a declaration the value's own type decides
    values = (True, 3, 2.0, "auto", np.bool_(False))
    assert [format_param(v) for v in values] == ["true", "3", "2.0", "auto", "false"]


def test_every_parameter_is_explicit_and_an_empty_file_parameter_is_left_out():
    fam = family("medgen.selfsr")
    params = fam.resolve_params({"max_steps": 12, "slice_thickness": AUTO, "model_file": ""})
    cmd = build_command("superres", fam.id, params, param_specs=fam.params, seed=2, device="cpu",
                        input_source={"path": "/d/scan.nii.gz"}, time_budget=90.5)
    args, back = parsed(cmd.line, fam)
    assert "model_file" not in back and "save_model" not in back  # "" means no file
    assert fam.resolve_params(back) == params
    assert back["slice_thickness"] == AUTO and back["max_steps"] == 12
    assert [p.split("=")[0] for p in args.param] == [p.name for p in fam.params if p.path == ""]
    assert args.time_budget == 90.5 and cmd.complete
    # a file parameter with a value is the path as given
    params = fam.resolve_params({"model_file": "/models/site b.pt"})
    args, back = parsed(build_command("superres", fam.id, params, param_specs=fam.params,
                                      input_source={"path": "/d/scan.nii.gz"}).line, fam)
    assert back["model_file"] == "/models/site b.pt"


def test_round_trip_through_the_parser_for_every_family():
    """Every installed family, with its defaults: the line parses back to the same run."""
    for entry in get_registry().families():
        fam = entry.family
        params = fam.resolve_params({})
        line = run_command(fam.task.value, fam.id, params, param_specs=fam.params, seed=11, device="cpu",
                           input_source={"path": "/d/scan.nii.gz"}, input_name="scan")
        args, back = parsed(line, fam)
        assert (args.task, args.family, args.seed, args.device) == (fam.task.value, fam.id, 11, "cpu"), fam.id
        assert fam.resolve_params(back) == params, fam.id


def test_dicom_input_names_the_folder_and_the_series_when_the_folder_held_several():
    src = {"source_folder": "/dicom/study 1/ser", "series_instance_uid": "1.2.840.1.7", "series_number": 4}
    several = {**src, "several_series": True}
    args, _ = parsed(run_command("anomaly", "classic.outlier", {}, input_source=several))
    assert str(args.input) == "/dicom/study 1/ser" and args.series == "1.2.840.1.7"
    assert args.output == "/dicom/study 1/ser_anomaly.nii.gz"
    one = dict(src, several_series=False)
    args, _ = parsed(run_command("anomaly", "classic.outlier", {}, input_source=one))
    assert args.series is None
    # a reference that is one series of a several-series folder: the CLI cannot choose it, so it is flagged
    cmd = build_command("harmonize", "classic.nyul", {}, input_source={"path": "/d/a.nii.gz"},
                        reference_sources=[several], reference_names=["ref T1"])
    assert [p["role"] for p in cmd.placeholders] == ["reference 1"]
    assert "several series" in cmd.placeholders[0]["hint"] and "'ref T1'" in cmd.placeholders[0]["hint"]


def test_volume_source_of_files_dicom_and_results(tmp_path, thick_phantom):
    vol = thick_phantom
    assert volume_source(vol) == {} and volume_source(None) == {}
    path = tmp_path / "a.nii.gz"
    write_nifti(vol, path)
    read = read_volume(path)
    assert volume_source(read) == {"path": str(path)}
    # a run's result keeps its input's file in its metadata, but it is not that file
    result = run_family(family("classic.cubic"), Inputs(image=read), {}, device="cpu")
    out = result.outputs[0].volume
    assert out.metadata["nifti"]["source_path"] == str(path) and volume_source(out) == {}
    dicom = vol.with_data(vol.data)
    series = {"source_folder": "/x", "series_instance_uid": "1.2"}
    dicom.metadata["dicom"] = {**series, "other_series": [{"n": 1}]}
    assert volume_source(dicom) == {**series, "several_series": True}


def test_layers_without_a_file_get_placeholders_and_a_note():
    cmd = build_command("lesion", "classic.procedural", {"n_lesions": 2, "placement": "points"},
                        input_source={}, input_name="my scan", mask_source={}, mask_name="brain",
                        points=3, seed=5)
    args, _ = parsed(cmd.line)
    assert str(args.input) == "<my scan>.nii.gz" and str(args.mask) == "<brain>.nii.gz"
    assert str(args.points) == "<points>.csv"
    assert args.output == "my_scan_lesion.nii.gz"  # no folder to put it beside: the current one
    assert "'<my scan>.nii.gz'" in cmd.line  # quoted: a shell never reads < as a redirection
    assert [(p["role"], p["layer"]) for p in cmd.placeholders] == [("input", "my scan"), ("mask", "brain"),
                                                                   ("points", "")]
    note = placeholder_note(cmd.placeholders)
    assert "save layer 'my scan' to a file first" in note and "save layer 'brain'" in note
    assert "the command names a placeholder" in note and "the 3 points" in note
    assert placeholder_note([]) == "" and not cmd.complete


def test_odd_paths_and_explicit_output():
    cmd = build_command("superres", "classic.linear", {}, input_source={"path": "-scan.nii"},
                        output="-out.nii.gz", time_budget=30, extra_args=["--regions-output", "r.csv"])
    args, _ = parsed(cmd.line)
    assert shlex.split(cmd.line)[3] == "./-scan.nii" and args.output == "./-out.nii.gz"
    assert args.time_budget == 30.0
    assert args.regions_output is not None and cmd.output == "-out.nii.gz"
    assert default_output("/a/b.nii", "anomaly") == "/a/b_anomaly.nii.gz"
    assert default_output("rel/scan.hdr", "harmonize") == "rel/scan_harmonize.nii.gz"
    assert default_output("/a/dicom/", "lesion") == "/a/dicom_lesion.nii.gz"
    assert default_output("", "lesion", placeholder="a/b c") == "a_b_c_lesion.nii.gz"


def test_command_from_a_provenance_record():
    params = {"target_spacing": "auto", "clip": False}
    prov = {"task": "superres", "family": "classic.cubic", "params": params, "seed": 9,
            "device": "cpu", "time_budget": None, "input": "scan",
            "input_source": {"path": "/d/scan.nii.gz"}, "references": [], "reference_sources": [],
            "n_points": 0, "mask": None}
    cmd = command_from_provenance(prov, family("classic.cubic"), output="/o/x.nii.gz")
    args, back = parsed(cmd.line, family("classic.cubic"))
    assert back == params and args.output == "/o/x.nii.gz" and args.seed == 9


# -- the runner and the CLI ---------------------------------------------------------------------
def _arg(argv, flag):
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize("fid, params", [
    ("classic.cubic", {"clip": False}),
    ("medgen.selfsr", {"max_steps": 3}),  # slice_thickness, slice_axis: auto
])
def test_the_recorded_line_runs_the_same_run_in_the_cli(capsys, tmp_path, thick_file, fid, params):
    fam = family(fid)
    image = read_volume(thick_file)
    result = run_family(fam, Inputs(image=image), params, device="cpu", seed=4)
    prov = result.info["provenance"]
    line = prov["command"]
    assert prov["command_placeholders"] == [] and prov["time_budget"] is None
    assert result.outputs[0].volume.metadata["medgen"]["command"] == line
    args, back = parsed(line, fam)
    assert str(args.input) == str(thick_file) and args.family == fid
    assert fam.resolve_params(back) == prov["params"] and (args.seed, args.device) == (4, "cpu")
    if fid == "medgen.selfsr":
        assert "--param slice_thickness=auto" in line and "--param max_steps=3" in line
    # the suggested output is beside the input; the CLI records the -o it was given instead
    argv = shlex.split(line)
    assert _arg(argv, "-o") == str(tmp_path / "my scan_superres.nii.gz")
    out = tmp_path / "cli out" / "sr.nii.gz"
    out.parent.mkdir()
    argv[argv.index("-o") + 1] = str(out)
    assert cli.main(argv[1:] + ["-q"]) == 0, capsys.readouterr().err
    np.testing.assert_allclose(read_nifti(out).data, result.outputs[0].volume.data, rtol=1e-5, atol=1e-5)
    record = json.loads((out.parent / "sr.medgen.json").read_text())
    assert shlex.split(record["provenance"]["command"]) == argv
    assert record["provenance"]["command_placeholders"] == []


def test_cli_record_names_its_points_file_and_extra_outputs(capsys, tmp_path, phantom):
    vol = phantom[0]
    src = tmp_path / "fine.nii.gz"
    write_nifti(vol, src)
    points = tmp_path / "centres.csv"
    points.write_text("i,j,k\n20,20,12\n")
    out, mask_out = tmp_path / "les.nii.gz", tmp_path / "lesion mask.nii.gz"
    code = cli.main(["run", "lesion", str(src), "-o", str(out), "--family", "classic.procedural",
                     "--points", str(points), "--param", "placement=points", "--mask-output", str(mask_out),
                     "--seed", "2", "-q"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "les.medgen.json").read_text())
    argv = shlex.split(record["provenance"]["command"])
    assert _arg(argv, "--points") == str(points) and _arg(argv, "-o") == str(out)
    assert _arg(argv, "--mask-output") == str(mask_out) and record["provenance"]["command_placeholders"] == []
    args, back = parsed(record["provenance"]["command"], family("classic.procedural"))
    assert back["placement"] == "points" and args.seed == 2


# -- the dock -----------------------------------------------------------------------------------
def _run_and_wait(qtbot, dock):
    dock.last_result = None
    dock.run()
    qtbot.waitUntil(lambda: not dock._running and (dock.last_result is not None or dock.last_error),
                    timeout=60000)
    assert dock.last_error == "", dock.last_error


def _status_plain(dock):
    from qtpy.QtGui import QTextDocument

    doc = QTextDocument()
    doc.setHtml(dock.status.text())
    return doc.toPlainText()


def test_dock_copies_the_command_of_its_last_run(make_napari_viewer, qtbot, thick_file):
    """The real threaded worker: a NIfTI opened through the reader, run, Copy."""
    from qtpy.QtWidgets import QApplication

    from napari_medgen.demo import PLUGIN

    viewer = make_napari_viewer()
    layer = viewer.open(str(thick_file), plugin=PLUGIN)[0]
    dock = open_dock(viewer, "Super-resolution")
    button = dock.command_action.button
    assert not button.isEnabled()
    dock.image_combo.value = layer.name
    dock.select_family("classic.cubic")
    dock.set_params(clip=False)
    _run_and_wait(qtbot, dock)
    prov = dock.last_result.info["provenance"]
    assert button.isEnabled() and button.toolTip() == prov["command"]
    button.click()
    text = QApplication.clipboard().text()
    assert text == prov["command"] and shlex.split(text)[3] == str(thick_file)
    args, back = parsed(text, family("classic.cubic"))
    assert back == {"target_spacing": "auto", "clip": False}
    assert (args.seed, args.device) == (prov["seed"], prov["device"])
    shown = _status_plain(dock)
    assert shown == f"Copied: {text}" and "placeholder" not in shown

    # the result layer as the input of another dock: no file behind it, so a placeholder and a note
    result_layer = viewer.layers[-1]
    other = open_dock(viewer, "Anomaly map")
    other.image_combo.value = result_layer.name
    other.select_family("classic.outlier")
    _run_and_wait(qtbot, other)
    other.command_action.button.click()
    text = QApplication.clipboard().text()
    assert text == other.last_result.info["provenance"]["command"]
    assert shlex.split(text)[3] == f"<{result_layer.name}>.nii.gz"
    shown = _status_plain(other)
    assert shown.startswith(f"Copied: {text}")
    assert f"save layer '{result_layer.name}' to a file first" in shown and "placeholder" in shown
    assert f"<{result_layer.name}>.nii.gz" in shown  # shown as text, not swallowed as a tag


def test_dock_layer_made_in_the_viewer_gives_a_placeholder(make_napari_viewer, qtbot, phantom, sync_workers):
    from qtpy.QtWidgets import QApplication

    from napari_medgen.io.napari_io import volume_to_layer_data

    viewer = make_napari_viewer()
    data, kwargs, _ = volume_to_layer_data(phantom[0], name="scan")
    viewer.add_image(data, **kwargs)
    dock = open_dock(viewer, "Anomaly map")
    dock.image_combo.value = "scan"
    dock.select_family("classic.outlier")
    dock.run()
    assert dock.last_error == ""
    line = dock.command_action.copy()
    assert QApplication.clipboard().text() == line == dock.last_result.info["provenance"]["command"]
    assert shlex.split(line)[3] == "<scan>.nii.gz"
    assert dock.last_result.info["provenance"]["command_placeholders"][0]["layer"] == "scan"
    assert "save layer 'scan' to a file first" in _status_plain(dock)

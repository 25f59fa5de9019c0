"""A dock's "Run on a folder...": the dialog, progress and cancel in a thread worker, a real batch."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import pytest
from conftest import add_volume, open_dock

from napari_medgen.errors import Cancelled, InputError
from napari_medgen.io.nifti import write_nifti
from napari_medgen.io.phantom import make_phantom
from napari_medgen.widgets.batch_action import CANCEL_TEXT, RUN_TEXT, default_output


@pytest.fixture
def cohort(tmp_path):
    """A folder with two tiny thick-slice scans."""
    folder = tmp_path / "cohort"
    folder.mkdir()
    for i in range(2):
        vol, _ = make_phantom((12, 24, 24), spacing=(3, 1, 1), seed=i, name=f"scan{i}")
        write_nifti(vol, folder / f"scan{i}.nii.gz")
    return folder


def _plain(label) -> str:
    from qtpy.QtGui import QTextDocument

    doc = QTextDocument()
    doc.setHtml(label.text())
    return doc.toPlainText()


def _batch_bars():
    from napari.utils import progress

    return [p for p in progress._all_instances if str(p.desc).startswith("MedGen batch")]


def _superres_dock(viewer):
    dock = open_dock(viewer, "Super-resolution")
    dock.select_family("classic.cubic")
    dock.set_params(clip=False)
    return dock


def _fill(dialog, cohort, output=None, workers=0, mode="resume"):
    dialog.set_input(cohort)
    if output is not None:
        dialog.set_output(output)
    dialog.workers_spin.setValue(workers)
    dialog.mode = mode


# -- the dialog ---------------------------------------------------------------------------------
def test_dialog_builds_the_docks_batch(make_napari_viewer, tmp_path, cohort):
    viewer = make_napari_viewer()
    dock = _superres_dock(viewer)
    action = dock.batch_action
    assert action.button.text() == RUN_TEXT and action.button.isEnabled()
    dialog = action.make_dialog()
    assert dialog.workers_spin.text() == "auto" and dialog.mode == "resume"
    assert "classic.cubic" in _plain(dialog.what) and "clip=false" in _plain(dialog.what)
    _fill(dialog, cohort)
    # the output follows the input: beside it, "<name>_medgen"
    assert dialog.output_edit.text() == str(tmp_path / "cohort_medgen") == default_output(cohort)
    assert not dialog.bids_box.isEnabled()  # not a BIDS dataset
    config = dialog.config()
    assert (config.task, config.family_id) == ("superres", "classic.cubic")
    assert config.params == {"target_spacing": "auto", "clip": False}
    assert list(config.inputs) == [str(cohort)] and config.outdir == str(tmp_path / "cohort_medgen")
    assert (config.device, config.seed, config.time_budget) == dock.run_settings() == ("cpu", 0, None)
    assert config.workers is None and not config.force and not config.retry_failed
    assert list(config.references) == [] and list(config.participant_labels) == []

    # a learned family: the dock's device, seed and time budget travel with the batch
    dock.select_family("medgen.selfsr")
    dock.set_params(max_steps=5)
    dock.device_combo.value = "cpu"
    dock.seed_box.value = 7
    dock.budget_box.value = 60.0
    dialog = action.make_dialog()
    _fill(dialog, cohort, output=tmp_path / "out", workers=2, mode="force")
    config = dialog.config()
    assert config.family_id == "medgen.selfsr" and config.params["max_steps"] == 5
    assert (config.device, config.seed, config.time_budget) == ("cpu", 7, 60.0)
    assert config.workers == 2 and config.force and not config.retry_failed
    assert config.outdir == str(tmp_path / "out")
    dialog.mode = "retry_failed"
    config = dialog.config()
    assert config.retry_failed and not config.force


def test_dialog_bids_defaults_and_refusals(make_napari_viewer, tmp_path, cohort):
    viewer = make_napari_viewer()
    dock = _superres_dock(viewer)
    dialog = dock.batch_action.make_dialog()
    # a BIDS root: the output defaults to its derivatives, the filters are offered and passed on
    root = tmp_path / "bids"
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.8.0"}')
    dialog.set_input(root)
    assert dialog.output_edit.text() == str(root / "derivatives" / "medgen")
    assert dialog.bids_box.isEnabled()
    dialog.participants_edit.setText("01 sub-02")
    dialog.suffix_edit.setText("T1w  FLAIR")
    config = dialog.config()
    assert list(config.participant_labels) == ["01", "sub-02"] and list(config.suffixes) == ["T1w", "FLAIR"]
    assert config.outdir == str(root / "derivatives" / "medgen")
    dialog.set_output(root / "sub-01")
    with pytest.raises(InputError, match="inside the BIDS dataset"):
        dialog.config()

    # mistakes are shown in the dialog, which stays open
    dialog = dock.batch_action.make_dialog()
    dialog.set_input(tmp_path / "missing")
    dialog.accept()
    assert dialog.result_config is None and "does not exist" in dialog.error_label.text()
    assert not dialog.error_label.isHidden()
    _fill(dialog, cohort, output=cohort / "out")
    dialog.accept()
    assert dialog.result_config is None and "inside the input folder" in dialog.error_label.text()
    # an output folder the user typed is kept when the input changes; cleared, it follows again
    dialog.set_output(tmp_path / "mine")
    dialog.set_input(root)
    assert dialog.output_edit.text() == str(tmp_path / "mine")
    dialog.output_edit.clear()
    dialog.output_edit.textEdited.emit("")
    dialog.set_input(cohort)
    assert dialog.output_edit.text() == str(tmp_path / "cohort_medgen")


def test_references_are_the_files_behind_the_layers(make_napari_viewer, tmp_path, cohort):
    """A reference layer read from a file is passed as that file; one made in the viewer is refused."""
    from napari_medgen.demo import PLUGIN

    viewer = make_napari_viewer()
    ref_file = tmp_path / "normal.nii.gz"
    vol, _ = make_phantom((12, 24, 24), spacing=(3, 1, 1), seed=5, name="normal")
    write_nifti(vol, ref_file)
    opened = viewer.open(str(ref_file), plugin=PLUGIN)[0]
    add_volume(viewer, vol, name="made here")
    dock = open_dock(viewer, "Anomaly map")
    dock.select_family("classic.outlier")
    dock.set_params(threshold=3.0)
    add_volume(viewer, vol, name="the input")  # the dock's input: never offered as a reference
    dock.image_combo.value = "the input"
    dialog = dock.batch_action.make_dialog()
    _fill(dialog, cohort)
    dock.ref_select.value = [opened.name]
    config = dialog.config()
    assert list(config.references) == [str(ref_file)]
    assert config.task == "anomaly" and config.family_id == "classic.outlier"
    assert config.params["threshold"] == 3.0 and config.device == "cpu" and config.seed == 0

    dock.ref_select.value = [opened.name, "made here"]
    with pytest.raises(InputError) as info:
        dialog.config()
    assert str(info.value) == "save reference layer 'made here' to a file first (File > Save Layers)"
    dialog.accept()
    assert dialog.result_config is None
    assert dialog.error_label.text() == str(info.value)


def test_a_family_that_needs_references_says_where_to_pick_them(make_napari_viewer, cohort):
    viewer = make_napari_viewer()
    dock = open_dock(viewer, "Harmonize")
    dock.select_family("classic.histmatch")
    dialog = dock.batch_action.make_dialog()
    _fill(dialog, cohort)
    with pytest.raises(InputError, match="needs 1 reference scan"):
        dialog.config()


# -- running (a fake run_batch in the real thread worker) ----------------------------------------
def _summary(total, rows, outdir, **counts):
    from napari_medgen.batch.engine import BatchSummary

    return BatchSummary(total=total, rows=rows, manifest_csv=Path(outdir) / "manifest.csv", elapsed=2.4,
                        **counts)


def test_progress_in_the_status_line_and_the_activity_bar(make_napari_viewer, qtbot, monkeypatch, cohort):
    from qtpy.QtWidgets import QDialog

    import napari_medgen.batch.engine as engine

    viewer = make_napari_viewer()
    dock = _superres_dock(viewer)
    action = dock.batch_action
    seen = {}
    go = threading.Event()

    def fake_run_batch(config, *, progress=None, cancel=None, say=None):
        seen["config"], seen["cancel"], seen["thread"] = config, cancel, threading.current_thread()
        say("2 scan(s) to run, 0 already finished; 1 worker(s) x 1 torch thread(s)")
        row = {"input": str(cohort / "scan0.nii.gz"), "status": "done", "error": ""}
        progress(1, 2, row)
        assert go.wait(20), "the test never let the batch go on"
        bad = {"input": str(cohort / "scan1.nii.gz"), "status": "failed", "error": "FamilyError: boom"}
        progress(2, 2, bad)
        return _summary(2, [row, bad], config.outdir, done=1, failed=1)

    monkeypatch.setattr(engine, "run_batch", fake_run_batch)
    dialog = action.make_dialog()
    _fill(dialog, cohort, workers=1)
    with qtbot.capture_exceptions() as exceptions:
        dialog.accept()  # starts the batch
        assert dialog.result() == QDialog.Accepted and action.running
        assert action.button.text() == CANCEL_TEXT
        try:  # the worker waits on `go`: the viewer goes on processing events, the first scan shows
            qtbot.waitUntil(lambda: _plain(dock.status).startswith("Batch: 1/2 scans"), timeout=10_000)
            assert "1 worker(s)" in _plain(dock.status)
            bars = _batch_bars()
            assert len(bars) == 1 and "1/2 scans" in str(bars[0].desc) and bars[0].n == 50
            assert seen["thread"] is not threading.main_thread()
        finally:
            go.set()
        qtbot.waitUntil(lambda: _plain(dock.status).startswith("Batch done"), timeout=10_000)
        qtbot.wait(50)
    assert not exceptions, exceptions
    text = _plain(dock.status)
    manifest = Path(seen["config"].outdir) / "manifest.csv"
    assert text.startswith(f"Batch done: 1 done, 1 failed of 2 in 2 s; manifest: {manifest}")
    assert "failed: scan1.nii.gz: FamilyError: boom" in text and "Rerun failed scans only" in text
    assert _batch_bars() == [] and not action.running
    assert action.button.text() == RUN_TEXT and action.button.isEnabled()
    assert action.summary.failed == 1 and seen["config"].workers == 1
    assert len(viewer.layers) == 0  # a cohort is on disk, not in the viewer
    # the next dialog starts from the fields of this one
    again = action.make_dialog()
    assert again.input_edit.text() == str(cohort) and again.workers_spin.value() == 1


def test_cancel_sets_the_event_given_to_run_batch(make_napari_viewer, qtbot, monkeypatch, cohort):
    import napari_medgen.batch.engine as engine

    viewer = make_napari_viewer()
    dock = _superres_dock(viewer)
    action = dock.batch_action
    seen = {}
    started, release = threading.Event(), threading.Event()

    def fake_run_batch(config, *, progress=None, cancel=None, say=None):
        seen["cancel"] = cancel
        progress(1, 3, {"input": "a.nii.gz", "status": "done"})
        started.set()
        if not cancel.wait(20):
            return _summary(3, [], config.outdir, done=3)
        release.wait(20)  # the test looks at the "cancelling" state first
        raise Cancelled("batch cancelled")

    monkeypatch.setattr(engine, "run_batch", fake_run_batch)
    dialog = action.make_dialog()
    _fill(dialog, cohort)
    with qtbot.capture_exceptions() as exceptions:
        dialog.accept()
        qtbot.waitUntil(lambda: started.is_set() and _plain(dock.status).startswith("Batch: 1/3"),
                        timeout=10_000)
        assert not seen["cancel"].is_set()
        action.button.click()  # "Cancel batch"
        assert seen["cancel"].is_set()
        try:
            assert "cancelling" in _plain(dock.status) and not action.button.isEnabled()
            assert [str(p.desc).rstrip(": ") for p in _batch_bars()] == ["MedGen batch (Super-resolution): "
                                                                         "cancelling"]
        finally:
            release.set()
        qtbot.waitUntil(lambda: not action.running, timeout=10_000)
        qtbot.wait(50)
    assert not exceptions, exceptions
    text = _plain(dock.status)
    assert text.startswith("Batch cancelled after 1/3 scans; finished scans are kept")
    assert "manifest.csv" in text
    assert action.last_error == "cancelled" and _batch_bars() == []
    assert action.button.text() == RUN_TEXT and action.button.isEnabled()


def test_an_error_of_the_batch_goes_to_the_docks_error_line(make_napari_viewer, monkeypatch, cohort,
                                                            sync_workers):
    import napari_medgen.batch.engine as engine
    from napari_medgen.errors import OutputPathError

    viewer = make_napari_viewer()
    dock = _superres_dock(viewer)

    def fake_run_batch(config, *, progress=None, cancel=None, say=None):
        raise OutputPathError("2 scan(s) have outputs from a run with other settings")

    monkeypatch.setattr(engine, "run_batch", fake_run_batch)
    dialog = dock.batch_action.make_dialog()
    _fill(dialog, cohort)
    dialog.accept()
    assert dock.last_error == "2 scan(s) have outputs from a run with other settings"
    assert _plain(dock.status) == "Error: 2 scan(s) have outputs from a run with other settings"
    assert not dock.batch_action.running and _batch_bars() == []


def test_closing_the_viewer_mid_batch_cancels_it(make_napari_viewer, qtbot, monkeypatch, cohort):
    import napari_medgen.batch.engine as engine

    viewer = make_napari_viewer()
    dock = _superres_dock(viewer)
    seen = {}

    def fake_run_batch(config, *, progress=None, cancel=None, say=None):
        seen["cancel"] = cancel
        progress(0, 2, {"input": "a.nii.gz", "status": "skipped"})
        cancel.wait(20)
        time.sleep(0.2)
        progress(1, 2, {"input": "b.nii.gz", "status": "failed", "error": "late"})
        raise Cancelled("batch cancelled")

    monkeypatch.setattr(engine, "run_batch", fake_run_batch)
    dialog = dock.batch_action.make_dialog()
    _fill(dialog, cohort)
    with qtbot.capture_exceptions() as exceptions:
        dialog.accept()
        qtbot.waitUntil(lambda: "cancel" in seen, timeout=10_000)
        cancel = seen["cancel"]
        viewer.close()
        qtbot.waitUntil(cancel.is_set, timeout=5_000)
        qtbot.wait(600)  # the late progress and the end arrive and are ignored
    assert not exceptions, exceptions
    assert _batch_bars() == []


# -- one real batch --------------------------------------------------------------------------------
def test_a_real_batch_on_two_scans(make_napari_viewer, qtbot, tmp_path, cohort):
    """classic.cubic on 2 phantoms through the real run_batch: a Dask LocalCluster with one worker."""
    pytest.importorskip("distributed")
    viewer = make_napari_viewer()
    dock = _superres_dock(viewer)
    action = dock.batch_action
    dialog = action.make_dialog()
    out = tmp_path / "results"
    _fill(dialog, cohort, output=out, workers=1)
    with qtbot.capture_exceptions() as exceptions:
        dialog.accept()
        assert action.running
        qtbot.waitUntil(lambda: not action.running, timeout=120_000)
        qtbot.wait(50)
    assert not exceptions, exceptions
    assert action.last_error == "", action.last_error
    text = _plain(dock.status)
    assert text.startswith("Batch done: 2 done, 0 failed of 2 in "), text
    assert text.endswith(f"manifest: {out / 'manifest.csv'}")
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(Path(r["input"]).name for r in rows) == ["scan0.nii.gz", "scan1.nii.gz"]
    assert {r["status"] for r in rows} == {"done"}
    outputs = [Path(r["outputs"]) for r in rows]
    assert all(p.is_file() and p.parent == out for p in outputs), outputs
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(p.name for p in outputs)
    assert _batch_bars() == [] and len(viewer.layers) == 0

"""Files a dock run writes (a saved model): checked before compute, replaced only when the user says so."""

from __future__ import annotations

import pytest

from napari_medgen.demo import PLUGIN
from napari_medgen.io.nifti import write_nifti


@pytest.fixture
def sr_dock(make_napari_viewer, sync_workers, thick_phantom, tmp_path, monkeypatch):
    """The Super-resolution dock on a scan opened from a file, with a tiny training budget."""
    viewer = make_napari_viewer()
    src = write_nifti(thick_phantom, tmp_path / "thick.nii.gz")
    viewer.open(str(src), plugin=PLUGIN)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Super-resolution")
    w.image_combo.value = "thick"
    w.set_params(max_steps=5)
    asked: list[str] = []

    def answer(value):
        monkeypatch.setattr(type(w), "confirm_overwrite", lambda self, path: asked.append(path) or value)

    return viewer, w, src, asked, answer


def test_the_model_path_is_a_file_box_and_an_empty_one_means_none(sr_dock):
    from magicgui import widgets as mw

    _, w, *_ = sr_dock
    assert isinstance(w._param_widgets["save_model"], mw.FileEdit)
    assert w.params()["save_model"] == "" and w.params()["model_file"] == ""


def test_an_existing_model_is_replaced_only_after_the_user_agrees(sr_dock, tmp_path):
    viewer, w, src, asked, answer = sr_dock
    old = tmp_path / "m.safetensors"
    old.write_bytes(b"an earlier model")
    w.set_params(save_model=str(tmp_path / "m"))
    n = len(viewer.layers)
    answer(False)
    w.run()
    assert asked == [str(old)] and "existing file was kept" in w.status.text()
    assert old.read_bytes() == b"an earlier model" and len(viewer.layers) == n  # nothing ran
    answer(True)
    w.run()
    assert w.last_error == "", w.last_error
    assert len(viewer.layers) == n + 1
    assert old.read_bytes() != b"an earlier model" and (tmp_path / "m.json").exists()


def test_a_model_path_that_is_the_input_scan_is_refused_before_compute(sr_dock, tmp_path):
    viewer, w, src, asked, answer = sr_dock
    before = src.read_bytes()
    answer(True)
    n = len(viewer.layers)
    w.set_params(save_model="", model_file=str(tmp_path / "missing.safetensors"))
    w.run()
    assert "model_file: the file" in w.last_error and "does not exist" in w.last_error
    assert len(viewer.layers) == n and not asked
    # a model whose file would be the input scan (a symlink named like the model)
    (tmp_path / "alias.safetensors").symlink_to(src)
    w.set_params(save_model=str(tmp_path / "alias"), model_file="")
    w.run()
    assert "is the input file" in w.last_error and not asked
    assert src.read_bytes() == before and len(viewer.layers) == n


def test_a_sample_opened_from_the_menu_is_shown_as_radiologists_read_it(make_napari_viewer):
    from napari_medgen.display import orientation_for

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "mni152_t1_thick")
    assert tuple(viewer.dims.axis_labels) == ("S", "A", "R")
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    assert tuple(str(o) for o in camera.orientation) == orientation_for(("S", "A", "R"), "radiological")
    assert tuple(str(o) for o in camera.orientation)[1:] == ("up", "left")  # anterior up, patient right on the left

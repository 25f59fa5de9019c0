"""Scans are shown as radiologists read them, checked on the rendered canvas.

A NIfTI stored LPS on disk carries three markers: anterior, the patient's right and superior.
Opened through the reader, an axial slice must show anterior up and the patient's right on the
screen's left (radiological); coronal and sagittal reformats superior up, sagittal anterior
on the left; the axes are named S, A, R; the neurological setting puts the right on the right.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_medgen import display
from napari_medgen.demo import PLUGIN

BODY, ANTERIOR, RIGHT, SUPERIOR = 0.3, 1.0, 0.6, 0.45
SHAPE = (36, 48, 40)  # napari order (S, A, R)


def marker_volume() -> np.ndarray:
    """(S, A, R) array: a body with an anterior, a right and a superior marker."""
    v = np.zeros(SHAPE, np.float32)
    v[6:30, 8:40, 8:32] = BODY
    v[14:22, 34:40, 16:24] = ANTERIOR  # high A
    v[14:22, 20:28, 26:32] = RIGHT  # high R: the patient's right
    v[24:30, 20:28, 16:24] = SUPERIOR  # high S
    return v


@pytest.fixture
def marker_nifti(tmp_path):
    """The marker volume written LPS on disk (as DICOM-derived files often are)."""
    import nibabel as nib

    ras = marker_volume().transpose(2, 1, 0)  # (R, A, S) voxel order
    lps = ras[::-1, ::-1, :]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = (SHAPE[2] - 1, SHAPE[1] - 1, 0.0)
    path = tmp_path / "markers.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(lps), affine), path)
    return path


def where(viewer, value, region=None):
    """Where a marker appears on the canvas relative to the body: ('up'|'down', 'left'|'right')."""
    img = viewer.screenshot(canvas_only=True, flash=False)[..., 0].astype(float)
    if region is not None:
        img = img[:, region]
    ys, xs = np.nonzero(np.abs(img - 255 * value) <= 3)
    body_y, body_x = (np.mean(c) for c in np.nonzero(img > 40))
    assert ys.size > 20, f"marker {value} not on screen"
    dy, dx = ys.mean() - body_y, xs.mean() - body_x
    vertical = "up" if dy < -3 else "down" if dy > 3 else "centre"
    horizontal = "left" if dx < -3 else "right" if dx > 3 else "centre"
    return vertical, horizontal


def show(viewer, order, slice_index):
    viewer.dims.order = order
    viewer.dims.set_current_step(order[0], slice_index)
    viewer.reset_view()


@pytest.fixture
def opened(make_napari_viewer, marker_nifti):
    viewer = make_napari_viewer(show=True)
    layer = viewer.open(str(marker_nifti), plugin=PLUGIN)[0]
    layer.contrast_limits = (0.0, 1.0)
    return viewer, layer


def test_reader_opens_scans_as_radiologists_read_them(opened):
    viewer, layer = opened
    assert viewer.dims.axis_labels == ("S", "A", "R")
    np.testing.assert_allclose(layer.data[18, 36, 20], ANTERIOR)  # the reader's (S, A, R) order
    show(viewer, (0, 1, 2), 18)  # axial
    assert where(viewer, ANTERIOR)[0] == "up"
    assert where(viewer, RIGHT)[1] == "left"  # the patient's right on the screen's left
    show(viewer, (1, 0, 2), 24)  # coronal
    assert where(viewer, SUPERIOR)[0] == "up"
    assert where(viewer, RIGHT)[1] == "left"
    show(viewer, (2, 0, 1), 20)  # sagittal
    assert where(viewer, SUPERIOR)[0] == "up"
    assert where(viewer, ANTERIOR)[1] == "left"  # the face looks to the screen's left


def test_neurological_setting_puts_the_right_on_the_right_and_is_saved(opened):
    viewer, _ = opened
    display.set_convention("neurological")
    show(viewer, (0, 1, 2), 18)
    assert where(viewer, ANTERIOR)[0] == "up"
    assert where(viewer, RIGHT)[1] == "right"
    show(viewer, (2, 0, 1), 20)
    assert where(viewer, SUPERIOR)[0] == "up" and where(viewer, ANTERIOR)[1] == "left"
    saved = json.loads(display.config_path().read_text())
    assert saved["display_convention"] == "neurological"
    assert display.current_convention() == "neurological"


def test_display_setting_in_the_families_panel(opened, monkeypatch):
    viewer, _ = opened
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Model families")
    assert panel.display_combo.currentText() == "radiological"
    panel.display_combo.setCurrentText("neurological")
    show(viewer, (0, 1, 2), 18)
    assert where(viewer, RIGHT)[1] == "right"
    assert display.current_convention() == "neurological"
    monkeypatch.setenv(display.ENV_VAR, "radiological")  # the env var wins over the setting
    assert display.current_convention() == "radiological"


def test_3d_view_is_the_patient_not_a_mirror_image():
    # radiological axial: seen from the feet (superior away); neurological: from above
    assert display.orientation_for(("S", "A", "R"), "radiological") == ("away", "up", "left")
    assert display.orientation_for(("S", "A", "R"), "neurological") == ("towards", "up", "right")
    # coronal radiological: face to face with the patient
    assert display.orientation_for(("A", "S", "R"), "radiological") == ("towards", "up", "left")


def test_results_of_a_dock_get_the_convention(make_napari_viewer, sync_workers):
    from napari_medgen.io.napari_io import volume_to_layer_data
    from napari_medgen.volume import Volume

    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget(PLUGIN, "Anomaly map")  # installs the convention
    camera = viewer.scene.camera
    assert tuple(camera.orientation2d) == ("down", "right")  # napari's own until a scan arrives
    data, kwargs, _ = volume_to_layer_data(Volume(marker_volume(), np.eye(4), name="scan"))
    viewer.add_image(data, **kwargs)
    assert tuple(camera.orientation2d) == ("up", "left")
    assert viewer.dims.axis_labels == ("S", "A", "R")


def test_a_plain_image_is_left_alone(make_napari_viewer):
    viewer = make_napari_viewer()
    display.install_reading_convention(viewer)
    display.install_reading_convention(viewer)  # idempotent
    viewer.add_image(np.zeros((4, 5, 6)))  # not a scan read by napari-medgen: no anatomy known
    assert tuple(viewer.scene.camera.orientation2d) == ("down", "right")
    assert viewer.dims.axis_labels == ("-3", "-2", "-1") or viewer.dims.axis_labels == ("0", "1", "2")


def test_compare_view_is_labelled_and_read_like_the_normal_view(make_napari_viewer, qtbot, sync_workers):
    """After an SR run: input left, result right, each panel named, superior up and anterior left."""
    from napari_medgen.io.napari_io import volume_to_layer_data
    from napari_medgen.volume import Volume

    thick = np.zeros((12, 48, 40), np.float32)  # 3 mm slices along S
    thick[2:10, 8:40, 8:32] = BODY
    thick[7:10, 32:40, 16:24] = ANTERIOR  # a bright marker superior AND anterior
    viewer = make_napari_viewer(show=True)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Super-resolution")
    data, kwargs, _ = volume_to_layer_data(Volume(thick, np.diag([3.0, 1.0, 1.0, 1.0]), name="thick"))
    layer = viewer.add_image(data, **{**kwargs, "contrast_limits": (0.0, 1.0)})
    w.image_combo.value = "thick"
    w.select_family("classic.cubic")
    w.run()
    assert w.last_error == "", w.last_error
    result = viewer.layers[-1]
    result.contrast_limits = (0.0, 1.0)
    qtbot.wait(50)  # the window lays out (the canvas gets its size) as it would before a click
    w.compare_button.click()
    assert w.compare.panel_labels() == {"left": layer.name, "right": result.name}
    assert layer.name_overlay.visible and result.name_overlay.visible  # each panel is named
    assert viewer.canvas.overlays.text.visible
    assert viewer.canvas.overlays.text.text.replace(" ", "") == "left:input|right:result"
    assert viewer.dims.axis_labels[viewer.dims.displayed[0]] == "S"  # the thick axis, on screen
    viewer.canvas.overlays.text.visible = False  # white text is not anatomy: measure without it
    layer.name_overlay.visible = result.name_overlay.visible = False
    qtbot.wait(50)
    img = viewer.screenshot(canvas_only=True, flash=False)[..., 0].astype(float)
    viewer.canvas.overlays.text.visible = True
    layer.name_overlay.visible = result.name_overlay.visible = True
    half = img.shape[1] // 2
    for panel in (img[:, :half], img[:, half:]):
        ys, xs = np.nonzero(panel >= 230)
        body_y, body_x = (np.mean(c) for c in np.nonzero(panel > 40))
        assert ys.size > 20
        assert ys.mean() < body_y - 3, "superior is not up"
        assert xs.mean() < body_x - 3, "anterior is not on the left"
    w.compare_button.click()  # back: names hidden, caption gone
    assert not layer.name_overlay.visible and not viewer.canvas.overlays.text.visible

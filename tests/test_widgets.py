"""The docks, opened through the manifest as a user would, driving a real viewer."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import add_volume, open_dock

from napari_medgen.demo import DOCKS, PLUGIN


@pytest.fixture
def viewer(make_napari_viewer, sync_workers):
    return make_napari_viewer()


def test_all_five_docks_open_with_their_families(viewer):
    widgets = {name: open_dock(viewer, name) for name in DOCKS}
    sr = widgets["Super-resolution"]
    assert {"classic.linear", "classic.cubic"} <= {e.id for e in sr._entries}
    assert sr.device_combo.choices == ("auto", "cpu", "cuda", "mps")
    assert "CPU" in sr.device_label.text()
    assert widgets["Harmonize"].ref_select is not None
    assert widgets["Insert lesions"].points_combo is not None and widgets["Insert lesions"].mask_combo is not None
    rows = widgets["Model families"].rows()
    assert ("Cubic B-spline", "Super-resolution", "medgen-classic 0.1.0", "ok") in rows


def test_params_form_follows_family(viewer):
    w = open_dock(viewer, "Super-resolution")
    w.select_family("classic.cubic")
    assert set(w.params()) == {p.name for p in w.entry.family.params}


def test_superres_dock_adds_resampled_layer_and_leaves_input(viewer, thick_phantom):
    layer = add_volume(viewer, thick_phantom)
    before = np.array(layer.data, copy=True)
    w = open_dock(viewer, "Super-resolution")
    w.image_combo.value = layer.name
    assert "3 x 1 x 1 mm" in w.summary.text() or "spacing 3" in w.summary.text()
    w.select_family("classic.cubic")
    w.run()
    assert w.last_error == ""
    out = viewer.layers[-1]
    assert out is not layer
    np.testing.assert_allclose(out.scale, (1.0, 1.0, 1.0))
    assert out.data.shape == (36, 40, 40)
    # the result overlays the input: world bounding boxes agree within half an output voxel
    lo_in = np.asarray(layer.translate) - np.asarray(layer.scale) / 2
    lo_out = np.asarray(out.translate) - np.asarray(out.scale) / 2
    np.testing.assert_allclose(lo_in, lo_out, atol=0.5 + 1e-6)
    prov = out.metadata["medgen"]
    assert prov["family"] == "classic.cubic" and prov["input"] == layer.name
    np.testing.assert_array_equal(layer.data, before)


def test_anomaly_dock_gives_heatmap_and_regions(viewer, phantom):
    image = phantom[0]
    data = image.data.copy()
    data[10:14, 18:22, 18:22] += 0.8
    add_volume(viewer, image.with_data(data), "scan")
    w = open_dock(viewer, "Anomaly map")
    w.image_combo.value = "scan"
    w.select_family("classic.outlier")
    n = len(viewer.layers)
    w.run()
    assert w.last_error == ""
    new = list(viewer.layers)[n:]
    kinds = {type(layer).__name__ for layer in new}
    assert kinds == {"Image", "Labels"}
    heat = next(layer for layer in new if type(layer).__name__ == "Image")
    assert heat.colormap.name == "medgen_heat" and heat.blending == "translucent"
    assert tuple(heat.contrast_limits) == (0.0, 2 * w.last_result.info["threshold"])
    assert heat.data[12, 20, 20] > heat.data[5, 20, 20]


def test_harmonize_dock_with_reference(viewer, phantom):
    image = phantom[0]
    add_volume(viewer, image, "scan")
    add_volume(viewer, image.with_data(image.data * 4.0 + 1.0), "reference")
    w = open_dock(viewer, "Harmonize")
    w.image_combo.value = "scan"
    w.select_family("classic.nyul")
    w.run()
    assert "select a target-site scan under Reference(s) (Ctrl/Shift-click for several)" in w.last_error
    w.ref_select.value = ["reference"]
    w.run()
    assert w.last_error == ""
    out = viewer.layers[-1]
    assert out.data.max() > 2.0


def test_lesion_dock_from_points_matches_cli_result(viewer, phantom, tmp_path):
    image = phantom[0]
    layer = add_volume(viewer, image, "scan")
    centre = np.array(image.shape) // 2
    world = layer.data_to_world(centre)
    viewer.add_points([world], name="clicks")
    w = open_dock(viewer, "Insert lesions")
    w.image_combo.value = "scan"
    w.points_combo.value = "clicks"
    w.select_family("classic.procedural")
    w.set_params(placement="points", diameter_mm=6.0)
    w.seed_box.value = 5
    w.run()
    assert w.last_error == "", w.last_error
    mask = viewer.layers[-1]
    lesioned = viewer.layers[-2]
    assert type(mask).__name__ == "Labels"
    assert mask.data[tuple(centre)] > 0
    np.testing.assert_allclose(mask.scale, layer.scale)
    # same family, params and seed on the CLI path give the same voxels
    from napari_medgen import Inputs
    from napari_medgen.registry import get_registry
    from napari_medgen.runner import run_family

    fam = get_registry().get("classic.procedural").family
    res = run_family(fam, Inputs(image=image, points=centre[None].astype(float)),
                     {"placement": "points", "diameter_mm": 6.0}, seed=5)
    np.testing.assert_allclose(res.outputs[0].volume.data, lesioned.data, atol=1e-6)


@pytest.mark.parametrize("case", ["2d", "4d", "rgb", "nan", "constant"])
def test_bad_layers_give_a_message_and_no_layer(viewer, case):
    rng = np.random.default_rng(0)
    if case == "2d":
        viewer.add_image(rng.random((32, 32)), name="bad")
    elif case == "4d":
        viewer.add_image(rng.random((2, 6, 16, 16)), name="bad")
    elif case == "rgb":
        viewer.add_image((rng.random((16, 16, 3)) * 255).astype(np.uint8), name="bad", rgb=True)
    elif case == "nan":
        d = rng.random((6, 16, 16))
        d[0, 0, 0] = np.nan
        viewer.add_image(d, name="bad")
    else:
        viewer.add_image(np.ones((6, 16, 16)), name="bad")
    w = open_dock(viewer, "Anomaly map")
    w.image_combo.value = "bad"
    n = len(viewer.layers)
    w.run()
    assert w.last_error
    assert len(viewer.layers) == n
    assert w.run_button.isEnabled()
    expected = {"2d": "2D", "4d": "4D", "rgb": "RGB", "nan": "NaN", "constant": "constant"}[case]
    assert expected in w.last_error


def test_labels_layer_is_not_offered_as_image(viewer, phantom):
    viewer.add_labels(phantom[1], name="seg")
    w = open_dock(viewer, "Anomaly map")
    assert "seg" not in w.image_combo.choices


def test_failing_family_reports_and_reenables(viewer, phantom, with_fake_plugins):
    add_volume(viewer, phantom[0], "scan")
    w = open_dock(viewer, "Harmonize")
    w.refresh_families()
    w.image_combo.value = "scan"
    assert "scan" not in w.ref_select.choices  # the input is not offered as its own reference
    add_volume(viewer, phantom[0], "ref")
    w.ref_select.value = ["ref"]
    w.select_family("fake.explodes")
    n = len(viewer.layers)
    w.run()
    assert "ZeroDivisionError" in w.last_error
    assert len(viewer.layers) == n and w.run_button.isEnabled()


def test_cancel_in_a_thread_worker_leaves_no_layer(make_napari_viewer, qtbot, phantom, with_fake_plugins):
    viewer = make_napari_viewer()
    add_volume(viewer, phantom[0], "scan")
    w = open_dock(viewer, "Anomaly map")
    w.refresh_families()
    w.image_combo.value = "scan"
    w.select_family("fake.slow")
    n = len(viewer.layers)
    w.run()
    assert w.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: w.progress_bar.value() > 0, timeout=5000)
    w.cancel()
    qtbot.waitUntil(lambda: not w._running, timeout=3000)  # cancel acts within a second or so
    assert w.last_error == "cancelled"
    assert len(viewer.layers) == n
    assert w.run_button.isEnabled()


def test_families_panel_shows_plugin_errors_and_reload_refreshes_docks(viewer):
    import fake_plugins.echo
    import fake_plugins.typo_hook
    from conftest import project_registry

    from napari_medgen import registry as reg_mod

    dock = open_dock(viewer, "Anomaly map")
    panel = open_dock(viewer, "Model families")
    assert "fake.slow" not in [e.id for e in dock._entries]
    reg_mod.set_registry(project_registry(extra=[("typo", fake_plugins.typo_hook), ("fake-echo", fake_plugins.echo)]))
    panel.reload()
    assert "fake.slow" in [e.id for e in dock._entries]
    rows = panel.rows()
    assert any(r[0] == "plugin 'typo'" and r[3].startswith("error") for r in rows)
    assert "1 plugin problem" in panel.errors_label.text()


def test_open_and_save_nifti_through_the_viewer(viewer, tmp_path):
    import nibabel as nib

    affine = np.diag([0.9, 0.9, 5.0, 1.0])
    affine[:3, 3] = (-90.0, -100.0, -40.0)
    data = np.random.default_rng(0).random((20, 24, 8)).astype(np.float32)
    src = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), src)
    layers = viewer.open(str(src), plugin=PLUGIN)
    layer = layers[0]
    np.testing.assert_allclose(layer.scale, (5.0, 0.9, 0.9))
    np.testing.assert_allclose(layer.translate, (-40.0, -100.0, -90.0))
    out = tmp_path / "saved.nii.gz"
    viewer.layers.save(str(out), selected=False, plugin=PLUGIN)
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    np.testing.assert_allclose(back.get_fdata(), data, atol=1e-6)


def test_template_plugin_installed_with_pip_appears_in_the_dock_and_runs(viewer, phantom, monkeypatch):
    """Real entry-point discovery (as after `pip install medgen-template`), then a run from the dock."""
    from napari_medgen import registry as reg_mod

    monkeypatch.setenv("MEDGEN_SHOW_EXAMPLES", "1")  # the template is an example family: listed when asked
    reg_mod.set_registry(None)  # the next lookup discovers installed plugins
    image = phantom[0]
    add_volume(viewer, image, "scan")
    add_volume(viewer, image.with_data(image.data * 2.0 + 0.5), "reference")
    w = open_dock(viewer, "Harmonize")
    entry = next(e for e in w._entries if e.id == "template.zscore")
    assert entry.package == "medgen-template"
    w.image_combo.value = "scan"
    w.ref_select.value = ["reference"]
    w.select_family("template.zscore")
    assert set(w.params()) == {"strength"}
    w.run()
    assert w.last_error == ""
    out = viewer.layers[-1]
    assert out.metadata["medgen"]["family"] == "template.zscore"
    assert out.metadata["medgen"]["package"] == "medgen-template"


def test_superres_dock_learned_family_shows_plan_loss_and_compare(viewer, thick_phantom):
    layer = add_volume(viewer, thick_phantom, "thick")
    w = open_dock(viewer, "Super-resolution")
    assert w.entry.id == "medgen.selfsr"  # the learned family is the default
    w.image_combo.value = "thick"
    summary = w.summary.text()
    assert "thick axial slices, 3 mm apart (napari axis 0)" in summary and "1 x 1 x 1 mm" in summary
    assert "3x" in summary
    # the slice profile estimated from the scan is on screen before Run; a given one replaces it
    assert "slice profile: FWHM" in summary and "estimated from the scan" in summary
    w.set_params(slice_thickness=2.0)
    assert "FWHM 2.0 mm (given, gap 1.0 mm)" in w.summary.text()
    w.set_params(slice_thickness="auto")
    # auto is a visible choice, not a magic number; forcing slices that are not thick says so
    assert w._param_widgets["slice_thickness"].auto_box.value is True
    assert not w._param_widgets["slice_thickness"].number.visible
    w.set_params(slice_axis="sagittal")
    assert "sagittal slices" in w.summary.text() and "not the thick ones" in w.summary.text()
    w.set_params(slice_axis="auto")
    w.set_params(max_steps=30)
    w.run()
    assert w.last_error == "", w.last_error
    out = viewer.layers[-1]
    np.testing.assert_allclose(out.scale, (1.0, 1.0, 1.0))
    assert out.data.shape == (36, 40, 40)
    assert out.metadata["medgen"]["family"] == "medgen.selfsr"
    assert len(w.loss_plot.points) >= 1 and w.loss_plot.isVisibleTo(w)
    # one click: input and result side by side in a through-plane reformat
    assert w.compare_button.isEnabled()
    w.compare_button.click()
    assert viewer.grid.enabled and tuple(viewer.grid.shape) == (1, 2)
    assert viewer.dims.displayed[0] == 0  # the slice axis is on screen
    visible = [layer_.name for layer_ in viewer.layers if layer_.visible]
    assert visible == [layer.name, out.name]
    w.compare_button.click()
    assert not viewer.grid.enabled and viewer.dims.order == (0, 1, 2)

"""The Anomaly dock's candidate regions, after a run with the REAL threaded worker.

The table fills from the result, a click moves the viewer to a region, the threshold and the
minimum size re-label the heatmap without running the family again, a deleted regions layer
comes back, and "Save table..." writes the CLI's CSV, never over a file without a yes.
"""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_medgen.demo import PLUGIN
from napari_medgen.io.napari_io import layer_to_volume, volume_to_layer_data
from napari_medgen.regions import REGIONS_KEY, label_regions, regions_csv_bytes


def _no_exceptions(exceptions):
    assert not exceptions, "exception(s) reached the Qt event loop: " + "; ".join(
        f"{e[0].__name__}: {e[1]}" for e in exceptions
    )


@pytest.fixture
def ran(make_napari_viewer, qtbot, phantom, monkeypatch):
    """A viewer with a scan, the Anomaly dock after one threaded classic.outlier run, and its run count."""
    viewer = make_napari_viewer()
    image = phantom[0]
    data = image.data.copy()
    data[10:14, 18:22, 18:22] += 0.8  # a bright lesion
    scan = image.with_data(data, name="scan")
    layer_data, kwargs, _ = volume_to_layer_data(scan, name="scan")
    viewer.add_image(layer_data, **kwargs)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Anomaly map")
    w.image_combo.value = "scan"
    w.select_family("classic.outlier")
    w.set_params(threshold=3.0, min_region_mm3=2.0)
    family = w.entry.family
    runs = []
    real_run = family.run

    def counting_run(*args, **kwargs):
        runs.append(1)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(family, "run", counting_run)
    n = len(viewer.layers)
    with qtbot.capture_exceptions() as exceptions:
        w.run()
        assert w._running  # really in a thread
        qtbot.waitUntil(lambda: not w._running, timeout=60_000)
        qtbot.wait(100)
    _no_exceptions(exceptions)
    assert w.last_error == "", w.last_error
    heat, regions = list(viewer.layers)[n:]
    return viewer, w, heat, regions, runs


def test_table_fills_and_a_click_moves_the_viewer(ran, qtbot):
    viewer, w, heat, labels_layer, runs = ran
    part = w.regions_part
    info = w.last_result.info
    assert runs == [1]
    assert info["n_regions"] >= 2, "the phantom should give several candidates"
    assert part.table.rowCount() == len(info["regions"]) == len(part.regions)
    assert part.table.item(0, 0).text() == "1"
    assert float(part.table.item(0, 2).text()) == pytest.approx(info["regions"][0]["peak"], abs=0.01)
    assert f"{info['n_regions']} regions above 3" in part.count_label.text()
    assert "candidate region(s) above 3" in w.status.text()
    assert part.threshold == 3.0 and part.min_mm3 == 2.0
    # the heatmap carries what the dock re-labels from; it shows over the anatomy
    expected = {"threshold": 3.0, "min_region_mm3": 2.0, "score": info["score_units"]}
    assert heat.metadata[REGIONS_KEY] == expected
    assert heat.colormap.name == "medgen_heat" and heat.blending == "translucent"
    assert tuple(heat.contrast_limits) == (0.0, 6.0)
    assert labels_layer.contour == 1
    # a click on the last row moves the slices and the camera to that region
    row = part.table.rowCount() - 1
    region = part.regions[row]
    viewer.dims.set_point([0, 1, 2], [0.0, 0.0, 0.0])
    with qtbot.capture_exceptions() as exceptions:
        rect = part.table.visualItemRect(part.table.item(row, 0))
        qtbot.mouseClick(part.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    _no_exceptions(exceptions)
    np.testing.assert_allclose(viewer.dims.point, region["centroid_world_mm"], atol=1e-6)
    index = np.round(heat.world_to_data(viewer.dims.point)).astype(int)
    assert tuple(viewer.dims.current_step) == tuple(np.round(region["centroid_index"]).astype(int))
    assert labels_layer.data[tuple(index)] in (0, region["label"])
    displayed = list(viewer.dims.displayed)
    np.testing.assert_allclose(viewer.camera.center[-len(displayed):],
                               [region["centroid_world_mm"][d] for d in displayed], atol=1e-6)


def test_threshold_and_size_relabel_without_a_rerun(ran, qtbot):
    viewer, w, heat, labels_layer, runs = ran
    part = w.regions_part
    before = int(part.n_regions)
    volume = layer_to_volume(heat)
    with qtbot.capture_exceptions() as exceptions:
        # the user drags the slider down to 2.5: more voxels become candidates
        part.slider.setValue(part._slider_position(2.5))
        assert part.relabel_count == 0  # debounced: nothing yet
        qtbot.waitUntil(lambda: part.relabel_count == 1, timeout=5_000)
        expected, regions, n = label_regions(np.asarray(heat.data), volume, part.threshold, 2.0)
        assert part.threshold == pytest.approx(2.5, abs=0.02)
        assert n >= before and part.n_regions == n and part.regions == regions
        assert viewer.layers[labels_layer.name] is labels_layer  # the same layer, new data
        np.testing.assert_array_equal(labels_layer.data, expected)
        assert part.table.rowCount() == len(regions)
        assert heat.metadata[REGIONS_KEY]["threshold"] == part.threshold
        assert tuple(heat.contrast_limits) == pytest.approx((0.0, 2 * part.threshold))
        # the minimum size: everything smaller goes
        part.set_min_size(1e6)
        qtbot.waitUntil(lambda: part.relabel_count == 2, timeout=5_000)
        assert part.n_regions == 0 and part.table.rowCount() == 0 and not labels_layer.data.any()
        assert "0 regions above" in part.count_label.text()
        assert not part.save_button.isEnabled()
    _no_exceptions(exceptions)
    assert runs == [1]  # never the model again


def test_a_deleted_regions_layer_comes_back(ran, qtbot):
    viewer, w, heat, labels_layer, runs = ran
    part = w.regions_part
    name = labels_layer.name
    viewer.layers.remove(labels_layer)
    with qtbot.capture_exceptions() as exceptions:
        part.set_threshold(4.0)
        qtbot.waitUntil(lambda: name in viewer.layers, timeout=5_000)
    _no_exceptions(exceptions)
    again = viewer.layers[name]
    assert type(again).__name__ == "Labels" and again is not labels_layer and again.contour == 1
    expected, _, _ = label_regions(np.asarray(heat.data), layer_to_volume(heat), 4.0, 2.0)
    np.testing.assert_array_equal(again.data, expected)
    np.testing.assert_allclose(again.scale, heat.scale)
    np.testing.assert_allclose(again.translate, heat.translate)
    assert again.metadata["medgen"]["family"] == "classic.outlier"
    assert runs == [1]
    # the heatmap deleted too: the part says so and stops
    viewer.layers.remove(heat)
    part.relabel()
    assert "removed" in part.count_label.text() and not part.slider.isEnabled()


def test_save_table_writes_the_cli_csv_and_asks_before_replacing(ran, tmp_path, monkeypatch):
    _, w, _, _, _ = ran
    part = w.regions_part
    target = tmp_path / "regions.csv"
    assert part.save_table(target) == target
    assert target.read_bytes() == regions_csv_bytes(w.last_result.info["regions"])
    target.write_bytes(b"an earlier table")
    asked = []
    monkeypatch.setattr(w, "confirm_overwrite", lambda path: asked.append(path) or False)
    assert part.save_table(target) is None
    assert target.read_bytes() == b"an earlier table" and asked == [str(target)]
    monkeypatch.setattr(w, "confirm_overwrite", lambda path: True)
    assert part.save_table(tmp_path / "regions") == target  # ".csv" added
    assert target.read_bytes() == regions_csv_bytes(part.regions)
    assert not list(tmp_path.glob(".*partial*"))

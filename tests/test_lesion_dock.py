"""The Insert-lesions dock with the learned default, clicked points and the REAL threaded worker."""

from __future__ import annotations

import numpy as np

from napari_medgen.demo import PLUGIN
from napari_medgen.io.napari_io import volume_to_layer_data
from napari_medgen.io.phantom import PHANTOM_LABELS, make_phantom


def test_clicked_points_give_lesions_a_mask_and_a_table(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    vol, labels = make_phantom((32, 48, 48), noise=0.02, seed=0)
    scan = vol.with_data((vol.data * 1000).astype(np.float32), name="scan")
    layer_data, kwargs, _ = volume_to_layer_data(scan, name="scan")
    layer = viewer.add_image(layer_data, **kwargs)
    white = np.argwhere(labels == PHANTOM_LABELS["white"])
    centre = np.asarray(labels.shape) // 2
    picks = [white[np.argmin(np.abs(white - centre + [0, 0, s]).sum(axis=1))] for s in (-6, 6)]
    viewer.add_points([layer.data_to_world(p) for p in picks], name="clicks")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Insert lesions")
    assert w.entry.id == "medgen.lesion_diffusion"  # the learned family is the default
    w.image_combo.value = "scan"
    w.points_combo.value = "clicks"
    w.set_params(placement="points", diameter_min_mm=4.0, diameter_max_mm=5.0, max_steps=3)
    n = len(viewer.layers)
    with qtbot.capture_exceptions() as exceptions:
        w.run()
        assert w._running  # really in a thread
        qtbot.waitUntil(lambda: not w._running, timeout=120_000)
        qtbot.wait(200)
    assert not exceptions, "; ".join(f"{e[0].__name__}: {e[1]}" for e in exceptions)
    assert w.last_error == "", w.last_error
    new = list(viewer.layers)[n:]
    assert [type(x).__name__ for x in new] == ["Image", "Labels"]
    image, mask = new
    np.testing.assert_allclose(mask.scale, layer.scale)
    for k, p in enumerate(picks, start=1):
        assert mask.data[tuple(p)] == k  # one label per clicked point, at the point
    assert not np.array_equal(image.data, layer.data) and np.array_equal(layer.data, scan.data)
    part = w.lesion_part
    assert not part.box.isHidden() and part.table.rowCount() == 2
    assert "may change" in part.summary.text()
    part.table.cellClicked.emit(1, 0)
    world = part.lesions[1]["centre_world_mm"]
    np.testing.assert_allclose([viewer.dims.point[d] for d in range(3)], world, atol=1.0)

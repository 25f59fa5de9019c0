"""Every task dock run to completion with the REAL threaded worker, as a user runs it.

The synchronous test switch hid error pop-ups raised at the end of every real run; these
tests fail on any exception that reaches the Qt event loop.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_medgen.demo import PLUGIN
from napari_medgen.io.napari_io import volume_to_layer_data


def _add(viewer, volume, name):
    data, kwargs, _ = volume_to_layer_data(volume, name=name)
    return viewer.add_image(data, **kwargs)


def _prepare(viewer, dock_name, phantom, thick_phantom):
    """Layers and the dock's inputs for one task, with its default family."""
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, dock_name)
    if dock_name == "Super-resolution":
        layer = _add(viewer, thick_phantom, "thick")
        w.image_combo.value = "thick"
        w.set_params(max_steps=20)  # medgen.selfsr trains a network: keep the budget tiny
        expected = {"shape": (36, 40, 40), "scale": (1.0, 1.0, 1.0)}
    else:
        layer = _add(viewer, phantom[0], "scan")
        w.image_combo.value = "scan"
        expected = {"shape": tuple(phantom[0].shape), "scale": tuple(layer.scale)}
        if dock_name == "Harmonize":  # another subject from the target site; the learned default, briefly
            from napari_medgen.io.phantom import make_phantom

            other, _ = make_phantom((24, 40, 40), seed=5)
            _add(viewer, other.with_data(other.data * 3.0 + 1.0), "reference")
            w.ref_select.value = ["reference"]
            w.set_params(max_steps=20)
        if dock_name == "Insert lesions":  # the learned default with a few training steps
            w.set_params(n_lesions=2, max_steps=3, diameter_min_mm=3.0, diameter_max_mm=5.0)
    return w, layer, expected


@pytest.mark.parametrize("dock_name", ["Super-resolution", "Anomaly map", "Harmonize", "Insert lesions"])
def test_dock_runs_in_a_thread_to_the_end_without_an_error_popup(
    make_napari_viewer, qtbot, phantom, thick_phantom, dock_name
):
    viewer = make_napari_viewer()
    w, layer, expected = _prepare(viewer, dock_name, phantom, thick_phantom)
    if dock_name == "Anomaly map":  # the learned default trains for minutes: its dock tests use tiny presets
        w.select_family("classic.outlier")
    default_family = w.entry.id
    n = len(viewer.layers)
    with qtbot.capture_exceptions() as exceptions:
        w.run()
        assert w._running  # really in a thread, not the synchronous test switch
        qtbot.waitUntil(lambda: not w._running, timeout=120_000)
        qtbot.wait(300)  # progress signals queued before the end are delivered now
    assert not exceptions, "exception(s) reached the Qt event loop: " + "; ".join(
        f"{e[0].__name__}: {e[1]}" for e in exceptions
    )
    assert w.last_error == "", w.last_error
    assert "Done in" in w.status.text()
    assert w.progress_bar.value() == 100 and w.run_button.isEnabled()
    new = list(viewer.layers)[n:]
    assert new, "no result layer"
    out = new[0]
    assert out.metadata["medgen"]["family"] == default_family
    assert out.metadata["medgen"]["input"] == layer.name
    assert tuple(out.data.shape) == expected["shape"]
    np.testing.assert_allclose(out.scale, expected["scale"])
    assert out.name != layer.name


def test_superres_fallback_is_a_warning_in_the_dock_and_in_the_layer(make_napari_viewer, qtbot, thick_phantom):
    """Too little training, threaded as a user runs it: the dock warns with the figures; the layer says B-spline."""
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Super-resolution")
    _add(viewer, thick_phantom, "thick")
    w.image_combo.value = "thick"
    w.set_params(max_steps=1)
    with qtbot.capture_exceptions() as exceptions:
        w.run()
        qtbot.waitUntil(lambda: not w._running, timeout=120_000)
        qtbot.wait(300)
    assert not exceptions and w.last_error == ""
    status = w.status.text()
    assert "Warning" in status and "fell back to B-spline" in status and "mean error" in status
    out = viewer.layers[-1]
    assert out.name == "thick (B-spline, SR fallback)"
    assert "B-spline" in out.metadata["medgen"]["fallback"]


def test_run_ending_inside_a_progress_update_is_harmless(make_napari_viewer):
    """napari's bar processes events inside set_description/update: the run may end right there."""
    from napari_medgen.widgets._run_progress import RunProgress

    make_napari_viewer()  # the activity panel that repaints with processEvents()
    bar = RunProgress("MedGen test")
    pbar = bar._pbar
    pbar.events.description.connect(lambda event: bar.close())  # "finished" delivered mid-update
    bar.update(5, 10, "step 5")  # the old code failed here: 'NoneType' object has no attribute 'n'
    assert bar.closed and pbar not in type(pbar)._all_instances
    bar.update(6, 10, "late")  # a progress signal queued before the end: ignored
    bar.close()  # closing twice is fine


def _slow_anomaly_dock(make_napari_viewer, phantom):
    """The Anomaly map dock on a phantom with the test plugin's slow family (about 10 s of steps)."""
    viewer = make_napari_viewer()
    _add(viewer, phantom[0], "scan")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Anomaly map")
    w.refresh_families()
    w.image_combo.value = "scan"
    w.select_family("fake.slow")
    return viewer, w


def test_activity_panel_progress_moves_during_a_threaded_run(
    make_napari_viewer, qtbot, phantom, with_fake_plugins
):
    from napari.utils import progress

    viewer, w = _slow_anomaly_dock(make_napari_viewer, phantom)

    def ours():
        return [p for p in progress._all_instances if str(p.desc).startswith("MedGen Anomaly map")]

    with qtbot.capture_exceptions() as exceptions:
        w.run()
        qtbot.waitUntil(lambda: any(p.n >= 5 for p in ours()), timeout=10_000)
        assert w._running and w.progress_bar.value() >= 5
        w.cancel()
        qtbot.waitUntil(lambda: not w._running, timeout=5_000)
        qtbot.wait(100)
    assert not exceptions, exceptions
    assert ours() == []  # the bar left the activity panel with the run


def test_closing_the_viewer_mid_run_cancels_it_quietly(make_napari_viewer, qtbot, phantom, with_fake_plugins):
    """The docks are deleted with the window: the run stops and nothing touches the dead widgets."""
    from napari.utils import progress

    viewer, w = _slow_anomaly_dock(make_napari_viewer, phantom)
    with qtbot.capture_exceptions() as exceptions:
        w.run()
        cancel = w._cancel
        qtbot.waitUntil(lambda: w.progress_bar.value() > 0, timeout=10_000)
        viewer.close()
        qtbot.waitUntil(cancel.is_set, timeout=2_000)
        qtbot.wait(500)  # the cancelled worker ends; its signals arrive and are ignored
    assert not exceptions, exceptions
    assert not [p for p in progress._all_instances if str(p.desc).startswith("MedGen")]

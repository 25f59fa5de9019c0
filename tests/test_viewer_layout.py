"""All five docks fit a 1080p screen: each scrolls instead of growing the main window."""

from __future__ import annotations

import numpy as np

from napari_medgen.demo import DOCKS, PLUGIN, open_docks

SCREEN_HEIGHT = 1080
FITS = 1000  # leaves room for a task bar and the window's title


def min_height(viewer) -> int:
    return viewer.window._qt_window.minimumSizeHint().height()


def rows_do_not_overlap(widget) -> bool:
    """The dock's rows get at least the height they need; the dock scrolls for the rest."""
    return widget.content.height() >= widget.content.minimumSizeHint().height()


def test_all_docks_open_at_once_fit_a_1080p_screen(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    qwin = viewer.window._qt_window
    qtbot.wait(50)
    normal = min_height(viewer)
    # as the demo opens them: tabified
    docks = open_docks(viewer)
    qtbot.wait(50)
    assert min_height(viewer) <= FITS
    for dock, _ in docks.values():
        viewer.window.remove_dock_widget(dock)
    qtbot.wait(50)
    assert min_height(viewer) <= normal
    # as a user opens them from the Plugins menu, one after another: stacked
    opened = []
    for name in DOCKS:
        opened.append(viewer.window.add_plugin_dock_widget(PLUGIN, name))
        qtbot.wait(20)
        assert min_height(viewer) <= FITS, f"after opening {name}"
    assert qwin.height() <= SCREEN_HEIGHT
    for _, widget in opened:
        assert rows_do_not_overlap(widget)
    sr = opened[0][1]
    assert sr.run_button.text() == "Run" and sr.compare_button is not None  # same names as before
    with qtbot.capture_exceptions() as exceptions:
        for dock, _ in opened:
            viewer.window.remove_dock_widget(dock)
        qtbot.wait(50)
        assert min_height(viewer) <= normal
        viewer.add_image(np.zeros((4, 8, 8)), name="after")  # closed docks no longer listen
        qtbot.wait(20)
    assert not exceptions, exceptions

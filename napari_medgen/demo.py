"""``python -m napari_medgen.demo``: napari with a sample brain and the five MedGen docks.

``--screenshot PATH`` saves a picture of the whole window; ``--quit`` closes afterwards
(used by ``make screenshot`` and by ``make demo`` on a machine without a display).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PLUGIN = "napari-medgen"
DOCKS = ("Super-resolution", "Anomaly map", "Harmonize", "Insert lesions", "Model families")


def open_docks(viewer) -> dict:
    """Open every MedGen dock through the manifest, as a user would from the Plugins menu."""
    docks = {}
    for name in DOCKS:
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        docks[name] = (dock, widget)
    qwin = viewer.window._qt_window
    first = docks[DOCKS[0]][0]
    for name in DOCKS[1:]:
        qwin.tabifyDockWidget(first, docks[name][0])
    first.raise_()
    return docks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_medgen.demo", description=__doc__)
    parser.add_argument("--screenshot", type=Path, help="save a screenshot of the window here")
    parser.add_argument("--quit", action="store_true", help="close after the screenshot")
    parser.add_argument("--phantom", action="store_true", help="use the small procedural phantom (fast)")
    args = parser.parse_args(argv)

    import napari

    viewer = napari.Viewer(title="napari-medgen demo")
    viewer.window._qt_window.resize(1500, 950)
    if args.phantom:
        from .io.napari_io import volume_to_layer_data
        from .io.phantom import make_phantom

        vol, _ = make_phantom((40, 96, 96), spacing=(1.0, 1.0, 1.0))
        data, kwargs, _ = volume_to_layer_data(vol, name="phantom")
        viewer.add_image(data, **kwargs)
    else:
        viewer.open_sample(PLUGIN, "mni152_t1")
        viewer.open_sample(PLUGIN, "mni152_t1_thick")
        viewer.layers[0].visible = False
    viewer.dims.set_current_step(0, viewer.dims.nsteps[0] // 2)
    # rows point up: anterior at the top of axial views, superior at the top of reformats
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.orientation2d = ("up", "right")
    docks = open_docks(viewer)
    docks[DOCKS[0]][0].raise_()
    if args.screenshot:
        from qtpy.QtWidgets import QApplication

        for _ in range(10):
            QApplication.processEvents()
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(args.screenshot), canvas_only=False)
        print(f"saved {args.screenshot}")
    if args.quit:
        viewer.close()
        return 0
    napari.run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

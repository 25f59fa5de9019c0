"""``python -m napari_medgen.demo``: napari with a sample brain and the five MedGen docks.

``--screenshot PATH`` saves a picture of the whole window; ``--quit`` closes afterwards
(used by ``make screenshot`` and by ``make demo`` on a machine without a display).
``--docs DIR`` saves the README's pictures: the window with the docks (``screenshot.png``),
the Model families panel (``families_panel.png``), the Super-resolution compare view after a
run (``superres_compare.png``) and an axial and a
sagittal view in the reading convention (``orientation.png``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

PLUGIN = "napari-medgen"
DOCKS = ("Super-resolution", "Anomaly map", "Harmonize", "Insert lesions", "Model families")
THICK_SAMPLE = "MNI152 T1 4mm"  # the layer name of the "MNI152 T1 brain, 4 mm slices" sample


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


def _settle(seconds: float = 0.3) -> None:
    """Let Qt lay out and paint (the screenshots are taken without a running event loop)."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def _wait_for_run(widget, timeout: float = 600.0) -> None:
    end = time.monotonic() + timeout
    while widget._running and time.monotonic() < end:
        _settle(0.1)


def save_docs_screenshots(viewer, docks: dict, folder: Path) -> list[Path]:
    """The README's pictures, taken in this viewer (see the module docstring)."""
    import numpy as np
    from imageio.v3 import imwrite

    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    dims, scan = viewer.dims, viewer.layers[THICK_SAMPLE]
    # an axial and a sagittal view, with the anatomical axes drawn on the canvas
    axes, current = viewer.canvas.overlays.axes, viewer.canvas.overlays.current_slice
    axes.visible = current.visible = True
    shown = {layer.name: layer.visible for layer in viewer.layers}
    for layer in viewer.layers:
        layer.visible = layer is viewer.layers[0]  # the 1 mm brain
    views = []
    for order, step in (((0, 1, 2), dims.nsteps[0] // 2), ((2, 0, 1), dims.nsteps[2] // 2 - 10)):
        dims.order = order
        dims.set_current_step(order[0], step)
        viewer.reset_view()
        _settle()
        views.append(viewer.screenshot(canvas_only=True, flash=False))
    height = min(v.shape[0] for v in views)
    imwrite(folder / "orientation.png", np.concatenate([v[:height] for v in views], axis=1))
    saved.append(folder / "orientation.png")
    axes.visible = current.visible = False
    for layer in viewer.layers:
        layer.visible = shown[layer.name]
    dims.order = (0, 1, 2)
    dims.set_current_step(0, dims.nsteps[0] // 2)
    viewer.reset_view()
    # the window with the docks
    docks[DOCKS[0]][0].raise_()
    _settle()
    viewer.screenshot(str(folder / "screenshot.png"), canvas_only=False, flash=False)
    saved.append(folder / "screenshot.png")
    # the Model families panel: a family's details and the install area
    families_dock, families = docks["Model families"]
    families_dock.raise_()
    families.select_family("medgen.selfsr")
    families.source_edit.setText("medgen-edge")
    _settle()
    viewer.screenshot(str(folder / "families_panel.png"), canvas_only=False, flash=False)
    saved.append(folder / "families_panel.png")
    docks[DOCKS[0]][0].raise_()
    # a super-resolution run (classic.cubic) and its compare view
    sr = docks["Super-resolution"][1]
    sr.image_combo.value = scan.name
    sr.select_family("classic.cubic")
    sr.run()
    _wait_for_run(sr)
    sr.toggle_compare()
    _settle()
    viewer.screenshot(str(folder / "superres_compare.png"), canvas_only=False, flash=False)
    saved.append(folder / "superres_compare.png")
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_medgen.demo", description=__doc__)
    parser.add_argument("--screenshot", type=Path, help="save a screenshot of the window here")
    parser.add_argument("--docs", type=Path, help="save the README's screenshots in this folder")
    parser.add_argument("--quit", action="store_true", help="close after the screenshot")
    parser.add_argument("--phantom", action="store_true", help="use the small procedural phantom (fast)")
    args = parser.parse_args(argv)

    import napari

    from .display import install_reading_convention

    viewer = napari.Viewer(title="napari-medgen demo")
    viewer.window._qt_window.resize(1600, 1000)
    # anterior up in axial slices, superior up in reformats, the patient's right on the left
    install_reading_convention(viewer)
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
    docks = open_docks(viewer)
    docks[DOCKS[0]][0].raise_()
    if args.docs and not args.phantom:
        for path in save_docs_screenshots(viewer, docks, args.docs):
            print(f"saved {path}")
    if args.screenshot:
        _settle()
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

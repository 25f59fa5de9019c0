"""A dock's compare view: the last run's input and result side by side, large, named, linked.

One click puts the input and the result in a 1x2 napari grid (one camera, so zoom and pan
stay linked) and hides every other layer; a second click restores the view the user had.
napari 0.9 has no free-text label per grid panel, so each panel shows its layer's name (the
layer-name overlay) and a caption on the canvas says which side is the input and which the
result. With ``reformat=True`` (super-resolution) the view turns to a through-plane reformat,
where the thick slices show; otherwise (harmonization) it keeps the current orientation.
The orientation is always the normal view's reading convention (:mod:`napari_medgen.display`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import QPushButton

if TYPE_CHECKING:  # pragma: no cover
    from ..family import Result
    from .task_widget import TaskWidget

__all__ = ["BACK_TEXT", "COMPARE_TEXT", "CompareView"]

COMPARE_TEXT = "Compare input and result"
BACK_TEXT = "Back to the normal view"


class CompareView:
    """The compare button of a dock and the view it switches to and from.

    ``reformat``: show a through-plane reformat (the slice axis, i.e. the coarsest spacing,
    on screen against one in-plane axis) instead of the current orientation.
    """

    def __init__(self, dock: TaskWidget, *, reformat: bool = False, text: str = COMPARE_TEXT,
                 back_text: str = BACK_TEXT, tooltip: str = "") -> None:
        self.dock = dock
        self.viewer = dock.viewer
        self.reformat = reformat
        self.text = text
        self.back_text = back_text
        self.button = QPushButton(text)
        self.button.setToolTip(tooltip or (
            "side-by-side grid of the input and the last result, with linked zoom and pan"
            + (", in a through-plane reformat" if reformat else "") + "; click again to go back"
        ))
        self.button.setEnabled(False)
        self.button.clicked.connect(self.toggle)
        self.pair: tuple[str, str] | None = None  # (input layer, result layer)
        self._saved: dict[str, Any] | None = None
        dock.add_task_widget(self.button)
        dock.result_added.connect(self._on_result)

    @property
    def active(self) -> bool:
        """Whether the compare view is on screen."""
        return self._saved is not None

    def _on_result(self, result: Result, added: list[str]) -> None:
        source = result.info.get("provenance", {}).get("input", "")
        if added and source in self.viewer.layers:
            self.pair = (source, added[0])
            self.button.setEnabled(True)

    def toggle(self) -> None:
        """Switch between the compare view and the view the user had before."""
        if self._saved is not None:
            self._restore()
            return
        viewer = self.viewer
        if self.pair is None or any(name not in viewer.layers for name in self.pair):
            self.dock._fail(
                f"run {self.dock.task.title.lower()} first: there is no input/result pair to compare"
            )
            return
        src_name, out_name = self.pair
        grid = viewer.canvas.grid
        caption = viewer.canvas.overlays.text
        self._saved = {
            "grid": (grid.enabled, tuple(grid.shape), grid.stride),
            "order": tuple(viewer.dims.order),
            "visible": {layer.name: layer.visible for layer in viewer.layers},
            "names": {layer.name: layer.name_overlay.visible for layer in viewer.layers},
            "caption": (caption.text, caption.visible, caption.position),
        }
        for layer in viewer.layers:
            layer.visible = layer.name in (src_name, out_name)
            # the per-panel label; napari creates it reliably only when set before the grid
            layer.name_overlay.visible = layer.visible
        if self.reformat:
            # the slice axis (coarsest spacing) on screen, against one in-plane axis
            scale = np.asarray(viewer.layers[src_name].scale)
            slice_axis = int(np.argmax(scale[-3:])) + len(scale) - 3
            others = [a for a in range(viewer.dims.ndim) if a != slice_axis]
            if len(others) >= 2:
                viewer.dims.order = (others[-1], slice_axis, others[0])  # reading convention re-applied
        grid.shape = (1, 2)
        grid.stride = 1
        grid.enabled = True
        left = self._left_panel_layer()
        sides = ("input", "result") if left in (None, src_name) else ("result", "input")
        caption.text = f"left: {sides[0]}  |  right: {sides[1]}"
        caption.position = "bottom_center"
        caption.visible = True
        viewer.reset_view()  # fit both panels
        self.button.setText(self.back_text)

    def panel_labels(self) -> dict[str, str]:
        """What each panel of the compare view shows: {"left": layer name, "right": layer name}."""
        if self._saved is None or self.pair is None:
            return {}
        src_name, out_name = self.pair
        left = self._left_panel_layer()
        if left == out_name:
            return {"left": out_name, "right": src_name}
        return {"left": src_name, "right": out_name}

    def _left_panel_layer(self) -> str | None:
        layers = self.viewer.layers
        for layer in layers:
            if layer.visible:
                row, col = self.viewer.canvas.grid.position(layers.index(layer), layers)
                if (row, col) == (0, 0):
                    return layer.name
        return None

    def _restore(self) -> None:
        state, self._saved = self._saved, None
        viewer = self.viewer
        grid = viewer.canvas.grid
        grid.enabled, shape, grid.stride = state["grid"]
        grid.shape = shape
        viewer.dims.order = state["order"]
        for layer in viewer.layers:
            if layer.name in state["visible"]:
                layer.visible = state["visible"][layer.name]
                layer.name_overlay.visible = state["names"][layer.name]
        caption = viewer.canvas.overlays.text
        caption.text, caption.visible, caption.position = state["caption"]
        viewer.reset_view()
        self.button.setText(self.text)

"""The Anomaly dock's candidate regions: a live threshold, a minimum size and the regions table.

After a run whose result follows the anomaly convention (:mod:`napari_medgen.regions`: a
``heatmap`` output, a ``regions`` labels output, ``info["threshold"]`` ...), the part shows
the candidate regions in a table (#, volume, peak and mean score, centre in world mm).
Moving the threshold slider (or its box) or the minimum size re-labels the last heatmap
layer, debounced, without running the model again: the regions Labels layer is updated (or
made again if the user deleted it), the table and the count follow. Clicking a row moves the
viewer to the region's centre. "Save table..." writes the same CSV as ``medgen run anomaly``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..display import go_to_world
from ..errors import MedGenError, OutputExists
from ..io.napari_io import heatmap_kwargs, layer_to_volume, volume_to_layer_data
from ..regions import MAX_LISTED, REGIONS_KEY, WORLD_AXES, label_regions, regions_csv_bytes, regions_metadata

if TYPE_CHECKING:  # pragma: no cover
    from ..family import Result
    from .task_widget import TaskWidget

__all__ = ["COLUMNS", "DEBOUNCE_MS", "AnomalyRegions"]

log = logging.getLogger("napari_medgen.widgets")

#: the table's column titles
COLUMNS = ("#", "volume (mm³)", "peak", "mean", f"{', '.join(WORLD_AXES)} (mm)")
_TIPS = ("region number (the label's value)", "region volume", "highest score in the region",
         "mean score over the region", "region centre in world mm: superior, anterior, right (RAS+ z, y, x)")
#: a threshold or size change re-labels this long after the last change (milliseconds)
DEBOUNCE_MS = 200
#: slider positions between 0 and the slider's top score
SLIDER_STEPS = 1000
#: opacity of the regions Labels layer (drawn as outlines, so the anatomy shows inside them)
REGIONS_OPACITY = 0.5
#: one outline colour for every region (regions never touch: 26-connected components), apart
#: from the heatmap's red to yellow
REGIONS_COLOUR = (0.0, 0.9, 1.0, 1.0)


def style_regions_layer(layer: Any) -> None:
    """Show a regions Labels layer as cyan outlines, so the heatmap and the anatomy stay visible inside."""
    try:
        from napari.utils.colormaps import DirectLabelColormap

        layer.colormap = DirectLabelColormap(color_dict={None: REGIONS_COLOUR, 0: (0.0, 0.0, 0.0, 0.0)})
        layer.contour = 1
        layer.opacity = REGIONS_OPACITY
    except Exception:  # pragma: no cover - an older napari: a translucent fill instead
        log.debug("regions outline style not applied", exc_info=True)
        layer.opacity = 0.5


class AnomalyRegions:
    """The candidate-regions part of an Anomaly dock (see the module docstring)."""

    def __init__(self, dock: TaskWidget) -> None:
        self.dock = dock
        self.viewer = dock.viewer
        # layers are held by their unique id: napari hands plugins proxies, a new one per access
        self._heat_id: str | None = None
        self._labels_id: str | None = None
        self._labels_name = ""
        self._labels_meta: dict[str, Any] = {}
        self._score = "score"
        self._slider_top = 1.0
        #: the region dicts shown in the table (see napari_medgen.regions)
        self.regions: list[dict[str, Any]] = []
        #: every region kept at the current threshold (the table lists the first MAX_LISTED)
        self.n_regions = 0
        #: (threshold, minimum size) the table and the labels show
        self.applied: tuple[float, float] | None = None
        #: how many times the regions were re-labelled from the heatmap (never a model run)
        self.relabel_count = 0
        self._build()
        dock.add_task_widget(self.box)
        dock.add_done_note(self._done_note)
        dock.result_added.connect(self._on_result)

    # -- the layers ------------------------------------------------------------------
    def _layer(self, uid: str | None) -> Any:
        if uid is None:
            return None
        return next((layer for layer in self.viewer.layers if layer.unique_id == uid), None)

    @property
    def heat_layer(self) -> Any:
        """The last result's heatmap layer, or None (no result, or the user deleted it)."""
        return self._layer(self._heat_id)

    @property
    def labels_layer(self) -> Any:
        """The regions Labels layer, or None (none yet, or the user deleted it)."""
        return self._layer(self._labels_id)

    # -- construction ------------------------------------------------------------
    def _build(self) -> None:
        self.box = QGroupBox("Candidate regions")
        root = QVBoxLayout(self.box)
        root.setContentsMargins(6, 6, 6, 6)
        form = QFormLayout()
        row = QHBoxLayout()
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.slider.setToolTip(
            "score above which a voxel is a candidate; re-labels without running the model again"
        )
        self.threshold_box = QDoubleSpinBox()
        self.threshold_box.setRange(0.0, 1e6)
        self.threshold_box.setDecimals(2)
        self.threshold_box.setSingleStep(0.1)
        self.threshold_box.setKeyboardTracking(False)
        self.threshold_box.setToolTip(self.slider.toolTip())
        row.addWidget(self.slider, 1)
        row.addWidget(self.threshold_box)
        holder = QWidget()
        holder.setLayout(row)
        row.setContentsMargins(0, 0, 0, 0)
        form.addRow("Threshold", holder)
        self.min_box = QDoubleSpinBox()
        self.min_box.setRange(0.0, 1e7)
        self.min_box.setDecimals(1)
        self.min_box.setSingleStep(5.0)
        self.min_box.setKeyboardTracking(False)
        self.min_box.setToolTip("connected regions smaller than this are dropped")
        form.addRow("Min size (mm³)", self.min_box)
        root.addLayout(form)
        self.count_label = QLabel("Run to list the candidate regions.")
        self.count_label.setWordWrap(True)
        root.addWidget(self.count_label)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        for col, tip in enumerate(_TIPS):
            self.table.horizontalHeaderItem(col).setToolTip(tip)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMinimumHeight(120)
        self.table.setMaximumHeight(220)
        self.table.setToolTip("click a region to go there")
        self.table.cellClicked.connect(self._on_cell_clicked)
        self.table.currentCellChanged.connect(self._on_current_changed)
        root.addWidget(self.table)
        buttons = QHBoxLayout()
        self.save_button = QPushButton("Save table...")
        self.save_button.setToolTip("write the table as CSV (the same file as `medgen run anomaly` writes)")
        self.save_button.clicked.connect(lambda: self.save_table())
        buttons.addWidget(self.save_button)
        buttons.addStretch(1)
        root.addLayout(buttons)
        self._timer = QTimer(self.box)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.relabel)
        self.slider.valueChanged.connect(self._on_slider)
        self.threshold_box.valueChanged.connect(self._on_threshold_box)
        self.min_box.valueChanged.connect(self._schedule)
        self._set_enabled(False)

    def _set_enabled(self, enabled: bool) -> None:
        for widget in (self.slider, self.threshold_box, self.min_box, self.table):
            widget.setEnabled(enabled)
        self.save_button.setEnabled(enabled and bool(self.regions))

    # -- the controls ------------------------------------------------------------
    @property
    def threshold(self) -> float:
        return float(self.threshold_box.value())

    @property
    def min_mm3(self) -> float:
        return float(self.min_box.value())

    def set_threshold(self, value: float) -> None:
        """Set the threshold (the box and the slider); the regions follow after the debounce."""
        self.threshold_box.setValue(float(value))

    def set_min_size(self, mm3: float) -> None:
        self.min_box.setValue(float(mm3))

    def _slider_value(self, position: int) -> float:
        return self._slider_top * position / SLIDER_STEPS

    def _slider_position(self, value: float) -> int:
        if not self._slider_top > 0:
            return 0
        return round(min(max(value / self._slider_top, 0.0), 1.0) * SLIDER_STEPS)

    def _on_slider(self, position: int) -> None:
        self.threshold_box.blockSignals(True)
        self.threshold_box.setValue(self._slider_value(position))
        self.threshold_box.blockSignals(False)
        self._schedule()

    def _on_threshold_box(self, value: float) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(self._slider_position(value))
        self.slider.blockSignals(False)
        self._schedule()

    def _schedule(self, *_: Any) -> None:
        if self._heat_id is not None:
            self._timer.start()  # restarts: one re-label after the user stops moving

    def _set_controls(self, threshold: float, min_mm3: float) -> None:
        for widget in (self.slider, self.threshold_box, self.min_box):
            widget.blockSignals(True)
        step = _step(threshold)
        self.threshold_box.setDecimals(max(2, 1 - math.floor(math.log10(step))))
        self.threshold_box.setSingleStep(step)
        self.threshold_box.setValue(threshold)
        self.slider.setValue(self._slider_position(threshold))
        self.min_box.setValue(min_mm3)
        for widget in (self.slider, self.threshold_box, self.min_box):
            widget.blockSignals(False)

    # -- a finished run ------------------------------------------------------------
    def _done_note(self, result: Result) -> str:
        meta = regions_metadata(result.info)
        if meta is None:
            return ""
        n = int(result.info.get("n_regions", len(result.info.get("regions") or [])))
        return f"{n} candidate region(s) above {meta['threshold']:g}"

    def _on_result(self, result: Result, added: list[str]) -> None:
        self._timer.stop()
        meta = regions_metadata(result.info)
        layers = dict(zip((o.name for o in result.outputs), added))
        kinds = {o.name: o.kind for o in result.outputs}
        heat_name = next((layers[n] for n, k in kinds.items() if k == "heatmap" and n in layers), None)
        if meta is None or heat_name is None or heat_name not in self.viewer.layers:
            self._forget("This result has no candidate regions.")
            return
        heat = self.viewer.layers[heat_name]
        heat.metadata[REGIONS_KEY] = dict(meta)
        self._heat_id = heat.unique_id
        self._score = meta["score"]
        labels_name = layers.get("regions") if kinds.get("regions") == "labels" else None
        labels = next((layer for layer in self.viewer.layers if layer.name == labels_name), None)
        self._labels_id = labels.unique_id if labels is not None else None
        self._labels_name = labels_name or f"{heat.name} regions"
        self._labels_meta = dict(labels.metadata) if labels is not None else {}
        if labels is not None:
            style_regions_layer(labels)
            labels.metadata[REGIONS_KEY] = dict(meta)
        self._slider_top = _slider_top(np.asarray(heat.data), meta["threshold"])
        self._set_controls(meta["threshold"], meta["min_region_mm3"])
        self._set_enabled(True)
        if labels is not None and "regions" in result.info:
            self.regions = list(result.info["regions"])
            self.n_regions = int(result.info.get("n_regions", len(self.regions)))
            self.applied = (meta["threshold"], meta["min_region_mm3"])
            self._show()
        else:  # no labels or no table from the family: make them from the heatmap
            self.relabel()

    def _forget(self, message: str) -> None:
        self._heat_id = None
        self._labels_id = None
        self.regions, self.n_regions, self.applied = [], 0, None
        self.table.setRowCount(0)
        self.count_label.setText(message)
        self._set_enabled(False)

    # -- re-labelling ----------------------------------------------------------------
    def relabel(self) -> None:
        """Label the last heatmap at the current threshold and minimum size (no model run)."""
        self._timer.stop()
        if self._heat_id is None:
            return
        heat = self.heat_layer
        if heat is None:
            self._forget("The heatmap layer was removed: run again to list candidate regions.")
            return
        threshold, min_mm3 = self.threshold, self.min_mm3
        try:
            volume = layer_to_volume(heat)
            labels, regions, n = label_regions(np.asarray(volume.data), volume, threshold, min_mm3,
                                               max_listed=MAX_LISTED)
        except MedGenError as exc:
            self.dock._fail(str(exc))
            return
        previous = heat.metadata.get(REGIONS_KEY) or {}
        score = previous.get("score", self._score)
        meta = {"threshold": threshold, "min_region_mm3": min_mm3, "score": score}
        self._follow_contrast(heat, previous.get("threshold"), threshold)
        heat.metadata[REGIONS_KEY] = meta
        target = self.labels_layer
        if target is not None:
            target.data = labels
        else:  # none yet, or the user deleted it: a new one with the heatmap's geometry
            from napari.layers import Layer

            data, kwargs, layer_type = volume_to_layer_data(
                volume.with_data(labels), kind="labels", name=self._labels_name,
                extra_metadata={k: v for k, v in self._labels_meta.items() if k != "medgen_volume"},
            )
            layer = Layer.create(data, kwargs, layer_type)
            style_regions_layer(layer)
            self.viewer.add_layer(layer)
            self._labels_id = layer.unique_id
            target = layer
        target.metadata[REGIONS_KEY] = dict(meta)
        self.regions, self.n_regions = regions, n
        self.applied = (threshold, min_mm3)
        self.relabel_count += 1
        self._show()

    @staticmethod
    def _follow_contrast(heat: Any, old: Any, new: float) -> None:
        """Keep the threshold at mid-colour when the limits are still the default ``[0, 2 x threshold]``."""
        try:
            lo, hi = (float(v) for v in heat.contrast_limits)
            if old is None or not new > 0 or lo != 0.0:
                return
            if not math.isclose(hi, 2.0 * float(old), rel_tol=1e-6):
                return
            heat.contrast_limits = heatmap_kwargs(threshold=new)["contrast_limits"]
        except Exception:  # cosmetic: never block the re-label
            log.debug("heatmap contrast not updated", exc_info=True)

    def _show(self) -> None:
        """The count line and the table for ``self.regions``."""
        threshold, min_mm3 = self.applied or (self.threshold, self.min_mm3)
        text = f"{self.n_regions} region{'s' if self.n_regions != 1 else ''} above {threshold:g}"
        if min_mm3 > 0:
            text += f" (at least {min_mm3:g} mm³)"
        if self.n_regions > len(self.regions):
            text += f"; the {len(self.regions)} with the highest peak are listed"
        if self._score and self._score != "score":
            text += f"<br><small>score: {self._score}</small>"
        self.count_label.setText(text)
        self.table.blockSignals(True)
        self.table.clearContents()
        self.table.setRowCount(len(self.regions))
        for row, region in enumerate(self.regions):
            cells = (
                str(region["label"]),
                f"{region['volume_mm3']:.1f}",
                f"{region['peak']:.2f}",
                f"{region['mean']:.2f}",
                ", ".join(f"{v:.1f}" for v in region["centroid_world_mm"]),
            )
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col < 4:
                    item.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
                self.table.setItem(row, col, item)
        self.table.blockSignals(False)
        self.save_button.setEnabled(bool(self.regions))

    # -- the table ------------------------------------------------------------------
    def _on_cell_clicked(self, row: int, _column: int) -> None:
        self.go_to(row)

    def _on_current_changed(self, row: int, _col: int, previous: int, _pcol: int) -> None:
        if row >= 0 and row != previous:
            self.go_to(row)

    def go_to(self, row: int) -> None:
        """Move the viewer to region ``row``'s centre: the slices through it, centred on screen."""
        if not 0 <= row < len(self.regions):
            return
        go_to_world(self.viewer, self.regions[row]["centroid_world_mm"])

    def csv_bytes(self) -> bytes:
        """The table as the CLI writes it."""
        return regions_csv_bytes(self.regions)

    def save_table(self, path: str | Path | None = None) -> Path | None:
        """Write the table as CSV (asks for a file without ``path``); an existing file only after a yes."""
        from ..io.output import check_outputs, write_bytes
        from ..runner import source_of

        if not self.regions:
            self.dock._fail("there are no candidate regions to save")
            return None
        if path is None:
            path = self._ask_path()
            if not path:
                return None
        target = Path(path).expanduser()
        if not target.suffix:
            target = target.with_name(target.name + ".csv")
        protected = []
        heat = self.heat_layer
        if heat is not None:
            src = source_of(layer_to_volume(heat)).get("path")
            if src:
                protected.append(("input scan", src))
        role = ["regions table"]
        overwrite = False
        try:
            try:
                check_outputs([target], protected, hint="confirm to replace it", roles=role)
            except OutputExists:
                if not self.dock.confirm_overwrite(str(target)):
                    self.dock.status.setText("Table not saved: the existing file was kept.")
                    return None
                overwrite = True
                check_outputs([target], protected, overwrite=True, roles=role)
            written = write_bytes(target, self.csv_bytes(), overwrite=overwrite, role="regions table")
        except MedGenError as exc:
            self.dock._fail(str(exc))
            return None
        self.dock.status.setText(f"Saved {len(self.regions)} region(s) to {written}")
        return written

    def _ask_path(self) -> str:
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in (self._labels_name or "regions"))
        path, _ = QFileDialog.getSaveFileName(
            self.box, "Save candidate regions", f"{name}.csv", "CSV table (*.csv)",
            options=QFileDialog.Option.DontConfirmOverwrite,  # asked by save_table, after its own checks
        )
        return path


def _slider_top(heat: np.ndarray, threshold: float) -> float:
    """The slider's range: up to the highest score (at least twice the threshold)."""
    top = 0.0
    if heat.size:
        finite = heat[np.isfinite(heat)] if np.issubdtype(heat.dtype, np.floating) else heat
        top = float(finite.max()) if finite.size else 0.0
    return max(top, 2.0 * float(threshold), 1e-6)


def _step(threshold: float) -> float:
    """A spin-box step of about a twentieth of the threshold (0.01, 0.05, 0.1, 0.5, ...)."""
    if not threshold > 0:
        return 0.1
    raw = threshold / 20.0
    base = 10 ** math.floor(math.log10(raw))
    return float(base * (5 if raw / base >= 5 else 1))

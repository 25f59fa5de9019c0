"""The Model families dock: every registered family and every plugin that failed to load.

It also holds the viewer-wide display setting: radiological (default) or neurological.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .. import display
from ..registry import get_registry
from ._dock import ScrollDock
from ._signals import registry_events

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["FamiliesPanel"]

COLUMNS = ("Family", "Task", "Version", "Package", "Status")


DISPLAY_TIPS = {
    "radiological": "as radiologists read scans: the patient's right on the screen's left (from the feet)",
    "neurological": "the patient's right on the screen's right (seen from above / behind)",
}


class FamiliesPanel(ScrollDock):
    """Lists families (id, task, version, package, status) and plugin load errors."""

    def __init__(self, viewer: "napari.viewer.Viewer | None" = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.setObjectName("medgen-families")
        layout = QVBoxLayout(self.content)
        layout.addWidget(QLabel("<b>Model families</b>"))
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        layout.addWidget(self.table)
        self.errors_label = QLabel("")
        self.errors_label.setWordWrap(True)
        layout.addWidget(self.errors_label)
        row = QHBoxLayout()
        self.reload_button = QPushButton("Reload plugins")
        self.reload_button.setToolTip("discover installed plugins again (after a pip install)")
        self.reload_button.clicked.connect(self.reload)
        row.addWidget(self.reload_button)
        row.addStretch(1)
        layout.addLayout(row)
        layout.addLayout(self._build_display_row())
        self.refresh()
        self.fit_width()
        if viewer is not None:
            display.install_reading_convention(viewer)

    def _build_display_row(self) -> QHBoxLayout:
        """Display: radiological / neurological, saved for later sessions."""
        row = QHBoxLayout()
        label = QLabel("Display")
        self.display_combo = QComboBox()
        for i, name in enumerate(display.CONVENTIONS):
            self.display_combo.addItem(name)
            self.display_combo.setItemData(i, DISPLAY_TIPS[name], Qt.ItemDataRole.ToolTipRole)
        self.display_combo.setCurrentText(display.current_convention())
        self.display_combo.setToolTip(
            "how scans are put on the screen (anterior/superior up either way); saved for later sessions"
        )
        if os.environ.get(display.ENV_VAR, "").strip():
            self.display_combo.setEnabled(False)
            self.display_combo.setToolTip(f"set by the environment variable {display.ENV_VAR}")
        self.display_combo.currentTextChanged.connect(self.set_display_convention)
        label.setBuddy(self.display_combo)
        row.addWidget(label)
        row.addWidget(self.display_combo)
        row.addStretch(1)
        return row

    def set_display_convention(self, name: str) -> None:
        """Use and save the radiological or neurological convention (the Display combo)."""
        if self.display_combo.currentText() != name:
            self.display_combo.setCurrentText(name)  # comes back here through the signal
            return
        display.set_convention(name)

    def rows(self) -> list[tuple[str, ...]]:
        """The table's rows as text (families, then failed plugins)."""
        reg = get_registry()
        out = [
            (e.id, e.task.value, e.family.version, e.package or e.plugin, e.status) for e in reg.families()
        ]
        out += [(f"plugin '{err.plugin}'", "-", "-", err.package or "?", f"error: {err.message}") for err in reg.errors]
        return out

    def refresh(self) -> None:
        reg = get_registry()
        rows = self.rows()
        self.table.setRowCount(len(rows))
        by_id = {e.id: e for e in reg.families()}
        for r, values in enumerate(rows):
            for c, value in enumerate(values):
                item = QTableWidgetItem(value)
                entry = by_id.get(values[0])
                if entry is not None:
                    fam = entry.family
                    item.setToolTip(
                        f"{fam.display_name}\n{fam.description}\nCitation: {fam.citation or '-'}\n"
                        f"License: {fam.license or '-'}\n{fam.intended_use}"
                    )
                else:
                    item.setToolTip(value)
                self.table.setItem(r, c, item)
        n_err = len(reg.errors)
        if n_err:
            self.errors_label.setText(
                f"<span style='color:#e55'>{n_err} plugin problem(s); other plugins loaded normally.</span>"
            )
        else:
            self.errors_label.setText(f"{len(reg.families())} families from {len(reg.plugins)} plugin(s).")

    def reload(self) -> None:
        get_registry().reload()
        self.refresh()
        registry_events.reloaded.emit()

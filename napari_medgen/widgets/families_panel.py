"""The Model families dock: every registered family and every plugin that failed to load."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..registry import get_registry
from ._signals import registry_events

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["FamiliesPanel"]

COLUMNS = ("Family", "Task", "Version", "Package", "Status")


class FamiliesPanel(QWidget):
    """Lists families (id, task, version, package, status) and plugin load errors."""

    def __init__(self, viewer: "napari.viewer.Viewer | None" = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.setObjectName("medgen-families")
        layout = QVBoxLayout(self)
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
        self.refresh()

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

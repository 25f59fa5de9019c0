"""The Insert-lesions dock's table of inserted lesions.

After a run whose result lists its lesions (``info["lesions"]``: label, centre, volume, type,
contrast or density), the part shows them in a table; clicking a row moves the viewer to the
lesion's centre. It also says what the result's layers hold: the margin beyond the mask
that may have changed and, for a tumour, the compartment labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (
    QAbstractItemView,
    QGroupBox,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ..display import go_to_world

if TYPE_CHECKING:  # pragma: no cover
    from ..family import Result
    from .task_widget import TaskWidget

__all__ = ["COLUMNS", "LesionTable"]

#: the table's column titles
COLUMNS = ("#", "type", "volume (mm³)", "diameter (mm)", "contrast", "z, y, x (mm)")
_TIPS = (
    "the lesion's label in the mask layer",
    "the lesion type",
    "voxels of the mask times the voxel volume",
    "diameter of a ball of the same volume",
    "MR: intensity as WM + c x (GM - WM) of this scan; CT: density in HU",
    "lesion centre in world mm: superior, anterior, right (RAS+ z, y, x)",
)


def _contrast(rec: dict[str, Any]) -> str:
    if "hu" in rec:
        return f"{rec['hu']:.0f} HU"
    if "contrast" in rec:
        return f"{rec['contrast']:.2f}"
    return ""


class LesionTable:
    """The lesion-table part of an Insert-lesions dock (see the module docstring)."""

    def __init__(self, dock: TaskWidget) -> None:
        self.dock = dock
        self.viewer = dock.viewer
        self.lesions: list[dict[str, Any]] = []
        self.box = QGroupBox("Inserted lesions")
        root = QVBoxLayout(self.box)
        root.setContentsMargins(6, 6, 6, 6)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        root.addWidget(self.summary)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        for i, tip in enumerate(_TIPS):
            self.table.horizontalHeaderItem(i).setToolTip(tip)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setMinimumHeight(140)
        self.table.setToolTip("click a row to go to the lesion")
        self.table.cellClicked.connect(lambda row, _col: self.go_to(row))
        root.addWidget(self.table)
        self.box.setVisible(False)
        dock.add_task_widget(self.box)
        dock.result_added.connect(self._on_result)

    def _on_result(self, result: Result, added: list[str]) -> None:
        lesions = result.info.get("lesions")
        if not isinstance(lesions, list):
            self.box.setVisible(False)
            return
        self.lesions = lesions
        self.table.setRowCount(len(lesions))
        for row, rec in enumerate(lesions):
            centre = rec.get("centre_world_mm") or []
            cells = (
                str(rec.get("label", row + 1)),
                str(rec.get("type", "")),
                f"{rec['volume_mm3']:.0f}" if "volume_mm3" in rec else "",
                f"{rec['equivalent_diameter_mm']:.1f}" if "equivalent_diameter_mm" in rec else
                (f"{rec['diameter_mm']:.1f}" if "diameter_mm" in rec else ""),
                _contrast(rec),
                ", ".join(f"{v:.0f}" for v in centre),
            )
            for col, text in enumerate(cells):
                self.table.setItem(row, col, QTableWidgetItem(text))
        notes = [f"{len(lesions)} lesion(s)"]
        if "margin_voxels" in result.info:
            notes.append(f"voxels up to {result.info['margin_voxels']} step(s) beyond the mask may change; "
                         "every other voxel is the scan's")
        comps = result.info.get("compartments")
        if comps:
            notes.append("compartments: " + ", ".join(f"{k} {v}" for k, v in comps.items()))
        self.summary.setText(". ".join(notes) + ".")
        self.box.setVisible(True)

    def go_to(self, row: int) -> None:
        """Move the viewer to lesion ``row``'s centre: the slices through it, centred on screen."""
        if not 0 <= row < len(self.lesions):
            return
        go_to_world(self.viewer, self.lesions[row].get("centre_world_mm"))

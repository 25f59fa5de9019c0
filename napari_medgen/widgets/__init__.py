"""napari docks (the only Qt code in napari-medgen). The manifest names these classes.

napari passes the viewer to a dock class whose ``__init__`` has a ``napari_viewer`` argument.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..family import Task
from .anomaly_regions import AnomalyRegions
from .compare import CompareView
from .families_panel import FamiliesPanel
from .lesion_table import LesionTable
from .superres_compare import SuperresCompare
from .superres_plan import PLAN_PARAMS, PlanLine
from .task_widget import TaskWidget

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = [
    "TaskWidget",
    "FamiliesPanel",
    "SuperresCompare",
    "CompareView",
    "AnomalyRegions",
    "superres_widget",
    "anomaly_widget",
    "harmonize_widget",
    "lesion_widget",
    "families_widget",
]


class superres_widget(TaskWidget):  # noqa: N801 - the manifest's python_name
    """Super-resolution dock, with the plan line (slice axis, target) and the input/result compare view."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer, Task.SUPERRES)
        self.plan_line = PlanLine()
        self.add_summary_part(self.plan_line, watch=PLAN_PARAMS)
        self.compare = SuperresCompare(self)
        self.compare_button = self.compare.button

    def toggle_compare(self) -> None:
        """Input and result side by side in a through-plane reformat, or back (the button)."""
        self.compare.toggle()


class anomaly_widget(TaskWidget):  # noqa: N801
    """Anomaly map dock, with the candidate regions: live threshold and minimum size, table, Save table."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer, Task.ANOMALY)
        self.regions_part = AnomalyRegions(self)


class harmonize_widget(TaskWidget):  # noqa: N801
    """Harmonize dock, with the input/result compare view (side by side, in the current orientation)."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer, Task.HARMONIZE)
        self.compare = CompareView(self, text="Compare input and result")
        self.compare_button = self.compare.button

    def toggle_compare(self) -> None:
        """Input and result side by side, linked, in the current orientation, or back (the button)."""
        self.compare.toggle()


class lesion_widget(TaskWidget):  # noqa: N801
    """Insert lesions dock."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer, Task.LESION)
        self.add_done_note(lambda r: f"{len(r.info['lesions'])} lesion(s)" if "lesions" in r.info else "")
        self.lesion_part = LesionTable(self)


class families_widget(FamiliesPanel):  # noqa: N801
    """Model families dock."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer)

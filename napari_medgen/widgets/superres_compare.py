"""The Super-resolution dock's compare view: input and result side by side, named, in a reformat.

One click puts the last run's input and result in a 1x2 napari grid (one camera, so zoom and
pan stay linked) in a through-plane reformat, where the thick slices show; a second click
restores the view. It is :class:`~napari_medgen.widgets.compare.CompareView` with
``reformat=True`` (see there for the panel names and the caption).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .compare import BACK_TEXT, CompareView

if TYPE_CHECKING:  # pragma: no cover
    from .task_widget import TaskWidget

__all__ = ["BACK_TEXT", "COMPARE_TEXT", "SuperresCompare"]

COMPARE_TEXT = "Compare input and result (2x1 reformat)"


class SuperresCompare(CompareView):
    """The compare button of a Super-resolution dock and the view it switches to and from."""

    def __init__(self, dock: TaskWidget) -> None:
        super().__init__(
            dock,
            reformat=True,
            text=COMPARE_TEXT,
            back_text=BACK_TEXT,
            tooltip="side-by-side grid of the input and the last result, in a through-plane reformat; "
            "click again to go back",
        )

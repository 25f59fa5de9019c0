"""The body every MedGen dock sits in: a scroll area, so that all docks fit a 1080p screen.

A dock's minimum height is what Qt needs to show all its rows; five of them stacked in the
main window once grew its minimum height past the screen. Inside a scroll area a dock can be
as short as the user makes it: the rows keep their size and scroll instead of overlapping.
"""

from __future__ import annotations

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QComboBox, QFrame, QScrollArea, QWidget

__all__ = ["ScrollDock"]

#: the least height a dock asks for (title and a couple of rows stay visible)
MIN_DOCK_HEIGHT = 120
#: the width a dock asks for when it opens (the user can drag it wider or narrower)
PREFERRED_WIDTH = 420
#: characters a drop-down shows at its narrowest (longer entries are elided, full in the list)
COMBO_CHARS = 14


class ScrollDock(QScrollArea):
    """A scroll area whose ``content`` widget holds the dock's rows."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.content = QWidget(self)
        self.content.setObjectName("medgen-dock-content")
        self.setWidget(self.content)
        self.setMinimumHeight(MIN_DOCK_HEIGHT)

    def fit_width(self) -> None:
        """Ask for the rows' minimum width (plus a scroll bar), so no horizontal scroll is needed.

        Drop-downs would otherwise ask for their longest entry (a family's long name) and
        push the rows wider than the dock, clipping every label on the right.
        """
        for combo in self.content.findChildren(QComboBox):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(COMBO_CHARS)
        self.setMinimumWidth(self.content.minimumSizeHint().width() + self._scrollbar_width())
        self.updateGeometry()

    def _scrollbar_width(self) -> int:
        return self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth() + 2

    def sizeHint(self) -> QSize:
        """Open at a comfortable width; as tall as the rows, but no taller than the screen allows."""
        hint = super().sizeHint()
        width = max(PREFERRED_WIDTH, self.content.sizeHint().width() + self._scrollbar_width())
        return QSize(width, hint.height())

"""A small live plot of the training loss (log scale), drawn with QPainter: no extra dependency."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["LossPlot"]


class LossPlot(QWidget):
    """Training loss against step; hidden until the first point arrives."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.points: list[tuple[float, float]] = []
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("training loss (log scale) against step")
        self.setVisible(False)

    def clear(self) -> None:
        self.points = []
        self.setVisible(False)
        self.update()

    def add(self, step: float, loss: float) -> None:
        if loss > 0 and math.isfinite(loss):
            self.points.append((float(step), float(loss)))
            self.setVisible(True)
            self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = self.rect().adjusted(34, 6, -6, -16)
        painter.setPen(QPen(QColor("#666")))
        painter.drawRect(rect)
        if len(self.points) < 2:
            painter.end()
            return
        steps = [p[0] for p in self.points]
        logs = [math.log10(p[1]) for p in self.points]
        x0, x1 = min(steps), max(steps)
        y0, y1 = min(logs), max(logs)
        if y1 - y0 < 1e-6:
            y0, y1 = y0 - 0.5, y1 + 0.5
        poly = QPolygonF()
        for s, v in zip(steps, logs):
            x = rect.left() + (s - x0) / max(x1 - x0, 1e-9) * rect.width()
            y = rect.bottom() - (v - y0) / (y1 - y0) * rect.height()
            poly.append(QPointF(x, y))
        painter.setPen(QPen(QColor("#e8a33d"), 1.6))
        painter.drawPolyline(poly)
        painter.setPen(QPen(QColor("#aaa")))
        font = painter.font()
        font.setPointSizeF(max(6.0, font.pointSizeF() * 0.8))
        painter.setFont(font)
        painter.drawText(2, rect.top() + 10, f"{10 ** y1:.2g}")
        painter.drawText(2, rect.bottom(), f"{10 ** y0:.2g}")
        painter.drawText(rect.left(), self.height() - 2, f"step {int(x0)}")
        painter.drawText(rect.right() - 70, self.height() - 2, f"step {int(x1)}")
        painter.drawText(rect.left() + rect.width() // 2 - 20, self.height() - 2, "loss")
        painter.end()

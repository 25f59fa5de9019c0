"""A small live plot of the training loss (log scale), drawn with QPainter: no extra dependency.

What a user sees, whatever the length of the run: the latest loss and its step as text in
the top-right corner; one point is a marker and that text; a few points are a line with a
marker on each; many noisy points are a faint raw line under a bold smoothed one (an
exponential moving average, the same colour), so the trend shows through the noise. Text takes
the palette's colour, so it reads on napari's dark and light themes. The axes are named
("loss, log scale" and "step") and their ends are labelled at a readable size.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QFontMetrics, QPainter, QPalette, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["LossPlot", "format_loss"]

#: up to this many points, each one gets a marker
MARKERS_UP_TO = 20
#: from this many points, a noisy curve gets a smoothed one drawn over it
SMOOTH_FROM = 30
RAW = QColor("#e8a33d")
AXIS = QColor("#808080")


def format_loss(value: float) -> str:
    """A loss as a user reads it: 3 significant digits, no exponent for ordinary values."""
    if value == 0 or 1e-4 <= abs(value) < 1e5:
        return f"{value:.3g}"
    return f"{value:.2e}"


def ema(values: list[float], span: float) -> list[float]:
    """Exponential moving average with the given span (alpha = 2 / (span + 1)), bias-corrected."""
    alpha = 2.0 / (span + 1.0)
    out, mean, weight = [], 0.0, 0.0
    for v in values:
        mean = (1.0 - alpha) * mean + alpha * v
        weight = (1.0 - alpha) * weight + alpha
        out.append(mean / weight)
    return out


class LossPlot(QWidget):
    """Training loss against step; hidden until the first point arrives."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.points: list[tuple[float, float]] = []
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("training loss (log scale) against step; with many steps the bold line is the "
                        "smoothed loss and the faint one each step's")
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

    # -- what is drawn (also read by tests) ------------------------------------------------------
    def latest_text(self) -> str:
        """The corner text: ``"loss 0.0123 at step 5"`` ("" before the first point)."""
        if not self.points:
            return ""
        step, loss = self.points[-1]
        return f"loss {format_loss(loss)} at step {int(round(step))}"

    def smoothed(self) -> list[float] | None:
        """The smoothed log10 loss drawn over a noisy curve of many points, else None."""
        if len(self.points) < SMOOTH_FROM:
            return None
        logs = [math.log10(p[1]) for p in self.points]
        diffs = [b - a for a, b in zip(logs, logs[1:])]
        turns = sum(1 for a, b in zip(diffs, diffs[1:]) if a * b < 0)
        if turns < 0.1 * len(diffs):  # a smooth curve needs no smoothing
            return None
        return ema(logs, span=max(5.0, len(logs) / 15.0))

    def shows_markers(self) -> bool:
        return 0 < len(self.points) <= MARKERS_UP_TO

    # -- painting ----------------------------------------------------------------------------------
    def _font(self, scale: float = 1.0, bold: bool = False) -> QFont:
        font = QFont(self.font())
        size = font.pointSizeF() if font.pointSizeF() > 0 else 9.0
        font.setPointSizeF(max(8.0, size * scale))  # never below a readable size
        font.setBold(bold)
        return font

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        painter = QPainter(self)
        try:
            self._paint(painter)
        finally:
            painter.end()

    def _paint(self, painter: QPainter) -> None:
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        small = self._font(0.9)
        metrics = QFontMetrics(small)
        line_h = metrics.height()
        steps = [p[0] for p in self.points]
        logs = [math.log10(p[1]) for p in self.points]
        y0, y1 = (min(logs), max(logs)) if logs else (0.0, 1.0)
        if y1 - y0 < 1e-6:
            y0, y1 = y0 - 0.5, y1 + 0.5
        top_label, bottom_label = format_loss(10**y1), format_loss(10**y0)
        left = max(metrics.horizontalAdvance(top_label), metrics.horizontalAdvance(bottom_label)) + 8
        # the plot area: room for the corner text above, the step labels below, the values on the left
        rect = QRectF(self.rect()).adjusted(left, line_h + 6, -8, -(line_h + 4))
        painter.setPen(QPen(AXIS))
        painter.drawRect(rect)
        text_colour = self.palette().color(QPalette.ColorRole.WindowText)
        painter.setFont(small)
        painter.setPen(QPen(text_colour))
        # axis names, in the frame's corners (out of the curve's usual way)
        painter.drawText(QRectF(0, 0, self.width(), line_h + 4), Qt.AlignmentFlag.AlignLeft
                         | Qt.AlignmentFlag.AlignVCenter, " loss (log scale)")
        # the latest value: always, top right
        painter.setFont(self._font(0.95, bold=True))
        painter.drawText(QRectF(0, 0, self.width() - 8, line_h + 4),
                         Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, self.latest_text())
        painter.setFont(small)
        if not self.points:
            return
        if len(self.points) > 1:  # value labels on the left (one point has no range), step labels below
            painter.drawText(QRectF(0, rect.top() - line_h / 2, left - 4, line_h),
                             Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, top_label)
            painter.drawText(QRectF(0, rect.bottom() - line_h / 2, left - 4, line_h),
                             Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, bottom_label)
        x0, x1 = min(steps), max(steps)
        below = QRectF(rect.left(), rect.bottom() + 2, rect.width(), line_h)
        painter.drawText(below, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop, f"step {int(x0)}")
        painter.drawText(below, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop, "step")
        if x1 > x0:
            right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop
            painter.drawText(below, right, f"step {int(x1)}")

        def at(step: float, value: float) -> QPointF:
            fx = 0.5 if x1 == x0 else (step - x0) / (x1 - x0)
            fy = (value - y0) / (y1 - y0)
            return QPointF(rect.left() + fx * rect.width(), rect.bottom() - fy * rect.height())

        if len(self.points) == 1:  # one point: a marker and its value in words
            painter.setPen(QPen(RAW, 1.5))
            painter.setBrush(RAW)
            painter.drawEllipse(at(steps[0], logs[0]), 4.0, 4.0)
            painter.setPen(QPen(text_colour))
            painter.setFont(self._font(1.0))
            painter.drawText(rect.adjusted(0, 0, 0, -rect.height() / 2 - 6), Qt.AlignmentFlag.AlignHCenter
                             | Qt.AlignmentFlag.AlignBottom, self.latest_text())
            return
        smooth = self.smoothed()
        raw = QPolygonF([at(s, v) for s, v in zip(steps, logs)])
        faint = QColor(RAW)
        if smooth is not None:
            faint.setAlpha(90)  # the raw curve stays visible under the trend
        painter.setPen(QPen(faint, 1.0 if smooth is not None else 1.8))
        painter.drawPolyline(raw)
        if smooth is not None:
            painter.setPen(QPen(RAW, 2.6))
            painter.drawPolyline(QPolygonF([at(s, v) for s, v in zip(steps, smooth)]))
        if self.shows_markers():
            painter.setPen(QPen(RAW, 1.0))
            painter.setBrush(RAW)
            for point in raw:
                painter.drawEllipse(point, 3.0, 3.0)

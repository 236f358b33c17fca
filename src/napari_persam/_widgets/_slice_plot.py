"""A small Qt line plot of a score per slice; clicking it picks a slice.

Painted with QPainter rather than matplotlib: one line over [0, 1] needs no
plotting library, and a click maps straight to a slice index.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt, Signal
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

_MARGIN_LEFT = 30
_MARGIN = 8
_MARGIN_BOTTOM = 16


class SliceScorePlot(QWidget):
    """Score (0..1) per slice as a line, the current slice marked.

    Signals
    -------
    slice_clicked(int)
        The slice under a mouse click.
    """

    slice_clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._values = np.zeros(0)
        self._current: int | None = None
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("IoU per slice; click to go to a slice")

    @property
    def values(self) -> np.ndarray:
        """(Z,) float64 scores as plotted (NaN = no value)."""
        return self._values.copy()

    def set_values(self, values: Sequence[float]) -> None:
        self._values = np.asarray(values, dtype=np.float64)
        self.update()

    def set_current(self, index: int | None) -> None:
        self._current = index
        self.update()

    def _plot_rect(self) -> QRectF:
        return QRectF(
            _MARGIN_LEFT,
            _MARGIN,
            max(1, self.width() - _MARGIN_LEFT - _MARGIN),
            max(1, self.height() - _MARGIN - _MARGIN_BOTTOM),
        )

    def _x(self, index: float, rect: QRectF) -> float:
        count = len(self._values)
        if count <= 1:
            return rect.center().x()
        return rect.left() + rect.width() * index / (count - 1)

    def slice_at(self, x: float) -> int | None:
        """The slice nearest to widget x coordinate ``x``, or None when empty."""
        count = len(self._values)
        if count == 0:
            return None
        rect = self._plot_rect()
        if count == 1:
            return 0
        fraction = (x - rect.left()) / rect.width()
        return int(np.clip(round(fraction * (count - 1)), 0, count - 1))

    def mousePressEvent(self, event) -> None:  # Qt override
        index = self.slice_at(event.position().x() if hasattr(event, "position") else event.x())
        if index is not None:
            self.slice_clicked.emit(index)

    def paintEvent(self, event) -> None:  # Qt override
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = self._plot_rect()
        foreground = self.palette().color(self.foregroundRole())
        painter.setPen(QPen(foreground, 1))
        painter.drawRect(rect)
        painter.drawText(QPointF(2, rect.top() + 10), "1")
        painter.drawText(QPointF(2, rect.bottom()), "0")
        count = len(self._values)
        if count:
            painter.drawText(QPointF(rect.left(), self.height() - 3), "z 0")
            label = f"{count - 1}"
            painter.drawText(QPointF(rect.right() - 8 * len(label), self.height() - 3), label)
        if self._current is not None and 0 <= self._current < count:
            painter.setPen(QPen(QColor(255, 160, 0), 1, Qt.PenStyle.DashLine))
            x = self._x(self._current, rect)
            painter.drawLine(QPointF(x, rect.top()), QPointF(x, rect.bottom()))
        painter.setPen(QPen(QColor(80, 170, 255), 2))
        points = [
            QPointF(self._x(i, rect), rect.bottom() - rect.height() * float(np.clip(v, 0, 1)))
            for i, v in enumerate(self._values)
            if np.isfinite(v)
        ]
        if len(points) == 1:
            painter.drawEllipse(points[0], 3, 3)
        elif points:
            painter.drawPolyline(QPolygonF(points))
        painter.end()

"""How the widget's form is laid out: groups, folding sections, rows, the scroll area.

napari docks a widget beside its canvas; these pieces keep the dock narrow (small
minimum widths, a status line that wraps instead of widening) and let the form
fold and scroll instead of growing. The controls themselves are in
:mod:`._controls`.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Container, FileEdit, Label, PushButton, Select
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QFrame, QScrollArea


class StatusLabel(Label):
    """A label whose tooltip repeats its text (the whole message stays at hand)."""

    @property
    def value(self) -> str:
        return str(Label.value.fget(self))

    @value.setter
    def value(self, text: str) -> None:
        Label.value.fset(self, text)
        self.tooltip = str(text)


def row(*widgets: Any, name: str) -> Container:
    """Widgets side by side, without margins, as one row of the form."""
    container = Container(widgets=list(widgets), layout="horizontal", labels=False, name=name)
    container.margins = (0, 0, 0, 0)
    return container


class Group(Container):
    """Labelled controls one below the other; :meth:`add` places one and returns it,
    so a form creates and places a control in a single line::

        self.part_range = self.advanced.add(controls.part_range())
    """

    def __init__(self, *, name: str) -> None:
        super().__init__(name=name)
        self.margins = (0, 0, 0, 0)

    def add(self, widget: Any) -> Any:
        """Place ``widget`` at the end; returns it."""
        self.body.append(widget)
        return widget

    @property
    def body(self) -> Container:
        """Where the controls go."""
        return self


class Section(Container):
    """A titled :class:`Group` that folds away (its controls keep their values).

    Parameters
    ----------
    title : str
        The text of the fold button.
    name : str
    expanded : bool
        Open when the form is shown.
    """

    def __init__(self, title: str, *, name: str, expanded: bool = False) -> None:
        self.title = title
        self.toggle = PushButton(text=title, name=f"{name}_toggle")
        self.toggle.native.setFlat(True)
        self.toggle.native.setStyleSheet("text-align: left")
        self.body = Group(name=f"{name}_body")
        self.body.margins = (8, 0, 0, 0)
        super().__init__(widgets=[self.toggle, self.body], labels=False, name=name)
        self.margins = (0, 0, 0, 0)
        self.toggle.changed.connect(self._on_toggle_clicked)
        self.expanded = expanded

    def add(self, widget: Any) -> Any:
        """Place ``widget`` at the end of this section; returns it."""
        return self.body.add(widget)

    @property
    def expanded(self) -> bool:
        return not self.body.native.isHidden()

    @expanded.setter
    def expanded(self, value: bool) -> None:
        self.body.visible = bool(value)
        self.toggle.text = ("\u25be " if value else "\u25b8 ") + self.title

    def _on_toggle_clicked(self, *_: object) -> None:
        self.expanded = not self.expanded


def scroll_area(content: Container) -> QScrollArea:
    """``content`` in a scroll area: the form scrolls instead of growing the dock.

    magicgui's own ``scrollable`` would fix the dock's minimum width to the
    content's, and napari docks ``.native`` (inside the scroll area), so the scroll
    area is made here.
    """
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    area.setWidget(content.native)
    return area


def compact(widget: Any) -> Any:
    """``widget`` with a small minimum width (long layer names or paths do not widen the dock)."""
    native = widget.native
    combo = native if isinstance(native, QComboBox) else None
    if combo is not None:
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(8)
    if isinstance(widget, FileEdit):
        widget.choose_btn.native.setText("\u2026")  # a narrow "..." button
        widget.choose_btn.tooltip = "Choose a file"
        widget.line_edit.native.setMinimumWidth(60)
    if isinstance(widget, Select):
        native.setMinimumWidth(60)
    return widget

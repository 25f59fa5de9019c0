"""A dock's "Copy as command": the ``medgen run ...`` line that repeats its last run, on the clipboard.

The line is the one the run's provenance records (``provenance["command"]``, built by
:mod:`napari_medgen.commands`): task, family, every parameter, seed, device, time budget and
the files behind the input layers, so a run tried in the viewer can be repeated on a cohort
from a shell. A layer with no file behind it is named by a placeholder; the status line then
says which layer to save first.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QApplication, QPushButton

from ..commands import placeholder_note

if TYPE_CHECKING:  # pragma: no cover
    from ..family import Result
    from .task_widget import TaskWidget

__all__ = ["COPY_TEXT", "RunCommand"]

COPY_TEXT = "Copy as command"


class RunCommand:
    """The "Copy as command" button of a task dock (enabled once a run has finished)."""

    def __init__(self, dock: TaskWidget) -> None:
        self.dock = dock
        self.button = QPushButton(COPY_TEXT)
        self.button.setObjectName("medgen-copy-command")
        self.button.setEnabled(False)
        self.button.setToolTip("after a run: copy the `medgen run ...` command that repeats it")
        self.button.clicked.connect(self.copy)
        dock.add_task_widget(self.button)
        dock.result_added.connect(self._on_result)

    # -- the last run's command ------------------------------------------------------------
    def _provenance(self) -> dict[str, Any]:
        result = getattr(self.dock, "last_result", None)
        prov = (getattr(result, "info", None) or {}).get("provenance") if result is not None else None
        return prov if isinstance(prov, dict) else {}

    @property
    def command(self) -> str:
        """The last run's ``medgen run`` line ("" before a run)."""
        return str(self._provenance().get("command") or "")

    @property
    def placeholders(self) -> list[dict[str, Any]]:
        """The inputs the line names by a placeholder (layers without a file)."""
        return list(self._provenance().get("command_placeholders") or [])

    def _on_result(self, result: Result, added: list[str]) -> None:
        line = self.command
        self.button.setEnabled(bool(line))
        tip = line
        note = placeholder_note(self.placeholders)
        if note:
            tip += f"\n\nNote: {note}"
        self.button.setToolTip(tip or "this run recorded no command")

    # -- the button --------------------------------------------------------------------------
    def copy(self) -> str:
        """Put the last run's command on the clipboard and say so in the status line; returns it."""
        line = self.command
        if not line:
            self.dock.status.setText("Nothing to copy: run first (the command repeats the last run).")
            return ""
        QApplication.clipboard().setText(line)
        # explicit rich text: a placeholder such as <scan>.nii.gz must show, not read as a tag
        text = f"Copied: <code>{html.escape(line)}</code>"
        note = placeholder_note(self.placeholders)
        if note:
            text += f"<br><span style='color:#e0a030'>{html.escape(note)}</span>"
        self.dock.status.setText(text)
        return line

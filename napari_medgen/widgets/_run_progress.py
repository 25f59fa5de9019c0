"""The activity-panel progress bar of one run: one owner, moved with ``update``, closed once.

napari's ``progress.set_description`` and ``progress.update`` repaint the activity panel with
``QApplication.processEvents()``, which can deliver the worker's *finished* signal in the
middle of a progress callback; the run's end then closes the bar while the callback is still
using it. :class:`RunProgress` checks that it is still open after every such call and
ignores re-entrant and late updates, so no progress callback can fail after a run ends.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["RunProgress"]

log = logging.getLogger("napari_medgen.widgets")


class RunProgress:
    """A ``napari.utils.progress`` bar (0-100 %) owned by one run of a dock."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._closed = False
        self._busy = False
        self._pending: tuple[int, int, str] | None = None
        self._message = ""
        self._cancelling = False
        self._pbar: Any = None
        try:
            from napari.utils import progress

            self._pbar = progress(total=100, desc=title)
        except Exception:
            log.debug("no napari progress bar", exc_info=True)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def percent(self) -> int:
        """What the activity panel shows now (0-100)."""
        return int(self._pbar.n) if self._pbar is not None else 0

    def update(self, done: float, total: float, message: str = "") -> None:
        """Show ``done`` of ``total`` and the message; a no-op once the run has ended."""
        self._pending = (done, total, message)
        if self._busy or self._closed or self._cancelling or self._pbar is None:
            return  # a re-entrant call (events processed inside the bar) is applied by the outer one
        self._busy = True
        try:
            while self._pending is not None and not self._closed:
                done, total, message = self._pending
                self._pending = None
                pct = round(100 * float(done) / max(float(total), 1.0))
                pct = max(0, min(100, pct))
                if message and message != self._message:
                    self._message = message
                    self._pbar.set_description(f"{self.title}: {message}"[:80])  # processes events
                    if self._closed:
                        break
                delta = pct - int(self._pbar.n)
                if delta:
                    self._pbar.update(delta)  # emits the value the activity panel shows; processes events
        except RuntimeError:  # the activity panel's widget is already gone (viewer closing)
            log.debug("activity panel progress bar gone", exc_info=True)
        finally:
            self._busy = False

    def cancelling(self) -> None:
        """The user pressed Cancel: the bar says so at once and later updates are ignored."""
        if self._closed or self._pbar is None:
            return
        self._cancelling = True
        self._message = "cancelling"
        try:
            self._pbar.set_description(f"{self.title}: cancelling")  # may process events
        except RuntimeError:  # the activity panel's widget is already gone (viewer closing)
            log.debug("activity panel progress bar gone", exc_info=True)

    @property
    def description(self) -> str:
        """What the activity panel shows as the bar's text."""
        return str(getattr(self._pbar, "desc", "")) if self._pbar is not None else ""

    def close(self) -> None:
        """Remove the bar from the activity panel; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        pbar, self._pbar = self._pbar, None
        if pbar is not None:
            try:
                pbar.close()
            except Exception:
                log.debug("could not close the progress bar", exc_info=True)

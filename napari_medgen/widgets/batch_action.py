"""A dock's "Run on a folder...": the dock's family and settings over a cohort on disk (``medgen batch``).

The dialog (:class:`BatchDialog`) asks for the input folder (a folder of scans or a BIDS
dataset), the output folder, BIDS filters, the number of workers and what to do with the
scans a previous batch finished or failed; the task, family, parameters, device, seed, time
budget and references are the dock's. :class:`BatchAction` then runs
:func:`napari_medgen.batch.engine.run_batch` in a napari thread worker: the viewer stays
responsive, the scans finished so far show in the activity panel ("3/20 scans") and in the
dock's status line, and the same button cancels the batch. Nothing is added as a layer: the
cohort's results are files, listed in the manifest the status line names at the end.
"""

from __future__ import annotations

import html
import logging
import os
import threading
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import Cancelled, InputError, MedGenError
from .task_widget import _Run

if TYPE_CHECKING:  # pragma: no cover
    from ..batch.engine import BatchConfig, BatchSummary
    from .task_widget import TaskWidget

__all__ = ["RUN_TEXT", "CANCEL_TEXT", "BatchAction", "BatchDialog", "reference_file", "default_output"]

log = logging.getLogger("napari_medgen.widgets")

RUN_TEXT = "Run on a folder..."
CANCEL_TEXT = "Cancel batch"
RUN_TIP = ("run this family with these settings on every scan of a folder or BIDS dataset "
           "(the results are written to disk, not added as layers)")
#: failed scans named in the status line; the rest are counted (the manifest lists them all)
MAX_FAILURES_SHOWN = 5
MODES = ("resume", "retry_failed", "force")


def is_bids_root(folder: str | os.PathLike) -> bool:
    """A BIDS dataset root: a folder with a ``dataset_description.json``."""
    try:
        return (Path(folder) / "dataset_description.json").is_file()
    except OSError:
        return False


def default_output(input_folder: str | os.PathLike) -> str:
    """``<bids root>/derivatives/medgen`` for a BIDS dataset, else ``<input>/../<input name>_medgen``."""
    text = str(input_folder).strip()
    if not text:
        return ""
    folder = Path(text).expanduser()
    if is_bids_root(folder):
        return str(folder / "derivatives" / "medgen")
    folder = Path(os.path.abspath(folder))
    return str(folder.parent / f"{folder.name or 'scans'}_medgen")


def reference_file(layer: Any) -> str:
    """The file behind a reference layer, for the workers to read; a layer without one is refused."""
    from ..commands import volume_source

    name = getattr(layer, "name", "?")
    source = volume_source(layer)  # the reader's record of the file (a MedGen result has none)
    path = source.get("path")
    if not path and source.get("source_folder"):
        if source.get("several_series"):
            raise InputError(
                f"reference layer '{name}' is one series of a DICOM folder that holds several; "
                "save it to a file first (File > Save Layers)"
            )
        path = source["source_folder"]
    if not path:
        path = getattr(getattr(layer, "source", None), "path", None)
    if not path:
        raise InputError(f"save reference layer '{name}' to a file first (File > Save Layers)")
    if not Path(path).exists():
        raise InputError(f"the file behind reference layer '{name}' is gone: {path}")
    return str(path)


def _words(text: str) -> list[str]:
    return [w for w in text.replace(",", " ").split() if w]


class BatchDialog(QDialog):
    """The fields of one batch; :meth:`config` builds the :class:`BatchConfig` (no ``exec`` needed).

    ``accept()`` checks the fields: a mistake is shown in the dialog, which stays open; on
    success :attr:`result_config` holds the batch to run.
    """

    def __init__(self, dock: TaskWidget, last: dict[str, Any] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent if parent is not None else dock)
        self.dock = dock
        self.result_config: BatchConfig | None = None
        self._output_auto = True  # the output follows the input until the user edits it
        last = last or {}
        self.setWindowTitle(f"MedGen {dock.task.title}: run on a folder")
        self.setObjectName("medgen-batch-dialog")
        root = QVBoxLayout(self)

        self.what = QLabel("")
        self.what.setWordWrap(True)
        self.what.setTextFormat(Qt.TextFormat.RichText)
        root.addWidget(self.what)

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        self.input_edit = QLineEdit()
        self.input_edit.setPlaceholderText("a folder of NIfTI scans, or a BIDS dataset")
        self.input_edit.setToolTip("every NIfTI scan under this folder is processed; "
                                   "a BIDS dataset root works too")
        self.input_browse = QPushButton("Browse...")
        self.input_browse.clicked.connect(self._browse_input)
        form.addRow("Input folder", self._with_button(self.input_edit, self.input_browse))
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText("where the results and the manifest go")
        self.output_edit.setToolTip("created if missing; default: beside the input folder, or the BIDS "
                                    "dataset's derivatives/medgen")
        self.output_browse = QPushButton("Browse...")
        self.output_browse.clicked.connect(self._browse_output)
        form.addRow("Output folder", self._with_button(self.output_edit, self.output_browse))
        self.input_edit.textChanged.connect(self._on_input_changed)
        self.output_edit.textEdited.connect(self._on_output_edited)
        self.workers_spin = QSpinBox()
        self.workers_spin.setRange(0, 256)
        self.workers_spin.setSpecialValueText("auto")
        self.workers_spin.setMinimumWidth(110)
        self.workers_spin.setMaximumWidth(140)
        self.workers_spin.setToolTip("worker processes of the local Dask cluster (one scan each at a time); "
                                     "auto: from the cores and GPUs of this machine")
        form.addRow("Workers", self.workers_spin)
        root.addLayout(form)

        self.bids_box = QGroupBox("BIDS dataset (optional filters)")
        bids = QFormLayout(self.bids_box)
        bids.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        self.participants_edit = QLineEdit()
        self.participants_edit.setPlaceholderText("all subjects")
        self.participants_edit.setToolTip("space-separated subject labels, e.g. 01 02 "
                                          "(with or without 'sub-')")
        bids.addRow("Participants", self.participants_edit)
        self.suffix_edit = QLineEdit()
        self.suffix_edit.setPlaceholderText("all anat scans")
        self.suffix_edit.setToolTip("space-separated suffixes, e.g. T1w FLAIR")
        bids.addRow("Suffixes", self.suffix_edit)
        root.addWidget(self.bids_box)

        self.mode_box = QGroupBox("If the output folder holds an earlier batch")
        modes = QVBoxLayout(self.mode_box)
        self.resume_radio = QRadioButton("Resume: skip finished scans")
        self.resume_radio.setToolTip("a scan whose output records the same input, family, parameters "
                                     "and seed is skipped")
        self.retry_radio = QRadioButton("Rerun failed scans only")
        self.retry_radio.setToolTip("only the scans the last manifest lists as failed or cancelled")
        self.force_radio = QRadioButton("Rerun all scans (replace their outputs)")
        self.force_radio.setToolTip("every scan again, even finished ones and outputs of other settings")
        self.mode_group = QButtonGroup(self)
        for radio in (self.resume_radio, self.retry_radio, self.force_radio):
            self.mode_group.addButton(radio)
            modes.addWidget(radio)
        root.addWidget(self.mode_box)

        self.error_label = QLabel("")
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.setStyleSheet("color: #e55;")
        self.error_label.hide()
        root.addWidget(self.error_label)

        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.run_button = self.buttons.addButton("Run batch", QDialogButtonBox.ButtonRole.AcceptRole)
        self.run_button.setDefault(True)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        root.addWidget(self.buttons)

        self.input_edit.setText(str(last.get("input", "")))
        if last.get("output") and last.get("output") != default_output(last.get("input", "")):
            self.set_output(str(last["output"]))
        self.participants_edit.setText(str(last.get("participants", "")))
        self.suffix_edit.setText(str(last.get("suffixes", "")))
        self.workers_spin.setValue(int(last.get("workers", 0)))
        self.mode = str(last.get("mode", "resume"))
        self._on_input_changed()
        self.refresh_summary()
        self.setMinimumWidth(520)

    @staticmethod
    def _with_button(edit: QLineEdit, button: QPushButton) -> QWidget:
        box = QWidget()
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(edit, 1)
        row.addWidget(button)
        return box

    # -- fields ----------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """``resume``, ``retry_failed`` or ``force``."""
        if self.retry_radio.isChecked():
            return "retry_failed"
        if self.force_radio.isChecked():
            return "force"
        return "resume"

    @mode.setter
    def mode(self, value: str) -> None:
        radio = {"retry_failed": self.retry_radio, "force": self.force_radio}.get(value, self.resume_radio)
        radio.setChecked(True)

    def set_input(self, folder: str | os.PathLike) -> None:
        self.input_edit.setText(str(folder))

    def set_output(self, folder: str | os.PathLike) -> None:
        """An output folder the user chose: it no longer follows the input."""
        self._output_auto = False
        self.output_edit.setText(str(folder))

    def fields(self) -> dict[str, Any]:
        """The fields as typed (what the next dialog of this dock starts from)."""
        return {"input": self.input_edit.text().strip(), "output": self.output_edit.text().strip(),
                "participants": self.participants_edit.text().strip(),
                "suffixes": self.suffix_edit.text().strip(),
                "workers": self.workers_spin.value(), "mode": self.mode}

    def _on_input_changed(self, *_: Any) -> None:
        text = self.input_edit.text().strip()
        bids = bool(text) and is_bids_root(Path(text).expanduser())
        self.bids_box.setEnabled(bids)
        self.bids_box.setToolTip(
            "" if bids else "the input folder is not a BIDS dataset (no dataset_description.json)")
        if self._output_auto:
            self.output_edit.setText(default_output(text))

    def _on_output_edited(self, text: str) -> None:
        self._output_auto = not text.strip()  # cleared: follow the input again

    def _browse_input(self) -> None:
        start = self.input_edit.text().strip() or str(Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Input folder (scans or a BIDS dataset)", start)
        if folder:
            self.set_input(folder)

    def _browse_output(self) -> None:
        start = self.output_edit.text().strip() or self.input_edit.text().strip() or str(Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Output folder", start)
        if folder:
            self.set_output(folder)

    def refresh_summary(self) -> None:
        """The line at the top: what runs on every scan (the dock's family, settings and references)."""
        try:
            self.what.setText(self._summary_html())
        except Exception:  # noqa: BLE001 - a summary must never stop the dialog
            log.debug("batch summary", exc_info=True)
            self.what.setText("")

    def _summary_html(self) -> str:
        from ..commands import format_param

        dock = self.dock
        entry = dock.entry
        if entry is None:
            return f"<span style='color:#e55'>No {dock.task.value} family is installed.</span>"
        fam = entry.family
        params = dock.params()
        shown = ", ".join(f"{k}={format_param(v, fam.param(k))}" for k, v in params.items()
                          if format_param(v, fam.param(k)) != "")
        device, seed, budget = dock.run_settings()
        settings = [f"device {device}"]
        if not fam.deterministic:
            settings.append(f"seed {seed}")
        if budget is not None:
            settings.append(f"time budget {budget:g} s per scan")
        text = f"Every scan: <b>{html.escape(fam.display_name)}</b> ({html.escape(entry.id)})"
        if shown:
            text += f" with {html.escape(shown)}"
        text += f"; {', '.join(settings)}."
        refs = list(dock.ref_select.value or []) if dock.ref_select is not None else []
        if refs:
            text += "<br>References: " + ", ".join(f"'{html.escape(r)}'" for r in refs) + "."
        unused = [label for combo, label in ((dock.points_combo, "points"), (dock.mask_combo, "mask"))
                  if combo is not None and combo.value not in (None, "(none)")]
        if unused:
            text += (f"<br><span style='color:#e0a030'>The dock's {' and '.join(unused)} layer is not used "
                     "for a folder.</span>")
        return f"<small>{text}</small>"

    # -- the batch -------------------------------------------------------------------------
    def references(self) -> list[str]:
        """The files behind the references selected in the dock."""
        dock = self.dock
        if dock.ref_select is None:
            return []
        layers = dock.viewer.layers
        return [reference_file(layers[name]) for name in (dock.ref_select.value or []) if name in layers]

    def config(self) -> BatchConfig:
        """The batch these fields and the dock describe; a mistake raises a :class:`MedGenError`."""
        from ..batch.engine import BatchConfig

        dock = self.dock
        entry = dock.entry
        if entry is None:
            raise InputError(f"no {dock.task.value} family is installed (see the Model families dock)")
        fields = self.fields()
        if not fields["input"]:
            raise InputError("choose the input folder (a folder of scans or a BIDS dataset)")
        source = Path(fields["input"]).expanduser()
        if not source.exists():
            raise InputError(f"the input folder {source} does not exist")
        output = fields["output"] or default_output(source)
        outdir = Path(output).expanduser()
        bids = is_bids_root(source)
        self._check_output(source.resolve(), Path(os.path.abspath(outdir)), bids)
        params = dict(dock.params())
        entry.family.resolve_params(params)  # a wrong value is named now, not once per scan
        references = self.references()
        message = dock.missing_references_message(entry.family, len(references))
        if message:
            raise InputError(message)
        device, seed, budget = dock.run_settings()
        return BatchConfig(
            task=dock.task.value, inputs=[str(source)], outdir=str(outdir), family_id=entry.id, params=params,
            references=references, seed=seed, device=device, time_budget=budget,
            participant_labels=_words(fields["participants"]) if bids else (),
            suffixes=_words(fields["suffixes"]) if bids else (),
            workers=fields["workers"] or None, force=fields["mode"] == "force",
            retry_failed=fields["mode"] == "retry_failed",
        )

    @staticmethod
    def _check_output(source: Path, outdir: Path, bids: bool) -> None:
        try:
            outdir = outdir.resolve()
        except OSError:
            pass
        if outdir.exists() and not outdir.is_dir():
            raise InputError(f"the output folder {outdir} is a file; choose a folder")
        if not source.is_dir():
            return
        inside = outdir == source or source in outdir.parents
        if bids and inside and "derivatives" not in outdir.relative_to(source).parts:
            raise InputError("the output folder is inside the BIDS dataset: use "
                             f"{source / 'derivatives' / 'medgen'} or a folder outside it")
        if not bids and inside:
            raise InputError("the output folder is inside the input folder, so its results would be read as "
                             "scans next time: choose a folder outside it")

    def accept(self) -> None:
        """Check the fields; a mistake is shown here (the dialog stays open), else the dialog closes."""
        try:
            self.result_config = self.config()
        except MedGenError as exc:
            self.result_config = None
            self.error_label.setText(str(exc))
            self.error_label.show()
            return
        self.error_label.hide()
        super().accept()


class _Bridge(QObject):
    """Carries the worker thread's progress to the main thread (queued), tagged with the batch's number."""

    progressed = Signal(int, int, int, object)  # batch id, finished, total, manifest row
    said = Signal(int, str)  # batch id, a line from run_batch


class _Batch(_Run):
    """One started batch: a run (its number, cancel Event, activity bar; it ends exactly once) plus its counts."""

    def __init__(self, config: BatchConfig, title: str) -> None:
        super().__init__(title, threading.Event())
        self.config = config
        self.finished = 0
        self.total = 0
        self.failures: list[tuple[str, str]] = []  # (input, error)
        self.note = ""  # run_batch's last line (workers, dashboard)

    @property
    def manifest(self) -> Path:
        return Path(self.config.outdir).expanduser() / "manifest.csv"


class BatchAction:
    """The "Run on a folder..." button of a task dock; while a batch runs it reads "Cancel batch"."""

    def __init__(self, dock: TaskWidget) -> None:
        self.dock = dock
        self.dialog: BatchDialog | None = None
        self.batch: _Batch | None = None
        self.summary: BatchSummary | None = None
        self.last_error = ""
        self._last_fields: dict[str, Any] = {}
        self._worker = None
        self._bridge = _Bridge()
        self._bridge.progressed.connect(self._on_progress)
        self._bridge.said.connect(self._on_say)
        self.button = QPushButton(RUN_TEXT)
        self.button.setObjectName("medgen-run-on-folder")
        self.button.setToolTip(RUN_TIP)
        self.button.clicked.connect(self._clicked)
        dock.add_task_widget(self.button)

    @property
    def running(self) -> bool:
        return self.batch is not None

    def _clicked(self, *_: Any) -> None:
        if self.running:
            self.cancel()
        else:
            self.open_dialog()

    # -- the dialog ------------------------------------------------------------------------
    def make_dialog(self) -> BatchDialog:
        """A dialog for the next batch, filled with this dock's last fields; Run starts the batch."""
        if self.dialog is not None:  # one dialog per dock at a time: the last one's fields are kept
            self.dialog.deleteLater()
        dialog = BatchDialog(self.dock, self._last_fields)
        dialog.finished.connect(partial(self._remember, dialog))
        dialog.accepted.connect(partial(self._accepted, dialog))
        self.dialog = dialog
        return dialog

    def open_dialog(self) -> BatchDialog:
        """Show the dialog (window-modal, without a nested event loop); returns it."""
        dialog = self.make_dialog()
        dialog.open()
        return dialog

    def _remember(self, dialog: BatchDialog, *_: Any) -> None:
        self._last_fields = dialog.fields()

    def _accepted(self, dialog: BatchDialog) -> None:
        self._remember(dialog)
        if dialog.result_config is not None:
            self.start(dialog.result_config)

    # -- running ---------------------------------------------------------------------------
    def start(self, config: BatchConfig) -> None:
        """Run the batch in a napari thread worker (in this thread under ``SYNCHRONOUS``)."""
        from . import task_widget

        if self.running:
            return
        try:
            from ..batch.engine import run_batch
        except Exception as exc:  # noqa: BLE001 - a broken install is said in the dock
            log.exception("the batch engine cannot be imported", exc_info=exc)
            self._fail(f"the batch engine is not available: {type(exc).__name__}: {exc}")
            return
        dock = self.dock
        batch = _Batch(config, f"MedGen batch ({dock.task.title})")
        self.batch = batch
        self.summary = None
        self.last_error = ""
        dock.destroyed.connect(batch.abandon)
        self.button.setText(CANCEL_TEXT)
        self.button.setToolTip("stop the batch: queued scans are not run, finished scans are kept")
        self._show_status(f"Batch: looking for scans in {config.inputs[0]}...")
        bridge, batch_id, cancel = self._bridge, batch.id, batch.cancel

        def job() -> BatchSummary:
            return run_batch(
                config,
                progress=lambda done, total, row: bridge.progressed.emit(batch_id, int(done), int(total),
                                                                        dict(row)),
                cancel=cancel,
                say=lambda line: bridge.said.emit(batch_id, str(line)),
            )

        self._worker = task_widget.start_job(job, partial(self._finish_returned, batch),
                                             partial(self._finish_errored, batch))

    def cancel(self) -> None:
        """Stop the batch: queued scans are cancelled, running ones abandoned; finished scans stay."""
        batch = self.batch
        if batch is None or batch.cancel.is_set():
            return
        batch.cancel.set()
        self.button.setEnabled(False)
        self.button.setText("Cancelling...")
        self._show_status(f"Batch: cancelling after {batch.finished}/{batch.total or '?'} scans "
                          "(finished scans are kept)...")
        batch.progress.cancelling()  # last: napari's bar processes events, which may end the batch here

    def _current(self, batch_id: int) -> _Batch | None:
        batch = self.batch
        return batch if batch is not None and batch.id == batch_id and not batch.ended else None

    def _on_say(self, batch_id: int, line: str) -> None:
        batch = self._current(batch_id)
        if batch is None:
            return
        batch.note = line
        if batch.cancel.is_set():
            return
        if batch.finished == 0:
            self._show_status(f"Batch: {line}")
        else:
            self._show_progress(batch)

    def _on_progress(self, batch_id: int, finished: int, total: int, row: dict[str, Any]) -> None:
        batch = self._current(batch_id)
        if batch is None:
            return
        batch.finished, batch.total = finished, total
        if row.get("status") == "failed":
            batch.failures.append((str(row.get("input", "?")), str(row.get("error", ""))))
        if batch.cancel.is_set():
            return  # "cancelling" stays on screen
        self._show_progress(batch)
        failed = f", {len(batch.failures)} failed" if batch.failures else ""
        # last: napari's bar processes events, which may even end the batch here
        batch.progress.update(finished, max(total, 1), f"{finished}/{total} scans{failed}")

    def _show_progress(self, batch: _Batch) -> None:
        text = f"Batch: {batch.finished}/{batch.total} scans"
        if batch.failures:
            text += f", {len(batch.failures)} failed"
        text = html.escape(text)
        text += self._failures_html(batch)
        if batch.note:
            text += f"<br><small style='color:#9aa'>{html.escape(batch.note)}</small>"
        self.dock.status.setText(text)

    @staticmethod
    def _failures_html(batch: _Batch) -> str:
        if not batch.failures:
            return ""
        lines = [f"{Path(path).name}: {error}" for path, error in batch.failures[:MAX_FAILURES_SHOWN]]
        more = len(batch.failures) - MAX_FAILURES_SHOWN
        if more > 0:
            lines.append(f"and {more} more (see the manifest)")
        return "".join(f"<br><span style='color:#e0a030'>failed: {html.escape(line)}</span>"
                       for line in lines)

    def _show_status(self, text: str) -> None:
        self.dock.status.setText(html.escape(text))

    def _finish_returned(self, batch: _Batch, summary: BatchSummary) -> None:
        self._finish(batch, summary=summary)

    def _finish_errored(self, batch: _Batch, exc: BaseException) -> None:
        self._finish(batch, error=exc)

    def _finish(self, batch: _Batch, summary: BatchSummary | None = None,
                error: BaseException | None = None) -> None:
        """The one end of a batch: close its bar once, give the button back, then say how it went."""
        if batch.ended or batch is not self.batch:
            return  # the dock was closed, or this batch already ended
        batch.end()
        self.batch = None
        self._worker = None
        try:
            self.dock.destroyed.disconnect(batch.abandon)
        except (TypeError, RuntimeError):  # pragma: no cover - already disconnected
            pass
        self.button.setEnabled(True)
        self.button.setText(RUN_TEXT)
        self.button.setToolTip(RUN_TIP)
        try:
            if error is not None:
                self._on_error(batch, error)
            else:
                self._on_done(batch, summary)
        except Exception as exc:  # never into the Qt event loop: shown in the dock
            log.exception("MedGen could not show the batch's end", exc_info=exc)
            self._fail(f"internal error after the batch: {type(exc).__name__}: {exc}")

    def _on_done(self, batch: _Batch, summary: BatchSummary) -> None:
        self.summary = summary
        counts = [f"{summary.done} done"]
        if summary.skipped:
            counts.append(f"{summary.skipped} skipped (finished before)")
        counts.append(f"{summary.failed} failed")
        if summary.cancelled:
            counts.append(f"{summary.cancelled} cancelled")
        manifest = summary.manifest_csv or batch.manifest
        line = (f"Batch done: {', '.join(counts)} of {summary.total} in {summary.elapsed:.0f} s; "
                f"manifest: {manifest}")
        text = html.escape(line)
        if not batch.failures and summary.failed:  # rows the progress did not report
            batch.failures = [(str(r.get("input", "?")), str(r.get("error", ""))) for r in summary.rows
                              if r.get("status") == "failed"]
        text += self._failures_html(batch)
        if summary.failed:
            text += "<br><small>After a fix, run on the folder again: \"Rerun failed scans only\".</small>"
        if summary.model:
            text += f"<br><small>Shared model: {html.escape(str(summary.model))}</small>"
        self.dock.status.setText(text)
        notify = "show_info" if summary.ok else "show_warning"
        try:
            from napari.utils import notifications

            getattr(notifications, notify)(f"MedGen: {line}")
        except Exception:  # pragma: no cover - notification is cosmetic
            pass

    def _on_error(self, batch: _Batch, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self.last_error = "cancelled"
            self._show_status(
                f"Batch cancelled after {batch.finished}/{batch.total or '?'} scans; finished scans are kept "
                f"(manifest: {batch.manifest}). Run on the folder again with \"Resume\" to go on."
            )
            return
        if isinstance(exc, MedGenError):
            self._fail(str(exc))
            return
        log.exception("MedGen batch failed", exc_info=exc)
        self._fail(f"internal error in the batch: {type(exc).__name__}: {exc}")

    def _fail(self, message: str) -> None:
        self.last_error = message
        self.dock._fail(message)

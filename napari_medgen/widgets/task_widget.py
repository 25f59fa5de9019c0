"""One family-driven dock for every task: inputs, family, parameters, device, Run/Cancel.

Long work runs in a napari thread worker; progress travels back through a Qt signal tagged
with the run's number, to the dock's bar and to one :class:`RunProgress` bar in the activity
dock; signals of a run that has ended are ignored. Results arrive as new layers; the input
layers are never modified. ``SYNCHRONOUS = True`` (or ``MEDGEN_SYNC_WORKERS=1``) runs in the
calling thread, for deterministic tests. Task-specific parts (the SR plan line and compare
view, the anomaly candidate regions) live in modules of their own and are added with
:meth:`TaskWidget.add_summary_part`, :meth:`TaskWidget.add_task_widget` and
:meth:`TaskWidget.add_done_note`; they react to :attr:`TaskWidget.result_added`.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import weakref
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from magicgui import widgets as mw
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from .. import settings
from ..errors import Cancelled, MedGenError
from ..family import AUTO, Inputs, InputSpec, ModelFamily, Param, Result, Task
from ..io.napari_io import HEATMAP_COLORMAP_NAME, layer_to_volume, volume_to_layer_data
from ..masks import mask_input
from ..registry import FamilyEntry, get_registry
from ._dock import ScrollDock
from ._run_progress import RunProgress
from ._signals import registry_events
from .loss_plot import LossPlot

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["TaskWidget", "SYNCHRONOUS", "param_widget", "start_job"]

log = logging.getLogger("napari_medgen.widgets")

#: run families in the calling thread (tests); the env var MEDGEN_SYNC_WORKERS=1 does the same
SYNCHRONOUS = False
NONE = "(none)"
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _synchronous() -> bool:
    return SYNCHRONOUS or os.environ.get("MEDGEN_SYNC_WORKERS", "") not in ("", "0")


def start_job(job: Callable[[], Any], returned: Callable[[Any], None],
              errored: Callable[[BaseException], None]) -> Any:
    """Run ``job`` in a napari thread worker; its value or exception goes to ``returned``/``errored``.

    With the synchronous switch (tests) it runs here and now, and None is returned instead of
    the worker. Errors never reach the Qt event loop: the dock shows them.
    """
    if _synchronous():
        try:
            value = job()
        except BaseException as exc:  # noqa: BLE001 - reported in the dock
            errored(exc)
        else:
            returned(value)
        return None
    from napari.qt.threading import create_worker

    worker = create_worker(job, _start_thread=False, _ignore_errors=True)
    worker.returned.connect(returned)
    worker.errored.connect(errored)
    worker.start()
    return worker


class AutoValue(mw.Container):
    """A number field with an "auto" check box beside it: the value is "auto" or the number.

    For parameters that the family can work out itself (``Param.auto``); while "auto" is
    ticked the number field is hidden, so nothing on screen says "0 means auto".
    """

    def __init__(self, number: mw.ValueWidget, param: Param) -> None:
        self.auto_box = mw.CheckBox(value=True, text="auto", tooltip=f"auto: {param.auto}")
        self.number = number
        super().__init__(widgets=[self.auto_box, number], layout="horizontal", labels=False,
                         label=param.display, tooltip=param.help or None)
        self.margins = (0, 0, 0, 0)
        self.auto_box.changed.connect(self._sync)
        self._sync()

    def _sync(self, *_: Any) -> None:
        self.number.visible = not self.auto_box.value  # no placeholder number while the family decides

    @property
    def value(self) -> Any:
        return AUTO if self.auto_box.value else self.number.value

    @value.setter
    def value(self, value: Any) -> None:
        if isinstance(value, str) and value.strip().lower() == AUTO:
            self.auto_box.value = True
        else:
            self.number.value = value
            self.auto_box.value = False


def param_widget(param: Param) -> mw.ValueWidget:
    """The magicgui widget for one declared parameter."""
    if param.auto:
        start = param.default
        if start == AUTO:  # the number field's value before the user unticks "auto": 0 if allowed
            lo = param.minimum if param.minimum is not None else -np.inf
            hi = param.maximum if param.maximum is not None else np.inf
            start = min(max(0.0, lo), hi)
            start = int(start) if param.kind == "int" else float(start)
        plain = replace(param, auto="", default=start)
        number = param_widget(plain)
        number.label = ""
        w = AutoValue(number, param)
        w.name = param.name
        if param.default != AUTO:
            w.value = param.default
        return w
    label = param.display
    tooltip = param.help or None
    if param.kind == "bool":
        w = mw.CheckBox(value=param.default, label=label, tooltip=tooltip)
    elif param.kind == "choice":
        w = mw.ComboBox(value=param.default, choices=list(param.choices), label=label, tooltip=tooltip)
    elif param.kind == "int":
        lo = int(param.minimum) if param.minimum is not None else -(2**31)
        hi = int(param.maximum) if param.maximum is not None else 2**31 - 1
        w = mw.SpinBox(value=param.default, min=lo, max=hi, label=label, tooltip=tooltip)
    elif param.kind == "float":
        lo = float(param.minimum) if param.minimum is not None else -1e9
        hi = float(param.maximum) if param.maximum is not None else 1e9
        span = hi - lo if np.isfinite(hi - lo) and hi - lo < 1e6 else 10.0
        step = 10 ** np.floor(np.log10(max(span / 100, 1e-4)))
        w = mw.FloatSpinBox(value=param.default, min=lo, max=hi, step=float(step), label=label, tooltip=tooltip)
        try:
            w.native.setDecimals(max(2, int(-np.log10(step)) + 1))
        except Exception:  # pragma: no cover - backend without decimals
            pass
    elif param.path:  # a file the run reads or writes: a line edit with a file dialog button
        pattern = " ".join(f"*{suffix}" for suffix in param.suffixes[:1]) or "*"
        w = mw.FileEdit(value=param.default, mode="r" if param.path == "read" else "w", filter=pattern,
                        label=label, tooltip=tooltip)
    else:
        w = mw.LineEdit(value=param.default, label=label, tooltip=tooltip)
    w.name = param.name
    return w


def param_value(widget: mw.ValueWidget) -> Any:
    """A form widget's value as the family expects it (a file box's text: "" when empty, not ".")."""
    if isinstance(widget, mw.FileEdit):
        return str(widget.line_edit.value or "").strip()
    return widget.value


class _Bridge(QObject):
    """Carries worker-thread events to the main thread (queued), tagged with the run's number."""

    progressed = Signal(int, float, float, str)  # run id, done, total, message
    metric = Signal(int, object)  # run id, event


_run_ids = itertools.count(1)


class _Run:
    """One press of Run (or a batch): its number, cancel flag and activity bar; it ends exactly once."""

    def __init__(self, title: str, cancel: threading.Event) -> None:
        self.id = next(_run_ids)
        self.cancel = cancel
        self.progress = RunProgress(title)
        self.ended = False

    def end(self) -> None:
        self.ended = True
        self.progress.close()

    def abandon(self, *_: Any) -> None:
        """The dock was closed mid-run: stop the work, drop the bar, ignore what comes back."""
        self.cancel.set()
        self.end()


def _forget_layers(events: Any, slot_ref: weakref.WeakMethod, *_: Any) -> None:
    """A deleted dock stops listening to the viewer's layer list (its widgets are gone).

    The slot is held weakly so that this connection does not keep a closed dock alive.
    """
    slot = slot_ref()
    if slot is None:
        return  # the dock's Python object went first: napari's weak connection died with it
    for ev in ("inserted", "removed", "moved", "changed"):
        try:
            getattr(events, ev).disconnect(slot)
        except Exception:  # already gone with the viewer
            log.debug("layer events already disconnected", exc_info=True)


class TaskWidget(ScrollDock):
    """The dock for one :class:`Task` (a scroll area: see :class:`ScrollDock`)."""

    #: (result, names of the layers added): task-specific parts react to a finished run
    result_added = Signal(object, list)

    def __init__(self, viewer: "napari.viewer.Viewer", task: Task | str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.task = Task(task)
        self.setObjectName(f"medgen-{self.task.value}")
        self._entries: list[FamilyEntry] = []
        self._param_widgets: dict[str, mw.ValueWidget] = {}
        self._summary_parts: list[tuple[Callable[..., str], tuple[str, ...]]] = []
        self._done_notes: list[Callable[[Result], str]] = []
        self._cancel = threading.Event()
        self._worker = None
        self._run: _Run | None = None
        self._running = False
        self.last_result: Result | None = None
        self.last_error: str = ""
        self._bridge = _Bridge()
        self._bridge.progressed.connect(self._on_progress)
        self._bridge.metric.connect(self._on_metric)
        self._build()
        self.refresh_layers()
        self.refresh_families()
        for ev in ("inserted", "removed", "moved", "changed"):
            getattr(viewer.layers.events, ev).connect(self._on_layers_changed)
        slot = weakref.WeakMethod(self._on_layers_changed)
        self.destroyed.connect(partial(_forget_layers, viewer.layers.events, slot))
        registry_events.reloaded.connect(self._on_registry_reloaded)
        from ..display import install_reading_convention

        install_reading_convention(viewer)  # results show as radiologists read them

    # -- construction ------------------------------------------------------------
    def _build(self) -> None:
        root = QVBoxLayout(self.content)
        root.setContentsMargins(6, 6, 6, 6)
        title = QLabel(f"<b>{self.task.title}</b>")
        root.addWidget(title)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        self.image_combo = mw.ComboBox(choices=[], tooltip="the 3D image layer to process")
        form.addRow("Input image", self.image_combo.native)
        self.image_combo.changed.connect(self._on_image_changed)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setStyleSheet("color: #9aa;")
        form.addRow("", self.summary)
        self.ref_select = None
        self.ref_combo = None
        self.points_combo = None
        self.mask_combo = None
        if self.task in (Task.HARMONIZE, Task.ANOMALY):
            tip = (
                "target-site reference scan(s) (other subjects); select several with Ctrl/Shift-click. "
                "The input and MedGen results are not offered"
                if self.task is Task.HARMONIZE
                else "scans of normal anatomy used as the reference for 'normal'; select several with "
                "Ctrl/Shift-click. The input and MedGen results are not offered"
            )
            self.ref_select = mw.Select(choices=[], tooltip=tip)
            self.ref_select.native.setMaximumHeight(80)
            form.addRow(self.reference_label, self.ref_select.native)
        if self.task is Task.LESION:
            self.points_combo = mw.ComboBox(choices=[NONE], tooltip="a Points layer: one lesion per point")
            form.addRow("Points", self.points_combo.native)
        if self.task in (Task.LESION, Task.HARMONIZE, Task.ANOMALY):
            tip = (
                "a Labels layer: random lesions are placed inside it"
                if self.task is Task.LESION
                else "optional foreground mask (else computed automatically)"
            )
            self.mask_combo = mw.ComboBox(choices=[NONE], tooltip=tip)
            form.addRow("Mask (labels)", self.mask_combo.native)
        self.family_combo = mw.ComboBox(choices=[], tooltip="model family (from installed plugins)")
        self.family_combo.changed.connect(self._on_family_changed)
        form.addRow("Family", self.family_combo.native)
        self.family_info = QLabel("")
        self.family_info.setWordWrap(True)
        self.family_info.setStyleSheet("color: #9aa;")
        form.addRow("", self.family_info)
        root.addLayout(form)
        self.params_box = mw.Container(labels=True)
        self.params_box.native.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Minimum)
        root.addWidget(self.params_box.native)
        form2 = QFormLayout()
        # each row is (label, field); a family shows only the rows that mean something for it
        self._rows: dict[str, tuple[QWidget, ...]] = {}
        self.device_combo = mw.ComboBox(choices=list(DEVICE_CHOICES), value="auto", tooltip="compute device")
        self.device_combo.changed.connect(self._update_device_label)
        self.device_label = QLabel("")
        self.device_label.setWordWrap(True)
        self._add_row(form2, "device", "Device", self.device_combo.native)
        self._add_row(form2, "device_note", "", self.device_label)
        self.seed_box = mw.SpinBox(value=0, min=0, max=2**31 - 1, tooltip=(
            "random seed. With a step limit and no time budget, the same seed gives the same result on the same "
            "machine and software; a time budget makes the number of training steps (hence the result) depend on "
            "the machine's speed and load"))
        self._add_row(form2, "seed", "Seed", self.seed_box.native)
        self.budget_box = param_widget(Param(
            "time_budget", "float", AUTO, minimum=10.0, maximum=86400.0, unit="s",
            auto="the family preset's training time, or only its step limit when one is set",
            help="training time of learned families, in seconds (untick auto to set it)"))
        self.budget_box.number.value = 300.0  # what the field shows when auto is unticked
        self._add_row(form2, "budget", "Time budget (s)", self.budget_box.native)
        root.addLayout(form2)
        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        root.addLayout(buttons)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 100)
        self.progress_bar.setValue(0)
        root.addWidget(self.progress_bar)
        self.loss_plot = LossPlot()
        root.addWidget(self.loss_plot)
        self.status = QLabel("Ready.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        root.addWidget(self.status)
        self._task_rows = QVBoxLayout()  # task-specific rows (see add_task_widget)
        self._task_rows.setContentsMargins(0, 0, 0, 0)
        root.addLayout(self._task_rows)
        note = QLabel("<small>Research use only; not for diagnosis.</small>")
        note.setStyleSheet("color: #888;")
        root.addWidget(note)
        root.addStretch(1)
        self._update_device_label()
        self.fit_width()
        from .run_command import RunCommand  # "Copy as command": the `medgen run` line of the last run

        self.command_action = RunCommand(self)
        from .batch_action import BatchAction  # "Run on a folder...": this family over a cohort

        self.batch_action = BatchAction(self)

    def _add_row(self, form: QFormLayout, key: str, text: str, field: QWidget) -> None:
        label = QLabel(text)
        form.addRow(label, field)
        self._rows[key] = (label, field)

    def _show_row(self, key: str, visible: bool) -> None:
        for widget in self._rows[key]:
            widget.setVisible(visible)

    def row_shown(self, key: str) -> bool:
        """Whether the form shows a row: ``"device"``, ``"seed"`` or ``"budget"`` (label and field)."""
        return all(not widget.isHidden() for widget in self._rows[key])

    @property
    def reference_label(self) -> str:
        """The label of the references list ("Reference(s)", "Normal reference(s)")."""
        return "Normal reference(s)" if self.task is Task.ANOMALY else "Reference(s)"

    def _show_run_settings(self, family: ModelFamily | None) -> None:
        """Device, seed and time budget: only the rows that mean something for this family."""
        gpu = family is not None and bool(family.wants_gpu or family.trains)
        self._show_row("device", gpu)
        self._show_row("device_note", gpu)
        self._show_row("seed", family is not None and not family.deterministic)
        self._show_row("budget", family is not None and bool(family.trains))

    def run_settings(self) -> tuple[str, int, float | None]:
        """``(device, seed, time budget)`` of the next run; a hidden row gives its neutral value.

        A family that neither wants a GPU nor trains runs on the CPU; a deterministic one gets
        seed 0; one that does not train gets no time budget.
        """
        device = self.device_combo.value if self.row_shown("device") else "cpu"
        seed = int(self.seed_box.value) if self.row_shown("seed") else 0
        budget = None
        if self.row_shown("budget") and self.budget_box.value != AUTO:
            budget = float(self.budget_box.value)
        return device, seed, budget

    def add_task_widget(self, widget: QWidget) -> None:
        """Add a task-specific row (e.g. the SR compare button) below the status line."""
        self._task_rows.addWidget(widget)
        self.fit_width()

    def add_done_note(self, describe: Callable[[Result], str]) -> None:
        """Add a task-specific note to the "Done" line of a finished run (e.g. "12 candidate regions").

        ``describe(result)`` returns the note, or "" for none.
        """
        self._done_notes.append(describe)

    # -- layers ------------------------------------------------------------------
    def _layers_of(self, kind: str) -> list[str]:
        from napari.layers import Image, Labels, Points

        cls = {"image": Image, "labels": Labels, "points": Points}[kind]
        return [layer.name for layer in self.viewer.layers if isinstance(layer, cls)]

    def _on_layers_changed(self, event: Any = None) -> None:
        self.refresh_layers()

    def refresh_layers(self) -> None:
        images = self._layers_of("image")
        current = self.image_combo.value
        self.image_combo.choices = images
        active = self.viewer.layers.selection.active
        if current in images:
            self.image_combo.value = current
        elif active is not None and active.name in images:
            self.image_combo.value = active.name  # default: the layer the user is looking at
        self._refresh_references()
        if self.points_combo is not None:
            cur = self.points_combo.value
            self.points_combo.choices = [NONE, *self._layers_of("points")]
            if cur in self.points_combo.choices:
                self.points_combo.value = cur
        if self.mask_combo is not None:
            cur = self.mask_combo.value
            self.mask_combo.choices = [NONE, *self._layers_of("labels")]
            if cur in self.mask_combo.choices:
                self.mask_combo.value = cur
        self._update_summary()

    def reference_candidates(self) -> list[str]:
        """The image layers offered as references: scans, not the input itself nor a MedGen result."""
        from napari.layers import Image

        current = self.image_combo.value
        out = []
        for layer in self.viewer.layers:
            if not isinstance(layer, Image) or layer.name == current:
                continue
            if "medgen" in (layer.metadata or {}):  # a result of a run (provenance record)
                continue
            if getattr(layer.colormap, "name", "") == HEATMAP_COLORMAP_NAME or getattr(layer, "rgb", False):
                continue
            out.append(layer.name)
        return out

    def _refresh_references(self) -> None:
        if self.ref_select is None:
            return
        scans = self.reference_candidates()
        keep = [v for v in (self.ref_select.value or []) if v in scans]
        if list(self.ref_select.choices) != scans:
            self.ref_select.choices = scans
        if list(self.ref_select.value or []) != keep:
            self.ref_select.value = keep

    def _on_image_changed(self, *_: Any) -> None:
        self._refresh_references()  # the input is never its own reference
        self._update_summary()

    def _update_summary(self, *_: Any) -> None:
        name = self.image_combo.value
        if not name or name not in self.viewer.layers:
            self.summary.setText("open a 3D scan (File > Open) to start")
            return
        layer = self.viewer.layers[name]
        shape = tuple(np.shape(layer.data))
        sp = tuple(float(s) for s in layer.scale)
        text = f"shape {' x '.join(map(str, shape))}, spacing {' x '.join(f'{s:.3g}' for s in sp)} mm"
        if len(sp) == 3:
            params = self.params()
            text += "".join("<br>" + describe(layer, params) for describe, _ in self._summary_parts)
        self.summary.setText(text)

    def add_summary_part(self, describe: Callable[[Any, dict[str, Any]], str], watch: Sequence[str] = ()) -> None:
        """Add a task-specific line under the input summary (e.g. SR's plan), redrawn when ``watch`` params change.

        ``describe(layer, params)`` gets the selected 3D image layer and the current parameters.
        """
        self._summary_parts.append((describe, tuple(watch)))
        self._on_family_changed()

    # -- families ----------------------------------------------------------------
    def _on_registry_reloaded(self) -> None:
        try:
            self.refresh_families()
        except RuntimeError:  # this dock was closed: its Qt widgets are gone
            registry_events.reloaded.disconnect(self._on_registry_reloaded)

    def refresh_families(self, *_: Any) -> None:
        """List the task's families; example families only when the user asks (read each time)."""
        everything = get_registry().families(self.task)
        shown = settings.show_examples()
        real = [e for e in everything if not getattr(e.family, "example", False)]
        examples = [e for e in everything if getattr(e.family, "example", False)] if shown else []
        self._entries = real + examples  # an example is never first: never the default
        current = self.family_combo.value
        choices = [(f"{e.family.display_name} ({e.id})" + ("  [example]" if e in examples else ""), e.id)
                   for e in self._entries]
        self.family_combo.choices = choices
        ids = [e.id for e in self._entries]
        if current in ids:
            self.family_combo.value = current  # what the user picked stays picked
        elif ids:
            self.family_combo.value = ids[0]  # the task's default: the first real family
        self._on_family_changed()
        self.run_button.setEnabled(bool(self._entries) and not self._running)
        if not self._entries:
            hidden = len(everything) - len(self._entries)
            more = f"; {hidden} example famil{'ies' if hidden > 1 else 'y'} hidden" if hidden else ""
            self.status.setText(
                f"No {self.task.value} family is installed (see the Model families dock){more}."
            )
        self.fit_width()

    @property
    def entry(self) -> FamilyEntry | None:
        fid = self.family_combo.value
        for e in self._entries:
            if e.id == fid:
                return e
        return None

    def _on_family_changed(self, *_: Any) -> None:
        self.params_box.clear()
        self._param_widgets = {}
        entry = self.entry
        if entry is None:
            self.family_info.setText("")
            self._show_run_settings(None)
            return
        fam = entry.family
        info = f"{fam.description}" if fam.description else ""
        self.family_info.setText(f"<small>{info} [v{fam.version}, {entry.package or entry.plugin}]</small>")
        self.family_info.setToolTip(
            f"{fam.display_name}\n\nCitation: {fam.citation or '-'}\nLicense: {fam.license or '-'}\n{fam.intended_use}"
        )
        for p in fam.params:
            w = param_widget(p)
            self._param_widgets[p.name] = w
            self.params_box.append(w)
            if any(p.name in watch for _, watch in self._summary_parts):
                w.changed.connect(self._update_summary)
        self._show_run_settings(fam)
        self._update_device_label()
        self._update_summary()
        self.fit_width()  # the new parameter rows may be wider

    def select_family(self, family_id: str) -> None:
        self.family_combo.value = family_id

    def set_params(self, **values: Any) -> None:
        for k, v in values.items():
            w = self._param_widgets[k]
            if isinstance(w, mw.FileEdit):  # its value setter turns "" into the current folder
                w.line_edit.value = str(v)
            else:
                w.value = v

    def params(self) -> dict[str, Any]:
        return {name: param_value(w) for name, w in self._param_widgets.items()}

    def _update_device_label(self, *_: Any) -> None:
        from ..engine.device import describe_device

        text = describe_device(self.device_combo.value)
        entry = self.entry
        warn = text.startswith("CPU") or text.startswith("unavailable")
        if entry is not None and not entry.family.wants_gpu and text.startswith("CPU"):
            warn = False
        colour = "#e0a030" if warn else "#8c8"
        self.device_label.setText(f"<span style='color:{colour}'>will use: {text}</span>")

    # -- inputs ------------------------------------------------------------------
    def collect_inputs(self) -> Inputs:
        from ..errors import InputError

        name = self.image_combo.value
        if not name or name not in self.viewer.layers:
            raise InputError("pick an input image layer first (File > Open a scan)")
        layer = self.viewer.layers[name]
        image = self._volume_of(layer)
        refs = []
        if self.ref_select is not None:
            for ref_name in self.ref_select.value or []:
                if ref_name == name:
                    raise InputError("the reference cannot be the input layer itself")
                refs.append(self._volume_of(self.viewer.layers[ref_name]))
        points = None
        if self.points_combo is not None and self.points_combo.value not in (None, NONE):
            pl = self.viewer.layers[self.points_combo.value]
            world = [pl.data_to_world(p) for p in np.asarray(pl.data)]
            points = np.array([layer.world_to_data(w) for w in world], dtype=float).reshape(-1, 3)
            if points.size == 0:
                points = None
        mask = None
        if self.mask_combo is not None and self.mask_combo.value not in (None, NONE):
            ml = self.viewer.layers[self.mask_combo.value]
            mvol = layer_to_volume(ml)
            mask = mask_input(mvol.with_data(mvol.data, name=ml.name))
        return Inputs(image=image, references=refs, points=points, mask=mask)

    def missing_references_message(self, family: ModelFamily, given: int) -> str:
        """What to do when a family that needs references has too few: where to pick them, in this dock."""
        spec: InputSpec | None = family.input_spec("references")
        if spec is None or not spec.required or given >= spec.min_count or self.ref_select is None:
            return ""
        need = max(1, spec.min_count)
        if self.task is Task.HARMONIZE:
            what, plural = "target-site scan", "target-site scans"
        else:
            what, plural = "scan of normal anatomy", "scans of normal anatomy"
        several = " (Ctrl/Shift-click for several)"
        if need == 1:
            pick = f"select a {what} under {self.reference_label}{several if spec.max_count != 1 else ''}"
        else:
            pick = f"select at least {need} {plural} under {self.reference_label}{several}"
        head = f"{family.display_name} needs {need} reference scan{'s' if need > 1 else ''}"
        if given:
            head += f" (given: {given})"
        if not self.ref_select.choices:  # nothing to pick from yet
            pick = f"open one (File > Open), then {pick}"
        text = f"{head}: {pick}."
        if spec.help:  # the family's own words on what the references are
            text += f" {spec.help.rstrip('.')}."
        return text

    def check_references(self, family: ModelFamily, inputs: Inputs) -> None:
        """Before running: a required reference that is missing is named with where to pick it."""
        from ..errors import InputError

        message = self.missing_references_message(family, len(inputs.references))
        if message:
            raise InputError(message)

    @staticmethod
    def _volume_of(layer: Any):
        """The layer as a Volume; RGB and Labels layers are refused with a clear message."""
        from ..errors import InputError

        if getattr(layer, "rgb", False):
            raise InputError(f"layer '{layer.name}' is an RGB(A) image; MedGen needs a single-channel 3D scan")
        if type(layer).__name__ == "Labels":
            raise InputError(f"layer '{layer.name}' is a Labels layer; pick an image layer (labels are masks)")
        return layer_to_volume(layer)

    # -- running -----------------------------------------------------------------
    def run(self) -> None:
        """Start the chosen family on the chosen inputs (Run button)."""
        if self._running:
            return
        entry = self.entry
        if entry is None:
            self._fail(f"no {self.task.value} family is installed")
            return
        try:
            inputs = self.collect_inputs()
            self.check_references(entry.family, inputs)
            params, overwrite = self._preflight(entry.family, inputs)
        except MedGenError as exc:
            self._fail(str(exc))
            return
        if params is None:
            self.status.setText("Not run: the existing file was kept.")
            return
        device, seed, budget = self.run_settings()
        self._cancel = threading.Event()
        run = self._start_run(entry.family)
        bridge = self._bridge
        cancel = self._cancel
        run_id = run.id

        def job() -> Result:
            from ..runner import run_family

            return run_family(
                entry.family,
                inputs,
                params,
                device=device,
                seed=seed,
                time_budget=budget,
                progress=lambda d, t, m: bridge.progressed.emit(run_id, float(d), float(t), str(m or "")),
                metric=lambda event: bridge.metric.emit(run_id, event),
                cancel_event=cancel,
                package=entry.package,
                overwrite=overwrite,
            )

        self._worker = start_job(job, partial(self._finish_returned, run), partial(self._finish_errored, run))

    def _preflight(self, family: ModelFamily, inputs: Inputs) -> tuple[dict[str, Any] | None, bool]:
        """Parameters and files checked before any compute; an existing file is replaced only if the user says so.

        Returns the resolved parameters and whether replacing is allowed, or ``(None, False)``
        when the user chose to keep an existing file.
        """
        from ..errors import OutputExists
        from ..runner import input_files, preflight

        protected = input_files(inputs)
        try:
            return preflight(family, self.params(), protected=protected, hint="confirm to replace it")[0], False
        except OutputExists as exc:
            if not self.confirm_overwrite(exc.path):
                return None, False
        return preflight(family, self.params(), protected=protected, overwrite=True)[0], True

    def confirm_overwrite(self, path: str) -> bool:
        """Ask before a run replaces an existing file (e.g. a saved model); False keeps it."""
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(
            self,
            "Replace file?",
            f"{path}\nalready exists. Replace it with the file this run writes?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def cancel(self) -> None:
        """Ask the running family to stop; no partial layer is added.

        The dock says so at once ("Cancelling...", the button greyed, the activity bar
        "cancelling"); the family stops at its next progress report or cancellation check.
        """
        if self._running and not self._cancel.is_set():
            self._cancel.set()
            self.status.setText("Cancelling...")
            self.cancel_button.setEnabled(False)
            if self._run is not None:
                self._run.progress.cancelling()

    def _set_running(self, running: bool, family: ModelFamily | None = None) -> None:
        self._running = running
        self.run_button.setEnabled(not running and bool(self._entries))
        self.cancel_button.setEnabled(running)
        self.family_combo.enabled = not running
        if running:
            self.progress_bar.setValue(0)
            self.loss_plot.clear()
            self.status.setText(f"Running {family.display_name if family else ''}...")
        else:
            self._worker = None

    def _start_run(self, family: ModelFamily) -> _Run:
        """A new run owns the activity bar; closing the dock mid-run cancels it."""
        self._set_running(True, family)
        run = _Run(f"MedGen {self.task.title}", self._cancel)
        self._run = run
        self.destroyed.connect(run.abandon)
        return run

    def _current(self, run_id: int) -> _Run | None:
        """The running run if it has this number; None for a late signal of an ended run."""
        run = self._run
        return run if run is not None and run.id == run_id and not run.ended else None

    def _on_progress(self, run_id: int, done: float, total: float, message: str) -> None:
        run = self._current(run_id)
        if run is None or run.cancel.is_set():
            return  # queued before the run ended (or was cancelled), delivered after: "Cancelling..." stays
        pct = round(100 * done / max(total, 1))
        self.progress_bar.setValue(max(0, min(100, pct)))
        if message:
            self.status.setText(message)
        run.progress.update(done, total, message)  # may process events, even end the run: last

    def _on_metric(self, run_id: int, event: dict) -> None:
        if self._current(run_id) is not None and "loss" in event:
            self.loss_plot.add(event.get("step", len(self.loss_plot.points)), event["loss"])

    def _finish_returned(self, run: _Run, result: Result) -> None:
        self._finish(run, result=result)

    def _finish_errored(self, run: _Run, exc: BaseException) -> None:
        self._finish(run, error=exc)

    def _finish(self, run: _Run, result: Result | None = None, error: BaseException | None = None) -> None:
        """The one end of a run: close its bar once, then show the result or the error."""
        if run.ended or run is not self._run:
            return  # the dock was closed, or this run already ended
        run.end()
        self._run = None
        try:
            self.destroyed.disconnect(run.abandon)
        except (TypeError, RuntimeError):  # pragma: no cover - already disconnected
            pass
        self._set_running(False)
        try:
            if error is not None:
                self._on_error(error)
            else:
                self._on_done(result)
        except Exception as exc:  # never into the Qt event loop: shown in the dock
            log.exception("MedGen could not show the result", exc_info=exc)
            self._fail(f"internal error while adding the result: {type(exc).__name__}: {exc}")

    def _on_done(self, result: Result) -> None:
        self.last_result = result
        self.last_error = ""
        added = self.add_result_layers(result)
        self.progress_bar.setValue(100)
        prov = result.info.get("provenance", {})
        notes = [note for describe in self._done_notes if (note := describe(result))]
        text = (
            f"Done in {prov.get('elapsed_s', 0):.1f} s on {prov.get('device', '?')}: added "
            + ", ".join(f"'{name}'" for name in added)
            + "".join(f"; {note}" for note in notes)
        )
        if result.info.get("warning"):  # a family's caveat about this result, e.g. a fallback
            text += f"<br><span style='color:#e0a030'>Warning: {result.info['warning']}</span>"
            try:
                from napari.utils.notifications import show_warning

                show_warning(f"MedGen: {result.info['warning']}")
            except Exception:  # pragma: no cover - notification is cosmetic
                pass
        self.status.setText(text)
        self.result_added.emit(result, added)

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self.last_error = "cancelled"
            self.progress_bar.setValue(0)
            self.status.setText("Cancelled; nothing was added.")
            return
        msg = str(exc) if isinstance(exc, MedGenError) else f"internal error: {type(exc).__name__}: {exc}"
        if not isinstance(exc, MedGenError):
            log.exception("MedGen run failed", exc_info=exc)
        self._fail(msg)

    def _fail(self, message: str) -> None:
        self.last_error = message
        self.status.setText(f"<span style='color:#e55'>Error: {message}</span>")
        try:
            from napari.utils.notifications import show_error

            show_error(f"MedGen: {message}")
        except Exception:  # pragma: no cover - notification is cosmetic
            pass

    def add_result_layers(self, result: Result) -> list[str]:
        """Add each output as a new layer beside the input; returns the layer names."""
        from napari.layers import Layer

        names = []
        for out in result.outputs:
            # a heatmap shows over the anatomy (see io.napari_io.heatmap_kwargs); its threshold sets the colours
            kind = out.kind if out.kind in ("labels", "heatmap") else "image"
            threshold = result.info.get("threshold") if kind == "heatmap" else None
            data, kwargs, layer_type = volume_to_layer_data(
                out.volume, kind=kind, name=out.volume.name or out.name, threshold=threshold
            )
            for key, value in out.display.items():
                kwargs[key] = value
            layer = Layer.create(data, kwargs, layer_type)
            self.viewer.add_layer(layer)
            names.append(layer.name)
        return names

"""The Model families dock: every registered family, the plugins that failed to load, and an
installer for community family packages.

Selecting a family shows its description and parameters. The Install area drives pip in the
running interpreter through :mod:`napari_medgen.installer` (no Qt there): the package is read
and a dry run lists every change, which the user confirms before anything is installed;
napari, napari-medgen, torch, numpy, qtpy and the Qt binding are pinned. pip runs in a
background thread (its output streams to the log, Cancel stops it), and after a change the
registry reloads so the families appear in, or leave, every dock without a restart.

It also holds the viewer-wide display setting: radiological (default) or neurological.
"""

from __future__ import annotations

import html
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Callable

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from .. import display, installer, settings
from ..errors import Cancelled, MedGenError
from ..registry import FamilyEntry, get_registry
from ._dock import ScrollDock
from ._signals import registry_events

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["FamiliesPanel"]

log = logging.getLogger("napari_medgen.widgets")

COLUMNS = ("Family", "Task", "Package", "Status")
COLUMN_WIDTHS = {1: 84, 2: 104, 3: 92}  # pixels; the Family column stretches, every cell wraps

DISPLAY_TIPS = {
    "radiological": "as radiologists read scans: the patient's right on the screen's left (from the feet)",
    "neurological": "the patient's right on the screen's right (seen from above / behind)",
}


class _Bridge(QObject):
    """Carries the installer thread's events to the main thread (queued connections)."""

    logged = Signal(str)
    prepared = Signal(object)  # installer.Plan
    applied = Signal(object)  # after_change report
    failed = Signal(str)


def _status(entry: FamilyEntry) -> str:
    notes = [] if entry.status == "ok" else [entry.status]
    if entry.family.wants_gpu:
        notes.append("GPU recommended")
    if getattr(entry.family, "example", False):
        notes.append("example")
    return ", ".join(notes) or "ok"


def family_details(entry: FamilyEntry) -> str:
    """A family's description, parameters and provenance as rich text (the panel's details box)."""
    fam = entry.family
    esc = html.escape
    lines = [
        f"<b>{esc(fam.display_name)}</b> <code>{esc(fam.id)}</code> &mdash; {esc(entry.task.title)}, "
        f"v{esc(fam.version)}, from {esc(entry.package or entry.plugin)}"
        + (" &mdash; <i>GPU recommended</i>" if fam.wants_gpu else ""),
    ]
    if fam.description:
        lines.append(esc(fam.description))
    if fam.params:
        rows = []
        for p in fam.params:
            extra = [f"default {p.default}"] if str(p.default) != "" else []
            if p.auto and str(p.default) != "auto":
                extra.append("or auto")
            if p.range_text():
                extra.append(p.range_text())
            if p.kind == "choice":
                extra.append("one of " + ", ".join(map(str, p.choices)))
            rows.append(f"&bull; <b>{esc(p.display)}</b> <code>{esc(p.name)}</code>"
                        + (f" ({esc('; '.join(extra))})" if extra else "") + (f": {esc(p.help)}" if p.help else ""))
        lines.append("<b>Parameters</b><br>" + "<br>".join(rows))
    else:
        lines.append("Parameters: none")
    for spec in fam.inputs:
        need = "required" if spec.required else "optional"
        lines.append(f"Extra input: {esc(spec.name)} ({need}){': ' + esc(spec.help) if spec.help else ''}")
    lines.append(f"Citation: {esc(fam.citation or '-')}<br>License: {esc(fam.license or '-')}<br>"
                 f"<i>{esc(fam.intended_use)}</i>")
    return "<br>".join(lines)


class FamiliesPanel(ScrollDock):
    """Lists families and plugin load errors; installs, upgrades and removes family packages."""

    def __init__(self, viewer: "napari.viewer.Viewer | None" = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.setObjectName("medgen-families")
        #: makes the pip runner (tests replace it with a fake)
        self.runner_factory: Callable[[], Any] = installer.PipRunner
        self._runner: Any = None
        self._busy = False
        self._applying = False  # pip is changing the environment: Cancel is off
        self._bridge = _Bridge()
        self._bridge.logged.connect(self._append_log)
        self._bridge.prepared.connect(self._on_prepared)
        self._bridge.applied.connect(self._on_applied)
        self._bridge.failed.connect(self._on_failed)
        layout = QVBoxLayout(self.content)
        layout.addWidget(QLabel("<b>Model families</b>"))
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.Interactive)
        header.setSectionResizeMode(0, QHeaderView.Stretch)  # the display name takes what is left, wrapped
        header.setStretchLastSection(False)
        for column, width in COLUMN_WIDTHS.items():
            self.table.setColumnWidth(column, width)
        self.table.setWordWrap(True)
        self.table.setTextElideMode(Qt.TextElideMode.ElideNone)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setMinimumHeight(250)
        self.table.itemSelectionChanged.connect(self._on_selection)
        layout.addWidget(self.table)
        self.details = QTextBrowser()  # scrolls on its own: the install area stays in view
        self.details.setPlaceholderText("Select a family to see what it does and its parameters.")
        self.details.setMinimumHeight(120)
        self.details.setMaximumHeight(190)
        layout.addWidget(self.details)
        self.errors_label = QLabel("")
        self.errors_label.setWordWrap(True)
        layout.addWidget(self.errors_label)
        row = QHBoxLayout()
        self.reload_button = QPushButton("Reload plugins")
        self.reload_button.setToolTip("discover installed plugins again (after a pip install from a terminal)")
        self.reload_button.clicked.connect(self.reload)
        row.addWidget(self.reload_button)
        self.examples_box = QCheckBox("Show example families in the docks")
        self.examples_box.setToolTip("families written as examples for plugin authors (e.g. template.zscore)")
        self.examples_box.setChecked(settings.show_examples())
        self.examples_box.toggled.connect(self.set_show_examples)
        row.addWidget(self.examples_box)
        row.addStretch(1)
        layout.addLayout(row)
        self.reload_note = QLabel("")
        self.reload_note.setWordWrap(True)
        layout.addWidget(self.reload_note)
        layout.addWidget(self._build_install_box())
        layout.addLayout(self._build_display_row())
        self.refresh()
        self.fit_width()
        if viewer is not None:
            display.install_reading_convention(viewer)

    # -- install area ---------------------------------------------------------------------
    def _build_install_box(self) -> QGroupBox:
        box = QGroupBox("Install a model family package")
        grid = QGridLayout(box)
        self.source_edit = QLineEdit()
        self.source_edit.setPlaceholderText("package name, name==version, .whl / .tar.gz file or project folder")
        self.source_edit.setToolTip(
            "what to install: a package name on the index (optionally name==1.2), a wheel or sdist file, "
            "or a project folder (e.g. one made by `medgen plugins new`)"
        )
        file_button = QPushButton("File...")
        file_button.setToolTip("pick a wheel (.whl) or sdist (.tar.gz)")
        file_button.clicked.connect(self._browse_file)
        folder_button = QPushButton("Folder...")
        folder_button.setToolTip("pick a project folder (with pyproject.toml)")
        folder_button.clicked.connect(self._browse_project)
        grid.addWidget(QLabel("Package"), 0, 0)
        grid.addWidget(self.source_edit, 0, 1)
        grid.addWidget(file_button, 0, 2)
        grid.addWidget(folder_button, 0, 3)
        self.version_edit = QLineEdit()
        self.version_edit.setPlaceholderText("newest")
        self.version_edit.setToolTip("a version of the package name (empty: the newest)")
        grid.addWidget(QLabel("Version"), 1, 0)
        grid.addWidget(self.version_edit, 1, 1)
        self.links_edit = QLineEdit()
        self.links_edit.setPlaceholderText("optional: a folder of wheels")
        self.links_edit.setToolTip(
            "a folder of wheels to install from (pip --find-links), e.g. copied from a USB stick")
        links_button = QPushButton("Browse...")
        links_button.clicked.connect(self._browse_links)
        grid.addWidget(QLabel("Wheel folder"), 2, 0)
        grid.addWidget(self.links_edit, 2, 1)
        grid.addWidget(links_button, 2, 2)
        self.offline_box = QCheckBox("offline")
        self.offline_box.setToolTip("use only the wheel folder and local files, never the internet (pip --no-index)")
        grid.addWidget(self.offline_box, 2, 3)
        buttons = QHBoxLayout()
        self.install_button = QPushButton("Install...")
        self.install_button.setToolTip("read the package, show what would change, and install after you confirm")
        self.install_button.clicked.connect(self.install)
        self.upgrade_button = QPushButton("Upgrade selected...")
        self.upgrade_button.setToolTip("upgrade the package of the selected family (from the index or wheel folder)")
        self.upgrade_button.clicked.connect(self.upgrade)
        self.uninstall_button = QPushButton("Uninstall selected...")
        self.uninstall_button.setToolTip("remove the package of the selected family; its families leave the docks")
        self.uninstall_button.clicked.connect(self.uninstall)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        for b in (self.install_button, self.upgrade_button, self.uninstall_button, self.cancel_button):
            buttons.addWidget(b)
        grid.addLayout(buttons, 3, 0, 1, 4)
        self.busy_bar = QProgressBar()
        self.busy_bar.setRange(0, 0)  # busy: pip reports no fraction
        self.busy_bar.setMaximumHeight(10)
        self.busy_bar.setTextVisible(False)
        self.busy_bar.setVisible(False)
        grid.addWidget(self.busy_bar, 4, 0, 1, 4)
        self.install_status = QLabel("napari, napari-medgen, torch, numpy, qtpy and the Qt binding are never replaced.")
        self.install_status.setWordWrap(True)
        self.install_status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        grid.addWidget(self.install_status, 5, 0, 1, 4)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(2000)
        self.log_view.setMaximumHeight(130)
        self.log_view.setPlaceholderText("pip's output appears here")
        grid.addWidget(self.log_view, 6, 0, 1, 4)
        self._update_buttons()
        return box

    def _browse_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Wheel or sdist", "", "Python packages (*.whl *.tar.gz *.zip)")
        if path:
            self.source_edit.setText(path)

    def _browse_project(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Project folder (with pyproject.toml)")
        if path:
            self.source_edit.setText(path)

    def _browse_links(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder of wheels")
        if path:
            self.links_edit.setText(path)

    # -- display setting -------------------------------------------------------------------
    def _build_display_row(self) -> QHBoxLayout:
        """Display: radiological / neurological, saved for later sessions."""
        row = QHBoxLayout()
        label = QLabel("Display")
        self.display_combo = QComboBox()
        for i, name in enumerate(display.CONVENTIONS):
            self.display_combo.addItem(name)
            self.display_combo.setItemData(i, DISPLAY_TIPS[name], Qt.ItemDataRole.ToolTipRole)
        self.display_combo.setCurrentText(display.current_convention())
        self.display_combo.setToolTip(
            "how scans are put on the screen (anterior/superior up either way); saved for later sessions"
        )
        if os.environ.get(display.ENV_VAR, "").strip():
            self.display_combo.setEnabled(False)
            self.display_combo.setToolTip(f"set by the environment variable {display.ENV_VAR}")
        self.display_combo.currentTextChanged.connect(self.set_display_convention)
        label.setBuddy(self.display_combo)
        row.addWidget(label)
        row.addWidget(self.display_combo)
        row.addStretch(1)
        return row

    def set_display_convention(self, name: str) -> None:
        """Use and save the radiological or neurological convention (the Display combo)."""
        if self.display_combo.currentText() != name:
            self.display_combo.setCurrentText(name)  # comes back here through the signal
            return
        display.set_convention(name)

    def set_show_examples(self, show: bool) -> None:
        """Offer (or hide) example families in the docks' family lists; saved for later sessions."""
        if self.examples_box.isChecked() != bool(show):
            self.examples_box.setChecked(bool(show))  # comes back here through the signal
            return
        settings.set_show_examples(bool(show))
        registry_events.reloaded.emit()

    # -- the table ------------------------------------------------------------------------
    def rows(self) -> list[tuple[str, ...]]:
        """The table's rows as text (families, then failed plugins): name, task, package and version, status."""
        reg = get_registry()
        out = [
            (e.family.display_name, e.task.title, f"{e.package or e.plugin} {e.package_version}".strip(), _status(e))
            for e in reg.families()
        ]
        out += [(f"plugin '{err.plugin}'", "-", err.package or "?", f"error: {err.message}") for err in reg.errors]
        return out

    def refresh(self) -> None:
        reg = get_registry()
        entries = reg.families()
        self._row_entries: list[FamilyEntry | None] = [*entries, *[None] * len(reg.errors)]
        self._row_packages = [e.package or e.plugin for e in entries] + [err.package for err in reg.errors]
        rows = self.rows()
        self.table.setRowCount(len(rows))
        for r, values in enumerate(rows):
            entry = self._row_entries[r]
            for c, value in enumerate(values):
                item = QTableWidgetItem(value)
                item.setToolTip(f"{entry.family.display_name} ({entry.id}): {entry.family.description}"
                                if entry is not None else value)
                self.table.setItem(r, c, item)
        self.table.resizeRowsToContents()
        n_err = len(reg.errors)
        if n_err:
            self.errors_label.setText(
                f"<span style='color:#e55'>{n_err} plugin problem(s); other plugins loaded normally.</span>"
            )
        else:
            self.errors_label.setText(f"{len(entries)} families from {len(reg.plugins)} plugin(s).")
        self._on_selection()

    def select_family(self, family_id: str) -> None:
        """Select a family's row (shows its details)."""
        for r, entry in enumerate(self._row_entries):
            if entry is not None and entry.id == family_id:
                self.table.selectRow(r)
                return

    def selected_package(self) -> str:
        """The package of the selected row ("" when nothing is selected)."""
        rows = {i.row() for i in self.table.selectedIndexes()}
        if not rows:
            return ""
        r = min(rows)
        return self._row_packages[r] if r < len(self._row_packages) else ""

    def _on_selection(self) -> None:
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        if rows and rows[0] < len(self._row_entries):
            entry = self._row_entries[rows[0]]
            if entry is not None:
                self.details.setHtml(family_details(entry))
            else:
                err = get_registry().errors[rows[0] - sum(e is not None for e in self._row_entries)]
                self.details.setHtml(f"<b>plugin '{html.escape(err.plugin)}'</b> from "
                                     f"{html.escape(err.package or '?')} failed to load "
                                     f"({html.escape(err.stage)}): {html.escape(err.message)}")
        self._update_buttons()

    def _update_buttons(self) -> None:
        pkg = self.selected_package() if hasattr(self, "_row_packages") else ""
        removable = bool(pkg) and installer.normalize(pkg) not in {
            installer.normalize(p) for p in installer.PROJECT_PACKAGES}
        for b in (self.upgrade_button, self.uninstall_button):
            b.setEnabled(removable and not self._busy)
            if pkg and not removable:
                b.setToolTip(f"{pkg} is part of napari-medgen: it is not upgraded or removed from here")
        self.install_button.setEnabled(not self._busy)
        self.cancel_button.setEnabled(self._busy and not self._applying)

    def reload(self) -> None:
        """Discover installed plugins again; says what changed."""
        before = {e.id for e in get_registry().families()}
        reg = get_registry()
        reg.reload()
        after = {e.id for e in reg.families()}
        self.refresh()
        registry_events.reloaded.emit()
        new, gone = sorted(after - before), sorted(before - after)
        text = f"Reloaded: {len(after)} families from {len(reg.plugins)} plugin(s)"
        text += f"; new: {', '.join(new)}" if new else ""
        text += f"; gone: {', '.join(gone)}" if gone else ""
        text += f"; {len(reg.errors)} plugin problem(s)" if reg.errors else ""
        if not new and not gone:
            text += "; nothing changed"
        self.reload_note.setText(text + ".")
        return None

    # -- install / upgrade / uninstall ----------------------------------------------------
    def install(self) -> None:
        """Read the package in the Package field, show what would change, install after confirmation."""
        spec = self.source_edit.text().strip()
        if not spec:
            self._show_error("type a package name, or pick a wheel, sdist or project folder")
            return
        source = installer.Source(spec, version=self.version_edit.text().strip(),
                                  find_links=self.links_edit.text().strip(), offline=self.offline_box.isChecked())
        self._start(lambda runner, log: installer.prepare_install(source, runner=runner, log=log),
                    f"Reading {spec} ...")

    def upgrade(self) -> None:
        pkg = self.selected_package()
        if not pkg:
            self._show_error("select a family of the package to upgrade")
            return
        links, offline = self.links_edit.text().strip(), self.offline_box.isChecked()
        self._start(lambda runner, log: installer.prepare_upgrade(pkg, find_links=links, offline=offline,
                                                                  runner=runner, log=log),
                    f"Looking for a newer {pkg} ...")

    def uninstall(self) -> None:
        pkg = self.selected_package()
        if not pkg:
            self._show_error("select a family of the package to remove")
            return
        self._start(lambda runner, log: installer.prepare_uninstall(pkg), f"Preparing to remove {pkg} ...")

    def cancel(self) -> None:
        """Stop pip (nothing is installed while the package is read or dry-run)."""
        if self._busy and self._runner is not None:
            self.install_status.setText("Cancelling...")
            self.cancel_button.setEnabled(False)
            self._runner.cancel()

    def confirm(self, plan: installer.Plan) -> bool:
        """Ask the user to confirm a plan (tests replace this)."""
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Warning if plan.action != "uninstall" else QMessageBox.Icon.Question)
        box.setWindowTitle({"install": "Install", "upgrade": "Upgrade", "uninstall": "Remove"}[plan.action]
                           + f" {plan.package}?")
        box.setText(html.escape(plan.summary()).replace("\n", "<br>"))
        box.setStandardButtons(QMessageBox.StandardButton.Ok | QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        return box.exec() == QMessageBox.StandardButton.Ok

    def _set_busy(self, busy: bool, message: str = "") -> None:
        self._busy = busy
        self.busy_bar.setVisible(busy)
        if message:
            self.install_status.setText(message)
        if not busy:
            self._runner = None
            self._applying = False
        self._update_buttons()

    def _start(self, prepare: Callable[[Any, Callable[[str], None]], installer.Plan], message: str) -> None:
        if self._busy:
            return
        self.log_view.clear()
        runner = self.runner_factory()
        self._runner = runner
        self._set_busy(True, message)
        bridge = self._bridge

        def job() -> None:
            try:
                plan = prepare(runner, bridge.logged.emit)
            except BaseException as exc:  # noqa: BLE001 - shown in the panel
                bridge.failed.emit(_message(exc))
            else:
                bridge.prepared.emit(plan)

        threading.Thread(target=job, name="medgen-plugins", daemon=True).start()

    def _on_prepared(self, plan: installer.Plan) -> None:
        try:
            ok = self.confirm(plan)
        except Exception:  # never into the event loop
            log.exception("confirmation failed")
            ok = False
        if not ok:
            plan.cleanup()
            self._set_busy(False, "Nothing changed.")
            self._append_log("Not confirmed: nothing changed.")
            return
        runner = self._runner
        bridge = self._bridge
        self._applying = True  # pip stopped halfway through an install could leave a package broken
        self._update_buttons()
        self.install_status.setText({"install": "Installing", "upgrade": "Upgrading", "uninstall": "Removing"}
                                    [plan.action] + f" {plan.package} {plan.version} ...")

        def job() -> None:
            try:
                report = installer.apply(plan, runner=runner, log=bridge.logged.emit)
            except BaseException as exc:  # noqa: BLE001 - shown in the panel
                bridge.failed.emit(_message(exc))
            else:
                bridge.applied.emit(report)

        threading.Thread(target=job, name="medgen-plugins", daemon=True).start()

    def _on_applied(self, report: dict[str, Any]) -> None:
        plan = report["plan"]
        package = installer.normalize(plan["package"])
        reg = get_registry()
        reg.reload()
        self.refresh()
        registry_events.reloaded.emit()
        mine = [e for e in reg.families() if installer.normalize(e.package) == package]
        errors = [e for e in reg.errors if installer.normalize(e.package) == package]
        done = {"install": "Installed", "upgrade": "Upgraded", "uninstall": "Removed"}[plan["action"]]
        text = f"{done} {html.escape(plan['package'])} {html.escape(plan['version'])}."
        if plan["action"] == "uninstall":
            text += " Its families left the docks."
        elif mine:
            text += " Now in the docks: " + ", ".join(
                f"{html.escape(e.family.display_name)} ({html.escape(e.task.title)})" for e in mine) + "."
            self.select_family(mine[0].id)
        for err in errors:
            text += f"<br><span style='color:#e55'>Load error: {html.escape(err.message)}</span>"
        for message in report.get("messages", []):
            text += f"<br><span style='color:#e0a030'>{html.escape(message)}</span>"
        self._set_busy(False)
        self.install_status.setText(text)
        self._append_log(f"{done} {plan['package']} {plan['version']}.")

    def _on_failed(self, message: str) -> None:
        self._set_busy(False)
        self._show_error(message)
        self._append_log(message)

    def _show_error(self, message: str) -> None:
        self.install_status.setText(f"<span style='color:#e55'>{html.escape(message)}</span>")
        try:
            from napari.utils.notifications import show_error

            show_error(f"MedGen: {message}")
        except Exception:  # pragma: no cover - notification is cosmetic
            pass

    def _append_log(self, line: str) -> None:
        self.log_view.appendPlainText(line)


def _message(exc: BaseException) -> str:
    if isinstance(exc, Cancelled):
        return "Cancelled: nothing changed."
    if isinstance(exc, MedGenError):
        return str(exc)
    log.error("MedGen plugin installer failed", exc_info=exc)
    return f"internal error: {type(exc).__name__}: {exc}"

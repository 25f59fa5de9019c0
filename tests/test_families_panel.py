"""The Model families panel: the install flow with pip replaced by a fake (confirm, cancel, log,
reload), the family details, the reload feedback and the example families switch."""

from __future__ import annotations

import threading

import pytest
from conftest import open_dock, project_registry
from pip_fakes import FakePip, make_wheel

from napari_medgen import installer
from napari_medgen import registry as reg_mod


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def _with_echo():
    import fake_plugins.echo

    reg_mod.set_registry(project_registry(extra=[("fake-echo", fake_plugins.echo)]))


def _panel_with(viewer, fake):
    panel = open_dock(viewer, "Model families")
    panel.runner_factory = lambda: fake
    return panel


def test_install_shows_the_plan_installs_after_confirmation_and_the_docks_gain_the_family(viewer, qtbot, tmp_path):
    wheel = make_wheel(tmp_path, "fake-echo", "1.2.3", {"fake-echo": "fake_plugins.echo"})
    fake = FakePip(wheel, on_install=_with_echo)
    harmonize = open_dock(viewer, "Harmonize")
    panel = _panel_with(viewer, fake)
    shown = []
    panel.confirm = lambda plan: shown.append(plan.summary()) or True
    panel.source_edit.setText("fake-echo")
    panel.install()
    assert not panel.busy_bar.isHidden() and not panel.install_button.isEnabled()  # busy, not blocking
    qtbot.waitUntil(lambda: not panel._busy, timeout=10000)
    assert fake.steps() == ["wheel", "dry-run", "install"]
    assert "install fake-echo 1.2.3" in shown[0] and "runs code on this computer" in shown[0]
    status = panel.install_status.text()
    assert "Installed fake-echo 1.2.3" in status and "Echo (Harmonize)" in status
    assert "fake.echo" in [e.id for e in harmonize._entries]  # in the dock, no restart
    log = panel.log_view.toPlainText()
    assert "$ pip wheel" in log and "Would install fake-echo-1.2.3" in log
    assert "Echo" in panel.details.toPlainText() and "factor" in panel.details.toPlainText()  # the new family is selected


def test_install_not_confirmed_changes_nothing(viewer, qtbot, tmp_path):
    wheel = make_wheel(tmp_path, "fake-echo", "1.2.3", {"fake-echo": "fake_plugins.echo"})
    fake = FakePip(wheel, on_install=_with_echo)
    panel = _panel_with(viewer, fake)
    panel.confirm = lambda plan: False
    panel.source_edit.setText("fake-echo")
    panel.install()
    qtbot.waitUntil(lambda: not panel._busy, timeout=10000)
    assert fake.steps() == ["wheel", "dry-run"]
    assert panel.install_status.text() == "Nothing changed."
    assert panel.install_button.isEnabled()


def test_cancel_stops_pip_while_the_package_is_read(viewer, qtbot, tmp_path):
    wheel = make_wheel(tmp_path, "fake-echo", "1.2.3", {"fake-echo": "fake_plugins.echo"})
    fake = FakePip(wheel, block=threading.Event())
    panel = _panel_with(viewer, fake)
    panel.source_edit.setText("fake-echo")
    panel.install()
    assert panel.cancel_button.isEnabled() and not panel.install_button.isEnabled()
    qtbot.waitUntil(lambda: bool(fake.calls), timeout=5000)
    panel.cancel()
    qtbot.waitUntil(lambda: not panel._busy, timeout=2000)  # within a second or two
    assert "Cancelled: nothing changed" in panel.install_status.text()
    assert fake.steps() == ["wheel"]


def test_a_refused_package_is_a_clear_message_and_nothing_is_installed(viewer, qtbot, tmp_path):
    wheel = make_wheel(tmp_path, "not-a-family", "1.0", entry_points=None)
    fake = FakePip(wheel)
    panel = _panel_with(viewer, fake)
    panel.confirm = lambda plan: pytest.fail("a refused package must not reach the confirmation")
    panel.source_edit.setText("not-a-family")
    panel.install()
    qtbot.waitUntil(lambda: not panel._busy, timeout=10000)
    assert "provides no napari-medgen model family" in panel.install_status.text()
    assert fake.steps() == ["wheel"]
    panel.source_edit.setText("")
    panel.install()
    assert "type a package name" in panel.install_status.text()


def test_uninstall_removes_the_family_from_the_docks(viewer, qtbot, monkeypatch):
    _with_echo()
    harmonize = open_dock(viewer, "Harmonize")
    assert "fake.echo" in [e.id for e in harmonize._entries]
    fake = FakePip(on_install=lambda: reg_mod.set_registry(project_registry()))
    panel = _panel_with(viewer, fake)
    plan = installer.Plan("uninstall", "fake-echo", "1.2.3", [installer.Change("fake-echo", "", "1.2.3", "remove")],
                          ["fake-echo = fake_plugins.echo"], ["uninstall", "--yes", "fake-echo"])
    monkeypatch.setattr(installer, "prepare_uninstall", lambda name: plan)
    panel.confirm = lambda p: True
    panel.select_family("fake.echo")
    assert panel.selected_package() == "fake-echo" and panel.uninstall_button.isEnabled()
    panel.uninstall()
    qtbot.waitUntil(lambda: not panel._busy, timeout=10000)
    assert "Removed fake-echo" in panel.install_status.text()
    assert "fake.echo" not in [e.id for e in harmonize._entries]
    panel.select_family("medgen.selfsr")  # the project's own packages are never removed from here
    assert not panel.uninstall_button.isEnabled() and not panel.upgrade_button.isEnabled()


def test_rows_speak_in_words_and_a_selected_family_shows_its_parameters(viewer):
    panel = open_dock(viewer, "Model families")
    rows = {r[0]: r for r in panel.rows()}
    sr = next(r for name, r in rows.items() if r[1] == "Super-resolution" and "GPU recommended" in r[3])
    assert sr[0] != "medgen.selfsr"  # a display name, not the id
    panel.select_family("medgen.selfsr")
    details = panel.details.toPlainText()
    assert "medgen.selfsr" in details and "Parameters" in details and "slice_thickness" in details
    assert "example" in rows["Z-score to reference"][3]


def test_reload_says_what_changed(viewer):
    panel = open_dock(viewer, "Model families")
    panel.reload()
    assert "nothing changed" in panel.reload_note.text()
    import fake_plugins.echo

    reg_mod.get_registry().extra_plugins.append(("fake-echo", fake_plugins.echo))  # as if pip-installed
    panel.reload()
    assert "new: fake.echo, fake.explodes" in panel.reload_note.text()


def test_example_families_are_offered_in_the_docks_only_when_asked(viewer, monkeypatch):
    monkeypatch.delenv("MEDGEN_SHOW_EXAMPLES", raising=False)
    harmonize = open_dock(viewer, "Harmonize")
    panel = open_dock(viewer, "Model families")
    assert "template.zscore" not in [e.id for e in harmonize._entries]
    panel.set_show_examples(True)
    assert "template.zscore" in [e.id for e in harmonize._entries]
    panel.set_show_examples(False)
    assert "template.zscore" not in [e.id for e in harmonize._entries]


def test_a_family_module_that_breaks_after_install_is_shown_as_a_load_error(viewer, qtbot, tmp_path):
    import fake_plugins.hook_raises

    wheel = make_wheel(tmp_path, "fake-broken", "0.3", {"fake-broken": "fake_plugins.hook_raises"})

    def installed():
        reg_mod.set_registry(project_registry(extra=[("fake-broken", fake_plugins.hook_raises)]))

    fake = FakePip(wheel, on_install=installed)
    harmonize = open_dock(viewer, "Harmonize")
    panel = _panel_with(viewer, fake)
    panel.confirm = lambda plan: True
    panel.source_edit.setText("fake-broken")
    panel.install()
    qtbot.waitUntil(lambda: not panel._busy, timeout=10000)
    status = panel.install_status.text()
    assert "Installed fake-broken 0.3" in status and "Load error" in status and "raised while registering" in status
    assert "1 plugin problem" in panel.errors_label.text()
    assert harmonize.entry is not None  # the other families still load and run

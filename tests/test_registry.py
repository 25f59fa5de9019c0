"""Discovery, validation and isolation of plugins (the pluggy contract)."""

from __future__ import annotations

import textwrap

import pytest

from napari_medgen.errors import PluginError
from napari_medgen.family import Task
from napari_medgen.registry import Registry, validate_family


def _fake(name):
    import importlib

    return importlib.import_module(f"fake_plugins.{name}")


def test_project_plugins_register_all_four_tasks(registry):
    tasks = {e.task for e in registry.families()}
    assert tasks == set(Task)
    assert registry.errors == []
    entry = registry.get("classic.cubic")
    assert entry.package == "medgen-classic"
    assert entry.package_version == "0.1.0"


def test_default_family_per_task(registry):
    for task in Task:
        assert registry.default(task).task == task


def test_unknown_family_names_the_available_ones(registry):
    with pytest.raises(PluginError, match="unknown family 'nope'.*classic.cubic"):
        registry.get("nope", Task.SUPERRES)
    with pytest.raises(PluginError, match="is a superres family, not a lesion family"):
        registry.get("classic.cubic", Task.LESION)


def test_malformed_families_rejected_others_kept():
    reg = Registry(entry_points=False, plugins=[("malformed", _fake("malformed"))])
    assert [e.id for e in reg.families()] == ["fake.fine"]
    messages = " | ".join(e.message for e in reg.errors)
    assert "invalid id" in messages
    assert "expected a ModelFamily instance" in messages


def test_duplicate_id_rejected_naming_both_packages():
    reg = Registry(entry_points=False, plugins=[("echo", _fake("echo")), ("duplicate", _fake("duplicate"))])
    assert "fake.echo" in reg
    assert len(reg.errors) == 1
    assert "already registered" in reg.errors[0].message
    assert "duplicate" in reg.errors[0].message and "echo" in reg.errors[0].message


def test_hook_that_raises_and_typo_hook_are_isolated():
    reg = Registry(
        entry_points=False,
        plugins=[("raises", _fake("hook_raises")), ("typo", _fake("typo_hook")), ("echo", _fake("echo"))],
    )
    assert {"fake.echo", "fake.explodes"} <= {e.id for e in reg.families()}
    stages = {e.plugin: e.stage for e in reg.errors}
    assert stages == {"raises": "register", "typo": "hooks"}
    assert "hook exploded" in next(e.message for e in reg.errors if e.plugin == "raises")


def test_validate_family_reports_missing_run():
    from napari_medgen import ModelFamily

    class NoRun(ModelFamily):
        id = "x.y"
        display_name = "x"
        version = "1"

    assert "run() is not implemented" in validate_family(NoRun())


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """An installed distribution (dist-info on sys.path) with a good and a broken entry point."""
    dist = tmp_path / "medgen_fake_plugins-9.9.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: medgen-fake-plugins\nVersion: 9.9\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [napari_medgen]
            fake_echo = fake_plugins.echo
            fake_broken = fake_plugins.raises_on_import
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return dist


def test_entry_point_discovery_isolates_a_plugin_that_raises_on_import(fake_distribution):
    reg = Registry()  # real discovery: the project's entry points plus the fake distribution
    ids = {e.id for e in reg.families()}
    assert {"fake.echo", "classic.cubic", "template.zscore"} <= ids
    assert reg.get("fake.echo").package == "medgen-fake-plugins"
    broken = [e for e in reg.errors if e.plugin == "fake_broken"]
    assert len(broken) == 1 and broken[0].stage == "import"
    assert "broken on purpose" in broken[0].message
    assert broken[0].package == "medgen-fake-plugins"


def test_env_allowlist_and_blocklist(fake_distribution, monkeypatch):
    monkeypatch.setenv("MEDGEN_DISABLE_PLUGINS", "fake_broken,template")
    reg = Registry()
    assert not [e for e in reg.errors if e.plugin == "fake_broken"]
    assert "template.zscore" not in reg
    assert set(reg.skipped) == {"fake_broken", "template"}
    monkeypatch.delenv("MEDGEN_DISABLE_PLUGINS")
    monkeypatch.setenv("MEDGEN_PLUGINS", "medgen-fake-plugins")
    reg = Registry()
    plugins = set(reg.plugins)
    assert plugins == {"builtin", "fake_echo"}  # builtin always loads; the broken one errors
    assert "classic.cubic" not in reg


def test_reload_picks_up_a_newly_installed_plugin(tmp_path, monkeypatch):
    reg = Registry()
    assert "fake.echo" not in reg
    dist = tmp_path / "medgen_late-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: medgen-late\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[napari_medgen]\nlate = fake_plugins.echo\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg.reload()
    assert "fake.echo" in reg

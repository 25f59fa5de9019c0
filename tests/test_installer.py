"""The family-package installer with pip replaced by a fake: what is refused, what a plan shows."""

from __future__ import annotations

import importlib.metadata as im

import pytest
from pip_fakes import FakePip, make_wheel

from napari_medgen import cli, installer
from napari_medgen.installer import InstallError, Source


def test_constraints_pin_the_protected_distributions_at_their_installed_versions():
    text = installer.constraints()
    for name in ("napari", "napari-medgen", "torch", "numpy", "QtPy"):
        assert f"{name}=={im.version(name)}" in text
    assert f"PyQt6=={im.version('PyQt6')}" in text  # the Qt binding in use


def test_a_plan_lists_every_change_and_the_trust_note(tmp_path):
    wheel = make_wheel(tmp_path / "src", "medgen-edge", "1.2.0", {"edge": "medgen_edge"})
    fake = FakePip(wheel, report=[("medgen-edge", "1.2.0"), ("pluggy", "99.0")])
    plan = installer.prepare_install(Source("medgen-edge"), runner=fake)
    try:
        assert fake.steps() == ["wheel", "dry-run"]  # nothing installed before apply()
        assert [c.line() for c in plan.changes] == [
            "install medgen-edge 1.2.0", f"upgrade pluggy {im.version('pluggy')} -> 99.0"]
        assert plan.entry_points == ["edge = medgen_edge"]
        summary = plan.summary()
        assert "install medgen-edge 1.2.0" in summary and "runs code on this computer" in summary
        dry = fake.calls[1]
        constraints = dry[dry.index("--constraint") + 1]
        assert f"numpy=={im.version('numpy')}" in open(constraints).read()
        assert dry[-1].endswith(wheel.name)  # the wheel that was read is the one installed
    finally:
        plan.cleanup()
    assert not (tmp_path / plan.workdir).exists() or not plan.workdir


def test_a_package_without_a_family_entry_point_is_refused_before_install(tmp_path):
    wheel = make_wheel(tmp_path, "requests-ish", "2.0", entry_points=None)
    fake = FakePip(wheel)
    with pytest.raises(InstallError, match="provides no napari-medgen model family.*not installed"):
        installer.prepare_install(Source("requests-ish"), runner=fake)
    assert fake.steps() == ["wheel"]


def test_a_wheel_for_another_python_is_refused_with_what_it_needs(tmp_path):
    wheel = make_wheel(tmp_path, "medgen-old", "1.0", {"old": "medgen_old"}, tag="cp27-cp27mu-manylinux1_x86_64")
    fake = FakePip(wheel)
    with pytest.raises(InstallError, match=r"built for cp27.*this napari runs Python 3\.\d+"):
        installer.prepare_install(Source(str(wheel)), runner=fake)
    assert fake.calls == []  # refused before pip ran


def test_a_resolution_that_changes_a_pinned_distribution_is_refused_with_pips_reason(tmp_path):
    wheel = make_wheel(tmp_path, "medgen-pin", "1.0", {"pin": "medgen_pin"}, requires=["numpy<2"])
    conflict = ("ERROR: Cannot install medgen-pin==1.0 because these package versions have conflicting "
                "dependencies.\n\nThe conflict is caused by:\n    medgen-pin 1.0 depends on numpy<2\n"
                f"    The user requested (constraint) numpy=={im.version('numpy')}\n\nTo fix this ...\n")
    fake = FakePip(wheel, fail={"dry-run": conflict})
    with pytest.raises(InstallError, match=r"another version of numpy.*depends on numpy<2"):
        installer.prepare_install(Source("medgen-pin"), runner=fake)
    # and a report that would change one anyway is refused too (the constraints are not trusted alone)
    fake = FakePip(wheel, report=[("medgen-pin", "1.0"), ("torch", "1.0")])
    with pytest.raises(InstallError, match="would change downgrade torch"):
        installer.prepare_install(Source("medgen-pin"), runner=fake)


def test_a_package_that_does_not_exist_says_where_it_was_looked_for(tmp_path):
    fake = FakePip(fail={"wheel": "ERROR: Could not find a version that satisfies the requirement nope-zz "
                                  "(from versions: none)\nERROR: No matching distribution found for nope-zz"})
    with pytest.raises(InstallError, match="no package nope-zz in the wheel folder"):
        installer.prepare_install(Source("nope-zz", find_links=str(tmp_path), offline=True), runner=fake)


@pytest.mark.parametrize("spec, message", [
    ("", "nothing given to install"),
    ("a b c", "not a package name"),
    ("/no/such/folder/", "does not exist"),
])
def test_bad_sources_are_refused_before_pip_runs(spec, message):
    fake = FakePip()
    with pytest.raises(InstallError, match=message):
        installer.prepare_install(Source(spec), runner=fake)
    assert fake.calls == []


def test_the_project_and_protected_packages_are_never_installed_upgraded_or_removed(tmp_path):
    with pytest.raises(InstallError, match="part of napari-medgen itself"):
        installer.prepare_uninstall("napari-medgen")
    with pytest.raises(InstallError, match="part of napari-medgen itself"):
        installer.prepare_uninstall("medgen_classic")
    with pytest.raises(InstallError, match="provides no model family"):
        installer.prepare_uninstall("numpy")
    with pytest.raises(InstallError, match="not installed"):
        installer.prepare_uninstall("medgen-not-here")
    wheel = make_wheel(tmp_path, "torch", "9.0", {"x": "torch"})
    with pytest.raises(InstallError, match="not installed or upgraded from here"):
        installer.prepare_install(Source("torch"), runner=FakePip(wheel))


def test_no_write_permission_and_no_pip_are_clear_messages(monkeypatch):
    monkeypatch.setattr(installer.os, "access", lambda path, mode: False)
    with pytest.raises(InstallError, match="no write permission to .*virtual environment you own"):
        installer.prepare_install(Source("medgen-edge"), runner=FakePip())
    monkeypatch.undo()
    monkeypatch.setattr(installer.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InstallError, match="pip is not available in this Python.*ensurepip"):
        installer.prepare_install(Source("medgen-edge"), runner=FakePip())


def test_apply_runs_the_confirmed_plan_and_reports_a_failure(tmp_path):
    wheel = make_wheel(tmp_path, "medgen-edge", "1.0", {"edge": "medgen_edge"})
    fake = FakePip(wheel, fail={"install": "ERROR: Could not install packages due to an OSError: [Errno 13] "
                                           "Permission denied: '/usr/lib/python3/site-packages/x'"})
    plan = installer.prepare_install(Source("medgen-edge"), runner=fake)
    with pytest.raises(InstallError, match="no write permission"):
        installer.apply(plan, runner=fake)
    assert fake.steps() == ["wheel", "dry-run", "install"]
    assert "--dry-run" not in fake.calls[-1] and "--constraint" in fake.calls[-1]


def test_cli_install_without_a_terminal_or_yes_changes_nothing(tmp_path, monkeypatch, capsys):
    wheel = make_wheel(tmp_path, "medgen-edge", "1.0", {"edge": "medgen_edge"})
    fake = FakePip(wheel)
    monkeypatch.setattr(installer, "PipRunner", lambda: fake)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    code = cli.main(["plugins", "install", "medgen-edge"])
    err = capsys.readouterr()
    assert code == 2 and "confirm with --yes" in err.err
    assert "install medgen-edge 1.0" in err.out  # the plan was shown
    assert fake.steps() == ["wheel", "dry-run"]
    code = cli.main(["plugins", "install", "medgen-edge", "--dry-run"])
    assert code == 0 and fake.steps()[-1] == "dry-run"


def test_cli_plugins_list_json_names_the_families_of_each_package(capsys):
    import json

    assert cli.main(["plugins", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert "medgen.selfsr" in rows["napari-medgen"]["families"]
    assert rows["napari-medgen"]["removable"] is False


def test_an_upgrade_of_a_module_already_loaded_says_restart(monkeypatch):
    plan = installer.Plan("upgrade", "medgen-edge", "2.0", [installer.Change("medgen-edge", "2.0", "1.0", "upgrade")],
                          ["edge = medgen_edge"], [])
    monkeypatch.setattr(installer, "_top_level", lambda name, wheel=None: {"json"})  # imported in this process
    report = installer.after_change(plan)
    assert report["restart_needed"] and "restart napari" in report["messages"][0]
    monkeypatch.setattr(installer, "_top_level", lambda name, wheel=None: {"medgen_not_imported_zz"})
    assert not installer.after_change(plan)["restart_needed"]  # a new module: the reload is enough

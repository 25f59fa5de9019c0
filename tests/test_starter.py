"""The starter for family authors (`medgen plugins new`): the package it writes installs, tests and runs."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from napari_medgen import starter
from napari_medgen.errors import InputError, OutputError
from napari_medgen.family import Inputs, Task
from napari_medgen.io.nifti import write_nifti
from napari_medgen.io.phantom import make_phantom
from napari_medgen.registry import Registry
from napari_medgen.runner import run_family
from napari_medgen.starter import SUPPORTED_TASKS, StarterResult, new_plugin, plugin_names

#: the outputs (name, kind) each task's family returns
OUTPUTS = {
    "anomaly": [("heatmap", "heatmap")],
    "harmonize": [("image", "image")],
    "superres": [("image", "image")],
    "lesion": [("image", "image"), ("mask", "labels")],
}


@pytest.fixture
def load(monkeypatch):
    """Import a generated package from its folder (not installed); it is forgotten after the test."""
    names = []

    def _load(made: StarterResult):
        monkeypatch.syspath_prepend(str(made.folder))
        sys.modules.pop(made.import_name, None)
        names.append(made.import_name)
        return importlib.import_module(made.import_name)

    yield _load
    for name in names:
        sys.modules.pop(name, None)


def read_toml(path):
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads(path.read_text())


def task_inputs(task: str) -> Inputs:
    if task == "superres":
        image, _ = make_phantom((8, 24, 24), spacing=(3.0, 1.0, 1.0), seed=1, name="thick")
        return Inputs(image)
    image, _ = make_phantom((16, 24, 24), seed=1, name="scan")
    if task == "harmonize":
        ref, _ = make_phantom((16, 24, 24), seed=2, name="ref")
        return Inputs(image, references=[ref.with_data(ref.data * 3.0 + 10.0)])
    return Inputs(image)


def test_every_task_has_a_starter():
    assert set(SUPPORTED_TASKS) == {t.value for t in Task}


@pytest.mark.parametrize("task", SUPPORTED_TASKS)
def test_writes_a_complete_package(tmp_path, task):
    made = new_plugin(f"Starter {task.title()} Check", tmp_path / "plug", task=task)
    dist, mod = f"starter-{task}-check", f"starter_{task}_check"
    assert (made.distribution, made.import_name, made.entry_point) == (dist, mod, dist)
    assert made.family_id.startswith(f"{mod}.") and made.task == task
    assert made.folder == tmp_path / "plug"
    rel = sorted(str(p.relative_to(made.folder)) for p in made.files)
    expected = ["pyproject.toml", "README.md", ".gitignore", f"{mod}/__init__.py", f"tests/test_{mod}.py"]
    assert rel == sorted(expected)
    written = sorted(str(p.relative_to(made.folder)) for p in made.folder.rglob("*") if p.is_file())
    assert written == rel  # nothing else (no temporary) in the folder
    assert [p.name for p in tmp_path.iterdir()] == ["plug"]  # and nothing beside it

    meta = read_toml(made.folder / "pyproject.toml")
    project = meta["project"]
    assert project["name"] == dist and project["version"] == "0.1.0"
    assert project["requires-python"] == ">=3.10" and project["description"]
    assert meta["build-system"]["build-backend"] == "hatchling.build"
    assert project["entry-points"]["napari_medgen"] == {dist: mod}
    assert meta["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == [mod]
    assert project["optional-dependencies"]["test"] == ["pytest"]
    code = (made.folder / mod / "__init__.py").read_text()
    assert project["dependencies"][:2] == ["napari-medgen", "numpy>=1.24"]
    assert ("scipy>=1.10" in project["dependencies"]) == ("from scipy" in code)
    assert "`medgen plugins new`" in code and "medgen-template" in code
    compile(code, "__init__.py", "exec")
    compile((made.folder / "tests" / f"test_{mod}.py").read_text(), "test.py", "exec")

    readme = (made.folder / "README.md").read_text()
    for text in ("medgen plugins install ./plug", "medgen families", f"medgen run {task}",
                 f"--family {made.family_id}", "python -m pytest", f"{mod}/__init__.py"):
        assert text in readme, text
    assert "__pycache__/" in (made.folder / ".gitignore").read_text()
    for path in made.files:
        assert "{{" not in path.read_text(), path


@pytest.mark.slow
@pytest.mark.parametrize("task", SUPPORTED_TASKS)
def test_generated_tests_pass(tmp_path, task):
    made = new_plugin(f"starter-{task}-tests", tmp_path / f"starter-{task}-tests", task=task)
    path = os.pathsep.join(filter(None, [str(made.folder), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(made.folder / "tests")],
        cwd=made.folder, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


@pytest.mark.parametrize("task", SUPPORTED_TASKS)
def test_generated_family_registers_and_runs(tmp_path, load, task):
    made = new_plugin(f"starter-{task}-run", tmp_path / "plug", task=task)
    module = load(made)
    registry = Registry(entry_points=False, plugins=[(made.entry_point, module)])
    assert not registry.errors, [e.message for e in registry.errors]
    entry = registry.get(made.family_id, task)
    family = entry.family
    assert not family.id.startswith("medgen.")
    assert family.display_name and family.description and family.version == "0.1.0"

    # exactly two typed parameters: a float with a unit and a range, and an int, bool or choice
    assert len(family.params) == 2
    number, other = family.params
    assert number.kind == "float" and number.unit
    assert number.minimum is not None and number.maximum is not None
    assert number.minimum <= number.default <= number.maximum
    assert other.kind in ("int", "bool", "choice")

    inputs = task_inputs(task)
    before = np.array(inputs.image.data, copy=True)
    events = []
    result = run_family(family, inputs, device="cpu", seed=0, progress=lambda *a: events.append(a))
    assert events, "the family reports progress"
    assert [(o.name, o.kind) for o in result.outputs] == OUTPUTS[task]
    np.testing.assert_array_equal(inputs.image.data, before)
    for out in result.outputs:
        assert np.all(np.isfinite(out.volume.data))
        if task == "superres":
            np.testing.assert_allclose(out.volume.spacing, (1.0, 1.0, 1.0))
            assert out.volume.shape == (24, 24, 24)
        else:
            assert out.volume.shape == inputs.image.shape
            np.testing.assert_allclose(out.volume.affine, inputs.image.affine)
    if task == "anomaly":
        assert float(result.info["threshold"]) > 0
    if task == "harmonize":
        assert family.input_spec("references").required
        with pytest.raises(InputError):
            run_family(family, Inputs(inputs.image), device="cpu")
    if task == "lesion":
        assert len(result.info["lesions"]) == family.defaults()["n_lesions"]
        assert result.outputs[1].volume.data.max() == family.defaults()["n_lesions"]


@pytest.mark.parametrize("task", SUPPORTED_TASKS)
def test_generated_family_runs_from_the_cli(tmp_path, load, capsys, task):
    """Beside the project's own families (no id clash), through `medgen run` as its README says."""
    from conftest import project_registry

    from napari_medgen import registry as reg_mod
    from napari_medgen.cli import main

    made = new_plugin(f"starter-{task}-cli", tmp_path / "plug", task=task)
    module = load(made)
    reg = project_registry(extra=[(made.entry_point, module)])
    assert not reg.errors, [e.message for e in reg.errors]
    reg_mod.set_registry(reg)

    inputs = task_inputs(task)
    scan = tmp_path / "scan.nii.gz"
    write_nifti(inputs.image, scan)
    argv = ["run", task, str(scan), "-o", str(tmp_path / "out.nii.gz"), "--family", made.family_id, "--quiet"]
    if task == "harmonize":
        write_nifti(inputs.references[0], tmp_path / "ref.nii.gz")
        argv += ["--reference", str(tmp_path / "ref.nii.gz")]
    if task == "lesion":
        argv += ["--count", "3"]
    code = main(argv)
    assert code == 0, capsys.readouterr().err
    out = nib.load(tmp_path / "out.nii.gz")
    if task == "superres":
        np.testing.assert_allclose(out.header.get_zooms()[:3], (1.0, 1.0, 1.0), atol=1e-5)
    else:
        assert out.shape == nib.load(scan).shape
    if task == "lesion":
        mask = np.asarray(nib.load(tmp_path / "out_mask.nii.gz").dataobj)
        assert mask.max() == 3


# -- names ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "dist", "module"),
    [
        ("medgen-edge", "medgen-edge", "medgen_edge"),
        ("My Edge Map", "my-edge-map", "my_edge_map"),
        ("  edge__map.v2 ", "edge-map-v2", "edge_map_v2"),
        ("medgen.x", "medgen-x", "medgen_x"),  # the id is "medgen_x.<name>": not the reserved "medgen."
        ("Napari_Medgen_X", "napari-medgen-x", "napari_medgen_x"),
    ],
)
def test_names_are_normalised(name, dist, module):
    assert plugin_names(name) == (dist, module)


def test_a_medgen_prefixed_name_registers(tmp_path, load):
    made = new_plugin("medgen.x", tmp_path / "x")
    assert made.family_id == "medgen_x.residual"
    registry = Registry(entry_points=False, plugins=[(made.entry_point, load(made))])
    assert not registry.errors and made.family_id in registry


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("---", "no letter or digit"),
        ("1abc", "starts with a digit"),
        ("class", "keyword"),
        ("café", "non-ASCII"),
        ("napari-medgen", "napari-medgen already uses"),
        ("medgen_classic", "napari-medgen already uses"),
        ("medgen-template", "napari-medgen already uses"),
        ("medgen", "napari-medgen already uses"),  # its family id would start with "medgen."
        ("tests", "napari-medgen already uses"),
        ("os", "standard library"),
        ("json", "standard library"),
        ("numpy", "installed distribution 'numpy'"),
        ("classic", "already the name of a napari-medgen plugin"),
        ("builtin", "already the name of a napari-medgen plugin"),
        ("x" * 81, "at most 80"),
    ],
)
def test_bad_names_are_refused_before_anything_is_written(tmp_path, name, says):
    with pytest.raises(InputError, match=says):
        new_plugin(name, tmp_path / "plug")
    assert list(tmp_path.iterdir()) == []


def test_unknown_task_is_refused(tmp_path):
    with pytest.raises(InputError, match="superres, anomaly, harmonize, lesion"):
        new_plugin("medgen-edge", tmp_path / "plug", task="segmentation")
    assert list(tmp_path.iterdir()) == []
    assert new_plugin("medgen-edge", tmp_path / "plug", task=Task.HARMONIZE).task == "harmonize"


# -- folders ----------------------------------------------------------------------------------
def test_default_folder_is_the_distribution_name_in_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    made = new_plugin("My Edge Map")
    assert made.folder == tmp_path / "my-edge-map"
    assert (tmp_path / "my-edge-map" / "my_edge_map" / "__init__.py").is_file()
    assert made.next_steps[0] == f"medgen plugins install {made.folder}"


def test_missing_parent_folders_are_created(tmp_path):
    made = new_plugin("medgen-edge", tmp_path / "a" / "b" / "plug")
    assert (made.folder / "pyproject.toml").is_file()


def test_an_empty_folder_is_used(tmp_path):
    (tmp_path / "plug").mkdir()
    made = new_plugin("medgen-edge", tmp_path / "plug")
    assert (made.folder / "README.md").is_file()


def test_a_link_to_an_empty_folder_stays_a_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    made = new_plugin("medgen-edge", tmp_path / "link")
    assert (tmp_path / "link").is_symlink()
    assert made.folder == tmp_path / "real" and (tmp_path / "real" / "pyproject.toml").is_file()


def test_a_file_is_not_a_folder(tmp_path):
    (tmp_path / "plug").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        new_plugin("medgen-edge", tmp_path / "plug")
    assert (tmp_path / "plug").read_text() == "x"


def test_a_folder_that_is_not_empty_is_refused_unless_overwrite(tmp_path):
    folder = tmp_path / "plug"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "README.md").write_text("old readme")
    with pytest.raises(InputError, match="not empty.*--overwrite"):
        new_plugin("medgen-edge", folder)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "notes.txt"]
    assert (folder / "README.md").read_text() == "old readme"

    made = new_plugin("medgen-edge", folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "mine"  # other files stay
    assert "medgen-edge" in (folder / "README.md").read_text()  # the plugin's files are replaced
    assert all(p.is_file() for p in made.files)
    assert not [p for p in folder.rglob("*") if p.name.endswith(".medgen-partial")]
    again = new_plugin("medgen-edge", folder, task="lesion", overwrite=True)  # generated again, another task
    assert again.family_id == "medgen_edge.spheres"
    assert "SphericalLesions" in (folder / "medgen_edge" / "__init__.py").read_text()


def test_a_failed_rename_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "rename", fail)
        with pytest.raises(OutputError, match="no space left.*nothing was written"):
            new_plugin("medgen-edge", tmp_path / "a" / "plug")
    assert list(tmp_path.iterdir()) == []  # no temporary folder, and the parent made for it is gone


def test_a_failed_overwrite_restores_every_file(tmp_path, monkeypatch):
    folder = tmp_path / "plug"
    folder.mkdir()
    (folder / "pyproject.toml").write_text("old pyproject")
    (folder / "README.md").write_text("old readme")
    real_replace = os.replace
    calls = []

    def replace_failing_second(src, dst, **kwargs):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace_failing_second)
        with pytest.raises(OutputError):
            new_plugin("medgen-edge", folder, overwrite=True)
    assert len(calls) == 3  # the first file replaced, the second failed, the first restored
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "pyproject.toml"]
    assert (folder / "pyproject.toml").read_text() == "old pyproject"
    assert (folder / "README.md").read_text() == "old readme"


def test_render_refuses_an_unknown_placeholder():
    assert starter.render("a {{ x }} b {{y}}", {"x": "1", "y": "2"}) == "a 1 b 2"
    with pytest.raises(KeyError):
        starter.render("{{nope}}", {})

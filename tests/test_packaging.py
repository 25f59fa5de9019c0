"""The npe2 manifest is valid from the editable install and from a built wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_manifest_symlink_points_at_root_manifest():
    inner = ROOT / "napari_medgen" / "napari.yaml"
    assert inner.is_symlink() and inner.resolve() == (ROOT / "napari.yaml").resolve()


def test_npe2_validate_editable_install():
    proc = subprocess.run([str(BIN / "npe2"), "validate", "napari-medgen", "--imports"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in (proc.stdout + proc.stderr).lower()


@pytest.mark.slow
def test_npe2_validate_built_wheel(tmp_path):
    """Build the wheel, install it (no deps) on a path that shadows the editable install, validate it."""
    dist = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist),
                           str(ROOT)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "hatchling" in proc.stdout + proc.stderr:
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(ROOT)],
                              capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheel = next(dist.glob("napari_medgen-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "napari_medgen/napari.yaml" in names
        assert "napari_medgen/starter_files/pyproject.toml.tmpl" in names  # `medgen plugins new` works installed
        manifest = zf.read("napari_medgen/napari.yaml").decode()
    assert manifest == (ROOT / "napari.yaml").read_text()
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=str(target))
    code = (
        "import sys, importlib.metadata as m, napari_medgen, pathlib;"
        "p = pathlib.Path(napari_medgen.__file__).parent;"
        f"assert str(p).startswith({str(target)!r}), p;"
        "from npe2.cli import main; sys.argv=['npe2','validate','napari-medgen','--imports']; main()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (target / "napari_medgen" / "napari.yaml").is_symlink()

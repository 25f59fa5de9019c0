"""`medgen plugins` for real, in a fresh virtual environment that reuses this one's torch,
napari and napari-medgen through a `.pth` line (nothing big is reinstalled): a starter package
is made, installed from its folder, listed, run, shown in a dock, tested, removed; installed
again from a wheel folder offline; and a package that needs another numpy is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from pip_fakes import make_wheel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugins-e2e")
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    here = sysconfig.get_paths()["purelib"]  # the environment holding torch, napari and this project
    (site / "medgen_reuse.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    return root, python, site


def medgen(python, *args, cwd=None, check=True):
    env = dict(os.environ, PYTHONNOUSERSITE="1", MEDGEN_CACHE_DIR=str(Path(python).parents[2] / "cache"))
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(python), "-m", "napari_medgen", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, stdin=subprocess.DEVNULL, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"medgen {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def family_ids(python):
    return {row["id"]: row for row in json.loads(medgen(python, "families", "--json").stdout) if row.get("id")}


def test_a_new_plugin_installs_from_its_folder_runs_and_uninstalls(venv):
    from napari_medgen.io.nifti import write_nifti
    from napari_medgen.io.phantom import make_phantom

    root, python, site = venv
    folder = root / "medgen-e2e"
    made = medgen(python, "plugins", "new", "medgen-e2e", "--dir", str(folder))
    assert "family medgen_e2e." in made.stdout
    fid = next(w for w in made.stdout.split() if w.startswith("medgen_e2e."))
    fid = fid.rstrip(")")
    assert fid not in family_ids(python)

    out = medgen(python, "plugins", "install", str(folder), "--yes")
    assert "install medgen-e2e 0.1.0" in out.stdout and "installed medgen-e2e 0.1.0" in out.stdout
    assert (site / "medgen_e2e").is_dir()  # into the fresh environment, not the one it reuses
    row = family_ids(python)[fid]
    assert row["package"] == "medgen-e2e" and row["status"] == "ok"

    vol, _ = make_phantom((16, 24, 24), spacing=(1.0, 1.0, 1.0))
    scan = root / "scan.nii.gz"
    write_nifti(vol, scan)
    result = medgen(python, "run", "anomaly", str(scan), "-o", str(root / "map.nii.gz"), "--family", fid)
    assert (root / "map.nii.gz").exists(), result.stderr

    # in the dock (the viewer's family list), without anything else to do
    show = ("import napari; from napari_medgen.widgets import anomaly_widget; "
            "v = napari.Viewer(show=False); w = anomaly_widget(v); print([e.id for e in w._entries]); v.close()")
    env = dict(os.environ, PYTHONNOUSERSITE="1")
    env.pop("PYTHONPATH", None)
    docks = subprocess.run([str(python), "-c", show], capture_output=True, text=True, env=env, timeout=300)
    assert fid in docks.stdout, docks.stderr[-2000:]

    # its own test passes against the installed package
    tests = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder / "tests")],
                           capture_output=True, text=True, env=env, cwd=folder, timeout=300)
    assert tests.returncode == 0, tests.stdout[-3000:]

    gone = medgen(python, "plugins", "uninstall", "medgen-e2e", "--yes")
    assert "removed medgen-e2e 0.1.0" in gone.stdout
    assert fid not in family_ids(python)
    assert not (site / "medgen_e2e").exists()


def test_install_from_a_wheel_folder_offline_and_the_numpy_pin(venv):
    root, python, site = venv
    folder = root / "medgen-offline"
    medgen(python, "plugins", "new", "medgen-offline", "--dir", str(folder), "--task", "harmonize")
    wheels = root / "wheels"
    subprocess.run([str(python), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(folder)],
                   check=True, capture_output=True)
    offline = ("--find-links", str(wheels), "--offline", "--yes")
    out = medgen(python, "plugins", "install", "medgen-offline", *offline)
    assert "installed medgen-offline 0.1.0" in out.stdout
    assert any(r["package"] == "medgen-offline" for r in family_ids(python).values())
    up = medgen(python, "plugins", "upgrade", "medgen-offline", *offline, check=False)
    assert up.returncode == 2 and "already installed (the newest available)" in up.stderr
    pyproject = folder / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('version = "0.1.0"', 'version = "0.2.0"'))
    subprocess.run([str(python), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(folder)],
                   check=True, capture_output=True)
    up = medgen(python, "plugins", "upgrade", "medgen-offline", *offline)
    assert "upgrade medgen-offline 0.1.0 -> 0.2.0" in up.stdout and "upgraded medgen-offline 0.2.0" in up.stdout
    assert {r["package_version"] for r in family_ids(python).values() if r["package"] == "medgen-offline"} == {"0.2.0"}
    medgen(python, "plugins", "uninstall", "medgen-offline", "--yes")

    numpy_before = subprocess.check_output([str(python), "-c", "import numpy; print(numpy.__version__)"], text=True)
    make_wheel(wheels, "medgen-pin", "1.0", {"pin": "medgen_pin"}, requires=[f"numpy!={np.__version__}"])
    refused = medgen(python, "plugins", "install", "medgen-pin", *offline, check=False)
    assert refused.returncode == 2
    assert "numpy" in refused.stderr and "keeps as installed" in refused.stderr
    assert not any(p.name.startswith("medgen_pin") for p in site.iterdir())
    numpy_after = subprocess.check_output([str(python), "-c", "import numpy; print(numpy.__version__)"], text=True)
    assert numpy_after == numpy_before

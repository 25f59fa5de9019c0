"""Shared fixtures. Plugins are not auto-discovered in tests unless a test asks for it:
the process-wide registry is built from the project's own plugin modules."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MEDGEN_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".pytest-medgen-cache"))


def project_registry(extra=()):
    import medgen_classic.plugin
    import medgen_template

    import napari_medgen.families
    from napari_medgen.registry import Registry

    plugins = [
        ("builtin", napari_medgen.families),
        ("classic", medgen_classic.plugin),
        ("template", medgen_template),
        *extra,
    ]
    return Registry(entry_points=False, plugins=plugins)


@pytest.fixture(autouse=True)
def _registry(monkeypatch):
    """A fresh registry of the project's plugins for every test."""
    from napari_medgen import registry as reg_mod

    monkeypatch.delenv("MEDGEN_PLUGINS", raising=False)
    monkeypatch.delenv("MEDGEN_DISABLE_PLUGINS", raising=False)
    reg = project_registry()
    reg_mod.set_registry(reg)
    yield reg
    reg_mod.set_registry(None)


@pytest.fixture(autouse=True)
def _config_dir(monkeypatch, tmp_path_factory):
    """User settings (the display convention) go to a fresh folder, never to ~/.config."""
    monkeypatch.setenv("MEDGEN_CONFIG_DIR", str(tmp_path_factory.mktemp("medgen-config")))
    monkeypatch.delenv("MEDGEN_DISPLAY_CONVENTION", raising=False)
    monkeypatch.delenv("MEDGEN_SHOW_EXAMPLES", raising=False)  # the docks hide example families by default


@pytest.fixture
def registry(_registry):
    return _registry


@pytest.fixture
def with_fake_plugins(monkeypatch):
    """The project's plugins plus the misbehaving ones from tests/fake_plugins."""
    import fake_plugins.echo

    from napari_medgen import registry as reg_mod

    reg = project_registry(extra=[("fake-echo", fake_plugins.echo)])
    reg_mod.set_registry(reg)
    return reg


def add_volume(viewer, volume, name=None):
    """Add a Volume to the viewer as an image layer, as the reader would (scale, translate, affine)."""
    from napari_medgen.io.napari_io import volume_to_layer_data

    data, kwargs, _ = volume_to_layer_data(volume, name=name or volume.name)
    return viewer.add_image(data, **kwargs)


def open_dock(viewer, name):
    """Open a MedGen dock through the manifest, as the Plugins menu does; returns its widget."""
    from napari_medgen.demo import PLUGIN

    return viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]


@pytest.fixture
def phantom():
    from napari_medgen.io.phantom import make_phantom

    vol, labels = make_phantom((24, 40, 40), spacing=(1.0, 1.0, 1.0))
    return vol, labels


@pytest.fixture
def thick_phantom():
    """A phantom acquired with 3 mm slices along axis 0."""
    from napari_medgen.io.phantom import make_phantom

    vol, _ = make_phantom((12, 40, 40), spacing=(3.0, 1.0, 1.0), name="thick")
    return vol


@pytest.fixture
def sync_workers(monkeypatch):
    from napari_medgen.widgets import task_widget

    monkeypatch.setattr(task_widget, "SYNCHRONOUS", True)
    return True


def assert_same(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

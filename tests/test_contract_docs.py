"""Meta-tests: every hook is documented in the README and exercised by a test (datasette's habit)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from napari_medgen.hookspecs import MedGenHookSpecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted(name for name, _ in inspect.getmembers(MedGenHookSpecs, inspect.isfunction) if name.startswith("medgen_"))


def test_there_are_hooks():
    assert HOOKS == ["medgen_register_families"]


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_are_documented(hook):
    readme = (ROOT / "README.md").read_text()
    assert re.search(rf"^#+ .*`{hook}\(", readme, re.M), f"README.md needs a heading documenting `{hook}(...)`"


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_have_tests(hook):
    here = Path(__file__).name
    users = [
        p.name
        for p in (ROOT / "tests").rglob("*.py")
        if p.name != here and hook in p.read_text()
    ]
    assert users, f"no test or test plugin implements {hook}"


def test_every_public_family_attribute_is_documented_for_plugin_authors():
    text = (ROOT / "plugins" / "medgen-template" / "README.md").read_text()
    for attr in ("id", "task", "display_name", "version", "description", "citation", "license",
                 "intended_use", "params", "inputs", "outputs", "wants_gpu", "trains", "deterministic",
                 "example", "run"):
        assert f"`{attr}`" in text, f"template README does not explain `{attr}`"

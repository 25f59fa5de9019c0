"""The shared run path: provenance, read-only inputs, failures reported, cancellation."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_medgen import Cancelled, FamilyError, Inputs, ParamError
from napari_medgen.runner import run_family


def test_provenance_recorded_and_input_untouched(with_fake_plugins, phantom):
    image = phantom[0]
    before = image.data.copy()
    entry = with_fake_plugins.get("fake.echo")
    result = run_family(entry.family, Inputs(image=image, references=[image]), {"factor": 2.0}, seed=7,
                        package=entry.package)
    np.testing.assert_array_equal(image.data, before)
    out = result.primary.volume
    np.testing.assert_allclose(out.data, 2 * before, rtol=1e-6)
    prov = out.metadata["medgen"]
    assert prov["family"] == "fake.echo" and prov["family_version"] == "1.2.3"
    assert prov["params"] == {"factor": 2.0} and prov["seed"] == 7
    assert prov["device"] == "cpu" and prov["input"] == image.name
    assert prov["elapsed_s"] >= 0


def test_family_that_raises_becomes_a_family_error(with_fake_plugins, phantom):
    fam = with_fake_plugins.get("fake.explodes").family
    with pytest.raises(FamilyError, match="fake.explodes.*ZeroDivisionError"):
        run_family(fam, Inputs(image=phantom[0], references=[phantom[0]]))


def test_family_cannot_modify_the_input(registry, phantom):
    from napari_medgen import ModelFamily, Output, Result, Task

    class Vandal(ModelFamily):
        id = "t.vandal"
        task = Task.ANOMALY
        display_name = "Vandal"
        version = "1"

        def run(self, inputs, params, ctx):
            inputs.image.data[...] = 0
            return Result([Output("x", inputs.image)])

    image = phantom[0]
    before = image.data.copy()
    with pytest.raises(FamilyError, match="read-only"):
        run_family(Vandal(), Inputs(image=image))
    np.testing.assert_array_equal(image.data, before)


def test_bad_param_and_cancel(registry, thick_phantom):
    fam = registry.get("classic.cubic").family
    with pytest.raises(ParamError, match="no parameter"):
        run_family(fam, Inputs(image=thick_phantom), {"bogus": 1})
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        run_family(fam, Inputs(image=thick_phantom), cancel_event=cancel)


def test_same_seed_same_result(registry, phantom):
    fam = registry.get("classic.procedural").family
    a = run_family(fam, Inputs(image=phantom[0]), {"n_lesions": 2}, seed=3)
    b = run_family(fam, Inputs(image=phantom[0]), {"n_lesions": 2}, seed=3)
    for oa, ob in zip(a.outputs, b.outputs):
        np.testing.assert_array_equal(oa.volume.data, ob.volume.data)

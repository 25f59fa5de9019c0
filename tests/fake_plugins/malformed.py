"""Registers things that are not valid families, plus one valid family."""
from napari_medgen import ModelFamily, Task, hookimpl


class NoId(ModelFamily):
    task = Task.ANOMALY
    display_name = "No id"
    version = "1"

    def run(self, inputs, params, ctx):  # pragma: no cover
        raise AssertionError


class Fine(ModelFamily):
    id = "fake.fine"
    task = Task.ANOMALY
    display_name = "Fine"
    version = "1"

    def run(self, inputs, params, ctx):  # pragma: no cover
        raise AssertionError


@hookimpl
def medgen_register_families(register):
    register(NoId())
    register("not a family")
    register(Fine())

"""Registers an id that fake_plugins.echo already registers."""
from napari_medgen import hookimpl

from .echo import Echo


@hookimpl
def medgen_register_families(register):
    register(Echo())

"""The pluggy hook specifications: the whole contract between napari-medgen and plugins.

A plugin is any module or object with functions decorated by :data:`hookimpl` and
exposed through an entry point in the group ``napari_medgen``::

    [project.entry-points.napari_medgen]
    my_plugin = "my_package.medgen_plugin"

The built-in families register through exactly the same hook.
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT_NAME = "napari_medgen"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Decorator for plugin implementations: ``@hookimpl def medgen_register_families(register)``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "hookspec", "hookimpl", "MedGenHookSpecs"]


class MedGenHookSpecs:
    """Hook specifications of napari-medgen."""

    @hookspec
    def medgen_register_families(self, register: Callable[[object], None]) -> None:
        """Register model families by calling ``register(family)`` once per family.

        ``family`` is a :class:`napari_medgen.family.ModelFamily` instance. A family
        that does not validate (missing id, unknown task, bad parameter declaration,
        duplicate id) is rejected with a recorded error; the plugin's other families
        and all other plugins still load.
        """

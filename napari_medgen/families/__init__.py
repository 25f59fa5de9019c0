"""Built-in model families, registered through the same hook a third-party plugin uses.

The learned generative families arrive here issue by issue; the classical baselines live
in the separate distribution ``medgen-classic`` under ``plugins/``.
"""

from __future__ import annotations

from typing import Callable

from ..hookspecs import hookimpl


@hookimpl
def medgen_register_families(register: Callable[[object], None]) -> None:
    """Register the built-in families (none yet besides what later issues add)."""
    return None

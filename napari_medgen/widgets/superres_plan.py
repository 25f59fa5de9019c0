"""The Super-resolution dock's plan line: the slice axis it found and the spacing it will produce."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import ParamError
from ..volume import parse_target_spacing

__all__ = ["superres_plan", "PLAN_PARAMS"]

#: the parameters the plan depends on: the line is redrawn when they change
PLAN_PARAMS = ("target_spacing", "slice_axis")


def superres_plan(spacing: Sequence[float], params: dict[str, Any]) -> str:
    """What super-resolution will do, before Run: the detected slice axis and the output spacing."""
    sp = tuple(float(s) for s in spacing)
    axis = int(np.argmax(sp))
    choice = str(params.get("slice_axis", "auto"))
    if choice in ("0", "1", "2"):
        axis = int(choice)
    inplane = [s for a, s in enumerate(sp) if a != axis]
    if sp[axis] < 1.05 * min(inplane):
        return "<span style='color:#e0a030'>no thick-slice axis: the spacing is (near-)isotropic</span>"
    try:
        target = parse_target_spacing(str(params.get("target_spacing", "auto")), sp, auto=min(inplane))
    except ParamError as exc:
        return f"<span style='color:#e55'>{exc}</span>"
    factor = sp[axis] / target[axis]
    return (
        f"slice axis {axis} ({sp[axis]:.3g} mm) &rarr; target "
        f"{' x '.join(f'{t:.3g}' for t in target)} mm ({factor:.2g}x along the slices)"
    )

"""The Super-resolution dock's plan line: the thick slices it found, their profile and the spacing it will produce."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..acquisition import SliceProfile, estimate_slice_profile
from ..errors import InputError, ParamError
from ..families.superres import find_slice_axis
from ..family import AUTO
from ..volume import PLANES, parse_target_spacing, slice_planes

__all__ = ["superres_plan", "PLAN_PARAMS", "PlanLine"]

#: the parameters the plan depends on: the line is redrawn when they change
PLAN_PARAMS = ("target_spacing", "slice_axis", "slice_thickness")

_WARN = "<span style='color:#e0a030'>{}</span>"


def superres_plan(spacing: Sequence[float], params: dict[str, Any], planes: Sequence[str] = PLANES,
                  profile: SliceProfile | None = None) -> str:
    """What super-resolution will do, before Run: the thick slices, their profile and the output spacing.

    ``planes``: the name of the slices across each array axis (from the scan's orientation);
    ``profile``: the slice profile estimated from the scan (shown when the thickness is auto).
    """
    sp = tuple(float(s) for s in spacing)
    planes = list(planes)
    try:
        axis = find_slice_axis(sp, str(params.get("slice_axis", "auto")), planes)
    except (InputError, ParamError) as exc:
        return _WARN.format(str(exc))
    inplane = [s for a, s in enumerate(sp) if a != axis]
    try:
        target = parse_target_spacing(str(params.get("target_spacing", "auto")), sp, auto=min(inplane))
    except ParamError as exc:
        return f"<span style='color:#e55'>{exc}</span>"
    factor = sp[axis] / target[axis]
    line = (f"thick {planes[axis]} slices, {sp[axis]:.3g} mm apart (napari axis {axis}) &rarr; "
            f"{' x '.join(f'{t:.3g}' for t in target)} mm ({factor:.2g}x across the slices)")
    given = params.get("slice_thickness", AUTO)
    if given != AUTO:
        fwhm, source = float(given), "given"
    elif profile is not None and profile.axis == axis:
        fwhm, source = profile.fwhm_mm, profile.source
        if source == "estimated":
            source = "estimated from the scan" + (f"; {profile.note}" if profile.note else "")
    else:
        return line + "<br>slice profile: estimated from the scan when run"
    gap = sp[axis] - fwhm
    # the estimate is good to about half a millimetre: smaller gaps or overlaps are not worth a word
    close = 0.05 if source == "given" else 0.5
    extra = f", gap {gap:.1f} mm" if gap >= close else (f", overlapping by {-gap:.1f} mm" if gap <= -close else ", no gap")
    return line + f"<br>slice profile: FWHM {fwhm:.1f} mm ({source}{extra})"


class PlanLine:
    """The dock's plan line for a layer: its orientation and, once per layer, its estimated slice profile."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._profile: SliceProfile | None = None

    def __call__(self, layer: Any, params: dict[str, Any]) -> str:
        scale = tuple(float(s) for s in layer.scale)[-3:]
        affine = np.eye(4)
        try:
            affine[:3, :3] = np.asarray(layer.affine.affine_matrix, dtype=float)[-4:-1, -4:-1] @ np.diag(scale)
        except (AttributeError, ValueError):
            affine[:3, :3] = np.diag(scale)
        planes = slice_planes(affine)
        profile = None
        if params.get("slice_thickness", AUTO) == AUTO:
            profile = self._estimate(layer, scale, params, planes)
        return superres_plan(scale, params, planes, profile)

    def _estimate(self, layer: Any, scale: tuple[float, ...], params: dict[str, Any],
                  planes: Sequence[str]) -> SliceProfile | None:
        try:
            axis = find_slice_axis(scale, str(params.get("slice_axis", "auto")), planes)
        except (InputError, ParamError):
            return None
        data = layer.data
        key = (id(data), np.shape(data), scale, axis)
        if key != self._key:
            arr = np.asarray(data)
            if arr.ndim != 3:
                return None
            self._profile = estimate_slice_profile(arr, scale, axis)
            self._key = key
        return self._profile

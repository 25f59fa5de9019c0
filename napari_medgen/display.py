"""How the viewer shows scans: the radiological (default) or neurological reading convention.

Every volume napari-medgen reads is stored in napari order (S, A, R): axis 0 runs inferior to
superior, axis 1 posterior to anterior, axis 2 patient left to right. napari's default
camera draws rows downwards, so without help an axial slice has anterior at the bottom.
:func:`install_reading_convention` sets the camera so that axial slices show anterior up,
coronal and sagittal reformats superior up, sagittal anterior on the screen's left, and
the patient's right on the screen's left (radiological) or right (neurological); it names
the axes by anatomy (S, A, R, as Slicer labels its slice offsets).

napari is imported lazily and only duck-typed here (no Qt), so this module imports in the
CLI too. The setting lives in ``settings.json`` under ``$MEDGEN_CONFIG_DIR`` (default
``~/.config/napari-medgen``; see :mod:`napari_medgen.settings`); ``MEDGEN_DISPLAY_CONVENTION``
overrides it for one process.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import settings

__all__ = [
    "ANATOMY_LABELS",
    "CONVENTIONS",
    "ENV_VAR",
    "apply_reading_convention",
    "config_path",
    "current_convention",
    "install_reading_convention",
    "orientation_for",
    "set_convention",
]

log = logging.getLogger("napari_medgen.display")

#: the two ways to put a patient on the screen; the first is the default
CONVENTIONS = ("radiological", "neurological")
#: dims labels of the three spatial axes, in napari order (the last three dims)
ANATOMY_LABELS = ("S", "A", "R")
_SETTING = "display_convention"
#: environment variable that overrides the saved setting (for one process)
ENV_VAR = "MEDGEN_DISPLAY_CONVENTION"
_GEOMETRY_KEY = "medgen_volume"  # io.napari_io.GEOMETRY_KEY, without importing the readers

# screen directions in a right-handed screen frame (right, up, towards the viewer)
_SCREEN = {
    "right": (1.0, 0.0, 0.0),
    "left": (-1.0, 0.0, 0.0),
    "up": (0.0, 1.0, 0.0),
    "down": (0.0, -1.0, 0.0),
    "towards": (0.0, 0.0, 1.0),
    "away": (0.0, 0.0, -1.0),
}
# each anatomical axis as a column of the patient frame (R, A, S), right-handed
_PATIENT_COLUMN = {"R": 0, "A": 1, "S": 2}


# -- the setting ----------------------------------------------------------------------------
def config_path() -> Path:
    """The settings file (see :func:`napari_medgen.settings.config_path`)."""
    return settings.config_path()


def _check(name: str) -> str:
    value = str(name).strip().lower()
    if value not in CONVENTIONS:
        raise ValueError(f"unknown display convention {name!r}; expected one of {', '.join(CONVENTIONS)}")
    return value


def current_convention() -> str:
    """``"radiological"`` (default) or ``"neurological"``: the env var, else the saved setting."""
    for value in (os.environ.get(ENV_VAR, ""), settings.get(_SETTING, "")):
        if str(value).strip().lower() in CONVENTIONS:
            return str(value).strip().lower()
    return CONVENTIONS[0]


def set_convention(name: str) -> None:
    """Save the convention for later sessions and re-apply it to every viewer showing scans."""
    settings.set_value(_SETTING, _check(name))  # a read-only config dir: it holds for this session
    for viewer in list(_installed):
        apply_reading_convention(viewer)  # MEDGEN_DISPLAY_CONVENTION, if set, still wins


# -- the geometry ---------------------------------------------------------------------------
def _preferred(anatomy: str, role: str, convention: str) -> str:
    """Screen direction for the positive end of an anatomical axis drawn as 'vertical'/'horizontal'."""
    if role == "vertical":
        return "up"  # anterior up (axial), superior up (coronal, sagittal)
    if anatomy == "R":  # the patient's right: screen left when read from the feet
        return "left" if convention == "radiological" else "right"
    if anatomy == "A":  # sagittal: the face looks to the screen's left in both conventions
        return "left"
    return "right"


def orientation_for(anatomy: tuple[str, str, str], convention: str | None = None) -> tuple[str, str, str]:
    """napari camera orientation (depth, vertical, horizontal) for axes of this anatomy.

    ``anatomy`` names the data axes the camera shows as depth, vertical and horizontal
    (e.g. ``("S", "A", "R")`` for axial slices). The depth direction is chosen so that a
    3D rendering is a view of the patient, never a mirror image.
    """
    convention = _check(convention or current_convention())
    depth_axis, vertical_axis, horizontal_axis = anatomy
    vertical = _preferred(vertical_axis, "vertical", convention)
    horizontal = _preferred(horizontal_axis, "horizontal", convention)
    for depth in ("towards", "away"):
        frame = np.zeros((3, 3))
        roles = ((depth_axis, depth), (vertical_axis, vertical), (horizontal_axis, horizontal))
        for axis, direction in roles:
            frame[:, _PATIENT_COLUMN[axis]] = _SCREEN[direction]
        if np.linalg.det(frame) > 0:  # a rotation of the patient, not a reflection
            return (depth, vertical, horizontal)
    raise ValueError(f"anatomy {anatomy!r} must name S, A and R once each")  # pragma: no cover


# -- the viewer -----------------------------------------------------------------------------
_installed: weakref.WeakSet[Any] = weakref.WeakSet()


def _shows_scans(viewer: Any) -> bool:
    """True when a layer made by napari-medgen (a volume in (S, A, R) order) is in a 3D+ viewer."""
    if viewer.dims.ndim < 3:
        return False
    return any(_GEOMETRY_KEY in (getattr(layer, "metadata", None) or {}) for layer in viewer.layers)


def _is_default_label(label: str, index: int, ndim: int) -> bool:
    return label in ("", str(index), str(index - ndim)) or label in ANATOMY_LABELS


def _apply_labels(viewer: Any) -> None:
    ndim = viewer.dims.ndim
    labels = list(viewer.dims.axis_labels)
    first = ndim - 3
    wanted = list(labels)
    for k, name in enumerate(ANATOMY_LABELS):
        i = first + k
        if _is_default_label(labels[i], i, ndim):  # keep a name the user gave an axis
            wanted[i] = name
    if wanted != labels:
        viewer.dims.axis_labels = tuple(wanted)


def _apply_camera(viewer: Any, convention: str) -> None:
    ndim = viewer.dims.ndim
    order = list(viewer.dims.order)
    spatial = {ndim - 3 + k: name for k, name in enumerate(ANATOMY_LABELS)}
    if viewer.dims.ndisplay == 3:
        shown = order[-3:]
    else:
        # in 2D the depth axis is the spatial axis being sliced through
        sliced = [a for a in order[:-2] if a in spatial]
        shown = [sliced[-1] if sliced else None, *order[-2:]]
    if any(a not in spatial for a in shown):
        return  # a non-spatial axis (time, channel) is on screen: leave napari's camera alone
    anatomy = tuple(spatial[a] for a in shown)
    orientation = orientation_for(anatomy, convention)  # type: ignore[arg-type]
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    if tuple(str(o) for o in camera.orientation) != orientation:
        camera.orientation = orientation


def apply_reading_convention(viewer: Any, convention: str | None = None) -> bool:
    """Orient the camera and name the axes now, if the viewer shows a napari-medgen scan.

    Returns whether it applied. Never raises: a display nicety must not break a viewer.
    """
    try:
        if not _shows_scans(viewer):
            return False
        _apply_labels(viewer)
        _apply_camera(viewer, _check(convention or current_convention()))
        return True
    except Exception:
        log.debug("could not apply the reading convention", exc_info=True)
        return False


def _guarded(viewer_ref: weakref.ref[Any]) -> Callable[..., None]:
    def callback(*_: Any) -> None:
        viewer = viewer_ref()
        if viewer is not None:
            apply_reading_convention(viewer)

    return callback


def install_reading_convention(viewer: Any) -> None:
    """Show this viewer's scans as radiologists read them, now and whenever scans are added.

    Idempotent per viewer. Re-applies when a napari-medgen layer is inserted, when the
    displayed axes change (a reformat, 2D/3D) and when :func:`set_convention` is called.
    """
    try:
        if viewer is None or viewer in _installed:
            return
        _installed.add(viewer)
        callback = _guarded(weakref.ref(viewer))
        viewer.layers.events.inserted.connect(callback)
        for name in ("order", "ndisplay", "ndim"):
            getattr(viewer.dims.events, name).connect(callback)
        apply_reading_convention(viewer)
    except Exception:
        log.debug("could not install the reading convention", exc_info=True)


def go_to_world(viewer: Any, world: Any) -> None:
    """Show the slices through a point (world mm, napari order) and centre the camera on it."""
    dims = viewer.dims
    n = dims.ndim
    if world is None or len(world) != 3 or n < 3:
        return
    dims.set_point(list(range(n - 3, n)), [float(v) for v in world])
    point = dims.point
    viewer.camera.center = tuple(float(point[d]) for d in dims.displayed)

"""Volume: a 3D array with its voxel-to-world geometry.

Conventions (the same in the viewer, the CLI and every family):

* ``data`` is a 3D array in napari axis order. For NIfTI files the reader reorients to
  the closest canonical (RAS+) orientation and reverses the axes, so axis 0 runs
  inferior->superior (S), axis 1 posterior->anterior (A), axis 2 left->right (R):
  napari then shows axial slices with the slice slider on axis 0.
* ``affine`` is a 4x4 matrix mapping array indices ``(a0, a1, a2, 1)`` to world
  millimetres **in the same axis order** (``(z, y, x)`` = (S, A, R) for NIfTI data).
  For an axis-aligned scan it is diagonal (spacing) plus the origin (centre of voxel
  0), which is exactly napari's ``scale`` and ``translate``.
* ``metadata`` carries what a writer needs to restore the file's own orientation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

import math

from .errors import InputError, ParamError

__all__ = ["Volume", "slice_planes", "PLANES", "resample_geometry", "parse_target_spacing", "MIN_SPACING_MM", "MAX_SPACING_MM"]

#: Spacings outside this range (mm) are refused as a probable unit or header error
#: (1 micrometre to 10 cm: no scanner acquires a voxel a metre wide).
MIN_SPACING_MM = 1e-3
MAX_SPACING_MM = 100.0


@dataclass
class Volume:
    """A 3D image with voxel-to-world geometry; see the module docstring for axes."""

    data: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    name: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=float)
        if self.affine.shape != (4, 4):
            raise InputError(f"affine must be 4x4, got shape {self.affine.shape}")

    # -- construction ------------------------------------------------------------
    @classmethod
    def from_spacing(
        cls,
        data: np.ndarray,
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        origin: Sequence[float] = (0.0, 0.0, 0.0),
        name: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> "Volume":
        """An axis-aligned volume: spacing per array axis, origin = centre of voxel 0."""
        affine = np.eye(4)
        affine[:3, :3] = np.diag(np.asarray(spacing, dtype=float))
        affine[:3, 3] = np.asarray(origin, dtype=float)
        return cls(np.asarray(data), affine, name=name, metadata=dict(metadata or {}))

    def with_data(self, data: np.ndarray, name: str | None = None, affine: np.ndarray | None = None) -> "Volume":
        """A new volume on the same (or given) geometry; metadata is copied shallowly."""
        return Volume(
            np.asarray(data),
            self.affine.copy() if affine is None else np.asarray(affine, dtype=float),
            name=self.name if name is None else name,
            metadata=dict(self.metadata),
        )

    # -- geometry ----------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each array axis (column norms of the affine)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def origin(self) -> tuple[float, ...]:
        """World position (mm) of the centre of voxel (0, 0, 0)."""
        return tuple(float(v) for v in self.affine[:3, 3])

    @property
    def direction(self) -> np.ndarray:
        """Unit direction cosines of the array axes (columns), in napari world order."""
        sp = np.asarray(self.spacing)
        return self.affine[:3, :3] / np.where(sp == 0, 1.0, sp)

    @property
    def is_axis_aligned(self) -> bool:
        d = self.direction
        return bool(np.allclose(d, np.diag(np.diag(d)), atol=1e-6) and np.all(np.diag(d) > 0))

    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        idx = np.atleast_2d(np.asarray(index, dtype=float))
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_index(self, world: np.ndarray) -> np.ndarray:
        pts = np.atleast_2d(np.asarray(world, dtype=float))
        inv = np.linalg.inv(self.affine)
        return pts @ inv[:3, :3].T + inv[:3, 3]

    def world_bounds(self) -> np.ndarray:
        """(2, 3) min/max world corners of the voxel grid (voxel edges, not centres)."""
        corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in self.shape], indexing="ij")).reshape(3, -1).T
        world = self.index_to_world(corners)
        return np.stack([world.min(0), world.max(0)])

    def same_grid(self, other: "Volume", atol: float = 1e-4) -> bool:
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol)

    def napari_kwargs(self) -> dict[str, Any]:
        """``scale``/``translate`` (and ``affine`` for oblique scans) for a napari layer."""
        kwargs: dict[str, Any] = {"scale": self.spacing, "translate": self.origin}
        if not self.is_axis_aligned:
            # napari composes affine after scale/translate; pass the rotation about the origin
            rot = np.eye(4)
            rot[:3, :3] = self.direction
            shift = np.eye(4)
            shift[:3, 3] = np.asarray(self.origin)
            kwargs["affine"] = shift @ rot @ np.linalg.inv(shift)
        return kwargs


#: the slices perpendicular to the world's S, A and R axes (napari world order z, y, x)
PLANES = ("axial", "coronal", "sagittal")


def slice_planes(affine: np.ndarray) -> list[str]:
    """For each array axis, the name of the slices perpendicular to it ("axial", "coronal", "sagittal").

    Read from the direction of the axis in the world (the closest of S, A, R: a thick axial
    acquisition is coarse along S). With a plain scale and no orientation the napari order is
    taken as (S, A, R), the convention of every reader here. Where two axes point closest to the
    same world axis (a strongly oblique scan) the names fall back to that order.
    """
    direction = np.asarray(affine, dtype=float)[:3, :3]
    norms = np.linalg.norm(direction, axis=0)
    direction = direction / np.where(norms == 0, 1.0, norms)
    closest = [int(np.argmax(np.abs(direction[:, a]))) for a in range(3)]
    if len(set(closest)) < 3:
        closest = [0, 1, 2]
    return [PLANES[c] for c in closest]


def resample_geometry(volume: Volume, target_spacing: Sequence[float]) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of a grid at ``target_spacing`` covering the same world box.

    The new grid keeps the direction cosines and is centred in the old field of view,
    so the world bounding boxes agree to within half an output voxel on each side.
    """
    old_sp = np.asarray(volume.spacing)
    new_sp = np.asarray(target_spacing, dtype=float)
    if new_sp.shape != (3,) or np.any(~np.isfinite(new_sp)) or np.any(new_sp <= 0):
        raise InputError(f"target spacing must be three positive numbers, got {tuple(target_spacing)}")
    extent = np.asarray(volume.shape) * old_sp
    new_shape = np.maximum(1, np.round(extent / new_sp)).astype(int)
    # index in the old grid of the new voxel 0 centre, per axis
    start = -0.5 + (extent - new_shape * new_sp) / (2 * old_sp) + new_sp / (2 * old_sp)
    direction = volume.direction
    affine = np.eye(4)
    affine[:3, :3] = direction * new_sp
    affine[:3, 3] = volume.index_to_world(start)[0]
    return (int(new_shape[0]), int(new_shape[1]), int(new_shape[2])), affine


def parse_target_spacing(
    text: str, input_spacing: Sequence[float], auto: float | None = None
) -> tuple[float, float, float]:
    """``"auto"`` (isotropic at ``auto``, default the finest input spacing), ``"1.0"`` or ``"z,y,x"`` in mm."""
    raw = str(text).strip().lower()
    if raw in ("", "auto"):
        finest = float(min(input_spacing) if auto is None else auto)
        return (finest, finest, finest)
    parts = [p for p in raw.replace("x", ",").replace(" ", ",").split(",") if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ParamError(
            f"target_spacing must be 'auto', one number or three numbers 'z,y,x' in mm; got {text!r}"
        ) from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ParamError(f"target_spacing needs one or three numbers (z,y,x in mm); got {len(values)} in {text!r}")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ParamError(f"target_spacing must be positive millimetres; got {text!r}")
    return (values[0], values[1], values[2])

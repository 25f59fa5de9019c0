"""Candidate regions of an anomaly map: connected components above a threshold, and their table.

Shared by every anomaly family, the Anomaly dock (live re-labelling, the table, "Save table")
and the CLI (``<stem>_regions.csv``), so that a region means the same thing everywhere.
No Qt, no torch, no napari.

Convention for an anomaly family's :class:`~napari_medgen.family.Result`:

* outputs ``"heatmap"`` (kind ``heatmap``, float, on the scan's grid) and ``"regions"``
  (kind ``labels``: 0 outside, 1..K by decreasing peak score); optionally
  ``"reconstruction"`` (kind ``image``, the pseudo-healthy scan);
* ``info["threshold"]`` (the score above which a voxel is a candidate),
  ``info["min_region_mm3"]`` (smaller components are dropped), ``info["regions"]`` (the
  first :data:`MAX_LISTED` region dicts, as :func:`label_regions` returns them),
  ``info["n_regions"]`` (K, every region kept) and, optionally, ``info["score_units"]``
  (what the heatmap's scale means, e.g. ``"z-score vs normal tissue"``).

A region dict has the keys ``label``, ``voxels``, ``volume_mm3``, ``peak``, ``mean``,
``centroid_index`` (3 floats, array order) and ``centroid_world_mm`` (3 floats, napari world
order: (S, A, R) mm for scans read from NIfTI/DICOM, i.e. RAS+ ``(z, y, x)``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from .errors import InputError
from .volume import Volume

__all__ = [
    "MAX_LISTED",
    "REGIONS_KEY",
    "REGION_COLUMNS",
    "WORLD_AXES",
    "describe_regions",
    "label_regions",
    "region_columns",
    "regions_csv_bytes",
    "regions_metadata",
]

#: layer metadata entry of a heatmap layer: ``{"threshold", "min_region_mm3", "score"}``,
#: what the Anomaly dock re-labels from (``score``: short text on what the scale means)
REGIONS_KEY = "medgen_regions"
#: regions described one by one (``info["regions"]``, the dock's table, the CSV); the labels hold all
MAX_LISTED = 200
#: names of the world axes in napari order: (z, y, x) = superior, anterior, right (RAS+ mm)
WORLD_AXES = ("S", "A", "R")
_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connected


def region_columns(world_axes: Sequence[str] = WORLD_AXES) -> tuple[str, ...]:
    """The CSV header: label, volume_mm3, voxels, peak, mean, centre_index_0..2, centre_<axis>_mm."""
    if len(world_axes) != 3:
        raise ValueError(f"three world axis names are needed, got {list(world_axes)}")
    return (
        "label", "volume_mm3", "voxels", "peak", "mean",
        "centre_index_0", "centre_index_1", "centre_index_2",
        *(f"centre_{axis}_mm" for axis in world_axes),
    )


#: the regions table's columns (CSV header) for the project's world axes
REGION_COLUMNS = region_columns()


def _voxel_mm3(volume: Volume) -> float:
    return float(abs(np.linalg.det(np.asarray(volume.affine, dtype=float)[:3, :3])))


def _check(score: np.ndarray, volume: Volume) -> np.ndarray:
    score = np.asarray(score)
    if score.ndim != 3:
        raise InputError(f"an anomaly map must be 3D, got {score.ndim}D")
    if tuple(score.shape) != tuple(volume.shape):
        raise InputError(f"the anomaly map's shape {score.shape} does not match its volume's {volume.shape}")
    return score


def _stats(labels: np.ndarray, score: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Per-label sums over the labelled voxels only (bincount; never a full-volume sort)."""
    flat = np.flatnonzero(labels)
    lab = labels.reshape(-1)[flat].astype(np.intp, copy=False)
    values = score.reshape(-1)[flat].astype(np.float64)
    sizes = np.bincount(lab, minlength=n + 1)
    sums = np.bincount(lab, weights=values, minlength=n + 1)
    peaks = np.full(n + 1, -np.inf)
    np.maximum.at(peaks, lab, values)
    coords = np.unravel_index(flat, labels.shape)
    centre_sums = np.stack([np.bincount(lab, weights=c, minlength=n + 1) for c in coords], axis=1)
    return {"sizes": sizes, "sums": sums, "peaks": peaks, "centre_sums": centre_sums}


def _describe(
    stats: dict[str, np.ndarray], order: np.ndarray, volume: Volume, max_listed: int
) -> list[dict[str, Any]]:
    """Region dicts for ``order[:max_listed]`` (original label numbers), labelled 1, 2, ... in that order."""
    listed = order[: max(0, int(max_listed))]
    if listed.size == 0:
        return []
    sizes = stats["sizes"][listed]
    centroids = stats["centre_sums"][listed] / sizes[:, None]
    world = volume.index_to_world(centroids)
    voxel_mm3 = _voxel_mm3(volume)
    regions = []
    for k, original in enumerate(listed):
        vox = int(sizes[k])
        regions.append(
            {
                "label": k + 1,
                "voxels": vox,
                "volume_mm3": vox * voxel_mm3,
                "peak": float(stats["peaks"][original]),
                "mean": float(stats["sums"][original] / vox),
                "centroid_index": [float(v) for v in centroids[k]],
                "centroid_world_mm": [float(v) for v in world[k]],
            }
        )
    return regions


def label_regions(
    score: np.ndarray,
    volume: Volume,
    threshold: float,
    min_mm3: float,
    *,
    max_listed: int = MAX_LISTED,
) -> tuple[np.ndarray, list[dict[str, Any]], int]:
    """Candidate regions of ``score``: 26-connected components of ``score > threshold``.

    Components smaller than ``min_mm3`` (voxel volume from ``volume``'s affine) are dropped;
    the others are labelled 1..K by decreasing peak score (ties: in scan order). ``volume``
    gives the geometry only (its data is not read). Returns ``(labels, regions, K)``: a
    uint16 (uint32 above 65534 regions) label volume, the region dicts of the first
    ``max_listed`` labels (see the module docstring) and K. NaN scores are never candidates.
    """
    score = _check(score, volume)
    threshold, min_mm3 = float(threshold), float(min_mm3)
    if not math.isfinite(threshold):
        raise InputError(f"the threshold must be a finite number, got {threshold!r}")
    raw, n = ndimage.label(score > threshold, structure=_CONNECTIVITY)
    if n == 0:
        return np.zeros(score.shape, dtype=np.uint16), [], 0
    stats = _stats(raw, score, n)
    index = np.arange(1, n + 1)
    keep = index[stats["sizes"][1:] * _voxel_mm3(volume) >= min_mm3]
    if keep.size == 0:
        return np.zeros(score.shape, dtype=np.uint16), [], 0
    order = keep[np.argsort(-stats["peaks"][keep], kind="stable")]
    dtype = np.uint16 if order.size < np.iinfo(np.uint16).max else np.uint32
    lut = np.zeros(n + 1, dtype=dtype)
    lut[order] = np.arange(1, order.size + 1, dtype=dtype)
    labels = lut[raw]
    return labels, _describe(stats, order, volume, max_listed), int(order.size)


def describe_regions(
    labels: np.ndarray, score: np.ndarray, volume: Volume, *, max_listed: int = MAX_LISTED
) -> list[dict[str, Any]]:
    """Region dicts of an existing label volume (1..K) over ``score``, in label order.

    For a family that returns a ``regions`` labels output but no ``info["regions"]``.
    """
    score = _check(score, volume)
    labels = np.asarray(labels)
    if labels.shape != score.shape:
        raise InputError(f"the regions' shape {labels.shape} does not match the anomaly map's {score.shape}")
    if labels.size == 0 or not labels.any():
        return []
    if labels.min() < 0:
        raise InputError("region labels must not be negative")
    n = int(labels.max())
    stats = _stats(labels, score, n)
    present = np.flatnonzero(stats["sizes"][1:]) + 1
    regions = _describe(stats, present, volume, max_listed)
    for region, original in zip(regions, present):
        region["label"] = int(original)
    return regions


def regions_metadata(info: dict[str, Any]) -> dict[str, Any] | None:
    """The :data:`REGIONS_KEY` entry for a heatmap layer from a result's info, or None without a threshold."""
    try:
        threshold = float(info["threshold"])
    except (KeyError, TypeError, ValueError):
        return None
    if not math.isfinite(threshold):
        return None
    try:
        min_mm3 = float(info.get("min_region_mm3", 0.0) or 0.0)
    except (TypeError, ValueError):
        min_mm3 = 0.0
    score = str(info.get("score_units") or "score")
    return {"threshold": threshold, "min_region_mm3": min_mm3, "score": score}


def _num(value: Any, fmt: str) -> str:
    value = float(value)
    return format(value, fmt) if math.isfinite(value) else ""


def regions_csv_bytes(regions: Sequence[dict[str, Any]], world_axes: Sequence[str] = WORLD_AXES) -> bytes:
    """The regions table as UTF-8 CSV (header :func:`region_columns`; one row per region dict).

    The dock's "Save table..." and the CLI's ``<stem>_regions.csv`` write these same bytes.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(region_columns(world_axes))
    for r in regions:
        index = list(r["centroid_index"])
        world = list(r["centroid_world_mm"])
        writer.writerow(
            [
                int(r["label"]),
                _num(r["volume_mm3"], ".3f"),
                int(r["voxels"]),
                _num(r["peak"], ".6g"),
                _num(r["mean"], ".6g"),
                *(_num(v, ".3f") for v in index),
                *(_num(v, ".2f") for v in world),
            ]
        )
    return buffer.getvalue().encode("utf-8")

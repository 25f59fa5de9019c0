"""Batch runs: one family over a cohort of scans (``medgen batch``).

:mod:`napari_medgen.batch.bids` finds the scans (NIfTI files, folders, globs, BIDS datasets)
and names the outputs as a BIDS derivative; it imports neither Qt, napari nor dask. The
engine that runs the cohort lives in :mod:`napari_medgen.batch.engine`.
"""

from __future__ import annotations

__all__: list[str] = []

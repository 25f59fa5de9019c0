"""Benchmarks: quality and speed of napari-medgen families against baselines (``make bench``)."""

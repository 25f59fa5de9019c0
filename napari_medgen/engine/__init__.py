"""The engine: the only part of napari-medgen that touches torch devices.

Device choice and precision (:mod:`.device`), sliding-window inference (:mod:`.inference`),
the per-scan trainer (:mod:`.trainer`) and safe weight storage (:mod:`.weights`).
Importing it imports torch, so the rest of the core imports it lazily.
"""

from __future__ import annotations

from .device import (
    autocast,
    autocast_dtype,
    available_devices,
    describe_device,
    empty_cache,
    is_oom,
    resolve_device,
    run_with_oom_retry,
)
from .inference import count_windows, sliding_window
from .trainer import TimeCosine, TrainConfig, Trainer, TrainHistory, training_limits
from .weights import cache_dir, load_foreign_checkpoint, load_weights, save_weights, sha256_file, weights_paths

__all__ = [
    "TimeCosine",
    "training_limits",
    "resolve_device",
    "describe_device",
    "available_devices",
    "autocast",
    "autocast_dtype",
    "is_oom",
    "empty_cache",
    "run_with_oom_retry",
    "sliding_window",
    "count_windows",
    "TrainConfig",
    "TrainHistory",
    "Trainer",
    "save_weights",
    "load_weights",
    "load_foreign_checkpoint",
    "cache_dir",
    "sha256_file",
    "weights_paths",
]

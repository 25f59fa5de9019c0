"""Sliding-window inference over a volume: windows on the compute device, stitching on the CPU.

A thin wrapper of :func:`monai.inferers.sliding_window_inference` that adds what a family
needs in the viewer: progress per window batch, cancel between batches, autocast on a GPU,
and a retry with smaller batches/windows when the GPU runs out of memory. GPU memory then
depends on the window size, not on the volume size.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.inferers.utils import _get_scan_interval
from monai.data.utils import dense_patch_slices
from monai.utils import ensure_tuple_rep, fall_back_tuple

from ..errors import InputError
from .device import autocast, resolve_device, run_with_oom_retry

__all__ = ["sliding_window", "count_windows"]

#: windows are never halved below this many voxels per side on an out-of-memory retry
MIN_ROI = 16


class _Attempt(NamedTuple):
    roi: tuple[int, ...]
    batch: int

    def __str__(self) -> str:
        return f"window {'x'.join(map(str, self.roi))}, batch {self.batch}"


def count_windows(image_size: Sequence[int], roi_size: Sequence[int], overlap: float | Sequence[float]) -> int:
    """Number of windows MONAI's sliding window visits for one image (after padding to the roi)."""
    dims = len(image_size)
    roi = tuple(int(r) for r in roi_size)
    size = tuple(max(int(s), r) for s, r in zip(image_size, roi))
    interval = _get_scan_interval(size, roi, dims, ensure_tuple_rep(overlap, dims))
    return len(dense_patch_slices(size, roi, interval))


def _attempts(roi: tuple[int, ...], batch: int) -> list[_Attempt]:
    """Batch halved down to 1 at full window, then the window halved (down to MIN_ROI) at batch 1."""
    out = []
    while True:
        out.append(_Attempt(roi, batch))
        if batch <= 1:
            break
        batch = max(1, batch // 2)
    while True:
        smaller = tuple(max(r // 2, MIN_ROI) if r > MIN_ROI else r for r in roi)
        if smaller == roi:
            break
        roi = smaller
        out.append(_Attempt(roi, 1))
    return out


def sliding_window(
    volume: np.ndarray | torch.Tensor,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    roi_size: int | Sequence[int],
    *,
    ctx: Any,
    overlap: float | Sequence[float] = 0.25,
    sw_batch_size: int = 4,
    mode: str = "gaussian",
    sw_device: str | None = None,
    out_device: str = "cpu",
    spatial_dims: int | None = None,
    message: str = "inference",
    padding_mode: str = "constant",
) -> np.ndarray:
    """Run ``predictor`` over ``volume`` window by window and return the stitched float32 array.

    ``volume`` is a bare volume (spatial axes only), channel-first ``(C, *spatial)`` or batched
    ``(N, C, *spatial)``, with 2 or 3 spatial axes (``spatial_dims``; by default the length of
    ``roi_size``, else 3); the result has the same layout, with the predictor's output channels
    (a bare volume stays bare when the predictor returns one channel). The predictor must live
    on ``sw_device`` (default ``ctx.device``) and return a tensor. ``ctx`` is a RunContext:
    each window batch checks for cancel and reports ``ctx.progress(done, total, message)``
    with ``done``/``total`` counted in windows. Where the volume is smaller than a window it is
    padded with ``padding_mode`` (MONAI's: "constant" zeros, or "replicate" the edge, which
    suits an image whose content reaches its border, such as a cropped field of view).
    """
    if spatial_dims is None:
        spatial_dims = len(roi_size) if isinstance(roi_size, Sequence) else 3
    if spatial_dims not in (2, 3):
        raise InputError(f"sliding-window inference supports 2 or 3 spatial axes, not {spatial_dims}")
    if sw_batch_size < 1:
        raise InputError(f"sw_batch_size must be at least 1, got {sw_batch_size}")

    # the input stays on the CPU; only windows travel to the compute device
    if isinstance(volume, torch.Tensor):
        tensor = volume.detach().to("cpu", torch.float32)
    else:
        tensor = torch.as_tensor(np.asarray(volume, dtype=np.float32))
    added = tensor.ndim - spatial_dims
    if added not in (0, 1, 2):
        raise InputError(
            f"expected a {spatial_dims}D volume, optionally with channel and batch axes, "
            f"got an array of shape {tuple(tensor.shape)}"
        )
    for _ in range(2 - added):
        tensor = tensor.unsqueeze(0)
    image_size = tuple(tensor.shape[2:])
    roi = tuple(int(r) for r in fall_back_tuple(ensure_tuple_rep(roi_size, spatial_dims), image_size))

    device = resolve_device(sw_device or ctx.device)
    on_cpu = torch.device(device).type == "cpu"
    amp = bool(getattr(ctx, "amp", True))
    batch_n = int(tensor.shape[0])

    def attempt(a: _Attempt) -> torch.Tensor:
        total = batch_n * count_windows(image_size, a.roi, overlap)
        done = 0

        def predict(window: torch.Tensor) -> torch.Tensor:
            nonlocal done
            ctx.check_cancelled()
            if on_cpu:  # a window on the CPU may be a view of the input: never let it be modified
                window = window.clone()
            with autocast(device, enabled=amp):
                out = predictor(window)
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"the predictor must return a tensor, got {type(out).__name__}")
            done += int(window.shape[0])
            ctx.progress(min(done, total), total, message)
            return out.float()

        return sliding_window_inference(
            tensor,
            roi_size=a.roi,
            sw_batch_size=a.batch,
            predictor=predict,
            overlap=overlap,
            mode=mode,
            sw_device=device,
            device=out_device,
            padding_mode=padding_mode,
        )

    module = predictor if isinstance(predictor, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        with torch.inference_mode():
            result = run_with_oom_retry(attempt, _attempts(roi, sw_batch_size), device=device, message=message)
    finally:
        if module is not None:
            module.train(was_training)

    array = result.detach().to("cpu", torch.float32).numpy()
    if added == 0:
        array = array[0, 0] if array.shape[1] == 1 else array[0]
    elif added == 1:
        array = array[0]
    return np.ascontiguousarray(array, dtype=np.float32)

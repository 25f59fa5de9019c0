"""Compute devices: pick one ("auto" = CUDA, then MPS, then CPU), describe it, autocast, OOM retry.

This is the only module that asks torch which accelerators exist; everything else receives a
device string such as ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"mps"``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from typing import Any, Callable, ContextManager, Sequence, TypeVar

import torch

from ..errors import DeviceError, DeviceUnavailable

__all__ = [
    "resolve_device",
    "describe_device",
    "available_devices",
    "autocast",
    "autocast_dtype",
    "is_oom",
    "empty_cache",
    "run_with_oom_retry",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S")

CPU_WARNING = "no GPU found: learned families will be slow"


def _torch_build() -> str:
    """'torch 2.13, CPU build' / 'torch 2.13, CUDA 12.4 build': said in device error messages."""
    version = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    if torch.version.cuda:
        build = f"CUDA {torch.version.cuda} build"
    elif getattr(torch.version, "hip", None):
        build = f"ROCm {torch.version.hip} build"
    else:
        build = "CPU build"
    return f"torch {version}, {build}"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(choice: str = "auto") -> str:
    """Turn a user's device choice into an available torch device string, or raise DeviceError.

    ``"auto"`` picks ``"cuda"`` if torch sees a CUDA GPU, then ``"mps"``, else ``"cpu"``;
    an explicit ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"cpu"`` is respected.
    """
    text = (choice or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if _mps_available():
            return "mps"
        return "cpu"
    if text == "cpu":
        return "cpu"
    if text == "cuda" or text.startswith("cuda:"):
        index: int | None = None
        if text != "cuda":
            suffix = text.split(":", 1)[1]
            if not suffix.isdigit():
                raise DeviceUnavailable(f"unknown device {choice!r}; use auto, cpu, cuda, cuda:N or mps")
            index = int(suffix)
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"CUDA was requested but no CUDA GPU is visible to torch ({_torch_build()})")
        count = torch.cuda.device_count()
        if index is not None and index >= count:
            raise DeviceUnavailable(
                f"CUDA device {index} was requested but torch sees only {count} CUDA GPU(s) "
                f"(cuda:0 to cuda:{count - 1})"
            )
        return text
    if text == "mps":
        if not _mps_available():
            mps = getattr(torch.backends, "mps", None)
            built = "yes" if mps is not None and mps.is_built() else "no"
            raise DeviceUnavailable(
                f"MPS (Apple GPU) was requested but it is not available ({_torch_build()}, MPS support: {built})"
            )
        return "mps"
    raise DeviceUnavailable(f"unknown device {choice!r}; use auto, cpu, cuda, cuda:N or mps")


def describe_device(choice: str = "auto") -> str:
    """The text of the dock's device label: ``CUDA: <name>``, ``MPS`` or ``CPU``; never raises."""
    try:
        device = resolve_device(choice)
    except DeviceError as exc:
        return f"unavailable: {exc}"
    except Exception as exc:  # noqa: BLE001 - a label must never take the dock down
        return f"unavailable: {exc}"
    try:
        if device.startswith("cuda"):
            index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
            return f"CUDA: {torch.cuda.get_device_name(index)}"
        if device == "mps":
            return "MPS"
        if (choice or "auto").strip().lower() == "auto":
            return f"CPU ({CPU_WARNING})"
        return "CPU"
    except Exception:  # noqa: BLE001
        return device.upper()


def available_devices() -> list[str]:
    """Choices for the device selector: ``auto``, each CUDA GPU, ``mps`` if present, and ``cpu``."""
    out = ["auto"]
    try:
        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            out += ["cuda"] if count == 1 else [f"cuda:{i}" for i in range(count)]
        if _mps_available():
            out.append("mps")
    except Exception:  # noqa: BLE001 - a broken driver still leaves auto and cpu
        log.debug("could not list accelerators", exc_info=True)
    out.append("cpu")
    return out


def autocast_dtype(device: str | torch.device) -> torch.dtype | None:
    """The reduced precision used on ``device``: bf16 on CUDA if supported else fp16, fp16 on MPS, None on CPU."""
    kind = torch.device(device).type
    if kind == "cuda":
        try:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        except Exception:  # noqa: BLE001
            return torch.float16
    if kind == "mps":
        return torch.float16
    return None


def autocast(device: str | torch.device, enabled: bool = True) -> ContextManager[Any]:
    """Mixed precision for the forward pass on a GPU (see :func:`autocast_dtype`); a no-op on CPU."""
    dtype = autocast_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def is_oom(exc: BaseException) -> bool:
    """True if ``exc`` is an accelerator out-of-memory error (CUDA or MPS)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def empty_cache(device: str | torch.device) -> None:
    """Give cached accelerator memory back after an OOM, so a smaller retry can fit."""
    kind = torch.device(device).type
    if kind in ("cuda", "mps"):
        gc.collect()
    try:
        if kind == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()
        elif kind == "mps" and _mps_available():
            torch.mps.empty_cache()
    except Exception:  # noqa: BLE001
        log.debug("could not empty the %s cache", kind, exc_info=True)


def run_with_oom_retry(
    fn: Callable[[S], T],
    sizes: Sequence[S],
    *,
    device: str | torch.device,
    message: str,
) -> T:
    """Call ``fn(size)`` for each size in order until one fits in memory; DeviceError if none does.

    Only out-of-memory errors trigger a retry; any other exception propagates at once.
    """
    sizes = list(sizes)
    if not sizes:
        raise ValueError("run_with_oom_retry needs at least one size")
    last_error = ""
    for i, size in enumerate(sizes):
        try:
            return fn(size)
        except Exception as exc:
            if not is_oom(exc):
                raise
            # keep only the text: the traceback holds the tensors that filled the memory
            text = str(exc).strip()
            last_error = text.splitlines()[0] if text else type(exc).__name__
        # outside the except block, so the failed attempt's tensors can be freed
        empty_cache(device)
        if i + 1 < len(sizes):
            log.warning("%s: out of memory on %s with %s; retrying with %s", message, device, size, sizes[i + 1])
    raise DeviceError(
        f"{message}: out of memory on {device} even with the smallest setting ({sizes[-1]}); "
        f"try a smaller window or patch size, close other GPU programs, or run on the CPU "
        f"(last error: {last_error})"
    )

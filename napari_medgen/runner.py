"""Run one family on validated inputs: the single path shared by the CLI and the docks.

Same family, same parameters, same seed -> the same result, wherever it is started.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
import traceback
from dataclasses import replace
from typing import Any, Callable

import numpy as np

from . import __version__
from .errors import Cancelled, FamilyError, MedGenError
from .family import Inputs, ModelFamily, Output, ProgressCallback, Result, RunContext, Task
from .validation import validate_inputs
from .volume import Volume

__all__ = ["run_family", "readonly_inputs"]

log = logging.getLogger("napari_medgen.runner")


def _readonly(volume: Volume | None) -> Volume | None:
    """A view of ``volume`` whose data cannot be written: families cannot modify inputs."""
    if volume is None:
        return None
    arr = np.asarray(volume.data).view()
    arr.setflags(write=False)
    return Volume(arr, volume.affine.copy(), name=volume.name, metadata=dict(volume.metadata))


def readonly_inputs(inputs: Inputs) -> Inputs:
    pts = None if inputs.points is None else np.array(inputs.points, dtype=float)
    return Inputs(
        image=_readonly(inputs.image),
        references=[_readonly(r) for r in inputs.references],
        points=pts,
        mask=_readonly(inputs.mask),
    )


def _check_result(family: ModelFamily, result: Any) -> Result:
    if not isinstance(result, Result) or not result.outputs:
        raise FamilyError(f"family {family.id!r} returned no result (a plugin bug: run() must return a Result)")
    for out in result.outputs:
        if not isinstance(out, Output) or not isinstance(out.volume, Volume):
            raise FamilyError(f"family {family.id!r} returned a malformed output {out!r}")
        data = np.asarray(out.volume.data)
        if data.ndim != 3:
            raise FamilyError(f"family {family.id!r} returned output '{out.name}' with shape {data.shape}, not 3D")
        if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
            raise FamilyError(f"family {family.id!r} returned NaN/Inf values in output '{out.name}'")
    return result


def run_family(
    family: ModelFamily,
    inputs: Inputs,
    params: dict[str, Any] | None = None,
    *,
    device: str = "auto",
    seed: int = 0,
    time_budget: float | None = None,
    progress: ProgressCallback | None = None,
    cancel_event: threading.Event | None = None,
    package: str = "",
    context: RunContext | None = None,
    metric: Callable[[dict[str, Any]], None] | None = None,
) -> Result:
    """Validate, run ``family`` and stamp every output with a provenance record.

    Raises :class:`InputError`/:class:`ParamError` for bad input, :class:`Cancelled` when
    cancelled, and :class:`FamilyError` when the family itself fails. Inputs are passed
    read-only, so a family can never modify the user's data.
    """
    resolved = family.resolve_params(params)
    validate_inputs(family, inputs)
    from .engine.device import describe_device, resolve_device

    dev = resolve_device(device)
    ctx = context or RunContext(
        device=dev,
        seed=seed,
        time_budget=time_budget,
        progress=progress,
        cancel_event=cancel_event,
        metric=metric,
    )
    ctx.device = dev
    started = _dt.datetime.now(_dt.timezone.utc)
    ro = readonly_inputs(inputs)
    try:
        result = family.run(ro, dict(resolved), ctx)
        ctx.check_cancelled()
    except Cancelled:
        raise
    except MedGenError:
        raise
    except Exception as exc:  # a bug or failure inside the family: report it, never crash the host
        log.debug("family %s failed:\n%s", family.id, traceback.format_exc())
        raise FamilyError(f"family {family.id!r} failed: {type(exc).__name__}: {exc}") from exc
    result = _check_result(family, result)
    provenance = {
        "family": family.id,
        "family_version": family.version,
        "package": package,
        "task": Task(family.task).value,
        "params": resolved,
        "seed": int(seed),
        "device": dev,
        "device_description": describe_device(dev),
        "elapsed_s": round(ctx.elapsed, 3),
        "started": started.isoformat(timespec="seconds"),
        "input": inputs.image.name,
        "references": [r.name for r in inputs.references],
        "n_points": 0 if inputs.points is None else int(np.asarray(inputs.points).reshape(-1, 3).shape[0]),
        "mask": None if inputs.mask is None else inputs.mask.name,
        "napari_medgen_version": __version__,
        "intended_use": family.intended_use,
    }
    result.info.setdefault("provenance", provenance)
    for out in result.outputs:
        meta = dict(out.volume.metadata)
        meta["medgen"] = dict(provenance, output=out.name, kind=out.kind)
        out.volume = replace(out.volume, metadata=meta)
    return result


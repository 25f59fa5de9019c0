"""Run one family on validated inputs: the single path shared by the CLI and the docks.

Same family, same parameters, same seed -> the same result, wherever it is started.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import threading
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import __version__
from .errors import Cancelled, FamilyError, MedGenError, ParamError
from .family import Inputs, ModelFamily, Output, ProgressCallback, Result, RunContext, Task
from .validation import validate_inputs
from .volume import Volume

__all__ = ["run_family", "readonly_inputs", "preflight", "source_of", "input_files"]

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


def source_of(volume: Volume | None) -> dict[str, Any]:
    """Where a volume was read from: its file, or its DICOM folder and series (for provenance)."""
    if volume is None:
        return {}
    meta = volume.metadata or {}
    nifti, dicom = meta.get("nifti") or {}, meta.get("dicom") or {}
    if nifti.get("source_path"):
        return {"path": str(nifti["source_path"])}
    if dicom:
        keys = ("source_folder", "series_instance_uid", "series_number", "series_description", "n_slices")
        return {k: dicom[k] for k in keys if dicom.get(k) not in (None, "")}
    return {}


def input_files(inputs: Inputs) -> list[tuple[str, str]]:
    """``(role, path)`` of every file the run's volumes were read from: what no output may replace."""
    volumes = [("input", inputs.image)] + [(f"reference {i + 1}", r) for i, r in enumerate(inputs.references)]
    volumes.append(("mask", inputs.mask))
    return [(role, src["path"]) for role, vol in volumes if (src := source_of(vol)).get("path")]


def preflight(
    family: ModelFamily,
    params: dict[str, Any] | None = None,
    *,
    outputs: Sequence[str | os.PathLike] = (),
    output_roles: Sequence[str] | None = None,
    protected: Sequence[tuple[str, str | os.PathLike]] = (),
    overwrite: bool = False,
    expected_bytes: Sequence[int] | None = None,
    hint: str = "use --overwrite to replace it",
) -> tuple[dict[str, Any], list[Path]]:
    """Every check that can fail before compute: parameters and every file the run reads or writes.

    Parameters are parsed and range-checked; a path parameter that reads must name an existing
    file; ``outputs`` and the files of path parameters that write go through
    :func:`napari_medgen.io.output.check_outputs` against ``protected`` (the run's inputs) and
    the files the parameters read. Returns the resolved parameters and the outputs' real paths.
    """
    from .io.output import check_outputs

    resolved = family.resolve_params(params)
    reads: list[tuple[str, Any]] = []
    writes: list[tuple[str, Any]] = []
    for p in family.params:
        files = p.files(resolved.get(p.name))
        if p.path == "write":
            writes += [(p.name, path) for path in files]
        elif files:
            given = Path(str(resolved[p.name]).strip()).expanduser()
            if not (given.is_file() or files[0].is_file()):
                raise ParamError(f"{p.name}: the file {str(given)!r} does not exist")
            reads += [(p.name, path) for path in [given, *files] if path.is_file()]
    roles = list(output_roles) if output_roles is not None else ["output"] * len(outputs)
    guarded = list(protected) + reads
    finals = check_outputs(
        list(outputs), guarded, overwrite=overwrite, expected_bytes=expected_bytes, hint=hint, roles=roles
    )
    # files the family writes itself (a saved model): their folder may be new, the family creates it
    check_outputs(
        [path for _, path in writes],
        guarded + list(zip(roles, finals)),
        overwrite=overwrite,
        create_dirs=True,
        hint=hint,
        roles=[f"{name} file" for name, _ in writes],
    )
    return resolved, finals


def _check_result(family: ModelFamily, result: Any) -> Result:
    if not isinstance(result, Result) or not result.outputs:
        raise FamilyError(f"family {family.id!r} returned no result (a plugin bug: run() must return a Result)")
    declared = [o.name for o in family.outputs]
    names = [getattr(o, "name", None) for o in result.outputs]
    if declared and not set(names) <= set(declared):
        raise FamilyError(
            f"family {family.id!r} returned outputs {names} but declares {declared} (a plugin bug)"
        )
    if not declared and len(result.outputs) != 1:
        raise FamilyError(
            f"family {family.id!r} returned {len(result.outputs)} outputs but declares none "
            "(a plugin bug: a family with several outputs lists them in ModelFamily.outputs)"
        )
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
    overwrite: bool = False,
    protected: Sequence[tuple[str, str | os.PathLike]] = (),
) -> Result:
    """Validate, run ``family`` and stamp every output with a provenance record.

    Raises :class:`InputError`/:class:`ParamError` for bad input, :class:`Cancelled` when
    cancelled, and :class:`FamilyError` when the family itself fails. Inputs are passed
    read-only, so a family can never modify the user's data. Files the family itself writes
    (path parameters such as ``save_model``) are checked before compute against the inputs'
    files and ``protected``, and replace existing files only with ``overwrite``.
    """
    resolved, _ = preflight(family, params, protected=input_files(inputs) + list(protected), overwrite=overwrite)
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
    ctx.overwrite = bool(overwrite)
    import torch  # already imported by the device module

    # the weights a family initialises before training draw from torch's global generator: seeded here,
    # a step-limited run is the same run every time (the trainer seeds again for its own draws)
    torch.manual_seed(int(ctx.seed))
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
        "time_budget": time_budget,
        "device": dev,
        "device_description": describe_device(dev),
        "elapsed_s": round(ctx.elapsed, 3),
        "started": started.isoformat(timespec="seconds"),
        "input": inputs.image.name,
        "input_source": source_of(inputs.image),
        "references": [r.name for r in inputs.references],
        "reference_sources": [source_of(r) for r in inputs.references],
        "n_points": 0 if inputs.points is None else int(np.asarray(inputs.points).reshape(-1, 3).shape[0]),
        "mask": None if inputs.mask is None else inputs.mask.name,
        "napari_medgen_version": __version__,
        "intended_use": family.intended_use,
    }
    if result.info.get("fallback"):  # the output is not what the family's model makes (e.g. plain interpolation)
        provenance["fallback"] = str(result.info["fallback"])
    from .commands import command_fields  # the `medgen run` line that repeats this run, and its placeholders

    provenance.update(command_fields(provenance, family, inputs))
    result.info.setdefault("provenance", provenance)
    for out in result.outputs:
        meta = dict(out.volume.metadata)
        meta["medgen"] = dict(provenance, output=out.name, kind=out.kind)
        out.volume = replace(out.volume, metadata=meta)
    return result


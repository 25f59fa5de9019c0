"""The ``medgen run ...`` line that repeats a run: "Copy as command" in the docks, ``command`` in provenance.

A run started in the viewer can be repeated on a cohort from a shell. :func:`build_command`
turns what a run used (task, family, every parameter, seed, device, time budget and the files
behind its input layers) into one POSIX shell line (quoted with :func:`shlex.join`)::

    medgen run TASK INPUT -o OUTPUT --family ID --param k=v ... --seed N --device D
               [--time-budget S] [--reference R ...] [--mask M] [--points P] [--series UID]

Every parameter is written out, defaults included, so a later change of a family's defaults
does not change what the line runs; each value is written so that :meth:`Param.parse` reads
it back to the same value (``true``/``false``, floats at full precision, ``auto``). An empty
file parameter is left out (it means "no file").

A layer with no file behind it (made in the viewer, a sample, the result of an earlier run)
cannot be named on a command line: the line names a placeholder instead (``<layer>.nii.gz``,
quoted, so a shell never reads it as a redirection) and :attr:`Command.placeholders` says
which, so that the dock can ask the user to save the layer first. The output is a suggestion
(``<input stem>_<task>.nii.gz`` beside the input) for the user to edit; the CLI records its
real ``-o``.

No Qt and no napari here: the runner (provenance), the CLI (sidecar) and the docks share it.
"""

from __future__ import annotations

import numbers
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Mapping, Sequence

import numpy as np

from .family import AUTO, Param

__all__ = [
    "Command",
    "build_command",
    "run_command",
    "command_from_provenance",
    "command_fields",
    "format_param",
    "volume_source",
    "default_output",
    "placeholder_note",
]

PROGRAM = ("medgen", "run")


@dataclass(frozen=True)
class Command:
    """A ``medgen run`` command: the shell ``line``, its ``argv`` and the placeholders it names.

    Each placeholder is a dict: ``role`` (``input``, ``reference N``, ``mask`` or ``points``),
    ``layer`` (the layer's name; "" when unknown), ``placeholder`` (the text on the line) and
    ``hint`` (what the user should do, in words).
    """

    line: str
    argv: tuple[str, ...]
    output: str
    placeholders: tuple[dict[str, str], ...] = field(default_factory=tuple)

    @property
    def complete(self) -> bool:
        """True when every input of the line is a real file (no placeholder to replace)."""
        return not self.placeholders


# -- values ------------------------------------------------------------------------------------
def format_param(value: Any, param: Param | None = None) -> str:
    """``value`` as the text ``--param k=TEXT`` carries; ``param.parse(TEXT)`` gives ``value`` back.

    Booleans are ``true``/``false``, integers plain, floats at full (``repr``) precision,
    "auto" as ``auto``, text and file names as they are.
    """
    kind = param.kind if param is not None else None
    if isinstance(value, str):
        if param is not None and param.auto and value.strip().lower() == AUTO:
            return AUTO
        return value
    if isinstance(value, (bool, np.bool_)):
        return "true" if bool(value) else "false"
    if isinstance(value, PurePath):
        return str(value)
    if kind == "int" or (kind is None and isinstance(value, numbers.Integral)):
        return str(int(value))
    if kind == "float" or kind is None:
        try:
            return repr(float(value))  # the shortest text that float() reads back exactly
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def _path_arg(path: str) -> str:
    """A path as one argument: a relative path starting with '-' would read as an option."""
    return f".{os.sep}{path}" if path.startswith("-") else path


def _placeholder_name(name: str) -> str:
    return f"<{name or 'layer'}>"


def _safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "scan"


def _strip_volume_suffix(name: str) -> str:
    low = name.lower()
    for ext in (".nii.gz", ".nii", ".hdr.gz", ".img.gz", ".hdr", ".img", ".dcm"):
        if low.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


def default_output(input_arg: str, task: str, *, placeholder: str | None = None) -> str:
    """The suggested ``-o``: ``<input stem>_<task>.nii.gz`` beside the input (file or DICOM folder).

    ``placeholder`` (a layer's name): the input has no file, so the output goes to the
    current folder as ``<layer>_<task>.nii.gz``.
    """
    if placeholder is not None:
        return f"{_safe_stem(placeholder)}_{task}.nii.gz"
    path = input_arg.rstrip("/" + os.sep) or input_arg
    head, tail = os.path.split(path)
    stem = _strip_volume_suffix(tail) or "scan"
    return os.path.join(head, f"{stem}_{task}.nii.gz") if head else f"{stem}_{task}.nii.gz"


# -- where the volumes came from ---------------------------------------------------------------
def volume_source(volume: Any) -> dict[str, Any]:
    """The file behind a volume for a command line: ``{"path"}``, a DICOM folder and series, or ``{}``.

    Like :func:`napari_medgen.runner.source_of`, plus ``several_series`` for a DICOM folder
    that held more than the series read. The result of an earlier run has no file behind it
    even though its metadata still names the scan it was computed from: ``{}``.
    """
    if volume is None:
        return {}
    from .runner import source_of

    meta = getattr(volume, "metadata", None) or {}
    if meta.get("medgen"):  # a MedGen result: its data are not those of the file it remembers
        return {}
    source = dict(source_of(volume))
    dicom = meta.get("dicom") or {}
    if "path" not in source and source.get("source_folder"):
        source["several_series"] = bool(dicom.get("other_series"))
    return source


def _file_arg(source: Mapping[str, Any] | None) -> str | None:
    """The path a source names (a file, or a DICOM folder), or None (no file behind it)."""
    source = source or {}
    path = source.get("path") or source.get("source_folder")
    return str(path) if path else None


# -- the command ------------------------------------------------------------------------------
def build_command(
    task: str,
    family_id: str,
    params: Mapping[str, Any],
    *,
    param_specs: Sequence[Param] = (),
    seed: int = 0,
    device: str = "auto",
    time_budget: float | None = None,
    input_source: Mapping[str, Any] | None = None,
    input_name: str = "",
    reference_sources: Sequence[Mapping[str, Any]] = (),
    reference_names: Sequence[str] = (),
    mask_source: Mapping[str, Any] | None = None,
    mask_name: str | None = None,
    points: bool | int = False,
    points_path: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    extra_args: Sequence[str] = (),
) -> Command:
    """The ``medgen run`` command repeating a run, and the placeholders it names.

    ``*_source`` are :func:`volume_source` (or :func:`~napari_medgen.runner.source_of`) dicts:
    an empty one means no file, and the layer's name (``*_name``) becomes a placeholder.
    ``mask_name`` None: the run had no mask. ``points``: the run had points (a count or a
    flag); ``points_path`` names their CSV, else a placeholder does. ``param_specs`` (the
    family's :class:`Param` list) orders the parameters and tells which are files; without it
    values are formatted by their type. ``output`` None: :func:`default_output`.
    ``extra_args`` go last (e.g. the CLI's ``--mask-output PATH``).
    """
    task = str(getattr(task, "value", task))
    placeholders: list[dict[str, str]] = []

    def volume_arg(role: str, source: Mapping[str, Any] | None, name: str, may_choose_series: bool) -> str:
        path = _file_arg(source)
        if path is None:
            text = f"{_placeholder_name(name)}.nii.gz"
            placeholders.append({
                "role": role, "layer": name, "placeholder": text,
                "hint": f"save layer '{name}' to a file first (File > Save Selected Layers) and put its path "
                f"in place of {text}",
            })
            return text
        if not may_choose_series and (source or {}).get("several_series"):
            series = (source or {}).get("series_number") or (source or {}).get("series_instance_uid") or "?"
            placeholders.append({
                "role": role, "layer": name, "placeholder": path,
                "hint": f"the {role} is series {series} of the DICOM folder {path}, which holds several "
                "series; only the input can choose a series (--series): save layer "
                f"'{name}' as NIfTI (File > Save Selected Layers) and put its path in place of the folder",
            })
        return _path_arg(path)

    specs = {p.name: p for p in param_specs}
    names = [p.name for p in param_specs if p.name in params] + [k for k in params if k not in specs]
    param_args: list[str] = []
    for name in names:
        spec = specs.get(name)
        value = params[name]
        if spec is not None and spec.path and not str(value or "").strip():
            continue  # no file: the same as leaving it out
        param_args += ["--param", f"{name}={format_param(value, spec)}"]

    input_arg = volume_arg("input", input_source, input_name or "input", True)
    is_placeholder = bool(placeholders)
    if output is None:
        out = default_output(input_arg, task, placeholder=(input_name or "input") if is_placeholder else None)
    else:
        out = os.fspath(output)

    argv: list[str] = [*PROGRAM, task, input_arg, "-o", _path_arg(out), "--family", str(family_id)]
    argv += param_args
    argv += ["--seed", str(int(seed)), "--device", str(device or "auto")]
    if time_budget is not None:
        argv += ["--time-budget", format_param(float(time_budget))]
    names_ref = list(reference_names) + [""] * max(0, len(reference_sources) - len(reference_names))
    for i, (source, name) in enumerate(zip(reference_sources, names_ref)):
        argv += ["--reference", volume_arg(f"reference {i + 1}", source, name or f"reference {i + 1}", False)]
    if mask_name is not None or mask_source:
        argv += ["--mask", volume_arg("mask", mask_source, mask_name or "mask", False)]
    if points_path is not None:
        argv += ["--points", _path_arg(os.fspath(points_path))]
    elif points:
        text = "<points>.csv"
        count = f"the {int(points)} points" if not isinstance(points, bool) else "the points"
        placeholders.append({
            "role": "points", "layer": "", "placeholder": text,
            "hint": f"write {count} of the Points layer to a CSV with header x,y,z (world mm, RAS+) or i,j,k "
            f"(voxel indices of the input file) and put its path in place of {text}",
        })
        argv += ["--points", text]
    src = input_source or {}
    dicom_input = not is_placeholder and "path" not in src and src.get("source_folder")
    if dicom_input and src.get("several_series", True):  # unknown: named anyway, it reads the same series
        uid = src.get("series_instance_uid") or src.get("series_number")
        if uid not in (None, ""):
            argv += ["--series", str(uid)]
    argv += [str(a) for a in extra_args]
    return Command(line=shlex.join(argv), argv=tuple(argv), output=out, placeholders=tuple(placeholders))


def run_command(task: str, family_id: str, params: Mapping[str, Any], **kwargs: Any) -> str:
    """The shell line of :func:`build_command` (same arguments)."""
    return build_command(task, family_id, params, **kwargs).line


def command_from_provenance(
    provenance: Mapping[str, Any],
    family: Any = None,
    *,
    output: str | os.PathLike | None = None,
    points_path: str | os.PathLike | None = None,
    extra_args: Sequence[str] = (),
    sources: Mapping[str, Any] | None = None,
) -> Command:
    """The command of a provenance record (:func:`napari_medgen.runner.run_family`'s).

    ``family`` (a :class:`~napari_medgen.family.ModelFamily`): its parameter list orders and
    types the values. ``sources`` overrides the record's sources (keys ``input``,
    ``references``, ``mask``), as :func:`command_fields` does with :func:`volume_source`.
    """
    sources = dict(sources or {})
    prov = dict(provenance)
    mask_name = prov.get("mask")
    return build_command(
        str(prov.get("task", "")),
        str(prov.get("family", "")),
        dict(prov.get("params") or {}),
        param_specs=tuple(getattr(family, "params", ()) or ()),
        seed=int(prov.get("seed", 0) or 0),
        device=str(prov.get("device") or "auto"),
        time_budget=prov.get("time_budget"),
        input_source=sources.get("input", prov.get("input_source") or {}),
        input_name=str(prov.get("input") or ""),
        reference_sources=list(sources.get("references", prov.get("reference_sources") or [])),
        reference_names=[str(n) for n in prov.get("references") or []],
        mask_source=sources.get("mask", prov.get("mask_source") or {}),
        mask_name=None if mask_name is None else str(mask_name),
        points=int(prov.get("n_points") or 0),
        points_path=points_path,
        output=output,
        extra_args=extra_args,
    )


def command_fields(provenance: Mapping[str, Any], family: Any, inputs: Any, **kwargs: Any) -> dict[str, Any]:
    """``{"command": line, "command_placeholders": [...]}`` for a run's provenance record.

    ``inputs`` (:class:`~napari_medgen.family.Inputs`) give the files behind the volumes
    (:func:`volume_source`); the record gives the rest. ``kwargs`` (``output``,
    ``points_path``, ``extra_args``) go to :func:`command_from_provenance`: the CLI names
    its real ``-o`` and points file.
    """
    sources = {
        "input": volume_source(inputs.image),
        "references": [volume_source(r) for r in inputs.references],
        "mask": volume_source(inputs.mask),
    }
    command = command_from_provenance(provenance, family, sources=sources, **kwargs)
    return {"command": command.line, "command_placeholders": [dict(p) for p in command.placeholders]}


def placeholder_note(placeholders: Sequence[Mapping[str, Any]]) -> str:
    """What to do before the line runs, in words ("" when it names no placeholder)."""
    if not placeholders:
        return ""
    hints = "; ".join(str(p.get("hint") or f"replace {p.get('placeholder')}") for p in placeholders)
    return f"the command names a placeholder: {hints}"

"""``medgen``: the same families as the docks, headless.

    medgen families [--json] [--task TASK]
    medgen run TASK INPUT -o OUTPUT [--family ID] [--reference PATH ...] [--points CSV]
               [--mask PATH] [--param KEY=VALUE ...] [--device auto|cpu|cuda|mps] [--seed N]
               [--overwrite] [--series UID|NUMBER] [--regions-output CSV] [-q]
    medgen run lesion INPUT -o FOLDER/ [--count N] [--variants V] [--seed S] ...

Batch mode (task lesion; ``--variants V`` > 1 or ``-o`` a folder): variant k (1..V) is run with
seed S+k-1 and written as ``FOLDER/<stem>_lesions_vK.nii.gz`` + ``..._vK_mask.nii.gz``; one
``<stem>_lesions.csv`` lists every lesion of every variant and ``<stem>_lesions.medgen.json``
holds each variant's run record. Variants are committed one by one: a cancel or a failure
keeps the variants already done (and says so), with the table and sidecar covering them.

User mistakes end with one line on stderr and a documented exit code, never a traceback.
Everything that can be checked is checked before any compute (parameters, every output place);
outputs are written atomically and together (see :mod:`napari_medgen.io.output`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__
from .errors import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Cancelled,
    InputError,
    MedGenError,
    ParamError,
)
from .family import Inputs, OutputSpec, Task
from .io.read import one_line

__all__ = [
    "main", "build_parser", "read_points_csv", "output_paths", "regions_table_path", "EXIT_CODES",
    "batch_paths", "lesion_rows", "lesions_csv_bytes", "LESION_COLUMNS",
]

EXIT_CODES = f"""exit codes:
  {EXIT_OK:<4}done
  {EXIT_USAGE:<4}the command line or an input is wrong (nothing ran, nothing was written)
  {EXIT_FAILED:<4}a run failed (nothing was written, earlier files are intact)
  {EXIT_CANCELLED:<4}interrupted (Ctrl-C); nothing was written
  (batch mode, --variants: the variants finished before a failure or Ctrl-C are kept, with
  the lesion table and sidecar for them, and the message says which)
"""


def _task_help() -> str:
    return ", ".join(t.value for t in Task)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medgen",
        description="Generative models for 3D medical volumes (napari-medgen). Research use only.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"napari-medgen {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    fam = sub.add_parser(
        "families", help="list installed model families and plugin errors",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fam.add_argument("--json", action="store_true", help="machine-readable output")
    fam.add_argument("--task", choices=[t.value for t in Task], help="only families of this task")

    from .cli_plugins import add_parser as add_plugins_parser

    add_plugins_parser(sub, EXIT_CODES)
    from .cli_batch import add_parser as add_batch_parser

    add_batch_parser(sub, EXIT_CODES)

    run = sub.add_parser(
        "run", help="run a family on a NIfTI file (or DICOM series folder)",
        description="Run one model family on one scan and write its outputs (NIfTI) and a provenance "
        "sidecar (<stem>.medgen.json). Every output place is checked before any compute; an output "
        "that is one of the run's inputs is always refused.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("task", choices=[t.value for t in Task], help=f"one of {_task_help()}")
    run.add_argument("input", type=Path, help="input .nii/.nii.gz file or DICOM series folder")
    run.add_argument("-o", "--output", required=True,
                     help="output .nii/.nii.gz file; a family's other outputs go beside it as "
                     "<stem>_<name>.nii.gz (batch mode, task lesion: a folder, created if missing)")
    run.add_argument("--family", help="family id (default: the task's first family; see `medgen families`)")
    run.add_argument("--reference", type=Path, nargs="+", action="extend", default=[], metavar="PATH",
                     help="reference volume(s): --reference a.nii.gz b.nii.gz (or the flag repeated)")
    run.add_argument("--points", type=Path, help="CSV with header x,y,z (world mm) or i,j,k (voxel indices)")
    run.add_argument("--mask", type=Path, help="mask/label volume on the input's grid")
    run.add_argument("--mask-output", type=Path, help="lesion task: where to write the lesion mask")
    run.add_argument("--regions-output", type=Path, metavar="CSV",
                     help="anomaly task: where to write the candidate regions table (default: <stem>_regions.csv "
                     "beside the heatmap, for a family with a 'regions' output)")
    run.add_argument("--series", help="DICOM input folder with several series: the SeriesInstanceUID or "
                     "series number to read (default: refuse and list them)")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="family parameter")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    run.add_argument("--seed", type=int, default=0,
                     help="random seed (default 0); batch mode: variant k uses seed+k-1")
    run.add_argument("--count", type=int, metavar="N",
                     help="task lesion: number of lesions per output (sets the family parameter n_lesions)")
    run.add_argument("--variants", type=int, default=1, metavar="V",
                     help="task lesion: write V image + mask pairs into the folder -o (seeds "
                     "seed..seed+V-1), a table <stem>_lesions.csv of every lesion (variant, seed, files, "
                     "label, centre as file voxel i,j,k and world x,y,z mm RAS+, volume_mm3 and the family's "
                     "lesion fields) and one provenance sidecar <stem>_lesions.medgen.json (default 1: one "
                     "run, -o a file). -o a folder (existing, or ending in '/') also selects batch mode")
    run.add_argument("--time-budget", type=float, default=None, help="seconds of training allowed (learned families)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace output files that exist (default: refuse before any compute); "
                     "an output that is an input is refused even so")
    run.add_argument("-q", "--quiet", action="store_true",
                     help="only errors and warnings about the result (no progress, no list of files written)")
    return parser


# -- helpers -----------------------------------------------------------------------
def read_points_csv(path: Path, volume) -> np.ndarray:
    """Points from a CSV with header ``x,y,z`` (world mm) or ``i,j,k`` (the file's voxels)."""
    from .io.nifti import nifti_ijk_to_index, world_xyz_to_index

    if not path.exists():
        raise InputError(f"points file {str(path)!r} does not exist")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        rows = list(reader)
    if {"x", "y", "z"} <= set(header):
        keys, convert = ("x", "y", "z"), world_xyz_to_index
    elif {"i", "j", "k"} <= set(header):
        keys, convert = ("i", "j", "k"), nifti_ijk_to_index
    else:
        raise InputError(f"points file {str(path)!r} needs a header x,y,z (world mm) or i,j,k (voxel indices)")
    values = []
    for n, row in enumerate(rows, start=2):
        row = {k.strip().lower(): v for k, v in row.items() if k}
        try:
            values.append([float(row[k]) for k in keys])
        except (TypeError, ValueError):
            raise InputError(f"points file {str(path)!r}, line {n}: expected three numbers") from None
    if not values:
        raise InputError(f"points file {str(path)!r} has no points")
    return np.asarray(convert(volume, np.asarray(values, dtype=float)), dtype=float)


def parse_params(pairs: Sequence[str], family) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ParamError(f"--param expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = family.param(key.strip()).parse(value)
    return out


def _stem(path: Path) -> tuple[Path, str]:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)]), ext
    return path, ".nii.gz"


def output_paths(output: Path, specs: Sequence[OutputSpec], mask_output: Path | None) -> list[Path]:
    """The first output goes to ``output``; others to ``<stem>_<name><ext>`` (mask: ``--mask-output``)."""
    if not output.name.endswith((".nii", ".nii.gz")):
        raise InputError(f"output {str(output)!r} must end in .nii or .nii.gz")
    stem, ext = _stem(output)
    paths = [output]
    for spec in specs[1:]:
        if mask_output is not None and spec.kind == "labels" and spec.name == "mask":
            paths.append(mask_output)
        else:
            paths.append(stem.with_name(f"{stem.name}_{spec.name}{ext}"))
    return paths


def _has_regions(specs: Sequence[OutputSpec]) -> bool:
    return any(spec.kind == "labels" and spec.name == "regions" for spec in specs)


def regions_table_path(output: Path, specs: Sequence[OutputSpec], regions_output: Path | None) -> Path | None:
    """Where the regions table goes: ``regions_output``, else ``<stem>_regions.csv`` (None: no regions).

    A family has a table when it declares a labels output named ``regions`` (the anomaly
    convention, :mod:`napari_medgen.regions`).
    """
    if not _has_regions(specs):
        return None
    if regions_output is not None:
        return regions_output
    stem, _ = _stem(output)
    return stem.with_name(f"{stem.name}_regions.csv")


def _regions_table(result) -> bytes:
    """The regions CSV of a result: ``info["regions"]``, or described from its regions and heatmap outputs."""
    from .regions import describe_regions, regions_csv_bytes

    regions = result.info.get("regions")
    if regions is None:
        by_name = {o.name: o for o in result.outputs}
        heat = next((o for o in result.outputs if o.kind == "heatmap"), None)
        labels = by_name.get("regions")
        regions = [] if heat is None or labels is None else describe_regions(
            labels.volume.data, heat.volume.data, heat.volume
        )
    return regions_csv_bytes(regions)


def sidecar_path(output: Path) -> Path:
    """``<stem>.medgen.json`` beside the first output: the run's provenance record."""
    stem, _ = _stem(output)
    return stem.with_name(stem.name + ".medgen.json")


class _Progress:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int, message: str) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if now - self.last < (0.2 if self.tty else 5.0) and done < total:
            return
        self.last = now
        pct = 100.0 * done / max(total, 1)
        line = f"[{pct:5.1f}%] {message}"
        if self.tty:
            sys.stderr.write("\r" + line[:100].ljust(100))
            if done >= total:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


# -- commands ----------------------------------------------------------------------
def cmd_families(args: argparse.Namespace) -> int:
    from .registry import get_registry

    reg = get_registry()
    entries = reg.families(args.task)
    if args.json:
        rows = [e.to_dict() for e in entries]
        rows += [
            {"id": err.family_id, "task": None, "version": None, "package": err.package, **err.to_dict()}
            for err in reg.errors
        ]
        print(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    if not entries:
        print("no model families installed")
    width = max([len(e.id) for e in entries] + [10])
    for task in Task:
        group = [e for e in entries if e.task == task]
        if not group:
            continue
        print(f"{task.title} ({task.value}):")
        for e in group:
            gpu = "  [GPU recommended]" if e.family.wants_gpu else ""
            print(f"  {e.id:<{width}}  {e.family.version:<8} {e.package or e.plugin:<18} {e.family.display_name}{gpu}")
    for err in reg.errors:
        print(f"medgen: warning: plugin {err.plugin!r} ({err.package or 'unknown package'}): {err.message}",
              file=sys.stderr)
    return EXIT_OK


def _protected(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """Every file the run reads, by role: no output may be one of them."""
    files = [("input", args.input)]
    files += [(f"reference {i + 1}", p) for i, p in enumerate(args.reference)]
    files += [(role, p) for role, p in (("mask", args.mask), ("points", args.points)) if p is not None]
    return files


def _read_inputs(args: argparse.Namespace) -> Inputs:
    """The run's input, references, mask and points, read after every output place was checked."""
    from .io.read import read_volume
    from .masks import mask_input

    image = read_volume(args.input, role="input", series=args.series)
    refs = [read_volume(p, role=f"reference {i + 1}") for i, p in enumerate(args.reference)]
    mask = read_volume(args.mask, role="mask") if args.mask else None
    if mask is not None:
        mask = mask_input(mask)
    points = read_points_csv(args.points, image) if args.points else None
    return Inputs(image=image, references=refs, points=points, mask=mask)


def _expected_bytes(image, paths: Sequence[Path]) -> list[int]:
    """A cheap lower bound of each output's size: the input's voxels as float32 (gzip: a quarter)."""
    raw = int(np.prod(image.shape)) * 4
    return [raw // 4 if p.name.endswith(".gz") else raw for p in paths]


def _family_params(args: argparse.Namespace, family) -> dict[str, Any]:
    """``--param`` pairs parsed by the family, with ``--count`` as ``n_lesions``."""
    params = parse_params(args.param, family)
    count = getattr(args, "count", None)
    if count is None:
        return params
    if not any(p.name == "n_lesions" for p in family.params):
        raise InputError(
            f"--count: family {family.id!r} has no 'n_lesions' parameter (the number of lesions); "
            "leave --count out or choose another family"
        )
    if count < 1:
        raise InputError(f"--count must be at least 1, got {count}")
    if "n_lesions" in params and int(params["n_lesions"]) != count:
        raise InputError(
            f"--count {count} and --param n_lesions={params['n_lesions']} disagree; give only one of them"
        )
    return {**params, "n_lesions": count}


class _sigint_cancels:
    """While active (main thread only): the first Ctrl-C sets ``event``, the second aborts."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.old: Any = None

    def _handler(self, signum, frame):
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()
        print("\ncancelling...", file=sys.stderr)

    def __enter__(self) -> "_sigint_cancels":
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)


def _planned(family, specs: Sequence[OutputSpec], result, finals: Sequence[Path]) -> list[tuple[Path, Any]]:
    """(file, output) for each declared output the result holds (an undeclared one goes to the first file)."""
    if family.outputs:
        by_name = {o.name: o for o in result.outputs}
        return [(path, by_name[spec.name]) for spec, path in zip(specs, finals) if spec.name in by_name]
    return [(finals[0], result.outputs[0])]


def _warn_count(result, count: int | None, where: str = "") -> bool:
    """Warn when a result holds another number of lesions than ``--count`` asked for; True if it did."""
    lesions = result.info.get("lesions")
    if count is None or not isinstance(lesions, (list, tuple)) or len(lesions) == count:
        return False
    print(f"medgen: warning: {where}{len(lesions)} lesion(s), not the {count} of --count "
          "(the family placed one lesion per given point?)", file=sys.stderr)
    return True


def _is_batch(args: argparse.Namespace, raw_output: str) -> bool:
    """Batch mode: ``--variants`` > 1, or ``-o`` an existing folder or a name ending in a separator."""
    seps = tuple({"/", os.sep} | ({os.altsep} if os.altsep else set()))
    return args.variants > 1 or raw_output.endswith(seps) or Path(raw_output).is_dir()


def cmd_run(args: argparse.Namespace) -> int:
    from .io.nifti import nifti_output
    from .io.output import OutputTransaction, check_free_space, json_writer
    from .registry import get_registry
    from .runner import preflight, run_family

    raw_output = os.fspath(args.output)
    args.output = Path(raw_output)
    task = Task(args.task)
    if args.variants < 1:
        raise InputError(f"--variants must be at least 1, got {args.variants}")
    if task is not Task.LESION:
        if args.count is not None:
            raise InputError(f"--count (lesions per output) is only for task lesion, not {task.value}")
        if args.variants > 1:
            raise InputError(f"--variants (batch of lesion images) is only for task lesion, not {task.value}")
    elif _is_batch(args, raw_output):
        return _cmd_run_batch(args, raw_output)
    reg = get_registry()
    entry = reg.get(args.family, task) if args.family else reg.default(task)
    family = entry.family
    # -- before any compute: parameters, every output place, then the inputs themselves
    specs = list(family.outputs) or [OutputSpec("image")]
    if args.mask_output is not None and not any(s.kind == "labels" and s.name == "mask" for s in specs):
        raise InputError(f"--mask-output: family {family.id!r} writes no mask")
    if args.regions_output is not None and not _has_regions(specs):
        raise InputError(f"--regions-output: family {family.id!r} writes no candidate regions")
    paths = output_paths(args.output, specs, args.mask_output)
    table = regions_table_path(args.output, specs, args.regions_output)
    tables = [table] if table is not None else []
    side = sidecar_path(args.output)
    roles = [f"output '{s.name}'" if i else "output" for i, s in enumerate(specs)]
    protected = _protected(args)
    params, finals = preflight(
        family,
        _family_params(args, family),
        outputs=[*paths, *tables, side],
        output_roles=[*roles, *["regions table"] * len(tables), "sidecar"],
        protected=protected,
        overwrite=args.overwrite,
    )
    table_final = finals[len(paths)] if tables else None
    inputs = _read_inputs(args)
    image = inputs.image
    check_free_space(paths, _expected_bytes(image, paths))

    cancel = threading.Event()
    with _sigint_cancels(cancel):  # first Ctrl-C cancels cleanly, the second aborts
        result = run_family(
            family,
            inputs,
            params,
            device=args.device,
            seed=args.seed,
            time_budget=args.time_budget,
            progress=_Progress(args.quiet),
            cancel_event=cancel,
            package=entry.package,
            overwrite=args.overwrite,
            protected=protected + list(zip(roles, paths)) + [("regions table", t) for t in tables],
        )
    planned = _planned(family, specs, result, finals)
    record = dict(result.info)
    record["outputs"] = {out.name: str(path) for path, out in planned}
    prov = record.get("provenance")
    if isinstance(prov, dict) and "command" in prov:  # the line repeating this run: its real -o, points...
        from .commands import command_fields

        flags = (("--mask-output", args.mask_output), ("--regions-output", args.regions_output))
        extra = [a for flag, v in flags if v is not None for a in (flag, os.fspath(v))]
        record["provenance"] = {**prov, **command_fields(prov, family, inputs, output=raw_output,
                                                         points_path=args.points, extra_args=extra)}
    table_bytes = _regions_table(result) if table_final is not None else b""
    if table_final is not None:
        record["outputs"]["regions_table"] = str(table_final)
    with OutputTransaction(overwrite=args.overwrite, hint="use --overwrite to replace it") as tx:
        for path, out in planned:
            name, writer = nifti_output(out.volume, path)
            tx.add(name, writer, role=f"output '{out.name}'")
        if table_final is not None:
            tx.add(table_final, lambda fh: fh.write(table_bytes), role="regions table")
        tx.add(finals[-1], json_writer(record, default=_json_default), role="sidecar")
        tx.commit()
    if not args.quiet:
        for path, out in planned:
            print(f"wrote {path} ({out.name}, shape {out.volume.shape}, spacing "
                  f"{', '.join(f'{s:.3g}' for s in out.volume.spacing)} mm)")
        if table_final is not None:
            rows = max(0, table_bytes.count(b"\n") - 1)
            print(f"wrote {table_final} (candidate regions table, {rows} row(s))")
        print(f"wrote {finals[-1]} (provenance)")
    if result.info.get("warning"):
        print(f"medgen: warning: {result.info['warning']}", file=sys.stderr)
    _warn_count(result, args.count)
    return EXIT_OK


# -- batch mode (task lesion) ------------------------------------------------------------------
#: the lesion table's leading columns; the family's own lesion fields follow, sorted
LESION_COLUMNS = ("variant", "seed", "image", "mask", "label", "i", "j", "k", "x", "y", "z", "volume_mm3")


def batch_paths(folder: Path, input_path: Path, specs: Sequence[OutputSpec], variants: int) -> dict[str, Any]:
    """Every file of a lesion batch: ``{"variants": [[image, other outputs...], ...], "table", "sidecar"}``.

    Variant k's first output is ``<stem>_lesions_v<k>.nii.gz`` (k zero-padded to the width of
    ``variants``), each other declared output ``<stem>_lesions_v<k>_<name>.nii.gz``; ``<stem>`` is
    the input's name without ``.nii``/``.nii.gz``.
    """
    stem = _stem(Path(os.path.abspath(input_path)))[0].name or "scan"
    base = f"{stem}_lesions"
    width = len(str(variants))
    files = []
    for k in range(1, variants + 1):
        tag = f"{base}_v{k:0{width}d}"
        files.append([folder / f"{tag}.nii.gz", *(folder / f"{tag}_{s.name}.nii.gz" for s in specs[1:])])
    return {"variants": files, "table": folder / f"{base}.csv", "sidecar": folder / f"{base}.medgen.json"}


def _finite3(value: Any) -> np.ndarray | None:
    try:
        arr = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        return None
    return arr if arr.size == 3 and np.all(np.isfinite(arr)) else None


def _csv_value(value: Any) -> str:
    """A lesion field as one CSV cell: numbers as they are, lists flattened as ``a;b;c``."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        flat: list[str] = []
        for v in value:
            cell = _csv_value(v)
            flat.append(cell)
        return ";".join(flat)
    if isinstance(value, dict):
        return json.dumps(value, default=_json_default, separators=(",", ":"), sort_keys=True)
    return str(value)


def lesion_rows(variant: int, seed: int, files: dict[str, str], lesions: Sequence[dict[str, Any]],
                volume=None) -> list[dict[str, Any]]:
    """The lesion table rows of one variant (``files``: its ``image`` and ``mask`` file names).

    The centre: world ``x, y, z`` (RAS+ mm, from ``centre_world_mm`` in napari's (z, y, x) order,
    else from ``centre_index``) and ``i, j, k``, the voxel indices of the input NIfTI file as
    stored on disk (the convention of ``--points``; empty for a DICOM input).
    """
    from .io.nifti import world_xyz_to_nifti_ijk

    rows = []
    for lesion in lesions:
        lesion = dict(lesion)
        index = _finite3(lesion.get("centre_index"))
        world = _finite3(lesion.get("centre_world_mm"))
        if world is None and index is not None and volume is not None:
            world = volume.index_to_world(index)[0]
        xyz = world[::-1] if world is not None else None
        exact = volume.index_to_world(index)[0][::-1] if index is not None and volume is not None else xyz
        ijk = world_xyz_to_nifti_ijk(volume, exact) if exact is not None else None
        row: dict[str, Any] = {
            "variant": variant,
            "seed": seed,
            "image": files.get("image", ""),
            "mask": files.get("mask", ""),
            "label": _csv_value(lesion.get("label")),
            "volume_mm3": "" if lesion.get("volume_mm3") is None else f"{float(lesion['volume_mm3']):.3f}",
        }
        for axes, values in (("ijk", ijk), ("xyz", xyz)):
            for axis, v in zip(axes, values if values is not None else [None] * 3):
                row[axis] = "" if v is None else f"{float(v) + 0.0:.3f}"
        for key, value in lesion.items():
            if key in ("label", "volume_mm3"):
                continue
            row[f"lesion_{key}" if key in LESION_COLUMNS else str(key)] = _csv_value(value)
        rows.append(row)
    return rows


def lesions_csv_bytes(rows: Sequence[dict[str, Any]]) -> bytes:
    """The lesion table as UTF-8 CSV: :data:`LESION_COLUMNS`, then every other field (union, sorted)."""
    extra = sorted({key for row in rows for key in row} - set(LESION_COLUMNS))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*LESION_COLUMNS, *extra], restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


class _VariantProgress:
    """The family's progress, each line prefixed with ``variant k/V``."""

    def __init__(self, progress: _Progress, k: int, total: int) -> None:
        self.progress, self.prefix = progress, f"variant {k}/{total}"
        progress.last = 0.0  # each variant's first line is shown

    def __call__(self, done: int, total: int, message: str) -> None:
        self.progress(done, total, f"{self.prefix}: {message}" if message else self.prefix)


def _span(n: int) -> str:
    return "variant 1" if n == 1 else f"variants 1-{n}"


def _cmd_run_batch(args: argparse.Namespace, raw_output: str) -> int:
    """``medgen run lesion INPUT -o FOLDER/ --variants V``: V image + mask pairs, one table, one sidecar."""
    from .errors import OutputPathError
    from .io.nifti import nifti_output
    from .io.output import OutputTransaction, check_free_space, check_outputs
    from .registry import get_registry
    from .runner import preflight, run_family

    task = Task.LESION
    n_var = int(args.variants)
    folder = args.output
    hint = "use --overwrite to replace it"
    if folder.exists() and not folder.is_dir():
        raise InputError(
            f"-o {raw_output!r} is a file; batch mode (--variants) writes into a folder: give a folder"
        )
    if not folder.exists() and folder.name.endswith((".nii", ".nii.gz")):
        raise InputError(
            f"--variants {n_var} writes a folder of files, but -o {raw_output!r} looks like a file name: "
            "give a folder (e.g. out/)"
        )
    if args.mask_output is not None:
        raise InputError(
            "--mask-output: in batch mode each mask goes beside its image as <stem>_lesions_vK_mask.nii.gz"
        )
    reg = get_registry()
    entry = reg.get(args.family, task) if args.family else reg.default(task)
    family = entry.family
    specs = list(family.outputs) or [OutputSpec("image")]
    if args.regions_output is not None and not _has_regions(specs):
        raise InputError(f"--regions-output: family {family.id!r} writes no candidate regions")
    # -- before any compute: parameters, every file of every variant, then the inputs themselves
    plan = batch_paths(folder, args.input, specs, n_var)
    roles = [[f"variant {k} output" + (f" '{s.name}'" if i else "") for i, s in enumerate(specs)]
             for k in range(1, n_var + 1)]
    all_paths = [p for files in plan["variants"] for p in files]
    all_roles = [r for rs in roles for r in rs]
    protected = _protected(args)
    every_output = [*zip(all_roles, all_paths), ("lesion table", plan["table"]), ("sidecar", plan["sidecar"])]
    params, _ = preflight(family, _family_params(args, family), protected=protected + every_output,
                          overwrite=args.overwrite, hint=hint)
    finals = check_outputs(
        [*all_paths, plan["table"], plan["sidecar"]], protected, overwrite=args.overwrite, create_dirs=True,
        hint=hint, roles=[*all_roles, "lesion table", "sidecar"],
    )
    per = len(specs)
    variant_finals = [finals[i * per:(i + 1) * per] for i in range(n_var)]
    table_final, side_final = finals[-2], finals[-1]
    inputs = _read_inputs(args)
    image = inputs.image
    check_free_space(all_paths, _expected_bytes(image, all_paths))
    try:
        table_final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(
            f"cannot create the output folder {raw_output!r}: {exc.strerror or exc}"
        ) from None

    progress = _Progress(args.quiet)
    cancel = threading.Event()
    records: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    stopped: BaseException | None = None
    warned = False
    with _sigint_cancels(cancel):  # first Ctrl-C cancels after the running variant's step, the second aborts
        try:
            for k in range(1, n_var + 1):
                if cancel.is_set():
                    raise Cancelled("cancelled")
                seed = args.seed + k - 1
                result = run_family(
                    family, inputs, params, device=args.device, seed=seed, time_budget=args.time_budget,
                    progress=_VariantProgress(progress, k, n_var), cancel_event=cancel, package=entry.package,
                    overwrite=args.overwrite, protected=protected + every_output,
                )
                # a file the family saves itself (a trained model): written by variant 1 only
                params = {**params, **{p.name: "" for p in family.params
                                       if p.path == "write" and p.files(params.get(p.name))}}
                planned = _planned(family, specs, result, variant_finals[k - 1])
                given = dict(zip(variant_finals[k - 1], plan["variants"][k - 1]))
                shown = [(given.get(path, path), out) for path, out in planned]
                masks = [p for p, o in shown if o.name == "mask"]
                masks += [p for p, o in shown if o.kind == "labels"]
                files = {"image": shown[0][0].name, "mask": masks[0].name if masks else ""}
                lesions = result.info.get("lesions") or []
                variant_rows = lesion_rows(k, seed, files, lesions, image)
                record = {"variant": k, "seed": seed, **result.info}
                record["outputs"] = {out.name: str(path) for path, out in planned}
                with OutputTransaction(overwrite=args.overwrite, hint=hint) as tx:
                    for path, out in planned:
                        name, writer = nifti_output(out.volume, path)
                        tx.add(name, writer, role=f"variant {k} output '{out.name}'")
                    tx.commit()
                records.append(record)  # from here on, variant k is done
                rows += variant_rows
                if not args.quiet:
                    print(f"variant {k}/{n_var} (seed {seed}): wrote {', '.join(str(p) for p, _ in shown)} "
                          f"({len(lesions)} lesion(s))")
                if result.info.get("warning"):
                    print(f"medgen: warning: variant {k}: {result.info['warning']}", file=sys.stderr)
                if not warned:
                    warned = _warn_count(result, args.count, f"variant {k} has ")
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - reported below, with what was kept
            stopped = exc
        if stopped is not None and not records:
            raise stopped
        return _finish_batch(args, family.id, plan, (table_final, side_final), records, rows, stopped)


def _finish_batch(
    args: argparse.Namespace, family_id: str, plan: dict[str, Any], finals: Sequence[Path],
    records: list[dict[str, Any]], rows: list[dict[str, Any]], stopped: BaseException | None,
) -> int:
    """Write the lesion table and the sidecar of the variants done; say what was kept; the exit code."""
    from .io.output import OutputTransaction, json_writer

    n_var, done = int(args.variants), len(records)
    cancelled = isinstance(stopped, (Cancelled, KeyboardInterrupt))
    sidecar = {
        "batch": {
            "task": Task.LESION.value,
            "family": family_id,
            "input": str(args.input),
            "count": args.count,
            "variants_requested": n_var,
            "variants_done": done,
            "seed": args.seed,
            "seeds": [r["seed"] for r in records],
            "status": "done" if stopped is None else "cancelled" if cancelled else "failed",
            "error": None if stopped is None or cancelled else one_line(stopped),
            "table": str(plan["table"]),
        },
        "variants": records,
    }
    table_bytes = lesions_csv_bytes(rows)
    try:
        with OutputTransaction(overwrite=args.overwrite, hint="use --overwrite to replace it") as tx:
            tx.add(finals[0], lambda fh: fh.write(table_bytes), role="lesion table")
            tx.add(finals[1], json_writer(sidecar, default=_json_default), role="sidecar")
            tx.commit()
    except MedGenError as exc:
        if stopped is None:
            raise MedGenError(
                f"{one_line(exc)} (the images and masks of all {done} variants were written)"
            ) from exc
        print(f"medgen: error: {one_line(exc)}", file=sys.stderr)
    else:
        if not args.quiet:
            print(f"wrote {plan['table']} (lesion table, {len(rows)} row(s))")
            print(f"wrote {plan['sidecar']} (provenance)")
    if stopped is None:
        return EXIT_OK
    kept = f"files of {_span(done)} kept"
    if cancelled:
        print(f"medgen: cancelled after {done} of {n_var} variants; {kept}", file=sys.stderr)
        return EXIT_CANCELLED
    if isinstance(stopped, MedGenError):
        print(f"medgen: error: variant {done + 1} of {n_var}: {one_line(stopped)}; {kept}", file=sys.stderr)
        return int(getattr(stopped, "exit_code", EXIT_FAILED))
    if getattr(args, "debug", False):
        raise stopped
    print(f"medgen: internal error in variant {done + 1} of {n_var}: {type(stopped).__name__}: "
          f"{one_line(stopped)} (run with --debug for the traceback); {kept}", file=sys.stderr)
    return EXIT_FAILED


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "families":
            return cmd_families(args)
        if args.command == "plugins":
            from .cli_plugins import cmd_plugins

            return cmd_plugins(args)
        if args.command == "batch":
            from .cli_batch import cmd_batch

            return cmd_batch(args)
        return cmd_run(args)
    except Cancelled:
        print("medgen: cancelled; no output written", file=sys.stderr)
        return EXIT_CANCELLED
    except MedGenError as exc:
        if args.debug:
            raise
        print(f"medgen: error: {one_line(exc)}", file=sys.stderr)
        return int(getattr(exc, "exit_code", EXIT_FAILED))
    except KeyboardInterrupt:
        print("medgen: interrupted; no output written", file=sys.stderr)
        return EXIT_CANCELLED
    except BrokenPipeError:  # `medgen families --json | head`: the reader went away, not an error
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:  # pragma: no cover
            pass
        return EXIT_OK
    except Exception as exc:  # a bug: one line, and the traceback on request
        if args.debug:
            raise
        print(f"medgen: internal error: {type(exc).__name__}: {one_line(exc)} (run with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

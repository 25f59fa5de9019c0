"""``medgen``: the same families as the docks, headless.

    medgen families [--json] [--task TASK]
    medgen run TASK INPUT -o OUTPUT [--family ID] [--reference PATH ...] [--points CSV]
               [--mask PATH] [--param KEY=VALUE ...] [--device auto|cpu|cuda|mps] [--seed N]
               [--overwrite] [--series UID|NUMBER] [--regions-output CSV] [-q]

User mistakes end with one line on stderr and a documented exit code, never a traceback.
Everything that can be checked is checked before any compute (parameters, every output place);
outputs are written atomically and together (see :mod:`napari_medgen.io.output`).
"""

from __future__ import annotations

import argparse
import csv
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
from .errors import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_USAGE, Cancelled, InputError, MedGenError, ParamError
from .family import Inputs, OutputSpec, Task
from .io.read import one_line

__all__ = ["main", "build_parser", "read_points_csv", "output_paths", "regions_table_path", "EXIT_CODES"]

EXIT_CODES = f"""exit codes:
  {EXIT_OK:<4}done
  {EXIT_USAGE:<4}the command line or an input is wrong (nothing ran, nothing was written)
  {EXIT_FAILED:<4}a run failed (nothing was written, earlier files are intact)
  {EXIT_CANCELLED:<4}interrupted (Ctrl-C); nothing was written
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

    run = sub.add_parser(
        "run", help="run a family on a NIfTI file (or DICOM series folder)",
        description="Run one model family on one scan and write its outputs (NIfTI) and a provenance "
        "sidecar (<stem>.medgen.json). Every output place is checked before any compute; an output "
        "that is one of the run's inputs is always refused.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("task", choices=[t.value for t in Task], help=f"one of {_task_help()}")
    run.add_argument("input", type=Path, help="input .nii/.nii.gz file or DICOM series folder")
    run.add_argument("-o", "--output", type=Path, required=True,
                     help="output .nii/.nii.gz file; a family's other outputs go beside it as <stem>_<name>.nii.gz")
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
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
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


def _expected_bytes(image, paths: Sequence[Path]) -> list[int]:
    """A cheap lower bound of each output's size: the input's voxels as float32 (gzip: a quarter)."""
    raw = int(np.prod(image.shape)) * 4
    return [raw // 4 if p.name.endswith(".gz") else raw for p in paths]


def cmd_run(args: argparse.Namespace) -> int:
    from .io.nifti import nifti_output
    from .io.output import OutputTransaction, check_free_space, json_writer
    from .io.read import read_volume
    from .registry import get_registry
    from .runner import preflight, run_family

    task = Task(args.task)
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
        parse_params(args.param, family),
        outputs=[*paths, *tables, side],
        output_roles=[*roles, *["regions table"] * len(tables), "sidecar"],
        protected=protected,
        overwrite=args.overwrite,
    )
    table_final = finals[len(paths)] if tables else None
    image = read_volume(args.input, role="input", series=args.series)
    refs = [read_volume(p, role=f"reference {i + 1}") for i, p in enumerate(args.reference)]
    mask = read_volume(args.mask, role="mask") if args.mask else None
    if mask is not None:
        mask = mask.with_data(np.asarray(mask.data) > 0)
    points = read_points_csv(args.points, image) if args.points else None
    check_free_space(paths, _expected_bytes(image, paths))

    cancel = threading.Event()

    def on_sigint(signum, frame):  # first Ctrl-C cancels cleanly, the second aborts
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        print("\ncancelling...", file=sys.stderr)

    old = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        result = run_family(
            family,
            Inputs(image=image, references=refs, points=points, mask=mask),
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
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    if family.outputs:  # each declared output that the result holds, to its planned file
        by_name = {o.name: o for o in result.outputs}
        planned = [(path, by_name[spec.name]) for spec, path in zip(specs, finals) if spec.name in by_name]
    else:  # one undeclared output, to -o
        planned = [(finals[0], result.outputs[0])]
    record = dict(result.info)
    record["outputs"] = {out.name: str(path) for path, out in planned}
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
    return EXIT_OK


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

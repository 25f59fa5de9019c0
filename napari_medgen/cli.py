"""``medgen``: the same families as the docks, headless.

    medgen families [--json] [--task TASK]
    medgen run TASK INPUT -o OUTPUT [--family ID] [--reference PATH ...] [--points CSV]
               [--mask PATH] [--param KEY=VALUE ...] [--device auto|cpu|cuda|mps] [--seed N]

User mistakes end with one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__
from .errors import Cancelled, InputError, MedGenError, ParamError
from .family import Inputs, Task

__all__ = ["main", "build_parser", "read_points_csv", "output_paths"]

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_CANCELLED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medgen",
        description="Generative models for 3D medical volumes (napari-medgen). Research use only.",
    )
    parser.add_argument("--version", action="version", version=f"napari-medgen {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    fam = sub.add_parser("families", help="list installed model families and plugin errors")
    fam.add_argument("--json", action="store_true", help="machine-readable output")
    fam.add_argument("--task", choices=[t.value for t in Task], help="only families of this task")

    run = sub.add_parser("run", help="run a family on a NIfTI file (or DICOM series folder)")
    run.add_argument("task", choices=[t.value for t in Task])
    run.add_argument("input", type=Path, help="input .nii/.nii.gz file or DICOM series folder")
    run.add_argument("-o", "--output", type=Path, required=True, help="output .nii/.nii.gz file")
    run.add_argument("--family", help="family id (default: the task's first family; see `medgen families`)")
    run.add_argument("--reference", type=Path, action="append", default=[], help="reference volume (repeatable)")
    run.add_argument("--points", type=Path, help="CSV with header x,y,z (world mm) or i,j,k (voxel indices)")
    run.add_argument("--mask", type=Path, help="mask/label volume on the input's grid")
    run.add_argument("--mask-output", type=Path, help="lesion task: where to write the lesion mask")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="family parameter")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument("--time-budget", type=float, default=None, help="seconds of training allowed (learned families)")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


# -- helpers -----------------------------------------------------------------------
def _read_volume(path: Path, role: str):
    from .io.dicom import read_dicom_series
    from .io.nifti import read_nifti

    if not path.exists():
        raise InputError(f"{role} {str(path)!r} does not exist")
    name = path.name
    if path.is_dir() or name.lower().endswith(".dcm"):
        return read_dicom_series(path)
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise InputError(f"{role} {str(path)!r} is not a .nii/.nii.gz file or a DICOM folder")
    try:
        return read_nifti(path)
    except MedGenError:
        raise
    except Exception as exc:
        raise InputError(f"could not read {role} {str(path)!r}: {exc}") from exc


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


def output_paths(output: Path, names: Sequence[str], kinds: Sequence[str], mask_output: Path | None) -> list[Path]:
    """The first output goes to ``output``; others to ``<stem>_<name><ext>`` (mask: ``--mask-output``)."""
    stem, ext = _stem(output)
    paths = [output if output.name.endswith((".nii", ".nii.gz")) else output.with_name(output.name + ".nii.gz")]
    for name, kind in zip(names[1:], kinds[1:]):
        if mask_output is not None and kind == "labels" and name == "mask":
            paths.append(mask_output)
        else:
            paths.append(stem.with_name(f"{stem.name}_{name}{ext}"))
    return paths


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
            {"id": None, "task": None, "version": None, "package": err.package, **err.to_dict()}
            for err in reg.errors
        ]
        print(json.dumps(rows, indent=2, default=str))
        return 0
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
        print(f"plugin {err.plugin!r} ({err.package or 'unknown package'}) failed: {err.message}", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .io.nifti import write_nifti
    from .registry import get_registry
    from .runner import run_family

    task = Task(args.task)
    reg = get_registry()
    entry = reg.get(args.family, task) if args.family else reg.default(task)
    family = entry.family
    params = parse_params(args.param, family)
    out_name = args.output.name
    if not (out_name.endswith(".nii") or out_name.endswith(".nii.gz")):
        raise InputError(f"output {str(args.output)!r} must end in .nii or .nii.gz")
    if not args.output.parent.exists():
        raise InputError(f"output folder {str(args.output.parent)!r} does not exist")
    image = _read_volume(args.input, "input")
    refs = [_read_volume(p, "reference") for p in args.reference]
    mask = _read_volume(args.mask, "mask") if args.mask else None
    if mask is not None:
        mask = mask.with_data(np.asarray(mask.data) > 0)
    points = read_points_csv(args.points, image) if args.points else None

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
        )
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    outs = result.outputs
    paths = output_paths(args.output, [o.name for o in outs], [o.kind for o in outs], args.mask_output)
    for out, path in zip(outs, paths):
        write_nifti(out.volume, path)
        if not args.quiet:
            print(f"wrote {path} ({out.name}, shape {out.volume.shape}, spacing "
                  f"{', '.join(f'{s:.3g}' for s in out.volume.spacing)} mm)")
    if result.info.get("warning"):
        print(f"medgen: warning: {result.info['warning']}", file=sys.stderr)
    record = dict(result.info)
    record["outputs"] = {o.name: str(p) for o, p in zip(outs, paths)}
    stem, _ = _stem(paths[0])
    sidecar = stem.with_name(stem.name + ".medgen.json")
    sidecar.write_text(json.dumps(record, indent=2, default=_json_default))
    return 0


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
        print(f"medgen: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, (InputError, ParamError)) else EXIT_FAILED
    except KeyboardInterrupt:
        print("medgen: interrupted", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as exc:  # a bug: one line, and the traceback on request
        if args.debug:
            raise
        print(f"medgen: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

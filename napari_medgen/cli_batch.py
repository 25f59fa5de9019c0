"""``medgen batch``: one family over a folder, a glob or a BIDS dataset, on Dask distributed.

    medgen batch TASK INPUTS... -o OUTDIR [--family ID] [--param KEY=VALUE ...] [--reference PATH ...]
                 [--participant-label L ...] [--session-label S ...] [--suffix T1w ...] [--datatype anat]
                 [--desc LABEL] [--workers N] [--threads T] [--scheduler tcp://HOST:8786 | --scheduler-file F]
                 [--force | --retry-failed] [--device D] [--seed N] [--time-budget S] [-q]

See :mod:`napari_medgen.batch.engine` for resume, shared models, outputs and the manifest.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from .errors import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, Cancelled
from .family import Task

__all__ = ["add_parser", "cmd_batch"]

EPILOG = """outputs:
  BIDS input: OUTDIR/sub-X/[ses-Y/]anat/<entities>_desc-<family>_<suffix>.nii.gz and .json (Sources,
  provenance), OUTDIR/dataset_description.json (a BIDS derivative); other inputs: OUTDIR/<relative
  path>_desc-<family>.nii.gz and .json. OUTDIR/manifest.csv and manifest.jsonl: one row per scan
  (status done/skipped/failed/cancelled, outputs, seconds, error).
resume: run the same command again; finished scans are skipped (their sidecar records the input's
  sha256, the family, its version, the parameters and the seed). --retry-failed reruns only the
  failures of the last run, --force reruns everything.
a cluster: start `dask scheduler` on one machine and `dask worker tcp://HOST:8786 --nthreads 1` on
  each (with napari-medgen installed), or dask-jobqueue's SLURMCluster (see the README), then
  --scheduler tcp://HOST:8786 or --scheduler-file FILE.
"""


def add_parser(sub: Any, exit_codes: str) -> None:
    p = sub.add_parser(
        "batch", help="run a family over many scans (a folder, a glob or a BIDS dataset) on Dask",
        description="Run one family over a cohort, in parallel on Dask distributed (a local cluster by "
        "default), resumable, with BIDS-derivative outputs for BIDS input and a manifest.",
        epilog=EPILOG + "\n" + exit_codes.replace("a run failed", "a scan failed (the others finished)"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("task", choices=[t.value for t in Task])
    p.add_argument("inputs", nargs="+", help="NIfTI files, folders, glob patterns or BIDS dataset roots")
    p.add_argument("-o", "--output", required=True, help="the output folder (created if missing)")
    p.add_argument("--family", help="family id (default: the task's first family)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="family parameter")
    p.add_argument("--reference", nargs="+", action="extend", default=[], metavar="PATH",
                   help="reference scan(s); a family that saves its model trains it once and applies it to all")
    p.add_argument("--participant-label", nargs="+", action="extend", default=[], metavar="LABEL",
                   help="BIDS: only these subjects (with or without 'sub-')")
    p.add_argument("--session-label", nargs="+", action="extend", default=[], metavar="LABEL",
                   help="BIDS: only these sessions")
    p.add_argument("--suffix", nargs="+", action="extend", default=[], metavar="SUFFIX",
                   help="BIDS: only these suffixes, e.g. T1w FLAIR")
    p.add_argument("--datatype", nargs="+", action="extend", default=[], metavar="TYPE",
                   help="BIDS: datatype folders to read (default: anat)")
    p.add_argument("--desc", help="BIDS desc label of the outputs (default: from the family id)")
    p.add_argument("--workers", type=int, help="local cluster: worker processes (default: from the cores/GPUs)")
    p.add_argument("--threads", type=int, help="torch threads per worker (default: cores / workers)")
    p.add_argument("--scheduler", help="join an existing Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--scheduler-file", help="join the Dask scheduler described by this file")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--force", action="store_true", help="rerun every scan, replacing its outputs")
    mode.add_argument("--retry-failed", action="store_true", help="rerun only the scans that failed last time")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed of every scan (default 0)")
    p.add_argument("--time-budget", type=float, default=None, help="seconds of training per scan (learned families)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, only the summary and errors")


def _params(pairs: list[str]) -> dict[str, str]:
    from .errors import ParamError

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ParamError(f"--param expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value
    return out


def cmd_batch(args: argparse.Namespace) -> int:
    from .batch.engine import BatchConfig, run_batch

    if args.workers is not None and args.workers < 1:
        from .errors import InputError

        raise InputError(f"--workers must be at least 1, got {args.workers}")
    config = BatchConfig(
        task=args.task, inputs=args.inputs, outdir=args.output, family_id=args.family, params=_params(args.param),
        references=[str(Path(r)) for r in args.reference], seed=args.seed, device=args.device,
        time_budget=args.time_budget, participant_labels=args.participant_label,
        session_labels=args.session_label, suffixes=args.suffix, datatypes=args.datatype or ("anat",),
        desc=args.desc, workers=args.workers, threads=args.threads, scheduler=args.scheduler,
        scheduler_file=args.scheduler_file, force=args.force, retry_failed=args.retry_failed,
    )
    bar = None
    failures: list[str] = []

    def progress(finished: int, total: int, row: dict[str, Any]) -> None:
        nonlocal bar
        if row.get("status") == "failed":
            failures.append(f"{row['input']}: {row.get('error', '')}")
            print(f"medgen: scan failed: {row['input']}: {row.get('error', '')}", file=sys.stderr)
        if args.quiet:
            return
        if not sys.stderr.isatty():  # a log file: one line per scan
            seconds = f" ({float(row.get('seconds') or 0):.1f} s)" if row.get("status") == "done" else ""
            print(f"[{finished}/{total}] {row['input']}: {row['status']}{seconds}", file=sys.stderr)
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="scan", file=sys.stderr, dynamic_ncols=True)
        bar.n = finished
        bar.set_postfix_str(f"{Path(row['input']).name}: {row['status']}", refresh=True)

    cancel = threading.Event()
    try:
        summary = run_batch(config, progress=progress, cancel=cancel,
                            say=(lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr)))
    except (Cancelled, KeyboardInterrupt):
        if bar is not None:
            bar.close()
        print(f"medgen: batch interrupted; finished scans are kept (see {Path(args.output) / 'manifest.csv'}); "
              "run the same command again to go on", file=sys.stderr)
        return EXIT_CANCELLED
    if bar is not None:
        bar.close()
    print(f"{summary.done} done, {summary.skipped} skipped (finished before), {summary.failed} failed"
          + (f", {summary.cancelled} cancelled" if summary.cancelled else "")
          + f" of {summary.total} scan(s) in {summary.elapsed:.1f} s; manifest: {summary.manifest_csv}")
    if summary.model:
        print(f"shared model: {summary.model}")
    if summary.failed:
        print(f"medgen: {summary.failed} scan(s) failed (see the manifest); rerun with --retry-failed after a fix",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK if not summary.cancelled else EXIT_CANCELLED

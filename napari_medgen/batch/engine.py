"""``medgen batch``: one family over a cohort on Dask distributed, resumable, with a manifest.

The scheduling is Dask's (:mod:`distributed`): a :class:`~distributed.LocalCluster` sized to
the machine by default (one scan per worker process at a time, torch threads split so the
cores are not oversubscribed; one GPU per worker where there are GPUs), or an existing
cluster (``--scheduler tcp://host:8786`` / ``--scheduler-file``; dask-jobqueue on SLURM).
Each scan is one task with an explicit, stable key (input path + family + parameters).

* **Resume**: a scan whose sidecar records the same input sha256, family, version, parameters
  and seed is skipped; ``retry_failed`` reruns only the scans the last manifest lists as
  failed; ``force`` reruns everything. An output from a run with other settings is never
  replaced silently: the batch stops before any compute unless ``force``.
* **Shared models**: a family that learns from references and can save and load its model
  (``model_file`` / ``save_model``) trains once on the first scan; the model's bytes travel
  to the workers, and every other scan applies it.
* **Outputs**: every file through :class:`~napari_medgen.io.output.OutputTransaction`
  (temporary file, then ``os.replace``, the sidecar last): a killed worker leaves no file
  under a final name. BIDS inputs give BIDS-derivative outputs (``desc-<family>``, JSON
  sidecars with ``Sources`` and the provenance, ``dataset_description.json``).
* **Manifest**: ``manifest.jsonl`` gets one line per finished scan as it finishes;
  ``manifest.csv`` (one row per scan: status, outputs, seconds, error) is rewritten at the end.

No Qt and no napari here: the CLI and the docks' "Run on a folder..." share :func:`run_batch`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import Cancelled, InputError, MedGenError, OutputPathError
from ..family import Task
from .bids import (
    ScanInput,
    bids_roots,
    check_desc,
    collect_inputs,
    dataset_description,
    desc_label,
    output_paths,
    sources_entry,
)

__all__ = ["BatchConfig", "BatchSummary", "run_batch", "process_scan", "plan_cluster", "MANIFEST_COLUMNS",
           "task_key", "file_sha256"]

log = logging.getLogger("napari_medgen.batch")

MANIFEST_COLUMNS = ("key", "input", "status", "outputs", "sidecar", "seconds", "error", "worker", "finished")
MODEL_PARAMS = ("model_file", "save_model")
#: parameters that name files: not part of what makes two runs the same (the model's sha256 is)
_PATH_PARAMS = MODEL_PARAMS


@dataclass
class BatchConfig:
    """What ``medgen batch`` (or a dock's "Run on a folder...") was asked to do."""

    task: str
    inputs: Sequence[str]
    outdir: str
    family_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # values, or strings as on the command line
    references: Sequence[str] = ()
    seed: int = 0
    device: str = "auto"
    time_budget: float | None = None
    participant_labels: Sequence[str] = ()
    session_labels: Sequence[str] = ()
    suffixes: Sequence[str] = ()
    datatypes: Sequence[str] = ("anat",)
    desc: str | None = None
    workers: int | None = None
    threads: int | None = None  # torch threads per worker
    scheduler: str | None = None
    scheduler_file: str | None = None
    force: bool = False
    retry_failed: bool = False
    connect_timeout: float = 10.0


@dataclass
class BatchSummary:
    total: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    cancelled: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    manifest_csv: Path | None = None
    manifest_jsonl: Path | None = None
    elapsed: float = 0.0
    dashboard: str = ""
    workers: int = 0
    model: str = ""

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.cancelled == 0


# -- identities --------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, Path):
        return str(value)
    return value


def _match_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: _jsonable(v) for k, v in sorted(params.items()) if k not in _PATH_PARAMS}


def task_key(scan_path: str | os.PathLike, family_id: str, params: dict[str, Any], seed: int) -> str:
    """The scan's Dask key: stable across runs for the same input file, family, parameters and seed."""
    text = json.dumps([os.path.abspath(scan_path), family_id, _match_params(params), int(seed)],
                      sort_keys=True, default=str)
    return "medgen-scan-" + hashlib.sha1(text.encode()).hexdigest()[:16]


# -- the cluster ---------------------------------------------------------------------------------
def plan_cluster(n_scans: int, *, workers: int | None = None, threads: int | None = None,
                 device: str = "auto") -> dict[str, Any]:
    """Workers x torch threads for a LocalCluster on this machine (and one GPU per worker if any)."""
    cores = os.cpu_count() or 1
    gpus = 0
    if device in ("auto", "cuda") or device.startswith("cuda"):
        try:
            import torch

            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        except Exception:  # pragma: no cover - torch missing or broken CUDA
            gpus = 0
    if gpus:
        n = workers or min(gpus, max(n_scans, 1))
        t = threads or max(1, cores // n)
        return {"n_workers": n, "threads": t, "gpus": gpus}
    t = threads or (1 if cores <= 4 else 2)
    n = workers or max(1, min(max(n_scans, 1), cores // t))
    return {"n_workers": n, "threads": t, "gpus": 0}


def _connect(config: BatchConfig, n_scans: int, say: Callable[[str], None]):
    """A Dask client: to the given scheduler (failing within seconds), or to a new LocalCluster."""
    from distributed import Client, LocalCluster

    if config.scheduler or config.scheduler_file:
        where = config.scheduler or f"the scheduler file {config.scheduler_file}"
        if config.scheduler_file and not Path(config.scheduler_file).exists():
            raise InputError(f"--scheduler-file {config.scheduler_file} does not exist")
        try:
            if config.scheduler_file:
                client = Client(scheduler_file=config.scheduler_file, timeout=config.connect_timeout)
            else:
                client = Client(config.scheduler, timeout=config.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise InputError(
                f"cannot reach the Dask scheduler at {where} within {config.connect_timeout:g} s ({exc}); "
                "is it running (dask scheduler / dask worker), and is the address right?"
            ) from None
        n = len(client.scheduler_info().get("workers", {}))
        threads = config.threads or 1
        if n == 0:
            say("warning: the scheduler has no workers yet; tasks wait until one joins")
        return client, None, {"n_workers": n, "threads": threads, "gpus": 0}
    plan = plan_cluster(n_scans, workers=config.workers, threads=config.threads, device=config.device)
    try:
        import bokeh  # noqa: F401 - the dashboard needs it

        dashboard = ":0"
    except ImportError:
        dashboard = None
    resources = {"GPU": 1} if plan["gpus"] else None
    with warnings.catch_warnings():  # "port 8787 is in use, hosting on another": not the user's concern
        warnings.simplefilter("ignore", UserWarning)
        cluster = LocalCluster(
            n_workers=plan["n_workers"], threads_per_worker=1, processes=True, dashboard_address=dashboard,
            silence_logs=logging.ERROR, resources=resources,
        )
    return Client(cluster), cluster, plan


# -- one scan on a worker --------------------------------------------------------------------
def _materialize_model(model: dict[str, Any]) -> str:
    """Write the shared model's files into this worker's temp folder (once); returns the model path."""
    folder = Path(tempfile.gettempdir()) / "medgen-batch-models" / model["sha256"][:16]
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in model["files"].items():
        target = folder / name
        if not target.exists() or target.stat().st_size != len(blob):
            tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
            tmp.write_bytes(blob)
            os.replace(tmp, target)
    return str(folder / model["name"])


def _worker_device(device: str, gpus: int) -> str:
    if not gpus or device not in ("auto", "cuda"):
        return device
    try:
        from distributed import get_worker

        name = get_worker().name
        index = int(name) % gpus if str(name).isdigit() else 0
    except Exception:  # noqa: BLE001 - not on a worker (tests, synchronous use)
        index = 0
    return f"cuda:{index}"


def process_scan(job: dict[str, Any]) -> dict[str, Any]:
    """Run one scan on a worker and commit its files; returns its manifest row (never raises)."""
    started = time.monotonic()
    row = {"key": job["key"], "input": job["input"], "status": "failed", "outputs": "", "sidecar": job["sidecar"],
           "seconds": 0.0, "error": "", "worker": _worker_name(), "finished": ""}
    try:
        _run_scan(job, row)
        row["status"] = "done"
    except BaseException as exc:  # noqa: BLE001 - the manifest says why; the other scans go on
        from ..io.read import one_line

        row["error"] = one_line(exc) if isinstance(exc, MedGenError) else f"{type(exc).__name__}: {one_line(exc)}"
    row["seconds"] = round(time.monotonic() - started, 2)
    row["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return row


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except Exception:  # noqa: BLE001
        return "local"


def _run_scan(job: dict[str, Any], row: dict[str, Any]) -> None:
    import torch

    from ..family import Inputs, OutputSpec
    from ..io.nifti import nifti_output
    from ..io.output import OutputTransaction, json_writer
    from ..io.read import read_volume
    from ..registry import get_registry
    from ..runner import run_family

    torch.set_num_threads(max(1, int(job["threads"])))
    reg = get_registry()
    if job["family"] not in reg:
        raise MedGenError(f"family {job['family']!r} is not installed on worker {_worker_name()} "
                          "(install the same packages on every worker)")
    entry = reg.get(job["family"])
    family = entry.family
    params = dict(job["params"])
    if job.get("model"):
        params["model_file"] = _materialize_model(job["model"])
    image = read_volume(job["input"], role="input")
    refs = [read_volume(p, role=f"reference {i + 1}") for i, p in enumerate(job.get("references") or [])]
    result = run_family(
        family, Inputs(image=image, references=refs), params, device=_worker_device(job["device"], job["gpus"]),
        seed=job["seed"], time_budget=job["time_budget"], package=entry.package, overwrite=True,
        protected=[("input", job["input"])],
    )
    specs = list(family.outputs) or [OutputSpec("image")]
    by_name = {o.name: o for o in result.outputs}
    planned = [(Path(job["outputs"][s.name]), by_name[s.name]) for s in specs if s.name in by_name]
    if not family.outputs:
        planned = [(Path(job["outputs"][specs[0].name]), result.outputs[0])]
    record = {
        "Sources": job["sources"],
        "medgen": {**result.info.get("provenance", {}), "batch": job["match"]},
        "outputs": {out.name: str(path) for path, out in planned},
    }
    info = {k: v for k, v in result.info.items() if k not in ("provenance",)}
    record["info"] = info
    with OutputTransaction(overwrite=True) as tx:
        for path, out in planned:
            path.parent.mkdir(parents=True, exist_ok=True)
            name, writer = nifti_output(out.volume, path)
            tx.add(name, writer, role=f"output '{out.name}'")
        Path(job["sidecar"]).parent.mkdir(parents=True, exist_ok=True)
        tx.add(job["sidecar"], json_writer(record, default=str), role="sidecar")
        tx.commit()  # the sidecar last: an image without its sidecar is an unfinished scan
    row["outputs"] = ";".join(str(p) for p, _ in planned)


# -- the batch ---------------------------------------------------------------------------------
def _say_default(line: str) -> None:
    print(line, file=sys.stderr)


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _previous_failures(outdir: Path) -> set[str]:
    """Keys whose latest manifest line says failed (or cancelled)."""
    latest: dict[str, str] = {}
    path = outdir / "manifest.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return set()
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "key" in row:
            latest[row["key"]] = row.get("status", "")
    return {k for k, s in latest.items() if s in ("failed", "cancelled")}


def _check_outdir(outdir: Path, scans: Sequence[ScanInput]) -> None:
    from ..io.output import _probe_writable

    if outdir.exists() and not outdir.is_dir():
        raise OutputPathError(f"-o {outdir} is a file; give a folder for the batch's outputs")
    for scan in scans:
        root = scan.bids_root
        if root is not None:
            inside = outdir.resolve() == root.resolve() or (
                root.resolve() in outdir.resolve().parents and "derivatives" not in outdir.resolve().relative_to(
                    root.resolve()).parts)
            if inside:
                raise OutputPathError(
                    f"-o {outdir} is inside the BIDS dataset {root}: use {root / 'derivatives' / 'medgen'} or a "
                    "folder outside it"
                )
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create the output folder {outdir}: {exc.strerror or exc}") from None
    _probe_writable(outdir, "output folder", outdir)


def _resolve_family(config: BatchConfig):
    from ..registry import get_registry

    reg = get_registry()
    task = Task(config.task)
    entry = reg.get(config.family_id, task) if config.family_id else reg.default(task)
    family = entry.family
    given: dict[str, Any] = {}
    for key, value in config.params.items():
        given[key] = family.param(key).parse(value) if isinstance(value, str) else value
    params = family.resolve_params(given)
    return entry, family, params


def _shares_model(family, config: BatchConfig, params: dict[str, Any]) -> bool:
    names = {p.name for p in family.params}
    return (set(MODEL_PARAMS) <= names and family.input_spec("references") is not None
            and bool(config.references) and not params.get("model_file"))


def _csv_bytes(rows: Sequence[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


class _Manifest:
    """manifest.jsonl appended line by line (each finished scan), manifest.csv written at the end."""

    def __init__(self, outdir: Path) -> None:
        self.jsonl = outdir / "manifest.jsonl"
        self.csv = outdir / "manifest.csv"
        self.lock = threading.Lock()

    def append(self, row: dict[str, Any]) -> None:
        with self.lock, open(self.jsonl, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def write_csv(self, rows: Sequence[dict[str, Any]]) -> None:
        from ..io.output import write_bytes

        write_bytes(self.csv, _csv_bytes(rows), overwrite=True, role="manifest")


def run_batch(config: BatchConfig, *, progress: Callable[[int, int, dict[str, Any]], None] | None = None,
              cancel: threading.Event | None = None, say: Callable[[str], None] = _say_default) -> BatchSummary:
    """Run the batch; returns its summary (the manifest is written either way).

    ``progress(finished, total, row)`` is called in this thread as each scan ends (skipped
    scans count as finished). ``cancel`` stops the batch: queued scans are cancelled, running
    ones are abandoned (their files are never half-written), the manifest says which.
    """
    from ..io.output import write_json

    started = time.monotonic()
    cancel = cancel or threading.Event()
    # -- before any compute: the scans, the family and its parameters, the output folder
    outdir = Path(config.outdir).expanduser().resolve()
    scans = collect_inputs(config.inputs, participant_labels=config.participant_labels,
                           session_labels=config.session_labels, suffixes=config.suffixes,
                           datatypes=config.datatypes, exclude=[outdir])  # never earlier results as inputs
    entry, family, params = _resolve_family(config)
    desc = check_desc(config.desc) if config.desc else desc_label(family.id)
    _check_outdir(outdir, scans)
    for ref in config.references:
        if not Path(ref).exists():
            raise InputError(f"reference {ref} does not exist")
    from ..family import OutputSpec

    names = [s.name for s in (family.outputs or [OutputSpec("image")])]
    seed = int(config.seed)
    match = {"family": family.id, "family_version": family.version, "package": entry.package,
             "params": _match_params(params), "seed": seed, "time_budget": config.time_budget}
    match["references_sha256"] = [file_sha256(r) for r in config.references]
    failures = _previous_failures(outdir) if config.retry_failed else set()
    single_root = len(bids_roots(scans)) == 1  # bids:raw: names a file of the one linked dataset
    jobs, rows, conflicts = [], [], []
    for scan in scans:
        paths = output_paths(scan, outdir, desc=desc, output_names=names)
        key = task_key(scan.path, family.id, params, seed)
        sidecar = paths["sidecar"]
        finished = False
        if not config.force and sidecar.exists():
            old = ((_read_sidecar(sidecar) or {}).get("medgen") or {}).get("batch") or {}
            if {k: old.get(k) for k in match} != match:
                conflicts.append(sidecar)  # another run's result: never replaced silently
            else:
                finished = old.get("input_sha256") == file_sha256(scan.path)
        row = {"key": key, "input": str(scan.path), "status": "skipped",
               "outputs": ";".join(str(paths[n]) for n in names), "sidecar": str(sidecar),
               "seconds": 0.0, "error": "", "worker": "", "finished": ""}
        if finished or (config.retry_failed and key not in failures):
            if not finished:
                row.update(status="not run", outputs="", error="not a failure of the last run (--retry-failed)")
            rows.append(row)
            continue
        jobs.append({
            "key": key, "input": str(scan.path), "outputs": {n: str(paths[n]) for n in names}, "sidecar": str(sidecar),
            "family": family.id, "params": params, "seed": seed, "device": config.device,
            "time_budget": config.time_budget, "references": list(config.references),
            "sources": [sources_entry(scan, link="raw" if single_root else None)], "match": dict(match), "gpus": 0, "threads": 1,
        })
    if conflicts:
        raise OutputPathError(
            f"{len(conflicts)} scan(s) have outputs from a run with other settings (first: {conflicts[0]}); "
            "use --force to replace them, or another output folder"
        )
    total = len(scans)
    summary = BatchSummary(total=total, skipped=sum(r["status"] == "skipped" for r in rows))
    manifest = _Manifest(outdir)
    summary.manifest_csv, summary.manifest_jsonl = manifest.csv, manifest.jsonl
    if any(s.is_bids for s in scans):
        roots = bids_roots(scans)
        write_json(outdir / "dataset_description.json", dataset_description(
            family_id=family.id, family_version=family.version, package=entry.package,
            napari_medgen_version=_version(), source_roots=roots), overwrite=True, role="dataset description")
    done_count = len(rows)
    if progress:
        for row in rows:
            progress(done_count, total, row)
    if not jobs:
        say(f"nothing to do: all {total} scan(s) are finished (use --force to rerun)")
        manifest.write_csv(rows)
        summary.rows = rows
        summary.elapsed = time.monotonic() - started
        return summary
    for job in jobs:  # the sidecar records the sha256 of what was read
        job["match"]["input_sha256"] = file_sha256(job["input"])
    client, cluster, plan = _connect(config, len(jobs), say)
    summary.workers = plan["n_workers"]
    try:
        link = ""
        if "dashboard" in (client.scheduler_info().get("services") or {}) and _has_bokeh():
            link = client.dashboard_link  # without bokeh the port serves no dashboard pages
        summary.dashboard = link
        say(f"{len(jobs)} scan(s) to run, {len(rows)} already finished; {plan['n_workers']} worker(s) x "
            f"{plan['threads']} torch thread(s)" + (f"; dashboard: {link}" if link else ""))
        for job in jobs:
            job["threads"], job["gpus"] = plan["threads"], plan["gpus"]
        resources = {"GPU": 1} if plan["gpus"] else None
        if _shares_model(family, config, params):
            summary.model = _train_shared_model(client, jobs, family, params, outdir, desc, resources, manifest,
                                                rows, summary, progress, total, say, cancel)
        _map_scans(client, jobs, resources, manifest, rows, summary, progress, total, cancel)
    except KeyboardInterrupt:
        cancel.set()
        raise
    finally:
        client.close()  # first: a scan still running either commits its files now or never
        if cluster is not None:
            cluster.close()
        for job in jobs:
            if not any(r["key"] == job["key"] for r in rows):
                rows.append(_unfinished_row(job))
                manifest.append(rows[-1])
                if rows[-1]["status"] == "done":
                    summary.done += 1
                else:
                    summary.cancelled += 1
        order = {str(s.path): i for i, s in enumerate(scans)}
        rows.sort(key=lambda r: order.get(r["input"], 0))
        summary.rows = rows
        manifest.write_csv(rows)
        summary.elapsed = time.monotonic() - started
    return summary


def _unfinished_row(job: dict[str, Any]) -> dict[str, Any]:
    """The row of a scan the batch stopped before hearing back: done if its files were committed."""
    row = {"key": job["key"], "input": job["input"], "status": "cancelled", "outputs": "", "sidecar": job["sidecar"],
           "seconds": 0.0, "error": "not run (cancelled)", "worker": "", "finished": ""}
    side = _read_sidecar(Path(job["sidecar"])) if Path(job["sidecar"]).exists() else None
    if side and ((side.get("medgen") or {}).get("batch") or {}) == job["match"]:
        row.update(status="done", outputs=";".join(job["outputs"].values()),
                   error="", finished="while the batch was stopping")
    return row


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def _version() -> str:
    from .. import __version__

    return __version__


def _collect(futures: dict, manifest: _Manifest, rows: list, summary: BatchSummary, progress, total: int,
             cancel: threading.Event) -> None:
    """Rows as the scans finish; ``futures`` maps each future to its job."""
    from distributed import wait

    from ..io.read import one_line

    pending = set(futures)
    while pending:
        if cancel.is_set():
            for fut in pending:
                fut.cancel()
            raise Cancelled("batch cancelled")
        try:
            finished, pending = wait(pending, timeout=0.5, return_when="FIRST_COMPLETED")
        except TimeoutError:  # nothing finished in the last half second: check for a cancel again
            continue
        for fut in finished:
            if fut.status == "finished":
                row = fut.result()
            else:  # the worker died (out of memory, killed): process_scan itself never raises
                job = futures[fut]
                error = fut.exception() if fut.status == "error" else fut.status
                row = {"key": job["key"], "input": job["input"], "status": "failed", "outputs": "",
                       "sidecar": job["sidecar"], "seconds": 0.0, "error": f"worker lost: {one_line(str(error))}",
                       "worker": "", "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            rows.append(row)
            manifest.append(row)
            if row["status"] == "done":
                summary.done += 1
            else:
                summary.failed += 1
            if progress:
                progress(len(rows), total, row)


def _map_scans(client, jobs, resources, manifest, rows, summary, progress, total, cancel) -> None:
    todo = [j for j in jobs if not any(r["key"] == j["key"] for r in rows)]
    futures = {client.submit(process_scan, job, key=job["key"], pure=False, resources=resources, retries=0): job
               for job in todo}
    _collect(futures, manifest, rows, summary, progress, total, cancel)


def _train_shared_model(client, jobs, family, params, outdir: Path, desc: str, resources, manifest, rows,
                        summary, progress, total, say, cancel) -> str:
    """Train once, apply everywhere: the first scan trains and saves the model (or a model this batch
    saved before with the same settings and references is reused); every other scan gets its bytes."""
    from ..io.output import write_json

    models = outdir / "models"
    models.mkdir(exist_ok=True)
    model_path = Path(params.get("save_model") or models / f"{desc}.safetensors")
    meta_path = model_path.with_name(model_path.name.replace(".safetensors", "") + ".batch.json")
    match = {k: v for k, v in jobs[0]["match"].items() if k != "input_sha256"}
    meta = _read_sidecar(meta_path) if meta_path.exists() else None
    rest = jobs
    if model_path.exists() and meta == match:
        say(f"applying the {family.display_name} model this batch trained before: {model_path}")
    else:
        first = jobs[0]
        first["params"] = {**first["params"], "save_model": str(model_path)}
        say(f"training the {family.display_name} model once on {Path(first['input']).name}; "
            f"it is saved to {model_path} and applied to the other scans")
        future = client.submit(process_scan, first, key=first["key"], pure=False, resources=resources)
        _collect({future: first}, manifest, rows, summary, progress, total, cancel)
        if rows[-1]["status"] != "done" or not model_path.exists():
            raise MedGenError(f"training the shared model on {first['input']} failed: {rows[-1].get('error', '?')}; "
                              "no other scan was run")
        write_json(meta_path, match, overwrite=True, role="model record")
        rest = jobs[1:]
    files = {model_path.name: model_path.read_bytes()}
    card = model_path.with_suffix(".json")
    if card.exists():
        files[card.name] = card.read_bytes()
    sha = hashlib.sha256(files[model_path.name]).hexdigest()
    shared = client.scatter({"name": model_path.name, "files": files, "sha256": sha}, broadcast=True)
    for job in rest:
        job["model"] = shared
        job["references"] = []  # the model replaces them
        job["match"] = {**job["match"], "model_sha256": sha}
    return str(model_path)

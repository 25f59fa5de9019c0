"""``medgen batch`` on Dask distributed: scaling, overhead per scan against a shell loop, resume after a kill.

Cohort: ``--scans`` pseudo-subjects (default 20) made from the 1 mm MNI152 T1 (nilearn package data,
nothing downloaded), block-averaged to 2 mm, each with its own random small rigid transform (up to
3 degrees about each axis and 3 mm, resampled with ``scipy.ndimage.affine_transform``), smooth
multiplicative bias field (up to about +-20%), Rician noise (sigma 2-4% of the bright tissue) and
intensity scale (x 200-2000), written as ``sub-XX/anat/sub-XX_T1w.nii.gz`` in a BIDS-like folder
(with ``dataset_description.json``). Every scan is the same family (default ``classic.outlier``, task
``anomaly``) with its default parameters; every command runs as a subprocess (as a user would run it).

Measured, in one run:

a. **scaling**: wall time of ``medgen batch`` with ``--workers 1 --threads <all cores>`` against the
   default local cluster (no ``--workers``: as many workers as the engine chooses), and the number of
   workers it chose (from the "N worker(s)" line the batch prints; the manifest's worker column as a check).
b. **overhead per scan**: ``medgen run`` in a shell-style loop (one ``python -m napari_medgen run``
   process per scan, one after the other) over the same scans, against the batch runs. The per-scan
   compute time is the median of the manifest's ``seconds`` column (the family's run and the writes, on a
   worker); the batch's overhead per scan = wall time x workers / scans - median compute (Dask start,
   scheduling, reading, hashing, idle workers at the end); the loop's = wall time / scans - median compute
   (a Python start and the imports in every process).
c. **resume after a kill**: ``medgen batch --workers 1`` started in its own session into a fresh folder,
   killed with SIGKILL on its whole process group (the Dask nanny and worker too) once half the scans are
   in ``manifest.jsonl``; then every ``.nii.gz`` there must load in full with nibabel, no file other
   than the scans' outputs, sidecars, manifests and the derivative's ``dataset_description.json`` may be
   left (temporaries with the ``.medgen-partial`` suffix are counted, not failed), and the same command
   run again must run exactly the scans that had no sidecar at the kill and skip the others.

    python -m benchmarks.batch [--scans 20] [--task anomaly] [--family classic.outlier] [--dry-run]
                               [--section TITLE] [--workdir DIR] [--keep]

``--dry-run``: 4 scans (unless ``--scans`` is given), the table printed, RESULTS.md not written.
Everything runs at the niceness this process has (run it under ``nice -n 19`` on a shared machine);
timings on a busy machine are noisy.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from .common import fmt, write_section

SECTION = "Batch: medgen batch on Dask against a loop of medgen run"
SEED = 2024


# -- the cohort ------------------------------------------------------------------------------------
def _template_2mm():
    """The MNI152 T1 (1 mm, [0, 1]) block-averaged 2 x 2 x 2, with its 2 mm affine."""
    from napari_medgen.io.sample import load_mni152

    t1 = load_mni152("t1")
    data = np.asarray(t1.data, dtype=np.float32)
    s = [n - n % 2 for n in data.shape]
    data = data[: s[0], : s[1], : s[2]]
    small = data.reshape(s[0] // 2, 2, s[1] // 2, 2, s[2] // 2, 2).mean(axis=(1, 3, 5), dtype=np.float32)
    affine = np.array(t1.affine, dtype=float)
    # the first 2 mm voxel's centre lies between the first two 1 mm voxels' centres
    affine[:3, 3] = affine[:3, 3] + affine[:3, :3] @ np.full(3, 0.5)
    affine[:3, :3] = affine[:3, :3] * 2.0
    return np.ascontiguousarray(small), affine


def _rotation(angles: Sequence[float]) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def pseudo_subject(template: np.ndarray, spacing_mm: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One subject: a random rigid transform, bias field, Rician noise and intensity scale of the template."""
    shape = np.asarray(template.shape)
    # small rigid transform about the volume centre (output index -> input index)
    angles = np.deg2rad(rng.uniform(-3.0, 3.0, 3))
    shift_mm = rng.uniform(-3.0, 3.0, 3)
    rot = _rotation(angles)
    centre = (shape - 1) / 2.0
    offset = centre - rot @ centre + shift_mm / spacing_mm
    image = ndimage.affine_transform(template, rot, offset=offset, order=1, mode="constant", cval=0.0)
    image = image.astype(np.float32, copy=False)
    # smooth multiplicative bias field: coarse noise (4 x 4 x 4), cubic upsampling, scaled to +-amp
    coarse = rng.standard_normal((4, 4, 4))
    field = ndimage.zoom(coarse, shape / 4.0, order=3, mode="nearest", grid_mode=True)[
        : shape[0], : shape[1], : shape[2]]
    amp = float(rng.uniform(0.08, 0.2))
    field = field / (np.abs(field).max() or 1.0)
    image *= (1.0 + amp * field).astype(np.float32)
    # Rician noise: magnitude of (signal + n1, n2), sigma relative to the bright tissue
    bright = float(np.percentile(image[image > 0.05], 99)) if np.any(image > 0.05) else 1.0
    sigma = float(rng.uniform(0.02, 0.04)) * bright
    n1 = rng.standard_normal(image.shape).astype(np.float32) * np.float32(sigma)
    n2 = rng.standard_normal(image.shape).astype(np.float32) * np.float32(sigma)
    image = np.sqrt((image + n1) ** 2 + n2**2)
    scale = float(rng.uniform(200.0, 2000.0))
    image = (image * np.float32(scale)).astype(np.float32)
    described = {"rotation_deg": np.rad2deg(angles).round(2).tolist(), "shift_mm": shift_mm.round(2).tolist(),
                 "bias_amplitude": round(amp, 3), "noise_sigma_of_bright": round(sigma / bright, 4),
                 "intensity_scale": round(scale, 1)}
    return image, described


def build_cohort(root: Path, n: int, seed: int = SEED) -> list[Path]:
    """``n`` pseudo-subjects as ``root/sub-XX/anat/sub-XX_T1w.nii.gz``; returns their paths."""
    from napari_medgen.io.nifti import write_nifti
    from napari_medgen.volume import Volume

    template, affine = _template_2mm()
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "napari-medgen batch benchmark: MNI152 pseudo-subjects at 2 mm", "BIDSVersion": "1.8.0",
         "DatasetType": "raw", "GeneratedBy": [{"Name": "benchmarks.batch"}]}, indent=1))
    paths = []
    width = max(2, len(str(n)))
    for i in range(1, n + 1):
        rng = np.random.default_rng([seed, i])
        image, described = pseudo_subject(template, 2.0, rng)
        sub = f"sub-{i:0{width}d}"
        path = root / sub / "anat" / f"{sub}_T1w.nii.gz"
        volume = Volume(image, affine.copy(), name=f"{sub} T1w", metadata={})
        write_nifti(volume, path, overwrite=True)
        (path.parent / f"{sub}_T1w.json").write_text(json.dumps({"PseudoSubject": described}, indent=1))
        paths.append(path)
    return paths


# -- running the CLI -------------------------------------------------------------------------------
def _cli(*args: str) -> list[str]:
    # --debug only adds the traceback to an error message (nothing else changes)
    return [sys.executable, "-m", "napari_medgen", "--debug", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_timed(cmd: list[str], cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=_env())
    return time.perf_counter() - t0, proc


def _fail(what: str, cmd: list[str], proc: subprocess.CompletedProcess) -> RuntimeError:
    tail = (proc.stdout[-1500:] + "\n" + proc.stderr[-3000:]).strip()
    return RuntimeError(f"{what} failed (exit {proc.returncode}): {shlex.join(cmd)}\n{tail}")


def read_manifest(outdir: Path) -> list[dict[str, str]]:
    path = outdir / "manifest.csv"
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_jsonl(outdir: Path) -> list[dict[str, Any]]:
    path = outdir / "manifest.jsonl"
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by the kill
        if isinstance(row, dict):
            rows.append(row)
    return rows


_WORKERS_RE = re.compile(r"(\d+) worker\(s\) x (\d+) torch thread")
_ELAPSED_RE = re.compile(r"of (\d+) scan\(s\) in ([0-9.]+) s")


def batch_run(task: str, family: str, bids_root: Path, outdir: Path, workers: int | None,
              threads: int | None) -> dict[str, Any]:
    """One ``medgen batch`` into a fresh ``outdir``: wall time, workers, the manifest's compute times."""
    if outdir.exists():
        shutil.rmtree(outdir)
    cmd = _cli("batch", task, str(bids_root), "-o", str(outdir), "--family", family)
    if workers is not None:
        cmd += ["--workers", str(workers)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    failures = []
    for attempt in range(2):  # one retry: a failed attempt is reported in the results, not hidden
        wall, proc = run_timed(cmd)
        if proc.returncode == 0:
            break
        error = _fail("medgen batch", cmd, proc)
        print(f"attempt {attempt + 1}: {error}", file=sys.stderr)
        failures.append(_last_error(proc))
        if attempt == 1:
            raise error
        shutil.rmtree(outdir, ignore_errors=True)
    rows = read_manifest(outdir)
    statuses = [r["status"] for r in rows]
    if not rows or any(s != "done" for s in statuses):
        raise RuntimeError(f"medgen batch: not every scan done: {statuses}\n{proc.stderr[-2000:]}")
    m = _WORKERS_RE.search(proc.stderr)
    threads_used = int(m.group(2)) if m else None
    named = len({r["worker"] for r in rows if r.get("worker")})
    e = _ELAPSED_RE.search(proc.stdout)
    seconds = [float(r["seconds"]) for r in rows]
    return {"cmd": cmd, "wall": wall, "workers": int(m.group(1)) if m else named, "workers_used": named,
            "threads": threads_used, "engine_elapsed": float(e.group(2)) if e else None,
            "median_compute": statistics.median(seconds), "sum_compute": sum(seconds), "n": len(rows),
            "failed_attempts": failures}


def _last_error(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("medgen:") or "Error" in ln]
    return (errors or lines or [f"exit {proc.returncode}"])[-1].strip()[:300]


def loop_run(task: str, family: str, scans: Sequence[Path], outdir: Path) -> dict[str, Any]:
    """``medgen run`` once per scan, sequentially, as a shell ``for`` loop would."""
    if outdir.exists():
        shutil.rmtree(outdir)
    outdir.mkdir(parents=True)
    times = []
    t0 = time.perf_counter()
    for scan in scans:
        stem = scan.name.replace(".nii.gz", "")
        cmd = _cli("run", task, str(scan), "-o", str(outdir / f"{stem}_{family}.nii.gz"), "--family", family, "-q")
        dt, proc = run_timed(cmd)
        if proc.returncode != 0:
            raise _fail("medgen run", cmd, proc)
        times.append(dt)
    wall = time.perf_counter() - t0
    return {"wall": wall, "per_scan": wall / len(scans), "median": statistics.median(times),
            "min": min(times), "max": max(times)}


# -- resume after a kill ---------------------------------------------------------------------------
def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _loads(path: Path) -> bool:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        np.asarray(img.dataobj)  # the whole gzip stream, not only the header
        return True
    except Exception:  # noqa: BLE001 - any failure is a partial file
        return False


def resume_check(task: str, family: str, bids_root: Path, outdir: Path, n: int, threads: int,
                 timeout: float = 1800.0) -> dict[str, Any]:
    from napari_medgen.io.output import PARTIAL_SUFFIX

    if outdir.exists():
        shutil.rmtree(outdir)
    cmd = _cli("batch", task, str(bids_root), "-o", str(outdir), "--family", family, "--workers", "1",
               "--threads", str(threads), "-q")
    target = max(1, n // 2)
    log = outdir.parent / f"{outdir.name}.killed.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=_env())
    pgid = proc.pid  # a new session: the batch is its process group's leader
    t0 = time.perf_counter()
    killed = False
    while time.perf_counter() - t0 < timeout:
        done = sum(r.get("status") == "done" for r in read_jsonl(outdir))
        if done >= target:
            os.killpg(pgid, signal.SIGKILL)
            killed = True
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    kill_after = time.perf_counter() - t0
    if not killed:
        if proc.poll() is None:
            os.killpg(pgid, signal.SIGKILL)
        proc.wait()
        raise RuntimeError(f"the batch to kill ended (exit {proc.returncode}) or timed out before {target} scans "
                           f"were done; its output:\n{log.read_text()[-3000:]}")
    proc.wait()
    deadline = time.perf_counter() + 10
    while _group_alive(pgid) and time.perf_counter() < deadline:
        time.sleep(0.1)
    survivors = _group_alive(pgid)
    if survivors:  # only our own group: the batch and the Dask processes it started
        os.killpg(pgid, signal.SIGKILL)
    jsonl_at_kill = read_jsonl(outdir)
    done_in_jsonl = sum(r.get("status") == "done" for r in jsonl_at_kill)
    files = sorted(p for p in outdir.rglob("*") if p.is_file())
    niftis = [p for p in files if p.name.endswith(".nii.gz")]
    broken = [p for p in niftis if not _loads(p)]
    partial = [p for p in files if PARTIAL_SUFFIX in p.name]
    sidecars_at_kill = {p for p in files if p.name.endswith(".json") and p.name != "dataset_description.json"}
    # the rerun: the same command
    wall, rerun = run_timed(cmd)
    rows = read_manifest(outdir)
    new_lines = read_jsonl(outdir)[len(jsonl_at_kill):]
    rerun_done = sum(r.get("status") == "done" for r in new_lines)
    skipped = sum(r["status"] == "skipped" for r in rows)
    final_done = sum(r["status"] == "done" for r in rows)
    expected = {outdir / "manifest.csv", outdir / "manifest.jsonl", outdir / "dataset_description.json"}
    for r in rows:
        expected.update(Path(p) for p in r["outputs"].split(";") if p)
        expected.add(Path(r["sidecar"]))
    stray = [p for p in files if p not in expected and PARTIAL_SUFFIX not in p.name]
    committed = sum(1 for r in rows if Path(r["sidecar"]) in sidecars_at_kill)
    unfinished = n - committed
    ok = (rerun.returncode == 0 and not broken and not stray and not survivors and rerun_done == unfinished
          and skipped == committed and final_done + skipped == n)
    return {"cmd": cmd, "kill_after": kill_after, "done_in_jsonl": done_in_jsonl, "committed": committed,
            "unfinished": unfinished, "niftis": len(niftis), "broken": [str(p) for p in broken],
            "partial": [str(p) for p in partial], "stray": [str(p) for p in stray], "survivors": survivors,
            "rerun_exit": rerun.returncode, "rerun_done": rerun_done, "skipped": skipped, "rerun_wall": wall,
            "ok": ok, "rerun_tail": (rerun.stdout[-1000:] + rerun.stderr[-2000:]).strip()}


# -- the report ------------------------------------------------------------------------------------
def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def report(args, n: int, cores: int, one: dict, dflt: dict, loop: dict, res: dict, load: tuple[str, str],
           shape: tuple[int, ...], build_s: float, nice: int) -> str:
    def overhead(b: dict) -> float:
        return b["wall"] * b["workers"] / n - b["median_compute"]

    loop_over = loop["per_scan"] - one["median_compute"]
    rows = [
        ("`medgen run` loop (1 process per scan)", "1", fmt(loop["wall"], ".1f"), fmt(loop["per_scan"], ".2f"),
         f"{fmt(loop['median'], '.2f')} median process ({fmt(loop['min'], '.2f')}-{fmt(loop['max'], '.2f')})",
         fmt(loop_over, ".2f")),
        (f"`medgen batch --workers 1 --threads {cores}`", f"1 x {one['threads']}", fmt(one["wall"], ".1f"),
         fmt(one["wall"] / n, ".2f"), f"{fmt(one['median_compute'], '.2f')} median compute", fmt(overhead(one), ".2f")),
        ("`medgen batch` (default local cluster)", f"{dflt['workers']} x {dflt['threads']}", fmt(dflt["wall"], ".1f"),
         fmt(dflt["wall"] / n, ".2f"), f"{fmt(dflt['median_compute'], '.2f')} median compute",
         fmt(overhead(dflt), ".2f")),
    ]
    table = ("| run | workers x threads | wall (s) | wall / scan (s) | per scan (s) | overhead / scan (s) |\n"
             "|---|---|---|---|---|---|\n" + "\n".join("| " + " | ".join(r) + " |" for r in rows))
    ratio = one["wall"] / dflt["wall"]
    figures = [
        ("scans", str(n)),
        ("scaling: time 1 worker / time default", f"{ratio:.2f} (default chose {dflt['workers']} worker(s) x "
         f"{dflt['threads']} thread(s); {dflt['workers_used']} worker(s) ran scans)"),
        ("loop / default batch", f"{loop['wall'] / dflt['wall']:.2f}"),
        ("engine's own elapsed (from its summary; excludes the Python start)",
         f"1 worker {fmt(one['engine_elapsed'], '.1f')} s, default {fmt(dflt['engine_elapsed'], '.1f')} s"),
        ("batch fixed cost (wall - sum of compute / workers: start, imports, cluster, idle tail)",
         f"1 worker {fmt(one['wall'] - one['sum_compute'], '.1f')} s, default "
         f"{fmt(dflt['wall'] - dflt['sum_compute'] / dflt['workers'], '.1f')} s"),
        ("resume: killed after", f"{res['kill_after']:.1f} s, {res['done_in_jsonl']} scan(s) in manifest.jsonl, "
         f"{res['committed']} with a sidecar (finished)"),
        ("resume: files after the kill", f"{res['niftis']} .nii.gz, all load: {'yes' if not res['broken'] else 'NO'}; "
         f"{len(res['partial'])} `.medgen-partial` temporaries; {len(res['stray'])} other stray file(s); "
         f"Dask processes left: {'yes' if res['survivors'] else 'none'}"),
        ("resume: rerun", f"{res['rerun_done']} run, {res['skipped']} skipped of {n} (expected {res['unfinished']} run, "
         f"{res['committed']} skipped), exit {res['rerun_exit']}, {res['rerun_wall']:.1f} s"),
        ("resume check", "**pass**" if res["ok"] else "**FAIL**"),
    ]
    for label, b in (("1 worker", one), ("default", dflt)):
        for error in b["failed_attempts"]:
            figures.append((f"failed attempt (batch {label}, rerun once; the row is the rerun)", f"`{error}`"))
    figs = "| figure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in figures)
    notes = (
        f"Cohort: {n} pseudo-subjects from the MNI152 2009a T1 (nilearn package data) block-averaged to 2 mm "
        f"({' x '.join(map(str, shape))}), each with a random rigid transform (<= 3 degrees, <= 3 mm), a smooth "
        "bias field (8-20%), Rician noise (2-4% of the bright tissue) and an intensity scale (x 200-2000), as "
        f"BIDS `sub-XX/anat/sub-XX_T1w.nii.gz` (built in {build_s:.0f} s). Task `{args.task}`, family "
        f"`{args.family}` with its defaults, device auto (CPU here). Every command is a subprocess, run one after "
        f"the other at niceness {nice}: the `medgen run` loop, `medgen batch --workers 1 --threads {cores}` and "
        "`medgen batch` with the default local cluster, each into a fresh folder (the wall times include the "
        "Python start, the imports, the Dask cluster's start and stop). Per scan, batch rows: the median of the "
        "manifest's `seconds` (the family's run and the writes, on a worker; the first scan on each worker also "
        "pays that worker's imports, which the median leaves out, the fixed cost below counts in); "
        "overhead / scan = wall x workers "
        "/ scans - that median; loop row: the median wall time of one `medgen run` process, and overhead / scan "
        "= loop wall / scans - the 1-worker batch's median compute (one scan at a time on all cores, as in the "
        "loop; Python start and imports dominate it). "
        f"Load average before / after: {load[0]} / {load[1]}; the machine is shared, so the timings are noisy. "
        "Resume: `medgen batch --workers 1 -q` started in its own session, SIGKILL to its process group once "
        f"{max(1, n // 2)} scans are in manifest.jsonl, then the same command again."
    )
    return notes + "\n\n" + table + "\n\n" + figs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=None, help="cohort size (default 20; 4 with --dry-run)")
    parser.add_argument("--task", default="anomaly")
    parser.add_argument("--family", default="classic.outlier")
    parser.add_argument("--dry-run", action="store_true", help="4 scans, print the table, RESULTS.md untouched")
    parser.add_argument("--section", default=SECTION, help="the RESULTS.md section's title")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the cohort and outputs here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    n = args.scans or (4 if args.dry_run else 20)
    if n < 2:
        parser.error("--scans must be at least 2")
    cores = os.cpu_count() or 1
    nice = os.nice(0)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="medgen-batch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        load_before = _loadavg()
        t0 = time.perf_counter()
        bids = work / "rawdata"
        if bids.exists():
            shutil.rmtree(bids)
        scans = build_cohort(bids, n)
        build_s = time.perf_counter() - t0
        import nibabel as nib

        shape = tuple(int(s) for s in nib.load(str(scans[0])).shape)
        print(f"cohort: {n} scans {shape} in {bids} ({build_s:.1f} s)", file=sys.stderr)
        # warm the page cache for the interpreter and the imports (not timed)
        warm_cmd = _cli("run", args.task, str(scans[0]), "-o", str(work / "warmup" / "warm.nii.gz"),
                        "--family", args.family, "-q", "--overwrite")
        (work / "warmup").mkdir(exist_ok=True)
        dt, proc = run_timed(warm_cmd)
        if proc.returncode != 0:
            raise _fail("warm-up medgen run", warm_cmd, proc)
        print(f"warm-up medgen run: {dt:.1f} s", file=sys.stderr)
        one = batch_run(args.task, args.family, bids, work / "batch_1worker", 1, cores)
        print(f"batch 1 worker: {one['wall']:.1f} s", file=sys.stderr)
        dflt = batch_run(args.task, args.family, bids, work / "batch_default", None, None)
        print(f"batch default ({dflt['workers']} workers): {dflt['wall']:.1f} s", file=sys.stderr)
        loop = loop_run(args.task, args.family, scans, work / "loop")
        print(f"medgen run loop: {loop['wall']:.1f} s", file=sys.stderr)
        res = resume_check(args.task, args.family, bids, work / "batch_resume", n, cores)
        print(f"resume: {'pass' if res['ok'] else 'FAIL'}", file=sys.stderr)
        load_after = _loadavg()
        body = report(args, n, cores, one, dflt, loop, res, (load_before, load_after), shape, build_s, nice)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            print(f"kept {work}", file=sys.stderr)
    if not res["ok"]:
        print("resume check FAILED: " + json.dumps({k: v for k, v in res.items() if k != "cmd"}, indent=1,
                                                   default=str), file=sys.stderr)
    command = "python -m benchmarks.batch" + (" " + shlex.join(argv if argv is not None else sys.argv[1:])
                                              if (argv if argv is not None else sys.argv[1:]) else "")
    if args.dry_run:
        print(f"\n## {args.section} (dry run, RESULTS.md not written)\n\nCommand: `{command}`\n\n{body}")
    else:
        print(body)
        write_section(args.section, command, body)
    return 0 if res["ok"] else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Shared benchmark helpers: ground-truth volumes, metrics, timing and the results file."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import subprocess
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

from napari_medgen.io.sample import load_mni152
from napari_medgen.volume import Volume

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GiB RAM, {gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or "uncommitted"
    except OSError:
        return "unknown"


def ground_truths() -> dict[str, tuple[Volume, np.ndarray]]:
    """MNI152 T1 (1 mm) and a T2-like contrast synthesised from its tissue maps, with a brain mask."""
    t1 = load_mni152("t1")
    gm = np.asarray(load_mni152("gm").data)
    wm = np.asarray(load_mni152("wm").data)
    head = ndimage.binary_fill_holes(ndimage.gaussian_filter(np.asarray(t1.data), 1.0) > 0.1)
    brain = (gm + wm) > 0.5
    brain = ndimage.binary_closing(brain, iterations=2)
    intracranial = ndimage.binary_fill_holes(ndimage.binary_dilation(brain, iterations=3))
    csf = np.clip(intracranial.astype(np.float32) - gm - wm, 0, 1)
    # T2-like: CSF bright, grey > white, scalp/skull from the T1 dimmed, smooth texture
    t2 = 1.0 * csf + 0.55 * gm + 0.3 * wm + 0.25 * np.asarray(t1.data) * (head & ~intracranial)
    t2 = ndimage.gaussian_filter(t2.astype(np.float32), 0.5)
    t2_vol = t1.with_data(t2.astype(np.float32), name="synthetic T2")
    return {"T1 (MNI152)": (t1, brain), "T2-like (synthetic)": (t2_vol, brain)}


def psnr(truth: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None, data_range: float | None = None) -> float:
    data_range = float(truth.max() - truth.min()) if data_range is None else data_range
    diff = (test.astype(np.float64) - truth.astype(np.float64))
    if mask is not None:
        diff = diff[mask]
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)


def ssim(truth: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None, data_range: float | None = None) -> float:
    data_range = float(truth.max() - truth.min()) if data_range is None else data_range
    value, smap = structural_similarity(truth.astype(np.float64), test.astype(np.float64), data_range=data_range,
                                        full=True, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    return float(smap[mask].mean()) if mask is not None else float(value)


def hf_energy_ratio(truth: np.ndarray, test: np.ndarray, axis: int, cutoff_cycles_per_voxel: float,
                    mask: np.ndarray) -> float:
    """Energy above a frequency along ``axis`` (through-plane), test / truth, inside the mask's box.

    1.0 = as sharp as the truth; blur gives < 1, ringing or noise > 1.
    """
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask))
    t = truth[box].astype(np.float64)
    s = test[box].astype(np.float64)
    freqs = np.abs(np.fft.rfftfreq(t.shape[axis]))
    sel = freqs > cutoff_cycles_per_voxel
    def energy(a):
        spec = np.abs(np.fft.rfft(a - a.mean(axis=axis, keepdims=True), axis=axis)) ** 2
        spec = np.moveaxis(spec, axis, 0)
        return float(spec[sel].sum())
    return energy(s) / max(energy(t), 1e-12)


@dataclass
class Timed:
    value: Any
    seconds: float
    peak_mb: float


def timed(fn: Callable[[], Any]) -> Timed:
    """Wall time and peak traced memory (Python + NumPy allocations) of ``fn()``."""
    tracemalloc.start()
    t0 = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return Timed(value, seconds, peak / 2**20)


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def publish(title: str, body: str, dry_run: bool = False) -> None:
    """Write the section ``title`` of RESULTS.md, or only print it (``dry_run``: smoke tests)."""
    if dry_run:
        print(f"\n## {title} (dry run, RESULTS.md not written)\n\n{body}")
    else:
        write_section(title, "make bench", body)


def write_section(title: str, command: str, body: str) -> None:
    """Replace (or append) the section ``title`` of RESULTS.md."""
    header = f"## {title}"
    stamp = (f"{header}\n\nCommand: `{command}`  \nMachine: {machine()}  \n"
             f"Date: {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} (revision {git_revision()})\n\n")
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nWritten by `make bench`.\n\n"
    parts = text.split("\n## ")
    head, sections = parts[0], ["## " + p for p in parts[1:]]
    sections = [s for s in sections if not s.startswith(header + "\n")]
    sections.append(stamp + body.rstrip() + "\n")
    RESULTS.write_text(head.rstrip() + "\n\n" + "\n".join(s.rstrip() + "\n" for s in sections))


def merge_json(path: Path, entries: dict[str, Any]) -> None:
    """Add ``entries`` to the JSON object stored at ``path`` (a damaged file starts afresh), atomically."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    data = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
    data.update(entries)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    tmp.replace(path)


def family_registry():
    """The family registry (imported on first use, so a benchmark module loads no plugin at import)."""
    from napari_medgen.registry import get_registry

    return get_registry()


def small_info(info: Any) -> Any:
    """A family's info record without its big lists (it goes into a benchmark's JSON file)."""
    try:
        text = json.dumps(info, default=str)
    except (TypeError, ValueError):
        return str(info)[:2000]
    return json.loads(text) if len(text) < 20000 else text[:2000]


def fmt(v: Any, spec: str = ".2f", none: str = "-") -> str:
    """A table cell: ``v`` formatted, or ``none`` for a missing or non-finite value."""
    return none if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def size_tag(small: bool) -> str:
    """The cases' resolution in a benchmark's JSON keys."""
    return "2mm" if small else "1mm"

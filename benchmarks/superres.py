"""Super-resolution: thick-slice acquisitions of MNI152 (T1 and a synthetic T2) restored to 1 mm.

Cases: 2, 4 and 6 mm slices with a Gaussian profile (FWHM = thickness), and 4 mm slices
with a 1 mm gap. Metrics: PSNR and SSIM inside the brain and over the whole volume, the
through-plane high-frequency energy ratio to the ground truth (sharpness: blur < 1), wall
time and peak memory.

Methods: ``classic.linear``, ``classic.cubic``, ``medgen.selfsr:fast``,
``medgen.selfsr:quality`` and ``eclare`` (the PyPI package, run from its own virtual
environment through ``ECLARE_PYTHON``; it is never imported here). ``quality`` gets the
time ECLARE took on the same case when ECLARE ran, else ``--quality-budget`` seconds.

    python -m benchmarks.superres [--methods ...] [--cases 4mm,...] [--contrasts t1,t2]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_medgen import Inputs
from napari_medgen.io.nifti import read_nifti, write_nifti
from napari_medgen.io.sample import simulate_thick_slices
from napari_medgen.registry import get_registry
from napari_medgen.runner import run_family

from .common import hf_energy_ratio, psnr, ssim, timed, write_section

CASES = {"2mm": ("2 mm", 2.0, 0.0), "4mm": ("4 mm", 4.0, 0.0), "6mm": ("6 mm", 6.0, 0.0),
         "4mm+gap": ("4 mm + 1 mm gap", 4.0, 1.0)}
CONTRASTS = {"t1": "T1 (MNI152)", "t2": "T2-like (synthetic)"}
DEFAULT_METHODS = "classic.linear,classic.cubic,medgen.selfsr:fast,medgen.selfsr:quality,eclare"
HEADER = ["| contrast | case | method | PSNR brain (dB) | SSIM brain | PSNR whole (dB) | SSIM whole | HF ratio | "
          "time (s) | peak mem (MB) | notes |", "|---|---|---|---|---|---|---|---|---|---|---|"]


def crop_to_multiple(volume, step: int, mask):
    """Crop axis 0 so the thick grid tiles it exactly (output voxels then coincide with the truth's)."""
    n = (volume.shape[0] // step) * step
    start = (volume.shape[0] - n) // 2
    sl = slice(start, start + n)
    affine = volume.affine.copy()
    affine[:3, 3] = volume.index_to_world([start, 0, 0])[0]
    return volume.with_data(np.asarray(volume.data)[sl], affine=affine), mask[sl]


def run_eclare(lr, truth, thick: float, gap: float, n_patches: int) -> tuple[np.ndarray, float, float, str]:
    """ECLARE from its own venv on the same input; its output resampled onto the truth grid if shifted."""
    python = os.environ.get("ECLARE_PYTHON", "benchmarks/.venv-eclare/bin/python")
    if not Path(python).exists():
        raise FileNotFoundError(f"ECLARE's interpreter {python} is missing: run `make eclare-env`")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "lr.nii.gz"
        write_nifti(lr, src)
        cmd = [python, "-c", "from eclare.main import main; main()", "--in-fpath", str(src), "--out-dir", tmp,
               "--n-patches", str(n_patches), "--relative-slice-thickness", f"{thick / (thick + gap):.4f}",
               "--gpu-id", "-1"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
        if proc.returncode != 0:
            raise RuntimeError(f"ECLARE failed: {proc.stderr[-2000:]}")
        out = read_nifti(Path(tmp) / "lr_eclare.nii.gz")
    mapping = np.linalg.inv(out.affine) @ truth.affine  # truth index -> ECLARE index
    note = f"n_patches={n_patches}, profile given"
    shift = mapping[:3, 3]
    if np.allclose(mapping[:3, :3], np.eye(3), atol=1e-4) and np.allclose(shift, np.round(shift), atol=1e-3):
        idx = tuple(slice(int(round(s)), int(round(s)) + n) for s, n in zip(shift, truth.shape))
        data = np.asarray(out.data)[idx]
        if data.shape != truth.shape:  # pad where ECLARE's grid is shorter
            data = np.pad(data, [(0, t - d) for t, d in zip(truth.shape, data.shape)], mode="edge")
    else:
        data = ndimage.affine_transform(np.asarray(out.data, np.float32), mapping[:3, :3], mapping[:3, 3],
                                        output_shape=truth.shape, order=3, mode="nearest")
        note += f"; output grid offset {np.round(shift, 2).tolist()} voxels, resampled (cubic) onto the truth grid"
    data = data.astype(np.float32)
    keep = Path("benchmarks/out")
    keep.mkdir(parents=True, exist_ok=True)
    write_nifti(truth.with_data(data, name="eclare"), keep / f"eclare_{thick:g}mm_gap{gap:g}.nii.gz")
    return data, seconds, peak, note


def best_slice_shift(truth: np.ndarray, out: np.ndarray, mask: np.ndarray, data_range: float) -> tuple[float, float]:
    """The sub-voxel shift along the slice axis (-2..2 voxels) that best aligns ``out`` with the truth.

    A peer whose output content sits off its own affine is given the benefit of the doubt.
    """
    best = (0.0, psnr(truth, out, mask, data_range))
    for shift in np.arange(-2.0, 2.01, 0.25):
        moved = ndimage.shift(out, (shift, 0, 0), order=3, mode="nearest")
        value = psnr(truth, moved, mask, data_range)
        if value > best[1] + 1e-6:
            best = (float(shift), value)
    return best


def run(methods: list[str], cases: list[str], contrasts: list[str], quality_budget: float, eclare_patches: int,
        eclare_cases: list[str]) -> str:
    from napari_medgen.engine.device import resolve_device

    from .common import ground_truths

    resolve_device("auto")  # one-off torch import, kept out of the timings
    reg = get_registry()
    truths = ground_truths()
    rows = list(HEADER)
    for ckey in contrasts:
        contrast = CONTRASTS[ckey]
        truth_full, mask_full = truths[contrast]
        for key in cases:
            case, thick, gap = CASES[key]
            step = int(round(thick + gap))
            truth, mask = crop_to_multiple(truth_full, step, mask_full)
            lr = simulate_thick_slices(truth, thick, axis=0, gap_mm=gap)
            t = np.asarray(truth.data)
            rng = float(t.max() - t.min())
            eclare_seconds = None
            ordered = sorted(methods, key=lambda m: 0 if m == "eclare" else 1)  # ECLARE first: it sets quality's time
            for method in ordered:
                note = ""
                if method == "eclare":
                    if key not in eclare_cases or ckey != "t1":
                        continue
                    out, seconds, peak, note = run_eclare(lr, truth, thick, gap, eclare_patches)
                    eclare_seconds = seconds
                    shift, best = best_slice_shift(t, out, mask, rng)
                    if shift != 0.0:
                        note += (f"; as written {psnr(t, out, mask, rng):.2f} dB in the brain, best aligned after a "
                                 f"{shift:+.2f}-voxel slice-axis shift (shown)")
                        out = ndimage.shift(out, (shift, 0, 0), order=3, mode="nearest").astype(np.float32)
                    else:
                        note += "; aligned as written (no sub-voxel shift improves it)"
                else:
                    if method.endswith(":quality") and (key not in eclare_cases or ckey != "t1"):
                        continue  # long runs only where they are compared with ECLARE
                    fid, _, preset = method.partition(":")
                    entry = reg.get(fid)
                    p: dict = {"target_spacing": "1.0"}
                    budget = None
                    if preset:
                        p["preset"] = preset
                        p["slice_thickness"] = thick
                        if preset == "quality":
                            budget = eclare_seconds or quality_budget
                            note = f"time budget {budget:.0f} s" + (" (= ECLARE's time)" if eclare_seconds else "")
                    res = timed(lambda: run_family(entry.family, Inputs(image=lr), p, seed=0, time_budget=budget))
                    out = np.asarray(res.value.primary.volume.data)
                    seconds, peak = res.seconds, res.peak_mb
                    training = res.value.info.get("training")
                    if training:
                        note = (note + "; " if note else "") + f"{training['steps']} training steps"
                if out.shape != t.shape:
                    raise SystemExit(f"{method}: output shape {out.shape} != truth {t.shape} for {case}")
                hf = hf_energy_ratio(t, out, axis=0, cutoff_cycles_per_voxel=0.5 / (thick + gap), mask=mask)
                rows.append(
                    f"| {contrast} | {case} | {method} | {psnr(t, out, mask, rng):.2f} | {ssim(t, out, mask, rng):.4f} | "
                    f"{psnr(t, out, None, rng):.2f} | {ssim(t, out, None, rng):.4f} | {hf:.3f} | "
                    f"{seconds:.0f} | {peak:.0f} | {note} |"
                )
                print(rows[-1], flush=True)
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--contrasts", default="t1,t2")
    parser.add_argument("--eclare-cases", default="4mm",
                        help="T1 cases ECLARE and the quality preset run on (both are slow on a CPU)")
    parser.add_argument("--eclare-patches", type=int, default=11200, help="ECLARE training patches (default 1e6)")
    parser.add_argument("--quality-budget", type=float, default=1800.0, help="quality preset seconds without ECLARE")
    parser.add_argument("--section", default="Super-resolution")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    table = run(methods, args.cases.split(","), args.contrasts.split(","), args.quality_budget, args.eclare_patches,
                args.eclare_cases.split(","))
    body = (
        "Ground truth: MNI152 2009a T1 at 1 mm (nilearn wheel) and a T2-like contrast built from its GM/WM maps; "
        "thick slices simulated along axis 0 (inferior-superior) with a Gaussian profile, FWHM = thickness; "
        "output at 1 mm isotropic on the truth's grid. Brain = GM+WM probability > 0.5. HF ratio: through-plane "
        "spectral energy above the thick acquisition's Nyquist frequency, output / truth (1 = as sharp as the truth, "
        "< 1 = blurred; interpolation kinks also add energy there, which is why linear can score above cubic). "
        "Time is wall time of the whole run (training + inference) and excludes the one-off torch import; peak "
        "memory is NumPy/Python allocations traced during the run (ECLARE: peak RSS of its process). "
        "medgen.selfsr is given the slice thickness; ECLARE is given the same Gaussian profile "
        "(--relative-slice-thickness, so its ESPRESO profile estimation is skipped) and runs on the CPU with all "
        "cores, its patch budget cut as noted (its default is 1,000,000).\n\n"
        f"Command: `python -m benchmarks.superres {' '.join(argv or sys.argv[1:])}`\n\n" + table
    )
    write_section(args.section, "make bench", body)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

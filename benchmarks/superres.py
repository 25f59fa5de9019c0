"""Super-resolution: thick-slice acquisitions of MNI152 (T1 and a synthetic T2) restored to 1 mm.

A case is (contrast, slice axis, slice profile, field of view):

- contrast: ``t1`` (MNI152 2009a) or ``t2`` (a T2-like contrast built from its tissue maps);
- slice axis: 0 (axial, inferior-superior), 1 (coronal, posterior-anterior) or 2 (sagittal,
  left-right);
- slice profile: Gaussian, FWHM 2, 3, 4, 5 or 6 mm without gap (spacing = FWHM; keys ``2mm`` ..
  ``6mm``), or with a gap: ``3mm@4`` (FWHM 3 mm every 4 mm) and ``2mm@4`` (FWHM 2 mm every 4 mm);
- field of view: ``whole`` (the template) or ``crop`` (a targeted field of view, 96 mm along
  axis 0 and 128 mm along axes 1 and 2, centred on the brain mask's bounding box).

The truth (and its brain mask) is cropped along the slice axis to a multiple of the slice
spacing, so the 1 mm output grid coincides with the truth's.

Methods: ``classic.linear``, ``classic.cubic``, ``medgen.selfsr:fast``,
``medgen.selfsr:quality`` and ``eclare`` (the PyPI package, run from its own virtual
environment through ``ECLARE_PYTHON``; it is never imported here). The learned family runs in
each ``--modes`` mode: ``blind`` (slice_thickness left at its default "auto": the profile is
estimated from the scan) or ``given`` (slice_thickness = the true FWHM). ECLARE and ``quality``
run only on the T1 axial 4 mm whole case; ECLARE is given the true relative slice thickness,
``quality`` runs in ``--quality-mode`` (default given, like ECLARE) with the time ECLARE took
as its budget when ECLARE ran, else ``--quality-budget`` seconds. ``classic.cubic`` runs on
every case (the reference of the gain column) even when not listed in ``--methods``.

    python -m benchmarks.superres [--methods ...] [--contrasts t1,t2] [--axes 0,1,2]
        [--cases 2mm,3mm,4mm,5mm,6mm,3mm@4,2mm@4] [--fov whole,crop] [--modes blind,given]
        [--runs "t1/0,1,2/4mm/whole/blind;t2/2/5mm/crop/blind"] [--max-steps N] [--dry-run]

``--runs`` replaces the product of --contrasts/--axes/--cases/--fov/--modes by a union of
such products (``contrasts/axes/cases/fovs[/modes]``, separated by ``;``). Without
restrictions the full matrix runs: 84 cases, 168 ``fast`` runs of about 3.5 minutes each on 2
CPU cores: about 11 hours with the baselines, plus about 50 minutes for the ECLARE case (ECLARE, then
``quality`` for as long).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from napari_medgen import Inputs
from napari_medgen.io.nifti import read_nifti, write_nifti
from napari_medgen.io.sample import simulate_thick_slices
from napari_medgen.registry import get_registry
from napari_medgen.runner import run_family

from .common import hf_energy_ratio, psnr, publish, ssim, timed

#: case key -> (profile FWHM mm, slice spacing mm); the gap is spacing - FWHM
CASES: dict[str, tuple[float, float]] = {
    "2mm": (2.0, 2.0), "3mm": (3.0, 3.0), "4mm": (4.0, 4.0), "5mm": (5.0, 5.0), "6mm": (6.0, 6.0),
    "3mm@4": (3.0, 4.0), "2mm@4": (2.0, 4.0),
}
CONTRASTS = {"t1": "T1 (MNI152)", "t2": "T2-like (synthetic)"}
AXES = {0: "axial (0)", 1: "coronal (1)", 2: "sagittal (2)"}
AXIS_NAMES = {"axial": 0, "coronal": 1, "sagittal": 2}
FOVS = ("whole", "crop")
MODES = ("blind", "given")
#: the targeted field of view of the ``crop`` cases, mm per array axis
CROP_MM = (96.0, 128.0, 128.0)
#: the one case ECLARE (and the quality preset) run on: contrast, axis, case key, FOV
ECLARE_CASE = ("t1", 0, "4mm", "whole")
DEFAULT_METHODS = "classic.linear,classic.cubic,medgen.selfsr:fast,medgen.selfsr:quality,eclare"
HEADER = [("| contrast | slice axis | FWHM / spacing (mm) | FOV | method | mode | est. FWHM (mm) | PSNR brain (dB) | "
           "SSIM brain | gain over cubic (dB) | HF ratio | time (s) | training steps | fallback | notes |"),
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]


@dataclass(frozen=True)
class Case:
    contrast: str  # t1 | t2
    axis: int  # 0 | 1 | 2
    key: str  # "4mm", "3mm@4", ...
    fov: str  # whole | crop

    @property
    def fwhm(self) -> float:
        return parse_case_key(self.key)[0]

    @property
    def spacing(self) -> float:
        return parse_case_key(self.key)[1]

    @property
    def gap(self) -> float:
        return self.spacing - self.fwhm

    @property
    def profile_label(self) -> str:
        return f"{self.fwhm:g} / {self.spacing:g}"


def parse_case_key(key: str) -> tuple[float, float]:
    """``"4mm"`` -> (4, 4); ``"3mm@4"`` -> (3, 4): (FWHM, spacing) in mm; the spacing must be whole mm."""
    if key in CASES:
        return CASES[key]
    m = re.fullmatch(r"(\d+(?:\.\d+)?)mm(?:@(\d+))?", key.strip())
    if not m:
        raise SystemExit(f"unknown case {key!r}: use e.g. 4mm (FWHM = spacing) or 3mm@4 (FWHM 3 mm every 4 mm)")
    fwhm = float(m.group(1))
    spacing = float(m.group(2)) if m.group(2) else fwhm
    if not spacing.is_integer() or fwhm <= 0 or fwhm > spacing:
        raise SystemExit(f"case {key!r}: the spacing must be a whole number of mm (the truth's voxel is 1 mm) "
                         "and at least the FWHM")
    return fwhm, spacing


def parse_axes(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        axis = AXIS_NAMES.get(part, None)
        if axis is None:
            if part not in ("0", "1", "2"):
                raise SystemExit(f"unknown slice axis {part!r}: 0, 1, 2, axial, coronal or sagittal")
            axis = int(part)
        out.append(axis)
    return out


def split_csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def expand(contrasts: list[str], axes: list[int], keys: list[str], fovs: list[str],
           modes: list[str]) -> list[tuple[Case, tuple[str, ...]]]:
    """Every combination, each case with the learned family's modes."""
    for c in contrasts:
        if c not in CONTRASTS:
            raise SystemExit(f"unknown contrast {c!r}: {', '.join(CONTRASTS)}")
    for f in fovs:
        if f not in FOVS:
            raise SystemExit(f"unknown field of view {f!r}: {', '.join(FOVS)}")
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"unknown mode {m!r}: {', '.join(MODES)}")
    for k in keys:
        parse_case_key(k)
    return [(Case(c, a, k, f), tuple(modes)) for c, a, k, f in itertools.product(contrasts, axes, keys, fovs)]


def parse_runs(text: str, default_modes: list[str]) -> list[tuple[Case, tuple[str, ...]]]:
    """``contrasts/axes/cases/fovs[/modes]`` products separated by ``;``, merged in order (modes united)."""
    merged: dict[Case, list[str]] = {}
    for spec in [s.strip() for s in text.split(";") if s.strip()]:
        parts = spec.split("/")
        if len(parts) not in (4, 5):
            raise SystemExit(f"--runs item {spec!r}: expected contrasts/axes/cases/fovs[/modes]")
        modes = split_csv(parts[4]) if len(parts) == 5 else default_modes
        product = expand(split_csv(parts[0]), parse_axes(parts[1]), split_csv(parts[2]), split_csv(parts[3]), modes)
        for case, ms in product:
            have = merged.setdefault(case, [])
            have.extend(m for m in ms if m not in have)
    return [(case, tuple(m for m in MODES if m in ms)) for case, ms in merged.items()]


# -- geometry ------------------------------------------------------------------------------------
def crop_box(volume, mask, box: tuple[slice, ...]):
    """``volume`` and ``mask`` cut to ``box`` (index slices); the affine moves with the first voxel."""
    start = [s.start or 0 for s in box]
    affine = volume.affine.copy()
    affine[:3, 3] = volume.index_to_world(start)[0]
    return volume.with_data(np.asarray(volume.data)[box], affine=affine), np.asarray(mask)[box]


def fov_box(shape: tuple[int, ...], mask: np.ndarray, spacing, size_mm=CROP_MM) -> tuple[slice, ...]:
    """A ``size_mm`` field of view centred on the mask's bounding box, shifted (and clipped) into the volume."""
    idx = np.nonzero(mask)
    box = []
    for ax, n in enumerate(shape):
        size = min(n, round(size_mm[ax] / float(spacing[ax])))
        centre = (int(idx[ax].min()) + int(idx[ax].max())) / 2.0 if len(idx[ax]) else (n - 1) / 2.0
        start = round(centre - (size - 1) / 2.0)
        start = min(max(start, 0), n - size)
        box.append(slice(start, start + size))
    return tuple(box)


def crop_to_multiple(volume, step: int, mask, axis: int = 0):
    """Crop ``axis`` (centred) so the thick grid tiles it exactly (output voxels then coincide with the truth's)."""
    length = volume.shape[axis]
    n = (length // step) * step
    start = (length - n) // 2
    box = [slice(None)] * 3
    box[axis] = slice(start, start + n)
    return crop_box(volume, mask, tuple(box))


def prepare(case: Case, truth_full, mask_full):
    """The truth and brain mask of ``case`` (field of view, then a whole number of slices) and its thick scan."""
    truth, mask = truth_full, np.asarray(mask_full)
    if case.fov == "crop":
        truth, mask = crop_box(truth, mask, fov_box(truth.shape, mask, truth.spacing))
    step = round(case.spacing / float(truth.spacing[case.axis]))
    truth, mask = crop_to_multiple(truth, step, mask, axis=case.axis)
    lr = simulate_thick_slices(truth, case.fwhm, axis=case.axis, gap_mm=case.gap, fwhm_mm=case.fwhm)
    return truth, mask, lr


# -- the peer -------------------------------------------------------------------------------------
def run_eclare(lr, truth, thick: float, gap: float, n_patches: int,
               tag: str = "") -> tuple[np.ndarray, float, float, str]:
    """ECLARE from its own venv on the same input; its output resampled onto the truth grid if shifted.

    ``thick`` is the profile's FWHM and ``gap`` the spacing less it: ECLARE is given the true
    relative slice thickness FWHM / spacing.
    """
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
    write_nifti(truth.with_data(data, name="eclare"), keep / f"eclare_{thick:g}mm_gap{gap:g}{tag}.nii.gz")
    return data, seconds, peak, note


def best_slice_shift(truth: np.ndarray, out: np.ndarray, mask: np.ndarray, data_range: float,
                     axis: int = 0) -> tuple[float, float]:
    """The sub-voxel shift along the slice axis (-2..2 voxels) that best aligns ``out`` with the truth.

    A peer whose output content sits off its own affine is given the benefit of the doubt.
    """
    best = (0.0, psnr(truth, out, mask, data_range))
    for shift in np.arange(-2.0, 2.01, 0.25):
        moved = ndimage.shift(out, _along(axis, shift), order=3, mode="nearest")
        value = psnr(truth, moved, mask, data_range)
        if value > best[1] + 1e-6:
            best = (float(shift), value)
    return best


def _along(axis: int, value: float) -> tuple[float, float, float]:
    v = [0.0, 0.0, 0.0]
    v[axis] = value
    return (v[0], v[1], v[2])


# -- the learned family ---------------------------------------------------------------------------
def _cell(v: Any, spec: str = ".2f") -> str:
    return "" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def _seconds(s: float) -> str:
    return f"{s:.1f}" if s < 10 else f"{s:.0f}"


def run(jobs: list[tuple[Case, tuple[str, ...]]], methods: list[str], quality_mode: str, quality_budget: float,
        eclare_patches: int, max_steps: int | None) -> str:
    from napari_medgen.engine.device import resolve_device

    from .common import ground_truths

    resolve_device("auto")  # one-off torch import, kept out of the timings
    reg = get_registry()
    truths = ground_truths()
    rows = list(HEADER)
    order = {"classic.cubic": 0, "classic.linear": 1, "eclare": 2}  # cubic first (the reference), ECLARE before quality
    ordered = sorted(dict.fromkeys(["classic.cubic", *methods]), key=lambda m: order.get(m, 3))
    for case, modes in jobs:
        contrast = CONTRASTS[case.contrast]
        truth_full, mask_full = truths[contrast]
        truth, mask, lr = prepare(case, truth_full, mask_full)
        t = np.asarray(truth.data)
        full = np.asarray(truth_full.data)
        rng = float(full.max() - full.min())  # the whole template's range: PSNR comparable across FOVs
        is_eclare_case = (case.contrast, case.axis, case.key, case.fov) == ECLARE_CASE
        eclare_seconds = None
        cubic_psnr = None
        for method in ordered:
            runs: list[tuple[str, str]] = []  # (mode, note)
            if method == "eclare":
                if is_eclare_case:
                    runs = [("given", "")]
            elif method.startswith("classic."):
                runs = [("", "")]
            elif method.endswith(":quality"):
                if is_eclare_case:  # long runs only where they are compared with ECLARE
                    runs = [(quality_mode, "")]
            else:
                runs = [(m, "") for m in modes]
            for mode, note in runs:
                est = steps = fallback = None
                if method == "eclare":
                    out, seconds, _peak, note = run_eclare(lr, truth, case.fwhm, case.gap, eclare_patches,
                                                           tag=f"_axis{case.axis}_{case.fov}")
                    eclare_seconds = seconds
                    shift, _best = best_slice_shift(t, out, mask, rng, axis=case.axis)
                    if shift != 0.0:
                        note += (f"; as written {psnr(t, out, mask, rng):.2f} dB in the brain, best aligned after a "
                                 f"{shift:+.2f}-voxel slice-axis shift (shown)")
                        out = ndimage.shift(out, _along(case.axis, shift), order=3, mode="nearest").astype(np.float32)
                    else:
                        note += "; aligned as written (no sub-voxel shift improves it)"
                else:
                    fid, _, preset = method.partition(":")
                    family = reg.get(fid).family
                    p: dict = {"target_spacing": "1.0"}
                    budget = None
                    if preset:
                        p["preset"] = preset
                        if mode == "given":
                            p["slice_thickness"] = float(case.fwhm)
                        # blind: slice_thickness left at its default ("auto": estimated from the scan)
                        if max_steps is not None:
                            p["max_steps"] = int(max_steps)
                            note = f"max_steps={max_steps} (smoke test)"
                        if preset == "quality":
                            budget = eclare_seconds or quality_budget
                            note = ((note + "; ") if note else "") + f"time budget {budget:.0f} s" + (
                                " (= ECLARE's time)" if eclare_seconds else "")
                    res = timed(lambda f=family, x=lr, p=p, b=budget: run_family(f, Inputs(image=x), p, seed=0,
                                                                                 time_budget=b))
                    out = np.asarray(res.value.primary.volume.data)
                    seconds = res.seconds
                    info = res.value.info or {}
                    if preset:
                        profile = info.get("slice_profile") or {}
                        est = profile.get("fwhm_mm")
                        steps = (info.get("training") or {}).get("steps")
                        fallback = bool(info.get("fallback"))  # set only when the output is B-spline
                if out.shape != t.shape:
                    raise SystemExit(f"{method}: output shape {out.shape} != truth {t.shape} for {case}")
                value = psnr(t, out, mask, rng)
                if method == "classic.cubic":
                    cubic_psnr = value
                    if method not in methods:
                        continue  # the reference only
                gain = "ref." if method == "classic.cubic" else (
                    f"{value - cubic_psnr:+.2f}" if cubic_psnr is not None else "")
                hf = hf_energy_ratio(t, out, axis=case.axis, cutoff_cycles_per_voxel=0.5 / case.spacing, mask=mask)
                fb = "" if fallback is None else ("yes" if fallback else "no")
                rows.append(
                    f"| {contrast} | {AXES[case.axis]} | {case.profile_label} | {case.fov} | {method} | "
                    f"{mode or '-'} | {_cell(est)} | {value:.2f} | {ssim(t, out, mask, rng):.4f} | {gain} | "
                    f"{hf:.3f} | {_seconds(seconds)} | {'' if steps is None else steps} | {fb} | {note} |"
                )
                print(rows[-1], flush=True)
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--contrasts", default=",".join(CONTRASTS))
    parser.add_argument("--axes", default="0,1,2", help="slice axes: 0/axial, 1/coronal, 2/sagittal")
    parser.add_argument("--cases", default=",".join(CASES), help="FWHM[@spacing] keys, e.g. 4mm,3mm@4")
    parser.add_argument("--fov", default=",".join(FOVS), help="whole and/or crop")
    parser.add_argument("--modes", default=",".join(MODES), help="the learned family's modes: blind and/or given")
    parser.add_argument("--runs", default="",
                        help="instead of the product above: 'contrasts/axes/cases/fovs[/modes];...' (a union)")
    parser.add_argument("--quality-mode", default="given", choices=MODES,
                        help="the mode the quality preset runs in (once, on ECLARE's case)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="max_steps for the learned family (smoke tests only; default: the preset's)")
    parser.add_argument("--eclare-patches", type=int, default=11200, help="ECLARE training patches (default 1e6)")
    parser.add_argument("--quality-budget", type=float, default=1800.0, help="quality preset seconds without ECLARE")
    parser.add_argument("--section", default="Super-resolution")
    parser.add_argument("--dry-run", action="store_true", help="print the section instead of writing RESULTS.md")
    args = parser.parse_args(argv)
    methods = split_csv(args.methods)
    if args.runs:
        jobs = parse_runs(args.runs, split_csv(args.modes))
    else:
        jobs = expand(split_csv(args.contrasts), parse_axes(args.axes), split_csv(args.cases), split_csv(args.fov),
                      split_csv(args.modes))
    table = run(jobs, methods, args.quality_mode, args.quality_budget, args.eclare_patches, args.max_steps)
    body = (
        "Ground truth: MNI152 2009a T1 at 1 mm (nilearn wheel) and a T2-like contrast built from its GM/WM maps. "
        "Thick slices simulated along the slice axis (array axis 0 = inferior-superior/axial, 1 = "
        "posterior-anterior/coronal, 2 = left-right/sagittal) with a Gaussian profile of the FWHM shown, sampled "
        "at the spacing shown (FWHM < spacing: a gap). FOV whole = the template; crop = a targeted field of view "
        f"of {CROP_MM[0]:g} x {CROP_MM[1]:g} x {CROP_MM[2]:g} mm centred on the brain's bounding box. The truth and "
        "its brain mask are cut along the slice axis to a whole number of slices, so the 1 mm output "
        "(target_spacing 1.0) lies on the truth's grid. Brain = GM+WM probability > 0.5. PSNR uses the whole "
        "template's intensity range in every FOV. Gain over cubic: PSNR in the brain less classic.cubic's on the "
        "same case. HF ratio: spectral energy along the slice axis above the thick acquisition's Nyquist "
        "frequency (0.5 / spacing), output / truth (1 = as sharp as the truth, < 1 = blurred; interpolation kinks "
        "also add energy there, which is why linear can score above cubic). Time is wall time of the whole run "
        "(training + inference) and excludes the one-off torch import. Mode blind: medgen.selfsr estimates the "
        "slice profile from the scan (est. FWHM = its estimate); given: it is given the true FWHM. Fallback yes: "
        "the network lost the held-out check against B-spline interpolation and the output is the B-spline "
        "interpolation. ECLARE is given the true relative slice thickness (--relative-slice-thickness, so its "
        "ESPRESO profile estimation is skipped) and runs on the CPU with all cores, its patch budget cut as noted "
        "(its default is 1,000,000).\n\n"
        f"Command: `python -m benchmarks.superres {shlex.join(argv if argv is not None else sys.argv[1:])}`\n\n" + table
    )
    publish(args.section, body, args.dry_run)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

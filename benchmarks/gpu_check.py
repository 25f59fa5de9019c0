"""One prepared GPU check: each learned family's ``quality`` preset with device auto and autocast.

Runs where a CUDA GPU is present (the project's CLI path: no napari or Qt), and prints one JSON
line per check plus a summary file: time, peak GPU memory and result quality for

* ``medgen.selfsr`` (super-resolution, 4 mm thick slices of a pseudo-subject, PSNR vs cubic);
* ``medgen.vae_anomaly`` and ``medgen.ddpm_anomaly`` (normative anomaly maps, trained on 5
  references, applied to a test subject with lesions: AUROC, AUPRC, best Dice);
* ``medgen.harmonize_gan`` (T1 pseudo-subject with lesions made T2-weighted from 5 site-B
  references: PSNR in the brain against the noise-free site-B truth, lesions kept);
* the engine's out-of-memory retry: ``engine.sliding_window`` under a GPU memory cap that the
  first batch size cannot fit, which must fall back to a smaller one and still give the result.

    python -m benchmarks.gpu_check --out OUTDIR [--train-seconds 90]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _gpu_mem_gb() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def _reset() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def check_superres(train_seconds: float) -> dict:
    from napari_medgen import Inputs
    from napari_medgen.families.superres import SelfSupervisedSR
    from napari_medgen.io.sample import load_mni152, simulate_thick_slices
    from napari_medgen.runner import run_family

    from .common import psnr

    truth = load_mni152("t1")
    thick = simulate_thick_slices(truth, 4.0, axis=0)
    _reset()
    t0 = time.perf_counter()
    res = run_family(SelfSupervisedSR(), Inputs(image=thick), {"preset": "quality"}, device="auto", seed=0,
                     time_budget=train_seconds)
    elapsed = time.perf_counter() - t0
    out = res.outputs[0].volume.data
    ref = np.asarray(truth.data, np.float32)
    n = min(out.shape[0], ref.shape[0])
    mask = ref[:n] > 0.1 * ref.max()
    rng = float(ref.max() - ref.min())
    cubic = run_cubic(thick, truth)
    return {"check": "medgen.selfsr quality", "seconds": round(elapsed, 1), "peak_gpu_gb": round(_gpu_mem_gb(), 2),
            "device": res.info.get("provenance", {}).get("device"), "steps": res.info["training"]["steps"],
            "psnr_sr": round(psnr(ref[:n], out[:n], mask, rng), 2),
            "psnr_cubic": round(psnr(ref[:n], cubic[:n], mask, rng), 2)}


def run_cubic(thick, truth) -> np.ndarray:
    from scipy import ndimage

    factor = thick.spacing[0] / truth.spacing[0]
    up = ndimage.zoom(np.asarray(thick.data, np.float32), (factor, 1, 1), order=3, mode="nearest")
    return up


def check_anomaly(family_id: str, train_seconds: float, out_dir: Path) -> dict:
    from napari_medgen import Inputs
    from napari_medgen.families.ddpm_anomaly import NormativeDiffusion
    from napari_medgen.families.vae_anomaly import NormativeVAE
    from napari_medgen.runner import run_family

    from .anomaly import auroc, average_precision, best_dice, fp_fraction
    from .anomaly_data import benchmark_set

    split = benchmark_set("t1", cache_dir=out_dir / "cache")
    refs = [s.volume for s in split["references"]]
    test = split["test"][0]
    family = {"medgen.vae_anomaly": NormativeVAE, "medgen.ddpm_anomaly": NormativeDiffusion}[family_id]()
    model = out_dir / f"{family_id}.safetensors"
    _reset()
    t0 = time.perf_counter()
    res = run_family(family, Inputs(image=test.volume, references=refs),
                     {"preset": "quality", "save_model": str(model)}, device="auto", seed=0,
                     time_budget=train_seconds, overwrite=True)
    elapsed = time.perf_counter() - t0
    heat = res.outputs[0].volume.data
    t1 = time.perf_counter()
    healthy = run_family(family, Inputs(image=split["healthy"].volume), {"model_file": str(model)}, device="auto",
                         seed=0)
    reuse_s = time.perf_counter() - t1
    dice, thr = best_dice(heat, test.lesion_mask, test.brain_mask)
    return {"check": f"{family_id} quality (5 references)", "seconds": round(elapsed, 1),
            "reuse_seconds": round(reuse_s, 1), "peak_gpu_gb": round(_gpu_mem_gb(), 2),
            "device": res.info.get("provenance", {}).get("device"), "steps": res.info["training"]["steps"],
            "auroc": round(auroc(heat, test.lesion_mask, test.brain_mask), 3),
            "auprc": round(average_precision(heat, test.lesion_mask, test.brain_mask), 3),
            "best_dice": round(dice, 3), "best_dice_threshold": round(thr, 2),
            "healthy_fp_at_best_threshold": round(fp_fraction(healthy.outputs[0].volume.data,
                                                              split["healthy"].brain_mask, thr), 5)}


def check_harmonize(train_seconds: float, out_dir: Path) -> dict:
    from napari_medgen import Inputs
    from napari_medgen.families.harmonize_gan import ConstrainedHarmonization
    from napari_medgen.runner import run_family

    from .harmonize import data_range, evaluate_case
    from .harmonize_data import benchmark_set

    split = benchmark_set(small=False, cache_dir=out_dir / "cache")
    case = split["test"][0]
    _reset()
    t0 = time.perf_counter()
    res = run_family(ConstrainedHarmonization(), Inputs(image=case.scan, references=split["references"]["t2"]),
                     {"preset": "quality"}, device="auto", seed=0, time_budget=train_seconds)
    elapsed = time.perf_counter() - t0
    out = np.asarray(res.primary.volume.data, np.float32)
    scores = evaluate_case(out, case, "t2")
    return {"check": "medgen.harmonize_gan quality (T1 to T2)", "seconds": round(elapsed, 1),
            "peak_gpu_gb": round(_gpu_mem_gb(), 2), "device": res.info["training"].get("device"),
            "steps": res.info["training"].get("steps"), "data_range": data_range(case.truth["t2"], case.brain_mask),
            "lesions_kept": f"{sum(l['kept'] for l in scores['lesions'] if l['visible_at_site_a'])}/"
                            f"{sum(l['visible_at_site_a'] for l in scores['lesions'])}",
            "scores": {k: v for k, v in scores.items() if not isinstance(v, (list, dict))}}


def check_oom_retry() -> dict:
    import torch

    from napari_medgen.engine import sliding_window
    from napari_medgen.family import RunContext

    if not torch.cuda.is_available():
        return {"check": "oom retry", "skipped": "no CUDA GPU"}
    _reset()
    total = torch.cuda.get_device_properties(0).total_memory
    cap = 3 * 2**30  # a 3 GiB cap: the first batch below needs far more
    torch.cuda.set_per_process_memory_fraction(cap / total)
    try:
        vol = np.random.default_rng(0).random((256, 256, 256), dtype=np.float32)
        conv = torch.nn.Conv3d(1, 64, 3, padding=1).cuda()

        def predictor(x):
            return conv(x).mean(1, keepdim=True)

        t0 = time.perf_counter()
        out = sliding_window(vol, predictor, 128, ctx=RunContext(device="cuda"), sw_batch_size=64,
                             sw_device="cuda")
        ok = out.shape == vol.shape and bool(np.isfinite(out).all())
        return {"check": "engine OOM retry (3 GiB cap, sw_batch_size 64 of 128^3 windows)", "ok": ok,
                "seconds": round(time.perf_counter() - t0, 1), "peak_gpu_gb": round(_gpu_mem_gb(), 2)}
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-seconds", type=float, default=90.0)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    results = [{"gpu": gpu, "torch": torch.__version__}]
    print(json.dumps(results[0]), flush=True)
    checks = {
        "oom": check_oom_retry,
        "vae": lambda: check_anomaly("medgen.vae_anomaly", args.train_seconds, args.out),
        "ddpm": lambda: check_anomaly("medgen.ddpm_anomaly", args.train_seconds, args.out),
        "sr": lambda: check_superres(args.train_seconds),
        "harmonize": lambda: check_harmonize(args.train_seconds, args.out),
    }
    for name, fn in checks.items():
        if args.only and name not in args.only:
            continue
        try:
            row = fn()
        except Exception as exc:  # one failed check must not hide the others
            import traceback

            row = {"check": name, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]}
        results.append(row)
        print(json.dumps(row), flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    import shutil

    for f in args.out.glob("*.safetensors"):
        f.unlink()
    shutil.rmtree(args.out / "cache", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

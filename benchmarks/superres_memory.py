"""Memory of super-resolution on a large scan: 512 x 512 x 120 at 4 mm slices, upsampled 4x on the CPU.

Runs in its own process so that the peak resident memory (ru_maxrss) is this run's alone:

    python -m benchmarks.superres_memory [--steps N]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
from scipy import ndimage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200, help="training steps (memory does not depend on them)")
    args = parser.parse_args(argv)
    from napari_medgen import Inputs, Volume
    from napari_medgen.io.sample import load_mni152
    from napari_medgen.registry import get_registry
    from napari_medgen.runner import run_family

    t1 = np.asarray(load_mni152("t1").data)
    # a 512 x 512 in-plane, 120-slice scan at 4 mm: the MNI head tiled 2 x 2 in-plane, slices resampled to 4 mm
    slab = ndimage.zoom(t1, (120 / t1.shape[0], 256 / t1.shape[1], 256 / t1.shape[2]), order=1)
    data = np.tile(slab, (1, 2, 2)).astype(np.float32)
    image = Volume.from_spacing(data, (4.0, 1.0, 1.0), name="large")
    family = get_registry().get("medgen.selfsr").family
    t0 = time.perf_counter()
    res = run_family(family, Inputs(image=image), {"max_steps": args.steps}, device="cpu")
    seconds = time.perf_counter() - t0
    out = res.primary.volume
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"input {data.shape} (4 x 1 x 1 mm) -> output {out.shape} ({out.data.nbytes / 2**30:.2f} GiB float32); "
          f"peak resident memory {peak_gb:.2f} GiB; {seconds:.0f} s with {args.steps} training steps")
    return 0 if peak_gb < 8 else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

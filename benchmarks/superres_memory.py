"""Memory of super-resolution on a large scan: 512 x 512 x 120 at 4 mm slices, upsampled 4x on the CPU.

Runs in its own process so that the peak resident memory (ru_maxrss) is this run's alone:

    python -m benchmarks.superres_memory [--steps N]

Exit code 0 when the peak stays under 8 GB and the trained network did the inference; 1 when
the peak is 8 GB or more, or when the family fell back to B-spline interpolation (the network
lost its held-out check, or whether it was used cannot be told): such a run measures no
network inference, so its memory proves nothing.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
from scipy import ndimage


def network_used(info: dict) -> tuple[bool, str]:
    """Whether the output came from the network, and why not (the family sets ``fallback`` only when it is not)."""
    fallback = info.get("fallback")
    return (False, f"the family fell back to {fallback}") if fallback else (True, "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=800,
                        help="training steps (memory does not depend on them, but too few leave a network that loses "
                             "the held-out check, and the run then fails: it measured no network inference)")
    args = parser.parse_args(argv)
    steps = args.steps
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
    # the tiled, resampled head is no real thick-slice acquisition (its slices are finer than their spacing
    # says): the slice profile is given rather than estimated
    res = run_family(family, Inputs(image=image), {"max_steps": steps, "slice_thickness": 4.0}, device="cpu")
    seconds = time.perf_counter() - t0
    out = res.primary.volume
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    info = res.info or {}
    done = (info.get("training") or {}).get("steps", steps)
    print(f"input {data.shape} (4 x 1 x 1 mm) -> output {out.shape} ({out.data.nbytes / 2**30:.2f} GiB float32); "
          f"peak resident memory {peak_gb:.2f} GiB; {seconds:.0f} s with {done} training steps")
    used, why = network_used(info)
    if not used:
        print(f"FAILED: {why}; this run measured no network inference. Run it with more --steps.", file=sys.stderr)
        return 1
    if peak_gb >= 8:
        print(f"FAILED: peak resident memory {peak_gb:.2f} GiB is over the 8 GB limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

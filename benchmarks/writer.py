"""The atomic NIfTI writer against a plain ``nibabel.save`` on a 0.5 GB result.

The volume is the shape of the super-resolution memory case's result (512 x 512 x 480 float32,
0.47 GiB): the MNI152 head tiled 2 x 2 in-plane and interpolated to 480 slices, so that gzip
sees anatomy, not noise. Each method writes the same image 5 times (alternating, so the page
cache and the disk see both alike); the table gives the median wall time.

    python -m benchmarks.writer [--repeats 5] [--folder benchmarks/out]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from .common import write_section

SECTION = "Output writer: atomic write against a plain save (0.5 GB)"


def _volume():
    from napari_medgen.io.sample import load_mni152
    from napari_medgen.volume import Volume

    t1 = np.asarray(load_mni152("t1").data)
    slab = ndimage.zoom(t1, (480 / t1.shape[0], 256 / t1.shape[1], 256 / t1.shape[2]), order=1)
    data = np.tile(slab, (1, 2, 2)).astype(np.float32)
    return Volume.from_spacing(data, (1.0, 1.0, 1.0), name="large")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--folder", type=Path, default=Path(__file__).with_name("out"))
    parser.add_argument("--no-write-results", action="store_true", help="print only")
    args = parser.parse_args(argv)
    import nibabel as nib

    from napari_medgen.io.nifti import nifti_image, write_nifti

    volume = _volume()
    args.folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for ext in (".nii.gz", ".nii"):
        target = args.folder / f"writer_bench{ext}"
        times: dict[str, list[float]] = {"plain": [], "plain + fsync": [], "atomic": []}

        def plain(fsync: bool = False) -> None:
            nib.save(nifti_image(volume), str(target))
            if fsync:
                fd = os.open(target, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)

        methods = {
            "plain": plain,
            "plain + fsync": lambda: plain(True),
            "atomic": lambda: write_nifti(volume, target, overwrite=True),
        }
        for _ in range(args.repeats):
            for name, fn in methods.items():
                os.sync()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        size_mb = target.stat().st_size / 2**20
        target.unlink()
        base = statistics.median(times["plain"])
        for name, values in times.items():
            med = statistics.median(values)
            rows.append(f"| {ext} | {name} | {med:.2f} | {min(values):.2f} | {max(values):.2f} | "
                        f"{100 * (med / base - 1):+.1f}% | {size_mb:.0f} |")
    body = (
        f"Volume {volume.shape} float32 ({np.asarray(volume.data).nbytes / 2**30:.2f} GiB), {args.repeats} writes "
        "per method, alternating; `plain` = `nibabel.save` of the same image (no fsync: the data may still be "
        "in the page cache when it returns); `plain + fsync` = the same followed by an fsync; `atomic` = "
        "`write_nifti`: the replaced file's cached pages released, an anonymous temporary in the same folder, "
        "fsync, link + `os.replace`, folder fsync. The .nii.gz rows are gzip-bound; the .nii rows are "
        "page-cache and disk-bound and vary by a few percent from run to run.\n\n"
        "| file | method | median (s) | min (s) | max (s) | vs plain (median) | size (MB) |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows)
    )
    print(body)
    if not args.no_write_results:
        write_section(SECTION, "python -m benchmarks.writer", body)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

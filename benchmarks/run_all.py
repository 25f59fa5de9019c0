"""``make bench``: every benchmark, results written to benchmarks/RESULTS.md.

Super-resolution takes about 2.5 hours on 2 CPU cores (the ECLARE comparison about 50 minutes: ECLARE
and the quality preset each about 20-45 minutes; the matrix of 16 fast runs about 60 minutes; the
slice-profile estimation about 4 minutes; the memory run about 6 minutes); the anomaly benchmark adds about
25 minutes of baselines (T1 and T2 at 1 mm) plus the learned families' training: with the
``fast`` preset up to 10 minutes per training, 6 trainings per family and contrast (one in the
references mode, five per scan), i.e. up to 4 hours for two families. The harmonization
benchmark adds about 8 minutes of baselines plus the learned family's 8 runs (4 scans x 2 targets).
The batch benchmark (``medgen batch`` on 20 scans at 2 mm: scaling, overhead against a loop of
``medgen run``, resume after a kill) takes about 5-10 minutes.
"""

from __future__ import annotations

import subprocess
import sys

from . import anomaly, batch, harmonize, lesion, slice_profile, superres, writer
from .common import write_section


def main() -> int:
    # Super-resolution. `python -m benchmarks.superres` without restrictions runs the full matrix (2 contrasts
    # x 3 slice axes x 7 slice profiles x 2 fields of view = 84 cases, fast in both modes: 168 runs of about
    # 3.5 minutes: about 11 hours on 2 CPU cores with the baselines, plus about 50 minutes for the ECLARE case);
    # make bench runs a representative part.
    # The learned family against the peer, on the case the issue sets the targets for (about 50 minutes:
    # ECLARE ~20, quality as long, fast twice)
    superres.main(["--section", "Super-resolution: T1 4 mm against ECLARE", "--contrasts", "t1", "--axes", "0",
                   "--cases", "4mm", "--fov", "whole", "--modes", "blind,given",
                   "--methods", "classic.cubic,classic.linear,medgen.selfsr:fast,medgen.selfsr:quality,eclare"])
    # the fast preset against the interpolation baselines over slice axes, profiles, contrasts and fields of view:
    # 16 fast runs, about 60-90 minutes on 2 CPU cores
    matrix = ";".join([
        "t1/0,1,2/4mm/whole/blind",  # every slice axis, whole head
        "t1/0,1,2/5mm/crop/blind",  # every slice axis, a targeted field of view
        "t1/0/2mm,3mm,6mm/whole/blind",  # thin to thick slices
        "t1/0/3mm@4,2mm@4/whole/blind,given",  # slice gaps, estimated and given profile
        "t2/0/3mm@4/whole/blind,given",
        "t2/2/5mm/crop/blind",
    ])
    superres.main(["--section", "Super-resolution: slice axes, profiles and fields of view (fast)",
                   "--methods", "classic.linear,classic.cubic,medgen.selfsr:fast", "--runs", matrix])
    # the slice profile estimated from the thick scan alone, on every case of the full matrix (under a minute)
    slice_profile.main([])
    # memory on a large scan, in its own process so the peak resident memory is its alone
    command = [sys.executable, "-m", "benchmarks.superres_memory"]
    proc = subprocess.run(command, capture_output=True, text=True)
    write_section("Super-resolution: memory on a 512 x 512 x 120 scan", "python -m benchmarks.superres_memory",
                  (proc.stdout + proc.stderr[-2000:]).strip() + f"\n\n(exit code {proc.returncode}; 0 = under 8 GB "
                  "with the network's inference measured, 1 = over 8 GB or a B-spline fallback)")
    # the atomic output writer against a plain save of a 0.5 GB result
    writer.main([])
    # medgen batch on Dask: 20 pseudo-subjects at 2 mm, classic.outlier; 1 worker against the default local
    # cluster, against a loop of medgen run, and resume after a SIGKILL (about 5-10 minutes)
    batch.main([])
    # anomaly maps: the learned normative families against the baselines, both modes, T1 and T2 at 1 mm
    anomaly.main(["--write"])
    # harmonization: the learned family (fast preset) against identity, histogram matching, Nyul and
    # intensity-normalization's methods, to another T1 scanner and to a T2-weighted site at 1 mm
    harmonize.main(["--write"])
    lesion.main(["--methods", "classic.procedural", "medgen.lesion_diffusion", "--write"])
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

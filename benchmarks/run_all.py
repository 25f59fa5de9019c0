"""``make bench``: every benchmark, results written to benchmarks/RESULTS.md.

About 1.5 hours on 2 CPU cores without the anomaly benchmark; the anomaly benchmark adds about
25 minutes of baselines (T1 and T2 at 1 mm) plus the learned families' training: with the
``fast`` preset up to 10 minutes per training, 6 trainings per family and contrast (one in the
references mode, five per scan), i.e. up to 4 hours for two families. The harmonization
benchmark adds about 8 minutes of baselines plus the learned family's 8 runs (4 scans x 2 targets).
"""

from __future__ import annotations

import subprocess
import sys

from . import anomaly, harmonize, lesion, superres, writer
from .common import write_section


def main() -> int:
    # the learned family against the peer, on the case the issue sets the targets for
    superres.main(["--section", "Super-resolution: T1 4 mm against ECLARE", "--contrasts", "t1", "--cases", "4mm"])
    # every other case and contrast: the fast preset against the interpolation baselines
    baselines = "classic.linear,classic.cubic,medgen.selfsr:fast"
    superres.main(["--section", "Super-resolution: all cases (T1)", "--methods", baselines, "--contrasts", "t1",
                   "--cases", "2mm,6mm,4mm+gap"])
    superres.main(["--section", "Super-resolution: all cases (synthetic T2)", "--methods", baselines,
                   "--contrasts", "t2"])
    # memory on a large scan, in its own process so the peak resident memory is its alone
    command = [sys.executable, "-m", "benchmarks.superres_memory"]
    proc = subprocess.run(command, capture_output=True, text=True)
    write_section("Super-resolution: memory on a 512 x 512 x 120 scan", "python -m benchmarks.superres_memory",
                  (proc.stdout + proc.stderr[-2000:]).strip() + f"\n\n(exit code {proc.returncode}; 0 = under 8 GB)")
    # the atomic output writer against a plain save of a 0.5 GB result
    writer.main([])
    # anomaly maps: the learned normative families against the baselines, both modes, T1 and T2 at 1 mm
    anomaly.main(["--write"])
    # harmonization: the learned family (fast preset) against identity, histogram matching, Nyul and
    # intensity-normalization's methods, to another T1 scanner and to a T2-weighted site at 1 mm
    harmonize.main(["--write"])
    lesion.main(["--methods", "classic.procedural", "medgen.lesion_diffusion", "--write"])
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

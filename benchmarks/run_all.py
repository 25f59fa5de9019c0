"""``make bench``: every benchmark, results written to benchmarks/RESULTS.md."""

from __future__ import annotations

import sys

from . import superres


def main() -> int:
    superres.main([])
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

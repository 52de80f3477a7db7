"""Peak step memory and time of a Glow-like training step versus depth and image size.

A thin wrapper: the benchmark lives in :mod:`hybridflow.bench.memory_depth` and its flags in
:mod:`hybridflow.cli.bench`, which
``hybridflow bench memory`` runs too; this script writes to ``benchmarks/results`` by default.

    python benchmarks/memory_depth.py --preset small        # a minute or two
    python benchmarks/memory_depth.py --preset reference    # 64x64 and 128x128, depths 4..64
"""

from __future__ import annotations

from hybridflow.cli.bench import main

__all__ = ["main"]

if __name__ == "__main__":
    main(default_out="benchmarks/results")

"""Matmul tile scan: the packed contraction schedule with other cache tiles, against numpy.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE TDSL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \\
        OMP_NUM_THREADS=1 python bench/matmul_tiles.py [--sizes 1024,2048,1000] \\
        [--tiles 72/256/256,48/4096/512] [--register 6x16]

Each tile setting `MC/NC/KC` (and the register tile `MRxNR`) replaces
`tdsl.schedules.contraction_tiles` for one compile of samples/matmul.tdsl (cache off), then
prints the compile time and GFLOP/s (best of a few calls) for each size, with numpy's GFLOP/s
measured right after in the same process. The machine's noise is ±10 %: repeat a setting to
see it.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "matmul.tdsl"


def best_gflops(fn, n: int, repeat: int) -> float:
    """GFLOP/s of the fastest of `repeat` calls of an n x n x n product."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / min(times) / 1e9


def main() -> None:
    """Run the scan."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1024,2048,1000")
    p.add_argument("--tiles", default="72/256/256,48/4096/512,96/4096/256")
    p.add_argument("--register", default="6x16", help="MRxNR")
    args = p.parse_args()
    os.environ["TDSL_CACHE"] = "0"
    import tdsl
    import tdsl.schedules as schedules

    mr, nr = (int(v) for v in args.register.split("x"))
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    mats = {n: (rng.random((n, n), np.float32), rng.random((n, n), np.float32)) for n in sizes}
    source = SAMPLE.read_text()
    for setting in args.tiles.split(","):
        mc, nc, kc = (int(v) for v in setting.split("/"))
        schedules.contraction_tiles = lambda h, bits, mc=mc, nc=nc, kc=kc: (
            schedules.ContractionTiles(mc=mc, nc=nc, kc=kc, mr=mr, nr=nr))
        start = time.perf_counter()
        mod = tdsl.loads(source, filename=f"matmul_{mc}_{nc}_{kc}.tdsl")
        a, b = mats[sizes[0]]
        np.testing.assert_allclose(mod.matmul(a, b), a @ b, rtol=1e-3, atol=1e-2)
        compile_s = time.perf_counter() - start
        row = []
        for n in sizes:
            a, b = mats[n]
            repeat = 5 if n <= 1024 else 3
            ours = best_gflops(lambda a=a, b=b, k=mod.matmul: k(a, b), n, repeat)
            theirs = best_gflops(lambda a=a, b=b: np.matmul(a, b), n, repeat)
            row.append(f"{n}: {ours:5.1f} GF ({ours / theirs:4.2f}x numpy)")
        print(f"MC={mc} NC={nc} KC={kc} MR x NR={mr}x{nr}  compile {compile_s:.2f} s  "
              + "  ".join(row), flush=True)


if __name__ == "__main__":
    main()

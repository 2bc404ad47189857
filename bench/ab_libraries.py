"""Compare compiled libraries of the same product kernel, called alternately in one process.

    tdsl compile samples/matmul.tdsl -o /tmp/new.so        # and the same from another commit
    TDSL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/ab_libraries.py \\
        /tmp/old.so /tmp/new.so [--kernel matmul] [--shapes 2048x2048x2048,1000x1000x1000]
    python bench/ab_libraries.py old.so new.so --kernel matmul_nt --transposed-b   # A @ B.T

On this machine runs drift by ±20 % within minutes, so two compiler versions are only
comparable when their kernels run in the same process, one call of each in turn: each library
(written by `tdsl compile -o`, loaded with `tdsl.load_library`) is checked against numpy, then
timed; the median GFLOP/s of each, and numpy's, are printed per shape (M x K x N, f32,
`C = A @ B`). Keep `OPENBLAS_NUM_THREADS=1` when comparing tdsl on several threads: a BLAS
thread left spinning after numpy's call steals a core from the next kernel.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def time_call(fn, args: tuple, times: list[float]) -> None:
    """Time one call `fn(*args)` and append its seconds to `times`."""
    start = time.perf_counter()
    fn(*args)
    times.append(time.perf_counter() - start)


def main() -> None:
    """Run the comparison."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("libraries", nargs="+", help="shared libraries written by tdsl compile -o")
    p.add_argument("--kernel", default="matmul", help="a kernel C[M, N] = A[M, K] @ B[K, N]")
    p.add_argument("--transposed-b", action="store_true",
                   help="the kernel takes B as [N, K]: C = A @ B.T (e.g. matmul_nt)")
    p.add_argument("--shapes", default="2048x2048x2048,1024x1024x1024,1000x1000x1000")
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    import tdsl

    libs = {Path(path).stem: tdsl.load_library(path) for path in args.libraries}
    rng = np.random.default_rng(0)
    for shape in args.shapes.split(","):
        m, k, n = (int(v) for v in shape.split("x"))
        a, b = rng.random((m, k), np.float32), rng.random((k, n), np.float32)
        if args.transposed_b:
            b = np.ascontiguousarray(b.T)
        want = a @ b.T if args.transposed_b else a @ b
        for name, lib in libs.items():
            got = getattr(lib, args.kernel)(a, b)
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-2, err_msg=name)
        times: dict[str, list[float]] = {name: [] for name in [*libs, "numpy"]}
        for _ in range(args.repeat):
            for name, lib in libs.items():
                time_call(getattr(lib, args.kernel), (a, b), times[name])
            time_call(np.matmul, (a, b.T if args.transposed_b else b), times["numpy"])
        flops = 2.0 * m * n * k
        print(f"{shape:>16}  " + "  ".join(
            f"{name} {flops / np.median(ts) / 1e9:6.1f}" for name, ts in times.items())
            + "  GFLOP/s (median)")


if __name__ == "__main__":
    main()

"""Scheduled kernels (row-wise fusion, tiled matmul) on one thread against numpy.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 TDSL_NUM_THREADS=1 \\
        OMP_NUM_THREADS=1 python bench/schedules_bench.py [--repeat 7]

Prints, per kernel, the minimum time of tdsl with its schedule, tdsl without it
(`TDSL_SCHEDULES=0`, compiled in this process), and numpy, measured interleaved in the same run,
with GB/s (rows: one read and one write of x) or GFLOP/s (matmul: 2 M N K).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from functools import partial

import numpy as np

SOURCE = """
kernel softmax(x: f32[B, N]) -> (y: f32[B, N]) {
    m[b]    = max[n](x[b, n])
    e[b, n] = exp(x[b, n] - m[b])
    s[b]    = sum[n](e[b, n])
    y[b, n] = e[b, n] / s[b]
}
kernel layernorm(x: f32[B, N], gamma: f32[N], beta: f32[N]) -> (y: f32[B, N]) {
    mu[b]   = mean[n](x[b, n])
    d[b, n] = x[b, n] - mu[b]
    v[b]    = mean[n](d[b, n] * d[b, n])
    y[b, n] = d[b, n] * rsqrt(v[b] + 1e-5) * gamma[n] + beta[n]
}
kernel rmsnorm(x: f32[B, N], w: f32[N]) -> (y: f32[B, N]) {
    ms[b]   = mean[n](x[b, n] * x[b, n])
    y[b, n] = x[b, n] * rsqrt(ms[b] + 1e-6) * w[n]
}
kernel matmul(A: f32[M, K], B: f32[K, N]) -> (C: f32[M, N]) {
    C[m, n] = sum[k](A[m, k] * B[k, n])
}
"""


def np_softmax(x, out):
    m = x.max(axis=1, keepdims=True)
    np.subtract(x, m, out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)


def np_layernorm(x, g, b, out):
    mu = x.mean(axis=1, keepdims=True)
    d = x - mu
    v = (d * d).mean(axis=1, keepdims=True)
    np.multiply(d, 1.0 / np.sqrt(v + 1e-5), out=out)
    out *= g
    out += b


def np_rmsnorm(x, w, out):
    ms = np.einsum("ij,ij->i", x, x)[:, None] / x.shape[1]
    np.multiply(x, 1.0 / np.sqrt(ms + 1e-6), out=out)
    out *= w


def load(schedules: bool):
    """The kernels compiled with or without schedules (no disk cache: both in this process)."""
    from tdsl.check import check_source
    from tdsl.runtime.cpu import compile_kernel

    os.environ["TDSL_SCHEDULES"] = "1" if schedules else "0"
    program = check_source(SOURCE, "<bench>")
    out = {}
    for k in program.kernels:
        start = time.perf_counter()
        out[k.name] = compile_kernel(k)
        out[k.name + ".compile"] = time.perf_counter() - start
    return out


def timed(fns: dict[str, Callable[[], None]], repeat: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    sched, plain = load(True), load(False)
    rng = np.random.default_rng(0)
    n = 4096
    x = rng.standard_normal((n, n), dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    y = np.empty_like(x)
    rows = {"softmax": ((x,), np_softmax), "layernorm": ((x, g, b), np_layernorm),
            "rmsnorm": ((x, g), np_rmsnorm)}
    print(f"{'kernel':<16}{'tdsl ms':>10}{'unsched ms':>12}{'numpy ms':>10}{'x numpy':>9}"
          f"{'rate':>14}{'compile s':>11}")
    for name, (inputs, ref) in rows.items():
        fns = {"tdsl": partial(sched[name], *inputs), "plain": partial(plain[name], *inputs),
               "numpy": partial(ref, *inputs, y)}
        np.testing.assert_allclose(sched[name](*inputs), plain[name](*inputs), rtol=1e-4,
                                   atol=1e-5)
        t = {k: min(v) for k, v in timed(fns, args.repeat).items()}
        rate = f"{2 * x.nbytes / t['tdsl'] / 1e9:.1f} GB/s"
        print(f"{name + ' 4096²':<16}{t['tdsl'] * 1e3:>10.2f}{t['plain'] * 1e3:>12.2f}"
              f"{t['numpy'] * 1e3:>10.2f}{t['numpy'] / t['tdsl']:>9.2f}{rate:>14}"
              f"{sched[name + '.compile']:>11.2f}")
    for size in (1024, 2048):
        a = rng.standard_normal((size, size), dtype=np.float32)
        bb = rng.standard_normal((size, size), dtype=np.float32)
        c = np.empty_like(a)
        np.testing.assert_allclose(sched["matmul"](a, bb), a @ bb, rtol=1e-3, atol=1e-2)
        fns = {"tdsl": partial(sched["matmul"], a, bb), "plain": partial(plain["matmul"], a, bb),
               "numpy": partial(np.matmul, a, bb, out=c)}
        reps = args.repeat if size == 1024 else max(3, args.repeat // 2)
        if size == 2048:
            fns.pop("plain")
        t = {k: min(v) for k, v in timed(fns, reps).items()}
        flops = 2 * size ** 3
        plain_ms = f"{t['plain'] * 1e3:>12.1f}" if "plain" in t else f"{'-':>12}"
        print(f"{f'matmul {size}':<16}{t['tdsl'] * 1e3:>10.1f}{plain_ms}"
              f"{t['numpy'] * 1e3:>10.1f}{t['numpy'] / t['tdsl']:>9.2f}"
              f"{flops / t['tdsl'] / 1e9:>9.1f} GF/s{sched['matmul.compile']:>11.2f}")
        print(f"{'  numpy':<16}{'':>32}{'':>9}{flops / t['numpy'] / 1e9:>9.1f} GF/s")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()

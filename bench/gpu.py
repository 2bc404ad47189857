"""GPU benchmarks: tdsl's CUDA target against CuPy and PyTorch (whichever are installed),
measured in the same run.

    python bench/gpu.py [--quick] [--only NAME,...] [--json FILE] [--repeat N]

Inputs and outputs live on the device (`tdsl.runtime.cuda.to_device`), so the times are the
kernels' plus launch overheads. For each kernel it prints the median time of tdsl and of each
baseline, their ratio, tdsl's GB/s (bytes that must move: inputs read once, outputs written
once) against the card's theoretical bandwidth, or GFLOP/s for matmul against cuBLAS (through
CuPy or PyTorch). Every tdsl result is checked against numpy first; a wrong one is reported as
WRONG and makes the command exit 1. Record the figures with the card's name in
docs/performance.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import tdsl

SOURCE = """
kernel saxpy(a: f32, x: f32[N], y: f32[N]) -> (z: f32[N]) { z = a * x + y }
kernel softmax(x: f32[B, N]) -> (y: f32[B, N]) {
    m[b] = max[n](x[b, n]); e[b, n] = exp(x[b, n] - m[b])
    s[b] = sum[n](e[b, n]); y[b, n] = e[b, n] / s[b]
}
kernel rmsnorm(x: f32[B, N], g: f32[N]) -> (y: f32[B, N]) {
    r[b] = rsqrt(mean[n](x[b, n] * x[b, n]) + 1e-6); y[b, n] = x[b, n] * r[b] * g[n]
}
kernel row_sum(x: f32[B, N]) -> (s: f32[B]) { s[b] = sum[n](x[b, n]) }
kernel total(x: f32[N]) -> (s: f32) { s = sum[i](x[i]) }
kernel matmul(A: f32[M, K], B: f32[K, N]) -> (C: f32[M, N]) {
    C[m, n] = sum[k](A[m, k] * B[k, n])
}
"""


@dataclass
class Bench:
    """One benchmark: inputs, the numpy reference, bytes moved, flops, baselines."""

    name: str
    inputs: Callable[[bool], list[np.ndarray]]
    reference: Callable[..., np.ndarray]
    bytes: Callable[..., float]
    flops: Callable[..., float] | None = None


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


BENCHES = [
    Bench("saxpy", lambda q: [np.float32(1.5)] + [_rng().standard_normal(
        1 << (20 if q else 27)).astype(np.float32) for _ in range(2)],
        lambda a, x, y: a * x + y, lambda a, x, y: 3 * x.nbytes),
    Bench("softmax", lambda q: [_rng().standard_normal((512 if q else 16384, 4096))
                                .astype(np.float32)],
          _softmax, lambda x: 2 * x.nbytes),
    Bench("rmsnorm", lambda q: [_rng().standard_normal((512 if q else 16384, 4096))
                                .astype(np.float32), _rng().standard_normal(4096)
                                .astype(np.float32)],
          lambda x, g: x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-6) * g,
          lambda x, g: 2 * x.nbytes),
    Bench("row_sum", lambda q: [_rng().standard_normal((512 if q else 16384, 4096))
                                .astype(np.float32)],
          lambda x: x.sum(axis=1), lambda x: x.nbytes),
    Bench("total", lambda q: [_rng().standard_normal(1 << (20 if q else 27))
                              .astype(np.float32)],
          lambda x: np.float32(x.astype(np.float64).sum()), lambda x: x.nbytes),
    Bench("matmul", lambda q: [_rng().standard_normal((512 if q else 2048,) * 2)
                               .astype(np.float32) for _ in range(2)],
          lambda a, b: a @ b, lambda a, b: 3 * a.nbytes,
          lambda a, b: 2.0 * a.shape[0] * a.shape[1] * b.shape[1]),
]


def _baselines() -> dict[str, dict[str, Callable]]:
    """name -> {library: function on that library's device arrays}."""
    found: dict[str, dict[str, Callable]] = {}
    try:
        import cupy as cp

        found["cupy"] = {
            "saxpy": lambda a, x, y: a * x + y,
            "softmax": lambda x: (lambda e: e / e.sum(axis=1, keepdims=True))(
                cp.exp(x - x.max(axis=1, keepdims=True))),
            "rmsnorm": lambda x, g: x * cp.reciprocal(cp.sqrt((x * x).mean(axis=1,
                                                                          keepdims=True) + 1e-6)) * g,
            "row_sum": lambda x: x.sum(axis=1), "total": lambda x: x.sum(),
            "matmul": lambda a, b: a @ b,
        }
        found["cupy"]["_device"] = cp.asarray
        found["cupy"]["_sync"] = lambda: cp.cuda.Device().synchronize()
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            found["torch"] = {
                "saxpy": lambda a, x, y: a * x + y,
                "softmax": lambda x: torch.softmax(x, dim=1),
                "rmsnorm": lambda x, g: x * torch.rsqrt((x * x).mean(dim=1, keepdim=True)
                                                        + 1e-6) * g,
                "row_sum": lambda x: x.sum(dim=1), "total": lambda x: x.sum(),
                "matmul": lambda a, b: a @ b,
                "_device": lambda a: torch.as_tensor(a, device="cuda"),
                "_sync": torch.cuda.synchronize,
            }
    except ImportError:
        pass
    return found


def _median_time(fn: Callable[[], Any], sync: Callable[[], None], repeat: int) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _copy_roof(quick: bool) -> float | None:
    """The measured bandwidth of a large device-to-device copy (GB/s, read + written), through
    PyTorch or CuPy; None where neither is installed."""
    count = 1 << (24 if quick else 28)
    try:
        import torch

        x = torch.randn(count, device="cuda")
        y = torch.empty_like(x)
        seconds = _median_time(lambda: y.copy_(x), torch.cuda.synchronize, 20)
    except Exception:  # noqa: BLE001 - no PyTorch or no GPU for it: try CuPy
        try:
            import cupy as cp

            x = cp.random.standard_normal(count, dtype=cp.float32)
            y = cp.empty_like(x)
            seconds = _median_time(lambda: y.__setitem__(slice(None), x),
                                   cp.cuda.Device().synchronize, 20)
        except Exception:  # noqa: BLE001
            return None
    return 2 * 4 * count / seconds / 1e9


def _fixed_cost(executable, host: list[np.ndarray], repeat: int,
                sync: Callable[[], None]) -> float:
    """The time of the same kernel on inputs cut to 32 elements per dimension: its per-call
    cost (host code, launches, synchronization) without the data. The time net of it
    approximates the kernels' own."""
    from tdsl.runtime.cuda import to_device

    tiny = [to_device(np.ascontiguousarray(a[tuple(slice(0, 32) for _ in range(a.ndim))]))
            if a.ndim else a for a in host]
    outputs = _given_outputs(executable, executable(*tiny))
    return _median_time(functools.partial(executable, *tiny, **outputs), sync, repeat)


def _given_outputs(executable, result: Any) -> dict:
    """The output a first call allocated on the device, to pass to the timed calls (which
    then write into it, like the baselines' pooled allocations); {} for a host result."""
    if not hasattr(result, "copy_to_host"):
        return {}
    return {executable.signature.outputs[0].name: result}


def _call_overhead(module, baselines: dict, sync: Callable[[], None]) -> dict:
    """The time of a call on a tiny device array (1024 floats): launch and call overhead."""
    from tdsl.runtime.cuda import to_device

    executable = module.saxpy.executable()
    x = np.ones(1024, np.float32)
    dx, dy, dz = to_device(x), to_device(x), to_device(x)
    row: dict[str, Any] = {"name": "call_overhead_1k"}
    row["tdsl_s"] = _median_time(lambda: executable(np.float32(2), dx, dy, z=dz), sync, 200)
    line = f"{'overhead':10s} tdsl {row['tdsl_s'] * 1e6:8.1f} us per call (saxpy, N=1024)"
    for lib, fns in baselines.items():
        a, b = fns["_device"](x), fns["_device"](x)
        row[f"{lib}_s"] = _median_time(functools.partial(fns["saxpy"], np.float32(2), a, b),
                                       fns["_sync"], 200)
        line += f"  | {lib} {row[f'{lib}_s'] * 1e6:8.1f} us"
    print(line)
    return row


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; exit 1 when a tdsl result is wrong."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--only", help="comma-separated benchmark names")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--emulate", action="store_true",
                        help="run on the GPU emulator instead (a smoke test of this script on "
                        "machines without a GPU; use with --quick; times are meaningless)")
    args = parser.parse_args(argv)
    from tdsl.runtime import cuda_driver
    from tdsl.runtime.cuda import to_device

    if args.emulate:
        from tdsl.runtime.cuda_fake import FakeDriver

        cuda_driver.set_driver(FakeDriver())

    try:
        info = cuda_driver.driver().info
    except cuda_driver.CudaUnavailableError as exc:
        print(f"bench/gpu.py: {exc}", file=sys.stderr)
        return 2
    module = tdsl.loads(SOURCE, target="cuda", filename="bench-gpu.tdsl")
    baselines = {} if args.emulate else _baselines()
    print(f"device: {info.name} ({info.arch}, {info.sm_count} SMs, "
          f"{info.peak_bandwidth_gbs:.0f} GB/s theoretical); baselines: "
          f"{', '.join(baselines) or 'none installed'}")
    roof = None if args.emulate else _copy_roof(args.quick)
    if roof:
        print(f"measured device-to-device copy: {roof:.0f} GB/s (bytes read + written)")
    wanted = set(args.only.split(",")) if args.only else None
    results, wrong = [], False
    sync = lambda: cuda_driver.driver().synchronize(cuda_driver.driver().stream())  # noqa: E731
    for bench in BENCHES:
        if wanted and bench.name not in wanted:
            continue
        host = bench.inputs(args.quick)
        if args.emulate:  # tiny sizes: the emulator runs every thread in numpy
            host = [a[tuple(slice(0, 37) for _ in range(a.ndim))] if a.ndim else a
                    for a in host]
        executable = getattr(module, bench.name).executable()
        device = [to_device(a) if a.ndim else a for a in host]
        got = executable(*device)
        outputs = _given_outputs(executable, got)
        if outputs:
            got = got.copy_to_host()
        want = bench.reference(*host)
        if not np.allclose(got, want, rtol=2e-3, atol=2e-3):
            print(f"{bench.name:10s} WRONG (largest difference "
                  f"{np.max(np.abs(np.asarray(got, np.float64) - want)):.3g})")
            wrong = True
            continue
        row: dict[str, Any] = {"name": bench.name, "device": info.name}
        row["tdsl_s"] = _median_time(functools.partial(executable, *device, **outputs), sync,
                                     args.repeat)
        row["tdsl_fixed_s"] = _fixed_cost(executable, host, args.repeat, sync)
        for lib, fns in baselines.items():
            lib_args = [fns["_device"](a) if a.ndim else a for a in host]
            row[f"{lib}_s"] = _median_time(functools.partial(fns[bench.name], *lib_args),
                                           fns["_sync"], args.repeat)
        net = row["tdsl_s"] - row["tdsl_fixed_s"]
        if net > 0:
            row["net_GB/s"] = bench.bytes(*host) / net / 1e9
        gbs = bench.bytes(*host) / row["tdsl_s"] / 1e9
        row["GB/s"], row["bw_fraction"] = gbs, gbs / max(info.peak_bandwidth_gbs, 1e-9)
        row["copy_fraction"] = gbs / roof if roof else None
        line = (f"{bench.name:10s} tdsl {row['tdsl_s'] * 1e3:8.3f} ms  {gbs:7.1f} GB/s "
                f"({100 * row['bw_fraction']:4.1f}% of peak"
                + (f", {100 * gbs / roof:4.1f}% of copy)" if roof else ")"))
        if "net_GB/s" in row and roof:
            line += (f"  net of {row['tdsl_fixed_s'] * 1e6:.0f} us fixed: "
                     f"{row['net_GB/s']:7.1f} GB/s ({100 * row['net_GB/s'] / roof:4.1f}% of copy)")
        if bench.flops:
            row["GFLOP/s"] = bench.flops(*host) / row["tdsl_s"] / 1e9
            line += f"  {row['GFLOP/s']:8.1f} GFLOP/s"
        for lib in baselines:
            ratio = row[f"{lib}_s"] / row["tdsl_s"]
            line += f"  | {lib} {row[f'{lib}_s'] * 1e3:8.3f} ms (tdsl {ratio:5.2f}x)"
        print(line)
        results.append(row)
    if not args.emulate:
        results.append(_call_overhead(module, baselines, sync))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())

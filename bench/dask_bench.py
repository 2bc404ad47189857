"""tdsl over dask against dask.array expressions of the same op, on a LocalCluster.

    python bench/dask_bench.py [--size 4096] [--chunk 512] [--workers 2] [--threads 1]
                               [--repeat 3] [--scheduler distributed|threads]

Three ops on an `--size` x `--size` f32 array held in the workers' memory (persisted first):
row-wise softmax (`samples/softmax.tdsl`; dask: `exp(x - max) / sum`), the 5-point Laplacian
(`samples/stencil2d.tdsl`, a halo of 2 through dask's overlap; dask: five shifted slices, and
"laplacian2d/o": `map_overlap` with numpy on each block) and the total (`samples/total.tdsl`
total2d, split into per-chunk partials; dask: `x.sum()`).
Softmax runs on blocks of `--chunk` whole rows; the other ops on square blocks of twice that.

Each op's result is persisted on the cluster (nothing comes back to the client but a check
value), timed `--repeat` times; the best time is printed with the ratio dask / tdsl (above 1:
tdsl is faster). Before timing, the two results are compared (max abs difference).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import dask
import dask.array as da
import numpy as np
from distributed import Client, LocalCluster, wait

import tdsl.dask as tdd

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def dask_softmax(x: da.Array) -> da.Array:
    """Row-wise stable softmax as a dask.array expression."""
    e = da.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def dask_laplacian(x: da.Array) -> da.Array:
    """The 5-point Laplacian of the interior, as shifted slices."""
    return (x[:-2, 1:-1] + x[2:, 1:-1] + x[1:-1, :-2] + x[1:-1, 2:]
            - np.float32(4.0) * x[1:-1, 1:-1])


def _same_laplacian(block: np.ndarray) -> np.ndarray:
    """The 5-point Laplacian of a block's interior, zero on its border (same shape)."""
    out = np.zeros_like(block)
    out[1:-1, 1:-1] = (block[:-2, 1:-1] + block[2:, 1:-1] + block[1:-1, :-2]
                       + block[1:-1, 2:] - np.float32(4.0) * block[1:-1, 1:-1])
    return out


def dask_laplacian_overlap(x: da.Array) -> da.Array:
    """The same Laplacian with map_overlap (a halo of 1) and numpy on each block."""
    return x.map_overlap(_same_laplacian, depth=1, boundary=0, dtype=x.dtype)[1:-1, 1:-1]


def _task_count(client: Client) -> int:
    return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))


def best_time(make: Callable[[], da.Array], client: Client | None, repeat: int) -> float:
    """The best wall time of computing `make()` to a result held on the workers. Each result
    is released (and the scheduler has forgotten it) before the next run, so that no run
    finds the previous one's blocks in memory."""
    best = float("inf")
    baseline = _task_count(client) if client is not None else 0
    for _ in range(repeat):
        start = time.perf_counter()
        if client is not None:
            result = client.persist(make())
            wait(result)
        else:
            result = make().persist(scheduler="threads")
        best = min(best, time.perf_counter() - start)
        if client is not None:
            client.cancel(result)
        del result
        while client is not None and _task_count(client) > baseline:
            time.sleep(0.02)
    return best


def max_difference(a: da.Array, b: da.Array) -> float:
    """The largest absolute difference of two lazy arrays (computed on the cluster)."""
    return float(abs(a.astype(np.float64) - b.astype(np.float64)).max().compute())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads per worker")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scheduler", choices=("distributed", "threads"),
                        default="distributed")
    args = parser.parse_args()

    softmax = tdd.load(SAMPLES / "softmax.tdsl").softmax
    laplacian = tdd.load(SAMPLES / "stencil2d.tdsl").laplacian2d
    total = tdd.load(SAMPLES / "total.tdsl").total2d

    client = cluster = None
    if args.scheduler == "distributed":
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=args.threads,
                               processes=True, dashboard_address=None, silence_logs=40)
        client = Client(cluster)
    n, c = args.size, args.chunk
    rows = da.random.default_rng(0).standard_normal((n, n), chunks=(c, n), dtype=np.float32)
    square = rows.rechunk((c * 2, c * 2))
    if client is not None:
        rows, square = client.persist([rows, square])
        wait([rows, square])
    else:
        rows, square = dask.persist(rows, square, scheduler="threads")

    ops = [
        ("softmax rows", lambda: softmax(rows), lambda: dask_softmax(rows)),
        ("laplacian2d", lambda: laplacian(square), lambda: dask_laplacian(square)),
        ("laplacian2d/o", lambda: laplacian(square), lambda: dask_laplacian_overlap(square)),
        ("sum", lambda: total(square), lambda: square.sum()),
    ]
    where = (f"LocalCluster {args.workers} workers x {args.threads} thread"
             if client is not None else "threaded scheduler")
    print(f"{n} x {n} f32 ({n * n * 4 / 2**20:.0f} MiB), row chunks {c}, square chunks "
          f"{2 * c}; {where}; best of {args.repeat}")
    print(f"{'op':<14}{'tdsl s':>10}{'dask s':>10}{'dask/tdsl':>11}{'max |diff|':>13}")
    for label, ours, theirs in ops:
        diff = max_difference(ours(), theirs())
        t_ours = best_time(ours, client, args.repeat)
        t_theirs = best_time(theirs, client, args.repeat)
        print(f"{label:<14}{t_ours:>10.3f}{t_theirs:>10.3f}{t_theirs / t_ours:>11.2f}"
              f"{diff:>13.2e}")
    if client is not None:
        client.close()
        cluster.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""tdsl kernels over an array larger than one worker's memory, on a dask LocalCluster.

    pip install -e '.[dask]'
    python docs/dask_example.py [--rows 16384] [--cols 16384] [--memory-limit 512MiB]

The default array is 16384 x 16384 f32 = 1 GiB, generated lazily in row blocks on two worker
processes whose memory limit is 512 MiB each: no worker ever holds it whole. Three sample
kernels run on it:

- `softmax` (samples/softmax.tdsl): rows stay whole (the kernel reduces over them), row blocks
  are independent; the total of all softmax values is the number of rows;
- `laplacian2d` (samples/stencil2d.tdsl): a stencil; each block borrows a halo of two rows and
  two columns from its neighbours (dask's overlap), computed where the blocks live;
- `total2d` (samples/total.tdsl): a sum split into per-block partial sums that a tree
  reduction combines, checked against `dask.array`'s own sum.

Only scalars come back to the client.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
from dask.utils import parse_bytes
from distributed import Client, LocalCluster

import tdsl.dask

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--cols", type=int, default=16384)
    parser.add_argument("--block-rows", type=int, default=256)
    parser.add_argument("--memory-limit", default="512MiB", help="per worker")
    args = parser.parse_args()

    softmax = tdsl.dask.load(SAMPLES / "softmax.tdsl").softmax
    laplacian = tdsl.dask.load(SAMPLES / "stencil2d.tdsl").laplacian2d
    total = tdsl.dask.load(SAMPLES / "total.tdsl").total2d

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      memory_limit=args.memory_limit, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster):
        shape, rows = (args.rows, args.cols), args.block_rows
        x = da.random.default_rng(0).standard_normal(shape, chunks=(rows, args.cols),
                                                     dtype=np.float32)
        size = x.nbytes
        print(f"x: {shape[0]} x {shape[1]} f32 = {size / 2**20:.0f} MiB in {x.numblocks[0]} "
              f"row blocks; worker memory limit {args.memory_limit} (x is "
              f"{size / parse_bytes(args.memory_limit):.1f} times that)")

        start = time.perf_counter()
        rows_total = total(softmax(x)).compute()
        print(f"total(softmax(x)) = {float(rows_total):.1f} (rows: {shape[0]}) "
              f"in {time.perf_counter() - start:.1f} s")

        start = time.perf_counter()
        lap = laplacian(x)
        ours, theirs = dask.compute(total(lap), lap.sum(dtype=np.float64))
        print(f"total(laplacian2d(x)) = {float(ours):.3f}, dask's float64 sum of the same "
              f"blocks = {float(theirs):.3f}, in {time.perf_counter() - start:.1f} s")
        print(laplacian.plan(x))
        ok = abs(float(rows_total) - shape[0]) < 1e-3 * shape[0]
    print("ok" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

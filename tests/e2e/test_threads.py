"""Threads (OpenMP via libomp): identical results on 1 and many threads, the work threshold,
TDSL_NUM_THREADS, and a cached kernel that still runs threaded in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tdsl
from tdsl.runtime import threads

pytestmark = pytest.mark.skipif(not threads.available(), reason="libomp is not installed")

SOURCE = """
kernel softmax(x: f32[B, N]) -> (y: f32[B, N]) {
    m[b] = max[n](x[b, n])
    e[b, n] = exp(x[b, n] - m[b])
    s[b] = sum[n](e[b, n])
    y[b, n] = e[b, n] / s[b]
}
kernel chain(x: f32[M, N], y: f32[M, N]) -> (z: f32[M, N]) {
    z[i, j] = tanh(x[i, j]) * sigmoid(y[i, j]) + x[i, j] * y[i, j]
}
kernel matmul(a: f64[M, K], b: f64[K, N]) -> (c: f64[M, N]) {
    c[i, j] = sum[k](a[i, k] * b[k, j])
}
kernel colsum(x: f32[M, N]) -> (s: f32[N]) {
    s[j] = sum[i](x[i, j])
}
"""


@pytest.fixture(scope="module")
def module():
    return tdsl.loads(SOURCE)


@pytest.fixture
def restore_threads():
    yield
    threads.set_num_threads(None)


def _inputs(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("shape", [(1031, 517), (3, 70001), (257, 1)])
def test_same_results_on_one_and_many_threads(module, restore_threads, shape):
    rng = np.random.default_rng(1)
    x, y = _inputs(rng, shape), _inputs(rng, shape)
    a, b = _inputs(rng, (shape[0], 67), np.float64), _inputs(rng, (67, shape[1]), np.float64)
    runs = []
    for n in (1, threads.cores(), 64):
        threads.set_num_threads(n)
        runs.append((module.softmax(x), module.chain(x, y), module.matmul(a, b),
                     module.colsum(x)))
    for other in runs[1:]:
        for got, want in zip(other, runs[0]):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(runs[0][2], a @ b, rtol=1e-12, atol=1e-12)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(runs[0][0], e / e.sum(axis=1, keepdims=True), rtol=1e-5,
                               atol=1e-7)


def test_strided_views_on_many_threads(module, restore_threads):
    threads.set_num_threads(threads.cores())
    rng = np.random.default_rng(2)
    big = _inputs(rng, (900, 1400))
    view = big[1::2, 3::3]
    np.testing.assert_allclose(module.chain(view, view), np.tanh(view) / (1 + np.exp(-view))
                               + view * view, rtol=2e-6, atol=1e-6)


def test_thread_count_is_capped_and_validated(monkeypatch):
    monkeypatch.setenv("TDSL_NUM_THREADS", "100000")
    assert threads.set_num_threads(None) == threads.cores()
    monkeypatch.setenv("TDSL_NUM_THREADS", "1")
    assert threads.set_num_threads(None) == 1
    monkeypatch.setenv("TDSL_NUM_THREADS", "zero")
    with pytest.raises(ValueError):
        threads.set_num_threads(None)
    monkeypatch.delenv("TDSL_NUM_THREADS")
    assert threads.set_num_threads(None) == threads.cores()


_PROBE = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import tdsl
    from tdsl.runtime import threads

    def count():
        with open("/proc/self/status") as f:
            return int(next(l for l in f if l.startswith("Threads:")).split()[1])

    module = tdsl.loads(sys.argv[1])
    x = np.ones((int(sys.argv[2]), 4096), np.float32)
    before = count()
    module.chain(x, x)
    print(json.dumps({"extra": count() - before, "n": threads.num_threads(),
                      "threaded": module.chain.executable().threaded}))
""")


def _probe(rows: int, env: dict[str, str]) -> dict:
    import json

    full = {**os.environ, **env}
    done = subprocess.run([sys.executable, "-c", _PROBE, SOURCE, str(rows)], env=full,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
def test_threads_in_fresh_processes_and_from_the_cache(tmp_path):
    cores = threads.cores()
    env = {"TDSL_CACHE_DIR": str(tmp_path / "cache"), "TDSL_CACHE": "1"}
    cold = _probe(1024, {**env, "TDSL_NUM_THREADS": str(cores)})
    assert cold["threaded"] and cold["n"] == cores
    assert cold["extra"] == cores - 1  # libomp's pool: the caller plus cores - 1 workers
    assert list((tmp_path / "cache").glob("*.so"))
    warm = _probe(1024, {**env, "TDSL_NUM_THREADS": str(cores)})  # loaded from the cache
    assert warm["threaded"] and warm["extra"] == cores - 1
    one = _probe(1024, {**env, "TDSL_NUM_THREADS": "1"})
    assert one["n"] == 1 and one["extra"] == 0
    small = _probe(2, {**env, "TDSL_NUM_THREADS": str(cores)})  # below the work threshold
    assert small["extra"] == 0


def test_concurrent_calls_do_not_oversubscribe(module, restore_threads):
    from concurrent.futures import ThreadPoolExecutor

    threads.set_num_threads(threads.cores())
    rng = np.random.default_rng(3)
    xs = [_inputs(rng, (512, 1024)) for _ in range(8)]
    want = [module.chain(x, x) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: module.chain(x, x), xs))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)

"""Kernel benchmarks: tdsl against numpy and Numba, measured in the same run.

    python bench/kernels.py [--quick] [--threads 1|all|both] [--only NAME,...] [--json FILE]

For each kernel at realistic sizes (4096 x 4096 f32 rows, 2^24-element vectors, 256^3 grids,
1024 / 2048 matmuls; `--quick` uses small sizes for a smoke run) it prints the median time of
tdsl, numpy, Numba `@njit(fastmath=True)` and Numba `@njit(parallel=True, fastmath=True)`
(hand-written loops with `prange`, below), the ratios, tdsl's GB/s or GFLOP/s and its share of
the measured roof: a bandwidth roof (copy and triad on arrays of the same size) and a compute
roof (an FMA loop in Numba). Every implementation writes into a preallocated output; numpy
allocates its temporaries as numpy does.

Every result is checked against numpy (or float64 for the sum) before it is timed: a wrong tdsl
kernel is reported as WRONG, gets no time, and makes the command exit 1.

The script re-executes itself with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed and every
thread knob (OPENBLAS/OMP/MKL/NUMBA/TDSL_NUM_THREADS) set to the `--threads` count; `both`
runs 1 thread, then all cores. tdsl kernels come from the disk cache (compiled on a miss).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness as h
import numpy as np

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - Numba is the `bench` extra
    numba = None
    njit = None
    prange = range

IMPLS = ("tdsl", "numpy", "numba", "numba-par")

# float32 constants: Numba types a Python float literal as float64, which would promote the
# whole expression; a global numpy scalar is frozen into the function with its own dtype.
F0 = np.float32(0.0)
F1 = np.float32(1.0)
HALF = np.float32(0.5)
FOUR = np.float32(4.0)
SIX = np.float32(6.0)
EPS5 = np.float32(1e-5)
EPS6 = np.float32(1e-6)
GELU_C = np.float32(0.7978845608028654)  # sqrt(2 / pi)
GELU_K = np.float32(0.044715)
NEG_INF = np.float32(-np.inf)

# ---- tdsl sources that are not (exactly) in samples/ ----------------------------------------

TDSL_EXTRA = """
fn gelu(v: f32) -> f32 {
    return 0.5 * v * (1.0 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)))
}

# RMS normalization followed by the GELU (tanh form) of the result.
kernel rmsnorm_gelu(x: f32[B, N], w: f32[N]) -> (y: f32[B, N]) {
    ms[b]   = mean[n](x[b, n] * x[b, n])
    y[b, n] = gelu(x[b, n] * rsqrt(ms[b] + 1e-6) * w[n])
}

# An element-wise chain of 11 operations over two inputs.
kernel chain(x: f32[M, N], z: f32[M, N]) -> (y: f32[M, N]) {
    y = max(x * z + 0.5 * x - z * z, 0.0) / (1.0 + abs(x)) + sqrt(abs(z))
}

kernel vexp(x: f32[M, N]) -> (y: f32[M, N]) {
    y = exp(x)
}

kernel vtanh(x: f32[M, N]) -> (y: f32[M, N]) {
    y = tanh(x)
}

kernel verf(x: f32[M, N]) -> (y: f32[M, N]) {
    y = erf(x)
}

kernel tanh_sigmoid(x: f32[M, N], y: f32[M, N]) -> (z: f32[M, N]) {
    z = tanh(x) * sigmoid(y) + x * y
}
"""

# ---- Numba implementations, written once with prange --------------------------------------
# Each is compiled twice: @njit(fastmath=True), where prange is a plain range, and
# @njit(parallel=True, fastmath=True).


def nb_saxpy(a: np.float32, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> None:
    """z = a x + y."""
    for i in prange(x.shape[0]):
        z[i] = a * x[i] + y[i]


def nb_sum(x: np.ndarray) -> np.float32:
    """The sum of a vector, accumulated in float32."""
    s = F0
    for i in prange(x.shape[0]):
        s += x[i]
    return s


def nb_softmax(x: np.ndarray, y: np.ndarray) -> None:
    """Row-wise stable softmax."""
    rows, cols = x.shape
    for b in prange(rows):
        m = x[b, 0]
        for n in range(1, cols):
            m = max(m, x[b, n])
        s = F0
        for n in range(cols):
            e = np.exp(x[b, n] - m)
            y[b, n] = e
            s += e
        inv = F1 / s
        for n in range(cols):
            y[b, n] *= inv


def nb_layernorm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, y: np.ndarray) -> None:
    """Row-wise layer normalization, eps 1e-5, biased variance."""
    rows, cols = x.shape
    inv_n = F1 / np.float32(cols)
    for b in prange(rows):
        s = F0
        for n in range(cols):
            s += x[b, n]
        mu = s * inv_n
        v = F0
        for n in range(cols):
            d = x[b, n] - mu
            v += d * d
        r = F1 / np.sqrt(v * inv_n + EPS5)
        for n in range(cols):
            y[b, n] = (x[b, n] - mu) * r * gamma[n] + beta[n]


def nb_rmsnorm_gelu(x: np.ndarray, w: np.ndarray, y: np.ndarray) -> None:
    """RMS normalization (eps 1e-6) then GELU (tanh form)."""
    rows, cols = x.shape
    inv_n = F1 / np.float32(cols)
    for b in prange(rows):
        s = F0
        for n in range(cols):
            s += x[b, n] * x[b, n]
        r = F1 / np.sqrt(s * inv_n + EPS6)
        for n in range(cols):
            v = x[b, n] * r * w[n]
            y[b, n] = HALF * v * (F1 + math.tanh(GELU_C * (v + GELU_K * v * v * v)))


def nb_chain(x: np.ndarray, z: np.ndarray, y: np.ndarray) -> None:
    """y = max(x z + x / 2 - z^2, 0) / (1 + |x|) + sqrt(|z|)."""
    rows, cols = x.shape
    for i in prange(rows):
        for j in range(cols):
            a = x[i, j]
            b = z[i, j]
            y[i, j] = max(a * b + HALF * a - b * b, F0) / (F1 + abs(a)) + np.sqrt(abs(b))


def nb_exp(x: np.ndarray, y: np.ndarray) -> None:
    """y = exp(x)."""
    rows, cols = x.shape
    for i in prange(rows):
        for j in range(cols):
            y[i, j] = math.exp(x[i, j])


def nb_tanh(x: np.ndarray, y: np.ndarray) -> None:
    """y = tanh(x)."""
    rows, cols = x.shape
    for i in prange(rows):
        for j in range(cols):
            y[i, j] = math.tanh(x[i, j])


def nb_erf(x: np.ndarray, y: np.ndarray) -> None:
    """y = erf(x)."""
    rows, cols = x.shape
    for i in prange(rows):
        for j in range(cols):
            y[i, j] = math.erf(x[i, j])


def nb_tanh_sigmoid(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> None:
    """z = tanh(x) sigmoid(y) + x y."""
    rows, cols = x.shape
    for i in prange(rows):
        for j in range(cols):
            a = x[i, j]
            b = y[i, j]
            z[i, j] = math.tanh(a) * (F1 / (F1 + math.exp(-b))) + a * b


def nb_laplacian2d(x: np.ndarray, y: np.ndarray) -> None:
    """5-point Laplacian on the interior."""
    rows, cols = y.shape
    for i in prange(rows):
        for j in range(cols):
            y[i, j] = (x[i, j + 1] + x[i + 2, j + 1] + x[i + 1, j] + x[i + 1, j + 2]
                       - FOUR * x[i + 1, j + 1])


def nb_laplacian3d(x: np.ndarray, y: np.ndarray) -> None:
    """7-point Laplacian on the interior."""
    d0, d1, d2 = y.shape
    for i in prange(d0):
        for j in range(d1):
            for k in range(d2):
                y[i, j, k] = (x[i, j + 1, k + 1] + x[i + 2, j + 1, k + 1]
                              + x[i + 1, j, k + 1] + x[i + 1, j + 2, k + 1]
                              + x[i + 1, j + 1, k] + x[i + 1, j + 1, k + 2]
                              - SIX * x[i + 1, j + 1, k + 1])


def nb_matmul(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    """C = A B, i-k-j loop order (the inner loop streams rows of B and C)."""
    m, kk = a.shape
    n = b.shape[1]
    for i in prange(m):
        for j in range(n):
            c[i, j] = F0
        for k in range(kk):
            aik = a[i, k]
            for j in range(n):
                c[i, j] += aik * b[k, j]


def nb_matmul_nt(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    """C = A B^T (B stored [N, K], like a weight [out, in]): a dot product per element."""
    m, kk = a.shape
    n = b.shape[0]
    for i in prange(m):
        for j in range(n):
            acc = F0
            for k in range(kk):
                acc += a[i, k] * b[j, k]
            c[i, j] = acc


def nb_mha_causal(q: np.ndarray, k: np.ndarray, v: np.ndarray, o: np.ndarray) -> None:
    """Causal multi-head attention, one (head, query) row per parallel iteration."""
    heads, t, d = q.shape
    scale = F1 / np.sqrt(np.float32(d))
    for hi in prange(heads * t):
        hh = hi // t
        i = hi % t
        s = np.empty(i + 1, dtype=np.float32)
        m = NEG_INF
        for j in range(i + 1):
            acc = F0
            for e in range(d):
                acc += q[hh, i, e] * k[hh, j, e]
            acc *= scale
            s[j] = acc
            m = max(m, acc)
        for e in range(d):
            o[hh, i, e] = F0
        z = F0
        for j in range(i + 1):
            p = np.exp(s[j] - m)
            z += p
            for e in range(d):
                o[hh, i, e] += p * v[hh, j, e]
        inv = F1 / z
        for e in range(d):
            o[hh, i, e] *= inv


def nb_triad(a: np.ndarray, b: np.ndarray, c: np.ndarray, s: np.float32) -> None:
    """The STREAM triad a = b + s c (the bandwidth roof)."""
    for i in prange(a.shape[0]):
        a[i] = b[i] + s * c[i]


def nb_fma(x: np.ndarray, a: np.float32, b: np.float32, reps: int) -> None:
    """8 independent chains of FMAs per step over an L1-resident block per row (the compute
    roof): 8 loads, 32 FMAs and 8 stores per step."""
    rows, cols = x.shape
    q = cols // 8
    for r in prange(rows):
        for _ in range(reps):
            for j in range(q):
                v0 = x[r, j]
                v1 = x[r, j + q]
                v2 = x[r, j + 2 * q]
                v3 = x[r, j + 3 * q]
                v4 = x[r, j + 4 * q]
                v5 = x[r, j + 5 * q]
                v6 = x[r, j + 6 * q]
                v7 = x[r, j + 7 * q]
                for _k in range(4):
                    v0 = v0 * a + b
                    v1 = v1 * a + b
                    v2 = v2 * a + b
                    v3 = v3 * a + b
                    v4 = v4 * a + b
                    v5 = v5 * a + b
                    v6 = v6 * a + b
                    v7 = v7 * a + b
                x[r, j] = v0
                x[r, j + q] = v1
                x[r, j + 2 * q] = v2
                x[r, j + 3 * q] = v3
                x[r, j + 4 * q] = v4
                x[r, j + 5 * q] = v5
                x[r, j + 6 * q] = v6
                x[r, j + 7 * q] = v7


NUMBA_FUNCS: dict[str, Callable[..., Any]] = {
    f.__name__: f for f in (nb_saxpy, nb_sum, nb_softmax, nb_layernorm, nb_rmsnorm_gelu,
                            nb_chain, nb_exp, nb_tanh, nb_erf, nb_tanh_sigmoid,
                            nb_laplacian2d, nb_laplacian3d, nb_matmul, nb_matmul_nt,
                            nb_mha_causal)
}
"""The Numba kernels compared against tdsl (compile.py times their first-call compile)."""

_JITTED: dict[tuple[str, bool], Any] = {}


def jitted(name: str, parallel: bool) -> Any:
    """The Numba dispatcher of `NUMBA_FUNCS[name]` (or a roof function), made once."""
    key = (name, parallel)
    if key not in _JITTED:
        fn = NUMBA_FUNCS.get(name) or globals()[name]
        flags: Any = {"contract"} if name == "nb_fma" else True
        _JITTED[key] = (njit(parallel=True, fastmath=flags) if parallel
                        else njit(fastmath=flags))(fn)
    return _JITTED[key]


# ---- cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run."""

    rows: int
    cols: int
    vec: int
    cube: int
    matmul: tuple[int, ...]
    attention: tuple[int, int, int]  # heads, sequence length, head width


FULL = Sizes(4096, 4096, 4096 * 4096, 256, (1024, 2048), (4, 512, 64))
QUICK = Sizes(256, 256, 256 * 256, 32, (128, 256), (2, 64, 32))
TINY = Sizes(4, 8, 16, 4, (8,), (1, 4, 8))


@dataclass
class Case:
    """One kernel at one size: the implementations (zero-argument callables returning the
    result), the reference result, and the work for rates."""

    name: str
    family: str
    size: str
    dtype: str
    nbytes: float
    flops: float | None
    bound: str  # "mem" (rate in GB/s against the bandwidth roof) or "flop"
    impls: dict[str, Callable[[], Any]]
    rtol: float = 1e-5
    atol: float = 1e-6
    ref: Callable[[], Any] | None = None  # default: the numpy implementation's result
    note: str = ""
    tdsl: tuple[str, str] | None = None  # (samples/ file or "extra", kernel name)


_MODULES: dict[str, Any] = {}
LOAD_SECONDS: dict[str, float] = {}


def tdsl_kernel(source: str, name: str) -> Any:
    """Kernel `name` of a sample file (`samples/NAME.tdsl`) or of the bench's own source
    (`extra`), loaded through the disk cache once per run."""
    if source not in _MODULES:
        import tdsl

        t0 = time.perf_counter()
        if source == "extra":
            _MODULES[source] = tdsl.loads(TDSL_EXTRA, filename="bench/kernels.py")
        else:
            _MODULES[source] = tdsl.load(h.SAMPLES / f"{source}.tdsl")
        LOAD_SECONDS[source] = time.perf_counter() - t0
    return _MODULES[source][name]


def _rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _f32(rng: np.random.Generator, shape: Any, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    return rng.uniform(lo, hi, size=shape).astype(np.float32)


def _add_numba(impls: dict[str, Callable[[], Any]], want: set[str], name: str,
               inputs: tuple[Any, ...], out: np.ndarray | None) -> None:
    """Add the serial and parallel Numba implementations of NUMBA_FUNCS[name], called with
    `inputs` and (when `out` is given) an output array like `out` of their own; they return
    that output, or what the function returns."""
    if njit is None:
        return
    for key, parallel in (("numba", False), ("numba-par", True)):
        if key in want:
            fn = jitted(name, parallel)
            args = inputs if out is None else (*inputs, np.empty_like(out))
            impls[key] = _numba_call(fn, args, out is not None)


def _numba_call(fn: Any, args: tuple[Any, ...], returns_out: bool) -> Callable[[], Any]:
    def call() -> Any:
        r = fn(*args)
        return args[-1] if returns_out else r
    return call


def case_saxpy(sz: Sizes, want: set[str]) -> list[Case]:
    """z = a x + y over a vector."""
    rng = _rng()
    n = sz.vec
    a, x, y = np.float32(1.7), _f32(rng, n), _f32(rng, n)
    impls: dict[str, Callable[[], Any]] = {}
    if "tdsl" in want:
        k, zt = tdsl_kernel("saxpy", "saxpy"), np.empty_like(x)
        impls["tdsl"] = lambda: k(a, x, y, z=zt)
    if "numpy" in want:
        zn = np.empty_like(x)

        def numpy_saxpy() -> np.ndarray:
            np.multiply(x, a, out=zn)
            return np.add(zn, y, out=zn)
        impls["numpy"] = numpy_saxpy
    _add_numba(impls, want, "nb_saxpy", (a, x, y), x)
    return [Case("saxpy", "saxpy", f"N={n}", "f32", 12 * n, 2 * n, "mem", impls, 1e-5, 1e-5,
                 tdsl=("saxpy", "saxpy"))]


def case_sum(sz: Sizes, want: set[str]) -> list[Case]:
    """The sum of a vector to a scalar."""
    rng = _rng()
    n = sz.vec
    x = _f32(rng, n, 0.0, 1.0)
    impls: dict[str, Callable[[], Any]] = {}
    if "tdsl" in want:
        k = tdsl_kernel("total", "total")
        impls["tdsl"] = lambda: k(x)
    if "numpy" in want:
        impls["numpy"] = lambda: x.sum()
    _add_numba(impls, want, "nb_sum", (x,), None)
    return [Case("sum", "sum", f"N={n}", "f32", 4 * n, n, "mem", impls, 1e-4, 0.0,
                 ref=lambda: x.sum(dtype=np.float64), note="checked against a float64 sum",
                 tdsl=("total", "total"))]


def _rowwise(name: str, sz: Sizes, want: set[str], sample: tuple[str, str],
             numpy_fn: Callable[..., np.ndarray], nb_name: str, inputs: tuple[np.ndarray, ...],
             extra_tdsl: tuple[Any, ...] = (), flops_per: float = 0.0, rtol: float = 1e-4,
             atol: float = 1e-5, note: str = "") -> Case:
    """A kernel from [rows, cols] inputs (plus row vectors) to a [rows, cols] output."""
    x = inputs[0]
    impls: dict[str, Callable[[], Any]] = {}
    if "tdsl" in want:
        k = tdsl_kernel(*sample)
        out = np.empty_like(x)
        outname = k.signature.outputs[0].name
        impls["tdsl"] = lambda: k(*inputs, *extra_tdsl, **{outname: out})
    if "numpy" in want:
        out_np = np.empty_like(x)
        impls["numpy"] = lambda: numpy_fn(*inputs, out=out_np)
    _add_numba(impls, want, nb_name, inputs, x)
    nbytes = sum(a.nbytes for a in inputs) + x.nbytes
    return Case(name, name, f"{x.shape[0]}x{x.shape[1]}", "f32", nbytes,
                flops_per * x.size or None, "mem", impls, rtol, atol, note=note, tdsl=sample)


def np_softmax(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Row-wise stable softmax in numpy, in place in `out`."""
    np.subtract(x, x.max(axis=1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out


def np_layernorm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                 out: np.ndarray) -> np.ndarray:
    """Layer normalization in numpy (eps 1e-5, biased variance)."""
    d = x - x.mean(axis=1, keepdims=True)
    var = np.mean(d * d, axis=1, keepdims=True)
    np.multiply(d, 1.0 / np.sqrt(var + EPS5), out=out)
    out *= gamma
    out += beta
    return out


def np_rmsnorm_gelu(x: np.ndarray, w: np.ndarray, out: np.ndarray) -> np.ndarray:
    """RMS normalization then GELU (tanh form) in numpy."""
    ms = np.mean(x * x, axis=1, keepdims=True)
    v = x * (1.0 / np.sqrt(ms + EPS6)) * w
    inner = np.tanh(GELU_C * (v + GELU_K * v * v * v))
    return np.multiply(HALF * v, 1.0 + inner, out=out)


def np_chain(x: np.ndarray, z: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The element-wise chain in numpy."""
    t = np.maximum(x * z + HALF * x - z * z, F0) / (F1 + np.abs(x))
    return np.add(t, np.sqrt(np.abs(z)), out=out)


def np_tanh_sigmoid(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> np.ndarray:
    """tanh(x) sigmoid(y) + x y in numpy."""
    return np.add(np.tanh(x) * (F1 / (F1 + np.exp(-y))), x * y, out=out)


def np_erf(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """erf through scipy.special (numpy has none)."""
    from scipy.special import erf

    return erf(x, out=out)


def case_rowwise(sz: Sizes, want: set[str]) -> list[Case]:
    """Softmax, layernorm and rmsnorm+gelu over rows."""
    rng = _rng()
    shape = (sz.rows, sz.cols)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    gamma, beta = _f32(rng, sz.cols, 0.5, 1.5), _f32(rng, sz.cols)
    return [
        _rowwise("softmax", sz, want, ("softmax", "softmax"), np_softmax, "nb_softmax", (x,),
                 rtol=1e-4, atol=1e-9),
        _rowwise("layernorm", sz, want, ("layernorm", "layernorm"), np_layernorm,
                 "nb_layernorm", (x, gamma, beta)),
        _rowwise("rmsnorm+gelu", sz, want, ("extra", "rmsnorm_gelu"), np_rmsnorm_gelu,
                 "nb_rmsnorm_gelu", (x, gamma)),
    ]


def case_elementwise(sz: Sizes, want: set[str]) -> list[Case]:
    """The 11-op chain, exp, tanh, erf and tanh(x) sigmoid(y) + x y."""
    rng = _rng()
    shape = (sz.rows, sz.cols)
    x, z = _f32(rng, shape, -2, 2), _f32(rng, shape, -2, 2)
    xe = _f32(rng, shape, -10, 10)
    return [
        _rowwise("chain (11 ops)", sz, want, ("extra", "chain"), np_chain, "nb_chain", (x, z),
                 flops_per=11, rtol=1e-5, atol=1e-6),
        _rowwise("exp", sz, want, ("extra", "vexp"), lambda a, out: np.exp(a, out=out),
                 "nb_exp", (xe,), rtol=1e-5, atol=0.0),
        _rowwise("tanh", sz, want, ("extra", "vtanh"), lambda a, out: np.tanh(a, out=out),
                 "nb_tanh", (x,), rtol=1e-5, atol=1e-7),
        _rowwise("erf", sz, want, ("extra", "verf"), np_erf, "nb_erf", (x,), rtol=1e-5,
                 atol=1e-7, note="numpy column: scipy.special.erf"),
        _rowwise("tanh*sigmoid+x*y", sz, want, ("extra", "tanh_sigmoid"), np_tanh_sigmoid,
                 "nb_tanh_sigmoid", (x, z), rtol=1e-5, atol=1e-6),
    ]


def case_stencils(sz: Sizes, want: set[str]) -> list[Case]:
    """The 5-point 2-D and 7-point 3-D Laplacians."""
    rng = _rng()
    cases = []
    x2 = _f32(rng, (sz.rows, sz.cols), 0.0, 1.0)
    x3 = _f32(rng, (sz.cube,) * 3, 0.0, 1.0)

    def np_lap2(x: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.add(x[:-2, 1:-1], x[2:, 1:-1], out=out)
        out += x[1:-1, :-2]
        out += x[1:-1, 2:]
        out -= FOUR * x[1:-1, 1:-1]
        return out

    def np_lap3(x: np.ndarray, out: np.ndarray) -> np.ndarray:
        c = (slice(1, -1),) * 3
        np.add(x[:-2, 1:-1, 1:-1], x[2:, 1:-1, 1:-1], out=out)
        out += x[1:-1, :-2, 1:-1]
        out += x[1:-1, 2:, 1:-1]
        out += x[1:-1, 1:-1, :-2]
        out += x[1:-1, 1:-1, 2:]
        out -= SIX * x[c]
        return out

    for name, sample, x, np_fn, nb_name, flops_per in (
            ("stencil2d", ("stencil2d", "laplacian2d"), x2, np_lap2, "nb_laplacian2d", 6),
            ("stencil3d", ("stencil3d", "laplacian3d"), x3, np_lap3, "nb_laplacian3d", 8)):
        out_shape = tuple(d - 2 for d in x.shape)
        impls: dict[str, Callable[[], Any]] = {}
        if "tdsl" in want:
            k = tdsl_kernel(*sample)
            out = np.empty(out_shape, np.float32)
            oname = k.signature.outputs[0].name
            impls["tdsl"] = (lambda k=k, x=x, out=out, oname=oname: k(x, **{oname: out}))
        if "numpy" in want:
            out_np = np.empty(out_shape, np.float32)
            impls["numpy"] = lambda np_fn=np_fn, x=x, out_np=out_np: np_fn(x, out_np)
        _add_numba(impls, want, nb_name, (x,), np.empty(out_shape, np.float32))
        n_out = math.prod(out_shape)
        cases.append(Case(name, name, "x".join(map(str, x.shape)), "f32",
                          x.nbytes + 4 * n_out, flops_per * n_out, "mem", impls, 1e-5, 1e-5,
                          tdsl=sample))
    return cases


def case_matmul(sz: Sizes, want: set[str]) -> list[Case]:
    """C = A B, square f32."""
    cases = []
    for n in sz.matmul:
        rng = _rng()
        a, b = _f32(rng, (n, n)), _f32(rng, (n, n))
        impls: dict[str, Callable[[], Any]] = {}
        if "tdsl" in want:
            k, ct = tdsl_kernel("matmul", "matmul"), np.empty((n, n), np.float32)
            impls["tdsl"] = lambda k=k, a=a, b=b, ct=ct: k(a, b, C=ct)
        if "numpy" in want:
            cn = np.empty((n, n), np.float32)
            impls["numpy"] = lambda a=a, b=b, cn=cn: np.matmul(a, b, out=cn)
        _add_numba(impls, want, "nb_matmul", (a, b), a)
        cases.append(Case(f"matmul {n}", "matmul", f"{n}x{n}x{n}", "f32", 3 * a.nbytes,
                          2.0 * n**3, "flop", impls, 1e-4, 1e-3 * math.sqrt(n) / 8,
                          tdsl=("matmul", "matmul")))
    n = sz.matmul[0]  # x @ W.T with W stored [out, in]: B transposed
    rng = _rng()
    a, w = _f32(rng, (n, n)), _f32(rng, (n, n))
    impls = {}
    if "tdsl" in want:
        k, ct = tdsl_kernel("matmul", "matmul_nt"), np.empty((n, n), np.float32)
        impls["tdsl"] = lambda k=k, a=a, w=w, ct=ct: k(a, w, C=ct)
    if "numpy" in want:
        cn = np.empty((n, n), np.float32)
        impls["numpy"] = lambda a=a, w=w, cn=cn: np.matmul(a, w.T, out=cn)
    _add_numba(impls, want, "nb_matmul_nt", (a, w), a)
    cases.append(Case(f"matmul_nt {n}", "matmul", f"{n}x{n}x{n}", "f32", 3 * a.nbytes,
                      2.0 * n**3, "flop", impls, 1e-4, 1e-3 * math.sqrt(n) / 8,
                      tdsl=("matmul", "matmul_nt")))
    return cases


def case_attention(sz: Sizes, want: set[str]) -> list[Case]:
    """Causal multi-head attention (samples/attention.tdsl: mha_causal)."""
    heads, t, d = sz.attention
    rng = _rng()
    q, k, v = (_f32(rng, (heads, t, d)) for _ in range(3))
    scale = np.float32(1.0 / math.sqrt(d))
    mask = np.triu(np.full((t, t), -np.inf, np.float32), 1)  # 0 on and below the diagonal

    def np_attention(out: np.ndarray) -> np.ndarray:
        s = np.matmul(q, k.transpose(0, 2, 1))
        s *= scale
        s += mask
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        z = s.sum(axis=-1, keepdims=True)
        np.matmul(s, v, out=out)
        out /= z
        return out

    impls: dict[str, Callable[[], Any]] = {}
    if "tdsl" in want:
        kern, ot = tdsl_kernel("attention", "mha_causal"), np.empty_like(q)
        impls["tdsl"] = lambda: kern(q, k, v, o=ot)
    if "numpy" in want:
        on = np.empty_like(q)
        impls["numpy"] = lambda: np_attention(on)
    _add_numba(impls, want, "nb_mha_causal", (q, k, v), q)
    flops = 4.0 * heads * t * t * d
    return [Case("attention causal", "attention", f"H{heads} T{t} D{d}", "f32", 4 * q.nbytes,
                 flops, "flop", impls, 1e-4, 1e-5,
                 note="attention GFLOP/s counts the dense 4 H T^2 D (the mask halves the work)",
                 tdsl=("attention", "mha_causal"))]


BUILDERS: tuple[tuple[tuple[str, ...], Callable[[Sizes, set[str]], list[Case]]], ...] = (
    (("saxpy",), case_saxpy),
    (("sum",), case_sum),
    (("softmax", "layernorm", "rmsnorm+gelu"), case_rowwise),
    (("chain", "exp", "tanh", "erf", "tanh*sigmoid+x*y"), case_elementwise),
    (("stencil2d", "stencil3d"), case_stencils),
    (("matmul",), case_matmul),
    (("attention",), case_attention),
)
"""The case builders and the names of the cases each makes (for `--only`)."""


# ---- checking -------------------------------------------------------------------------------


def compare(got: Any, ref: Any, rtol: float, atol: float) -> float:
    """The largest |got - ref| / (atol + rtol |ref|) (nan where both are nan counts as 0);
    <= 1 passes. A shape mismatch or a nan on one side only gives inf."""
    g = np.array(got, dtype=np.float64, ndmin=1)
    r = np.array(ref, dtype=np.float64, ndmin=1)
    if g.shape != r.shape:
        return math.inf
    if g.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):
        err = np.abs(g - r) / (atol + rtol * np.abs(r))
    same_nan = np.isnan(g) & np.isnan(r)
    same_inf = np.isinf(g) & (g == r)
    err[same_nan | same_inf] = 0.0
    err[np.isnan(err)] = math.inf
    return float(err.max())


# ---- assembly ---------------------------------------------------------------------------

_FP_OPS = r"(add|sub|mul|div|sqrt|min|max|rsqrt|rcp|f[n]?m(add|sub)\d*)"
_VECTOR_FP = re.compile(rf"^v{_FP_OPS}p[sd]$")
_SCALAR_FP = re.compile(rf"^v?{_FP_OPS}s[sd]$")
_CALL = re.compile(r"^\s+(?:call\w*\s+\*?([\w.$]+)|jmp\w*\s+([\w.$]+)@PLT)")  # tail calls too


def asm_summary(source: str, kernel: str) -> dict[str, Any]:
    """Counts over tdsl's host assembly of one kernel (`tdsl compile --emit asm -k`): vector
    floating-point instructions by register width, scalar ones, and the functions called
    (a libm name like `expf` in a hot loop means the math was not vectorized)."""
    from tdsl.check import check_source
    from tdsl.compiler import emit

    if source == "extra":
        text, filename = TDSL_EXTRA, "bench/kernels.py"
    else:
        path = h.SAMPLES / f"{source}.tdsl"
        text, filename = path.read_text(encoding="utf-8"), str(path)
    asm, _ = emit(check_source(text, filename), "asm", kernel)
    counts = {"xmm": 0, "ymm": 0, "zmm": 0, "scalar": 0}
    calls: dict[str, int] = {}
    for line in str(asm).splitlines():
        parts = line.split(None, 1)
        if not parts or not line[:1].isspace() or parts[0].startswith("."):
            continue
        mnemonic = parts[0]
        if _VECTOR_FP.match(mnemonic):
            width = "zmm" if "%zmm" in line else "ymm" if "%ymm" in line else "xmm"
            counts[width] += 1
        elif _SCALAR_FP.match(mnemonic):
            counts["scalar"] += 1
        if (m := _CALL.match(line)):
            name = (m.group(1) or m.group(2)).split("@")[0]
            calls[name] = calls.get(name, 0) + 1
    return {**counts, "calls": calls}


def format_asm(rows: list[Row]) -> tuple[str, dict[str, Any]]:
    """The assembly table of the tdsl kernels measured, and its data by kernel."""
    headers = ["kernel", "tdsl kernel", "fp vector ops zmm/ymm/xmm", "fp scalar ops", "calls"]
    table = []
    seen = set()
    data: dict[str, Any] = {}
    for row in rows:
        ref = row.case.tdsl
        if not ref or ref in seen:
            continue
        seen.add(ref)
        try:
            a = data[":".join(ref)] = asm_summary(*ref)
        except Exception as exc:  # noqa: BLE001 - reported in the table
            table.append([row.case.name, ":".join(ref), f"error: {exc}"[:60], "-", "-"])
            continue
        calls = " ".join(f"{k}x{v}" for k, v in sorted(a["calls"].items())) or "-"
        table.append([row.case.name, ":".join(ref), f"{a['zmm']}/{a['ymm']}/{a['xmm']}",
                      str(a["scalar"]), calls])
    title = ("tdsl's assembly (tdsl compile --emit asm -k KERNEL): floating-point "
             "instructions by register width; calls name libm functions left in the code")
    return "\n".join([title, h.format_table(headers, table, left=(0, 1, 4))]), data


# ---- running ------------------------------------------------------------------------------


@dataclass
class Result:
    """The measurements of one implementation of one case."""

    timing: h.Timing | None = None
    error: float | None = None  # compare() against the reference
    ok: bool = True
    failure: str = ""  # an exception, a wrong result, or why it was skipped

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {"timing": self.timing.to_json() if self.timing else None, "error": self.error,
                "ok": self.ok, "failure": self.failure}


@dataclass
class Row:
    """A measured case."""

    case: Case
    results: dict[str, Result] = field(default_factory=dict)

    def median(self, impl: str) -> float | None:
        """The median time of `impl`, when it ran and was right."""
        r = self.results.get(impl)
        return r.timing.median if r and r.ok and r.timing else None


def run_case(case: Case, policy: h.Policy, rates: dict[tuple[str, str], float],
             max_call_s: float) -> Row:
    """Check then time every implementation of `case`. `rates` holds work per second of each
    (family, impl) measured so far; an implementation predicted to take more than
    `max_call_s` per call is skipped."""
    row = Row(case)
    work = case.flops if case.bound == "flop" and case.flops else case.nbytes
    try:
        reference = case.ref() if case.ref else case.impls["numpy"]()
        reference = np.array(reference, copy=True)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        reference = None
        print(f"  {case.name}: no reference: {exc!r}", file=sys.stderr)
    for impl in IMPLS:
        fn = case.impls.get(impl)
        if fn is None:
            continue
        res = Result()
        row.results[impl] = res
        rate = rates.get((case.family, impl))
        if rate and work / rate > max_call_s:
            res.ok = False
            res.failure = (f"skipped: ~{work / rate:.0f} s per call predicted from the smaller "
                           f"size (limit --max-call {max_call_s:g} s)")
            continue
        try:
            t0 = time.perf_counter()
            c0 = time.process_time()
            got = fn()
            first = time.perf_counter() - t0
            first_cpu = time.process_time() - c0
            if reference is not None:
                res.error = compare(got, reference, case.rtol, case.atol)
                if case.ref is None and np.asarray(got).dtype != reference.dtype:
                    res.ok = False
                    res.failure = (f"WRONG: dtype {np.asarray(got).dtype}, numpy gives "
                                   f"{reference.dtype}")
                    continue
                if not res.error <= 1.0:
                    res.ok = False
                    res.failure = (f"WRONG: max |err| / (atol + rtol |ref|) = {res.error:.3g} "
                                   f"(rtol {case.rtol:g}, atol {case.atol:g})")
                    continue
            compiles = impl.startswith("numba")  # the first call compiled: warm up again
            if first > policy.single_s and not compiles:
                res.timing = h.Timing([first], [first_cpu], first, "1 call (its first)",
                                      policy.clock)
            else:
                res.timing = h.time_calls(fn, policy, None if compiles else first)
            rates[(case.family, impl)] = work / res.timing.median
        except Exception as exc:  # noqa: BLE001 - reported in the table
            res.ok = False
            res.failure = f"error: {type(exc).__name__}: {exc}".splitlines()[0][:200]
    return row


def measure_roofs(n: int, threads: int, policy: h.Policy) -> dict[str, float]:
    """Measured limits: copy (numpy) and triad (Numba, 1 and `threads` threads) GB/s on
    `n`-element f32 arrays, and an FMA loop's GFLOP/s on `threads` threads."""
    rng = _rng()
    a, b, c = np.empty(n, np.float32), _f32(rng, n), _f32(rng, n)
    roofs: dict[str, float] = {}
    t = h.time_calls(lambda: np.copyto(a, b), policy)
    roofs["copy GB/s (numpy)"] = 8 * n / t.median / 1e9
    if njit is None:
        roofs["bandwidth GB/s"] = roofs["copy GB/s (numpy)"]
        return roofs
    s = np.float32(1.5)
    for parallel in (False, True):
        fn = jitted("nb_triad", parallel)
        fn(a, b, c, s)
        t = h.time_calls(lambda fn=fn: fn(a, b, c, s), policy)
        label = f"triad GB/s ({threads} thr)" if parallel else "triad GB/s (1 thr)"
        roofs[label] = 12 * n / t.median / 1e9
    roofs["bandwidth GB/s"] = max(v for k, v in roofs.items() if "GB/s" in k)
    fma = jitted("nb_fma", True)
    x = _f32(rng, (4 * threads, 512), 0.0, 1.0)
    ca, cb = np.float32(0.999), np.float32(0.001)
    fma(x, ca, cb, 1)
    reps = 64
    while True:  # calibrate to about 50 ms a call
        t0 = time.perf_counter()
        fma(x, ca, cb, reps)
        if time.perf_counter() - t0 > 0.05 or reps > 1 << 24:
            break
        reps *= 4
    t = h.time_calls(lambda: fma(x, ca, cb, reps), policy)
    roofs[f"FMA GFLOP/s ({threads} thr)"] = x.size * reps * 4 * 2 / t.median / 1e9
    roofs["compute GFLOP/s"] = roofs[f"FMA GFLOP/s ({threads} thr)"]
    return roofs


def format_rows(rows: list[Row], roofs: dict[str, float]) -> tuple[str, list[str]]:
    """The results table and its notes."""
    headers = ["kernel", "size", "dtype", "tdsl ms", "numpy ms", "numba ms", "nb-par ms",
               "np/tdsl", "nb/tdsl", "nbp/tdsl", "tdsl rate", "%roof", "cores", "noise",
               "check"]
    table = []
    notes: list[str] = []
    for row in rows:
        case = row.case
        tdsl_t = row.median("tdsl")
        tr = row.results.get("tdsl")

        def ratio(impl: str, row: Row = row, tdsl_t: float | None = tdsl_t) -> str:
            other = row.median(impl)
            return h.fmt_ratio(other / tdsl_t) if other and tdsl_t else "-"

        rate = roof_pct = par = noise = "-"
        if tdsl_t:
            if case.bound == "flop" and case.flops:
                value = case.flops / tdsl_t / 1e9
                rate = f"{value:.1f} GFLOP/s"
                roof = roofs.get("compute GFLOP/s")
            else:
                value = case.nbytes / tdsl_t / 1e9
                rate = f"{value:.1f} GB/s"
                roof = roofs.get("bandwidth GB/s")
            roof_pct = f"{100 * value / roof:.0f}%" if roof else "-"
            assert tr is not None and tr.timing is not None
            par = f"{tr.timing.parallelism:.1f}"
            noise = f"{100 * tr.timing.spread:.0f}%"
        if tr is None:
            check = "-"
        elif tr.ok:
            check = "ok" if tr.error is not None else "unchecked"
        else:
            check = "WRONG" if tr.failure.startswith("WRONG") else (
                "skipped" if tr.failure.startswith("skipped") else "ERROR")
        table.append([case.name, case.size, case.dtype,
                      *(h.fmt_ms(row.median(i)) for i in IMPLS),
                      ratio("numpy"), ratio("numba"), ratio("numba-par"),
                      rate, roof_pct, par, noise, check])
        for impl, res in row.results.items():
            if res.failure:
                notes.append(f"{case.name} [{impl}]: {res.failure}")
            elif res.timing and res.timing.note:
                notes.append(f"{case.name} [{impl}]: {res.timing.note}")
        if case.note:
            notes.append(f"{case.name}: {case.note}")
    return h.format_table(headers, table, left=(0, 1, 2)), notes


def selected(name: str, only: list[str]) -> bool:
    """True when the case `name` matches one of the `--only` prefixes (or there are none)."""
    return not only or any(name.startswith(o) or o.startswith(name) for o in only)


def run(args: argparse.Namespace) -> int:
    """Measure everything for one thread count and print the tables."""
    threads = h.thread_count(args.threads)
    sizes = QUICK if args.quick else FULL
    policy = (h.Policy(min_reps=3, max_reps=10, target_s=0.1, clock=args.clock) if args.quick
              else h.Policy(min_reps=5, max_reps=30, target_s=0.5, clock=args.clock))
    only = [o for o in (args.only or "").split(",") if o]
    info = h.machine_info(threads)
    mode = "quick" if args.quick else "full"
    print(f"== tdsl kernel benchmarks ({mode}, {threads} thread{'s' * (threads != 1)}) ==")
    print(h.format_machine(info))
    if numba is not None:
        print(f"numba   : {numba.__version__}, NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}")
    clock = "process CPU time" if args.clock == "cpu" else "wall clock"
    print(f"times   : median of repeated calls after a warm-up, ms ({clock}); ratios > 1 mean "
          "tdsl is faster; cores = CPU time / wall time of the tdsl calls; noise = (max - min) "
          "/ median")
    if args.clock == "cpu" and threads > 1:
        print("  ** --clock cpu adds up the CPU time of every thread: use it with --threads 1 **")
    sys.stdout.flush()

    t_start = time.perf_counter()
    n_roof = sizes.rows * sizes.cols
    roofs_start = measure_roofs(n_roof, threads, policy)
    print("\nroofs (measured on f32 arrays of the 2-D kernels' size, before and after the "
          "kernels; the better of the two is the roof):")
    print("  before: " + "   ".join(f"{k}: {v:.1f}" for k, v in roofs_start.items()))
    if numba is not None:
        print(f"  (Numba threading layer: {_threading_layer()})")
    sys.stdout.flush()

    want = set(IMPLS)
    if njit is None:
        print("  Numba is not installed (pip install -e '.[bench]'): no Numba columns")
    rows: list[Row] = []
    rates: dict[tuple[str, str], float] = {}
    for names, builder in BUILDERS:
        if not any(selected(n, only) for n in names):
            continue
        try:
            cases = builder(sizes, want)
        except Exception as exc:  # noqa: BLE001 - e.g. a tdsl source that does not compile
            print(f"  {builder.__name__}: could not set up: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            cases = _without_tdsl(builder, sizes, want, exc)
        for case in cases:
            if not selected(case.name, only):
                continue
            print(f"  running {case.name} {case.size} ...", file=sys.stderr, flush=True)
            rows.append(run_case(case, policy, rates, args.max_call))
        del cases
    roofs_end = measure_roofs(n_roof, threads, policy)
    roofs = {k: max(v, roofs_end.get(k, v)) for k, v in roofs_start.items()}
    print("  after:  " + "   ".join(f"{k}: {v:.1f}" for k, v in roofs_end.items()))
    elapsed = time.perf_counter() - t_start

    table, notes = format_rows(rows, roofs)
    print()
    print(table)
    if LOAD_SECONDS:
        notes.append("tdsl module loads (cache, or compile on a miss): "
                     + ", ".join(f"{k} {v:.2f} s" for k, v in LOAD_SECONDS.items()))
    for note in notes:
        print(f"  note: {note}")
    wrong = [r.case.name for r in rows
             if (res := r.results.get("tdsl")) and res.failure.startswith(("WRONG", "error"))]
    print(f"\n{len(rows)} cases in {elapsed:.0f} s; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if wrong:
        print(f"tdsl FAILED on: {', '.join(wrong)}")
    asm_data: dict[str, Any] = {}
    if args.asm:
        asm_text, asm_data = format_asm(rows)
        print()
        print(asm_text)
    if args.json:
        h.write_json(args.json, {
            "machine": info, "mode": mode, "threads": threads, "clock": args.clock,
            "roofs": roofs, "roofs_before": roofs_start, "roofs_after": roofs_end,
            "numba_threading_layer": _threading_layer(),
            "cases": [{"name": r.case.name, "family": r.case.family, "size": r.case.size,
                       "dtype": r.case.dtype, "bytes": r.case.nbytes, "flops": r.case.flops,
                       "bound": r.case.bound, "note": r.case.note,
                       "results": {k: v.to_json() for k, v in r.results.items()}}
                      for r in rows],
            "tdsl_load_seconds": LOAD_SECONDS, "elapsed_s": elapsed, "asm": asm_data,
        })
    return 1 if wrong else 0


def _without_tdsl(builder: Callable[[Sizes, set[str]], list[Case]], sizes: Sizes,
                  want: set[str], exc: Exception) -> list[Case]:
    """The builder's cases without tdsl (after tdsl failed to load), tdsl marked as failed."""
    cases = builder(sizes, want - {"tdsl"})
    for case in cases:
        case.impls["tdsl"] = _raiser(exc)
    return cases


def _raiser(exc: Exception) -> Callable[[], Any]:
    def fail() -> Any:
        raise exc
    return fail


def _threading_layer() -> str | None:
    try:
        return numba.threading_layer() if numba is not None else None
    except Exception:  # noqa: BLE001 - no parallel function ran
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke run)")
    p.add_argument("--threads", default="all",
                   help="1, all (every usable core; the default), a number, or both")
    p.add_argument("--only", help="comma-separated kernel name prefixes, e.g. softmax,matmul")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="time by wall clock (default) or by the process's CPU time, which a "
                        "busy machine disturbs less (one-thread runs only)")
    p.add_argument("--no-asm", dest="asm", action="store_false",
                   help="skip the table of tdsl's assembly (it compiles each kernel again)")
    p.add_argument("--max-call", type=float, default=30.0,
                   help="skip an implementation predicted (from a smaller size of the same "
                        "kernel) to need more than this many seconds per call (default 30)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: re-execute under the bench environment, then run."""
    args = parse_args(argv)
    if args.threads == "both":
        return _run_both(args)
    if not h.is_bench_child():
        h.reexec(h.thread_count(args.threads))
    return run(args)


def _run_both(args: argparse.Namespace) -> int:
    """Run 1 thread then all cores, each in its own process; merge the JSON files."""
    code = 0
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in ("1", "all"):
            out = Path(tmp) / f"{spec}.json"
            cmd = [sys.executable, os.path.abspath(__file__), "--threads", spec,
                   "--max-call", str(args.max_call), "--json", str(out)]
            cmd += ["--quick"] if args.quick else []
            cmd += ["--only", args.only] if args.only else []
            cmd += ["--no-asm"] if not args.asm or spec == "1" else []
            cmd += ["--clock", args.clock]
            sys.stdout.flush()
            rc = subprocess.run(cmd, env=h.bench_env(h.thread_count(spec))).returncode
            code = code or rc
            print()
            if out.exists():
                import json

                runs.append(json.loads(out.read_text()))
    if args.json:
        h.write_json(args.json, {"runs": runs})
    return code


if __name__ == "__main__":
    sys.exit(main())

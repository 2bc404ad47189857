"""Numba implementations of the benchmark kernels, and the roof loops.

Each kernel is written once with `prange` and compiled twice by `jitted`:
`@njit(fastmath=True)`, where prange is a plain range, and `@njit(parallel=True, fastmath=True)`.
`nb_triad` and `nb_fma` measure the bandwidth and compute roofs. Without Numba (the `bench`
extra) the module still imports: `numba` and `njit` are None.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - Numba is the `bench` extra
    numba = None
    njit = None
    prange = range

# float32 constants: Numba types a Python float literal as float64, which would promote the
# whole expression; a global numpy scalar is frozen into the function with its own dtype.
# kernel_cases.py uses them too, in the numpy references.
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

# ---- the kernels, written once with prange ---------------------------------------------------
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


def nb_conv2d(x: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
    """Valid 2-D convolution (NCHW, FCRS), one (image, filter) plane per parallel iteration,
    accumulated along the output row (the loop order that vectorizes)."""
    n_img, channels = x.shape[0], x.shape[1]
    filters, _, fr, fs = w.shape
    rows, cols = out.shape[2], out.shape[3]
    for nf in prange(n_img * filters):
        n, f = nf // filters, nf % filters
        for i in range(rows):
            for j in range(cols):
                out[n, f, i, j] = F0
        for c in range(channels):
            for r in range(fr):
                for q in range(fs):
                    wv = w[f, c, r, q]
                    for i in range(rows):
                        for j in range(cols):
                            out[n, f, i, j] += x[n, c, i + r, j + q] * wv


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
                            nb_conv2d, nb_mha_causal)
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

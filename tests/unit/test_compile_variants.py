"""The two versions of a kernel with a tiled contraction (`tdsl.schedules.versioned_text`):
calls with a non-unit innermost stride take `_any`, which for kernels with more loop nests
than arguments copies its arguments and runs the scheduled `_unit` version
(`tdsl.schedule_ir.any_through_unit`), and otherwise keeps the plain loops. Both against numpy,
on strided, transposed and offset views, inputs and outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tdsl
from tdsl.check import check_source
from tdsl.pipelines import run_pipeline

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
RNG = np.random.default_rng(11)

EXTRA = """
kernel scaled_mm(a: f32[M, K], b: f32[K, N], s: f32) -> (c: f32[M, N], r: f32[M]) {
    c[m, n] = sum[k](a[m, k] * b[k, n]) * s
    r[m]    = sum[n](c[m, n])
}
"""


@pytest.fixture(scope="module")
def attention():
    return tdsl.load(SAMPLES / "attention.tdsl")


@pytest.fixture(scope="module")
def distance():
    return tdsl.load(SAMPLES / "distance.tdsl")


@pytest.fixture(scope="module")
def extra():
    return tdsl.loads(EXTRA)


def rand(*shape: int) -> np.ndarray:
    return RNG.uniform(-1.0, 1.0, shape).astype(np.float32)


def strided(a: np.ndarray) -> np.ndarray:
    """The same values as a view with an offset and non-unit strides in every dimension."""
    big = np.zeros(tuple(2 * n + 1 for n in a.shape), dtype=a.dtype)
    view = big[tuple(slice(1, 1 + 2 * n, 2) for n in a.shape)]
    view[...] = a
    return view


def views(a: np.ndarray) -> list[np.ndarray]:
    """`a` itself, strided, Fortran-ordered (a transposed innermost stride) and offset."""
    offset = np.pad(a, [(1, 0)] * a.ndim)[(slice(1, None),) * a.ndim]
    return [a, strided(a), np.asfortranarray(a), offset]


def softmax_rows(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ref_causal(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    s = q @ k.T / np.sqrt(q.shape[1])
    s[np.triu_indices(s.shape[0], 1)] = -np.inf
    return softmax_rows(s) @ v


def ref_cross(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    return softmax_rows(q @ k.T / np.sqrt(q.shape[1])) @ v


def ref_cosine(x: np.ndarray, z: np.ndarray) -> np.ndarray:
    x, z = x.astype(np.float64), z.astype(np.float64)
    return (x @ z.T) / np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(z, axis=1))


def close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2e-4, atol=2e-4)


def _any_body(source: str, kernel: str) -> str:
    program = check_source(source, "<variants>")
    k = next(k for k in program.kernels if k.name == kernel)
    text = run_pipeline(k, until="fused", keep=["fused"]).ir["fused"]
    return text.split(f"func.func private @tdsl_k_{kernel}_any(")[1].split("\n  }\n")[0]


@pytest.mark.parametrize("file, kernel, through_unit", [
    ("attention.tdsl", "causal_attention", True),
    ("attention.tdsl", "cross_attention", True),
    ("distance.tdsl", "cosine_similarity", True),
    ("matmul.tdsl", "matmul", False),
    ("batched_matmul.tdsl", "bmm_nt", False),
])
def test_which_any_version(file, kernel, through_unit):
    body = _any_body((SAMPLES / file).read_text(encoding="utf-8"), kernel)
    assert (f"call @tdsl_k_{kernel}_unit(" in body) == through_unit
    assert ("memref.copy" in body) == through_unit
    assert ("linalg.generic" in body) != through_unit


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 5, 3), (37, 19, 33)])
def test_cross_attention_views(attention, index, shape):
    t, s, d = shape
    q, k, v = rand(t, d), rand(s, d), rand(s, d + 2)
    got = attention.cross_attention(*(views(a)[index] for a in (q, k, v)))
    close(got, ref_cross(q, k, v))


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("t, d", [(1, 1), (6, 3), (45, 17)])
def test_causal_attention_views(attention, index, t, d):
    q, k, v = rand(t, d), rand(t, d), rand(t, d)
    close(attention.causal_attention(*(views(a)[index] for a in (q, k, v))), ref_causal(q, k, v))


def test_mixed_views_and_strided_output(attention, distance):
    """Only one argument strided, and a strided output (written in place, nothing else)."""
    q, k, v = rand(29, 8), rand(29, 8), rand(29, 8)
    close(attention.causal_attention(q, k.T.copy().T, v), ref_causal(q, k, v))
    big = np.full((29, 16), 5.0, np.float32)
    out = big[:, ::2]
    attention.causal_attention(q, k, v, o=out)
    close(out, ref_causal(q, k, v))
    assert (big[:, 1::2] == 5.0).all()
    x, z = rand(13, 40), rand(21, 40)
    c = np.zeros((21, 13), np.float32).T
    distance.cosine_similarity(x, strided(z), c=c)
    close(c, ref_cosine(x, z))


@pytest.mark.parametrize("index", range(4))
def test_cosine_views(distance, index):
    x, z = rand(33, 70), rand(18, 70)
    close(distance.cosine_similarity(views(x)[index], views(z)[index]), ref_cosine(x, z))


def test_scalar_argument_and_two_outputs(extra):
    """A rank-0 argument passes through unchanged; both outputs are copied back."""
    body = _any_body(EXTRA, "scaled_mm")
    a, b = rand(23, 31), rand(31, 9)
    want = a.astype(np.float64) @ b.astype(np.float64) * 0.5
    for index in range(4):
        c, r = extra.scaled_mm(views(a)[index], views(b)[index], np.float32(0.5))
        close(c, want)
        close(r, want.sum(axis=1))
    assert "call @tdsl_k_scaled_mm_unit(" in body or "linalg.generic" in body

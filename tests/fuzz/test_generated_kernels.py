"""Randomly generated well-formed kernels (element-wise, reductions, broadcasts, affine
subscripts) agree with a direct numpy evaluation of the same expression, on every target."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tdsl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from guarded import guarded_copy  # noqa: E402

TARGETS = os.environ.get("TDSL_TEST_TARGETS", "reference,cpu").split(",")
HEADER = ("kernel k(A: f64[M, N], B: f64[M, N], v: f64[N], w: f64[M], s: f64) "
          "-> (y: f64[M, N]) {\n")


@dataclass(frozen=True)
class Gen:
    """An expression as tdsl text (index form over i, j) and as numpy text over 2-D grids."""

    tdsl: str
    numpy: str


LEAVES = [
    Gen("A[i, j]", "A"), Gen("B[i, j]", "B"), Gen("v[j]", "v[None, :]"), Gen("w[i]", "w[:, None]"),
    Gen("s", "s"), Gen("A[M - 1 - i, j]", "A[::-1, :]"), Gen("B[i, N - 1 - j]", "B[:, ::-1]"),
    Gen("f64(i)", "I"), Gen("f64(j + 1)", "(J + 1.0)"), Gen("f64(N)", "float(N)"),
    Gen("sum[k](A[i, k])", "A.sum(1)[:, None]"), Gen("max[k](B[k, j])", "B.max(0)[None, :]"),
    Gen("mean[k](v[k] * A[i, k])", "(v[None, :] * A).mean(1)[:, None]"),
    Gen("min[k, l](A[k, l])", "A.min()"),
    Gen("sum[k](select(k <= j, v[k], 0.0))", "np.cumsum(v)[None, :]"),
]


def _unary(x: Gen, op: str) -> Gen:
    table = {
        "neg": Gen(f"-({x.tdsl})", f"-({x.numpy})"),
        "abs": Gen(f"abs({x.tdsl})", f"np.abs({x.numpy})"),
        "tanh": Gen(f"tanh({x.tdsl})", f"np.tanh({x.numpy})"),
        "sig": Gen(f"sigmoid({x.tdsl})", f"(1 / (1 + np.exp(-({x.numpy}))))"),
        "relu": Gen(f"relu({x.tdsl})", f"np.maximum({x.numpy}, 0.0)"),
        "expn": Gen(f"exp(-abs({x.tdsl}))", f"np.exp(-np.abs({x.numpy}))"),
        "sqrt": Gen(f"sqrt(abs({x.tdsl}))", f"np.sqrt(np.abs({x.numpy}))"),
    }
    return table[op]


def _binary(a: Gen, b: Gen, op: str) -> Gen:
    table = {
        "add": Gen(f"({a.tdsl}) + ({b.tdsl})", f"({a.numpy}) + ({b.numpy})"),
        "sub": Gen(f"({a.tdsl}) - ({b.tdsl})", f"({a.numpy}) - ({b.numpy})"),
        "mul": Gen(f"({a.tdsl}) * ({b.tdsl})", f"({a.numpy}) * ({b.numpy})"),
        "div": Gen(f"({a.tdsl}) / (1.0 + abs({b.tdsl}))",
                   f"({a.numpy}) / (1.0 + np.abs({b.numpy}))"),
        "max": Gen(f"max({a.tdsl}, {b.tdsl})", f"np.maximum({a.numpy}, {b.numpy})"),
        "min": Gen(f"min({a.tdsl}, {b.tdsl})", f"np.minimum({a.numpy}, {b.numpy})"),
        "sel": Gen(f"select({a.tdsl} < {b.tdsl}, {a.tdsl}, 2.0 * ({b.tdsl}))",
                   f"np.where(({a.numpy}) < ({b.numpy}), {a.numpy}, 2.0 * ({b.numpy}))"),
    }
    return table[op]


def expressions(depth: int) -> st.SearchStrategy[Gen]:
    """Random expressions up to `depth` operators deep."""
    leaves = st.sampled_from(LEAVES) | st.floats(0.25, 4.0).map(
        lambda f: Gen(repr(round(f, 3)), repr(round(f, 3))))
    if depth == 0:
        return leaves
    sub = expressions(depth - 1)
    unary = st.builds(_unary, sub, st.sampled_from(["neg", "abs", "tanh", "sig", "relu",
                                                    "expn", "sqrt"]))
    binary = st.builds(_binary, sub, sub, st.sampled_from(["add", "sub", "mul", "div", "max",
                                                           "min", "sel"]))
    return leaves | unary | binary


def evaluate(expr: Gen, A, B, v, w, s) -> np.ndarray:
    """The numpy value of a generated expression, broadcast to y's shape."""
    M, N = A.shape
    rows, cols = np.meshgrid(np.arange(M, dtype=np.float64), np.arange(N, dtype=np.float64),
                             indexing="ij")
    env = {"np": np, "A": A, "B": B, "v": v, "w": w, "s": s, "I": rows, "J": cols, "M": M,
           "N": N}
    with np.errstate(all="ignore"):
        return np.broadcast_to(eval(expr.numpy, env), (M, N))  # noqa: S307 - test-built text


@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr=expressions(3), m=st.integers(1, 6), n=st.integers(1, 7), seed=st.integers(0, 99))
def test_index_form_matches_numpy(target: str, expr: Gen, m: int, n: int, seed: int) -> None:
    if target == "cpu":
        pytest.importorskip("tdsl.runtime.cpu")
    rng = np.random.default_rng(seed)
    A, B = rng.uniform(-2, 2, (m, n)), rng.uniform(-2, 2, (m, n))
    v, w, s = rng.uniform(-2, 2, n), rng.uniform(-2, 2, m), float(rng.uniform(0.5, 2))
    source = HEADER + f"    y[i, j] = {expr.tdsl}\n}}\n"
    args = [guarded_copy(a, "end" if seed % 2 else "start") for a in (A, B, v, w)]
    got = tdsl.loads(source, target=target).k(*args, s)
    np.testing.assert_allclose(got, evaluate(expr, A, B, v, w, s), rtol=1e-9, atol=1e-12,
                               err_msg=source)


WHOLE = ["A + B", "A * v", "w2 * A - v", "relu(A - s) + B", "max(A, v) * 2.0",
         "select(A > B, A, v)", "tanh(A) * sigmoid(w2)", "abs(A - B) / (1.0 + abs(v))"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("text", WHOLE)
def test_whole_tensor_broadcasting(target: str, text: str) -> None:
    if target == "cpu":
        pytest.importorskip("tdsl.runtime.cpu")
    rng = np.random.default_rng(7)
    A, B, v = rng.uniform(-2, 2, (5, 3)), rng.uniform(-2, 2, (5, 3)), rng.uniform(-2, 2, 3)
    w2, s = rng.uniform(-2, 2, (5, 1)), 0.5
    source = ("kernel k(A: f64[M, N], B: f64[M, N], v: f64[N], w2: f64[M, 1], s: f64) "
              f"-> (y: f64[M, N]) {{\n    y = {text}\n}}\n")
    got = tdsl.loads(source, target=target).k(A, B, v, w2, s)
    env = {"A": A, "B": B, "v": v, "w2": w2, "s": s, "relu": lambda x: np.maximum(x, 0),
           "max": np.maximum, "select": np.where, "tanh": np.tanh, "abs": np.abs,
           "sigmoid": lambda x: 1 / (1 + np.exp(-x))}
    want = np.broadcast_to(eval(text, env), (5, 3))  # noqa: S307 - test-built text
    np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=source)

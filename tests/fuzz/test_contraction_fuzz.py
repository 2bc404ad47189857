"""Fuzzing of the contraction schedules (tdsl.schedules: packed products, register tiles of
products inside larger kernels, fused epilogues) against the reference interpreter.

The whole-language fuzzer (test_differential.py) rarely draws a statement that is exactly a
product `sum[l](a[i, l] * b[l, j])`, which is what the schedules match. Here each example is a
kernel built from such a product with a random batch dimension, operand layouts (`A` or `A^T`,
`B` or `B^T`), what follows it (nothing: the product is the output; a copy; an element-wise
epilogue; or attention's softmax and a second product), dtype (f16 and bf16 too), sizes around
the 6 x 16 register tile and the 256-wide cache blocks, and the inputs laid out as the
whole-language fuzzer lays them out (`gen.LAYOUTS`: strided, reversed, Fortran-ordered,
byte-swapped, against guard pages). The normal suite runs a short, fixed budget;
TDSL_CONTRACTION_EXAMPLES runs more, drawn afresh.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tdsl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen  # noqa: E402 - the whole-language fuzzer's argument layouts

EXAMPLES = int(os.environ.get("TDSL_CONTRACTION_EXAMPLES", "12"))
SIZES = [1, 2, 5, 6, 7, 16, 17, 33, 100, 257]
TOL = {"f32": 3e-4, "f64": 1e-10, "f16": 3e-2, "bf16": 1e-1}
NP = {"f32": np.float32, "f64": np.float64, "f16": np.float16,
      "bf16": np.dtype(ml_dtypes.bfloat16)}

# What follows the product `p` (`{i}`, `{j}`: the output's row and column subscripts, with the
# batch index in front when there is one).
FOLLOWERS = {
    "only": "",  # the product is the output itself
    "none": "y[{out}] = p[{out}]",
    "bias_relu": "y[{out}] = relu(p[{out}] + c[{j}])",
    "scale": "y[{out}] = {t}(0.5) * p[{out}] + c[{j}] * p[{out}]",
    "divide": "y[{out}] = p[{out}] / ({t}(1.0) + abs(c[{j}]))",
    "attention": ("m[{rows}] = max[t](p[{rows}, t])\n"
                  "    q[{out}] = exp(p[{out}] - m[{rows}])\n"
                  "    y[{rows}, e] = sum[j](q[{out}] * v[{vrows}]) / sum[j](q[{out}])"),
}


@st.composite
def products(draw):
    """(source, argument shapes, kernel's dtype) of one product kernel."""
    t = draw(st.sampled_from(["f32", "f64", "f32", "f64", "f16", "bf16"]))
    batched = draw(st.booleans())
    a_t, b_t = draw(st.booleans()), draw(st.booleans())
    follower = draw(st.sampled_from(sorted(FOLLOWERS)))
    size = {s: draw(st.sampled_from(SIZES)) for s in "MNLE"}
    size["H"] = draw(st.sampled_from([1, 2, 3])) if batched else 1
    if follower == "attention":  # the second product's k is the first one's n
        size["N"] = min(size["N"], 100)
    h = "h, " if batched else ""
    hd = "H, " if batched else ""
    a_idx, a_dims = ("l, i", "L, M") if a_t else ("i, l", "M, L")
    b_idx, b_dims = ("j, l", "N, L") if b_t else ("l, j", "L, N")
    out = f"{h}i, j"
    body = FOLLOWERS[follower].format(out=out, j=f"{h}j" if batched else "j", t=t,
                                      rows=f"{h}i", vrows=f"{h}j, e")
    out_dims = f"{hd}M, E" if follower == "attention" else f"{hd}M, N"
    params = [f"a: {t}[{hd}{a_dims}]", f"b: {t}[{hd}{b_dims}]"]
    shapes = [(size["H"],) * batched + _dims(a_dims, size),
              (size["H"],) * batched + _dims(b_dims, size)]
    if follower in ("bias_relu", "scale", "divide"):
        params.append(f"c: {t}[{hd}N]")
        shapes.append((size["H"],) * batched + (size["N"],))
    if follower == "attention":
        params.append(f"v: {t}[{hd}N, E]")
        shapes.append((size["H"],) * batched + (size["N"], size["E"]))
    product = f"sum[l](a[{h}{a_idx}] * b[{h}{b_idx}])"
    lines = [f"y[{out}] = {product}"] if follower == "only" else [f"p[{out}] = {product}", body]
    source = (f"kernel k({', '.join(params)}) -> (y: {t}[{out_dims}]) {{\n    "
              + "\n    ".join(lines) + "\n}\n")
    return source, shapes, t


def _dims(text: str, size: dict[str, int]) -> tuple[int, ...]:
    return tuple(size[d.strip()] for d in text.split(","))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          derandomize="TDSL_CONTRACTION_EXAMPLES" not in os.environ,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=products(), seed=st.integers(0, 2**32 - 1),
       layout=st.integers(0, len(gen.LAYOUTS) - 1))
def test_product_kernels_match_the_reference(case, seed, layout):
    source, shapes, t = case
    rng = np.random.default_rng(seed)
    args = [rng.uniform(-2.0, 2.0, s).astype(NP[t]) for s in shapes]
    want = np.asarray(tdsl.loads(source, target="reference").k(*args), dtype=np.float64)
    cpu = tdsl.loads(source, target="cpu").k
    name, place = gen.LAYOUTS[layout]
    got = np.asarray(cpu(*[place(a) for a in args]), dtype=np.float64)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=TOL[t], atol=TOL[t] * scale,
                               err_msg=f"{source}\nshapes {shapes}, seed {seed}, layout {name}")

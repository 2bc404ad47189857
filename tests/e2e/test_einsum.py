"""numpy's einsum subscripts, written as tdsl kernels, agree with np.einsum on every target."""

from __future__ import annotations

import os

import numpy as np
import pytest

import tdsl

SUBSCRIPTS = [
    "ij->ji", "ij->", "ij->i", "ij->j", "ii->", "ii->i", "i,i->", "i,j->ij", "ij,j->i",
    "ij,jk->ik", "ij,kj->ik", "ji,jk->ik", "bij,bjk->bik", "bij,jk->bik", "ijk->kji",
    "ik,kl,lj->ij", "i,ij,j->", "ijk,ik->j", "abc,cd->abd", "ij,ij->ij", "ij,ij->",
    "bhqd,bhkd->bhqk", "i->i", "ijkl->lkji",
]
SIZES = {c: 2 + (ord(c) * 7) % 6 for c in "abcdefghijklmnopqrstuvwxyz"}
TARGETS = os.environ.get("TDSL_TEST_TARGETS", "reference,cpu").split(",")


def kernel_source(spec: str) -> str:
    """The tdsl kernel computing `np.einsum(spec, ...)` in f64."""
    inputs, out = spec.split("->")
    params = []
    factors = []
    for n, operand in enumerate(inputs.split(",")):
        dims = ", ".join(c.upper() for c in operand)
        params.append(f"a{n}: f64[{dims}]")
        factors.append(f"a{n}[{', '.join(operand)}]")
    reduced = sorted(set(inputs.replace(",", "")) - set(out))
    body = " * ".join(factors)
    if reduced:
        body = f"sum[{', '.join(reduced)}]({body})"
    out_type = f"f64[{', '.join(c.upper() for c in out)}]" if out else "f64"
    lhs = f"y[{', '.join(out)}]" if out else "y"
    return (f"kernel k({', '.join(params)}) -> (y: {out_type}) {{\n"
            f"    {lhs} = {body}\n}}\n")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("spec", SUBSCRIPTS)
def test_einsum(spec: str, target: str) -> None:
    if target == "cpu":
        pytest.importorskip("tdsl.runtime.cpu")
    rng = np.random.default_rng(abs(hash(spec)) % 2**32)
    operands = [rng.uniform(0.5, 1.5, [SIZES[c] for c in op])
                for op in spec.split("->")[0].split(",")]
    mod = tdsl.loads(kernel_source(spec), target=target, filename=f"einsum_{spec}.tdsl")
    got = mod.k(*operands)
    np.testing.assert_allclose(got, np.einsum(spec, *operands), rtol=1e-12, atol=1e-12)

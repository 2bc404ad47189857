"""Unit tests of the checked-kernel -> MLIR translation (tdsl.to_mlir) on hand-built kernels.

Every kernel's text must parse and verify with the MLIR bindings; the tests then look at the
structure of the emitted IR: indexing maps, the tensor.extract path, dummy operands,
hoisted reductions, storage types and the calling convention.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

import handbuilt_kernels as hk  # noqa: E402

from tdsl.check import check_source  # noqa: E402
from tdsl.checked import Read, Reduce  # noqa: E402
from tdsl.to_mlir import (  # noqa: E402
    affine_expr,
    func_symbol,
    hoist_reductions,
    kernel_to_mlir,
    memref_type,
)
from tdsl.to_mlir_ops import float_literal, int_literal  # noqa: E402
from tdsl.types import Affine, DType, TensorType  # noqa: E402

BUILDERS = [hk.saxpy, hk.softmax, hk.matmul, hk.conv1d, hk.reverse, hk.causal_mask,
            hk.int_divmod, hk.total_sum, hk.row_stats, hk.symbol_scale, hk.float_unary,
            hk.float_binary, hk.int_ops, hk.bool_ops, hk.pairwise, hk.upsample,
            hk.decimate_sum, hk.copy, hk.nested_reduction]


def verified(text: str):
    """Parse and verify MLIR text in the process-wide context."""
    from mlir import ir

    from tdsl.pipelines import mlir_context

    with mlir_context():
        module = ir.Module.parse(text)
        assert module.operation.verify()
        return module


@pytest.mark.parametrize("builder", BUILDERS, ids=[b.__name__ for b in BUILDERS])
def test_every_kernel_parses_and_verifies(builder):
    verified(kernel_to_mlir(builder()))


@pytest.mark.parametrize("dtype", [DType.F16, DType.BF16, DType.F64])
def test_other_float_dtypes_verify(dtype):
    verified(kernel_to_mlir(hk.softmax(dtype)))
    verified(kernel_to_mlir(hk.reductions(dtype)))


@pytest.mark.parametrize("dtype", [DType.I8, DType.I16, DType.I64, DType.U8])
def test_integer_dtypes_verify(dtype):
    verified(kernel_to_mlir(hk.int_ops(dtype)))
    verified(kernel_to_mlir(hk.reductions(dtype)))


def test_calling_convention():
    text = kernel_to_mlir(hk.saxpy())
    header = text.splitlines()[1]
    assert f"func.func @{func_symbol('saxpy')}(" in header
    assert header.count("memref<") == 4
    assert "memref<f32, strided<[], offset: ?>>" in header  # the scalar a
    assert header.count("memref<?xf32, strided<[?], offset: ?>>") == 3
    assert text.count("bufferization.to_tensor") == 4
    assert text.count("restrict writable") == 2  # the output's to_tensor and materialize
    assert "bufferization.materialize_in_destination" in text


def test_memref_types():
    assert memref_type(TensorType(DType.F32, ())) == "memref<f32, strided<[], offset: ?>>"
    two = TensorType(DType.BOOL, (Affine.of("M"), Affine.of(3)))
    assert memref_type(two) == "memref<?x?xi8, strided<[?, ?], offset: ?>>"


def test_affine_expressions():
    names = {"i": "d0", "r": "d1", "N": "s0"}
    assert affine_expr(Affine.of("i") + Affine.of("r"), names) == "d0 + d1"
    assert affine_expr(Affine.of("N") - 1 - Affine.of("i"), names) == "s0 + (d0) * -1 + -1"
    assert affine_expr((Affine.of("i") + 1).floordiv(2), names) == "(d0 + 1) floordiv 2"
    assert affine_expr(Affine.of(0), names) == "0"


def test_literals_are_exact():
    assert float_literal(float("-inf"), DType.F32) == "0xFF800000"
    assert float_literal(-0.0, DType.F64) == "0x8000000000000000"
    assert float_literal(1.0, DType.BF16) == "0x3F80"
    assert float_literal(65504.0, DType.F16) == "0x7BFF"
    assert int_literal(255, DType.U8) == -1
    assert int_literal(-1, DType.I32) == -1


def test_shifted_read_is_an_indexing_map_and_reduction_iterator():
    text = kernel_to_mlir(hk.conv1d())
    assert "affine_map<(d0, d1) -> (d1 + d0)>" in text
    # the window index outside: the loop over i, along x and y, vectorizes
    assert 'iterator_types = ["reduction", "parallel"]' in text
    assert "tensor.extract" not in text


def test_symbol_subscript_goes_through_extract():
    text = kernel_to_mlir(hk.reverse())
    assert "linalg.index 0" in text
    assert re.search(r"affine.apply affine_map<\(d0\)\[s0\] -> .*s0.*>", text)
    assert "tensor.extract" in text


def test_operand_larger_than_the_loop_is_read_through_extract():
    # x: f32[N] indexed by i over N - 1: as an operand, linalg would run i over N.
    text = kernel_to_mlir(hk.pairwise())
    assert "affine_map<(d0) -> (d0 + 1)>" in text
    assert "tensor.extract" in text


def test_reduction_without_a_bare_operand_gets_a_dummy():
    text = kernel_to_mlir(hk.decimate_sum())
    assert "floordiv 2" in text
    assert re.search(r"tensor.empty\(%\w+\) : tensor<\?xi8>", text)
    assert "affine_map<(d0) -> ((d0) * 2)>" in text


def test_pure_copy_is_not_an_identity_generic():
    text = kernel_to_mlir(hk.copy())
    assert "tensor.extract" in text


def test_nested_reductions_are_hoisted_over_their_free_indices():
    statements, extra, guards, _ = hoist_reductions(hk.row_stats())
    assert [s.target for s in statements][-1] == "c"
    assert len(extra) == 2  # max and mean of the expression of c
    for loc in extra:
        assert loc.type.shape == (Affine.of("B"),)
    last = statements[-1].expr
    assert isinstance(last.a, Read) and last.a.subscripts == (Affine.of("b"),)
    for st in statements:
        if isinstance(st.expr, Reduce):
            assert "Reduce" not in repr(st.expr.body)
    assert not guards  # the locals keep every index of c


def test_hoisted_reduction_is_guarded_by_the_indices_it_drops():
    """y[i, j] = z[j] + max[k](x[i, k]): the max is computed over i only; where N is 0 the
    statement computes nothing and neither may the max (its reads are proven for a non-empty
    y only)."""
    from tdsl.check import check_source

    program = check_source("kernel k(x: f32[M, K], z: f32[N]) -> (y: f32[M, N]) {\n"
                           "    y[i, j] = z[j] + max[k](x[i, k])\n}\n", "g.tdsl")
    statements, extra, guards, _ = hoist_reductions(program.kernel("k"))
    assert [loc.type.shape for loc in extra] == [(Affine.of("M"),)]
    assert guards == {extra[0].name: (Affine.of("N"),)}
    text = kernel_to_mlir(program.kernel("k"))
    assert "arith.select" in text.split("linalg.generic")[0]  # the guarded tensor.empty size
    verified(text)


def test_reduction_inside_a_reduction():
    statements, extra, guards, _ = hoist_reductions(hk.nested_reduction())
    assert len(extra) == 1 and extra[0].type.shape == (Affine.of("M"),)
    assert statements[0].indices == ("i",)  # the inner max over j, per i
    verified(kernel_to_mlir(hk.nested_reduction()))


def test_half_precision_computes_in_f32():
    text = kernel_to_mlir(hk.saxpy(DType.F16))
    assert "arith.extf" in text and "arith.truncf" in text and "f32" in text
    red = kernel_to_mlir(hk.total_sum(DType.F16))
    assert "tensor<f32>" in red  # the f32 accumulator
    bf = kernel_to_mlir(hk.saxpy(DType.BF16))
    assert "arith.extf" not in bf  # bf16 conversions are integer ops (no libcalls)
    assert "arith.bitcast" in bf


def test_bool_tensors_are_stored_as_i8():
    text = kernel_to_mlir(hk.bool_ops())
    assert "xi1" not in text
    assert "arith.extui" in text  # i1 -> i8 on store
    assert "arith.cmpi ne" in text  # i8 -> i1 on load


def test_integer_division_never_traps():
    text = kernel_to_mlir(hk.int_divmod())
    assert "floordivsi" not in text
    assert text.count("arith.select") >= 4
    for line in text.splitlines():
        m = re.search(r"arith\.(divsi|remsi) %\w+, (%\w+)", line)
        if m:  # the divisor is always a select'ed safe value
            assert re.search(rf"{m.group(2)} = arith.select", text)


def test_float_to_int_casts_saturate():
    text = kernel_to_mlir(hk.casts(DType.F32, (DType.I32,)))
    assert "arith.fptosi" in text
    assert "arith.cmpf uno" in text  # nan -> 0
    assert text.count("arith.select") >= 3


def test_loop_order_puts_the_contiguous_loop_innermost():
    from tdsl.to_mlir_generic import loop_order

    mm = hk.matmul().statements[0].expr
    assert loop_order(("m", "n"), ("k",), mm) == ["m", "k", "n"]
    sm = hk.softmax().statements[0].expr  # max over the row: the reduction stays inside
    assert loop_order(("b",), ("n",), sm) == ["b", "n"]
    # x[i + r] walks along i and along the (short) window r: i, so the loop vectorizes
    conv = hk.conv1d().statements[0].expr
    assert loop_order(("i",), ("r",), conv) == ["r", "i"]
    conv2d = check_source(
        "kernel conv(x: f32[N, C, H, W], w: f32[F, C, R, S])\n"
        "        -> (out: f32[N, F, H - R + 1, W - S + 1]) {\n"
        "    out[n, f, i, j] = sum[c, r, s](x[n, c, i + r, j + s] * w[f, c, r, s])\n}\n",
        "<conv>").kernels[0].statements[0].expr
    assert loop_order(("n", "f", "i", "j"), ("c", "r", "s"), conv2d) == \
        ["n", "f", "i", "c", "r", "s", "j"]
    text = kernel_to_mlir(hk.matmul())
    assert 'iterator_types = ["parallel", "reduction", "parallel"]' in text
    assert "affine_map<(d0, d1, d2) -> (d0, d2)>" in text  # C[m, n] with k in the middle


def test_a_local_with_offset_reads_is_emptied_with_an_enclosing_reduction():
    """Fuzz corpus 024: `wm[3]` is in bounds only when `p: L / 2` is not empty; the hoisted
    local's own reduction domain is guarded by it (tensor.extract reads, a guarded dummy)."""
    from tdsl.check import check_source

    source = """
    kernel k(x0: f32[], wl: f32[L], wm: bool[M]) -> (y: f32[1]) {
        y[i] = sum[p: L / 2](sum[q: 1](f32(wm[3])) + x0)
    }
    """
    program = check_source(source, "<test>")
    _, _, _, domain_guards = hoist_reductions(program.kernel("k"))
    assert len(domain_guards) == 1


def test_signed_zero_constants_stay_apart():
    """-0.0 and 0.0 are equal in Python; as memoized subexpressions they must stay two
    constants (fuzz corpus 030: `-0.0 + 0.0` became `-0.0 + -0.0`)."""
    from tdsl.check import check_source
    from tdsl.to_mlir import kernel_to_mlir

    source = "kernel k(x: f32[N]) -> (y: f32[N]) { y[i] = x[i] / (f32(-0.0) + f32(0.0)) }"
    text = kernel_to_mlir(check_source(source, "<zeros>").kernels[0])
    assert "arith.constant 0x80000000 : f32" in text
    assert "arith.constant 0x00000000 : f32" in text

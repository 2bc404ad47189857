"""Checked kernels built by hand (no parser needed), shared by the CPU backend's tests.

Each builder returns a `tdsl.checked.Kernel` in the normalized form the checker produces:
index-form statements, typed expressions, affine subscripts and a signature whose symbols are
bound by the inputs' dimensions.
"""

from __future__ import annotations

from tdsl.checked import (
    Binary,
    Cast,
    Const,
    Expr,
    IndexVar,
    Kernel,
    Local,
    Read,
    Reduce,
    Select,
    Statement,
    SymbolVal,
    Unary,
)
from tdsl.runtime.signature import Param, Signature, SymbolSource
from tdsl.types import Affine, DType, TensorType

F16, BF16, F32, F64 = DType.F16, DType.BF16, DType.F32, DType.F64
I8, I32, I64, U8, BOOL = DType.I8, DType.I32, DType.I64, DType.U8, DType.BOOL


def A(x: int | str | Affine) -> Affine:
    """An affine form."""
    return Affine.of(x)


def T(dtype: DType, *dims: int | str | Affine, scalar: bool = False) -> TensorType:
    """A tensor type."""
    return TensorType(dtype, tuple(A(d) for d in dims), scalar)


def rd(tensor: str, *subs: int | str | Affine, dtype: DType = F32) -> Read:
    """A read `tensor[subs]`."""
    return Read(tensor, tuple(A(s) for s in subs), dtype)


def bin_(op: str, a: Expr, b: Expr) -> Binary:
    """A binary node; comparisons give bool."""
    cmp = op in ("lt", "le", "gt", "ge", "eq", "ne")
    return Binary(op, a, b, DType.BOOL if cmp else a.dtype)


def c(value: bool | int | float, dtype: DType = F32) -> Const:
    """A constant."""
    return Const(value, dtype)


def kernel(name: str, inputs: list[tuple[str, TensorType]],
           outputs: list[tuple[str, TensorType]], statements: list[Statement],
           locals_: list[tuple[str, TensorType]] = ()) -> Kernel:
    """A kernel whose symbols are bound by every input dimension that is a bare symbol."""
    symbols = []
    for p, (_, t) in enumerate(inputs):
        for d, dim in enumerate(t.shape):
            name_ = dim.as_name()
            if name_ is not None:
                symbols.append(SymbolSource(name_, p, d))
    sig = Signature(name, tuple(Param(n, t) for n, t in inputs),
                    tuple(Param(n, t) for n, t in outputs), tuple(symbols))
    return Kernel(sig, tuple(Local(n, t) for n, t in locals_), tuple(statements))


def st(target: str, indices: str, extents: tuple, expr: Expr) -> Statement:
    """A statement `target[indices] = expr` (indices given as a space-separated string)."""
    names = tuple(indices.split())
    return Statement(target, names, tuple(A(e) for e in extents), expr)


# ---- the kernels ---------------------------------------------------------------------------


def saxpy(dtype: DType = F32) -> Kernel:
    """z = a * x + y (whole-tensor form, normalized)."""
    a = rd("a", dtype=dtype)
    e = bin_("add", bin_("mul", a, rd("x", "i0", dtype=dtype)), rd("y", "i0", dtype=dtype))
    return kernel("saxpy", [("a", T(dtype, scalar=True)), ("x", T(dtype, "N")),
                            ("y", T(dtype, "N"))], [("z", T(dtype, "N"))],
                  [st("z", "i0", ("N",), e)])


def softmax(dtype: DType = F32) -> Kernel:
    """Row-wise softmax with locals m, e, s."""
    x = rd("x", "b", "n", dtype=dtype)
    return kernel(
        "softmax", [("x", T(dtype, "B", "N"))], [("y", T(dtype, "B", "N"))], [
            st("m", "b", ("B",), Reduce("max", ("n",), (A("N"),), x, dtype)),
            st("e", "b n", ("B", "N"),
               Unary("exp", bin_("sub", x, rd("m", "b", dtype=dtype)), dtype)),
            st("s", "b", ("B",), Reduce("sum", ("n",), (A("N"),), rd("e", "b", "n", dtype=dtype),
                                        dtype)),
            st("y", "b n", ("B", "N"),
               bin_("div", rd("e", "b", "n", dtype=dtype), rd("s", "b", dtype=dtype))),
        ], [("m", T(dtype, "B")), ("e", T(dtype, "B", "N")), ("s", T(dtype, "B"))])


def matmul(dtype: DType = F32) -> Kernel:
    """C[m, n] = sum[k](A[m, k] * B[k, n])."""
    body = bin_("mul", rd("A", "m", "k", dtype=dtype), rd("B", "k", "n", dtype=dtype))
    return kernel("matmul", [("A", T(dtype, "M", "K")), ("B", T(dtype, "K", "N"))],
                  [("C", T(dtype, "M", "N"))],
                  [st("C", "m n", ("M", "N"), Reduce("sum", ("k",), (A("K"),), body, dtype))])


def conv1d() -> Kernel:
    """out[i] = sum[r](x[i + r] * w[r]), out: f32[N - R + 1]."""
    n_out = A("N") - A("R") + 1
    body = bin_("mul", rd("x", A("i") + A("r")), rd("w", "r"))
    return kernel("conv1d", [("x", T(F32, "N")), ("w", T(F32, "R"))], [("out", T(F32, n_out))],
                  [st("out", "i", (n_out,), Reduce("sum", ("r",), (A("R"),), body, F32))])


def reverse() -> Kernel:
    """y[i] = x[N - 1 - i] * 2 + f32(i)."""
    e = bin_("add", bin_("mul", rd("x", A("N") - 1 - A("i")), c(2.0)),
             Cast(IndexVar("i"), F32))
    return kernel("reverse", [("x", T(F32, "N"))], [("y", T(F32, "N"))],
                  [st("y", "i", ("N",), e)])


def causal_mask() -> Kernel:
    """y[i, j] = select(j <= i, s[i, j], -inf)."""
    cond = bin_("le", IndexVar("j"), IndexVar("i"))
    e = Select(cond, rd("s", "i", "j"), c(float("-inf")), F32)
    return kernel("causal", [("s", T(F32, "N", "N"))], [("y", T(F32, "N", "N"))],
                  [st("y", "i j", ("N", "N"), e)])


def int_divmod(dtype: DType = I32) -> Kernel:
    """q = a / b (floor), r = a % b (sign of divisor): two outputs."""
    a, b = rd("a", "i", dtype=dtype), rd("b", "i", dtype=dtype)
    return kernel("divmod", [("a", T(dtype, "N")), ("b", T(dtype, "N"))],
                  [("q", T(dtype, "N")), ("r", T(dtype, "N"))],
                  [st("q", "i", ("N",), bin_("div", a, b)), st("r", "i", ("N",), bin_("mod", a, b))])


def total_sum(dtype: DType = F32) -> Kernel:
    """s = sum[i, j](x[i, j]) into a rank-0 output."""
    return kernel("total", [("x", T(dtype, "M", "N"))], [("s", T(dtype))],
                  [st("s", "", (), Reduce("sum", ("i", "j"), (A("M"), A("N")),
                                          rd("x", "i", "j", dtype=dtype), dtype))])


def row_stats() -> Kernel:
    """Two outputs: mean and max of each row, and a nested reduction in an expression:
    c[b] = max[n](x[b, n]) - mean[n](x[b, n])."""
    x = rd("x", "b", "n")
    mean = Reduce("mean", ("n",), (A("N"),), x, F32)
    mx = Reduce("max", ("n",), (A("N"),), x, F32)
    return kernel("row_stats", [("x", T(F32, "B", "N"))],
                  [("mu", T(F32, "B")), ("c", T(F32, "B"))],
                  [st("mu", "b", ("B",), mean), st("c", "b", ("B",), bin_("sub", mx, mean))])


def symbol_scale() -> Kernel:
    """y[i] = x[i] * f32(N - i): a shape symbol and an index variable as values."""
    e = bin_("mul", rd("x", "i"), Cast(bin_("sub", SymbolVal(A("N")), IndexVar("i")), F32))
    return kernel("symscale", [("x", T(F32, "N"))], [("y", T(F32, "N"))],
                  [st("y", "i", ("N",), e)])


FLOAT_UNARY = ("neg", "abs", "relu", "exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh",
               "sigmoid", "erf", "floor", "ceil")
FLOAT_BINARY = ("add", "sub", "mul", "div", "mod", "pow", "min", "max")
COMPARISONS = ("lt", "le", "gt", "ge", "eq", "ne")


def many_outputs(name: str, inputs: list[tuple[str, TensorType]],
                 exprs: dict[str, Expr]) -> Kernel:
    """One kernel computing y_<key>[i] = expr for every entry (one compile for many ops)."""
    outs = [(f"y_{k}", T(e.dtype, "N")) for k, e in exprs.items()]
    stmts = [st(f"y_{k}", "i", ("N",), e) for k, e in exprs.items()]
    return kernel(name, inputs, outs, stmts)


def float_unary(dtype: DType = F32) -> Kernel:
    """Every float unary builtin of x, one output each."""
    x = rd("x", "i", dtype=dtype)
    return many_outputs("funary", [("x", T(dtype, "N"))],
                        {op: Unary(op, x, dtype) for op in FLOAT_UNARY})


def float_binary(dtype: DType = F32) -> Kernel:
    """Every float binary op and comparison of a and b, one output each."""
    a, b = rd("a", "i", dtype=dtype), rd("b", "i", dtype=dtype)
    exprs = {op: bin_(op, a, b) for op in FLOAT_BINARY + COMPARISONS}
    return many_outputs("fbinary", [("a", T(dtype, "N")), ("b", T(dtype, "N"))], exprs)


def int_ops(dtype: DType = I32) -> Kernel:
    """Integer unary and binary ops (pow included) of a and b, one output each."""
    a, b = rd("a", "i", dtype=dtype), rd("b", "i", dtype=dtype)
    exprs: dict[str, Expr] = {op: bin_(op, a, b) for op in
                              ("add", "sub", "mul", "div", "mod", "pow", "min", "max")
                              + COMPARISONS}
    exprs.update({f"u_{op}": Unary(op, a, dtype) for op in ("neg", "abs", "relu")})
    return many_outputs("intops", [("a", T(dtype, "N")), ("b", T(dtype, "N"))], exprs)


def casts(src: DType, dsts: tuple[DType, ...]) -> Kernel:
    """x cast to each of dsts, one output each."""
    x = rd("x", "i", dtype=src)
    return many_outputs("casts", [("x", T(src, "N"))], {d.value: Cast(x, d) for d in dsts})


def bool_ops() -> Kernel:
    """Logic on bool inputs and a bool-reducing any/all (max/min over a row)."""
    p, q = rd("p", "i", dtype=BOOL), rd("q", "i", dtype=BOOL)
    row = rd("m", "i", "j", dtype=BOOL)
    exprs = {"and": bin_("and", p, q), "or": bin_("or", p, q), "not": Unary("not", p, BOOL),
             "eq": bin_("eq", p, q), "ne": bin_("ne", p, q),
             "any": Reduce("max", ("j",), (A("M"),), row, BOOL),
             "all": Reduce("min", ("j",), (A("M"),), row, BOOL),
             "sel": Select(p, Cast(q, I32), c(7, I32), I32)}
    return many_outputs("boolops", [("p", T(BOOL, "N")), ("q", T(BOOL, "N")),
                                    ("m", T(BOOL, "N", "M"))], exprs)


def reductions(dtype: DType) -> Kernel:
    """sum, prod, max, min (and mean for floats) over each row."""
    x = rd("x", "i", "j", dtype=dtype)
    ops = ("sum", "prod", "max", "min") + (("mean",) if dtype.is_float else ())
    exprs = {op: Reduce(op, ("j",), (A("M"),), x, dtype) for op in ops}
    return many_outputs("reds", [("x", T(dtype, "N", "M"))], exprs)


def pairwise() -> Kernel:
    """y[i]: f32[N - 1] = x[i] + x[i + 1] (x's extent differs from the loop's)."""
    n1 = A("N") - 1
    return kernel("pairwise", [("x", T(F32, "N"))], [("y", T(F32, n1))],
                  [st("y", "i", (n1,), bin_("add", rd("x", "i"), rd("x", A("i") + 1)))])


def upsample() -> Kernel:
    """y[i] = x[i / 2] over y: f32[2 * N] (a floor division in an indexing map)."""
    n2 = A("N").scale(2)
    return kernel("upsample", [("x", T(F32, "N"))], [("y", T(F32, n2))],
                  [st("y", "i", (n2,), rd("x", A("i").floordiv(2)))])


def decimate_sum() -> Kernel:
    """s = sum[k](x[2 * k]) with k over (N + 1) / 2: no operand gives k's range."""
    half = (A("N") + 1).floordiv(2)
    body = rd("x", A("k").scale(2))
    return kernel("decimate", [("x", T(F32, "N"))], [("s", T(F32))],
                  [st("s", "", (), Reduce("sum", ("k",), (half,), body, F32))])


def copy() -> Kernel:
    """y = x (a pure copy, which must not become a memref.copy runtime call)."""
    return kernel("copy", [("x", T(F32, "M", "N"))], [("y", T(F32, "M", "N"))],
                  [st("y", "i j", ("M", "N"), rd("x", "i", "j"))])


def nested_reduction() -> Kernel:
    """s = sum[i](max[j](x[i, j]) * w[i]): a reduction inside another one's body."""
    inner = Reduce("max", ("j",), (A("N"),), rd("x", "i", "j"), F32)
    body = bin_("mul", inner, rd("w", "i"))
    return kernel("nested", [("x", T(F32, "M", "N")), ("w", T(F32, "M"))], [("s", T(F32))],
                  [st("s", "", (), Reduce("sum", ("i",), (A("M"),), body, F32))])

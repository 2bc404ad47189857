"""The checker, one class per concern: names, order, dtypes and weak literals, affine shapes,
index ranges, broadcasting, fn inlining, bounds and call-time conditions, and the collection
of every independent error."""

from __future__ import annotations

import numpy as np
import pytest

from tdsl import checked as c
from tdsl.check import check_source
from tdsl.source import TdslError
from tdsl.types import Affine, DType

F16, F32, F64 = DType.F16, DType.F32, DType.F64
I8, I32, I64, U8, BOOL = DType.I8, DType.I32, DType.I64, DType.U8, DType.BOOL


def program(text: str) -> c.Program:
    return check_source(text, "t.tdsl")


def kern(params: str, outputs: str, body: str) -> c.Kernel:
    """The checked kernel `k(params) -> (outputs) { body }`."""
    (k,) = program(f"kernel k({params}) -> ({outputs}) {{\n{body}\n}}\n").kernels
    return k


def errors(text: str) -> list[tuple[int, int, str, str | None]]:
    """(line, col, message, hint) of every diagnostic, in order."""
    with pytest.raises(TdslError) as info:
        check_source(text, "t.tdsl")
    err = info.value
    return [(*d.location(err.source), d.message, d.hint) for d in err.diagnostics]


def kernel_errors(params: str, outputs: str, body: str) -> list[tuple[int, int, str, str | None]]:
    return errors(f"kernel k({params}) -> ({outputs}) {{\n{body}\n}}\n")


def messages(params: str, outputs: str, body: str) -> list[str]:
    return [m for _, _, m, _ in kernel_errors(params, outputs, body)]


def stmt(k: c.Kernel, target: str) -> c.Statement:
    return next(s for s in k.statements if s.target == target)


def A(value) -> Affine:
    return Affine.of(value)


def read(tensor: str, *subs, dtype: DType = F32) -> c.Read:
    return c.Read(tensor, tuple(A(s) for s in subs), dtype)


# ---- names ---------------------------------------------------------------------------------


class TestNames:
    def test_unknown_name_suggests_the_closest(self):
        (err,) = kernel_errors("x: f32[N], scale: f32", "y: f32[N]", "    y[i] = x[i] * scal")
        assert err == (2, 19, "unknown name 'scal'", "did you mean 'scale'?")

    def test_unknown_name_without_a_close_match_has_no_hint(self):
        (err,) = kernel_errors("x: f32[N]", "y: f32[N]", "    y[i] = x[i] * qqqq")
        assert err[2:] == ("unknown name 'qqqq'", None)

    def test_unknown_tensor_and_function(self):
        assert kernel_errors("xs: f32[N]", "y: f32[N]", "    y[i] = exp(x[i])") == [
            (2, 16, "unknown tensor 'x'", "did you mean 'xs'?")]
        assert kernel_errors("x: f32[N]", "y: f32[N]", "    y[i] = tanhh(x[i])") == [
            (2, 12, "unknown function 'tanhh'", "did you mean 'tanh'?")]

    def test_unknown_dtype(self):
        (err,) = errors("kernel k(x: float32[N]) -> (y: f32[N]) {\n    y[i] = x[i]\n}\n")
        assert err == (1, 13, "unknown dtype 'float32'", "did you mean 'f32'?")

    def test_free_index_on_the_right(self):
        (err,) = kernel_errors("x: f32[B, N]", "y: f32[B, N]", "    y[b, n] = x[b, k]")
        assert err[:3] == (2, 20, "index 'k' is not defined on the left side and is not reduced")
        assert err[3] == "add 'k' to the left side, or reduce over it: sum[k](...)"

    def test_constants_and_values_of_indices_and_symbols(self):
        k = kern("x: f32[N]", "y: f32[N]", "    y[i] = x[i] + pi + f32(i) + f32(N)")
        e = stmt(k, "y").expr
        assert e.b == c.Cast(c.SymbolVal(A("N")), F32)
        assert e.a.b == c.Cast(c.IndexVar("i"), F32)
        assert e.a.a.b == c.Const(np.pi, F32)

    def test_wrong_arity(self):
        assert messages("x: f32[N]", "y: f32[N]", "    y[i] = exp(x[i], 2.0)") == [
            "'exp' takes 1 argument, got 2"]
        assert messages("x: f32[N]", "y: f32[N]", "    y[i] = select(x[i] > 0.0, 1.0)") == [
            "'select' takes 3 arguments, got 2"]

    def test_reduction_used_as_a_function(self):
        (err,) = kernel_errors("x: f32[N]", "y: f32[]", "    y = sum(x)")
        assert err[2:] == ("'sum' is a reduction; give it its indices",
                           "write sum[i](...) over an index i")

    @pytest.mark.parametrize("name, kind", [
        ("exp", "a built-in function"), ("f32", "a dtype name"), ("sum", "a reduction"),
        ("pi", "a built-in constant"), ("select", "a built-in function"),
    ])
    def test_reserved_names(self, name, kind):
        assert messages(f"{name}: f32[N], x: f32[N]", "y: f32[N]", "    y[i] = x[i]") == [
            f"'{name}' is {kind} and cannot name a parameter"]
        assert messages("x: f32[N]", "y: f32[N]", f"    {name}[i] = x[i]\n    y[i] = x[i]") \
            == [f"'{name}' is {kind} and cannot be defined"]
        assert messages("x: f32[N]", "y: f32[N]", f"    let {name} = 1.0\n    y[i] = x[i]") \
            == [f"'{name}' is {kind} and cannot be defined"]

    def test_reserved_names_in_fns(self):
        assert [m for *_, m, _ in errors("fn f32(v: f32) -> f32 { return v }")] == [
            "'f32' is a dtype name and cannot name a fn"]
        assert [m for *_, m, _ in errors("fn f(exp: f32) -> f32 { return exp }")] == [
            "'exp' is a built-in function and cannot name a parameter"]
        assert [m for *_, m, _ in errors("fn f(v: f32) -> f32 {\n let nan = v\n return v }")] \
            == ["'nan' is a built-in constant and cannot be defined"]

    def test_reserved_name_of_a_parameter_does_not_cascade(self):
        assert messages("exp: f32[N]", "y: f32[N]", "    y[i] = exp[i] * 2.0") == [
            "'exp' is a built-in function and cannot name a parameter"]

    def test_symbol_and_tensor_names_are_not_indices(self):
        assert messages("x: f32[N]", "y: f32[N]", "    y[N] = x[N]") == [
            "'N' is a shape symbol and cannot be an index"]
        assert messages("x: f32[N]", "y: f32[N]", "    y[x] = 1.0") == [
            "'x' is a tensor and cannot be an index"]
        assert messages("x: f32[N]", "y: f32[N]", "    y[i] = sum[x](1.0)") == [
            "'x' is a tensor and cannot be an index"]

    def test_duplicates(self):
        text = ("kernel f(x: f32[N]) -> (y: f32[N]) { y = x }\n"
                "fn f(v: f32) -> f32 { return v }\n")
        assert errors(text) == [(2, 4, "'f' is already defined at line 1", None)]
        assert messages("x: f32[N], x: f32[N]", "y: f32[N]", "    y = x") == [
            "parameter 'x' is declared twice"]
        assert [m for *_, m, _ in errors("fn f(v: f32, v: f32) -> f32 { return v }")] == [
            "parameter 'v' is declared twice"]
        assert messages("x: f32[N]", "x: f32[N]", "    x = 1.0") == [
            "parameter 'x' is declared twice"]

    def test_parameter_named_like_a_symbol(self):
        assert messages("x: f32[N], N: f32", "y: f32[N]", "    y = x") == [
            "'N' names both a parameter and a shape symbol"]


# ---- statement order -----------------------------------------------------------------------


class TestOrder:
    def test_statements_run_in_dependence_order(self):
        k = kern("x: f32[N]", "y: f32[N]",
                 "    y[i] = b[i] + a[i]\n    b[i] = a[i] * 2.0\n    a[i] = x[i] + 1.0")
        assert [s.target for s in k.statements] == ["a", "b", "y"]
        assert [loc.name for loc in k.locals] == ["a", "b"]

    def test_source_order_where_free(self):
        k = kern("x: f32[N]", "y: f32[N], z: f32[N]",
                 "    z[i] = x[i]\n    y[i] = x[i]\n    let c = 1.0")
        assert [s.target for s in k.statements] == ["z", "y", "c"]

    def test_cycle(self):
        assert kernel_errors("x: f32[N]", "y: f32[N]",
                             "    a[i] = b[i] + x[i]\n    b[i] = a[i]\n    y[i] = a[i]") == [
            (3, 5, "statements depend on each other in a cycle: a -> b -> a",
             "tdsl has no recursion: compute one of them without reading the others")]

    def test_self_read(self):
        ((line, col, message, hint),) = kernel_errors(
            "x: f32[N]", "y: f32[N]", "    y[i] = select(i > 0, y[i - 1], 0.0) + x[i]")
        assert (line, col, message) == (2, 5, "'y' is read in its own definition")
        assert "sum[k](select(k <= i, x[k], 0.0))" in hint

    def test_long_cycles_are_shortened(self):
        body = "\n".join(f"    t{n}[i] = t{(n + 1) % 20}[i]" for n in range(20))
        (msg,) = messages("x: f32[N]", "y: f32[N]", body + "\n    y[i] = x[i]")
        assert msg == ("statements depend on each other in a cycle: "
                       "t0 -> t1 -> t2 -> t3 -> t4 -> ... (14 more) -> t19 -> t0")

    def test_single_assignment(self):
        assert kernel_errors("x: f32[N]", "y: f32[N]",
                             "    y[i] = x[i]\n    y[i] = 2.0 * x[i]") == [
            (3, 5, "'y' is already defined at line 2",
             "each name is defined once (single assignment)")]

    def test_inputs_are_read_only_and_outputs_defined(self):
        assert messages("x: f32[N]", "y: f32[N]", "    x[i] = 0.0\n    y[i] = x[i]") == [
            "cannot assign to input 'x'"]
        assert kernel_errors("x: f32[N]", "y: f32[N], z: f32[N]", "    y = x") == [
            (1, 36, "output 'z' is never defined", "add a statement 'z[...] = ...' to the body")]

    def test_dependents_of_a_broken_statement_are_not_reported(self):
        assert messages("x: f32[N]", "y: f32[N]",
                        "    t[i] = x[i] * nope\n    u[i] = t[i] + 1.0\n    y[i] = u[i] + t[i]"
                        ) == ["unknown name 'nope'"]

    def test_return_in_a_kernel(self):
        assert messages("x: f32[N]", "y: f32[N]", "    y = x\n    return y") == [
            "'return' is only allowed in a fn"]


# ---- dtypes and weak literals --------------------------------------------------------------


class TestDtypes:
    def test_literals_take_the_other_operands_dtype(self):
        k = kern("x: i32[N], h: f16[N]", "y: i32[N], z: f16[N]",
                 "    y[i] = x[i] * 2 + 1\n    z[i] = 0.5 * h[i]")
        y = stmt(k, "y").expr
        assert y.dtype is I32 and y.b == c.Const(1, I32) and y.a.b == c.Const(2, I32)
        z = stmt(k, "z").expr
        assert z.a == c.Const(0.5, F16) and z.dtype is F16

    def test_integer_literal_with_a_float_operand(self):
        e = stmt(kern("x: f64[N]", "y: f64[N]", "    y[i] = x[i] + 1"), "y").expr
        assert e.b == c.Const(1.0, F64) and isinstance(e.b.value, float)

    def test_literal_only_expressions_fold_and_default(self):
        k = kern("x: f32[N]", "y: f32[N]",
                 "    let a = 2 ** 10 - 1\n    let b = 1.5 * 2\n    let t = 3 > 2\n"
                 "    y[i] = x[i]")
        assert stmt(k, "a").expr == c.Const(1023, I64)
        assert stmt(k, "b").expr == c.Const(3.0, F32)
        assert stmt(k, "t").expr == c.Const(True, BOOL)
        assert [str(loc.type) for loc in k.locals] == ["i64[]", "f32[]", "bool[]"]

    def test_annotated_let_fixes_the_dtype(self):
        k = kern("x: f32[N]", "y: f32[N]", "    let a: i8 = 7\n    y[i] = x[i]")
        assert stmt(k, "a").expr == c.Const(7, I8)

    def test_a_literal_adapts_to_the_target(self):
        e = stmt(kern("x: f32[N]", "y: u8[N]", "    y[i] = 200"), "y").expr
        assert e == c.Const(200, U8)

    def test_mixed_dtypes_need_a_cast(self):
        assert kernel_errors("x: f32[N], n: i32[N]", "y: f32[N]", "    y[i] = x[i] * n[i]") == [
            (2, 17, "operands of '*' have different dtypes: f32 and i32",
             "cast one side, e.g. f32(n[i])")]
        (err,) = kernel_errors("x: f32[N], d: f64[N]", "y: f32[N]", "    y[i] = x[i] < d[i]")
        assert err[2:] == ("operands of '<' have different dtypes: f32 and f64",
                           "cast one side, e.g. f64(x[i])")

    def test_value_of_the_wrong_dtype_for_its_target(self):
        (err,) = kernel_errors("x: f32[N]", "y: f64[N]", "    y[i] = x[i]")
        assert err[2:] == ("value of 'y' has dtype f32, expected f64", "cast it: f64(x[i])")

    def test_float_literal_with_an_integer_operand(self):
        (err,) = kernel_errors("x: i32[N]", "y: i32[N]", "    y[i] = x[i] + 0.5")
        assert err == (2, 19, "float literal 0.5 used as i32", "write an integer, or cast: i32(0.5)")

    @pytest.mark.parametrize("dtype, literal", [("i8", "128"), ("i8", "-129"), ("u8", "256"),
                                                ("u8", "-1"), ("i16", "40000")])
    def test_integer_literal_out_of_range(self, dtype, literal):
        (msg,) = messages(f"x: {dtype}[N]", f"y: {dtype}[N]", f"    y[i] = x[i] + {literal}")
        assert msg.startswith(f"literal {literal} does not fit in {dtype} [")

    def test_integer_literal_too_large_for_i64(self):
        assert messages("x: i64[N]", "y: i64[N]", f"    y[i] = x[i] + {2 ** 63}") == [
            "integer literal too large (the largest is 2**63 - 1)"]

    def test_explicit_casts_of_literals_follow_the_cast_rules(self):
        k = kern("x: f32[N]", "y: f32[N]",
                 "    let a = u8(300)\n    let b = i8(1e10)\n    let z = bool(2)\n"
                 "    y[i] = x[i]")
        assert stmt(k, "a").expr == c.Const(44, U8)
        assert stmt(k, "b").expr == c.Const(127, I8)
        assert stmt(k, "z").expr == c.Const(True, BOOL)

    def test_comparisons_and_logic_give_bool(self):
        e = stmt(kern("x: f32[N]", "y: bool[N]", "    y[i] = x[i] > 0.0 and not (x[i] == 1.0)"),
                 "y").expr
        assert e.dtype is BOOL and e.op == "and" and e.b.op == "not"

    def test_bool_arithmetic_and_numbers_as_bool(self):
        assert messages("x: f32[N]", "y: bool[N]", "    y[i] = (x[i] > 0.0) + (x[i] < 1.0)") == [
            "'+' on bool values"]
        assert messages("x: f32[N]", "y: f32[N]", "    y[i] = select(1, x[i], 0.0)") == [
            "number 1 used as bool in condition of select"]
        assert messages("x: f32[N]", "y: bool[N]", "    y[i] = not x[i]") == [
            "operand of 'not' has dtype f32, expected bool"]

    def test_float_only_builtins(self):
        (err,) = kernel_errors("x: i32[N]", "y: i32[N]", "    y[i] = sqrt(x[i])")
        assert err[2:] == ("'sqrt' needs a float argument, got i32", "cast it: f32(x[i])")
        k = kern("x: i32[N]", "y: i32[N]", "    y[i] = abs(x[i]) + relu(x[i])")
        assert stmt(k, "y").expr.dtype is I32

    def test_integer_power(self):
        k = kern("x: i32[N]", "y: i32[N]", "    y[i] = x[i] ** 3")
        assert stmt(k, "y").expr == c.Binary("pow", read("x", "i", dtype=I32), c.Const(3, I32),
                                             I32)
        assert messages("x: i32[N], p: i32[N]", "y: i32[N]", "    y[i] = x[i] ** p[i]") == [
            "an integer power needs a non-negative integer literal exponent"]

    def test_reductions_keep_the_element_dtype(self):
        k = kern("x: f16[N]", "y: f16[]", "    y = sum[k](x[k])")
        assert stmt(k, "y").expr.dtype is F16
        (err,) = kernel_errors("x: i32[B, N]", "y: f32[B]", "    y[b] = mean[n](x[b, n])")
        assert err[2:] == ("'mean' of i32 values needs floats",
                           "cast the body: mean[n](f32(x[b, n]))")
        assert messages("x: f32[N]", "y: i64[]", "    y = sum[k](x[k] > 0.0)") == [
            "'sum' of bool values"]


# ---- affine shapes -------------------------------------------------------------------------


class TestAffineShapes:
    def test_output_dimensions(self):
        k = kern("x: f32[N, C, H, W], w: f32[F, C, R, S]",
                 "out: f32[N, F, H - R + 1, W - S + 1], half: f32[H / 2], big: f32[2 * N + 1]",
                 "    out[n, f, i, j] = sum[c, r, s](x[n, c, i + r, j + s] * w[f, c, r, s])\n"
                 "    half[i] = x[0, 0, 2 * i, 0]\n    big[i] = 0.0")
        shapes = [[str(d) for d in p.type.shape] for p in k.signature.outputs]
        assert shapes == [["N", "F", "H - R + 1", "W - S + 1"], ["H / 2"], ["2 * N + 1"]]
        assert [(s.symbol, s.param, s.dim) for s in k.signature.symbols] == [
            ("N", 0, 0), ("C", 0, 1), ("H", 0, 2), ("W", 0, 3), ("F", 1, 0), ("R", 1, 2),
            ("S", 1, 3)]
        assert stmt(k, "half").extents == (A("H").floordiv(2),)

    def test_floor_division_simplifies_where_exact(self):
        k = kern("x: f32[N]", "y: f32[(2 * N + 4) / 2]", "    y[i] = 1.0")
        assert k.signature.outputs[0].type.shape == (A("N") + 2,)

    def test_a_symbol_must_be_bound_by_an_input_dimension_alone(self):
        assert kernel_errors("x: f32[N]", "y: f32[M]", "    y[i] = 0.0") == [
            (1, 32, "shape symbol 'M' is not bound: no input has a dimension that is exactly 'M'",
             "give an input a dimension named by the symbol alone")]
        assert messages("x: f32[2 * N]", "y: f32[N]", "    y[i] = x[2 * i]") == [
            "shape symbol 'N' is not bound: no input has a dimension that is exactly 'N'"]

    def test_later_dimensions_may_use_bound_symbols(self):
        k = kern("x: f32[N, M], y: f32[M * 2, N + 1]", "z: f32[N]", "    z[i] = x[i, 0]")
        assert [str(d) for d in k.signature.inputs[1].type.shape] == ["2 * M", "N + 1"]

    @pytest.mark.parametrize("dim, message", [
        ("N * M", "a dimension is not affine: both sides of '*' vary"),
        ("N / M", "a dimension can only be divided by a positive integer literal (floor division)"),
        ("N / 0", "a dimension can only be divided by a positive integer literal (floor division)"),
        ("2.5", "a dimension must be an integer, not 2.5"),
        ("N % 2", "a dimension must be an affine expression of shape symbols and integers (+, -, "
                  "* by an integer, / by a positive integer)"),
    ])
    def test_non_affine_dimensions(self, dim, message):
        assert messages("x: f32[N], z: f32[M]", f"y: f32[{dim}]", "    y = 1.0") == [message]

    def test_local_annotation_with_affine_shape(self):
        k = kern("x: f32[N]", "y: f32[N]",
                 "    t[i]: f32[N - 1] = x[i] + x[i + 1]\n    y[i] = x[i]")
        assert k.locals[0].type.shape == (A("N") - 1,)

    def test_negative_local_dimension(self):
        assert messages("x: f32[N]", "y: f32[N]",
                        "    t[i]: f32[N - N - 1] = 0.0\n    y[i] = x[i]") == [
            "dimension 0 of 't' (-1) is negative"]


# ---- index ranges --------------------------------------------------------------------------


class TestIndexRanges:
    def test_left_indices_run_over_the_target(self):
        s = stmt(kern("x: f32[B, N]", "y: f32[B, N]", "    y[b, n] = x[b, n]"), "y")
        assert s.indices == ("b", "n") and s.extents == (A("B"), A("N"))

    def test_reduction_ranges_are_inferred(self):
        e = stmt(kern("a: f32[M, K], b: f32[K, N]", "c: f32[M, N]",
                      "    c[m, n] = sum[k](a[m, k] * b[k, n])"), "c").expr
        assert isinstance(e, c.Reduce)
        assert (e.op, e.indices, e.extents) == ("sum", ("k",), (A("K"),))

    def test_explicit_extents(self):
        e = stmt(kern("x: f32[N]", "y: f32[N]", "    y[i] = max[r: 3](x[i] + f32(r))"), "y").expr
        assert e.extents == (A(3),)
        e = stmt(kern("x: f32[N]", "y: f32[]", "    y = sum[k: N - 1](x[k + 1])"), "y").expr
        assert e.extents == (A("N") - 1,)

    def test_local_shapes_are_inferred(self):
        k = kern("x: f32[B, N]", "y: f32[B]", "    m[b] = max[n](x[b, n])\n    y[b] = m[b]")
        assert [str(loc.type) for loc in k.locals] == ["f32[B]"]

    def test_a_range_that_cannot_be_inferred(self):
        assert kernel_errors("x: f32[N]", "y: f32[]", "    y = sum[k](f32(k))") == [
            (2, 13, "cannot infer the range of index 'k': it never indexes a dimension on its own",
             "give its extent: [k: 3] or [k: N]")]
        (err,) = kernel_errors("x: f32[N]", "y: f32[N]", "    t[i] = x[i + 1]\n    y = x")
        assert err[2] == ("cannot infer the range of index 'i' of 't': it never indexes a "
                          "dimension on its own")

    def test_provably_conflicting_ranges(self):
        assert kernel_errors("x: f32[N], w: f32[N + 1]", "y: f32[]",
                             "    y = sum[k](x[k] * w[k])") == [
            (2, 25, "index 'k' runs over dimension 0 of 'x' (size N) and dimension 0 of 'w' "
             "(size N + 1), which differ", "give the range explicitly, e.g. [k: N]")]

    def test_symbolic_conflict_becomes_a_condition(self):
        k = kern("x: f32[N], w: f32[M]", "y: f32[]", "    y = sum[k](x[k] * w[k])")
        (cond,) = [cond for cond in k.signature.conditions if cond.kind == "eq"]
        assert cond.expr == A("M") - A("N")
        assert "index 'k' runs over dimension 0 of 'x' (N) and dimension 0 of 'w' (M)" in \
            cond.message
        assert cond.holds({"N": 4, "M": 4}) and not cond.holds({"N": 4, "M": 5})

    def test_messages_name_indices_as_written(self):
        # The second `k` is a different index; messages must not show its internal name.
        (err,) = kernel_errors("x: f32[N], w: f32[N + 1]", "y: f32[]",
                               "    y = sum[k](x[k]) + sum[k](x[k] * w[k])")
        assert "index 'k' runs over" in err[2]
        (err,) = kernel_errors("x: f32[N]", "y: f32[]",
                               "    y = sum[k](x[k]) + sum[k: N](x[k + 1])")
        assert err[2].startswith("subscript k + 1 of 'x'")
        assert err[3] == "make the range of 'k' smaller by 1, e.g. [k: N - 1]"

    def test_reduction_index_cannot_reuse_an_enclosing_index(self):
        assert kernel_errors("x: f32[N, N]", "y: f32[N]", "    y[i] = sum[i](x[i, i])") == [
            (2, 16, "index 'i' is already in use here", "give the reduction index another name")]

    def test_left_side_holds_distinct_plain_names(self):
        assert messages("x: f32[N]", "d: f32[N, N]", "    d[i, i] = x[i]") == [
            "index 'i' appears twice on the left side"]
        assert messages("x: f32[N]", "y: f32[N + 1]", "    y[i + 1] = x[i]") == [
            "the left side is indexed by plain index names"]

    def test_rank_mismatches(self):
        assert messages("x: f32[B, N]", "y: f32[B]", "    y[b] = x[b]") == [
            "'x' has rank 2 (f32[B, N]) but 1 subscript was given"]
        assert messages("x: f32[N]", "y: f32[N]", "    y[i, j] = x[i]") == [
            "'y' has rank 1 (f32[N]) but 2 indices are given"]


# ---- whole-tensor statements and broadcasting ----------------------------------------------


class TestBroadcasting:
    def test_saxpy(self):
        k = kern("a: f32, x: f32[N], y: f32[N]", "z: f32[N]", "    z = a * x + y")
        s = stmt(k, "z")
        assert s.indices == ("_d0",) and s.extents == (A("N"),)
        assert s.expr == c.Binary("add", c.Binary("mul", c.Read("a", (), F32),
                                                  read("x", "_d0"), F32), read("y", "_d0"), F32)
        assert k.signature.conditions == ()

    def test_trailing_dimensions_align(self):
        s = stmt(kern("x: f32[B, N], b: f32[N]", "y: f32[B, N]", "    y = x + b"), "y")
        assert s.expr.b == read("b", "_d1")

    def test_literal_one_dimensions_broadcast(self):
        k = kern("col: f32[N, 1], row: f32[M]", "y: f32[N, M]", "    y = col * row")
        assert stmt(k, "y").expr.a == c.Read("col", (A("_d0"), A(0)), F32)
        assert k.signature.conditions == ()

    def test_local_takes_the_broadcast_shape(self):
        k = kern("col: f32[N, 1], row: f32[M]", "y: f32[N, M]", "    t = col + row\n    y = t")
        assert str(k.locals[0].type) == "f32[N, M]"

    def test_different_symbols_must_be_equal_at_the_call(self):
        k = kern("x: f32[N], w: f32[M]", "y: f32[N]", "    y = x + w")
        (cond,) = k.signature.conditions
        assert (cond.kind, cond.expr) == ("eq", A("M") - A("N"))
        assert cond.message == "'w' dimension 0 (M) must equal 'y' (N) to broadcast"

    def test_provably_different_sizes(self):
        assert kernel_errors("x: f32[4, 3], b: f32[4]", "y: f32[4, 3]", "    y = x + b") == [
            (2, 13, "cannot broadcast 'b' dimension 0 (4) against 'y' (3)",
             "sizes must be equal or 1; use index notation to say more")]

    def test_operand_with_more_dimensions_than_the_target(self):
        assert kernel_errors("x: f32[4, 3], y: f32[3]", "z: f32[3]", "    z = y * 2.0 + x") == [
            (2, 19, "'x' (f32[4, 3]) has more dimensions than 'z' (f32[3])", None)]

    def test_tensor_without_subscripts_in_index_form(self):
        (err,) = kernel_errors("x: f32[N], b: f32[N]", "y: f32[N]", "    y[i] = x[i] + b")
        assert err[2] == "'b' is a tensor of type f32[N]; index it here"

    def test_fn_applies_element_by_element(self):
        k = program("fn sq(v: f32) -> f32 { return v * v }\n"
                    "kernel k(x: f32[B, N]) -> (y: f32[B, N]) { y = sq(x) + 1.0 }\n").kernels[0]
        x = read("x", "_d0", "_d1")
        assert stmt(k, "y").expr == c.Binary("add", c.Binary("mul", x, x, F32),
                                             c.Const(1.0, F32), F32)


# ---- fn inlining ---------------------------------------------------------------------------


class TestFnInlining:
    def test_fns_are_inlined(self):
        inlined = program(
            "fn axpy(a: f32, x: f32, y: f32) -> f32 { return a * x + y }\n"
            "kernel k(x: f32[N], y: f32[N]) -> (z: f32[N]) { z[i] = axpy(2.0, x[i], y[i]) }\n"
        ).kernels[0]
        direct = kern("x: f32[N], y: f32[N]", "z: f32[N]", "    z[i] = 2.0 * x[i] + y[i]")
        assert inlined.statements == direct.statements

    def test_fns_call_fns_and_use_lets(self):
        k = program("fn sq(v: f64) -> f64 { return v * v }\n"
                    "fn norm2(a: f64, b: f64) -> f64 {\n    let s = sq(a) + sq(b)\n"
                    "    return sqrt(s)\n}\n"
                    "kernel k(x: f64[N], y: f64[N]) -> (z: f64[N]) { z[i] = norm2(x[i], y[i]) }"
                    ).kernels[0]
        e = stmt(k, "z").expr
        x, y = read("x", "i", dtype=F64), read("y", "i", dtype=F64)
        assert e == c.Unary("sqrt", c.Binary("add", c.Binary("mul", x, x, F64),
                                             c.Binary("mul", y, y, F64), F64), F64)

    def test_arguments_are_checked_against_parameter_dtypes(self):
        text = ("fn half(v: f32) -> f32 { return v / 2.0 }\n"
                "kernel k(x: f64[N]) -> (y: f64[N]) { y[i] = f64(half(x[i])) }\n")
        assert [m for *_, m, _ in errors(text)] == [
            "argument 'v' of 'half' has dtype f64, expected f32"]
        k = program(text.replace("half(x[i])", "half(3)")).kernels[0]
        assert stmt(k, "y").expr == c.Cast(c.Binary("div", c.Const(3.0, F32), c.Const(2.0, F32),
                                                    F32), F64)

    def test_recursion(self):
        text = ("fn even(v: i32) -> bool { return select(v == 0, true, odd(v - 1)) }\n"
                "fn odd(v: i32) -> bool { return select(v == 0, false, even(v - 1)) }\n"
                "kernel k(x: i32[N]) -> (y: bool[N]) { y[i] = even(x[i]) }\n")
        assert errors(text) == [
            (2, 55, "fn 'even' is called recursively (even -> odd -> even)",
             "fns are inlined at every use and cannot recurse")]

    def test_fn_restrictions(self):
        assert [m for *_, m, _ in errors(
            "fn f(v: f32) -> f32 { return v + x[0] }\n"
            "fn g(v: f32) -> f32 { return sum[k: 3](v) }\n"
            "fn h(v: f32[N]) -> f32 { return 1.0 }\n"
            "fn q(v: f32) -> f32[N] { return v }\n"
            "fn r(v: f32) -> f32 { let w = v }\n"
            "fn s(v: f32) -> f32 { return v * scale }\n")] == [
            "a fn works on scalars and cannot index tensors",
            "a fn cannot contain a reduction",
            "fn parameters are scalars",
            "a fn returns a scalar dtype, e.g. '-> f32'",
            "fn 'r' has no 'return'",
            "unknown name 'scale' in a fn (a fn sees only its parameters and lets)",
        ]

    def test_wrong_number_of_arguments(self):
        text = ("fn f(a: f32, b: f32) -> f32 { return a + b }\n"
                "kernel k(x: f32[N]) -> (y: f32[N]) { y[i] = f(x[i]) }\n")
        assert errors(text) == [(2, 45, "fn 'f' takes 2 arguments, got 1", None)]

    def test_unused_fns_are_checked(self):
        assert [m for *_, m, _ in errors("fn f(v: i32) -> i32 { return exp(v) }")] == [
            "'exp' needs a float argument, got i32"]

    def test_inlining_too_deep_is_a_clean_error(self):
        fns = "".join(f"fn g{n}(v: f32) -> f32 {{ return g{n + 1}(v) + 1.0 }}\n"
                      for n in range(300))
        text = fns + ("fn g300(v: f32) -> f32 { return v }\n"
                      "kernel k(x: f32[N]) -> (y: f32[N]) {\n    y[i] = g0(x[i])\n}\n")
        ((line, col, message, _),) = errors(text)
        assert (line, col) == (303, 12)
        assert message == "expression nested too deeply once fn 'g0' is inlined (more than 200 " \
                          "levels)"

    def test_too_many_inlined_calls(self):
        fns = "".join(f"fn g{n}(v: f32) -> f32 {{ return g{n + 1}(v) + g{n + 1}(v) }}\n"
                      for n in range(20))
        text = fns + ("fn g20(v: f32) -> f32 { return v }\n"
                      "kernel k(x: f32[N]) -> (y: f32[N]) {\n    y[i] = g0(x[i])\n}\n")
        assert [m for *_, m, _ in errors(text)] == [
            "too many fn calls inlined into one statement (more than 5000)"]


# ---- bounds and call-time conditions -------------------------------------------------------


class TestBounds:
    def test_proven_in_range(self):
        k = kern("x: f32[N, C, H, W], w: f32[F, C, R, S]", "out: f32[N, F, H - R + 1, W - S + 1]",
                 "    out[n, f, i, j] = sum[c, r, s](x[n, c, i + r, j + s] * w[f, c, r, s])")
        assert k.signature.conditions == ()
        k = kern("x: f32[N]", "y: f32[N], z: f32[N / 2]",
                 "    y[i] = x[N - 1 - i]\n    z[i] = x[2 * i] + x[2 * i + 1]")
        assert k.signature.conditions == ()

    def test_past_the_end(self):
        assert kernel_errors("x: f32[N]", "y: f32[N]", "    y[i] = x[i + 1] - x[i]") == [
            (2, 14, "subscript i + 1 of 'x' (dimension 0, size N) can reach N, past the last "
             "element N - 1", "make the index range smaller by 1: shrink the output's dimension")]

    def test_negative(self):
        assert kernel_errors("x: f32[N]", "y: f32[N]", "    y[i] = x[i] - x[i - 1]") == [
            (2, 21, "subscript i - 1 of 'x' (dimension 0, size N) can be negative: its least "
             "value is -1", "shift the subscript up so it starts at 0, and shrink the range to "
             "match")]

    def test_local_hint_and_fix(self):
        (err,) = kernel_errors("x: f32[N]", "y: f32[N]", "    t[i] = x[i + 1] - x[i]\n    y = x")
        assert err[3] == ("make the index range smaller by 1: annotate the local, e.g. "
                          "'t[...]: f32[...smaller...] = ...'")
        k = kern("x: f32[N]", "y: f32[N]", "    t[i]: f32[N - 1] = x[i + 1] - x[i]\n    y = x")
        (cond,) = k.signature.conditions  # N - 1 must not be negative
        assert (cond.kind, cond.expr) == ("ge", A("N") - 1)

    def test_unprovable_becomes_a_call_time_condition(self):
        k = kern("x: f32[N], y: f32[M]", "z: f32[N]", "    z[i] = x[i] + y[i]")
        (cond,) = k.signature.conditions
        assert (cond.kind, cond.expr) == ("ge", A("M") - A("N"))
        assert cond.message == ("subscript i of 'y' (dimension 0, size M) would reach N - 1, past "
                                "the last element M - 1 unless M - N >= 0")
        assert cond.unless_empty == (A("N"),)
        assert cond.holds({"N": 3, "M": 3}) and not cond.holds({"N": 4, "M": 3})
        assert cond.holds({"N": 0, "M": 0})  # an empty domain touches nothing

    def test_constant_subscript_needs_a_non_empty_dimension(self):
        k = kern("x: f32[N]", "y: f32[]", "    y = x[0]")
        (cond,) = k.signature.conditions
        assert (cond.kind, cond.expr) == ("ge", A("N") - 1)
        assert not cond.holds({"N": 0})

    def test_reduction_hint_names_the_reduction_index(self):
        assert kernel_errors("x: f32[N]", "y: f32[]", "    y = sum[k: N](x[k + 1])") == [
            (2, 21, "subscript k + 1 of 'x' (dimension 0, size N) can reach N, past the last "
             "element N - 1", "make the range of 'k' smaller by 1, e.g. [k: N - 1]")]

    def test_subscripts_are_affine(self):
        assert messages("x: f32[N, N]", "y: f32[N]", "    y[i] = sum[j](x[i * j, j])") == [
            "a subscript is not affine: both sides of '*' vary"]
        assert messages("x: f32[N], p: i64[N]", "y: f32[N]", "    y[i] = x[p[i]]") == [
            "a subscript cannot read tensor 'p': data-dependent indexing is not supported"]
        assert messages("x: f32[N], s: i64", "y: f32[N]", "    y[i] = x[s]") == [
            "a subscript must be affine in indices and shape symbols; 's' is a value "
            "(data-dependent indexing is not supported)"]
        assert messages("x: f32[N, K]", "y: f32[N]", "    y[i] = x[i, i / K]") == [
            "a subscript can only be divided by a positive integer literal (floor division)"]
        assert messages("x: f32[N]", "y: f32[N]", "    y[i] = x[i: 3]") == [
            "an extent ': ...' is only allowed in the index list of a reduction"]

    def test_conditions_are_not_repeated(self):
        k = kern("x: f32[N], y: f32[M]", "z: f32[N]", "    z[i] = x[i] + y[i] * y[i]")
        assert len(k.signature.conditions) == 1


# ---- every independent error ---------------------------------------------------------------


class TestCollection:
    def test_errors_of_several_statements_and_items(self):
        text = ("fn half(v: f32) -> f32 { return v / two }\n"
                "kernel a(x: f32[N]) -> (y: f32[N]) {\n"
                "    y[i] = half(x[i]) + x[i + 2]\n"
                "}\n"
                "kernel b(x: i32[N]) -> (y: i32[N], z: i32[N]) {\n"
                "    y[i] = exp(x[i])\n"
                "    z[i] = x[i] + 0.5\n"
                "}\n")
        assert [(line, col) for line, col, *_ in errors(text)] == [
            (1, 37), (3, 27), (6, 16), (7, 19)]

    def test_sibling_subexpressions_report_together(self):
        assert messages("x: f32[N]", "y: f32[N]", "    y[i] = foo(x[i]) + x[i] * bar") == [
            "unknown function 'foo'", "unknown name 'bar'"]

    def test_no_cascade_from_a_bad_parameter_type(self):
        assert messages("x: f33[N], w: f32[N]", "y: f32[N]",
                        "    t[i] = x[i] + w[i]\n    y[i] = t[i] + 1.0") == [
            "unknown dtype 'f33'"]

    def test_no_cascade_from_a_recursive_fn(self):
        text = ("fn f(v: f32) -> f32 { return g(v) }\n"
                "fn g(v: f32) -> f32 { return f(v) }\n"
                "fn h(v: f32) -> f32 { return f(v) * 2.0 }\n"
                "kernel k(x: f32[N]) -> (y: f32[N]) { y[i] = h(x[i]) + f(x[i]) }\n")
        assert [m for *_, m, _ in errors(text)] == ["fn 'f' is called recursively (f -> g -> f)"]

    def test_many_errors_stay_fast(self):
        body = "\n".join(f"    t{n}[i] = nope[i]" for n in range(2000))
        assert len(messages("x: f32[N]", "y: f32[N]", body + "\n    y = x")) == 2000

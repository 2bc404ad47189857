"""The parser: AST shapes, spans, precedence, separators, comments and docs, literals,
trailing commas, and syntax errors as located diagnostics."""

from __future__ import annotations

import pytest

from tdsl import ast
from tdsl.parser import MAX_DEPTH, MAX_SOURCE_CHARS, parse
from tdsl.source import Source, TdslError, TooComplexError


def module(text: str) -> ast.Module:
    return parse(Source(text, "t.tdsl"))


def kernel(text: str) -> ast.Kernel:
    (item,) = module(text).items
    assert isinstance(item, ast.Kernel)
    return item


def body(stmts: str) -> tuple[ast.Stmt, ...]:
    return kernel("kernel k() -> (y: f32) {\n" + stmts + "\n}\n").body


def expr(text: str) -> ast.Expr:
    (stmt,) = body(f"y = {text}")
    return stmt.value


def show(e: object) -> str:
    """A compact prefix form of an expression, for precedence tests."""
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, (ast.Number, ast.BoolLit)):
        return repr(e.value)
    if isinstance(e, ast.Unary):
        return f"({e.op} {show(e.operand)})"
    if isinstance(e, ast.Binary):
        return f"({e.op} {show(e.left)} {show(e.right)})"
    if isinstance(e, ast.Index):
        return f"{e.base.id}[{', '.join(show(s.expr) for s in e.subscripts)}]"
    if isinstance(e, ast.Call):
        return f"{e.func.id}({', '.join(show(a) for a in e.args)})"
    if isinstance(e, ast.Reduce):
        subs = ", ".join(show(s.expr) + (f": {show(s.extent)}" if s.extent else "")
                         for s in e.indices)
        return f"{e.op.id}[{subs}]({show(e.body)})"
    raise TypeError(e)


def syntax_error(text: str) -> tuple[int, int, str, str | None]:
    with pytest.raises(TdslError) as info:
        module(text)
    (diag,) = info.value.diagnostics
    return (*diag.location(info.value.source), diag.message, diag.hint)


def text_of(source: str, span) -> str:
    return source[span.start:span.end]


# ---- precedence ----------------------------------------------------------------------------


class TestPrecedence:
    @pytest.mark.parametrize("text, tree", [
        ("-x ** 2", "(- (** x 2))"),
        ("a + b * c", "(+ a (* b c))"),
        ("a * b + c", "(+ (* a b) c)"),
        ("a - b - c", "(- (- a b) c)"),
        ("a / b * c % d", "(% (* (/ a b) c) d)"),
        ("a ** b ** c", "(** a (** b c))"),
        ("a ** -b", "(** a (- b))"),
        ("-a * b", "(* (- a) b)"),
        ("+a - -b", "(- (+ a) (- b))"),
        ("(a + b) * c", "(* (+ a b) c)"),
        ("a + b < c * d", "(< (+ a b) (* c d))"),
        ("not a == b", "(not (== a b))"),
        ("a < b and c or d", "(or (and (< a b) c) d)"),
        ("a or b and c", "(or a (and b c))"),
        ("not not a", "(not (not a))"),
        ("x[i + 1] * 2.0", "(* x[(+ i 1)] 2.0)"),
        ("max[k](x[k]) - m", "(- max[k](x[k]) m)"),
        ("select(a > 0, -a, a)", "select((> a 0), (- a), a)"),
    ])
    def test_tree(self, text, tree):
        assert show(expr(text)) == tree

    @pytest.mark.parametrize("op", ["<", "<=", ">", ">=", "==", "!="])
    def test_comparisons(self, op):
        e = expr(f"a {op} b")
        assert isinstance(e, ast.Binary) and e.op == op
        assert show(e) == f"({op} a b)"

    def test_comparisons_do_not_chain(self):
        line, col, message, hint = syntax_error(
            "kernel k() -> (y: bool) {\n    y = 0 < a < 1\n}\n")
        assert (line, col) == (2, 15)
        assert message.startswith("unexpected '<'")
        assert hint is not None and "do not chain" in hint


# ---- shapes and spans ----------------------------------------------------------------------


class TestShapes:
    SRC = ("kernel conv(x: f32[N, C, H, W], w: f32[F, C, R, S], a: f32)\n"
           "        -> (out: f32[N, F, H - R + 1, W - S + 1]) {\n"
           "    out[n, f, i, j] = sum[c, r, s](x[n, c, i + r, j + s] * w[f, c, r, s]) * a\n"
           "}\n")

    def test_kernel(self):
        k = kernel(self.SRC)
        assert k.name.id == "conv"
        assert [p.name.id for p in k.params] == ["x", "w", "a"]
        assert [p.name.id for p in k.outputs] == ["out"]
        x = k.params[0].type
        assert x.dtype.id == "f32" and [show(d) for d in x.dims] == ["N", "C", "H", "W"]
        assert k.params[2].type.dims is None
        out = k.outputs[0].type
        assert [show(d) for d in out.dims] == ["N", "F", "(+ (- H R) 1)", "(+ (- W S) 1)"]
        assert k.doc == ""

    def test_statement(self):
        (stmt,) = kernel(self.SRC).body
        assert isinstance(stmt, ast.Define)
        assert stmt.target.id == "out" and stmt.annotation is None
        assert [show(i) for i in stmt.indices] == ["n", "f", "i", "j"]
        assert show(stmt.value) == ("(* sum[c, r, s]((* x[n, c, (+ i r), (+ j s)] "
                                    "w[f, c, r, s])) a)")

    def test_spans(self):
        src = self.SRC
        k = kernel(src)
        (stmt,) = k.body
        assert text_of(src, k.name.span) == "conv"
        assert text_of(src, k.params[0].span) == "x: f32[N, C, H, W]"
        assert text_of(src, k.params[0].type.span) == "f32[N, C, H, W]"
        assert text_of(src, k.outputs[0].type.dims[2].span) == "H - R + 1"
        assert text_of(src, stmt.span) == src.splitlines()[2].strip()
        product = stmt.value
        assert text_of(src, product.op_span) == "*"
        assert text_of(src, product.right.span) == "a"
        reduce = product.left
        assert isinstance(reduce, ast.Reduce)
        assert text_of(src, reduce.op.span) == "sum"
        assert text_of(src, reduce.span).startswith("sum[c, r, s](x[n")
        assert text_of(src, reduce.span).endswith("w[f, c, r, s])")
        read = reduce.body.left
        assert text_of(src, read.span) == "x[n, c, i + r, j + s]"
        assert text_of(src, read.subscripts[2].span) == "i + r"
        assert text_of(src, read.subscripts[2].expr.op_span) == "+"

    def test_span_of_parenthesized_expression_is_its_content(self):
        src = "kernel k() -> (y: f32) {\n    y = (a + b) * c\n}\n"
        (stmt,) = kernel(src).body
        assert text_of(src, stmt.value.left.span) == "a + b"
        assert text_of(src, stmt.value.span) == "(a + b) * c"[1:]  # from 'a' to 'c'

    def test_let_return_and_annotations(self):
        (fn,) = module("fn f(v: f32) -> f32 {\n    let t: f32 = v * 2.0\n    return t\n}\n"
                       ).items
        assert isinstance(fn, ast.Fn)
        assert fn.result.dtype.id == "f32" and fn.result.dims is None
        let, ret = fn.body
        assert isinstance(let, ast.Let) and let.name.id == "t"
        assert let.annotation.dtype.id == "f32"
        assert isinstance(ret, ast.Return) and show(ret.value) == "t"

    def test_annotated_local(self):
        (stmt,) = body("t[i]: f32[N - 1] = x[i] + x[i + 1]")
        assert isinstance(stmt, ast.Define)
        assert [show(d) for d in stmt.annotation.dims] == ["(- N 1)"]

    def test_whole_tensor_and_rank0_types(self):
        k = kernel("kernel k(x: f32[]) -> (y: f32[]) {\n    y = x\n}\n")
        assert k.params[0].type.dims == ()
        (stmt,) = k.body
        assert stmt.indices is None

    def test_reduction_extent(self):
        e = expr("max[r: 2, s: H / 2](x[r, s])")
        assert show(e) == "max[r: 2, s: (/ H 2)](x[r, s])"

    def test_call_shapes(self):
        assert show(expr("f32(i)")) == "f32(i)"
        assert show(expr("select(c, a, b)")) == "select(c, a, b)"
        assert show(expr("min(a, b)")) == "min(a, b)"
        assert expr("g()").args == ()

    def test_bare_output(self):
        k = kernel("kernel k(x: f32[N]) -> y: f32[N] {\n    y = x\n}\n")
        assert [p.name.id for p in k.outputs] == ["y"]
        assert [show(d) for d in k.outputs[0].type.dims] == ["N"]

    def test_several_items_in_any_order(self):
        items = module("fn g(v: f32) -> f32 { return v }\n"
                       "kernel a(x: f32[N]) -> (y: f32[N]) { y[i] = g(x[i]) }\n"
                       "kernel b() -> (y: f32) { y = 1.0 }\n").items
        assert [type(i).__name__ for i in items] == ["Fn", "Kernel", "Kernel"]
        assert [i.name.id for i in items] == ["g", "a", "b"]

    def test_empty_module_and_empty_body(self):
        assert module("").items == ()
        assert module("# only a comment\n\n").items == ()
        assert kernel("kernel k() -> (y: f32) {}").body == ()


# ---- layout: newlines, separators, comments -------------------------------------------------


class TestLayout:
    def test_newlines_inside_parentheses_and_brackets(self):
        (stmt,) = body("y = (a +\n        b) * x[\n  i,\n  j\n]")
        assert show(stmt.value) == "(* (+ a b) x[i, j])"

    def test_newlines_inside_a_header(self):
        k = kernel("kernel k(\n    x: f32[N],\n    y: f32[N],\n)\n    -> (z: f32[N])\n{\n"
                   "    z[i] = x[i] + y[i]\n}\n")
        assert [p.name.id for p in k.params] == ["x", "y"]
        assert len(k.body) == 1

    def test_backslash_continues_a_line(self):
        (stmt,) = body("y = a + \\\n    b")
        assert show(stmt.value) == "(+ a b)"

    def test_semicolons_and_blank_lines(self):
        stmts = body("a = 1; b = 2;; c = 3;\n\n\n  ;\nd = 4")
        assert [s.target.id for s in stmts] == ["a", "b", "c", "d"]

    def test_one_line_kernel(self):
        k = kernel("kernel k(x: f32[N]) -> (y: f32[N]) { let s = 2.0; y[i] = x[i] * s }")
        assert [type(s).__name__ for s in k.body] == ["Let", "Define"]

    def test_comments_are_ignored(self):
        stmts = body("# a comment\na = 1  # trailing ( [ {\n# another\nb = a")
        assert [s.target.id for s in stmts] == ["a", "b"]

    def test_doc_comments_attach_to_kernels_and_fns(self):
        items = module(
            "# Not a doc: a blank line follows.\n"
            "\n"
            "# Doubles x.\n"
            "#   Second line.\n"
            "kernel twice(x: f32[N]) -> (y: f32[N]) { y = 2.0 * x }\n"
            "# Squares.\n"
            "fn sq(v: f32) -> f32 { return v * v }\n"
            "kernel nodoc() -> (y: f32) { y = 1.0 }\n").items
        assert [i.doc for i in items] == ["Doubles x.\nSecond line.", "Squares.", ""]


# ---- literals and trailing commas ----------------------------------------------------------


class TestLiterals:
    @pytest.mark.parametrize("text, value, is_float", [
        ("3", 3, False), ("0", 0, False), ("0x1F", 31, False), ("0XfF", 255, False),
        ("3.0", 3.0, True), ("3.", 3.0, True), (".5", 0.5, True), ("1e-5", 1e-5, True),
        ("1E3", 1000.0, True), ("2.5e+2", 250.0, True), ("1e999", float("inf"), True),
        ("123456789012345678901234567890", 123456789012345678901234567890, False),
    ])
    def test_numbers(self, text, value, is_float):
        e = expr(text)
        assert isinstance(e, ast.Number)
        assert e.value == value and e.is_float is is_float
        assert type(e.value) is (float if is_float else int)

    def test_bool_literals(self):
        assert show(expr("true and not false")) == "(and True (not False))"

    def test_constants_are_names(self):
        assert [show(expr(c)) for c in ("inf", "nan", "pi")] == ["inf", "nan", "pi"]

    def test_trailing_commas(self):
        k = kernel("kernel k(x: f32[N, M,], s: f32,) -> (y: f32[N,],) {\n"
                   "    y[i,] = sum[j,](x[i, j,]) * min(s, 1.0,)\n}\n")
        assert [p.name.id for p in k.params] == ["x", "s"]
        assert len(k.params[0].type.dims) == 2 and len(k.outputs[0].type.dims) == 1
        (stmt,) = k.body
        assert len(stmt.indices) == 1
        assert show(stmt.value) == "(* sum[j](x[i, j]) min(s, 1.0))"


# ---- errors --------------------------------------------------------------------------------


class TestSyntaxErrors:
    K = "kernel k(x: f32[N]) -> (y: f32[N]) {\n"

    @pytest.mark.parametrize("text, where, message", [
        (K + "    y[i] = exp(x[i]\n}\n", (3, 1), "unexpected '}'; expected ')' or ','"),
        (K + "    y[i] exp(x[i])\n}\n", (2, 10), "unexpected 'exp'; expected ':' or '='"),
        (K + "    y[i] = x[i] + * 2.0\n}\n", (2, 19), "unexpected '*'; expected an expression"),
        (K + "    y[i] = x[i]\n", (2, 16), "unexpected end of file; expected 'let', 'return', "
         "'}' or a name"),
        (K + "    y[i] = x[i] +\n    1.0\n}\n", (2, 18), "unexpected end of statement; "
         "expected an expression"),
        ("kernel k(x: f32[N]) (y: f32[N]) {}\n", (1, 21), "unexpected '('; expected '->'"),
        ("fn f(v: f32) { return v }\n", (1, 14), "unexpected '{'; expected '->'"),
        (K + "    y[i] = x[i] $ 1\n}\n", (2, 17), "unexpected character '$'"),
        (K + "    y[i] = x[i] ~ 1\n}\n", (2, 17), "unexpected character '~'"),
        (K + "    y[i] = x[i] + \x00\n}\n", (2, 19), "unexpected character '\\x00'"),
    ])
    def test_message_and_location(self, text, where, message):
        line, col, got, _ = syntax_error(text)
        assert ((line, col), got) == (where, message)

    def test_line_break_hint(self):
        *_, hint = syntax_error(self.K + "    y[i] = x[i] +\n        1.0\n}\n")
        assert "continue it inside ( )" in hint

    def test_unclosed_bracket_hint(self):
        *_, hint = syntax_error(self.K + "    y[i] = exp(x[i]\n}\n")
        assert hint == "the '(' at line 2, column 15 is never closed"
        *_, hint = syntax_error(self.K + "    y[i] = x[i]\n")
        assert hint == "the '{' at line 1, column 36 is never closed"
        *_, hint = syntax_error(self.K + "    y[i] = (x[i]))\n}\n")
        assert hint == "this ')' has no matching '('"

    def test_unicode_identifier(self):
        line, col, message, hint = syntax_error(self.K + "    café[i] = x[i]\n}\n")
        assert (line, col, message) == (2, 8, "unexpected character 'é'")
        assert hint == "names use ASCII letters, digits and '_' only"

    def test_only_the_first_syntax_error_is_reported(self):
        with pytest.raises(TdslError) as info:
            module(self.K + "    y[i] = = 1\n    z = )\n}\n")
        assert len(info.value.diagnostics) == 1

    def test_too_deep(self):
        text = self.K + "    y[i] = " + "-" * (MAX_DEPTH + 10) + "x[i]\n}\n"
        with pytest.raises(TooComplexError) as info:
            module(text)
        (diag,) = info.value.diagnostics
        assert diag.message == f"expression nested too deeply (more than {MAX_DEPTH} levels)"
        assert diag.hint is not None

    def test_deep_but_allowed(self):
        e = expr("-" * (MAX_DEPTH - 5) + "a")
        assert e.depth == MAX_DEPTH - 4

    def test_redundant_parentheses_do_not_count(self):
        e = expr("(" * 1000 + "a" + ")" * 1000)
        assert show(e) == "a"

    def test_source_too_large(self):
        with pytest.raises(TooComplexError) as info:
            module("#" * (MAX_SOURCE_CHARS + 1))
        assert info.value.diagnostics[0].message.startswith("source too large")

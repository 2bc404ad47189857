"""Affine forms from syntax: shape dimensions (over symbols) and subscripts (over index
variables and symbols). `+ - *` by an integer and `/` by a positive integer literal (floor
division) keep a form affine; anything else is an error that says what is allowed."""

from __future__ import annotations

from collections.abc import Callable

from tdsl import ast
from tdsl.check.context import Reporter, StatementError
from tdsl.types import Affine

I64_MAX = (1 << 63) - 1


def to_affine(expr: ast.Expr, resolve: Callable[[ast.Name], Affine], reporter: Reporter,
              what: str) -> Affine:
    """Convert `expr` to an affine form; `resolve` maps a name to its form (or raises).

    `what` names the context in messages ("a dimension", "a subscript").
    """
    if isinstance(expr, ast.Number):
        if expr.is_float:
            raise reporter.fail(expr.span, f"{what} must be an integer, not {expr.value!r}")
        if expr.value > I64_MAX:
            raise reporter.fail(expr.span, "integer literal too large for i64")
        return Affine.of(int(expr.value))
    if isinstance(expr, ast.Name):
        return resolve(expr)
    if isinstance(expr, ast.Unary) and expr.op in ("-", "+"):
        inner = to_affine(expr.operand, resolve, reporter, what)
        return -inner if expr.op == "-" else inner
    if isinstance(expr, ast.Binary) and expr.op in ("+", "-", "*", "/"):
        left = to_affine(expr.left, resolve, reporter, what)
        right = to_affine(expr.right, resolve, reporter, what)
        return _combine(expr, left, right, reporter, what)
    if isinstance(expr, ast.Index) and "subscript" in what:
        raise reporter.fail(expr.span, f"{what} cannot read tensor '{expr.base.id}': "
                            "data-dependent indexing is not supported",
                            "subscripts are affine in indices and shape symbols, e.g. x[i + 1]")
    raise reporter.fail(expr.span, f"{what} must be an affine expression of "
                        f"{'shape symbols' if 'dimension' in what else 'indices, shape symbols'}"
                        " and integers (+, -, * by an integer, / by a positive integer)")


def _combine(expr: ast.Binary, left: Affine, right: Affine, reporter: Reporter,
             what: str) -> Affine:
    if expr.op == "+":
        return left + right
    if expr.op == "-":
        return left - right
    if expr.op == "*":
        product = left.mul(right)
        if product is None:
            raise reporter.fail(expr.op_span, f"{what} is not affine: both sides of '*' vary",
                                "one factor must be an integer literal")
        return product
    if not right.is_const or right.const <= 0:
        raise reporter.fail(expr.right.span, f"{what} can only be divided by a positive "
                            "integer literal (floor division)")
    return left.floordiv(right.const)


def check_literal_affine(form: Affine, span, reporter: Reporter) -> None:
    """Reject forms whose constants overflow i64."""
    if abs(form.const) > I64_MAX or any(abs(c) > I64_MAX for _, c in form.terms):
        raise StatementError(reporter.fail(span, "integer too large for i64"))

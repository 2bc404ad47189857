"""The syntax tree: frozen dataclasses, each carrying the span of its source text."""

from __future__ import annotations

from dataclasses import dataclass

from tdsl.source import Span

# ---- expressions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    """A numeric literal as written; `is_float` for `3.0`, `1e-5`."""

    value: int | float
    is_float: bool
    span: Span
    depth: int = 1


@dataclass(frozen=True)
class BoolLit:
    """`true` or `false`."""

    value: bool
    span: Span
    depth: int = 1


@dataclass(frozen=True)
class Name:
    """An identifier: a tensor, a scalar, an index variable, a shape symbol or a constant."""

    id: str
    span: Span
    depth: int = 1


@dataclass(frozen=True)
class Subscript:
    """One entry of `[...]`: an expression, with an extent after `:` in a reduction."""

    expr: Expr
    extent: Expr | None
    span: Span


@dataclass(frozen=True)
class Index:
    """`base[s0, s1, ...]`."""

    base: Name
    subscripts: tuple[Subscript, ...]
    span: Span
    depth: int = 1


@dataclass(frozen=True)
class Reduce:
    """`op[i, j](body)` where op should be sum, prod, max, min or mean."""

    op: Name
    indices: tuple[Subscript, ...]
    body: Expr
    span: Span
    depth: int = 1


@dataclass(frozen=True)
class Call:
    """`func(args...)`: a builtin, a cast, `select`, or a `fn`."""

    func: Name
    args: tuple[Expr, ...]
    span: Span
    depth: int = 1


@dataclass(frozen=True)
class Unary:
    """`-x`, `+x` or `not x` (op is '-', '+', 'not')."""

    op: str
    operand: Expr
    span: Span
    depth: int = 1


@dataclass(frozen=True)
class Binary:
    """`left op right`; op is the operator as written ('+', '<=', 'and', '**', ...)."""

    op: str
    left: Expr
    right: Expr
    span: Span
    op_span: Span
    depth: int = 1


Expr = Number | BoolLit | Name | Index | Reduce | Call | Unary | Binary

# ---- types, statements, items --------------------------------------------------------------


@dataclass(frozen=True)
class TypeExpr:
    """`f32` (dims is None) or `f32[N, M + 1]`."""

    dtype: Name
    dims: tuple[Expr, ...] | None
    span: Span


@dataclass(frozen=True)
class Param:
    """`name: type` in a kernel's or fn's parameter list."""

    name: Name
    type: TypeExpr
    span: Span


@dataclass(frozen=True)
class Define:
    """`T[i, j]: type = value` (indices None for the whole-tensor form `T = value`)."""

    target: Name
    indices: tuple[Expr, ...] | None
    annotation: TypeExpr | None
    value: Expr
    span: Span


@dataclass(frozen=True)
class Let:
    """`let name: type = value` (a rank-0 binding)."""

    name: Name
    annotation: TypeExpr | None
    value: Expr
    span: Span


@dataclass(frozen=True)
class Return:
    """`return value`, the last statement of a `fn`."""

    value: Expr
    span: Span


Stmt = Define | Let | Return


@dataclass(frozen=True)
class Kernel:
    """`kernel name(params) -> (outputs) { body }` with the comment above it as `doc`."""

    name: Name
    params: tuple[Param, ...]
    outputs: tuple[Param, ...]
    body: tuple[Stmt, ...]
    doc: str
    span: Span


@dataclass(frozen=True)
class Fn:
    """`fn name(params) -> dtype { lets...; return value }`."""

    name: Name
    params: tuple[Param, ...]
    result: TypeExpr
    body: tuple[Stmt, ...]
    doc: str
    span: Span


@dataclass(frozen=True)
class Module:
    """Every item of one source file in order."""

    items: tuple[Kernel | Fn, ...]
    span: Span

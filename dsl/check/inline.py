"""`fn` inlining: each call is replaced by the fn's body with its parameters bound to the
(type-checked) arguments. Recursion was rejected before, so this always terminates."""

from __future__ import annotations

from dataclasses import replace

from tdsl import ast
from tdsl import checked as c
from tdsl.check.context import StatementError, reserved_kind
from tdsl.check.exprs import ExprLowering
from tdsl.check.scope import Typed
from tdsl.parser import MAX_DEPTH
from tdsl.types import DType

MAX_INLINED = 5000
"""The most fn calls inlined into one statement."""
MAX_INLINED_NODES = 50_000
"""The largest expression a fn call may expand to (a value used twice counts twice)."""


def inline_call(low: ExprLowering, e: ast.Call, fn: ast.Fn) -> Typed:
    """The typed expression of `fn(args)`."""
    rep, scope = low.rep, low.scope
    if len(e.args) != len(fn.params):
        raise rep.fail(e.span, f"fn '{fn.name.id}' takes {len(fn.params)} argument"
                       f"{'s' if len(fn.params) != 1 else ''}, got {len(e.args)}")
    scope.inlined += 1
    if scope.inlined > MAX_INLINED:
        site = low.inlining[0] if low.inlining else e
        raise rep.fail(site.span, f"too many fn calls inlined into one statement (more than "
                       f"{MAX_INLINED})", "split the statement, or call fewer nested fns")
    values: dict[str, Typed] = {}
    for param, arg in zip(fn.params, e.args):
        dtype = param_dtype(low, param)
        typed = low.lower(arg)
        expr = low.coerce(typed, dtype, f"argument '{param.name.id}' of '{fn.name.id}'")
        values[param.name.id] = Typed(expr, dtype, arg.span)
    if scope.opaque_fns:
        # A fn checked on its own treats its callees as opaque: they are checked on their own.
        dtype = DType.parse(fn.result.dtype.id)
        if dtype is None or fn.result.dims is not None:
            raise StatementError(fn.name.id)
        return Typed(c.Read(f"{fn.name.id}(...)", (), dtype), dtype, e.span)
    low.inlining.append(e)
    try:
        result = run_body(low, fn, values)
    finally:
        low.inlining.pop()
    depth, size = _measure(result.expr)
    if depth > MAX_DEPTH:  # lets and parameters nest without nesting the lowering
        raise low._too_deep(e)
    if size > MAX_INLINED_NODES:
        site = low.inlining[0] if low.inlining else e
        raise rep.fail(site.span, f"expression too large once fn '{fn.name.id}' is inlined "
                       f"(more than {MAX_INLINED_NODES} operations)",
                       "a value used several times is copied at every use; use a local "
                       "tensor or `let` in the kernel instead")
    return replace(result, span=e.span)


def _measure(expr: c.Expr | None) -> tuple[int, int]:
    """The depth and size of a checked expression as the targets see it (a shared subtree
    counts at each use), computed on the shared form without recursion."""
    if expr is None:
        return 0, 0
    done: dict[int, tuple[int, int]] = {}
    stack: list[tuple[c.Expr, bool]] = [(expr, False)]
    while stack:
        node, ready = stack.pop()
        if id(node) in done:
            continue
        kids = _children(node)
        if ready or not kids:
            done[id(node)] = (1 + max((done[id(k)][0] for k in kids), default=0),
                              1 + sum(done[id(k)][1] for k in kids))
        else:
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in done)
    return done[id(expr)]


def _children(node: c.Expr) -> tuple[c.Expr, ...]:
    if isinstance(node, (c.Unary, c.Cast)):
        return (node.x,)
    if isinstance(node, c.Binary):
        return (node.a, node.b)
    if isinstance(node, c.Select):
        return (node.cond, node.a, node.b)
    if isinstance(node, c.Reduce):
        return (node.body,)
    return ()


def param_dtype(low: ExprLowering, param: ast.Param) -> DType:
    """The dtype of a fn parameter (fns take scalars only)."""
    dtype = DType.parse(param.type.dtype.id)
    if dtype is None:
        raise low.rep.fail(param.type.dtype.span, f"unknown dtype '{param.type.dtype.id}'")
    if param.type.dims is not None:
        raise low.rep.fail(param.type.span, "fn parameters are scalars",
                           f"write '{param.name.id}: {dtype}'")
    return dtype


def run_body(low: ExprLowering, fn: ast.Fn, values: dict[str, Typed]) -> Typed:
    """Lower a fn's body with its parameters bound to `values`; return the typed result."""
    rep, scope = low.rep, low.scope
    result_dtype = DType.parse(fn.result.dtype.id)
    if result_dtype is None or fn.result.dims is not None:
        raise rep.fail(fn.result.span, "a fn returns a scalar dtype, e.g. '-> f32'")
    saved = scope.fn_values
    scope.fn_values = dict(values)
    try:
        returned = None
        for n, stmt in enumerate(fn.body):
            if isinstance(stmt, ast.Return):
                if n != len(fn.body) - 1:
                    raise rep.fail(stmt.span, "'return' must be the last statement of a fn")
                returned = low.coerce(low.lower(stmt.value), result_dtype,
                                      f"result of fn '{fn.name.id}'")
            elif isinstance(stmt, ast.Let):
                _let(low, stmt)
            else:
                raise rep.fail(stmt.span, "a fn body holds 'let' bindings and a 'return'")
        if returned is None:
            raise rep.fail(fn.name.span, f"fn '{fn.name.id}' has no 'return'",
                           "end its body with 'return EXPR'")
        return Typed(returned, result_dtype, fn.span)
    finally:
        scope.fn_values = saved


def _let(low: ExprLowering, stmt: ast.Let) -> None:
    scope = low.scope
    assert scope.fn_values is not None
    kind = reserved_kind(stmt.name.id)
    if kind is not None:
        raise low.rep.fail(stmt.name.span, f"'{stmt.name.id}' is {kind} and cannot be defined",
                           "choose another name")
    if stmt.name.id in scope.fn_values:
        raise low.rep.fail(stmt.name.span, f"'{stmt.name.id}' is already defined in this fn")
    value = low.lower(stmt.value)
    if stmt.annotation is not None:
        dtype = DType.parse(stmt.annotation.dtype.id)
        if dtype is None or stmt.annotation.dims is not None:
            raise low.rep.fail(stmt.annotation.span, "a let in a fn has a scalar dtype")
        value = Typed(low.coerce(value, dtype, f"'{stmt.name.id}'"), dtype, value.span)
    scope.fn_values[stmt.name.id] = value

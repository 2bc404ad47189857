"""Reductions: `op[i, j: extent](body)` with each index's range given or inferred from the
dimensions it indexes alone; disagreeing ranges are an error when provable, else a call-time
condition."""

from __future__ import annotations

from tdsl import ast
from tdsl import checked as c
from tdsl.check.affine import to_affine
from tdsl.check.context import REDUCTIONS, reserved_kind
from tdsl.check.exprs import ExprLowering
from tdsl.check.scope import Evidence, Scope, Typed
from tdsl.source import Span
from tdsl.types import Affine, DType


def lower_reduce(low: ExprLowering, e: ast.Reduce) -> Typed:
    """Lower one reduction expression."""
    rep, scope = low.rep, low.scope
    op = e.op.id
    if op not in REDUCTIONS:
        if op in scope.tensors:
            raise rep.fail(e.span, f"'{op}' is a tensor; '{op}[...](...)' is not an expression",
                           "a reduction is sum, prod, max, min or mean")
        raise rep.fail(e.op.span, f"unknown reduction '{op}'",
                       "a reduction is sum, prod, max, min or mean")
    if scope.fn_values is not None:
        raise rep.fail(e.span, "a fn cannot contain a reduction", "reduce in the kernel")
    saved = dict(scope.indices)
    declared: dict[str, Affine | None] = {}
    names: list[str] = []
    for sub in e.indices:
        uname = _declare_index(low, sub, saved)
        declared[uname] = _extent(low, sub)
        names.append(uname)
    first_evidence = len(scope.evidence)
    try:
        body = low.lower(e.body)
    finally:
        scope.indices = saved
    if body.dtype is DType.BOOL:
        raise rep.fail(e.body.span, f"'{op}' of bool values", "cast them, e.g. i32(...)")
    body_expr = low.concrete(body)
    if op == "mean" and not body_expr.dtype.is_float:
        indices = ", ".join(rep.text(sub.span) for sub in e.indices)
        raise rep.fail(e.body.span, f"'mean' of {body_expr.dtype} values needs floats",
                       f"cast the body: mean[{indices}](f32({low._snippet(e.body.span)}))")
    found = scope.evidence[first_evidence:]
    extents = tuple(_infer(low, n, declared[n], found, sub.span)
                    for n, sub in zip(names, e.indices))
    for n, ext in zip(names, extents):
        scope.extents[n] = ext
    scope.reduced.update(names)
    node = c.Reduce(op, tuple(names), extents, body_expr, body_expr.dtype)
    return Typed(node, body_expr.dtype, e.span)


def _declare_index(low: ExprLowering, sub: ast.Subscript, outer: dict[str, str]) -> str:
    rep, scope = low.rep, low.scope
    if not isinstance(sub.expr, ast.Name):
        raise rep.fail(sub.expr.span, "a reduction index must be a plain name",
                       "e.g. sum[k](...) or sum[k: 4](...)")
    name = sub.expr.id
    kind = reserved_kind(name)
    if kind is not None:
        raise rep.fail(sub.expr.span, f"'{name}' is {kind} and cannot be an index")
    if name in outer:
        raise rep.fail(sub.expr.span, f"index '{name}' is already in use here",
                       "give the reduction index another name")
    if name in scope.tensors or name in scope.symbols:
        what = "a tensor" if name in scope.tensors else "a shape symbol"
        raise rep.fail(sub.expr.span, f"'{name}' is {what} and cannot be an index")
    if name in scope.indices:
        raise rep.fail(sub.expr.span, f"index '{name}' appears twice in this reduction")
    uname = scope.fresh_index(name)
    scope.indices[name] = uname
    return uname


def _extent(low: ExprLowering, sub: ast.Subscript) -> Affine | None:
    if sub.extent is None:
        return None

    def resolve(name: ast.Name) -> Affine:
        if name.id in low.scope.symbols:
            return Affine.of(name.id)
        raise low.rep.fail(name.span, f"'{name.id}' is not a shape symbol; an extent is an "
                           "affine expression of shape symbols and integers")

    return to_affine(sub.extent, resolve, low.rep, "an extent")


def _infer(low: ExprLowering, index: str, declared: Affine | None, found: list[Evidence],
           span: Span) -> Affine:
    if declared is not None:
        return declared
    mine = [ev for ev in found if ev.index == index]
    written = low.scope.written(index)
    if not mine:
        raise low.rep.fail(span, f"cannot infer the range of index '{written}': it never "
                           "indexes a dimension on its own",
                           f"give its extent: [{written}: 3] or [{written}: N]")
    check_agreement(low, mine, f"give the range explicitly, e.g. [{written}: {mine[0].size}]")
    return mine[0].size


def check_agreement(low: ExprLowering, evidence: list[Evidence], hint: str) -> None:
    """Every dimension an index runs over must have one size: an error when they provably
    differ, else an equality checked at the call."""
    scope: Scope = low.scope
    first = evidence[0]
    for other in evidence[1:]:
        if other.size == first.size:
            continue
        diff = other.size - first.size
        if diff.is_const:
            raise low.rep.fail(other.span, f"index '{scope.written(other.index)}' runs over "
                               f"dimension {first.dim} of '{first.tensor}' (size {first.size}) "
                               f"and dimension {other.dim} of '{other.tensor}' (size "
                               f"{other.size}), which differ", hint)
        scope.equalities.append((first, other))

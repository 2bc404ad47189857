"""Hoisting nested reductions out of expressions: a checked kernel's statements rewritten so
that a `Reduce` appears only as a whole statement's right side (a helper of `tdsl.to_mlir`:
each such statement becomes one `linalg.generic` with reduction iterators)."""

from __future__ import annotations

import dataclasses

from tdsl.checked import (
    Binary,
    Cast,
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
from tdsl.types import Affine, TensorType


def hoist_reductions(kernel: Kernel) -> tuple[list[Statement], list[Local],
                                              dict[str, tuple[Affine, ...]],
                                              dict[str, tuple[Affine, ...]]]:
    """Statements where a `Reduce` appears only as a whole statement's expression.

    A nested reduction becomes a new local over the indices it depends on (in scope order),
    computed by a statement placed just before its user, and is read back elementwise. The
    third result maps such a local to the extents of the user statement's indices it does
    not depend on (those that may be 0): where one is 0 the statement has no element, and
    the local must compute nothing either (its reads are only proven in bounds for a
    non-empty statement domain). The fourth maps a local whose body reads at non-bare
    subscripts (`x[3]`, `x[i + 1]`) to the extents of every enclosing index it does not depend
    on, the enclosing reductions' too (those that may be 0): where one is 0 the local's own
    reduction domain is made empty, so it holds the identity and reads nothing (such reads are
    proven in bounds only for non-empty enclosing domains).
    """
    taken = {p.name for p in kernel.signature.inputs + kernel.signature.outputs}
    taken |= {loc.name for loc in kernel.locals}
    hoister = _Hoister(taken)
    for st in kernel.statements:
        hoister.statement(st)
    return hoister.statements, hoister.locals, hoister.guards, hoister.domain_guards


class _Hoister:
    def __init__(self, taken: set[str]):
        self.taken = taken
        self.statements: list[Statement] = []
        self.locals: list[Local] = []
        self.guards: dict[str, tuple[Affine, ...]] = {}
        self.domain_guards: dict[str, tuple[Affine, ...]] = {}
        self.parallel: set[str] = set()

    def statement(self, st: Statement) -> None:
        self.parallel = set(st.indices)
        scope = dict(zip(st.indices, st.extents))
        memo: dict[Reduce, Read] = {}
        expr = st.expr
        if isinstance(expr, Reduce):
            inner = {**scope, **dict(zip(expr.indices, expr.extents))}
            expr = dataclasses.replace(expr, body=self.rewrite(expr.body, inner, memo))
        else:
            expr = self.rewrite(expr, scope, memo)
        self.statements.append(dataclasses.replace(st, expr=expr))

    def rewrite(self, e: Expr, scope: dict[str, Affine], memo: dict[Reduce, Read]) -> Expr:
        if isinstance(e, Reduce):
            return self._hoist(e, scope, memo)
        if isinstance(e, Unary | Cast):
            return dataclasses.replace(e, x=self.rewrite(e.x, scope, memo))
        if isinstance(e, Binary):
            return dataclasses.replace(e, a=self.rewrite(e.a, scope, memo),
                                       b=self.rewrite(e.b, scope, memo))
        if isinstance(e, Select):
            return dataclasses.replace(e, cond=self.rewrite(e.cond, scope, memo),
                                       a=self.rewrite(e.a, scope, memo),
                                       b=self.rewrite(e.b, scope, memo))
        return e

    def _hoist(self, e: Reduce, scope: dict[str, Affine], memo: dict[Reduce, Read]) -> Read:
        if e in memo:
            return memo[e]
        inner = {**scope, **dict(zip(e.indices, e.extents))}
        reduce = dataclasses.replace(e, body=self.rewrite(e.body, inner, memo))
        used = expr_names(reduce.body) - set(e.indices)
        free = tuple(n for n in scope if n in used)
        extents = tuple(scope[n] for n in free)
        name = self._fresh()
        # Only the statement's own indices: where one's range is empty the statement has no
        # element (the local may be empty too); an enclosing reduction's empty range leaves
        # the statement's elements (their loads of the local may be hoisted out of it).
        may_be_empty = {n: x for n, x in scope.items()
                        if n not in free and not x.provably_positive()}
        dropped = tuple(x for n, x in may_be_empty.items() if n in self.parallel)
        if dropped:
            self.guards[name] = dropped
        if may_be_empty and _offset_reads(reduce.body):
            self.domain_guards[name] = tuple(may_be_empty.values())
        self.locals.append(Local(name, TensorType(e.dtype, extents)))
        self.statements.append(Statement(name, free, extents, reduce))
        read = Read(name, tuple(Affine.of(n) for n in free), e.dtype)
        memo[e] = read
        return read

    def _fresh(self) -> str:
        n = len(self.locals)
        while f"_tdsl_red{n}" in self.taken:
            n += 1
        name = f"_tdsl_red{n}"
        self.taken.add(name)
        return name


def _offset_reads(e: Expr) -> bool:
    """True when `e` reads a tensor at a subscript that is not a bare index (`x[3]`,
    `x[i + 1]`): only such reads can have been proven in bounds for a non-empty enclosing
    domain alone; a bare index ranges over the dimension it indexes."""
    if isinstance(e, Read):
        return any(s.as_name() is None for s in e.subscripts)
    if isinstance(e, Unary | Cast):
        return _offset_reads(e.x)
    if isinstance(e, Binary):
        return _offset_reads(e.a) or _offset_reads(e.b)
    if isinstance(e, Select):
        return _offset_reads(e.cond) or _offset_reads(e.a) or _offset_reads(e.b)
    if isinstance(e, Reduce):
        return _offset_reads(e.body)
    return False


def expr_names(e: Expr) -> set[str]:
    """Every index-variable or symbol name an expression mentions (subscripts included)."""
    if isinstance(e, IndexVar):
        return {e.name}
    if isinstance(e, SymbolVal):
        return set(e.value.names())
    if isinstance(e, Read):
        return set().union(*(s.names() for s in e.subscripts))
    if isinstance(e, Unary | Cast):
        return expr_names(e.x)
    if isinstance(e, Binary):
        return expr_names(e.a) | expr_names(e.b)
    if isinstance(e, Select):
        return expr_names(e.cond) | expr_names(e.a) | expr_names(e.b)
    if isinstance(e, Reduce):
        return expr_names(e.body) | set().union(*(x.names() for x in e.extents))
    return set()



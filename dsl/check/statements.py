"""Statements of a kernel: single assignment, index ranges, whole-tensor broadcasting, `let`,
and the assembly of the checked kernel with its signature."""

from __future__ import annotations

from tdsl import ast
from tdsl import checked as c
from tdsl.check.bounds import check_accesses
from tdsl.check.context import (
    BINARY_BUILTINS,
    REDUCTIONS,
    Reporter,
    StatementError,
    reserved_kind,
)
from tdsl.check.exprs import ExprLowering
from tdsl.check.items import Header, check_header, tensor_type
from tdsl.check.order import dependence_order, names_read, target_of
from tdsl.check.reduce import check_agreement
from tdsl.check.scope import Evidence, Scope
from tdsl.runtime.signature import Condition, Param, Signature
from tdsl.source import Span
from tdsl.types import Affine, DType, TensorType


class KernelChecker:
    """Checks one kernel; diagnostics go to the reporter, the result is a checked kernel."""

    def __init__(self, kernel: ast.Kernel, fns: dict[str, ast.Fn], reporter: Reporter,
                 broken_fns: set[str] | None = None):
        self.kernel = kernel
        self.fns = fns
        self.broken_fns = broken_fns or set()
        self.rep = reporter
        self.header: Header = check_header(kernel, reporter)
        self.outputs = {p.name: p.type for p in self.header.outputs}
        self.inputs = {p.name: p.type for p in self.header.inputs}
        self.tensors: dict[str, TensorType] = {**self.inputs, **self.outputs}
        self.symbols = self.header.bound | self.header.lost_symbols
        self.poisoned: set[str] = set(self.header.lost)
        self.conditions: list[Condition] = []
        self.locals: list[c.Local] = []

    def check(self) -> c.Kernel | None:
        """The checked kernel, or None when an error was reported."""
        stmts = self._collect()
        ordered = dependence_order(stmts, self.rep)
        self.poisoned |= {target_of(s).id for s in stmts} - {target_of(s).id for s in ordered}
        statements: list[c.Statement] = []
        for stmt in ordered:
            try:
                statements.append(self._statement(stmt))
            except StatementError:
                self.poisoned.add(target_of(stmt).id)
        defined = {target_of(s).id for s in stmts}
        for p in self.kernel.outputs:
            if p.name.id not in defined and p.name.id in self.outputs:
                self.rep.error(p.name.span, f"output '{p.name.id}' is never defined",
                               f"add a statement '{p.name.id}[...] = ...' to the body")
        if not self.header.ok or self.rep.diagnostics:
            return None
        return self._assemble(statements)

    # ---- collection -----------------------------------------------------------------------
    def _collect(self) -> list[ast.Stmt]:
        seen: dict[str, ast.Stmt] = {}
        stmts: list[ast.Stmt] = []
        for stmt in self.kernel.body:
            if isinstance(stmt, ast.Return):
                self.rep.error(stmt.span, "'return' is only allowed in a fn",
                               "a kernel defines its outputs by name")
                continue
            target = target_of(stmt)
            if not self._target_ok(target, seen):
                continue
            seen[target.id] = stmt
            stmts.append(stmt)
        return stmts

    def _target_ok(self, target: ast.Name, seen: dict[str, ast.Stmt]) -> bool:
        name = target.id
        if name in self.header.lost:  # a parameter with an error, already reported
            return False
        kind = reserved_kind(name)
        problem = hint = None
        if kind is not None:
            problem, hint = f"'{name}' is {kind} and cannot be defined", "choose another name"
        elif name in self.inputs:
            problem = f"cannot assign to input '{name}'"
            hint = f"inputs are read-only; define a new tensor, e.g. '{name}2'"
        elif name in self.symbols and name not in self.outputs:
            problem = f"'{name}' is a shape symbol and cannot be defined"
        elif name in seen:
            line, _ = self.rep.source.line_col(seen[name].span.start)
            self.rep.error(target.span, f"'{name}' is already defined at line {line}",
                           "each name is defined once (single assignment)")
            return False
        if problem:
            self.rep.error(target.span, problem, hint)
            return False
        return True

    # ---- one statement --------------------------------------------------------------------
    def _scope(self, reserved: set[str]) -> Scope:
        return Scope(dict(self.tensors), self.symbols, self.fns, self.poisoned,
                     reserved_indices=reserved, broken_fns=self.broken_fns)

    def _declared_type(self, stmt: ast.Define | ast.Let) -> TensorType | None:
        name = target_of(stmt).id
        if name in self.outputs:
            if stmt.annotation is not None:
                raise self.rep.fail(stmt.annotation.span, f"output '{name}' is typed in the "
                                    "kernel's signature; remove this annotation")
            return self.outputs[name]
        if stmt.annotation is None:
            return None
        return tensor_type(stmt.annotation, self.rep, self._symbol_ok)

    def _symbol_ok(self, name: ast.Name) -> None:
        if name.id not in self.symbols:
            raise self.rep.fail(name.span, f"unknown shape symbol '{name.id}'",
                                "symbols are bound by the input dimensions")

    def _statement(self, stmt: ast.Stmt) -> c.Statement:
        declared = self._declared_type(stmt)
        if isinstance(stmt, ast.Let):
            if declared is not None and declared.rank:
                raise self.rep.fail(stmt.annotation.span, "a let binds a scalar",
                                    "define a local tensor with t[i] = ... instead")
            return self._whole(stmt, stmt.name, declared, let=True)
        if stmt.indices is None:
            return self._whole(stmt, stmt.target, declared)
        return self._indexed(stmt, declared)

    def _indexed(self, stmt: ast.Define, declared: TensorType | None) -> c.Statement:
        name = stmt.target.id
        scope = self._scope(names_read(stmt.value))
        for idx in stmt.indices or ():
            self._declare_lhs_index(idx, scope)
        indices = tuple(scope.indices.values())
        if declared is not None and declared.rank != len(indices):
            raise self.rep.fail(stmt.target.span, f"'{name}' has rank {declared.rank} "
                                f"({declared}) but {len(indices)} indices are given")
        if declared is not None:
            scope.extents.update(zip(indices, declared.shape))
        low = ExprLowering(scope, self.rep)
        try:
            value = low.lower(stmt.value)
        except StatementError:
            if declared is not None:  # the subscripts that did lower may still be out of range
                check_accesses(scope, self.rep, self._shrink_hint(name, declared.dtype))
            raise
        if declared is not None:
            expr = low.coerce(value, declared.dtype, f"value of '{name}'")
            extents = declared.shape
        else:
            expr = low.concrete(value)
            extents = tuple(self._infer_lhs(low, stmt, idx, scope.evidence) for idx in indices)
            scope.extents.update(zip(indices, extents))
        self.conditions += check_accesses(scope, self.rep, self._shrink_hint(name, expr.dtype))
        self._register(name, declared or TensorType(expr.dtype, extents), stmt)
        return c.Statement(name, indices, extents, expr)

    def _shrink_hint(self, name: str, dtype: DType) -> str:
        if name in self.outputs:
            return "shrink the output's dimension"
        return f"annotate the local, e.g. '{name}[...]: {dtype}[...smaller...] = ...'"

    def _declare_lhs_index(self, idx: ast.Expr, scope: Scope) -> None:
        if not isinstance(idx, ast.Name):
            raise self.rep.fail(idx.span, "the left side is indexed by plain index names",
                                "write the shift on the right side, e.g. y[i] = x[i + 1]")
        kind = reserved_kind(idx.id)
        if kind is not None:
            raise self.rep.fail(idx.span, f"'{idx.id}' is {kind} and cannot be an index")
        if idx.id in self.tensors or idx.id in self.symbols:
            what = "a tensor" if idx.id in self.tensors else "a shape symbol"
            raise self.rep.fail(idx.span, f"'{idx.id}' is {what} and cannot be an index")
        if idx.id in scope.indices:
            raise self.rep.fail(idx.span, f"index '{idx.id}' appears twice on the left side",
                                "read a diagonal on the right side instead: d[i] = x[i, i]")
        scope.indices[idx.id] = scope.fresh_index(idx.id)

    def _infer_lhs(self, low: ExprLowering, stmt: ast.Define, index: str,
                   evidence: list[Evidence]) -> Affine:
        mine = [ev for ev in evidence if ev.index == index]
        if not mine:
            span = next(i.span for i in stmt.indices or () if getattr(i, "id", None) == index)
            raise self.rep.fail(span, f"cannot infer the range of index '{index}' of "
                                f"'{stmt.target.id}': it never indexes a dimension on its own",
                                f"annotate it: {stmt.target.id}[...]: f32[N, ...] = ...")
        check_agreement(low, mine, f"annotate the shape of '{stmt.target.id}', e.g. "
                        f"{stmt.target.id}[...]: f32[N, ...] = ...")
        return mine[0].size

    def _whole(self, stmt: ast.Define | ast.Let, target: ast.Name,
               declared: TensorType | None, let: bool = False) -> c.Statement:
        name = target.id
        scope = self._scope(names_read(stmt.value))
        operands, spans = ({}, {}) if let else self._broadcast_operands(stmt.value)
        shape = self._broadcast_shape(operands, spans, declared, target)
        indices = tuple(scope.fresh_index(f"_d{k}", generated=True) for k in range(len(shape)))
        scope.whole = {n: _broadcast_subscripts(t.shape, shape, indices)
                       for n, t in operands.items()}
        scope.extents.update(zip(indices, shape))
        low = ExprLowering(scope, self.rep)
        try:
            value = low.lower(stmt.value)
        except StatementError:  # the subscripts that did lower may still be out of range
            check_accesses(scope, self.rep, "shrink the target's dimension")
            raise
        expr = (low.coerce(value, declared.dtype, f"value of '{name}'") if declared is not None
                else low.concrete(value))
        self.conditions += check_accesses(scope, self.rep, "shrink the target's dimension")
        self._register(name, declared or TensorType(expr.dtype, shape), stmt)
        return c.Statement(name, indices, shape, expr)

    def _broadcast_operands(self, value: ast.Expr) -> tuple[dict[str, TensorType],
                                                            dict[str, Span]]:
        """The whole tensors a whole-tensor statement combines, and where each first occurs."""
        found: dict[str, TensorType] = {}
        spans: dict[str, Span] = {}
        stack: list[object] = [value]
        while stack:
            cur = stack.pop()
            if isinstance(cur, ast.Name):
                ttype = self.tensors.get(cur.id)
                if ttype is not None and ttype.rank > 0:
                    found.setdefault(cur.id, ttype)
                    spans[cur.id] = min(spans.get(cur.id, cur.span), cur.span,
                                        key=lambda sp: sp.start)
            elif isinstance(cur, ast.Index):
                stack.extend(s.expr for s in cur.subscripts)
            elif isinstance(cur, ast.Reduce):
                stack.append(cur.body)
            elif isinstance(cur, ast.Call) and not _reduction_as_call(cur):
                stack.extend(cur.args)
            elif isinstance(cur, ast.Unary):
                stack.append(cur.operand)
            elif isinstance(cur, ast.Binary):
                stack.extend((cur.left, cur.right))
        return found, spans

    def _broadcast_shape(self, operands: dict[str, TensorType], spans: dict[str, Span],
                         declared: TensorType | None, target: ast.Name) -> tuple[Affine, ...]:
        shape: list[Affine] = list(declared.shape) if declared is not None else []
        origin = [f"'{target.id}'"] * len(shape)
        for name, ttype in operands.items():
            if declared is not None and ttype.rank > declared.rank:
                raise self.rep.fail(spans[name], f"'{name}' ({ttype}) has more dimensions "
                                    f"than '{target.id}' ({declared})")
            if len(shape) < ttype.rank:
                pad = ttype.rank - len(shape)
                shape = list(ttype.shape[:pad]) + shape
                origin = [f"'{name}'"] * pad + origin
            offset = len(shape) - ttype.rank
            for k, size in enumerate(ttype.shape):
                m = k + offset
                shape[m], origin[m] = self._broadcast_dim(shape[m], size, origin[m], name, k,
                                                          spans[name], declared is not None)
        return tuple(shape)

    def _broadcast_dim(self, have: Affine, size: Affine, have_from: str, name: str, k: int,
                       span: Span, fixed: bool) -> tuple[Affine, str]:
        one = Affine.of(1)
        if size == have or size == one:
            return have, have_from
        if have == one and not fixed:
            return size, f"'{name}'"
        diff = size - have
        if diff.is_const:
            raise self.rep.fail(span, f"cannot broadcast '{name}' dimension {k} ({size}) "
                                f"against {have_from} ({have})",
                                "sizes must be equal or 1; use index notation to say more")
        self.conditions.append(Condition(
            "eq", diff, f"'{name}' dimension {k} ({size}) must equal {have_from} ({have}) to "
            "broadcast"))
        return have, have_from

    def _register(self, name: str, ttype: TensorType, stmt: ast.Stmt) -> None:
        if name in self.outputs:
            return
        self.tensors[name] = ttype
        self.locals.append(c.Local(name, ttype))
        for dim, size in enumerate(ttype.shape):
            if size.provably_nonneg():
                continue
            if size.provably_negative():
                raise self.rep.fail(target_of(stmt).span, f"dimension {dim} of '{name}' "
                                    f"({size}) is negative")
            self.conditions.append(Condition("ge", size, f"dimension {dim} of local '{name}' "
                                             f"({size}) must not be negative"))

    # ---- assembly -------------------------------------------------------------------------
    def _assemble(self, statements: list[c.Statement]) -> c.Kernel:
        unique: dict[tuple, Condition] = {}
        for cond in self.conditions:
            unique.setdefault((cond.kind, cond.expr, cond.unless_empty), cond)
        sig = Signature(self.kernel.name.id, tuple(self.header.inputs),
                        tuple(self.header.outputs), tuple(self.header.symbols),
                        tuple(unique.values()), self.kernel.doc,
                        tuple(Param(loc.name, loc.type) for loc in self.locals))
        kernel = c.Kernel(sig, tuple(self.locals), tuple(statements))
        fingerprint = repr((sig.to_json(), kernel.locals, kernel.statements))
        return c.Kernel(sig, kernel.locals, kernel.statements, fingerprint)


def _reduction_as_call(call: ast.Call) -> bool:
    """`sum(x)` or `max(x)`: an error the lowering explains; its argument is no operand."""
    name = call.func.id
    return name in REDUCTIONS and (name not in BINARY_BUILTINS or len(call.args) == 1)


def _broadcast_subscripts(shape: tuple[Affine, ...], result: tuple[Affine, ...],
                          indices: tuple[str, ...]) -> tuple[Affine, ...]:
    offset = len(result) - len(shape)
    subs = []
    for k, size in enumerate(shape):
        m = k + offset
        broadcast = size == Affine.of(1) and result[m] != Affine.of(1)
        subs.append(Affine.of(0) if broadcast else Affine.of(indices[m]))
    return tuple(subs)


def check_kernel(kernel: ast.Kernel, fns: dict[str, ast.Fn], reporter: Reporter,
                 broken_fns: set[str] | None = None) -> c.Kernel | None:
    """Check one kernel; None when it has errors (they are in the reporter). Calls of the
    `broken_fns` (recursive, already reported) abandon their statement silently."""
    return KernelChecker(kernel, fns, reporter, broken_fns).check()

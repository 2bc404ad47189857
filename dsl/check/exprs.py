"""Typed lowering of expressions: name resolution, dtypes with weak literals, builtins, casts,
`fn` inlining and reductions (with the evidence that infers each index's range)."""

from __future__ import annotations

import math
from collections.abc import Callable

from tdsl import ast
from tdsl import checked as c
from tdsl.check import consts
from tdsl.check.affine import to_affine
from tdsl.check.context import (
    BINARY_BUILTINS,
    CONSTANTS,
    FLOAT_ONLY_BUILTINS,
    REDUCTIONS,
    UNARY_BUILTINS,
    Reporter,
    StatementError,
    nearest,
)
from tdsl.check.scope import Access, Evidence, Scope, Typed
from tdsl.parser import MAX_DEPTH
from tdsl.runtime.signature import int_to_float
from tdsl.source import Span
from tdsl.types import Affine, DType, TensorType

_ARITH = {"+": "add", "-": "sub", "*": "mul", "/": "div", "%": "mod", "**": "pow"}
_COMPARE = {"<": "lt", "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "!=": "ne"}
_CONST_VALUES = {"inf": math.inf, "nan": math.nan, "pi": math.pi}


class ExprLowering:
    """Lowers AST expressions of one statement to typed checked expressions."""

    def __init__(self, scope: Scope, reporter: Reporter):
        self.scope = scope
        self.rep = reporter
        self.depth = 0
        self.inlining: list[ast.Call] = []  # the fn calls being inlined, outermost first

    # ---- entry points ---------------------------------------------------------------------
    def lower(self, expr: ast.Expr) -> Typed:
        """The typed lowering of `expr` (raises StatementError after reporting)."""
        method = getattr(self, f"_{type(expr).__name__.lower()}")
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise self._too_deep(expr)
            return method(expr)
        finally:
            self.depth -= 1

    def _too_deep(self, expr: ast.Expr) -> StatementError:
        # The parser bounds the depth of what is written; only inlined fns get here.
        site = self.inlining[0] if self.inlining else expr
        what = f" once fn '{site.func.id}' is inlined" if isinstance(site, ast.Call) else ""
        return self.rep.fail(site.span, f"expression nested too deeply{what} (more than "
                             f"{MAX_DEPTH} levels)",
                             "split it into several statements with `let` or local tensors")

    def lower_all(self, exprs: tuple[ast.Expr, ...] | list[ast.Expr]) -> list[Typed]:
        """Lower sibling expressions, reporting the errors of every one before giving up."""
        results: list[Typed] = []
        failed: StatementError | None = None
        for expr in exprs:
            try:
                results.append(self.lower(expr))
            except StatementError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed
        return results

    def concrete(self, t: Typed) -> c.Expr:
        """The expression with a weak literal given its default dtype (i64 or f32)."""
        if not t.is_weak:
            return t.expr  # type: ignore[return-value]
        if t.builder is not None:
            return t.builder(t.dtype)
        if isinstance(t.weak, bool):
            return c.Const(t.weak, DType.BOOL)
        return self.coerce(t, DType.F32 if isinstance(t.weak, float) else DType.I64)

    def coerce(self, t: Typed, dtype: DType, context: str = "") -> c.Expr:
        """`t` as `dtype`: weak literals convert, strong expressions must match exactly."""
        if t.builder is not None:
            if t.dtype.is_float and not dtype.is_float:
                raise self.rep.fail(t.span, f"float expression {self._snippet(t.span)} used "
                                    f"as {dtype}", f"cast it: {dtype}({self._snippet(t.span)})")
            return t.builder(dtype)
        if t.is_weak:
            return c.Const(self._weak_value(t, dtype, context), dtype)
        if t.dtype is not dtype:
            raise self.rep.fail(
                t.span, f"{context or 'expression'} has dtype {t.dtype}, expected {dtype}",
                f"cast it: {dtype}({self._snippet(t.span)})")
        return t.expr  # type: ignore[return-value]

    def _weak_value(self, t: Typed, dtype: DType, context: str) -> consts.Number:
        value = t.weak
        assert value is not None
        if dtype is DType.BOOL:
            if isinstance(value, bool):
                return value
            raise self.rep.fail(t.span, f"number {self._snippet(t.span)} used as bool"
                                f"{' in ' + context if context else ''}",
                                "compare it instead, e.g. x != 0")
        if isinstance(value, bool):
            raise self.rep.fail(t.span, f"bool literal used as {dtype}",
                                f"cast it: {dtype}({self._snippet(t.span)})")
        if dtype.is_float:
            return int_to_float(value, dtype) if isinstance(value, int) else value
        if isinstance(value, float):
            raise self.rep.fail(t.span, f"float literal {self._snippet(t.span)} used as {dtype}",
                                f"write an integer, or cast: {dtype}({self._snippet(t.span)})")
        if not consts.fits(value, dtype):
            low, high = dtype.int_range
            raise self.rep.fail(t.span, f"literal {_short(value)} does not fit in {dtype} "
                                f"[{low}, {high}]", f"a literal takes the dtype of the other "
                                f"operand ({dtype}); cast that operand to a wider type")
        return int(value)

    # ---- leaves ---------------------------------------------------------------------------
    def _number(self, e: ast.Number) -> Typed:
        if not e.is_float and e.value > (1 << 63) - 1:
            raise self.rep.fail(e.span, "integer literal too large (the largest is 2**63 - 1)")
        return Typed(None, DType.F32 if e.is_float else DType.I64, e.span, e.value)

    def _boollit(self, e: ast.BoolLit) -> Typed:
        return Typed(c.Const(e.value, DType.BOOL), DType.BOOL, e.span)

    def _name(self, e: ast.Name) -> Typed:
        s = self.scope
        name = e.id
        if name in CONSTANTS:
            return Typed(None, DType.F32, e.span, _CONST_VALUES[name])
        if s.fn_values is not None:
            if name in s.fn_values:
                return s.fn_values[name]
            raise self.rep.fail(e.span, f"unknown name '{name}' in a fn (a fn sees only its "
                                "parameters and lets)", nearest(name, s.fn_values)
                                or f"pass '{name}' to the fn as a parameter")
        if name in s.indices:
            return Typed(c.IndexVar(s.indices[name]), DType.I64, e.span)
        if name in s.symbols:
            return Typed(c.SymbolVal(Affine.of(name)), DType.I64, e.span)
        if name in s.poisoned:
            raise StatementError(name)
        if name in s.tensors:
            return self._bare_tensor(e)
        scope_names = list(s.tensors) + list(s.symbols) + list(s.indices)
        raise self.rep.fail(e.span, f"unknown name '{name}'", nearest(name, scope_names))

    def _bare_tensor(self, e: ast.Name) -> Typed:
        ttype = self.scope.tensors[e.id]
        self.scope.reads.add(e.id)
        if self.scope.whole is not None and e.id in self.scope.whole:
            return Typed(c.Read(e.id, self.scope.whole[e.id], ttype.dtype), ttype.dtype, e.span)
        if ttype.rank == 0:
            return Typed(c.Read(e.id, (), ttype.dtype), ttype.dtype, e.span)
        subs = ", ".join(f"i{n}" for n in range(ttype.rank))
        raise self.rep.fail(e.span, f"'{e.id}' is a tensor of type {ttype}; index it here",
                            f"write {e.id}[{subs}] with indices defined on the left side")

    # ---- indexing -------------------------------------------------------------------------
    def _index(self, e: ast.Index) -> Typed:
        s = self.scope
        name = e.base.id
        if name in s.poisoned:
            raise StatementError(name)
        if s.fn_values is not None:
            raise self.rep.fail(e.span, "a fn works on scalars and cannot index tensors",
                                "index the tensor in the kernel and pass the element")
        if name not in s.tensors:
            what = ("an index" if name in s.indices else "a shape symbol" if name in s.symbols
                    else None)
            if what:
                raise self.rep.fail(e.base.span, f"'{name}' is {what}, not a tensor")
            raise self.rep.fail(e.base.span, f"unknown tensor '{name}'",
                                nearest(name, s.tensors))
        ttype = s.tensors[name]
        s.reads.add(name)
        if len(e.subscripts) != ttype.rank:
            raise self.rep.fail(e.span, f"'{name}' has rank {ttype.rank} ({ttype}) but "
                                f"{len(e.subscripts)} subscript"
                                f"{'s were' if len(e.subscripts) != 1 else ' was'} given")
        subs = tuple(self._subscript(name, ttype, dim, sub) for dim, sub in
                     enumerate(e.subscripts))
        return Typed(c.Read(name, subs, ttype.dtype), ttype.dtype, e.span)

    def _subscript(self, tensor: str, ttype: TensorType, dim: int, sub: ast.Subscript) -> Affine:
        if sub.extent is not None:
            raise self.rep.fail(sub.extent.span, "an extent ': ...' is only allowed in the "
                                "index list of a reduction")
        form = to_affine(sub.expr, self._resolve_subscript_name, self.rep, "a subscript")
        size = ttype.shape[dim]
        enclosing = tuple(self.scope.indices.values())
        self.scope.accesses.append(Access(tensor, dim, size, form, sub.span, enclosing))
        alone = form.as_name()
        if alone is not None and alone in self.scope.indices.values():
            self.scope.evidence.append(Evidence(alone, size, tensor, dim, sub.span))
        return form

    def _resolve_subscript_name(self, name: ast.Name) -> Affine:
        s = self.scope
        if name.id in s.indices:
            return Affine.of(s.indices[name.id])
        if name.id in s.symbols:
            return Affine.of(name.id)
        if name.id in s.tensors or name.id in (s.fn_values or {}):
            raise self.rep.fail(name.span, f"a subscript must be affine in indices and shape "
                                f"symbols; '{name.id}' is a value (data-dependent indexing is "
                                "not supported)")
        raise self.rep.fail(name.span, f"index '{name.id}' is not defined on the left side and "
                            "is not reduced",
                            f"add '{name.id}' to the left side, or reduce over it: "
                            f"sum[{name.id}](...)")

    # ---- operators ------------------------------------------------------------------------
    def _unary(self, e: ast.Unary) -> Typed:
        x = self.lower(e.operand)
        if e.op == "not":
            cond = self.coerce(x, DType.BOOL, "operand of 'not'")
            return Typed(c.Unary("not", cond, DType.BOOL), DType.BOOL, e.span)
        self._require_numeric(x, f"unary '{e.op}'")
        if e.op == "+":
            return Typed(x.expr, x.dtype, e.span, x.weak)
        if x.is_const:
            return Typed(None, x.dtype, e.span, consts.fold_unary("-", x.weak))
        if x.is_weak:
            return self._deferred(x.dtype, e.span, lambda dt: c.Unary("neg", self.coerce(x, dt),
                                                                      dt))
        return Typed(c.Unary("neg", x.expr, x.dtype), x.dtype, e.span)

    def _deferred(self, default: DType, span: Span, build: Callable[[DType], c.Expr]) -> Typed:
        """A weak, non-constant expression, built at the dtype its context gives."""
        return Typed(None, default, span, None, build)

    @staticmethod
    def _weak_kind(*ts: Typed) -> DType:
        return DType.F32 if any(t.dtype.is_float for t in ts) else DType.I64

    def _binary(self, e: ast.Binary) -> Typed:
        left, right = self.lower_all((e.left, e.right))
        if e.op in ("and", "or"):
            a = self.coerce(left, DType.BOOL, f"left operand of '{e.op}'")
            b = self.coerce(right, DType.BOOL, f"right operand of '{e.op}'")
            return Typed(c.Binary(e.op, a, b, DType.BOOL), DType.BOOL, e.span)
        if e.op in _COMPARE:
            return self.compare(_COMPARE[e.op], left, right, e.span, e.op_span, e.op)
        if e.op == "**":
            return self.power(left, right, e.span)
        return self.arith(_ARITH[e.op], left, right, e.span, e.op_span, e.op)

    def unify(self, a: Typed, b: Typed, op_span: Span, op_text: str) -> tuple[c.Expr, c.Expr,
                                                                              DType]:
        """Both operands at one dtype (weak literals adapt; strong ones must agree)."""
        if a.is_weak and not b.is_weak:
            return self.coerce(a, b.dtype, f"operand of '{op_text}'"), b.expr, b.dtype
        if b.is_weak and not a.is_weak:
            return a.expr, self.coerce(b, a.dtype, f"operand of '{op_text}'"), a.dtype
        if a.dtype is not b.dtype:
            raise self.rep.fail(op_span, f"operands of '{op_text}' have different dtypes: "
                                f"{a.dtype} and {b.dtype}", self._cast_hint(a, b))
        return a.expr, b.expr, a.dtype

    def _cast_hint(self, a: Typed, b: Typed) -> str:
        def rank(t: Typed) -> tuple[int, int]:
            return (1 if t.dtype.is_float else 0, t.dtype.bits)
        low, high = (a, b) if rank(a) <= rank(b) else (b, a)
        return f"cast one side, e.g. {high.dtype}({self._snippet(low.span)})"

    def arith(self, op: str, a: Typed, b: Typed, span: Span, op_span: Span, text: str) -> Typed:
        """`a op b` for + - * / % min max."""
        if a.is_weak and b.is_weak:
            if isinstance(a.weak, bool) or isinstance(b.weak, bool):
                raise self.rep.fail(op_span, f"'{text}' on bool values")
            if not (a.is_const and b.is_const):
                return self._deferred(self._weak_kind(a, b), span, lambda dt: c.Binary(
                    op, self.coerce(a, dt), self.coerce(b, dt), dt))
            value = self._fold(op, a, b, span)
            return Typed(None, DType.F32 if isinstance(value, float) else DType.I64, span, value)
        x, y, dtype = self.unify(a, b, op_span, text)
        if dtype is DType.BOOL:
            raise self.rep.fail(op_span, f"'{text}' on bool values",
                                f"cast them to a number first, e.g. i32({self._snippet(a.span)})")
        return Typed(c.Binary(op, x, y, dtype), dtype, span)

    def _fold(self, op: str, a: Typed, b: Typed, span: Span) -> consts.Number:
        try:
            return consts.fold_binary(op, a.weak, b.weak)  # type: ignore[arg-type]
        except consts.ConstantTooLarge:
            raise self.rep.fail(span, f"integer constant too large (more than "
                                f"{consts.MAX_CONST_BITS} bits)") from None

    def compare(self, op: str, a: Typed, b: Typed, span: Span, op_span: Span,
                text: str) -> Typed:
        """A comparison giving bool."""
        if a.is_weak and b.is_weak:
            if not (a.is_const and b.is_const):
                dt = self._weak_kind(a, b)
                return Typed(c.Binary(op, self.coerce(a, dt), self.coerce(b, dt), DType.BOOL),
                             DType.BOOL, span)
            return Typed(c.Const(consts.fold_compare(op, a.weak, b.weak), DType.BOOL),
                         DType.BOOL, span)
        x, y, _ = self.unify(a, b, op_span, text)
        return Typed(c.Binary(op, x, y, DType.BOOL), DType.BOOL, span)

    def power(self, a: Typed, b: Typed, span: Span) -> Typed:
        """`a ** b`: floats of one dtype, or an integer to a non-negative literal power."""
        if a.is_weak and b.is_weak and not (a.is_const and b.is_const):
            a = Typed(self.concrete(a), self.concrete(a).dtype, a.span)
        if a.is_weak and b.is_weak:
            value = self._fold("pow", a, b, span)
            return Typed(None, DType.F32 if isinstance(value, float) else DType.I64, span, value)
        base_dtype = a.dtype if not a.is_weak else b.dtype
        if base_dtype.is_int and not (b.is_weak and isinstance(b.weak, int) and b.weak >= 0):
            raise self.rep.fail(b.span, "an integer power needs a non-negative integer literal "
                                "exponent", f"compute in floats: f64({self._snippet(a.span)})")
        x, y, dtype = self.unify(a, b, span, "**")
        self._require_numeric(Typed(x, dtype, span), "'**'")
        return Typed(c.Binary("pow", x, y, dtype), dtype, span)

    def _require_numeric(self, t: Typed, what: str) -> None:
        if t.dtype is DType.BOOL:
            raise self.rep.fail(t.span, f"{what} needs a number, got bool",
                                f"cast it, e.g. i32({self._snippet(t.span)})")

    # ---- calls ----------------------------------------------------------------------------
    def _call(self, e: ast.Call) -> Typed:
        name = e.func.id
        dtype = DType.parse(name)
        if dtype is not None:
            return self._cast(e, dtype)
        if name == "select":
            return self._select(e)
        if name in UNARY_BUILTINS:
            return self._builtin1(e)
        if name in BINARY_BUILTINS:
            return self._builtin2(e)
        if name in self.scope.broken_fns:
            raise StatementError(name)
        if name in self.scope.fns:
            from tdsl.check.inline import inline_call
            return inline_call(self, e, self.scope.fns[name])
        if name in REDUCTIONS:
            raise self.rep.fail(e.func.span, f"'{name}' is a reduction; give it its indices",
                                f"write {name}[i](...) over an index i")
        candidates = (UNARY_BUILTINS | BINARY_BUILTINS | {"select"} | set(self.scope.fns))
        raise self.rep.fail(e.func.span, f"unknown function '{name}'", nearest(name, candidates))

    def _arity(self, e: ast.Call, n: int) -> None:
        if len(e.args) != n:
            raise self.rep.fail(e.span, f"'{e.func.id}' takes {n} argument{'s' if n > 1 else ''}"
                                f", got {len(e.args)}")

    def _cast(self, e: ast.Call, dtype: DType) -> Typed:
        self._arity(e, 1)
        x = self.lower(e.args[0])
        if x.is_const:
            return Typed(c.Const(consts.cast_constant(x.weak, dtype), dtype), dtype, e.span)
        if x.is_weak:
            x = Typed(self.concrete(x), x.dtype, x.span)
        if x.dtype is dtype:
            return Typed(x.expr, dtype, e.span)
        return Typed(c.Cast(x.expr, dtype), dtype, e.span)

    def _select(self, e: ast.Call) -> Typed:
        self._arity(e, 3)
        cond, a, b = self.lower_all(e.args)
        cexpr = self.coerce(cond, DType.BOOL, "condition of select")
        if a.is_weak and b.is_weak:
            return self._deferred(self._weak_kind(a, b), e.span, lambda dt: c.Select(
                cexpr, self.coerce(a, dt), self.coerce(b, dt), dt))
        x, y, dtype = self.unify(a, b, e.func.span, "select")
        return Typed(c.Select(cexpr, x, y, dtype), dtype, e.span)

    def _builtin1(self, e: ast.Call) -> Typed:
        self._arity(e, 1)
        name = e.func.id
        x = self.lower(e.args[0])
        if x.is_weak and not x.is_const:
            kind = DType.F32 if name in FLOAT_ONLY_BUILTINS else x.dtype
            return self._deferred(kind, e.span, lambda dt: c.Unary(name, self.coerce(x, dt), dt))
        if x.is_weak:
            if isinstance(x.weak, bool):
                raise self.rep.fail(x.span, f"'{name}' needs a number, got bool")
            value = x.weak if name not in FLOAT_ONLY_BUILTINS else int_to_float(
                x.weak) if isinstance(x.weak, int) else float(x.weak)
            return Typed(None, x.dtype if name not in FLOAT_ONLY_BUILTINS else DType.F32, e.span,
                         consts.fold_unary(name, value))
        if name in FLOAT_ONLY_BUILTINS and not x.dtype.is_float:
            raise self.rep.fail(x.span, f"'{name}' needs a float argument, got {x.dtype}",
                                f"cast it: f32({self._snippet(x.span)})")
        self._require_numeric(x, f"'{name}'")
        return Typed(c.Unary(name, x.expr, x.dtype), x.dtype, e.span)

    def _builtin2(self, e: ast.Call) -> Typed:
        name = e.func.id
        if len(e.args) == 1 and name in REDUCTIONS:
            raise self.rep.fail(e.span, f"'{name}' of one argument: the element-wise {name} "
                                "takes two", f"for a reduction write {name}[i](...)")
        self._arity(e, 2)
        a, b = self.lower_all(e.args)
        if name == "pow":
            return self.power(a, b, e.span)
        return self.arith(name, a, b, e.span, e.func.span, name)

    # ---- reductions -----------------------------------------------------------------------
    def _reduce(self, e: ast.Reduce) -> Typed:
        from tdsl.check.reduce import lower_reduce
        return lower_reduce(self, e)

    def _snippet(self, span: Span) -> str:
        text = " ".join(self.rep.text(span).split())
        return text if len(text) <= 40 else text[:37] + "..."


def _short(value: consts.Number) -> str:
    """A number for a message: very long integers shortened."""
    text = str(value)
    return text if len(text) <= 40 else f"{text[:12]}...{text[-6:]} ({len(text)} digits)"

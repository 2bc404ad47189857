"""A generator of random well-typed tdsl kernels (hypothesis strategies) and the differential
harness that runs them on every target against the reference interpreter.

`cases()` draws a `Case`: the text of a kernel (with `fn` helpers) drawn from the whole
language, the values of its shape symbols, the seed of its inputs and, for every output, how
exactly a compiled target must reproduce the reference:

- EXACT: bit for bit (nan matches nan, -0.0 matches 0.0). Integer and bool values are always
  exact: every float that reaches a discontinuity (comparison, floor/ceil, cast to an integer,
  `%`, the domain of log/sqrt/pow) is itself exact.
- ULP: a few ulp apart (transcendental builtins, pow); finiteness must agree.
- LOOSE: the language lets targets differ more: float sum/prod/mean reductions may be
  reassociated, `a * b + c` may become an fma, and f16/bf16 intermediate values may be kept
  in f32. Compared with a tolerance scaled by the sensitivity of the reference to a 1-2 ulp
  perturbation of the float inputs, and by the number of terms the case's float reductions
  accumulate (`Case.terms`: a reassociated n-term sum may differ by about n/2 ulp of the
  result); with extreme inputs, a difference in overflow is allowed.
- COARSE: an inexact value computed in a narrower float dtype and widened (`f64(log(x))` with
  an f32 `x`): a few ulp of the narrow dtype, whatever the output's dtype.

The generator tracks these levels bottom-up (`Ex.level`) and never lets an inexact float
decide a discontinuity, so a mismatch is a bug of a target (or of the reference), never
rounding noise. `run_case` runs a case and returns the problems found; `save_case` writes a
failing case to the regression corpus (tests/fuzz/corpus/NNN.tdsl + NNN.json).
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import importlib.util
import json
import math
import os
import re
import select
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from hypothesis import strategies as st

import tdsl
from tdsl import api
from tdsl.check import check_source
from tdsl.runtime.reference import ReferenceExecutable
from tdsl.types import Affine, FloorDiv

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from guarded import guarded_copy, guarded_empty  # noqa: E402

FLOATS = ("f32", "f64", "f16", "bf16")
INTS = ("i32", "i64", "i8", "i16", "u8")
LOW = ("f16", "bf16")
DTYPES = FLOATS + INTS + ("bool",)
NUMPY = {"bool": np.dtype(np.bool_), "i8": np.dtype(np.int8), "i16": np.dtype(np.int16),
         "i32": np.dtype(np.int32), "i64": np.dtype(np.int64), "u8": np.dtype(np.uint8),
         "f16": np.dtype(np.float16), "bf16": np.dtype(ml_dtypes.bfloat16),
         "f32": np.dtype(np.float32), "f64": np.dtype(np.float64)}
INT_RANGE = {"i8": (-128, 127), "i16": (-32768, 32767), "i32": (-2**31, 2**31 - 1),
             "i64": (-2**63, 2**63 - 1), "u8": (0, 255), "bool": (0, 1)}
UNARY_FLOAT = ("exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "erf", "floor",
               "ceil")
EXACT, ULP, LOOSE, COARSE = 0, 1, 2, 3
LEVEL_NAMES = ("exact", "ulp", "loose", "coarse")
_BITS = {"f16": 11, "bf16": 8, "f32": 24, "f64": 53}  # significand bits
CORPUS = Path(os.environ.get("TDSL_FUZZ_CORPUS", Path(__file__).resolve().parent / "corpus"))
MAX_VOLUME = 300_000  # largest iteration domain of one statement (with its reductions)

# Constructs with an open bug: not generated unless TDSL_FUZZ_KNOWN=1, so the short fuzz run
# stays green; each has a minimal repro in the corpus.
KNOWN_BUGS: set[tuple[str, ...]] = set()  # none open (001-009 are fixed)


# Problems of open bugs that only a finished fix can avoid: (a word of the source, a pattern
# of the problem). Unless TDSL_FUZZ_KNOWN=1, a case whose every problem is known passes.
KNOWN_PROBLEMS: list[tuple[str, str]] = []


def _known_allowed() -> bool:
    return os.environ.get("TDSL_FUZZ_KNOWN", "0") == "1"


def known(case: Case, problems: list[str]) -> bool:
    """True when every problem is one of an open bug (see KNOWN_PROBLEMS)."""
    return not _known_allowed() and all(
        any(word in case.source and re.search(pattern, p) for word, pattern in KNOWN_PROBLEMS)
        for p in problems)


# ---- expressions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ex:
    """A generated expression: its text, dtype ('weak' literals adapt to the other operand),
    how exactly targets must agree on it, and what its reads tell the checker."""

    text: str
    dtype: str
    level: int = EXACT
    mul: bool = False        # a float product on top: an add above may contract it to an fma
    unrounded: bool = False  # an f16/bf16 value a target may hold in f32 without rounding
    weak: bool = False
    seen: frozenset[str] = frozenset()                      # indices read alone (evidence)
    shapes: frozenset[tuple[Affine, ...]] = frozenset()     # whole operands' shapes

    @property
    def pure(self) -> bool:
        """Exact and rounded: may decide a discontinuity."""
        return self.level == EXACT and not self.unrounded


def _mk(text: str, dtype: str, parts: tuple[Ex, ...] = (), level: int = EXACT,
        mul: bool = False, unrounded: bool = False) -> Ex:
    seen = frozenset().union(*(p.seen for p in parts))
    shapes = frozenset().union(*(p.shapes for p in parts))
    return Ex(text, dtype, level, mul, unrounded, False, seen, shapes)


def _weak(text: str, parts: tuple[Ex, ...] = ()) -> Ex:
    return replace(_mk(text, "weak", parts), weak=True)


@dataclass
class Tensor:
    """A name a kernel may read: an input, a scalar parameter, a defined local or output."""

    name: str
    dtype: str
    dims: tuple[Affine, ...]
    scalar: bool = False
    level: int = EXACT
    mul: bool = False
    unrounded: bool = False

    @property
    def pure(self) -> bool:
        return self.level == EXACT and not self.unrounded


@dataclass(frozen=True)
class Index:
    """An index variable in scope, its extent and whether the extent is given (an output's
    or annotated dimension, an explicit reduction extent) or may be inferred from reads."""

    name: str
    extent: Affine
    fixed: bool


@dataclass(frozen=True)
class Fn:
    """A generated `fn` helper."""

    name: str
    params: tuple[str, ...]      # dtypes
    result: str
    level: int                   # with exact arguments
    mul: bool
    unrounded: bool
    needs_pure_args: bool        # its body has a discontinuity
    adds: bool                   # its body adds (an argument product could become an fma)


@dataclass
class Ctx:
    """Where an expression is generated."""

    indices: list[Index] = field(default_factory=list)
    whole: tuple[Affine, ...] | None = None      # a whole-tensor statement's shape
    fn_vals: dict[str, Ex] | None = None         # inside a fn body
    volume: int = 1
    flags: dict[str, bool] = field(default_factory=lambda: {"disc": False, "adds": False})
    terms: int = 1  # terms accumulated by the enclosing float sum/mean/prod reductions


def _text(form: Affine) -> str:
    return str(form)


def _dims_text(dims: tuple[Affine, ...]) -> str:
    return ", ".join(_text(d) for d in dims)


class Builder:
    """Draws one kernel; `draw` is hypothesis's."""

    def __init__(self, draw, symbols: dict[str, int], allow_known: bool):
        self.draw = draw
        self.symbols = symbols
        self.tensors: list[Tensor] = []
        self.fns: list[Fn] = []
        self.allow_known = allow_known
        self.terms = 1  # terms all float sum/mean/prod reductions accumulate (`Case.terms`)

    # ---- small helpers --------------------------------------------------------------------
    def pick(self, options):
        return self.draw(st.sampled_from(list(options)))

    def chance(self, p: float) -> bool:
        # hypothesis favours small draws (and shrinks towards them): they mean "no"
        return self.draw(st.integers(0, 999)) >= 1000 - int(p * 1000)

    def value(self, form: Affine) -> int:
        return form.evaluate(self.symbols)

    def dim_pool(self) -> list[Affine]:
        """Dimensions for tensors and extents (non-negative at this call)."""
        pool: list[Affine] = [Affine.of(1), Affine.of(2), Affine.of(3)]
        names = sorted(self.symbols)
        for s in names:
            n = Affine.of(s)
            pool += [n, n, n, n + 1, n + 2, n.scale(2), n.floordiv(2), (n + 1).floordiv(2),
                     n - 1, n.scale(2) + 1]
        for a, b in zip(names, names[1:]):
            pool.append(Affine.of(a) + Affine.of(b))
        return [d for d in pool if self.value(d) >= 0]

    def dims(self, rank: int) -> tuple[Affine, ...]:
        """A shape: often one of an existing tensor (so reads line up), else random."""
        shaped = [t.dims for t in self.tensors if t.dims]
        if shaped and self.chance(0.6):
            dims = self.pick(shaped)
            if self.chance(0.3):
                dims = dims[self.draw(st.integers(0, len(dims) - 1)):]
            if self.chance(0.2):
                dims = (self.pick(self.dim_pool()),) + dims
        else:
            dims = tuple(self.pick(self.dim_pool()) for _ in range(rank))
        while dims and math.prod(max(self.value(d), 1) for d in dims) > MAX_VOLUME:
            dims = dims[:-1]
        return dims

    # ---- literals -------------------------------------------------------------------------
    def literal(self, dtype: str) -> str:
        """Text of a weak literal that the checker accepts for `dtype`."""
        if dtype == "bool":
            return self.pick(["true", "false"])
        if dtype in INTS:
            low, high = INT_RANGE[dtype]
            low = max(low, -(2**63) + 1)
            value = self.pick([0, 1, 2, 3, -1, 7, -5, 100, low, high, 0x1F, 64])
            if not low <= value <= high:
                value = self.draw(st.integers(low, high))
            if value < 0:
                return f"(-{-value})"
            return self.pick([str(value), hex(value)]) if value > 9 else str(value)
        text = self.pick(["1.0", "2", "0.5", "3", "-1.5", "0.0", "-0.0", "1e-3", ".25", "pi",
                          "inf", "-inf", "nan", "1e999", "65504.0", "1e30", "1e-40", "5e-324",
                          "1.0004882812500002", "1.0039062500000002", "2.5", "100", "7"])
        return f"({text})" if text.startswith("-") else text

    def const_cast(self, dtype: str) -> Ex:
        """`dtype(literal)`: a strong constant, folded by the checker."""
        if dtype == "bool":
            return _mk(self.pick(["true", "false", "bool(0)", "bool(nan)", "bool(-0.0)",
                                  "bool(2)"]), "bool")
        if dtype in INTS:
            text = self.pick(["300", "-129", "70000", "1e10", "-1e10", "nan", "2.9", "-2.9",
                              "inf", "-inf", "255.9", "9223372036854775807", "0x7F"])
            text = f"({text})" if text.startswith("-") else text
            return _mk(f"{dtype}({text})", dtype)
        return _mk(f"{dtype}({self.literal(dtype)})", dtype)

    # ---- leaves ---------------------------------------------------------------------------
    def leaf(self, dtype: str, ctx: Ctx, pure: bool) -> Ex:
        readable = [t for t in self.readable(dtype, ctx) if not pure or t.pure]
        options = ["read"] * 12 if readable else []
        options.append("const")
        vals: list[str] = []
        if ctx.fn_vals is not None:
            vals = [n for n, e in ctx.fn_vals.items() if e.dtype == dtype and (
                not pure or e.pure)]
            options = (["fnval"] * 6 if vals else []) + options
        elif dtype != "bool":
            options += ["index"] * (3 if ctx.indices else 0) + ["symbol"] * (not readable)
        if not readable and ctx.fn_vals is None and self.chance(0.6):
            # a float read cast to an integer decides a discontinuity: it must be exact
            others = [t for t in self.readable(None, ctx) if t.dtype != dtype and (
                t.pure or not pure and (t.dtype not in FLOATS or dtype in FLOATS)) and (
                self.allow_known or ("cast", t.dtype, dtype) not in KNOWN_BUGS)]
            if others:
                found = self.read(self.pick(others), ctx)
                if found is not None:
                    return self.cast_ex(found, dtype)
        kind = self.pick(options)
        if kind == "read":
            for _ in range(3):
                found = self.read(self.pick(readable), ctx)
                if found is not None:
                    return found
            kind = "const"
        if kind == "fnval":
            name = self.pick(vals)
            e = ctx.fn_vals[name]  # type: ignore[index]
            return _mk(name, dtype, (), e.level, e.mul, e.unrounded)
        if kind in ("index", "symbol"):
            if kind == "index":
                idx = self.pick(ctx.indices)
                text = self.pick([idx.name, f"{idx.name} + 1", f"{idx.name} * 3",
                                  f"{idx.name} - 2"])
            else:
                text = self.pick(sorted(self.symbols))
            return self.cast_ex(_mk(f"({text})", "i64"), dtype)
        return self.const_cast(dtype)

    def readable(self, dtype: str | None, ctx: Ctx) -> list[Tensor]:
        """The tensors of `dtype` (any when None) that an expression in `ctx` may read."""
        return [t for t in self.tensors if dtype in (None, t.dtype) and (
            ctx.whole is None or not t.dims or _broadcasts(t.dims, ctx.whole))]

    def read(self, t: Tensor, ctx: Ctx) -> Ex | None:
        if not t.dims or ctx.whole is not None:
            shapes = frozenset({t.dims}) if t.dims else frozenset()
            return Ex(t.name, t.dtype, t.level, t.mul, t.unrounded, shapes=shapes)
        subs: list[str] = []
        seen: set[str] = set()
        for dim in t.dims:
            found = self.subscript(dim, ctx)
            if found is None:
                return None
            subs.append(found[0])
            seen |= found[1]
        return Ex(f"{t.name}[{', '.join(subs)}]", t.dtype, t.level, t.mul, t.unrounded,
                  seen=frozenset(seen))

    def subscript(self, size: Affine, ctx: Ctx) -> tuple[str, set[str]] | None:
        """An affine subscript of a dimension of `size` that stays in range (and the index
        it is, when it is one index alone), or None."""
        indices = ctx.indices
        equal = [ix for ix in indices if ix.extent == size]
        kind = self.pick(["bare", "bare", "shift", "reverse", "stride", "two", "div",
                          "symbol", "const"])
        if kind == "bare" and equal:
            ix = self.pick(equal)
            return ix.name, {ix.name}
        form = Affine.of(0)
        if indices and kind != "const":
            first = self.pick(indices)
            coef = {"reverse": -1, "stride": self.pick([2, 3, -2])}.get(kind, 1)
            form = Affine.of(first.name).scale(coef)
            if kind == "two" and len(indices) > 1:
                form = form + Affine.of(self.pick([ix for ix in indices if ix is not first]).name)
            if kind == "div":
                form = Affine(((FloorDiv(Affine.of(first.name), self.pick([2, 3])), 1),), 0)
        if kind in ("symbol", "reverse"):
            form = form + Affine.of(self.pick(sorted(self.symbols))).scale(self.pick([1, -1]))
        ranges = {ix.name: ix.extent for ix in indices}
        low, high = form.extremes(ranges)
        empty = any(self.value(ix.extent) <= 0 for ix in indices)
        # Over an empty domain any subscript is fine at this call, but one that is out of
        # range for every size is still a compile error: pick it in range for larger sizes.
        env = {s: v + 4 for s, v in self.symbols.items()} if empty else self.symbols
        room_low, room_high = -low.evaluate(env), size.evaluate(env) - 1 - high.evaluate(env)
        if room_low > room_high:
            return None
        k = self.draw(st.integers(room_low, min(room_high, room_low + 3)))
        form = form + k
        alone = form.as_name()
        if alone is not None:
            ix = next(ix for ix in indices if ix.name == alone)
            if ix.extent != size and not ix.fixed:
                return None  # would be evidence of another range
            return alone, {alone} if ix.extent == size else set()
        if (low + k).provably_negative() or (size - 1 - (high + k)).provably_negative():
            return None
        return _text(form), set()

    # ---- expressions ----------------------------------------------------------------------
    def expr(self, dtype: str, ctx: Ctx, depth: int, pure: bool = False) -> Ex:
        """A strong expression of exactly `dtype`; `pure` asks for an exact, rounded value."""
        if depth <= 0 or self.chance(0.2):
            return self.leaf(dtype, ctx, pure)
        if dtype == "bool":
            return self.boolean(ctx, depth)
        kinds = ["binary"] * 4 + ["unary"] * 2 + ["cast"] * 2 + ["select"]
        if ctx.fn_vals is None:
            kinds += ["reduce"] * 2
        callable_fns = [f for f in self.fns if f.result == dtype]
        kinds += ["call"] if callable_fns else []
        kind = self.pick(kinds)
        if kind == "binary":
            e = self.binary(dtype, ctx, depth, pure)
        elif kind == "unary":
            e = self.unary(dtype, ctx, depth, pure)
        elif kind == "cast":
            e = self.cast(dtype, ctx, depth, pure)
        elif kind == "select":
            e = self.select(dtype, ctx, depth, pure)
        elif kind == "call":
            e = self.call(self.pick(callable_fns), ctx, depth, pure)
        else:
            e = self.reduce(dtype, ctx, depth, pure)
        if e is None or pure and not e.pure:
            return self.leaf(dtype, ctx, pure)
        return e

    def operand(self, dtype: str, ctx: Ctx, depth: int, pure: bool) -> Ex:
        """A strong operand, or sometimes a weak literal or weak select of literals (the
        caller pairs it with a strong one)."""
        if dtype != "bool" and self.chance(0.2):
            return _weak(self.literal(dtype))
        if dtype != "bool" and self.chance(0.04):
            cond = self.boolean(ctx, 1)
            return _weak(f"select({cond.text}, {self.literal(dtype)}, {self.literal(dtype)})",
                         (cond,))
        return self.expr(dtype, ctx, depth - 1, pure)

    def pair(self, dtype: str, ctx: Ctx, depth: int, pure: bool) -> tuple[Ex, Ex]:
        a = self.operand(dtype, ctx, depth, pure)
        b = self.expr(dtype, ctx, depth - 1, pure) if a.weak else self.operand(
            dtype, ctx, depth, pure)
        return (b, a) if self.chance(0.5) else (a, b)

    def binary(self, dtype: str, ctx: Ctx, depth: int, pure: bool) -> Ex:
        float_ = dtype in FLOATS
        ops = ["+", "-", "*", "/", "%", "min", "max"]
        ops += ["**"] if dtype in INTS or float_ and not pure else []
        op = self.pick(ops)
        if op == "**" and not float_:
            base = self.expr(dtype, ctx, depth - 1)
            n = self.pick([2, 0, 1, 3, 5])
            return _mk(self.pick([f"({base.text}) ** {n}", f"pow({base.text}, {n})"]), dtype,
                       (base,))
        if op == "**":
            ctx.flags["disc"] = True  # nan for a negative base: keep the operands exact
            a, b = self.pair(dtype, ctx, depth, True)
            text = self.pick([f"({a.text} ** {b.text})", f"pow({a.text}, {b.text})"])
            return _mk(text, dtype, (a, b), ULP if dtype not in LOW else LOOSE,
                       unrounded=dtype in LOW)
        if float_ and op == "%":
            ctx.flags["disc"] = True
        a, b = self.pair(dtype, ctx, depth, pure or float_ and op == "%")
        text = f"{op}({a.text}, {b.text})" if op in ("min", "max") else \
            f"({a.text} {op} {b.text})"
        if not float_:
            return _mk(text, dtype, (a, b))
        strong = [e for e in (a, b) if not e.weak]
        level = max(e.level for e in strong)
        unrounded_in = any(e.unrounded for e in strong)
        if op in ("min", "max"):  # commutes with rounding
            return _mk(text, dtype, (a, b), level, unrounded=unrounded_in)
        if op in ("+", "-"):
            ctx.flags["adds"] = True
            if any(e.mul for e in strong):
                level = LOOSE  # may be contracted into an fma
            if level == ULP:  # cancellation: an operand's few ulp are not the difference's
                level = LOOSE
        if unrounded_in:
            level = LOOSE
        return _mk(text, dtype, (a, b), level, mul=op == "*", unrounded=dtype in LOW)

    def unary(self, dtype: str, ctx: Ctx, depth: int, pure: bool) -> Ex:
        ops = ["neg", "abs", "relu"] + (list(UNARY_FLOAT) if dtype in FLOATS else [])
        op = self.pick(ops)
        needs_pure = op in ("floor", "ceil")
        if needs_pure:
            ctx.flags["disc"] = True
        x = self.expr(dtype, ctx, depth - 1, pure or needs_pure)
        if op == "neg":
            return _mk(f"-({x.text})", dtype, (x,), x.level, x.mul, x.unrounded)
        if op in ("abs", "relu", "floor", "ceil"):
            return _mk(f"{op}({x.text})", dtype, (x,), x.level, unrounded=x.unrounded)
        arg = x.text
        if op in ("log", "sqrt", "rsqrt") and not x.pure:
            arg = f"abs({arg})"  # keep an inexact argument off the edge of the nan domain
        level = max(x.level, EXACT if op == "sqrt" else ULP)
        if x.unrounded:
            level = LOOSE
        return _mk(f"{op}({arg})", dtype, (x,), level, unrounded=dtype in LOW)

    def cast_ex(self, x: Ex, dtype: str) -> Ex:
        if x.dtype == dtype:
            return x
        level = LOOSE if x.unrounded else x.level
        both_float = x.dtype in FLOATS and dtype in FLOATS
        if both_float and level > EXACT and _BITS[x.dtype] < _BITS[dtype]:
            level = COARSE  # the narrow dtype's rounding, seen at the wide one's precision
        return _mk(f"{dtype}({x.text})", dtype, (x,), level if dtype in FLOATS else EXACT,
                   mul=x.mul and both_float)

    def dtype_for(self, ctx: Ctx | None = None) -> str:
        """A dtype, often one that a tensor in reach has."""
        have = sorted({t.dtype for t in (self.tensors if ctx is None else
                                         self.readable(None, ctx))})
        return self.pick(have) if have and self.chance(0.7) else self.pick(DTYPES)

    def cast(self, dtype: str, ctx: Ctx, depth: int, pure: bool) -> Ex:
        src = self.dtype_for(ctx)
        if not self.allow_known and ("cast", src, dtype) in KNOWN_BUGS:
            src = dtype
        needs_pure = src in FLOATS and dtype not in FLOATS
        if needs_pure:
            ctx.flags["disc"] = True
        x = self.expr(src, ctx, depth - 1, pure or needs_pure)
        if src == dtype and self.chance(0.1):
            return _mk(f"{dtype}({x.text})", dtype, (x,), x.level, x.mul, x.unrounded)
        return self.cast_ex(x, dtype)

    def select(self, dtype: str, ctx: Ctx, depth: int, pure: bool) -> Ex:
        cond = self.boolean(ctx, depth - 1)
        a, b = self.pair(dtype, ctx, depth, pure)
        strong = [e for e in (a, b) if not e.weak]
        return _mk(f"select({cond.text}, {a.text}, {b.text})", dtype, (cond, a, b),
                   max(e.level for e in strong), unrounded=any(e.unrounded for e in strong))

    def boolean(self, ctx: Ctx, depth: int) -> Ex:
        ctx.flags["disc"] = True
        kinds = ["compare"] * 3 + ["leaf"]
        kinds += ["index"] * 2 if ctx.fn_vals is None and ctx.indices else []
        kinds += ["logic", "not", "cast"] if depth > 0 else []
        kind = self.pick(kinds)
        if kind == "leaf":
            return self.leaf("bool", ctx, True)
        if kind == "index":
            a = self.pick(ctx.indices).name
            b = self.pick([ix.name for ix in ctx.indices] + ["0", "1", "2"] + sorted(
                f"{s} - 1" for s in self.symbols))
            return _mk(f"({a} {self.pick(['<', '<=', '>', '>=', '==', '!='])} {b})", "bool")
        if kind == "logic":
            a, b = self.boolean(ctx, depth - 1), self.boolean(ctx, depth - 1)
            return _mk(f"({a.text} {self.pick(['and', 'or'])} {b.text})", "bool", (a, b))
        if kind == "not":
            a = self.boolean(ctx, depth - 1)
            return _mk(f"(not {a.text})", "bool", (a,))
        if kind == "cast":
            x = self.expr(self.pick([d for d in DTYPES if d != "bool"]), ctx, depth - 1, True)
            return _mk(f"bool({x.text})", "bool", (x,))
        src = self.pick(DTYPES)
        ops = ["==", "!="] if src == "bool" else ["<", "<=", ">", ">=", "==", "!="]
        a, b = self.pair(src, ctx, max(depth, 1), True)
        return _mk(f"({a.text} {self.pick(ops)} {b.text})", "bool", (a, b))

    def call(self, fn: Fn, ctx: Ctx, depth: int, pure: bool) -> Ex:
        args = []
        for dt in fn.params:
            if dt != "bool" and self.chance(0.15):
                args.append(_weak(self.literal(dt)))
            else:
                args.append(self.expr(dt, ctx, depth - 1, pure or fn.needs_pure_args))
        strong = [a for a in args if not a.weak]
        level = max([fn.level] + [a.level for a in strong])
        if any(a.mul for a in strong) and fn.adds or any(a.unrounded for a in strong):
            level = LOOSE
        ctx.flags["disc"] = ctx.flags["disc"] or fn.needs_pure_args
        ctx.flags["adds"] = ctx.flags["adds"] or fn.adds
        return _mk(f"{fn.name}({', '.join(a.text for a in args)})", fn.result, tuple(args),
                   level, fn.mul, fn.unrounded or fn.result in LOW and level > EXACT)

    def reduce(self, dtype: str, ctx: Ctx, depth: int, pure: bool) -> Ex | None:
        ops = ["max", "min"] if pure and dtype in FLOATS else ["sum", "max", "min", "prod"]
        ops += ["mean"] if dtype in FLOATS and not pure else []
        op = self.pick(ops)
        new: list[Index] = []
        volume = ctx.volume
        taken = {ix.name for ix in ctx.indices}
        for _ in range(self.pick([1, 1, 2, 3])):
            extent = self.pick(self.dim_pool())
            size = max(self.value(extent), 1)
            if volume * size > MAX_VOLUME:
                break
            volume *= size
            name = self.pick([n for n in "klpqrstuvw" if n not in taken])
            taken.add(name)
            new.append(Index(name, extent, fixed=self.chance(0.2)))
        if not new:
            return None
        terms = ctx.terms
        if dtype in FLOATS and op not in ("max", "min"):
            terms *= math.prod(max(self.value(ix.extent), 1) for ix in new)
            self.terms += terms  # nested sums may be fused into one accumulation
        inner = Ctx(ctx.indices + new, None, None, volume, ctx.flags, terms)
        body = self.expr(dtype, inner, depth - 1, pure)
        heads = [ix.name if ix.name in body.seen and not ix.fixed else
                 f"{ix.name}: {_text(ix.extent)}" for ix in new]
        level = body.level
        if dtype in FLOATS and op not in ("max", "min") or body.unrounded:
            level = LOOSE
        if dtype in FLOATS:
            ctx.flags["adds"] = True
        return _mk(f"{op}[{', '.join(heads)}]({body.text})", dtype, (body,), level)

    # ---- fns ------------------------------------------------------------------------------
    def fn(self) -> str:
        name = f"g{len(self.fns)}"
        params = [self.pick(DTYPES) for _ in range(self.pick([1, 2, 3]))]
        result = self.pick(DTYPES)
        vals = {f"a{n}": _mk(f"a{n}", dt) for n, dt in enumerate(params)}
        ctx = Ctx(fn_vals=vals)
        lines = []
        for n in range(self.pick([0, 1, 2])):
            dt = self.pick(DTYPES)
            value = self.expr(dt, ctx, 2)
            annotation = f": {dt}" if self.chance(0.5) else ""
            lines.append(f"    let v{n}{annotation} = {value.text}")
            vals[f"v{n}"] = _mk(f"v{n}", dt, (), value.level, value.mul, value.unrounded)
        value = self.expr(result, ctx, 3)
        lines.append(f"    return {value.text}")
        head = ", ".join(f"a{n}: {dt}" for n, dt in enumerate(params))
        self.fns.append(Fn(name, tuple(params), result, value.level, value.mul,
                           value.unrounded, ctx.flags["disc"], ctx.flags["adds"]))
        return f"fn {name}({head}) -> {result} {{\n" + "\n".join(lines) + "\n}\n"

    # ---- statements -----------------------------------------------------------------------
    def statement(self, target: str, dtype: str, dims: tuple[Affine, ...] | None) -> tuple[
            str, Tensor]:
        """One statement defining `target`: an output of shape `dims`, or a local (None)."""
        output = dims is not None
        if dims is None:
            kind = self.pick(["index", "index", "whole", "let"])
            dims = () if kind == "let" else self.dims(self.pick([1, 2, 3, 4]))
        else:
            kind = self.pick(["index", "index", "whole"])
        kind = kind if dims else "whole"
        volume = math.prod(max(self.value(d), 1) for d in dims)
        depth = self.pick([2, 3, 4, 1])
        annotation = f": {dtype}[{_dims_text(dims)}]"
        if kind == "index":
            names = list("ijmnoxyzab")[:len(dims)]
            indices = [Index(n, d, fixed=output) for n, d in zip(names, dims)]
            value = self.expr(dtype, Ctx(indices, volume=volume), depth)
            inferable = all(n in value.seen for n in names)
            ann = "" if output or inferable and self.chance(0.7) else annotation
            text = f"{target}[{', '.join(names)}]{ann} = {value.text}"
        else:
            value = self.expr(dtype, Ctx(whole=dims, volume=volume), depth)
            shape = _broadcast(value.shapes)
            if output:
                text = f"{target} = {value.text}"
            elif not dims:
                text = self.pick([f"let {target} = {value.text}",
                                  f"let {target}: {dtype} = {value.text}",
                                  f"{target} = {value.text}"])
            elif shape == dims and self.chance(0.7):
                text = f"{target} = {value.text}"
            else:
                text = f"{target}{annotation} = {value.text}"
        return text, Tensor(target, dtype, dims, False, value.level, value.mul, value.unrounded)


def _broadcasts(dims: tuple[Affine, ...], shape: tuple[Affine, ...]) -> bool:
    if len(dims) > len(shape):
        return False
    one = Affine.of(1)
    return all(d == s or d == one for d, s in zip(dims, shape[len(shape) - len(dims):]))


def _broadcast(shapes) -> tuple[Affine, ...]:
    rank = max((len(s) for s in shapes), default=0)
    result = [Affine.of(1)] * rank
    for s in shapes:
        for k, d in enumerate(s):
            if d != Affine.of(1):
                result[k + rank - len(s)] = d
    return tuple(result)


# ---- cases ---------------------------------------------------------------------------------


@dataclass
class Case:
    """A generated kernel and how to run it."""

    source: str
    symbols: dict[str, int]
    seed: int
    special: bool
    layout: int
    levels: dict[str, int]
    kernel: str = "k"
    inputs: list | None = None  # explicit input values (hand-written repros), else the seed's
    terms: int = 1  # terms the float reductions accumulate, all together (LOOSE tolerance)

    def to_json(self) -> dict:
        data = {"kernel": self.kernel, "symbols": self.symbols, "seed": self.seed,
                "special": self.special, "layout": self.layout,
                "levels": {k: LEVEL_NAMES[v] for k, v in self.levels.items()}}
        if self.inputs is not None:
            data["inputs"] = self.inputs
        if self.terms > 1:
            data["terms"] = self.terms
        return data

    @staticmethod
    def from_json(source: str, data: dict) -> Case:
        return Case(source, dict(data["symbols"]), int(data["seed"]), bool(data["special"]),
                    int(data.get("layout", 0)),
                    {k: LEVEL_NAMES.index(v) for k, v in data["levels"].items()},
                    data.get("kernel", "k"), data.get("inputs"), int(data.get("terms", 1)))


@st.composite
def cases(draw, allow_known: bool | None = None) -> Case:
    """A random kernel over the whole language, with its symbols, input seed and layout."""
    allow_known = _known_allowed() if allow_known is None else allow_known
    names = draw(st.lists(st.sampled_from(["N", "M", "K", "L"]), min_size=1, max_size=3,
                          unique=True))
    # mostly small sizes; sometimes ones that run vectorized main loops and their remainders,
    # rarely one past the size where loops run on several threads
    symbols = {n: draw(st.sampled_from([3, 1, 2, 4, 5, 0, 7, 6, 17, 33, 100, 257] * 2
                                       + [140_001])) for n in names}
    b = Builder(draw, symbols, allow_known)
    items = [b.fn() for _ in range(b.pick([0, 0, 1, 2]))]
    params: list[str] = []
    for n in range(draw(st.integers(1, 4))):
        dtype = b.pick(DTYPES)
        dims = b.dims(b.pick([1, 2, 0, 3, 4]))
        scalar = not dims and b.chance(0.6)
        b.tensors.append(Tensor(f"x{n}", dtype, dims, scalar))
        params.append(f"x{n}: {dtype}" if scalar else f"x{n}: {dtype}[{_dims_text(dims)}]")
    bound = {d.as_name() for t in b.tensors for d in t.dims}
    for s in names:
        if s not in bound:
            dtype = b.pick(DTYPES)
            b.tensors.append(Tensor(f"w{s.lower()}", dtype, (Affine.of(s),)))
            params.append(f"w{s.lower()}: {dtype}[{s}]")
    statements: list[str] = []
    outputs: list[str] = []
    levels: dict[str, int] = {}
    n_locals = draw(st.integers(0, 3))
    n_outputs = draw(st.integers(1, 3))
    for n in range(n_locals + n_outputs):
        output = n >= n_locals
        dtype = b.dtype_for()
        target = f"y{n - n_locals}" if output else f"t{n}"
        dims = b.dims(b.pick([1, 2, 0, 3, 4])) if output else None
        text, tensor = b.statement(target, dtype, dims)
        statements.append(text)
        b.tensors.append(tensor)
        if output:
            outputs.append(f"{target}: {dtype}[{_dims_text(tensor.dims)}]")
            levels[target] = tensor.level
    if b.chance(0.5):
        order = draw(st.permutations(range(len(statements))))
        statements = [statements[i] for i in order]
    body = "\n".join(f"    {s}" for s in statements)
    kernel = (f"kernel k({', '.join(params)})\n        -> ({', '.join(outputs)}) {{\n"
              f"{body}\n}}\n")
    source = "\n".join(items + [kernel])
    seed = draw(st.integers(0, 2**32 - 1))
    special = draw(st.booleans())
    layout = draw(st.integers(0, len(LAYOUTS) - 1))
    return Case(source, symbols, seed, special, layout, levels, terms=b.terms)


# ---- inputs --------------------------------------------------------------------------------


def _special_values(dtype: str) -> np.ndarray:
    if dtype == "bool":
        return np.array([True, False])
    if dtype in INTS:
        low, high = INT_RANGE[dtype]
        raw = [low, high, 0, -1, 1, low + 1, high - 1, 2**24 + 1, 2**40 + 2**32 + 1,
               2**30 + 2**22 + 1, -(2**31) - 1, 2**53 + 1, 2**62 + 2**54 + 1, 65519, 65520,
               127, 128, 255, 256, -129]
        return np.array([v for v in raw if low <= v <= high], dtype=NUMPY[dtype])
    info = ml_dtypes.finfo(NUMPY[dtype]) if dtype == "bf16" else np.finfo(NUMPY[dtype])
    raw = [0.0, -0.0, math.inf, -math.inf, math.nan, float(info.max), -float(info.max),
           float(info.tiny), float(info.smallest_subnormal), -float(info.smallest_subnormal),
           float(info.tiny) / 2, 1.0, -1.0, 0.5, 127.5, -128.5, 255.5, 256.0, 32767.5,
           2147483647.0, 2147483648.0, -2147483649.0, 9.3e18, -9.3e18, 2.0**63,
           1 + 2**-11 + 2**-40, 1 + 2**-8 + 2**-40, 1 + 2**-24 + 2**-60, 1 + 2**-11 + 2**-20,
           65520.0, 65519.0, 1e-8, 3.0e38]
    with np.errstate(all="ignore"):
        return np.array(raw, dtype=np.float64).astype(np.float32 if dtype == "bf16" else
                                                      np.float64).astype(NUMPY[dtype])


def _random_array(dtype: str, shape: tuple[int, ...], rng: np.random.Generator,
                  special: bool) -> np.ndarray:
    size = math.prod(shape)
    if dtype == "bool":
        data = rng.integers(0, 2, size).astype(bool)
    elif dtype in INTS:
        low, high = INT_RANGE[dtype]
        small = rng.integers(max(low, -10), min(high, 10) + 1, size)
        wide = rng.integers(low, high, size, endpoint=True, dtype=np.int64)
        data = np.where(rng.random(size) < 0.15, wide, small).astype(NUMPY[dtype])
    else:
        uniform = rng.uniform(-4, 4, size)
        halves = rng.integers(-8, 9, size) / 2
        data = np.where(rng.random(size) < 0.25, halves, uniform)
        data = data.astype(np.float32 if dtype == "bf16" else NUMPY[dtype]).astype(
            NUMPY[dtype])
    if special and size:
        pool = _special_values(dtype)
        mask = rng.random(size) < 0.3
        data = np.where(mask, pool[rng.integers(0, len(pool), size)], data).astype(
            NUMPY[dtype])
    return data.reshape(shape)


def make_inputs(signature, symbols: dict[str, int], seed: int, special: bool,
                explicit: list | None = None) -> list[Any]:
    """The inputs of a call: arrays (and numpy scalars for scalar parameters), random from
    the seed or the `explicit` values (numbers, or strings such as "nan" or "0x1p-20")."""
    rng = np.random.default_rng(seed)
    values: list[Any] = []
    for n, p in enumerate(signature.inputs):
        dtype = p.type.dtype.value
        shape = tuple(d.evaluate(symbols) for d in p.type.shape)
        if explicit is not None:
            array = _explicit_array(explicit[n], dtype).reshape(shape)
        else:
            array = _random_array(dtype, shape, rng, special)
        values.append(array[()] if p.type.scalar else array)
    return values


def _explicit_array(values, dtype: str) -> np.ndarray:
    def number(v):
        if isinstance(v, list):
            return [number(x) for x in v]
        if isinstance(v, str):
            return float.fromhex(v) if "0x" in v.lower() else float(v)
        return v
    data = np.array(number(values), dtype=object)
    if dtype in FLOATS:  # exact in f64; one rounding to the dtype
        f64 = data.astype(np.float64)
        return f64.astype(np.float32).astype(NUMPY[dtype]) if dtype == "bf16" else \
            f64.astype(NUMPY[dtype])
    return np.array([int(v) for v in data.ravel()], dtype=np.int64).astype(
        NUMPY[dtype]).reshape(data.shape) if dtype != "bool" else data.astype(bool)


def _perturb(values: list[Any], rng: np.random.Generator) -> list[Any]:
    """The inputs with every finite, non-zero float moved by 1 or 2 ulp either way."""
    out = []
    for v in values:
        a = np.asarray(v)
        if a.dtype.kind not in "fV" and a.dtype != NUMPY["bf16"]:
            out.append(v)
            continue
        bits = {2: np.int16, 4: np.int32, 8: np.int64}[a.itemsize]
        raw = a.copy().view(bits)
        step = rng.integers(-2, 3, a.shape).astype(bits)  # finite values: no wrap-around
        ok = np.isfinite(a.astype(np.float64)) & (a.astype(np.float64) != 0)
        with np.errstate(all="ignore"):
            moved = np.where(ok, raw + step, raw).view(a.dtype)
            wide = moved.astype(np.float64)
        bad = ~np.isfinite(wide) | (np.signbit(wide) != np.signbit(a.astype(np.float64)))
        moved = np.where(bad, a, moved)
        out.append(moved[()] if not isinstance(v, np.ndarray) else moved)
    return out


# ---- layouts of the arguments of a compiled target -------------------------------------


def _strided(a: np.ndarray) -> np.ndarray:
    if a.ndim == 0:
        return a
    big = np.empty(tuple(2 * n + 1 for n in a.shape), a.dtype)
    view = big[tuple(slice(1, None, 2) for _ in a.shape)]
    view[...] = a
    return view


def _reversed(a: np.ndarray) -> np.ndarray:
    if a.ndim == 0:
        return a
    view = np.ascontiguousarray(a[(slice(None, None, -1),) * a.ndim])[
        (slice(None, None, -1),) * a.ndim]
    return view


def _fortran(a: np.ndarray) -> np.ndarray:
    return np.asfortranarray(a) if a.ndim else a


def _byteswapped(a: np.ndarray) -> np.ndarray:
    if a.dtype.itemsize == 1 or a.dtype == NUMPY["bf16"]:
        return a
    return a.astype(a.dtype.newbyteorder())


LAYOUTS = [
    ("guarded-end", lambda a: guarded_copy(a, "end")),
    ("guarded-start", lambda a: guarded_copy(a, "start")),
    ("plain", lambda a: a),
    ("strided", _strided),
    ("reversed", _reversed),
    ("fortran", _fortran),
    ("byteswapped", _byteswapped),
]


def _arrange(values: list[Any], layout: int) -> list[Any]:
    _, fn = LAYOUTS[layout]
    return [fn(v) if isinstance(v, np.ndarray) else v for v in values]


# ---- comparison ----------------------------------------------------------------------------


def _as_f64(a: Any) -> np.ndarray:
    return np.asarray(a).astype(np.float64)


_RTOL = {"f64": 2.0**-40, "f32": 2.0**-16, "f16": 2.0**-7, "bf16": 2.0**-4}
_ULP_RTOL = {"f64": 2.0**-46, "f32": 2.0**-19, "f16": 2.0**-9, "bf16": 2.0**-6}


def compare(name: str, dtype: str, level: int, want: Any, got: Any, spread: np.ndarray | None,
            special: bool, terms: int = 1) -> str | None:
    """None when `got` is an acceptable result for `want`, else a description. `terms`: how
    many terms the case's float reductions accumulate (widens the LOOSE tolerance)."""
    want, got = np.asarray(want), np.asarray(got)
    if want.shape != got.shape or want.dtype != got.dtype:
        return f"{name}: got {got.dtype}{got.shape}, expected {want.dtype}{want.shape}"
    if dtype not in FLOATS:
        bad = want != got
    else:
        w, g = _as_f64(want), _as_f64(got)
        same = (w == g) | (np.isnan(w) & np.isnan(g))
        if level == EXACT:
            bad = ~same
        else:
            bad = ~same & ~_close(dtype, level, w, g, spread, special, terms)
    if not bad.any():
        return None
    where = [tuple(int(x) for x in p) for p in np.argwhere(bad)[:4]]
    shown = [f"at {p}: got {got[p]!r}, expected {want[p]!r}" for p in where]
    return (f"{name} ({dtype}, {LEVEL_NAMES[level]}): {int(bad.sum())} of {bad.size} elements "
            f"differ; " + "; ".join(shown))


def _close(dtype: str, level: int, w: np.ndarray, g: np.ndarray, spread: np.ndarray | None,
           special: bool, terms: int = 1) -> np.ndarray:
    info = ml_dtypes.finfo(NUMPY[dtype]) if dtype == "bf16" else np.finfo(NUMPY[dtype])
    info_max, tiny = float(info.max), float(info.tiny)
    rtol = 2.0**-6 if level == COARSE else (_ULP_RTOL if level == ULP else _RTOL)[dtype]
    if level == LOOSE:  # a reassociated n-term sum: about n/2 ulp in the worst case
        rtol = max(rtol, terms * float(info.eps) / 2)
    sp = np.zeros_like(w) if spread is None else spread
    finite_w, finite_g = np.isfinite(w), np.isfinite(g)
    scale = np.max(np.abs(w[finite_w]), initial=0.0)
    with np.errstate(all="ignore"):
        tol = 16 * np.where(np.isfinite(sp), sp, 0) + rtol * np.abs(w) + rtol * scale / 64 \
            + 16 * tiny
        near = np.abs(g - w) <= tol
    # Finiteness may differ where the reference itself is unstable, near the overflow
    # threshold, or (loose values) with extreme inputs.
    finite_side = np.where(finite_w, np.abs(w), np.abs(g))
    unstable = ~np.isfinite(sp)
    overflow = (finite_w != finite_g) & ((finite_side >= info_max / 16) | unstable | (
        level >= LOOSE and special))
    both_nonfinite_loose = ~finite_w & ~finite_g & (level >= LOOSE) & (special | unstable)
    return (finite_w & finite_g & near) | overflow | both_nonfinite_loose


# ---- running -------------------------------------------------------------------------------


@contextlib.contextmanager
def _no_disk_cache() -> Iterator[None]:
    old = os.environ.get("TDSL_CACHE")
    os.environ["TDSL_CACHE"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TDSL_CACHE", None)
        else:
            os.environ["TDSL_CACHE"] = old


def _tuple(result: Any, n: int) -> tuple:
    return result if n > 1 else (result,)


def targets() -> list[str]:
    """The compiled targets to fuzz (TDSL_FUZZ_TARGETS, default cpu and emulator: the GPU
    mapping run by tdsl.runtime.gpu_emulator; fake-cuda: the cuda target's host code and
    driver calls with the emulator as the GPU; add cuda on a machine with a GPU). The
    reference is the oracle."""
    names = os.environ.get("TDSL_FUZZ_TARGETS", "cpu,emulator").split(",")
    found = []
    for name in names:
        if name in ("cpu", "emulator", "fake-cuda") and not _compiler_installed():
            continue
        if name and name != "reference":
            found.append(name)
    return found


def api_targets() -> list[str]:
    """The fuzzed targets that `tdsl.load` knows (the emulator is not one)."""
    return [t for t in targets() if t in api.TARGETS]


def available_targets() -> list[str]:
    """Every compiled target this machine can run (corpus entries replay on all of theirs):
    cpu and the emulator where the compiler is installed, cuda where a GPU is (its kernels
    come from `TDSL_CUDA_BUNDLES` where the compiler is not installed)."""
    from tdsl.runtime import cuda_driver

    found = ["cpu", "emulator"] if _compiler_installed() else []
    return found + (["cuda"] if cuda_driver.available() else [])


def _compiler_installed() -> bool:
    """True when the MLIR bindings are installed (tdsl.pipelines imports them lazily)."""
    return importlib.util.find_spec("mlir") is not None


def run_case(case: Case, target_names: list[str] | None = None) -> list[str]:
    """Run a case on the reference and every target; return the problems found."""
    try:
        program = check_source(case.source, "fuzz.tdsl")
    except tdsl.TdslError as exc:
        return [f"checker rejected a generated program:\n{exc}"]
    checked = program.kernel(case.kernel)
    sig = checked.signature
    kernel = api.Kernel(sig, "reference", lambda: ReferenceExecutable(checked))
    inputs = make_inputs(sig, case.symbols, case.seed, case.special, case.inputs)
    n_out = len(sig.outputs)
    try:
        want = _tuple(kernel(*inputs), n_out)
    except Exception as exc:  # noqa: BLE001 - any exception of a valid call is a finding
        return [f"reference raised {type(exc).__name__}: {exc}"]
    spreads: dict[str, np.ndarray] = {}
    if any(case.levels.get(p.name, EXACT) > EXACT for p in sig.outputs):
        rng = np.random.default_rng(case.seed + 1)
        for _ in range(2):
            other = _tuple(kernel(*_perturb(inputs, rng)), n_out)
            for p, w, o in zip(sig.outputs, want, other):
                if p.type.dtype.value in FLOATS:
                    with np.errstate(all="ignore"):
                        d = np.abs(_as_f64(o) - _as_f64(w))
                    same = (_as_f64(o) == _as_f64(w)) | (np.isnan(_as_f64(o))
                                                         & np.isnan(_as_f64(w)))
                    d = np.where(same, 0.0, np.where(np.isnan(d), np.inf, d))
                    spreads[p.name] = np.maximum(spreads.get(p.name, 0.0), d)
    problems = []
    for target in target_names if target_names is not None else targets():
        _note_last(case)
        run = (case, target, program, checked, inputs, want, spreads)
        # CUDA cannot run in a process forked after its driver started: cuda runs in-process
        forked = FORK and target != "cuda"
        if forked:
            _warm(target)
        problems += _in_child(target, _on_target, run) if forked else _on_target(*run)
    return problems


FORK = hasattr(os, "fork") and os.environ.get("TDSL_FUZZ_FORK", "1") != "0"
CHILD_SECONDS = 300


def _on_target(case: Case, target: str, program, checked, inputs: list[Any], want: tuple,
               spreads: dict[str, np.ndarray]) -> list[str]:
    """Compile for one target, call with the case's layout (outputs against guard pages) and
    compare with the reference's results."""
    sig = checked.signature
    with _no_disk_cache():
        try:
            if target == "emulator":  # the GPU mapping, run block by block on the CPU
                from tdsl.runtime.gpu_emulator import EmulatedExecutable

                compiled = api.Kernel(sig, target, lambda: EmulatedExecutable(checked))
            elif target == "fake-cuda":  # the cuda target's host code and driver calls, with
                from tdsl.runtime import cuda, cuda_driver  # the emulator as the GPU
                from tdsl.runtime.cuda_fake import FakeDriver

                cuda_driver.set_driver(FakeDriver())
                compiled = api.Kernel(sig, "cuda", lambda: cuda.compile_kernel(checked))
            else:
                factory = api._executable_factory(target)
                compiled = api.Kernel(sig, target, lambda: factory(checked, program))
            compiled.executable()
        except Exception as exc:  # noqa: BLE001 - any failure to compile is a finding
            return [f"{target}: compiling raised {type(exc).__name__}: {exc}"]
    args = _arrange(inputs, case.layout)
    before = [np.array(a, copy=True) for a in args]
    at = "start" if case.layout % 2 else "end"
    outs = {}
    if case.layout < 3:
        for p, w in zip(sig.outputs, want):
            w = np.asarray(w)
            outs[p.name] = guarded_empty(w.shape, w.dtype, at)
    try:
        got = _tuple(compiled(*args, **outs), len(sig.outputs))
    except Exception as exc:  # noqa: BLE001
        return [f"{target}: the call raised {type(exc).__name__}: {exc}"]
    problems = []
    if target == "cpu":  # the first call made a plan; the second takes the native entry
        first = [np.array(g, copy=True) for g in got]
        try:
            again = _tuple(compiled(*args, **outs), len(sig.outputs))
        except Exception as exc:  # noqa: BLE001
            return [f"{target}: the second (native) call raised {type(exc).__name__}: {exc}"]
        for p, a, b in zip(sig.outputs, first, again):
            if np.asarray(a).tobytes() != np.asarray(b).tobytes():
                problems.append(f"{target}: the second (native) call changed '{p.name}'")
    for a, b in zip(args, before):
        if np.asarray(a).tobytes() != b.tobytes():
            problems.append(f"{target}: an input was modified")
    for p, w, g in zip(sig.outputs, want, got):
        found = compare(p.name, p.type.dtype.value, case.levels.get(p.name, EXACT), w, g,
                        spreads.get(p.name), case.special, case.terms)
        if found:
            problems.append(f"{target}: {found}")
    return problems


@functools.cache
def _warm(target: str) -> None:
    """Load and initialize the target's compiler in this process once, so that forked
    children do not each pay for it."""
    with contextlib.suppress(Exception), _no_disk_cache():
        tdsl.loads("kernel w(x: f32[N]) -> (y: f32[N]) { y = x }", target=target).w(
            np.zeros(1, np.float32))


def _in_child(target: str, fn, args: tuple) -> list[str]:
    """`fn(*args)` in a forked process, so that a kernel that crashes or hangs is a reported
    problem (which hypothesis shrinks) instead of the end of the test process; compiled code
    does not pile up in this process either."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        faulthandler.disable()  # a crash is reported by the parent
        try:
            os.close(read)
            data = json.dumps(fn(*args)).encode()
        except BaseException as exc:  # noqa: BLE001
            data = json.dumps([f"{target}: {type(exc).__name__}: {exc}"]).encode()
        try:
            with os.fdopen(write, "wb") as f:
                f.write(data)
        except BaseException:  # noqa: BLE001
            code = 1
        os._exit(code)
    os.close(write)
    chunks = []
    deadline = time.monotonic() + CHILD_SECONDS
    with os.fdopen(read, "rb") as f:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([f], [], [], 1.0)
            if ready:
                chunk = f.read1(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        what = "hung (killed)" if sig == signal.SIGKILL else f"crashed with signal {sig}"
        return [f"{target}: the process {what} ({signal.Signals(sig).name})"]
    try:
        return json.loads(b"".join(chunks).decode())
    except ValueError:
        return [f"{target}: the child process exited with status {os.WEXITSTATUS(status)}"]


def _note_last(case: Case) -> None:
    """With TDSL_FUZZ_LAST set, the case about to run on a compiled target is written there
    first: a kernel that crashes the process leaves its program behind."""
    path = os.environ.get("TDSL_FUZZ_LAST")
    if path:
        staged = f"{path}.{os.getpid()}.tmp"
        with open(staged, "w", encoding="utf-8") as f:
            json.dump({"source": case.source, **case.to_json()}, f)
        os.replace(staged, path)


def replay(path: str) -> list[str]:
    """Run a case written by TDSL_FUZZ_LAST (or a corpus .json beside its .tdsl)."""
    file = Path(path)
    data = json.loads(file.read_text(encoding="utf-8"))
    source = data.pop("source", None)
    if source is None:
        source = file.with_suffix(".tdsl").read_text(encoding="utf-8")
    case = Case.from_json(source, data)
    print(case.source, case.to_json())
    return run_case(case)


if __name__ == "__main__":  # python tests/fuzz/gen.py CASE.json: replay one case
    print("\n".join(replay(sys.argv[1])) or "no problem")


# ---- the corpus ----------------------------------------------------------------------------


def corpus_entries() -> list[Path]:
    """The saved cases, in order."""
    return sorted(CORPUS.glob("*.tdsl")) if CORPUS.exists() else []


def load_case(path: Path) -> tuple[Case, dict]:
    """A saved case and its record."""
    data = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    return Case.from_json(path.read_text(encoding="utf-8"), data), data


def save_case(case: Case, problems: list[str], status: str = "open") -> Path | None:
    """Write a failing case to the corpus as the next NNN.tdsl/.json (None when an identical
    case is already there)."""
    CORPUS.mkdir(parents=True, exist_ok=True)
    for path in corpus_entries():
        if path.read_text(encoding="utf-8") == case.source:
            old = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            if old.get("seed") == case.seed and old.get("symbols") == case.symbols:
                return None
    record = {**case.to_json(), "status": status, "problems": problems[:4]}
    for number in range(1, 10_000):
        path = CORPUS / f"{number:03d}.tdsl"
        try:
            with open(path, "x", encoding="utf-8") as f:
                f.write(case.source)
        except FileExistsError:
            continue
        path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n",
                                             encoding="utf-8")
        return path
    return None

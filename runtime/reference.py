"""The reference interpreter: runs a checked kernel with numpy; the oracle of every target.

Semantics (LANGUAGE.md §6 and §10; `tdsl.checked` for the program form):

- Statements run in the given order. `target[indices] = expr` is evaluated over the domain of
  its index variables, each `indices[n]` in `[0, extents[n])` (affine forms of the shape
  symbols, evaluated at the call). Inputs, outputs and locals are numpy arrays held by name;
  outputs and locals are computed into fresh arrays and the outputs are copied into
  `call.outputs` at the end, so an output that aliases an input or is a strided view is safe,
  and a failing run writes nothing.
- Vectorized: no Python loop per element. Over a domain of axes, each index variable is an
  `np.arange` along its own axis and every value is an array of the domain's rank that
  broadcasts to it. A `Read` is a gather `array[sub0, sub1, ...]` of the affine subscripts
  evaluated on the index grids (floor division for `FloorDiv` atoms), checked in bounds. A
  `Reduce` appends its indices as new axes and reduces over them.
- Contractions: `sum` of a product (nested `mul`) of `Read`s whose subscripts are plain index
  names runs as `np.einsum(optimize=True)` in the accumulator dtype (f16/bf16 operands are
  widened to f32 first, so products are not rounded to f16: the contraction §10 allows).
  Other reductions whose domain would exceed `CHUNK_ELEMENTS` are evaluated in chunks of the
  statement's first index.
- Dtypes: integers wrap; f16/bf16 ops compute in f32 and round to the dtype after each op;
  reductions accumulate in `dtype.accumulator` and round at the end. Empty reductions give
  sum 0, prod 1, max -inf (integer min), min +inf (integer max), mean nan (integer mean: 0).
  Float max/min (binary and reduction) propagate nan. Integer `div` is floor division and
  `mod` takes the divisor's sign; by zero both give 0. Integer `pow` needs a non-negative
  exponent. Float `div` and `mod` are IEEE true division and `np.mod`.
- Unary: `relu(x) = select(x <= 0, 0, x)`; `rsqrt(x) = 1 / sqrt(x)`; sigmoid is evaluated
  as `exp(-|x|)`-based so it never overflows; `erf` is scipy's. On integers only neg, abs,
  relu, floor and ceil are defined (floor and ceil are the identity).
- Casts: float->int truncates toward zero, saturates at the type's limits, nan -> 0;
  int->float and float->float round to nearest even, once (bf16 through round-to-odd, so never
  double-rounded); `bool(x)` is `x != 0`; bool->number is 0/1; int->int wraps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.special

from tdsl.checked import (
    Binary,
    Cast,
    Const,
    Expr,
    IndexVar,
    Kernel,
    Read,
    Reduce,
    Select,
    Statement,
    SymbolVal,
    Unary,
)
from tdsl.runtime.signature import BoundCall, f64_to_bf16, numpy_dtype
from tdsl.types import Affine, Atom, DType

CHUNK_ELEMENTS = 1 << 24  # largest reduction domain materialized at once (generic path)
_LOW = frozenset({DType.F16, DType.BF16})
_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
Array = np.ndarray


class ReferenceExecutable:
    """Runs one checked kernel (tdsl.checked.Kernel) with numpy."""

    def __init__(self, kernel: Kernel):
        self.kernel = kernel

    def run(self, call: BoundCall) -> None:
        """Compute every statement; write the outputs into call.outputs (already allocated,
        any strides, in signature order)."""
        sig = self.kernel.signature
        inputs = {p.name for p in sig.inputs}
        if any(s.target in inputs for s in self.kernel.statements):
            raise ValueError(f"{sig.name}(): a statement writes an input")
        store = self._allocate(call)
        evaluator = _Evaluator(store, call.symbols)
        with np.errstate(all="ignore"):
            for statement in self.kernel.statements:
                evaluator.statement(statement)
        defined = {s.target for s in self.kernel.statements}
        for param, out in zip(sig.outputs, call.outputs):
            if param.name not in defined:
                raise ValueError(f"{sig.name}(): output '{param.name}' is never defined")
            if out.ndim == 0:
                out[()] = store[param.name]
            else:
                out[...] = store[param.name]

    def _allocate(self, call: BoundCall) -> dict[str, Array]:
        sig = self.kernel.signature
        store: dict[str, Array] = {p.name: a for p, a in zip(sig.inputs, call.inputs)}
        for param, shape in zip(sig.outputs, call.output_shapes):
            store[param.name] = np.empty(shape, numpy_dtype(param.type.dtype))
        for local in self.kernel.locals:
            shape = tuple(d.evaluate(call.symbols) for d in local.type.shape)
            if any(size < 0 for size in shape):
                raise ValueError(f"{sig.name}(): local '{local.name}' has shape {shape} < 0")
            store[local.name] = np.empty(shape, numpy_dtype(local.type.dtype))
        return store


# ---- domains -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Axis:
    name: str
    start: int
    size: int


class _Domain:
    """The axes an expression is evaluated over: statement indices, then reduction indices."""

    def __init__(self, axes: tuple[_Axis, ...]):
        self.axes = axes
        self.position = {a.name: n for n, a in enumerate(axes)}  # inner names shadow outer
        self.rank = len(axes)
        self.shape = tuple(a.size for a in axes)

    def extend(self, names: tuple[str, ...], sizes: list[int]) -> _Domain:
        """The domain with the axes of a reduction appended."""
        return _Domain(self.axes + tuple(_Axis(n, 0, s) for n, s in zip(names, sizes)))

    def grid(self, name: str) -> Array:
        """The values of an index variable, along its own axis (i64)."""
        pos = self.position[name]
        axis = self.axes[pos]
        shape = [1] * self.rank
        shape[pos] = axis.size
        return np.arange(axis.start, axis.start + axis.size, dtype=np.int64).reshape(shape)


def _fit(value: Array, rank: int) -> Array:
    """`value` with leading unit axes up to `rank`."""
    value = np.asarray(value)
    return value.reshape((1,) * (rank - value.ndim) + value.shape)


# ---- evaluation ----------------------------------------------------------------------------


class _Evaluator:
    """Evaluates statements and expressions of one call."""

    def __init__(self, store: dict[str, Array], symbols: dict[str, int]):
        self.store = store
        self.symbols = symbols
        self.dispatch: dict[type, Callable[..., Array]] = {
            Const: self._const, IndexVar: self._index, SymbolVal: self._symbol,
            Read: self._read, Unary: self._unary, Binary: self._binary, Select: self._select,
            Cast: self._cast, Reduce: self._reduce,
        }

    def statement(self, st: Statement) -> None:
        """Evaluate `st` and write its target, in chunks of the first index if needed."""
        target = self.store[st.target]
        sizes = [e.evaluate(self.symbols) for e in st.extents]
        if tuple(sizes) != target.shape:
            raise ValueError(f"statement of '{st.target}': extents {sizes} differ from the "
                             f"target's shape {target.shape}")
        if st.expr.dtype != _dtype_of(target):
            raise TypeError(f"statement of '{st.target}': expression of dtype {st.expr.dtype} "
                            f"for a target of {target.dtype}")
        if not sizes:
            target[()] = self.eval(st.expr, _Domain(()))
            return
        rest = tuple(_Axis(n, 0, s) for n, s in zip(st.indices[1:], sizes[1:]))
        peak = self._peak(st.expr, math.prod(sizes), st.indices)
        rows = max(1, sizes[0] if peak <= CHUNK_ELEMENTS else CHUNK_ELEMENTS * sizes[0] // peak)
        for start in range(0, sizes[0], rows):
            stop = min(start + rows, sizes[0])
            domain = _Domain((_Axis(st.indices[0], start, stop - start),) + rest)
            target[start:stop] = np.broadcast_to(self.eval(st.expr, domain), domain.shape)

    def _peak(self, e: Expr, outer: int, scope: tuple[str, ...]) -> int:
        """The largest reduction domain the generic path materializes in `e`."""
        if not isinstance(e, Reduce):
            return max((self._peak(c, outer, scope) for c in _children(e)), default=0)
        inner_scope = scope + e.indices
        if _contraction(e, inner_scope) is not None:
            return 0
        inner = outer * math.prod(max(0, x.evaluate(self.symbols)) for x in e.extents)
        return max(inner, self._peak(e.body, inner, inner_scope))

    def eval(self, e: Expr, dom: _Domain) -> Array:
        """The value of `e` over `dom`: an array of dom.rank dims broadcasting to dom.shape."""
        value = _fit(self.dispatch[type(e)](e, dom), dom.rank)
        if value.dtype != numpy_dtype(e.dtype):
            raise TypeError(f"{type(e).__name__} of dtype {e.dtype} evaluated to {value.dtype}: "
                            f"the checked program is inconsistent ({str(e)[:300]})")
        return value

    # ---- leaves ---------------------------------------------------------------------------
    def _const(self, e: Const, dom: _Domain) -> Array:
        if e.dtype is DType.BOOL:
            return np.asarray(bool(e.value))
        if e.dtype.is_int:
            low, high = e.dtype.int_range
            wrapped = (int(e.value) - low) % (high - low + 1) + low
            return np.asarray(wrapped, dtype=numpy_dtype(e.dtype))
        return convert(np.asarray(float(e.value), dtype=_F64), DType.F64, e.dtype)

    def _index(self, e: IndexVar, dom: _Domain) -> Array:
        return dom.grid(e.name)

    def _symbol(self, e: SymbolVal, dom: _Domain) -> Array:
        return np.asarray(self._affine(e.value, dom), dtype=np.int64)

    def _affine(self, form: Affine, dom: _Domain) -> Array | int:
        total: Array | int = form.const
        for atom, coef in form.terms:
            total = total + coef * self._atom(atom, dom)
        return total

    def _atom(self, atom: Atom, dom: _Domain) -> Array | int:
        if not isinstance(atom, str):
            return self._affine(atom.expr, dom) // atom.divisor
        if atom in dom.position:
            return dom.grid(atom)
        if atom not in self.symbols:
            raise ValueError(f"'{atom}' is neither an index in scope nor a shape symbol")
        return self.symbols[atom]

    def _read(self, e: Read, dom: _Domain) -> Array:
        array = self.store[e.tensor]
        if len(e.subscripts) != array.ndim:
            raise ValueError(f"read of '{e.tensor}' has {len(e.subscripts)} subscripts for "
                             f"rank {array.ndim}")
        if 0 in dom.shape:  # nothing is read
            return np.empty(dom.shape, array.dtype)
        subs = [np.asarray(self._affine(s, dom), dtype=np.int64) for s in e.subscripts]
        for dim, (form, sub) in enumerate(zip(e.subscripts, subs)):
            low, high = int(sub.min()), int(sub.max())
            if low < 0 or high >= array.shape[dim]:
                raise IndexError(f"read of '{e.tensor}': subscript {dim} ({form}) takes values "
                                 f"in [{low}, {high}], outside [0, {array.shape[dim]})")
        return array[tuple(subs)]

    # ---- operators ------------------------------------------------------------------------
    def _unary(self, e: Unary, dom: _Domain) -> Array:
        x = self.eval(e.x, dom)
        if e.op == "not":
            _require(e.x.dtype is DType.BOOL, e)
            return np.logical_not(x)
        if e.x.dtype.is_int and e.op in _INT_UNARY:
            return np.asarray(_INT_UNARY[e.op](x))
        _require(e.x.dtype.is_float and e.op in _FLOAT_UNARY, e)
        return _compute(e.x.dtype, _FLOAT_UNARY[e.op], x)

    def _binary(self, e: Binary, dom: _Domain) -> Array:
        a, b = self.eval(e.a, dom), self.eval(e.b, dom)
        kind = e.a.dtype
        _require(e.b.dtype is kind, e)
        if e.op in ("and", "or"):
            _require(kind is DType.BOOL, e)
        if kind.is_int and e.op in ("div", "mod"):
            zero = b == 0
            safe = np.where(zero, np.ones((), b.dtype), b)
            result = np.floor_divide(a, safe) if e.op == "div" else np.remainder(a, safe)
            return np.where(zero, np.zeros((), result.dtype), result)
        if kind.is_int and e.op == "pow" and np.any(b < 0):
            raise ValueError(f"integer pow with a negative exponent ({e})")
        return _compute(kind, _BINARY[e.op], a, b)

    def _select(self, e: Select, dom: _Domain) -> Array:
        cond = self.eval(e.cond, dom)
        _require(e.cond.dtype is DType.BOOL and e.a.dtype == e.b.dtype == e.dtype, e)
        return np.where(cond, self.eval(e.a, dom), self.eval(e.b, dom))

    def _cast(self, e: Cast, dom: _Domain) -> Array:
        return convert(self.eval(e.x, dom), e.x.dtype, e.dtype)

    def _reduce(self, e: Reduce, dom: _Domain) -> Array:
        sizes = [max(0, x.evaluate(self.symbols)) for x in e.extents]
        inner = dom.extend(e.indices, sizes)
        acc = e.dtype.accumulator
        factors = _contraction(e, tuple(a.name for a in inner.axes))
        if factors is not None:
            return convert(self._einsum(factors, dom, inner, acc), acc, e.dtype)
        body = convert(self.eval(e.body, inner), e.body.dtype, acc)
        full = np.broadcast_to(body, body.shape[:dom.rank] + inner.shape[dom.rank:])
        axes = tuple(range(dom.rank, inner.rank))
        count = math.prod(sizes)
        if e.op in ("sum", "prod", "mean"):
            _require(acc.is_float or (acc.is_int and e.op != "mean"), e)
            fn = np.prod if e.op == "prod" else np.sum
            result = np.asarray(fn(full, axis=axes, dtype=numpy_dtype(acc)))
            if e.op == "mean":
                result = np.asarray(result / np.asarray(count, numpy_dtype(acc)))
        else:
            low, high = _extremes(acc)
            fn = np.max if e.op == "max" else np.min
            result = np.asarray(fn(full, axis=axes, initial=low if e.op == "max" else high))
        return convert(result, acc, e.dtype)

    def _einsum(self, factors: list[Read], dom: _Domain, inner: _Domain, acc: DType) -> Array:
        """`sum` of a product of plain reads, as one einsum over slices of the operands."""
        places = [[inner.position[str(s.as_name())] for s in f.subscripts] for f in factors]
        present = sorted({p for positions in places for p in positions if p < dom.rank})
        out_shape = tuple(a.size if n in present else 1 for n, a in enumerate(dom.axes))
        if 0 in inner.shape:
            return np.zeros(out_shape, numpy_dtype(acc))
        specs, operands = [], []
        for f, positions in zip(factors, places):
            array = self.store[f.tensor]
            for dim, pos in enumerate(positions):
                axis = inner.axes[pos]
                if axis.start + axis.size > array.shape[dim]:
                    raise IndexError(f"read of '{f.tensor}': subscript {dim} ({axis.name}) "
                                     f"reaches {axis.start + axis.size - 1}, outside "
                                     f"[0, {array.shape[dim]})")
            view = array[tuple(slice(inner.axes[p].start, inner.axes[p].start + inner.axes[p].size)
                               for p in positions)]
            operands.append(convert(view, f.dtype, acc))
            specs.append("".join(_LETTERS[p] for p in positions))
        formula = ",".join(specs) + "->" + "".join(_LETTERS[p] for p in present)
        return np.asarray(np.einsum(formula, *operands, optimize=True)).reshape(out_shape)


def _contraction(e: Reduce, scope: tuple[str, ...]) -> list[Read] | None:
    """The factors when `e` is a sum of a product of reads subscripted by plain index names in
    `scope` (the domain's axes, reduced ones included: each must be read), else None."""
    if e.op != "sum" or not e.dtype.is_numeric or len(scope) > len(_LETTERS):
        return None
    factors = _factors(e.body)
    if factors is None or any(f.dtype != e.dtype for f in factors):
        return None
    names = [s.as_name() for f in factors for s in f.subscripts]
    if any(n is None or n not in scope for n in names) or not set(e.indices) <= set(names):
        return None
    return factors


def _factors(e: Expr) -> list[Read] | None:
    if isinstance(e, Read):
        return [e]
    if not (isinstance(e, Binary) and e.op == "mul"):
        return None
    left, right = _factors(e.a), _factors(e.b)
    return None if left is None or right is None else left + right


def _children(e: Expr) -> tuple[Expr, ...]:
    if isinstance(e, (Unary, Cast)):
        return (e.x,)
    if isinstance(e, Binary):
        return (e.a, e.b)
    if isinstance(e, Select):
        return (e.cond, e.a, e.b)
    if isinstance(e, Reduce):
        return (e.body,)
    return ()


def _require(ok: bool, e: Expr) -> None:
    if not ok:
        raise TypeError(f"{type(e).__name__} not defined for these dtypes ({str(e)[:300]})")


def _compute(kind: DType, fn: Callable[..., Array], *args: Array) -> Array:
    """`fn(*args)` for operands of dtype `kind`: f16/bf16 in f32, rounded back after."""
    if kind not in _LOW:
        return np.asarray(fn(*args))
    result = np.asarray(fn(*(a.astype(_F32) for a in args)))
    return result if result.dtype == np.bool_ else convert(result, DType.F32, kind)


def _extremes(dtype: DType) -> tuple[bool | int | float, bool | int | float]:
    """The identities of max and min reductions."""
    if dtype is DType.BOOL:
        return False, True
    if dtype.is_int:
        return dtype.int_range
    return -np.inf, np.inf


def _dtype_of(array: Array) -> DType:
    return next(d for d in DType if numpy_dtype(d) == array.dtype)


def _sigmoid(x: Array) -> Array:
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


_FLOAT_UNARY: dict[str, Callable[[Array], Array]] = {
    "neg": np.negative, "abs": np.abs, "exp": np.exp, "log": np.log, "sqrt": np.sqrt,
    "rsqrt": lambda x: 1 / np.sqrt(x), "sin": np.sin, "cos": np.cos, "tanh": np.tanh,
    "sigmoid": _sigmoid, "erf": lambda x: scipy.special.erf(x).astype(x.dtype),
    "floor": np.floor, "ceil": np.ceil,
    "relu": lambda x: np.where(x <= 0, np.zeros((), x.dtype), x),
}
_INT_UNARY: dict[str, Callable[[Array], Array]] = {
    "neg": np.negative, "abs": np.abs, "floor": lambda x: x, "ceil": lambda x: x,
    "relu": _FLOAT_UNARY["relu"],
}
_BINARY: dict[str, Callable[[Array, Array], Array]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide,
    "mod": np.mod, "pow": np.power, "min": np.minimum, "max": np.maximum,
    "and": np.logical_and, "or": np.logical_or, "lt": np.less, "le": np.less_equal,
    "gt": np.greater, "ge": np.greater_equal, "eq": np.equal, "ne": np.not_equal,
}


# ---- casts ---------------------------------------------------------------------------------


def convert(x: Array, src: DType, dst: DType) -> Array:
    """`x` (of dtype `src`) converted to `dst` by the language's cast rules."""
    x = np.asarray(x)
    if src is dst:
        return x
    if dst is DType.BOOL:
        return np.asarray((x.astype(_F32) if src in _LOW else x) != 0)
    if src is DType.BOOL:
        return convert(x.astype(np.int64), DType.I64, dst)
    if dst.is_int:
        return x.astype(numpy_dtype(dst)) if src.is_int else _float_to_int(x, dst)
    if src.is_int and dst in (DType.F32, DType.F64):
        return x.astype(numpy_dtype(dst))  # one C conversion: round to nearest even
    if src.is_int:  # exact in f64 below 2**53; i64 beyond that rounds to odd first
        wide = _i64_to_f64_odd(x) if src is DType.I64 else x.astype(_F64)
        return convert(wide, DType.F64, dst)
    if dst is DType.BF16:
        return f64_to_bf16(x) if src is DType.F64 else x.astype(_F32).astype(numpy_dtype(dst))
    return (x.astype(_F32) if src is DType.BF16 else x).astype(numpy_dtype(dst))


def _float_to_int(x: Array, dst: DType) -> Array:
    """Truncate toward zero, saturate at the limits of `dst`, nan -> 0."""
    low, high = dst.int_range
    t = np.trunc(x.astype(_F64))  # exact for every float dtype
    too_high = t >= float(high + 1)  # high + 1 is a power of two: exact in f64
    too_low = t < float(low)  # low is 0 or minus a power of two: exact
    safe = np.where(too_high | too_low | np.isnan(t), 0.0, t)
    result = np.where(too_high, high, np.where(too_low, low, safe.astype(np.int64)))
    return np.asarray(result.astype(numpy_dtype(dst)))


def _i64_to_f64_odd(x: Array) -> Array:
    """i64 -> f64 rounded to odd (exact where representable), so a later rounding to a
    narrower float is a single correct rounding."""
    near_f = np.asarray(np.minimum(x.astype(_F64), float(2**63 - 1024)))  # a neighbour of x
    diff = x - near_f.astype(np.int64)
    odd = (near_f.view(np.uint64) & 1) == 1
    toward = np.where(diff > 0, np.inf, -np.inf)
    return np.asarray(np.where((diff == 0) | odd, near_f, np.nextafter(near_f, toward)))

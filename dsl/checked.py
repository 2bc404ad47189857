"""The checked program: the only input of the IR stage and of the reference interpreter.

Everything here is typed, inlined (no `fn` calls) and normalized:
- every statement is in index form `target[i, j, ...] = expr` over named index variables with
  known affine extents (a `let` is a rank-0 statement; a whole-tensor statement gets fresh
  index names and explicit broadcasting subscripts);
- statements come in dependence order (each tensor is written before it is read);
- every expression node has a dtype; literals carry their final dtype; mixed types never
  occur without an explicit `Cast`;
- every subscript is an `Affine` form over index variables and shape symbols, proven in range
  or guarded by a call-time `Condition` of the kernel's `Signature`.

Dtype rules every consumer must follow (the language's numerics):
- `Binary` ops take two operands of the node's operand dtype; comparisons give bool.
- f16 / bf16 arithmetic is computed in f32 and rounded to the dtype after each op.
- A `Reduce` accumulates in `dtype.accumulator` (f32 for f16/bf16) and rounds at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tdsl.runtime.signature import Signature
from tdsl.types import Affine, DType, TensorType

# ---- expressions ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Const:
    """A literal of a fixed dtype (`value` is a Python bool, int or float; float('inf') etc.).
    Equal constants compare and hash alike, except that -0.0 and 0.0 differ (Python says
    they are equal: the translation's memo of subexpressions once gave `-0.0 + 0.0` as
    `-0.0 + -0.0`, fuzz corpus 030)."""

    value: bool | int | float
    dtype: DType

    def _key(self) -> tuple:
        if isinstance(self.value, float):
            return (self.dtype, float, self.value, math.copysign(1.0, self.value))
        return (self.dtype, type(self.value), self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Const) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


@dataclass(frozen=True)
class IndexVar:
    """The value of an index variable, as i64."""

    name: str
    dtype: DType = DType.I64


@dataclass(frozen=True)
class SymbolVal:
    """The value of a shape symbol (or any affine form of symbols), as i64."""

    value: Affine
    dtype: DType = DType.I64


@dataclass(frozen=True)
class Read:
    """An element `tensor[subscripts]` of an input, output or local (rank 0: no subscripts)."""

    tensor: str
    subscripts: tuple[Affine, ...]
    dtype: DType


UNARY_OPS = frozenset({
    "neg", "not", "abs", "relu", "exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid",
    "erf", "floor", "ceil",
})
BINARY_OPS = frozenset({
    "add", "sub", "mul", "div", "mod", "pow", "min", "max", "and", "or",
    "lt", "le", "gt", "ge", "eq", "ne",
})
COMPARE_OPS = frozenset({"lt", "le", "gt", "ge", "eq", "ne"})
REDUCE_OPS = frozenset({"sum", "prod", "max", "min", "mean"})


@dataclass(frozen=True)
class Unary:
    """`op(x)` for an op of UNARY_OPS; the result has `dtype` (the operand's dtype)."""

    op: str
    x: Expr
    dtype: DType


@dataclass(frozen=True)
class Binary:
    """`a op b` for an op of BINARY_OPS. `a` and `b` share one dtype; `dtype` is the result
    (bool for comparisons)."""

    op: str
    a: Expr
    b: Expr
    dtype: DType


@dataclass(frozen=True)
class Select:
    """`select(cond, a, b)`: `a` where cond else `b` (both evaluated; no side effects)."""

    cond: Expr
    a: Expr
    b: Expr
    dtype: DType


@dataclass(frozen=True)
class Cast:
    """Conversion of `x` to `dtype` (saturating float->int, nan->0; `bool(x)` is `x != 0`)."""

    x: Expr
    dtype: DType


@dataclass(frozen=True)
class Reduce:
    """`op[indices](body)` with index `indices[n]` in `[0, extents[n])`; accumulates in
    `dtype.accumulator`. Identity for an empty range: sum 0, prod 1, max -inf (integer min),
    min +inf (integer max), mean nan. max/min propagate nan."""

    op: str
    indices: tuple[str, ...]
    extents: tuple[Affine, ...]
    body: Expr
    dtype: DType


Expr = Const | IndexVar | SymbolVal | Read | Unary | Binary | Select | Cast | Reduce


# ---- statements and kernels ----------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """`target[indices] = expr`, index `indices[n]` running over `[0, extents[n])`, which is
    the target's dimension n. Every element of the target is written exactly once."""

    target: str
    indices: tuple[str, ...]
    extents: tuple[Affine, ...]
    expr: Expr


@dataclass(frozen=True)
class Local:
    """A kernel-local tensor (or `let` scalar): written by one statement, read by later ones."""

    name: str
    type: TensorType


@dataclass(frozen=True)
class Kernel:
    """A checked kernel: its signature (inputs, outputs, symbols, call-time conditions), the
    locals and the statements in execution order."""

    signature: Signature
    locals: tuple[Local, ...]
    statements: tuple[Statement, ...]
    # Canonical text of the kernel with fns inlined; a cache key that needs no re-parse.
    fingerprint: str = ""

    @property
    def name(self) -> str:
        """The kernel's name."""
        return self.signature.name

    def tensor_type(self, name: str) -> TensorType:
        """The type of an input, output or local by name."""
        for p in self.signature.inputs + self.signature.outputs:
            if p.name == name:
                return p.type
        for loc in self.locals:
            if loc.name == name:
                return loc.type
        raise KeyError(name)


@dataclass(frozen=True)
class Program:
    """Every kernel of one source file, in source order."""

    kernels: tuple[Kernel, ...]
    filename: str = "<string>"
    source_text: str = field(default="", repr=False)

    def kernel(self, name: str) -> Kernel:
        """The kernel called `name` (KeyError if absent)."""
        for k in self.kernels:
            if k.name == name:
                return k
        raise KeyError(name)

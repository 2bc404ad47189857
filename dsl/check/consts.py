"""Weak literals: folding constant sub-expressions and fixing a literal's dtype.

A literal (or an expression of literals only) has no dtype of its own: it takes the dtype of
the other operand. Constant folding runs in Python ints (exact) and IEEE f64.
"""

from __future__ import annotations

import math

import numpy as np

from tdsl.runtime.signature import int_to_float
from tdsl.types import DType

Number = bool | int | float

MAX_CONST_BITS = 1 << 16
"""Largest integer constant folded (in bits): more is an error, not a long computation."""


class ConstantTooLarge(ValueError):
    """An integer constant expression that folds to more than MAX_CONST_BITS bits."""


def _f64(x: Number) -> float:
    return int_to_float(x) if isinstance(x, int) and not isinstance(x, bool) else float(x)


def fold_unary(op: str, x: Number) -> Number:
    """`op x` for a literal (op '-', 'abs', 'exp', ...); float ops in f64."""
    if op == "-":
        return -x
    if op == "abs":
        return abs(x)
    if op == "relu":
        return x if (isinstance(x, float) and math.isnan(x)) or x > 0 else type(x)(0)
    with np.errstate(all="ignore"):
        v = np.float64(_f64(x))
        table = {
            "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "sin": np.sin, "cos": np.cos,
            "tanh": np.tanh, "floor": np.floor, "ceil": np.ceil,
            "rsqrt": lambda t: 1.0 / np.sqrt(t),
            "sigmoid": lambda t: 1.0 / (1.0 + np.exp(-t)),
            "erf": lambda t: np.float64(math.erf(float(t))) if math.isfinite(t) else np.sign(t),
        }
        return float(table[op](v))


def fold_binary(op: str, a: Number, b: Number) -> Number:
    """`a op b` for two literals of one kind (both int or both float after promotion)."""
    if isinstance(a, float) or isinstance(b, float):
        return _fold_float(op, _f64(a), _f64(b))
    if op in ("div", "mod") and b == 0:
        return 0
    if op == "pow" and b > 0 and abs(a) > 1 and (abs(a).bit_length() - 1) * b > MAX_CONST_BITS:
        raise ConstantTooLarge(f"{a} ** {b}")
    table = {
        "add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b,
        "div": lambda: a // b, "mod": lambda: a % b, "min": lambda: min(a, b),
        "max": lambda: max(a, b), "pow": lambda: a ** b if b >= 0 else 0,
    }
    result = table[op]()
    if result.bit_length() > MAX_CONST_BITS:
        raise ConstantTooLarge(op)
    return result


def _fold_float(op: str, a: float, b: float) -> float:
    with np.errstate(all="ignore"):
        x, y = np.float64(a), np.float64(b)
        table = {
            "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide,
            "mod": np.mod, "min": np.minimum, "max": np.maximum, "pow": np.power,
        }
        return float(table[op](x, y))


def fold_compare(op: str, a: Number, b: Number) -> bool:
    """A comparison of two literals."""
    table = {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b, "eq": a == b, "ne": a != b}
    return bool(table[op])


def fits(value: Number, dtype: DType) -> bool:
    """True when an integer literal is representable in an integer dtype."""
    low, high = dtype.int_range
    return low <= value <= high


def cast_constant(value: Number, dtype: DType) -> Number:
    """An explicit cast of a literal, with the language's cast semantics (ints wrap, floats
    saturate into integers with nan -> 0, bool is != 0)."""
    if dtype is DType.BOOL:
        return bool(value != 0) if not (isinstance(value, float) and math.isnan(value)) else True
    if dtype.is_float:
        return int_to_float(value, dtype) if isinstance(value, int) else float(value)
    low, high = dtype.int_range
    if isinstance(value, float):
        if math.isnan(value):
            return 0
        if value >= high:
            return high
        if value <= low:
            return low
        return int(value)
    span = high - low + 1
    return (int(value) - low) % span + low

"""The `vector-math` stage: every `math.exp log tanh erf sin cos powf` on f32 / f64 becomes
the branch-free `arith` expansion of `tdsl.vector_math`, so that loops of them vectorize.

It is a rewrite of the printed module (MLIR text), so it runs on any stage's IR: each
matching op line is replaced by the expansion's lines, whose last op defines the original
result name. Constants are emitted next to their use; the canonicalizer that follows hoists
and deduplicates them. The GPU pipeline does not run it (libdevice has these functions).
"""

from __future__ import annotations

import itertools
import re

from tdsl.to_mlir_ops import float_literal
from tdsl.types import DType
from tdsl.vector_math import F32, F64, VectorMath

EXPANDED = ("exp", "log", "tanh", "erf", "sin", "cos", "powf")
_VALUE = r"%[\w.$#-]+"
_MATH_OP = re.compile(
    rf"^(?P<indent>\s*)(?P<res>{_VALUE}) = math\.(?P<op>{'|'.join(EXPANDED)}) "
    rf"(?P<a>{_VALUE})(?:, (?P<b>{_VALUE}))?(?: fastmath<(?P<flags>[^>]*)>)? : (?P<ty>f32|f64)$")


class _TextEmitter:
    """Collects op lines for one expansion; names are unique in the module (`%vm<N>_`)."""

    def __init__(self, counter: itertools.count):
        self.lines: list[str] = []
        self.counter = counter
        self.consts: dict[str, str] = {}

    def emit(self, text: str, results: int = 1) -> str:
        name = f"%vm{next(self.counter)}_"
        self.lines.append(f"{name} = {text}")
        return name

    def _const_text(self, text: str) -> str:
        if text not in self.consts:
            self.consts[text] = self.emit(f"arith.constant {text}")
        return self.consts[text]

    def const(self, value: float, dtype: DType) -> str:
        mt = "f32" if dtype is DType.F32 else "f64"
        return self._const_text(f"{float_literal(value, dtype)} : {mt}")

    def raw_int(self, value: int, mt: str) -> str:
        return self._const_text(f"{value} : {mt}")


def expand_line(match: re.Match[str], counter: itertools.count) -> list[str]:
    """The expansion of one matched `math` op line (the last line defines its result)."""
    em = _TextEmitter(counter)
    fmt = F32 if match["ty"] == "f32" else F64
    vm = VectorMath(em.emit, em.const, em.raw_int, fmt)
    op = match["op"]
    if op == "powf":
        result = vm.pow(match["a"], match["b"])
    else:
        result = vm.apply(op, match["a"])
    lines = em.lines
    if not lines or not lines[-1].startswith(f"{result} = "):
        raise AssertionError(f"expansion of math.{op} does not end with its result")
    rename = re.compile(re.escape(result) + r"(?![\w.$#-])")
    lines = [rename.sub(match["res"], line) for line in lines]
    return [match["indent"] + line for line in lines]


def expand_math(text: str) -> str:
    """`text` with every expandable `math` op replaced by its `arith` expansion."""
    counter = itertools.count()
    out: list[str] = []
    for line in text.splitlines():
        m = _MATH_OP.match(line)
        if m is None:
            out.append(line)
            continue
        out.extend(expand_line(m, counter))
    return "\n".join(out) + "\n"


def has_expandable(text: str) -> bool:
    """True when `text` holds a math op that `expand_math` rewrites."""
    return any(f"math.{op} " in text for op in EXPANDED)

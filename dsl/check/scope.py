"""What the checker's expression lowering (`tdsl.check.exprs`) produces and works in:
`Typed` (a lowered expression or a weak literal), the `Scope` of a statement (names, indices
and what lowering learns: `Evidence` of index ranges, `Access`es to prove in range)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tdsl import ast
from tdsl import checked as c
from tdsl.check import consts
from tdsl.source import Span
from tdsl.types import Affine, DType, TensorType


@dataclass(frozen=True)
class Typed:
    """A lowered expression: a checked node, or a weak literal value (expr None)."""

    expr: c.Expr | None
    dtype: DType
    span: Span
    weak: consts.Number | None = None
    # A weak expression that is not a constant (`select(c, 1.0, 2.0)`): built once its
    # dtype is known. `dtype` then holds its default (i64 or f32).
    builder: Callable[[DType], c.Expr] | None = None

    @property
    def is_weak(self) -> bool:
        """True for a literal (or an expression of literals) whose dtype is still open."""
        return self.expr is None

    @property
    def is_const(self) -> bool:
        """True for a weak literal with a known value."""
        return self.expr is None and self.builder is None


@dataclass(frozen=True)
class Evidence:
    """Index `index` appears alone as subscript `dim` of `tensor`, whose size there is `size`."""

    index: str
    size: Affine
    tensor: str
    dim: int
    span: Span


@dataclass(frozen=True)
class Access:
    """A subscript to prove in range once every index's extent is known."""

    tensor: str
    dim: int
    size: Affine
    subscript: Affine
    span: Span
    enclosing: tuple[str, ...]


@dataclass
class Scope:
    """Everything an expression may name, plus what lowering learns along the way."""

    tensors: dict[str, TensorType]
    symbols: set[str]
    fns: dict[str, ast.Fn]
    poisoned: set[str]
    indices: dict[str, str] = field(default_factory=dict)       # source name -> unique name
    extents: dict[str, Affine] = field(default_factory=dict)    # unique name -> extent
    used_indices: set[str] = field(default_factory=set)
    source_names: dict[str, str] = field(default_factory=dict)  # unique name -> as written
    reduced: set[str] = field(default_factory=set)              # reduction indices (unique)
    reserved_indices: set[str] = field(default_factory=set)
    fn_values: dict[str, Typed] | None = None
    broken_fns: set[str] = field(default_factory=set)     # recursive fns, already reported
    opaque_fns: bool = False                              # calls are not inlined
    whole: dict[str, tuple[Affine, ...]] | None = None
    evidence: list[Evidence] = field(default_factory=list)
    accesses: list[Access] = field(default_factory=list)
    equalities: list[tuple[Evidence, Evidence]] = field(default_factory=list)
    reads: set[str] = field(default_factory=set)
    inlined: int = 0

    def fresh_index(self, name: str, generated: bool = False) -> str:
        """A unique index name for this statement, `name` itself when free; a `generated`
        name also avoids every name the statement's source mentions."""
        avoid = self.reserved_indices if generated else set()
        candidate, n = name, 1
        while candidate in self.used_indices or candidate in avoid:
            n += 1
            candidate = f"{name}_{n}"
        self.used_indices.add(candidate)
        self.source_names[candidate] = name
        return candidate

    def written(self, name: str) -> str:
        """An index's name as the source writes it (unique names may carry a suffix)."""
        return self.source_names.get(name, name)

    def written_form(self, form: Affine) -> Affine:
        """An affine form with index names as the source writes them, for messages."""
        renamed = {u: Affine.of(self.written(u)) for u in form.names() if self.written(u) != u}
        return form.substitute(renamed) if renamed else form

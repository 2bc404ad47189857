"""How a kernel may be cut into blocks: the structural analysis behind `tdsl.dask`.

Every shape symbol of a kernel gets one of three roles, read off the checked program:

- **windowed**: the kernel is translation-invariant along the symbol. Every statement index
  that runs over it is used only as `index + rest` in a subscript of that symbol's dimensions
  (`rest` holding no such index: a literal, a reduction index over another symbol, ...), never
  as a value, and the symbol's size enters no expression. Output element `p` then depends only
  on inputs `p .. p + h`, where `h` (the halo) is how much shorter the output dimension is than
  the input's (`y: f32[N - 2]` with `x: f32[N]`: h = 2). With h = 0 the dimension is chunked
  freely; with h > 0 each block is extended by h elements of its right neighbour (dask's
  overlap) and the kernel runs on the extended block.
- **split**: the kernel is one statement `out[...] = op[r, ...](body)` with op in
  sum/max/min/prod, and the symbol is the extent of the reduction index `r`, read only as a
  plain `x[.., r, ..]`. Each block yields a partial result; a tree reduction combines them.
- **merged**: anything else (reduced over, read with a symbol-dependent subscript, its size
  used as a value, ...). Such dimensions are put in one chunk; `reasons` says why.

This module reads only the checked program (`tdsl.checked`) and imports nothing from dask.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from tdsl import checked as c
from tdsl.types import Affine, FloorDiv

SPLIT_OPS = frozenset({"sum", "max", "min", "prod"})


@dataclass(frozen=True)
class Structure:
    """The chunking roles of one kernel's shape symbols (see the module docstring).

    `windowed` maps a symbol to the offsets `A` of the output dimensions `S + A` (one per
    output; the halo is `-A` evaluated with the call's symbols); `local_offsets` the same for
    the kernel's local tensors. `split` maps a symbol to the reduction op combining its
    partial results. `reasons` maps every other symbol to why it must be one chunk.
    """

    kernel: str
    windowed: dict[str, tuple[Affine, ...]] = field(default_factory=dict)
    local_offsets: dict[str, tuple[Affine, ...]] = field(default_factory=dict)
    split: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def split_op(self) -> str | None:
        """The reduction op of a split kernel, or None."""
        return next(iter(self.split.values()), None)

    def describe(self) -> str:
        """One line per symbol: its role and, for merged symbols, the reason."""
        lines = []
        for sym, offsets in sorted(self.windowed.items()):
            halo = ", ".join(str(-a) for a in offsets)
            lines.append(f"{sym}: chunked freely" if all(a == Affine() for a in offsets)
                         else f"{sym}: chunked with a halo of {halo}")
        for sym, op in sorted(self.split.items()):
            lines.append(f"{sym}: split into per-chunk partial {op}s, combined by a tree")
        for sym, why in sorted(self.reasons.items()):
            lines.append(f"{sym}: one chunk ({why})")
        return "\n".join(lines)


# ---- walking the checked program -------------------------------------------------------------


@dataclass(frozen=True)
class _Use:
    """One place of a statement: a read (tensor, dim, subscript), an index used as a value, a
    symbol used as a value (`subscript` holds it), or a reduction index (`subscript` holds
    its extent)."""

    kind: str  # "read", "index", "symbol", "reduce"
    where: str  # the statement target, for messages
    extents: dict[str, Affine]  # index -> extent, of the indices in scope
    tensor: str = ""
    dim: int = 0
    subscript: Affine = Affine()
    text: str = ""


def _uses(statement: c.Statement) -> Iterator[_Use]:
    scope = dict(zip(statement.indices, statement.extents))
    yield from _expr_uses(statement.expr, statement.target, scope)


def _expr_uses(expr: c.Expr, where: str, scope: dict[str, Affine]) -> Iterator[_Use]:
    if isinstance(expr, c.Read):
        subs = ", ".join(str(s) for s in expr.subscripts)
        for dim, sub in enumerate(expr.subscripts):
            yield _Use("read", where, scope, expr.tensor, dim, sub, f"{expr.tensor}[{subs}]")
    elif isinstance(expr, c.IndexVar):
        yield _Use("index", where, scope, text=expr.name)
    elif isinstance(expr, c.SymbolVal):
        yield _Use("symbol", where, scope, subscript=expr.value, text=str(expr.value))
    elif isinstance(expr, c.Reduce):
        inner = {**scope, **dict(zip(expr.indices, expr.extents))}
        for index, extent in zip(expr.indices, expr.extents):
            yield _Use("reduce", where, inner, text=f"{expr.op}[{index}]", subscript=extent)
        yield from _expr_uses(expr.body, where, inner)
    else:
        for child in _children(expr):
            yield from _expr_uses(child, where, scope)


def _children(expr: c.Expr) -> tuple[c.Expr, ...]:
    if isinstance(expr, c.Unary | c.Cast):
        return (expr.x,)
    if isinstance(expr, c.Binary):
        return (expr.a, expr.b)
    if isinstance(expr, c.Select):
        return (expr.cond, expr.a, expr.b)
    return ()


def _in_floordiv(form: Affine, name: str) -> bool:
    return any(isinstance(atom, FloorDiv) and name in atom.expr.names()
               for atom, _ in form.terms)


# ---- the analysis ------------------------------------------------------------------------------


class _Analysis:
    """One analysis of one checked kernel."""

    def __init__(self, kernel: c.Kernel):
        self.kernel = kernel
        sig = kernel.signature
        self.symbols = {s.symbol for s in sig.symbols}
        self.tensors = {p.name: p.type for p in sig.inputs + sig.outputs}
        self.tensors.update({loc.name: loc.type for loc in kernel.locals})
        self.inputs = {p.name for p in sig.inputs}
        self.outputs = [p.name for p in sig.outputs]
        self.uses = [u for st in kernel.statements for u in _uses(st)]
        self.reasons: dict[str, str] = {}

    def exclude(self, symbol: str, why: str) -> None:
        """Mark a symbol merged (the first reason is kept)."""
        if symbol in self.symbols:
            self.reasons.setdefault(symbol, why)

    def run(self) -> Structure:
        split = self._split()
        for sym in split:
            self.exclude(sym, "split")
        self._intrinsic()
        candidates = self.symbols - set(self.reasons)
        while True:
            removed = self._relational(candidates)
            if not removed:
                break
            candidates -= removed
        windowed = {s: self._offsets(s, self.outputs) for s in sorted(candidates)}
        local_names = [loc.name for loc in self.kernel.locals]
        local_offsets = {s: self._offsets(s, local_names) for s in sorted(candidates)}
        reasons = {s: why for s, why in self.reasons.items() if s not in split}
        return Structure(self.kernel.name, windowed, local_offsets, split, reasons)

    def _offsets(self, symbol: str, tensors: list[str]) -> tuple[Affine, ...]:
        found = []
        for name in tensors:
            for dim in self.tensors[name].shape:
                if symbol in dim.names():
                    found.append(dim - symbol)
        return tuple(found)

    # ---- rules that look at one symbol alone ----------------------------------------------
    def _intrinsic(self) -> None:
        for use in self.uses:
            if use.kind == "reduce":
                for sym in use.subscript.names():
                    self.exclude(sym, f"it is reduced over by {use.text} in the statement "
                                      f"defining '{use.where}'")
            elif use.kind == "symbol":
                for sym in use.subscript.names():
                    self.exclude(sym, f"its size is used as a value ({use.text}) in the "
                                      f"statement defining '{use.where}'")
            elif use.kind == "index":
                for sym in use.extents[use.text].names():
                    self.exclude(sym, f"index '{use.text}' is used as a value in the "
                                      f"statement defining '{use.where}'")
        for name, ttype in self.tensors.items():
            seen: set[str] = set()
            for dim_no, dim in enumerate(ttype.shape):
                for sym in dim.names():
                    label = f"dimension {dim_no} of '{name}' is {dim}"
                    if sym in seen:
                        self.exclude(sym, f"it sizes two dimensions of '{name}'")
                    seen.add(sym)
                    if dim.coef(sym) != 1 or _in_floordiv(dim, sym):
                        self.exclude(sym, label)
                    if name in self.inputs and dim.as_name() != sym:
                        self.exclude(sym, label)
        for sym in sorted(self.symbols):
            for out in self.outputs:
                if not any(sym in d.names() for d in self.tensors[out].shape):
                    self.exclude(sym, f"output '{out}' has no dimension of size {sym}")
        for cond in self.kernel.signature.conditions:
            for sym in cond.expr.names():
                if cond.kind != "ge" or cond.expr.coef(sym) <= 0 or \
                        _in_floordiv(cond.expr, sym):
                    self.exclude(sym, f"a call-time condition ({cond.message}) involves it")

    # ---- rules that depend on which other symbols stay chunked -----------------------------
    def _relational(self, candidates: set[str]) -> set[str]:
        removed: set[str] = set()

        def drop(sym: str, why: str) -> None:
            if sym in candidates and sym not in removed:
                removed.add(sym)
                self.exclude(sym, why)

        for name, ttype in self.tensors.items():
            for dim in ttype.shape:
                chunked = dim.names() & candidates
                if len(chunked) > 1:
                    for sym in chunked:
                        drop(sym, f"dimension {dim} of '{name}' mixes {', '.join(chunked)}")
        for use in self.uses:
            if use.kind == "read":
                self._check_read(use, candidates, drop)
        return removed

    def _check_read(self, use: _Use, candidates: set[str], drop) -> None:
        dim = self.tensors[use.tensor].shape[use.dim]
        sub = use.subscript
        why = f"it is read as {use.text} in the statement defining '{use.where}'"
        indices = [n for n in sub.names() if n in use.extents]
        for sym in candidates:
            owners = [n for n in indices if sym in use.extents[n].names()]
            if sym not in dim.names():
                if owners or sym in sub.names():
                    drop(sym, why)
                continue
            if len(owners) != 1 or sym in sub.names():
                drop(sym, why)
                continue
            (owner,) = owners
            if sub.coef(owner) != 1 or _in_floordiv(sub, owner):
                drop(sym, why)

    # ---- the reduction split ----------------------------------------------------------------
    def _split(self) -> dict[str, str]:
        """The symbols over which the kernel's single reduction can be split."""
        statements = self.kernel.statements
        if len(self.outputs) != 1 or len(statements) != 1:
            return {}
        (st,) = statements
        top = st.expr
        if not isinstance(top, c.Reduce) or top.op not in SPLIT_OPS:
            return {}
        found: dict[str, str] = {}
        for index, extent in zip(top.indices, top.extents):
            sym = extent.as_name()
            if sym is not None and sym not in found and self._splittable(sym, index, top):
                found[sym] = top.op
        return found

    def _splittable(self, sym: str, index: str, top: c.Reduce) -> bool:
        sig = self.kernel.signature
        if any(sym in d.names() for d in self.tensors[self.outputs[0]].shape):
            return False
        if any(sym in cond.expr.names() for cond in sig.conditions):
            return False
        for p in sig.inputs:
            dims = [d for d in p.type.shape if sym in d.names()]
            if len(dims) > 1 or any(d.as_name() != sym for d in dims):
                return False
        others = [e for i, e in zip(top.indices, top.extents) if i != index]
        if any(sym in e.names() for e in others):
            return False
        for use in self.uses:
            if use.kind == "symbol" and sym in use.subscript.names():
                return False
            if use.kind == "index" and use.text == index:
                return False
            if use.kind == "read":
                reads_dim = sym in self.tensors[use.tensor].shape[use.dim].names()
                uses_index = index in use.subscript.names()
                if (reads_dim or uses_index) and (use.subscript.as_name() != index
                                                  or not reads_dim):
                    return False
        return self._nested_reductions_avoid(sym, top.body)

    def _nested_reductions_avoid(self, sym: str, expr: c.Expr) -> bool:
        if isinstance(expr, c.Reduce):
            if any(sym in e.names() for e in expr.extents):
                return False
            return self._nested_reductions_avoid(sym, expr.body)
        return all(self._nested_reductions_avoid(sym, ch) for ch in _children(expr))


def analyze(kernel: c.Kernel) -> Structure:
    """The chunking roles of a checked kernel's shape symbols."""
    return _Analysis(kernel).run()

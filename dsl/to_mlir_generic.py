"""One `linalg.generic` of the MLIR translation (`tdsl.to_mlir`): its loops in
`loop_order`, its operands (reads as indexing maps, or `tensor.extract` where a map cannot
say them), the dummy operands that give reduction loops their range, and its region."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from tdsl.checked import Binary, Cast, Const, Expr, IndexVar, Read, Reduce, Select, SymbolVal, Unary
from tdsl.to_mlir_ops import ScalarOps, storage_type
from tdsl.types import Affine, DType, FloorDiv, TensorType

if TYPE_CHECKING:
    from tdsl.to_mlir import FuncEmitter


def tensor_type(ttype: TensorType, dtype: DType | None = None) -> str:
    """The (dynamically shaped) tensor type of a tensor, optionally with another dtype."""
    et = storage_type(dtype or ttype.dtype)
    if ttype.rank == 0:
        return f"tensor<{et}>"
    return f"tensor<{'x'.join('?' * ttype.rank)}x{et}>"


def affine_expr(form: Affine, names: dict[str, str]) -> str:
    """`form` as an MLIR affine expression, with each name spelled `names[name]` (d0, s1)."""
    parts: list[str] = []
    for atom, coef in form.terms:
        if isinstance(atom, FloorDiv):
            text = f"({affine_expr(atom.expr, names)}) floordiv {atom.divisor}"
        else:
            text = names[atom]
        parts.append(text if coef == 1 else f"({text}) * {coef}")
    if form.const or not parts:
        parts.append(str(form.const))
    return " + ".join(parts)


@dataclasses.dataclass
class Operand:
    """An input operand of a generic."""

    value: str  # SSA tensor
    type: str  # tensor type
    map: str  # affine map text
    elem: str  # element type of the block argument
    bare: frozenset[int] = frozenset()  # loops the map indexes with a bare dimension


class Body:
    """The region of one linalg.generic: expression values, operands, index values."""

    def __init__(self, gen: Generic):
        self.gen = gen
        self.f = gen.f
        self.lines: list[str] = []
        self.ops = ScalarOps(self.emit, self.f.fresh)
        self.memo: dict[Expr, str] = {}
        self.dim_index: dict[str, str] = {}

    def emit(self, text: str, results: int = 1) -> str:
        """Append an op to the region; its result's SSA name."""
        return self.f._emit_into(self.lines, text, results)

    def arg(self, tensor: str, ttype: str, dtype: DType) -> str:
        """The value of an identity-mapped operand (used by finishing generics)."""
        gen = self.gen
        dims = ", ".join(f"d{k}" for k in range(len(gen.loops)))
        results = ", ".join(f"d{gen.loops.index(n)}" for n in gen.par)
        arg = gen.operand(tensor, ttype, f"({dims}) -> ({results})", storage_type(dtype),
                          frozenset(range(len(gen.loops))))
        return self.ops.from_storage(arg, dtype)

    def index(self, name: str) -> str:
        """The `linalg.index` value of loop `name` (emitted once)."""
        if name not in self.dim_index:
            self.dim_index[name] = self.emit(f"linalg.index {self.gen.loops.index(name)} : index")
        return self.dim_index[name]

    def value(self, e: Expr) -> str:
        """The SSA value of expression `e` (each distinct subexpression emitted once)."""
        if e not in self.memo:
            self.memo[e] = self._value(e)
        return self.memo[e]

    def _value(self, e: Expr) -> str:
        ops = self.ops
        if isinstance(e, Const):
            return ops.const(e.value, e.dtype)
        if isinstance(e, IndexVar):
            return self.emit(f"arith.index_cast {self.index(e.name)} : index to i64")
        if isinstance(e, SymbolVal):
            return self.f.i64_value(e.value)
        if isinstance(e, Read):
            return ops.from_storage(self.gen.read(self, e), e.dtype)
        if isinstance(e, Unary):
            return ops.unary(e.op, self.value(e.x), e.dtype)
        if isinstance(e, Binary):
            return ops.binary(e.op, self.value(e.a), self.value(e.b), e.a.dtype)
        if isinstance(e, Select):
            return ops.select(self.value(e.cond), self.value(e.a), self.value(e.b), e.dtype)
        if isinstance(e, Cast):
            return ops.cast(self.value(e.x), e.x.dtype, e.dtype)
        raise NotImplementedError(f"nested {type(e).__name__} reached the MLIR emitter")


class IdentityCopy(Exception):
    """The generic being built would only copy one operand."""


def loop_order(par: tuple[str, ...], red: tuple[str, ...], body: Expr | None) -> list[str]:
    """The loops outermost first (convert-linalg-to-loops nests them in this order).

    The innermost loop is the one that most reads (and the target) index with a bare last
    subscript, i.e. walk contiguously in C-ordered arrays, so that LLVM vectorizes it: for a
    matmul `C[m, n] = sum[k](A[m, k] * B[k, n])`, `n` rather than `k`. A last subscript that
    adds statement indices to others with unit coefficients (`x[n, c, i + r, j + s]`) counts
    for the statement indices only: the reduction indices of such windows are short (a
    convolution's filter width), so a convolution accumulates along `j`, in vectors, rather
    than along `s`. Ties keep the natural order (statement indices, then reduction indices
    innermost).
    """
    loops = list(par) + list(red)
    if len(loops) < 2 or body is None:
        return loops
    score = dict.fromkeys(loops, 0)
    if par:
        score[par[-1]] += 1
    for read in expr_reads(body):
        for name in _contiguous_indices(read, par):
            if name in score:
                score[name] += 1
    best = max(reversed(loops), key=lambda n: score[n])  # the last of the best on a tie
    return [n for n in loops if n != best] + [best]


def _contiguous_indices(read: Read, par: tuple[str, ...]) -> list[str]:
    """The indices along which `read` walks its last axis element by element: a bare last
    subscript, or the statement indices of a sum of indices with unit coefficients."""
    if not read.subscripts:
        return []
    last = read.subscripts[-1]
    name = last.as_name()
    if name is not None:
        return [name]
    if any(not isinstance(atom, str) or coef != 1 for atom, coef in last.terms):
        return []
    return [atom for atom, _ in last.terms if atom in par]


def expr_reads(e: Expr) -> list[Read]:
    """Every `Read` of an expression (hoisted reductions excluded)."""
    if isinstance(e, Read):
        return [e]
    if isinstance(e, Unary | Cast):
        return expr_reads(e.x)
    if isinstance(e, Binary):
        return expr_reads(e.a) + expr_reads(e.b)
    if isinstance(e, Select):
        return expr_reads(e.cond) + expr_reads(e.a) + expr_reads(e.b)
    if isinstance(e, Reduce):
        return expr_reads(e.body)
    return []


class Generic:
    """One linalg.generic: loops (in `loop_order`), operands, dummies, region."""

    def __init__(self, f: FuncEmitter, par: tuple[str, ...], par_ext: tuple[Affine, ...],
                 red: tuple[str, ...], red_ext: tuple[Affine, ...], force_extract: bool = False,
                 body: Expr | None = None, red_guard: tuple[Affine, ...] = ()):
        self.f = f
        # The first reduction loop is empty where one of `red_guard` is 0. Its reads then go
        # through tensor.extract, so the loop ranges come only from the dummies.
        self.red_guard = red_guard
        self.force_extract = force_extract or bool(red_guard)
        self.par, self.red = list(par), list(red)
        self.loops = loop_order(par, red, body)
        self.extents = dict(zip(list(par) + list(red), list(par_ext) + list(red_ext)))
        self.operands: list[Operand] = []
        self.block_args: list[str] = []
        self.by_key: dict[tuple[str, str], int] = {}

    def dims(self) -> str:
        """The loop dimensions `d0, d1, ...` of an indexing map."""
        return ", ".join(f"d{k}" for k in range(len(self.loops)))

    def operand(self, tensor: str, ttype: str, map_body: str, elem: str,
                bare: frozenset[int] = frozenset()) -> str:
        """The block argument of an input operand (deduplicated by tensor and map)."""
        key = (tensor, map_body)
        if key not in self.by_key:
            self.by_key[key] = len(self.operands)
            self.operands.append(Operand(tensor, ttype, f"affine_map<{map_body}>", elem, bare))
            self.block_args.append(f"%in{self.f.fresh()}")
        return self.block_args[self.by_key[key]]

    def read(self, body: Body, e: Read) -> str:
        """The element `e` reads, as stored: a mapped operand or a `tensor.extract`."""
        ttype = self.f.types[e.tensor]
        tensor = self.f.tensors[e.tensor]
        if ttype.rank == 0 and self.f.scalar_reads:
            if tensor not in self.f.scalars:
                self.f.scalars[tensor] = self.f._emit_top(
                    f"tensor.extract {tensor}[] : {tensor_type(ttype)}")
            return self.f.scalars[tensor]
        names = {n: f"d{k}" for k, n in enumerate(self.loops)}
        if not self.force_extract and self._mappable(e, ttype):
            results = ", ".join(affine_expr(s, names) for s in e.subscripts)
            bare = frozenset(self.loops.index(n) for n in
                             (s.as_name() for s in e.subscripts) if n is not None)
            return self.operand(tensor, tensor_type(ttype), f"({self.dims()}) -> ({results})",
                                storage_type(ttype.dtype), bare)
        indices = [self._subscript(body, s) for s in e.subscripts]
        return body.emit(f"tensor.extract {tensor}[{', '.join(indices)}] : "
                         f"{tensor_type(ttype)}")

    def _mappable(self, e: Read, ttype: TensorType) -> bool:
        for pos, sub in enumerate(e.subscripts):
            if not sub.names() <= set(self.loops):
                return False  # shape symbols cannot appear in an indexing map
            name = sub.as_name()
            if name is not None and ttype.shape[pos] != self.extents[name]:
                return False  # would let linalg infer the loop range from this operand
        return True

    def _subscript(self, body: Body, sub: Affine) -> str:
        if sub.is_const:
            return body.ops.raw_int(sub.const, "index")
        dims = [n for n in self.loops if n in sub.names()]
        syms = sorted(sub.names() - set(dims))
        names = {n: f"d{k}" for k, n in enumerate(dims)}
        names.update({n: f"s{k}" for k, n in enumerate(syms)})
        dim_ops = ", ".join(body.index(n) for n in dims)
        sym_ops = ", ".join(self.f.symbols[s] for s in syms)
        sym_decl = f"[{', '.join(f's{k}' for k in range(len(syms)))}]" if syms else ""
        return body.emit(
            f"affine.apply affine_map<({', '.join(names[n] for n in dims)}){sym_decl} -> "
            f"({affine_expr(sub, names)})>({dim_ops})" + (f"[{sym_ops}]" if syms else ""))

    def _add_dummies(self) -> None:
        """A 1-D operand for each reduction loop no operand indexes with a bare dimension."""
        covered: set[int] = set()
        for op in self.operands:
            covered |= op.bare
        for name in self.red:
            k = self.loops.index(name)
            if k in covered:
                continue
            guard = self.red_guard if name == self.red[0] else ()
            dummy = self.f.empty((self.extents[name],), DType.I8, guard)
            self.operands.append(Operand(dummy, "tensor<?xi8>",
                                          f"affine_map<({self.dims()}) -> (d{k})>", "i8"))
            self.block_args.append(f"%in{self.f.fresh()}")

    def build(self, init: str, out_type: TensorType, yield_fn) -> str:
        """Emit the generic writing into `init`; `yield_fn(body, out_arg)` gives the value."""
        body = Body(self)
        out_arg = f"%out{self.f.fresh()}"
        result = yield_fn(body, out_arg)
        if result in self.block_args:
            raise IdentityCopy()
        self._add_dummies()
        ttype = tensor_type(out_type)
        out_dims = ", ".join(f"d{self.loops.index(n)}" for n in self.par)
        out_map = f"affine_map<({self.dims()}) -> ({out_dims})>"
        maps = ", ".join([o.map for o in self.operands] + [out_map])
        iters = ", ".join('"reduction"' if n in self.red else '"parallel"' for n in self.loops)
        ins = ""
        if self.operands:
            ins = (f" ins({', '.join(o.value for o in self.operands)} : "
                   f"{', '.join(o.type for o in self.operands)})")
        args = [f"{a}: {o.elem}" for a, o in zip(self.block_args, self.operands)]
        args.append(f"{out_arg}: {storage_type(out_type.dtype)}")
        region = "\n      ".join(body.lines + [f"linalg.yield {result} : "
                                               f"{storage_type(out_type.dtype)}"])
        return self.f._emit_top(
            f"linalg.generic {{indexing_maps = [{maps}], iterator_types = [{iters}]}}{ins} "
            f"outs({init} : {ttype}) {{\n    ^bb0({', '.join(args)}):\n      {region}\n    }} "
            f"-> {ttype}")

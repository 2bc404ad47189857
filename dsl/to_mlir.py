"""Checked kernel -> MLIR text: one `func.func` of `linalg.generic` ops on tensors.

Calling convention of the emitted function `@tdsl_k_<kernel>` (see docs/architecture.md):
- one argument per input, then one per output, in signature order, each a memref of the
  dtype's storage type with a fully dynamic strided layout, e.g.
  `memref<?x?xf32, strided<[?, ?], offset: ?>>` (rank-0 parameters, scalars included, are
  `memref<f32, strided<[], offset: ?>>`); bool is stored as i8 (numpy's one-byte bool);
- shape symbols are read from the input dimensions named by the signature (`memref.dim`);
- destination-passing style: inputs enter as `bufferization.to_tensor ... restrict`, outputs
  as `... restrict writable`; each output's final tensor is written back with
  `bufferization.materialize_in_destination`. Locals are `tensor.empty` temporaries.

Each statement becomes one `linalg.generic` over the statement's indices (parallel) and, for a
top-level reduction, its reduction indices. Reads whose subscripts are affine in the loop
indices become operands with indexing maps (floor divisions as `floordiv`); reads whose
subscripts involve shape symbols, or whose dimension may differ from the loop's extent (linalg
infers loop ranges from the first operand that indexes a loop with a bare dimension), use
`linalg.index` + `affine.apply` + `tensor.extract`. A reduction index that no operand indexes
with a bare dimension gets a one-dimensional `tensor.empty` operand of its extent, so that
linalg knows its range. A reduction nested inside an expression is first hoisted into a
temporary statement over the indices it depends on.
"""

from __future__ import annotations

import dataclasses

from tdsl.checked import (
    Binary,
    Cast,
    Const,
    Expr,
    IndexVar,
    Kernel,
    Local,
    Read,
    Reduce,
    Select,
    Statement,
    SymbolVal,
    Unary,
)
from tdsl.to_mlir_hoist import hoist_reductions
from tdsl.to_mlir_ops import ScalarOps, compute_dtype, storage_type, value_type
from tdsl.types import Affine, DType, FloorDiv, TensorType

ENTRY_PREFIX = "tdsl_k_"


def func_symbol(kernel_name: str) -> str:
    """The MLIR / LLVM symbol of a kernel's function (prefixed: no clash with libc names)."""
    return f"{ENTRY_PREFIX}{kernel_name}"


def memref_type(ttype: TensorType) -> str:
    """The memref type of a parameter: dynamic sizes, dynamic strides and offset."""
    et = storage_type(ttype.dtype)
    if ttype.rank == 0:
        return f"memref<{et}, strided<[], offset: ?>>"
    dims = "x".join("?" * ttype.rank)
    strides = ", ".join("?" * ttype.rank)
    return f"memref<{dims}x{et}, strided<[{strides}], offset: ?>>"


def tensor_type(ttype: TensorType, dtype: DType | None = None) -> str:
    """The (dynamically shaped) tensor type of a tensor, optionally with another dtype."""
    et = storage_type(dtype or ttype.dtype)
    if ttype.rank == 0:
        return f"tensor<{et}>"
    return f"tensor<{'x'.join('?' * ttype.rank)}x{et}>"


def kernel_to_mlir(kernel: Kernel, scalar_reads: bool = True) -> str:
    """The MLIR text (a builtin module holding one `func.func`) of a checked kernel.

    With `scalar_reads` (the CPU), a rank-0 tensor is read once with `tensor.extract` before
    the generic that uses it, so what depends only on it is loop-invariant (LLVM cannot hoist
    the load itself out of an OpenMP-outlined loop, whose arguments lose `noalias`). The GPU
    pipeline reads it in the kernels (a host-side load of device memory is not possible)."""
    statements, extra, guards, domain_guards = hoist_reductions(kernel)
    emitter = _FuncEmitter(kernel, statements, kernel.locals + tuple(extra))
    emitter.guards = guards
    emitter.domain_guards = domain_guards
    emitter.scalar_reads = scalar_reads
    return emitter.emit()


# ---- affine forms as MLIR affine expressions -----------------------------------------------


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


# ---- the function --------------------------------------------------------------------------


@dataclasses.dataclass
class _Operand:
    value: str  # SSA tensor
    type: str  # tensor type
    map: str  # affine map text
    elem: str  # element type of the block argument
    bare: frozenset[int] = frozenset()  # loops the map indexes with a bare dimension


class _FuncEmitter:
    """Emits the function of one kernel; SSA names are unique across the whole function."""

    def __init__(self, kernel: Kernel, statements: list[Statement], locals_: tuple[Local, ...]):
        self.kernel = kernel
        self.statements = statements
        self.types: dict[str, TensorType] = {p.name: p.type for p in
                                             kernel.signature.inputs + kernel.signature.outputs}
        self.types.update({loc.name: loc.type for loc in locals_})
        self.outputs = {p.name for p in kernel.signature.outputs}
        self.lines: list[str] = []
        self.counter = 0
        self.tensors: dict[str, str] = {}  # name -> current tensor value
        self.symbols: dict[str, str] = {}  # symbol -> index value
        self.index_values: dict[Affine, str] = {}
        self.i64_values: dict[Affine, str] = {}
        self.ops = ScalarOps(self._emit_top, self.fresh)
        self.guards: dict[str, tuple[Affine, ...]] = {}  # see hoist_reductions
        self.domain_guards: dict[str, tuple[Affine, ...]] = {}  # likewise
        self.scalar_reads = False  # see kernel_to_mlir
        self.scalars: dict[str, str] = {}  # rank-0 tensor value -> its extracted element

    # ---- SSA helpers ----------------------------------------------------------------------
    def fresh(self) -> str:
        self.counter += 1
        return str(self.counter)

    def _emit_into(self, lines: list[str], text: str, results: int = 1) -> str:
        name = f"%v{self.fresh()}"
        lines.append(f"{name}{':' + str(results) if results > 1 else ''} = {text}")
        return name

    def _emit_top(self, text: str, results: int = 1) -> str:
        return self._emit_into(self.lines, text, results)

    # ---- function -------------------------------------------------------------------------
    def emit(self) -> str:
        sig = self.kernel.signature
        params = list(sig.inputs) + list(sig.outputs)
        args = []
        for i, p in enumerate(params):
            args.append(f"%arg{i}: {memref_type(p.type)}")
        for src in sig.symbols:
            if src.symbol in self.symbols:
                continue
            mtype = memref_type(sig.inputs[src.param].type)
            self.symbols[src.symbol] = self._emit_top(
                f"memref.dim %arg{src.param}, {self.ops.raw_int(src.dim, 'index')} : {mtype}")
        for i, p in enumerate(params):
            mode = "restrict writable" if p.name in self.outputs else "restrict"
            self.tensors[p.name] = self._emit_top(
                f"bufferization.to_tensor %arg{i} {mode} : {memref_type(p.type)} to "
                f"{tensor_type(p.type)}")
        for st in self.statements:
            self.statement(st)
        for i, p in enumerate(sig.outputs, start=len(sig.inputs)):
            self.lines.append(
                f"bufferization.materialize_in_destination {self.tensors[p.name]} in restrict "
                f"writable %arg{i} : ({tensor_type(p.type)}, {memref_type(p.type)}) -> ()")
        body = "\n    ".join(self.lines)
        return (f"module {{\n  func.func @{func_symbol(self.kernel.name)}({', '.join(args)}) {{\n"
                f"    {body}\n    return\n  }}\n}}\n")

    # ---- shape values ---------------------------------------------------------------------
    def index_value(self, form: Affine) -> str:
        """An `index` value of a form over shape symbols, computed at function scope."""
        if form in self.index_values:
            return self.index_values[form]
        if form.is_const:
            value = self.ops.raw_int(form.const, "index")
        else:
            syms = sorted(form.names())
            names = {s: f"s{k}" for k, s in enumerate(syms)}
            operands = ", ".join(self.symbols[s] for s in syms)
            value = self._emit_top(
                f"affine.apply affine_map<()[{', '.join(names.values())}] -> "
                f"({affine_expr(form, names)})>()[{operands}]")
        self.index_values[form] = value
        return value

    def size_value(self, form: Affine) -> str:
        """Like `index_value`, clamped at 0 (a size for an allocation)."""
        value = self.index_value(form)
        if form.is_const or form.provably_nonneg():
            return value
        return self._emit_top(f"arith.maxsi {value}, {self.ops.raw_int(0, 'index')} : index")

    def i64_value(self, form: Affine) -> str:
        """An i64 value of a form over shape symbols (for `SymbolVal` and counts)."""
        if form not in self.i64_values:
            if form.is_const:
                self.i64_values[form] = self.ops.const(form.const, DType.I64)
            else:
                self.i64_values[form] = self._emit_top(
                    f"arith.index_cast {self.index_value(form)} : index to i64")
        return self.i64_values[form]

    def empty(self, extents: tuple[Affine, ...], dtype: DType,
              guard: tuple[Affine, ...] = ()) -> str:
        """A `tensor.empty` of the given extents and dtype; its first dimension is 0 where
        one of the `guard` extents is 0."""
        ttype = tensor_type(TensorType(dtype, extents))
        sizes = [self.size_value(e) for e in extents]
        if guard and sizes:
            zero = self.ops.raw_int(0, "index")
            for g in guard:
                none = self._emit_top(f"arith.cmpi sle, {self.size_value(g)}, {zero} : index")
                sizes[0] = self._emit_top(f"arith.select {none}, {zero}, {sizes[0]} : index")
        return self._emit_top(f"tensor.empty({', '.join(sizes)}) : {ttype}")

    def fill(self, value: str, tensor: str, ttype: str, elem: str) -> str:
        """`linalg.fill` of a tensor with a scalar."""
        return self._emit_top(f"linalg.fill ins({value} : {elem}) outs({tensor} : {ttype}) -> "
                              f"{ttype}")

    # ---- statements -----------------------------------------------------------------------
    def target_init(self, st: Statement) -> str:
        """The tensor a statement writes into: the output's, or a new temporary."""
        if st.target in self.outputs:
            return self.tensors[st.target]
        return self.empty(st.extents, self.types[st.target].dtype, self.guards.get(st.target, ()))

    def statement(self, st: Statement) -> None:
        ttype = self.types[st.target]
        if not isinstance(st.expr, Reduce):
            init = self.target_init(st)

            def element(body: _Body, _out: str) -> str:
                return body.ops.to_storage(body.value(st.expr), ttype.dtype)

            try:
                result = _Generic(self, st.indices, st.extents, (), (), body=st.expr).build(
                    init, ttype, element)
            except _IdentityCopy:
                # A pure copy would fold away and leave a `memref.copy` (a call to the MLIR
                # runtime's memrefCopy): read through tensor.extract instead.
                result = _Generic(self, st.indices, st.extents, (), (), True, st.expr).build(
                    init, ttype, element)
            self.tensors[st.target] = result
            return
        red = st.expr
        acc = red.dtype.accumulator
        empty = self.empty_domain_flag(red)
        direct = acc is red.dtype and red.op != "mean" and empty is None
        acc_type = TensorType(acc, ttype.shape, ttype.scalar)
        init = (self.target_init(st) if direct else
                self.empty(st.extents, acc, self.guards.get(st.target, ())))
        init = self.fill(self.ops.reduce_identity(red.op, acc), init, tensor_type(acc_type),
                         storage_type(acc))

        def combine(body: _Body, out: str) -> str:
            v = body.ops.cast(body.value(red.body), red.body.dtype, acc)
            return body.ops.reduce_combine(red.op, out, v, acc)

        gen = _Generic(self, st.indices, st.extents, red.indices, red.extents, body=red,
                       red_guard=self.domain_guards.get(st.target, ()))
        result = gen.build(init, acc_type, combine)
        if direct:
            self.tensors[st.target] = result
            return
        count = self.count_value(red.extents) if red.op == "mean" else None

        def finish(body: _Body, out: str) -> str:
            v = body.arg(result, tensor_type(acc_type), acc)
            if count is not None:
                v = body.ops.binary("div", v, body.ops.cast(count, DType.I64, acc), acc)
            if empty is not None:
                identity = (body.ops.const(red.op == "min", acc) if acc is DType.BOOL
                            else body.ops.reduce_identity(red.op, acc))
                v = body.ops.select(empty, identity, v, acc)
            return body.ops.to_storage(body.ops.cast(v, acc, red.dtype), red.dtype)

        self.tensors[st.target] = _Generic(self, st.indices, st.extents, (), ()).build(
            self.target_init(st), ttype, finish)

    def empty_domain_flag(self, red: Reduce) -> str | None:
        """An i1 that is true when the reduction's domain is empty, where that matters.

        An integer `min`/`max`/`prod` whose body folds to its absorbing element (`minui(acc,
        0) = 0`, `muli(acc, 0) = 0`) no longer reads its accumulator, so canonicalization drops
        the identity fill: on an empty domain the result must then be set explicitly. Float
        combiners have no such fold (NaN), `sum`/`mean` fold to the accumulator.
        """
        if red.op not in ("min", "max", "prod") or red.dtype.accumulator.is_float:
            return None
        if all(e.provably_positive() for e in red.extents):
            return None
        count = self.count_value(red.extents)
        return self._emit_top(f"arith.cmpi sle, {count}, {self.ops.const(0, DType.I64)} : i64")

    def count_value(self, extents: tuple[Affine, ...]) -> str:
        """The i64 number of points of a reduction domain (a product of clamped extents)."""
        total = self.ops.const(1, DType.I64)
        for e in extents:
            size = self._emit_top(f"arith.index_cast {self.size_value(e)} : index to i64")
            total = self._emit_top(f"arith.muli {total}, {size} : i64")
        return total


class _Body:
    """The region of one linalg.generic: expression values, operands, index values."""

    def __init__(self, gen: _Generic):
        self.gen = gen
        self.f = gen.f
        self.lines: list[str] = []
        self.ops = ScalarOps(self.emit, self.f.fresh)
        self.memo: dict[Expr, str] = {}
        self.dim_index: dict[str, str] = {}

    def emit(self, text: str, results: int = 1) -> str:
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
        if name not in self.dim_index:
            self.dim_index[name] = self.emit(f"linalg.index {self.gen.loops.index(name)} : index")
        return self.dim_index[name]

    def value(self, e: Expr) -> str:
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


class _IdentityCopy(Exception):
    """The generic being built would only copy one operand."""


def loop_order(par: tuple[str, ...], red: tuple[str, ...], body: Expr | None) -> list[str]:
    """The loops outermost first (convert-linalg-to-loops nests them in this order).

    The innermost loop is the one that most reads (and the target) index with a bare last
    subscript, i.e. walk contiguously in C-ordered arrays, so that LLVM vectorizes it: for a
    matmul `C[m, n] = sum[k](A[m, k] * B[k, n])`, `n` rather than `k`. Ties keep the natural
    order (statement indices, then reduction indices innermost).
    """
    loops = list(par) + list(red)
    if len(loops) < 2 or body is None:
        return loops
    score = dict.fromkeys(loops, 0)
    if par:
        score[par[-1]] += 1
    for read in expr_reads(body):
        name = read.subscripts[-1].as_name() if read.subscripts else None
        if name in score:
            score[name] += 1
    best = max(reversed(loops), key=lambda n: score[n])  # the last of the best on a tie
    return [n for n in loops if n != best] + [best]


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


class _Generic:
    """One linalg.generic: loops (in `loop_order`), operands, dummies, region."""

    def __init__(self, f: _FuncEmitter, par: tuple[str, ...], par_ext: tuple[Affine, ...],
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
        self.operands: list[_Operand] = []
        self.block_args: list[str] = []
        self.by_key: dict[tuple[str, str], int] = {}

    def dims(self) -> str:
        return ", ".join(f"d{k}" for k in range(len(self.loops)))

    def operand(self, tensor: str, ttype: str, map_body: str, elem: str,
                bare: frozenset[int] = frozenset()) -> str:
        """The block argument of an input operand (deduplicated by tensor and map)."""
        key = (tensor, map_body)
        if key not in self.by_key:
            self.by_key[key] = len(self.operands)
            self.operands.append(_Operand(tensor, ttype, f"affine_map<{map_body}>", elem, bare))
            self.block_args.append(f"%in{self.f.fresh()}")
        return self.block_args[self.by_key[key]]

    def read(self, body: _Body, e: Read) -> str:
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

    def _subscript(self, body: _Body, sub: Affine) -> str:
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
            self.operands.append(_Operand(dummy, "tensor<?xi8>",
                                          f"affine_map<({self.dims()}) -> (d{k})>", "i8"))
            self.block_args.append(f"%in{self.f.fresh()}")

    def build(self, init: str, out_type: TensorType, yield_fn) -> str:
        """Emit the generic writing into `init`; `yield_fn(body, out_arg)` gives the value."""
        body = _Body(self)
        out_arg = f"%out{self.f.fresh()}"
        result = yield_fn(body, out_arg)
        if result in self.block_args:
            raise _IdentityCopy()
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


__all__ = ["func_symbol", "hoist_reductions", "kernel_to_mlir", "memref_type", "tensor_type",
           "value_type", "compute_dtype"]

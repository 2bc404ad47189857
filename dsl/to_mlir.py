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

from tdsl.checked import (
    Kernel,
    Local,
    Reduce,
    Statement,
)
from tdsl.to_mlir_generic import (
    Body,
    Generic,
    IdentityCopy,
    affine_expr,
    tensor_type,
)
from tdsl.to_mlir_hoist import hoist_reductions
from tdsl.to_mlir_ops import ScalarOps, compute_dtype, storage_type, value_type
from tdsl.types import Affine, DType, TensorType

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


def kernel_to_mlir(kernel: Kernel, scalar_reads: bool = True) -> str:
    """The MLIR text (a builtin module holding one `func.func`) of a checked kernel.

    With `scalar_reads` (the CPU), a rank-0 tensor is read once with `tensor.extract` before
    the generic that uses it, so what depends only on it is loop-invariant (LLVM cannot hoist
    the load itself out of an OpenMP-outlined loop, whose arguments lose `noalias`). The GPU
    pipeline reads it in the kernels (a host-side load of device memory is not possible)."""
    statements, extra, guards, domain_guards = hoist_reductions(kernel)
    emitter = FuncEmitter(kernel, statements, kernel.locals + tuple(extra))
    emitter.guards = guards
    emitter.domain_guards = domain_guards
    emitter.scalar_reads = scalar_reads
    return emitter.emit()


# ---- the function --------------------------------------------------------------------------


class FuncEmitter:
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

            def element(body: Body, _out: str) -> str:
                return body.ops.to_storage(body.value(st.expr), ttype.dtype)

            try:
                result = Generic(self, st.indices, st.extents, (), (), body=st.expr).build(
                    init, ttype, element)
            except IdentityCopy:
                # A pure copy would fold away and leave a `memref.copy` (a call to the MLIR
                # runtime's memrefCopy): read through tensor.extract instead.
                result = Generic(self, st.indices, st.extents, (), (), True, st.expr).build(
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

        def combine(body: Body, out: str) -> str:
            v = body.ops.cast(body.value(red.body), red.body.dtype, acc)
            return body.ops.reduce_combine(red.op, out, v, acc)

        gen = Generic(self, st.indices, st.extents, red.indices, red.extents, body=red,
                       red_guard=self.domain_guards.get(st.target, ()))
        result = gen.build(init, acc_type, combine)
        if direct:
            self.tensors[st.target] = result
            return
        count = self.count_value(red.extents) if red.op == "mean" else None

        def finish(body: Body, out: str) -> str:
            v = body.arg(result, tensor_type(acc_type), acc)
            if count is not None:
                v = body.ops.binary("div", v, body.ops.cast(count, DType.I64, acc), acc)
            if empty is not None:
                identity = (body.ops.const(red.op == "min", acc) if acc is DType.BOOL
                            else body.ops.reduce_identity(red.op, acc))
                v = body.ops.select(empty, identity, v, acc)
            return body.ops.to_storage(body.ops.cast(v, acc, red.dtype), red.dtype)

        self.tensors[st.target] = Generic(self, st.indices, st.extents, (), ()).build(
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


__all__ = ["func_symbol", "hoist_reductions", "kernel_to_mlir", "memref_type", "tensor_type",
           "value_type", "compute_dtype"]

"""Streaming stores for large outputs (the `loops` stage, after `tdsl.row_loops`).

A pass that writes a kernel's output, element by element along its innermost loop (the last
pass of softmax or layernorm over a row, a 2-D element-wise kernel's row), makes the CPU read
every output cache line from memory before writing it (write-allocate): a third of such a
kernel's memory traffic, for data that does not stay in cache anyway when the output is
larger than the last-level cache. Non-temporal stores write whole lines without reading them.

LLVM's loop vectorizer will not vectorize a loop whose stores are marked non-temporal unless
each store is aligned to the vector, which a scalar loop cannot say, so `stream_stores`
vectorizes such passes itself: when the output is at least `min_bytes()` large, the
innermost strides are 1 and the output element-aligned (tested at run time), a loop of vector
loads, the body's ops on vectors and one aligned non-temporal `vector.store` covers the
pass's whole cache lines of the output; the original loop runs over the head and the tail
(otherwise over everything). One fence follows the loop nest (the stores are weakly ordered).
Only plain passes (`tdsl.row_loops.plain`: loads, stores, scalar arithmetic) of at most
`BODY_OPS_MAX` ops with exactly one store, into a kernel argument that nothing else in the
function reads and that no enclosing loop writes twice, qualify.
"""

from __future__ import annotations

from tdsl.gpu_ir import access_parts, const_int, depends_on, terminator
from tdsl.row_loops import (
    LINE_BYTES,
    VIEWS,
    Access,
    accesses,
    in_prefetch_strip,
    is_argument,
    may_alias,
    op_count,
    plain,
)
from tdsl.schedule_ir import nested_ops

_LANE_TYPES = ("f32", "f64", "i1", "i8", "i16", "i32", "i64")
MIN_PASS_BYTES = 4096
"""Shorter passes are not streamed: their head and tail, up to a cache line each, run in the
original loop, mostly in its scalar remainder (a 3-D stencil's 254-float rows streamed ran
13.8 -> 17.4 ms)."""
BODY_OPS_MAX = 40
"""Passes with more ops are left to LLVM's vectorizer: they are compute-bound, where its
interleaved vector loop beats this one-vector-per-step loop (an `exp` over 4096 x 4096: 7.6
against 8.8 ms on 2 threads), and the copy cost compile time (gelu's 145 ops: +50 %)."""


def min_bytes() -> int:
    """Outputs at least this large (the last-level cache of the cores in use) get streaming
    stores: smaller ones may still be in cache when the caller reads them."""
    from tdsl.schedule_ir import host

    h = host()
    return h.l3_share * max(h.cores, 1)


def stream_stores(module) -> int:
    """Give each qualifying pass (see the module's docstring) a streaming version. Returns the
    number of passes changed."""
    from tdsl.schedule_ir import host

    vector_bits = host().vector_bits
    threshold = min_bytes()
    count = 0
    for loop in nested_ops(module.operation, "scf.for"):
        plan = _plan(loop, vector_bits)
        if plan is not None:
            _fence_after(_outermost(loop))
            _stream(loop, *plan, threshold)
            count += 1
    return count


def _outermost(op):
    """The op of `op`'s function body that holds `op`."""
    while op.parent is not None and op.parent.operation.name != "func.func":
        op = op.parent.operation
    return op


def _fence_after(op) -> None:
    """A fence after `op` (once): streaming stores are weakly ordered, and this orders them
    before the kernel returns. Inside a parallel loop each thread's stores are ordered by the
    OpenMP barrier that ends it (x86 keeps stores, streaming ones too, before a locked
    instruction); a fence per pass cost 3x on a 3-D stencil's short rows."""
    from mlir import ir
    from mlir.dialects import llvm

    ops = [o.operation for o in op.block.operations]
    following = ops[ops.index(op) + 1]
    if following.name == "llvm.fence":
        return
    with ir.InsertionPoint(following), op.location:
        llvm.fence(llvm.AtomicOrdering.seq_cst)


def _plan(loop, vector_bits: int) -> tuple[Access, int, dict] | None:
    """(the store, the vector length, `lane_offsets`) of a pass that qualifies, else None."""
    if op_count(loop) > BODY_OPS_MAX or const_int(loop.operands[2]) != 1:
        return None
    if not plain(loop) or in_prefetch_strip(loop):  # plain: no nested regions
        return None
    iv = loop.regions[0].blocks[0].arguments[0]
    offsets = lane_offsets(loop)
    found = accesses(loop)
    stores = [a for a in found if a.write]
    if len(stores) != 1 or not is_argument(stores[0].root):
        return None
    store = stores[0]
    for access in found:
        if _lane_offset(access, iv, offsets) is None and \
                any(depends_on(i, [iv]) for i in access.indices):
            return None
        if access is not store and may_alias(access.root, store.root) and \
                (access.memref != store.memref or access.indices != store.indices):
            return None
    if _lane_offset(store, iv, offsets) != 0 or not _vectorizable_body(loop, iv, offsets):
        return None
    if not _new_elements_each_time(store, loop) or not _read_nowhere_else(store.root, loop):
        return None
    bits = _element_bits(store.memref)
    lanes = vector_bits // bits if bits >= 8 else 0  # an i1 output: no whole bytes
    return (store, lanes, offsets) if lanes >= 2 else None


# uses of an output that do not read its elements
_SHAPE_ONLY = frozenset({"memref.dim", "memref.extract_strided_metadata",
                         "memref.extract_aligned_pointer_as_index", "memref.store"})


def _read_nowhere_else(root, loop) -> bool:
    """True when nothing but `loop` itself reads the kernel argument `root` (a zero-fill of a
    product's output, read back by its accumulation, must stay in cache): every use of it and
    of its views but shape queries and scalar stores is in `loop`."""
    from tdsl.gpu_ir import owned_by

    pending = [root]
    while pending:
        for use in pending.pop().uses:
            op = use.owner
            if op.name in VIEWS:
                pending += list(op.results)
            elif op.name not in _SHAPE_ONLY and not owned_by(op, loop):
                return False
    return True


def _new_elements_each_time(store: Access, loop) -> bool:
    """True when the place `store` writes depends on every loop around `loop`: no element is
    written again by a later iteration (a product's accumulation into its output, inside the
    loop over k, is not a stream)."""
    outer = loop.parent
    while outer is not None and outer.operation.name != "func.func":
        op = outer.operation
        if op.name in ("scf.for", "scf.parallel"):
            for iv in op.regions[0].blocks[0].arguments:
                if not any(depends_on(v, [iv]) for v in [store.memref, *store.indices[:-1]]):
                    return False
        outer = op.parent
    return True


def lane_offsets(loop) -> dict:
    """The values of `loop`'s body that are its induction variable plus a constant, with that
    constant (the induction variable itself: 0): `affine.apply` of `d0 + c` or `s0 + c`, and
    `arith.addi` of a constant (a stencil's `x[i, k + 1]`)."""
    from mlir import ir

    body = loop.regions[0].blocks[0]
    offsets = {body.arguments[0]: 0}
    for op in body.operations:
        op = op.operation
        if len(op.results) != 1:
            continue
        shift = None
        if op.name == "affine.apply" and len(op.operands) == 1 and op.operands[0] in offsets:
            shift = _shift(ir.AffineMapAttr(op.attributes["map"]).value)
            base = op.operands[0]
        elif op.name == "arith.addi":
            a, b = op.operands
            base, constant = (a, const_int(b)) if a in offsets else (b, const_int(a))
            shift = constant if base in offsets else None
        if shift is not None:
            offsets[op.results[0]] = offsets[base] + shift
    return offsets


def _shift(affine_map) -> int | None:
    """c of a one-result map `d0 + c` or `s0 + c` (0 for `d0`), else None."""
    from mlir import ir

    if len(affine_map.results) != 1 or affine_map.n_dims + affine_map.n_symbols != 1:
        return None
    expr = affine_map.results[0]
    if isinstance(expr, ir.AffineDimExpr | ir.AffineSymbolExpr):
        return 0
    if not isinstance(expr, ir.AffineAddExpr):
        return None
    for x, c in ((expr.lhs, expr.rhs), (expr.rhs, expr.lhs)):
        if isinstance(x, ir.AffineDimExpr | ir.AffineSymbolExpr) and \
                isinstance(c, ir.AffineConstantExpr):
            return c.value
    return None


def _lane_offset(access: Access, iv, offsets: dict) -> int | None:
    """c when `access` is indexed by the induction variable plus c last and by values that
    do not depend on it elsewhere, else None."""
    if not access.indices or access.indices[-1] not in offsets:
        return None
    if any(depends_on(i, [iv]) for i in access.indices[:-1]):
        return None
    return offsets[access.indices[-1]]


def _vectorizable_body(loop, iv, offsets: dict) -> bool:
    """Every value computed in the body either has a scalar type a vector lane can hold, or is
    an index that does not depend on the induction variable, or is a lane offset
    (`lane_offsets`) used only as the last index of loads."""
    for op in loop.regions[0].blocks[0].operations:
        op = op.operation
        if op.name in ("scf.yield", "memref.load", "memref.store"):
            continue
        if len(op.results) == 1 and op.results[0] in offsets:
            if any(u.owner.name != "memref.load" or
                   u.operand_number != len(u.owner.operands) - 1
                   for u in op.results[0].uses):
                return False
            continue
        if not op.name.startswith(("arith.", "math.", "affine.apply")):
            return False
        if any(depends_on(v, [iv]) and str(v.type) == "index" for v in op.operands):
            return False
        if any(str(r.type) not in (*_LANE_TYPES, "index") for r in op.results):
            return False
    return True


def _element_bits(memref) -> int:
    from mlir import ir

    element = ir.MemRefType(memref.type).element_type
    width = getattr(element, "width", None)
    return width if str(element) in _LANE_TYPES and isinstance(width, int) else 0


def _stream(loop, store: Access, lanes: int, offsets: dict, threshold: int) -> None:
    """Give `loop` a vector loop over its whole cache lines of the output, empty unless
    streaming is possible, and run `loop` itself over two parts around it: over the head and
    the tail when streaming, over everything and nothing otherwise. One scalar copy of the pass
    serves both (clones of it for the head and the tail added 60-100 % to a stencil's compile
    time)."""
    from mlir import ir
    from mlir.dialects import arith, memref, scf

    index = ir.IndexType.get()
    body = loop.regions[0].blocks[0]
    iv = body.arguments[0]
    lb, ub = loop.operands[0], loop.operands[1]
    element_bytes = _element_bits(store.memref) // 8
    lane_memrefs: list = []
    for access in accesses(loop):
        if _lane_offset(access, iv, offsets) is not None and access.memref not in lane_memrefs:
            lane_memrefs.append(access.memref)
    with ir.InsertionPoint(loop), loop.location:
        def c(value: int):
            return arith.constant(index, value)

        metadata = {m: _metadata(m) for m in lane_memrefs}  # the store's memref among them
        one, zero = c(1), c(0)
        eq = arith.CmpIPredicate.eq
        ok = arith.cmpi(arith.CmpIPredicate.sge, _bytes(store.root, element_bytes),
                        c(threshold))
        for m in lane_memrefs:
            ok = arith.andi(ok, arith.cmpi(eq, metadata[m][2][-1], one))
        pointer = memref.extract_aligned_pointer_as_index(store.memref)
        ok = arith.andi(ok, arith.cmpi(eq, arith.remui(pointer, c(element_bytes)), zero))
        position, _, strides = metadata[store.memref]
        for u, stride in zip(store.indices[:-1], strides[:-1], strict=True):
            position = arith.addi(position, arith.muli(u, stride))
        first = arith.addi(arith.divui(pointer, c(element_bytes)), arith.addi(position, lb))
        line = max(LINE_BYTES // element_bytes, lanes)  # whole cache lines only
        head = arith.remui(arith.subi(c(line), arith.remui(first, c(line))), c(line))
        count = arith.maxsi(arith.subi(ub, lb), zero)
        ok = arith.andi(ok, arith.cmpi(arith.CmpIPredicate.sge, count,
                                       c(MIN_PASS_BYTES // element_bytes)))
        head = arith.minsi(head, count)
        start = arith.addi(lb, head)
        lines = arith.divsi(arith.subi(count, head), c(line))
        end = arith.addi(start, arith.muli(lines, c(line)))
        # No branch on `ok` (LLVM would unswitch the row loop on it: two copies of the nest,
        # twice the compile time): when it is false the vector loop is empty, and the views
        # reinterpreted with a unit stride are never read.
        head_end = arith.select(ok, start, ub)
        tail_start = arith.select(ok, end, ub)
        casts = {m: _unit_stride(m, *metadata[m]) for m in lane_memrefs}
        vector_loop = scf.ForOp(head_end, tail_start, c(lanes))
        with ir.InsertionPoint(vector_loop.body):
            _vector_body(body, vector_loop.induction_variable, lanes, casts,
                         lanes * element_bytes, offsets)
            scf.YieldOp([])
        # not a constant 2: LLVM would unroll the parts, copying the pass again
        parts = scf.ForOp(zero, arith.select(ok, c(2), one), one)
        with ir.InsertionPoint(parts.body):
            is_head = arith.cmpi(eq, parts.induction_variable, zero)
            low = arith.select(is_head, lb, tail_start)
            high = arith.select(is_head, head_end, ub)
            scf.YieldOp([])
    loop.move_before(terminator(parts.body))
    loop.operands[0] = low
    loop.operands[1] = high


def _metadata(memref_value) -> tuple:
    """(offset, sizes, strides) of a memref, as index values."""
    from mlir import ir
    from mlir.dialects import memref

    rank = ir.MemRefType(memref_value.type).rank
    meta = list(memref.extract_strided_metadata(memref_value))
    return meta[1], meta[2:2 + rank], meta[2 + rank:]


def _bytes(root, element_bytes: int):
    """The size in bytes of a kernel argument."""
    from mlir import ir
    from mlir.dialects import arith, memref

    index = ir.IndexType.get()
    total = arith.constant(index, element_bytes)
    for d in range(ir.MemRefType(root.type).rank):
        total = arith.muli(total, memref.dim(root, arith.constant(index, d)))
    return total


def _unit_stride(memref_value, offset, sizes: list, strides: list):
    """`memref_value` (whose `_metadata` are given) reinterpreted with a static innermost
    stride of 1 (checked before; a `memref.cast` would be folded back into the vector ops by
    later canonicalizations)."""
    from mlir import ir
    from mlir.dialects import memref

    shaped = ir.MemRefType(memref_value.type)
    dynamic = ir.ShapedType.get_dynamic_stride_or_offset()
    dynamic_size = ir.ShapedType.get_dynamic_size()
    rank = shaped.rank
    layout = ir.StridedLayoutAttr.get(dynamic, [dynamic] * (rank - 1) + [1])
    unit = ir.MemRefType.get(shaped.shape, shaped.element_type, layout, shaped.memory_space)
    dynamic_sizes = [sizes[d] for d in range(rank) if shaped.shape[d] == dynamic_size]
    return memref.reinterpret_cast(unit, memref_value, [offset], dynamic_sizes, strides[:-1],
                                   [dynamic], list(shaped.shape),
                                   [dynamic] * (rank - 1) + [1])


def _vector_body(body, lane, lanes: int, casts: dict, alignment: int, offsets: dict) -> None:
    """The ops of `body` (a plain pass) on `lanes` consecutive elements from `lane`: loads
    along the pass (at a lane offset, `lane_offsets`) become vector loads, loads of one
    element stay scalar (broadcast where a vector op reads them), arithmetic on vectors, the
    store an aligned streaming store."""
    from mlir import ir
    from mlir.dialects import arith, vector

    scalars: dict = {}
    vectors: dict = {}

    def as_vector(value):
        if value in vectors:
            return vectors[value]
        scalar = scalars.get(value, value)
        return vector.broadcast(ir.VectorType.get([lanes], scalar.type), scalar)

    def at(indices) -> list:
        shift = offsets[indices[-1]]
        last = lane if shift == 0 else arith.addi(
            lane, arith.constant(ir.IndexType.get(), shift))
        return [scalars.get(i, i) for i in indices[:-1]] + [last]

    for op in [o.operation for o in body.operations][:-1]:
        if len(op.results) == 1 and op.results[0] in offsets:
            continue  # a lane offset: folded into the vector loads' indices
        if op.name in ("memref.load", "memref.store"):
            memref_value, indices = access_parts(op)
            if indices and indices[-1] in offsets:
                if op.name == "memref.store":
                    vector.store(as_vector(op.operands[0]), casts[memref_value], at(indices),
                                 nontemporal=True, alignment=alignment)
                    continue
                element = ir.MemRefType(memref_value.type).element_type
                vectors[op.results[0]] = vector.load(ir.VectorType.get([lanes], element),
                                                     casts[memref_value], at(indices))
                continue
        if not any(v in vectors for v in op.operands):
            clone = op.clone()
            for k, value in enumerate(op.operands):
                if value in scalars:
                    clone.operands[k] = scalars[value]
            for old, new in zip(op.results, clone.results, strict=True):
                scalars[old] = new
            continue
        result_types = [ir.VectorType.get([lanes], r.type) for r in op.results]
        attributes = {name: op.attributes[name] for name in op.attributes}
        created = ir.Operation.create(op.name, results=result_types,
                                      operands=[as_vector(v) for v in op.operands],
                                      attributes=attributes)
        for old, new in zip(op.results, created.results, strict=True):
            vectors[old] = new

"""Python rewrites of the IR around the transform scripts of `tdsl.schedules`: after a
contraction script, `pack_in_place` (each packed panel copied straight into its buffer); after
bufferization, `bound_packed_k_loops` (a packed micro-kernel's k loop bounded by K, full panels
not zero-filled) and `accumulate_from_zero` (register tiles accumulate from zero, C's tile
prefetched before the k loop and added after it)."""

from __future__ import annotations

from tdsl.gpu_ir import const_int, defining_op, terminator
from tdsl.schedule_contraction import KC_LOOP
from tdsl.schedule_ir import nested_ops


def _only_use(value) -> tuple | None:
    """(the op, the operand number) of the single use of `value`, or None."""
    uses = list(value.uses)
    return (uses[0].owner, uses[0].operand_number) if len(uses) == 1 else None


def bound_packed_k_loops(module) -> None:
    """In each pc loop of a packed contraction (marked `KC_LOOP` by its schedule, stepping KC
    through k), let the micro-kernels' k loops (`0 .. KC`, carrying the vector accumulators)
    run only this block's `min(KC, K - k)` steps, and drop the zero-fill of every packed
    panel whose copy covers it but along k. The packed panels are padded with zeros to KC
    along k, so the steps skipped added zeros: the last block of a K that is not a multiple
    of KC (or all of a K below KC) is computed no further than K, and the full panels are
    written once, not zero-filled first. The edge panels (past the last row of A or column
    of B) keep their fill: their zeros meet only lanes that are never stored, but stale
    values there could be denormals or NaNs, slow on some CPUs."""
    from mlir import ir
    from mlir.dialects import arith

    for kc_loop in nested_ops(module.operation, "scf.for"):
        if KC_LOOP not in kc_loop.attributes:
            continue
        del kc_loop.attributes[KC_LOOP]
        kc = const_int(kc_loop.operands[2])
        if kc is None:
            continue
        body = kc_loop.regions[0].blocks[0]
        with ir.InsertionPoint.at_block_begin(body), kc_loop.location:
            left = arith.subi(kc_loop.operands[1], body.arguments[0])
            steps = arith.minsi(kc_loop.operands[2], left)
        for loop in nested_ops(kc_loop, "scf.for"):
            bounds = [const_int(v) for v in loop.operands[:3]]
            carries_vectors = any(isinstance(r.type, ir.VectorType) for r in loop.results)
            if bounds == [0, kc, 1] and carries_vectors:
                loop.operands[1] = steps
        for fill in nested_ops(kc_loop, "linalg.fill"):
            if _fill_covered_but_along_k(fill, kc):
                fill.erase()


def accumulate_from_zero(module) -> None:
    """Let every register tile's k loop (an `scf.for` whose one result is the vector
    accumulator of a `vector.contract`, read from C's tile before the loop and written back
    after it) start from zero accumulators and add them to C's tile after the loop, the tile's
    rows prefetched before it. Reading C's tile first made each tile wait for C's cache misses
    (12 % of a 2048^3 product) before its first FMA. Summing the tile's products before adding
    them to C reassociates the sum over k, which the language allows."""
    for loop in nested_ops(module.operation, "scf.for"):
        tile = _accumulator_tile(loop)
        if tile is not None:
            _accumulate_from_zero(loop, *tile)


def _accumulator_tile(loop) -> tuple | None:
    """(the read, the write) of C's tile around a register tile's k `loop`, else None."""
    from mlir import ir

    if len(loop.results) != 1 or len(loop.operands) != 4:
        return None
    if not isinstance(loop.results[0].type, ir.VectorType):
        return None
    read, use = loop.operands[3].owner, _only_use(loop.results[0])
    if not isinstance(read, ir.Operation | ir.OpView) or read.name != "vector.transfer_read":
        return None
    if use is None or use[0].name != "vector.transfer_write":
        return None
    write = use[0]
    same_place = list(write.operands)[1:] == list(read.operands)[:len(write.operands) - 1]
    if not same_place or _only_use(read.results[0]) is None:
        return None
    body = loop.regions[0].blocks[0]
    last = terminator(body)
    product = last.operands[0].owner if len(last.operands) == 1 else None
    if not isinstance(product, ir.Operation | ir.OpView) or product.name != "vector.contract":
        return None
    return (read, write) if product.operands[2] == body.arguments[1] else None


def _accumulate_from_zero(loop, read, write) -> None:
    """Start `loop` from zero accumulators; `read` C's tile after it and add them."""
    from mlir import ir
    from mlir.dialects import arith

    vector_type = ir.VectorType(loop.results[0].type)
    tile = read.operands[0]
    with ir.InsertionPoint(loop), loop.location:
        zero = arith.constant(vector_type, ir.DenseElementsAttr.get_splat(
            vector_type, ir.FloatAttr.get(vector_type.element_type, 0.0)))
        if _worth_prefetching(tile):
            _prefetch_rows(tile, vector_type)
    loop.operands[3] = zero
    read.move_before(write)
    with ir.InsertionPoint(write), write.location:
        total = arith.addf(read.results[0], loop.results[0])
    write.operands[0] = total


def _worth_prefetching(tile) -> bool:
    """A 2-D tile of memory other than the stack (a padded edge tile lives in an alloca)."""
    from mlir import ir

    owner = tile.owner
    stack = isinstance(owner, ir.Operation | ir.OpView) and owner.name == "memref.alloca"
    return not stack and ir.MemRefType(tile.type).rank == 2


def _prefetch_rows(tile, vector_type) -> None:
    """Prefetch the first and last element of each row of a register tile of `tile` (clamped to
    its rows and columns: a tile at the edge of C is smaller)."""
    from mlir import ir
    from mlir.dialects import arith, memref

    shape = vector_type.shape
    rows, cols = (shape[0], shape[1]) if len(shape) == 2 else (1, shape[0])
    index = ir.IndexType.get()
    one = arith.constant(index, 1)
    last_row = arith.subi(memref.dim(tile, arith.constant(index, 0)), one)
    last_col = arith.subi(memref.dim(tile, one), one)
    for r in range(rows):
        row = arith.minsi(arith.constant(index, r), last_row)
        for c in sorted({0, cols - 1}):
            col = arith.minsi(arith.constant(index, c), last_col)
            memref.prefetch(tile, [row, col], is_write=False, locality_hint=3,
                            is_data_cache=True)


def _fill_covered_but_along_k(fill, kc: int) -> bool:
    """Whether `fill` zero-fills a packed panel (the one dim of extent `kc` is k) that the
    copy right after it covers in every other dim."""
    from mlir import ir

    panel = fill.operands[-1]
    shape = ir.MemRefType(panel.type).shape
    k_dims = [d for d, extent in enumerate(shape) if extent == kc]
    if len(k_dims) != 1:
        return False
    for use in panel.uses:
        view = use.owner
        if view.name != "memref.subview" or len(view.results) != 1:
            continue
        copy = _only_use(view.results[0])
        if copy is None or copy[0].name != "linalg.copy" or copy[1] != 1:
            continue
        copied = ir.MemRefType(view.results[0].type).shape
        return len(copied) == len(shape) and all(
            copied[d] == shape[d] for d in range(len(shape)) if d != k_dims[0])
    return False


def pack_in_place(module) -> None:
    """Let each packed panel be copied straight into its packing buffer. `hoist_pad` makes
    every panel a `tensor.pad ... nofold` inserted into the buffer, which
    `rewrite_in_destination_passing_style` turns into a copy into a fresh
    `bufferization.alloc_tensor`: bufferized, a copy into a temporary and a second copy into
    the buffer. A fresh tensor that is only copied into and then inserted becomes a
    `tensor.empty`, which `eliminate-empty-tensors` replaces by the buffer's slice."""
    from mlir import ir
    from mlir.dialects import tensor

    for alloc in nested_ops(module.operation, "bufferization.alloc_tensor"):
        if len(alloc.operands) or (copy := _only_use(alloc.result)) is None:
            continue
        owner, number = copy
        if owner.name != "linalg.copy" or number != 1:
            continue
        insert = _only_use(owner.results[0])
        if insert is None or insert[0].name != "tensor.insert_slice" or insert[1] != 0:
            continue
        shaped = ir.RankedTensorType(alloc.result.type)
        with ir.InsertionPoint(alloc), alloc.location:
            empty = tensor.empty(shaped.shape, shaped.element_type)
        alloc.result.replace_all_uses_with(empty)
        alloc.erase()


def align_vector_buffers(module) -> None:
    """Align every stack buffer that is read or written as whole vectors (`vector.type_cast`,
    the slow path of `split_transfer_full_partial`) to its vectors' size, in place. Upstream
    allocates it 32-byte aligned while LLVM gives a `<32 x float>` access its natural 128-byte
    alignment, so AVX-512 code used aligned 64-byte moves on a buffer that the stack placed at
    32 mod 64: `bmm_nt` crashed on every call."""
    from mlir import ir

    for cast in nested_ops(module.operation, "vector.type_cast"):
        alloca = defining_op(cast.operands[0])
        if alloca is None or alloca.name != "memref.alloca":
            continue
        vector = ir.VectorType(ir.MemRefType(cast.results[0].type).element_type)
        size = vector.shape[-1] * max(getattr(vector.element_type, "width", 32) // 8, 1)
        natural = 1 << (size - 1).bit_length()
        current = (ir.IntegerAttr(alloca.attributes["alignment"]).value
                   if "alignment" in alloca.attributes else 0)
        if natural > current:
            alloca.attributes["alignment"] = ir.IntegerAttr.get(
                ir.IntegerType.get_signless(64), natural)


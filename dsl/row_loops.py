"""Rewrites of the `loops` stage's scalar loops (which LLVM vectorizes) for kernels that make
several passes over each row: `fuse_sibling_loops` and `prefetch_next_rows`.

A fused row-wise kernel (softmax, layernorm: `tdsl.schedule_rows`) is a loop over rows whose
body holds one inner loop per linalg op. `fuse_sibling_loops` merges two small consecutive
inner loops into one where that cannot change a result (layernorm's `x - mean`, stored into the
row temporary, and the sum of its squares: one pass instead of two). `prefetch_next_rows` lets the heaviest
pass over a row prefetch the next row of the inputs the passes read, so that the next row's
first pass (the maximum, the mean) finds it in cache instead of waiting for memory: the first
pass was a quarter of softmax's time.

Both rewrites only look at loops whose bodies are plain scalar code (loads, stores,
arithmetic): the contraction schedules' vector loops are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from tdsl.gpu_ir import access_parts, const_int, depends_on, terminator
from tdsl.schedule_ir import nested_ops

# ops of a "plain" loop body: no regions, no memory effects but loads and stores
_PLAIN_PREFIXES = ("arith.", "math.", "index.")
_PLAIN_OPS = frozenset({"memref.load", "memref.store", "affine.apply", "affine.min",
                        "affine.max", "scf.yield"})
# ops without memory effects besides `_PLAIN_PREFIXES` (`_pure`)
_PURE_OPS = frozenset({"memref.subview", "memref.dim", "memref.cast", "affine.apply",
                       "affine.min", "affine.max"})
VIEWS = frozenset({"memref.subview", "memref.cast", "memref.reinterpret_cast",
                    "memref.collapse_shape", "memref.expand_shape", "memref.transpose"})
_FRESH = frozenset({"memref.alloc", "memref.alloca"})

FUSED_OPS_MAX = 32
"""Ops of a fused loop body at most: softmax's exponentials (about 50 ops) with their sum in
one loop ran 3-5 % slower than apart (vector registers spilled), layernorm's `x - mean` with
the sum of its squares (12 ops) 3-5 % faster."""

STRIP = 64
"""Elements of a pass over a row per prefetch group (4 cache lines of f32)."""
LINE_BYTES = 64


@dataclass(frozen=True)
class Access:
    """A `memref.load` or `memref.store` of a loop body."""

    memref: object
    root: object
    indices: tuple
    write: bool


def root_of(memref):
    """The memref a view is taken of (through subviews and casts): a function argument, an
    allocation, or something else."""
    from mlir import ir

    value = memref
    while True:
        owner = value.owner
        if isinstance(owner, ir.Block) or owner.operation.name not in VIEWS:
            return value
        value = owner.operation.operands[0]


def _distinct(root) -> bool:
    """True for memory no other root reaches: an argument of the kernel function (the runtime
    never passes overlapping arrays: tdsl.runtime.cpu) or a fresh allocation."""
    from mlir import ir

    owner = root.owner
    if isinstance(owner, ir.Block):
        parent = owner.owner
        return parent is not None and parent.operation.name == "func.func"
    return owner.operation.name in _FRESH


def may_alias(a, b) -> bool:
    """Whether memory reached from roots `a` and `b` (`root_of`) may overlap."""
    return a == b or not (_distinct(a) and _distinct(b))


def accesses(loop) -> list[Access]:
    """The loads and stores directly in `loop`'s body."""
    found = []
    for op in loop.regions[0].blocks[0].operations:
        op = op.operation
        if op.name in ("memref.load", "memref.store"):
            memref, indices = access_parts(op)
            found.append(Access(memref, root_of(memref), tuple(indices),
                                op.name == "memref.store"))
    return found


def plain(loop) -> bool:
    """An `scf.for` without results whose body is plain scalar code."""
    if len(loop.results):
        return False
    return all(op.operation.name in _PLAIN_OPS or op.operation.name.startswith(_PLAIN_PREFIXES)
               for op in loop.regions[0].blocks[0].operations)


def _same_value(a, b) -> bool:
    if a == b:
        return True
    x, y = const_int(a), const_int(b)
    return x is not None and x == y


def _same_bounds(first, second) -> bool:
    return all(_same_value(first.operands[i], second.operands[i]) for i in range(3))


def _same_element(x: Access, y: Access, iv1, iv2) -> bool:
    """True when `x` (in the loop of `iv1`) and `y` (in the loop of `iv2`) touch the same
    element at the same iteration and at no other: the same memref, indexed by the loop's
    induction variable in the same place and by the same invariant values elsewhere."""
    if x.memref != y.memref or len(x.indices) != len(y.indices):
        return False
    by_iv = False
    for a, b in zip(x.indices, y.indices, strict=True):
        if a == iv1 and b == iv2:
            by_iv = True
        elif a != b:
            return False
    return by_iv


def _fusable(first, second) -> bool:
    """Whether running `second`'s body right after `first`'s, iteration by iteration, gives
    the results of running the loops one after the other."""
    if not (_same_bounds(first, second) and plain(first) and plain(second)):
        return False
    if op_count(first) + op_count(second) - 2 > FUSED_OPS_MAX:
        return False
    iv1 = first.regions[0].blocks[0].arguments[0]
    iv2 = second.regions[0].blocks[0].arguments[0]
    seconds = accesses(second)
    for x in accesses(first):
        for y in seconds:
            if (x.write or y.write) and may_alias(x.root, y.root) and \
                    not _same_element(x, y, iv1, iv2):
                return False
    return True


def _movable(op, first_accesses: list[Access]) -> bool:
    """Whether `op`, between two loops, may move before the first of them."""
    if len(op.regions):
        return False
    if _pure(op):
        return True
    if op.name not in ("memref.load", "memref.store"):
        return False
    memref, _ = access_parts(op)
    root, write = root_of(memref), op.name == "memref.store"
    return not any((write or a.write) and may_alias(root, a.root) for a in first_accesses)


def _fuse(first, second, between: list) -> None:
    for op in between:
        op.move_before(first)
    body = first.regions[0].blocks[0]
    end = terminator(body)
    second_body = second.regions[0].blocks[0]
    second_body.arguments[0].replace_all_uses_with(body.arguments[0])
    for op in [o.operation for o in second_body.operations][:-1]:
        op.move_before(end)
    second.erase()


def _fuse_once(block) -> bool:
    """Fuse the first fusable pair of consecutive loops of `block`; True if one was."""
    ops = [op.operation for op in block.operations]
    loops = [i for i, op in enumerate(ops) if op.name == "scf.for"]
    for i, j in zip(loops, loops[1:], strict=False):
        first, second, between = ops[i], ops[j], ops[i + 1:j]
        if not _fusable(first, second):
            continue
        first_accesses = accesses(first)
        if all(_movable(op, first_accesses) for op in between):
            _fuse(first, second, between)
            return True
    return False


def _blocks(op) -> list:
    found = []
    for region in op.regions:
        for block in region.blocks:
            found.append(block)
            for inner in block.operations:
                found += _blocks(inner.operation)
    return found


def fuse_sibling_loops(module) -> int:
    """Merge consecutive `scf.for` loops with the same bounds and plain bodies where every
    element that one writes and the other touches is touched by both at the same iteration
    only (`_fusable`); ops between them move before the first when that is safe
    (`_movable`). Returns the number of merges."""
    merged = 0
    for block in _blocks(module.operation):
        while _fuse_once(block):
            merged += 1
    return merged


def prefetch_next_rows(module) -> int:
    """In each loop over rows whose body makes two or more passes (inner `scf.for` loops) over
    rows of the kernel's arguments, let the heaviest pass reading such a row (the most ops)
    prefetch the same columns of the next row (the last row prefetches itself). That pass is
    cut into strips of `STRIP` columns, each prefetching one element per cache line of the
    next rows first (LLVM does not vectorize a loop with a prefetch in it), and a remainder
    loop. Returns the number of passes given prefetches."""
    count = 0
    for row_loop in nested_ops(module.operation, "scf.for"):
        body = row_loop.regions[0].blocks[0]
        passes = [op.operation for op in body.operations if op.operation.name == "scf.for"]
        if len(passes) < 2 or const_int(row_loop.operands[2]) != 1:
            continue
        readers: list = []
        views: list = []
        for loop in passes:
            found = _row_views(loop, body)
            if found:
                readers.append(loop)
                views += [v for v in found if v not in views]
        if len(readers) < 2:
            continue  # one pass over the row: the hardware prefetcher streams it
        # a pass that writes a kernel argument is left whole for `tdsl.stream_stores`
        target = max(readers, key=lambda loop: (not _writes_argument(loop), op_count(loop)))
        if not all(_pure(op) for op in _view_chain(body, views)):
            continue  # only arithmetic and views are computed again for the next row
        if const_int(target.operands[0]) == 0 and const_int(target.operands[2]) == 1:
            _strip_with_prefetches(row_loop, target, views)
            count += 1
    return count


def _writes_argument(loop) -> bool:
    return any(a.write and is_argument(a.root) for a in accesses(loop))


def in_prefetch_strip(loop) -> bool:
    """True for the inner loop of a strip made by `prefetch_next_rows`."""
    parent = loop.parent
    return parent is not None and parent.operation.name == "scf.for" and any(
        op.operation.name == "memref.prefetch"
        for op in parent.operation.regions[0].blocks[0].operations)


def op_count(loop) -> int:
    """The number of ops in `loop`'s body (its terminator included)."""
    return len(list(loop.regions[0].blocks[0].operations))


def _row_views(loop, row_body) -> list:
    """The memrefs that `loop` (a plain pass) loads from at `[0, ..., 0, i]` (`i` its
    induction variable) and that are subviews of a function argument taken in `row_body` (the
    row loop's body) at offsets that depend on the row, with sizes that do not."""
    from mlir import ir

    if not plain(loop):
        return []
    row_iv = row_body.arguments[0]
    column = loop.regions[0].blocks[0].arguments[0]
    found = []
    for access in accesses(loop):
        owner = access.memref.owner
        if access.write or isinstance(owner, ir.Block) or owner.operation.name != "memref.subview":
            continue
        view = owner.operation
        if view.block != row_body or not is_argument(access.root) or access.memref in found:
            continue
        if not access.indices or access.indices[-1] != column or \
                any(const_int(i) != 0 for i in access.indices[:-1]):
            continue
        sizes = view.opview.sizes
        if depends_on(access.memref, [row_iv]) and not any(depends_on(s, [row_iv])
                                                           for s in sizes):
            found.append(access.memref)
    return found


def is_argument(root) -> bool:
    """True for an argument of the kernel function."""
    from mlir import ir

    owner = root.owner
    return isinstance(owner, ir.Block) and owner.owner is not None and \
        owner.owner.operation.name == "func.func"


def _view_chain(body, views: list) -> list:
    """The ops of the row loop's `body` (in order) that compute `views` from its induction
    variable."""
    iv = body.arguments[0]
    needed: list = []
    pending = [v.owner.operation for v in views]
    while pending:
        op = pending.pop()
        if op in needed:
            continue
        needed.append(op)
        for value in op.operands:
            owner = value.owner
            if value != iv and not hasattr(owner, "arguments") and \
                    owner.operation.block == body and depends_on(value, [iv]):
                pending.append(owner.operation)
    return [op.operation for op in body.operations if op.operation in needed]


def _pure(op) -> bool:
    """An op without memory effects (arithmetic, affine index maps, views, shapes)."""
    return op.name in _PURE_OPS or op.name.startswith(_PLAIN_PREFIXES)


def _next_views(row_loop, views: list) -> list:
    """`views` taken again at the next row (clamped to the loop's last one): `_view_chain`
    cloned at the current insertion point with the next row in its place."""
    from mlir.dialects import arith

    iv = row_loop.regions[0].blocks[0].arguments[0]
    one = arith.constant(iv.type, 1)
    old, new = [iv], [arith.minsi(arith.addi(iv, one), arith.subi(row_loop.operands[1], one))]
    for op in _view_chain(row_loop.regions[0].blocks[0], views):
        clone = op.clone()
        for k, value in enumerate(op.operands):
            if value in old:
                clone.operands[k] = new[old.index(value)]
        old += list(op.results)
        new += list(clone.results)
    return [new[old.index(v)] for v in views]


def _strip_with_prefetches(row_loop, target, views: list) -> None:
    """Cut `target` (a pass from 0 by 1) into strips of `STRIP` columns that first prefetch
    `views` at the next row, and the remainder (`target` itself, from the last strip's end)."""
    from mlir import ir
    from mlir.dialects import arith, memref, scf

    with ir.InsertionPoint(target), target.location:
        nexts = _next_views(row_loop, views)
        index = ir.IndexType.get()
        strip = arith.constant(index, STRIP)
        zero = arith.constant(index, 0)
        end = arith.muli(arith.divsi(target.operands[1], strip), strip)
        outer = scf.ForOp(target.operands[0], end, strip)
        with ir.InsertionPoint(outer.body):
            start = outer.induction_variable
            for view in nexts:
                view_type = ir.MemRefType(view.type)
                line = max(LINE_BYTES * 8 // _bits(view_type.element_type), 1)
                for k in range(0, STRIP, line):
                    column = start if k == 0 else arith.addi(start, arith.constant(index, k))
                    memref.prefetch(view, [zero] * (view_type.rank - 1) + [column],
                                    is_write=False, locality_hint=3, is_data_cache=True)
            stop = arith.addi(start, strip)
            strip_loop = target.clone()
            strip_loop.operands[0] = start
            strip_loop.operands[1] = stop
            scf.YieldOp([])
    target.operands[0] = end


def _bits(element_type) -> int:
    """The width of a float or integer element type (64 for an index)."""
    width = getattr(element_type, "width", None)
    return width if isinstance(width, int) and width > 0 else 64

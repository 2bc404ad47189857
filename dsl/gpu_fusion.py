"""Row fusion: consecutive loop nests over the same rows become one launch, a block per row.

Softmax is four statements over the rows `b` of `x`: a max per row, an element-wise
exponential, a sum per row and an element-wise division. Mapped one by one they are six
launches (two fills) that stream the row through DRAM again for each. Fused, each block owns
one row (the first `k` parallel dimensions that all the nests share, by bound) and runs the
statements as phases separated by `gpu.barrier`: reductions whose remaining parallel domain is
empty are block reductions (`gpu.all_reduce`), the other statements stride their threads over
the rest of their parallel domain (with register accumulators where they reduce). The
temporaries a row needs are written and read back by the same block, so they come from L1/L2.

A nest joins a group only when every access, in any member, to a buffer the group writes
indexes its first `k` dimensions with exactly the member's row indices: then all dependences
stay within one block and the barriers order them. A reduction that prefers one thread per
output (matmul: consecutive outputs read consecutive memory) keeps at least its last parallel
dimension out of the row.

Few long rows would leave most of the GPU idle, so the host picks at run time: the fused
launch when there are at least `FUSE_MIN_ROWS` rows, else the nests mapped one by one (both
versions are compiled). Element-wise nests over one domain (a producer with several users, or
several outputs) need no such choice: they become one element-wise launch whose threads run
every statement on their point.
"""

from __future__ import annotations

from dataclasses import dataclass

from tdsl.gpu_ir import (
    NARROW_INTS,
    REDUCIBLE,
    Nest,
    access_parts,
    accesses,
    match_nest,
    ops,
    prefers_block_reduce,
)

FUSE_MIN_ROWS = 256
FUSED_THREADS_MAX = 256


@dataclass
class Group:
    """Nests fused over their first `k` parallel dimensions (bounds `row_ubs`)."""

    members: list[Nest]
    k: int

    @property
    def row_ubs(self) -> list:
        return self.members[0].p_ubs[:self.k]


def _max_rows(nest: Nest) -> int:
    """How many leading parallel dimensions of a nest may become the row."""
    from tdsl.gpu_tiling import match_contraction

    if match_contraction(nest) is not None:
        return 0  # a tiled contraction is faster than any row of it
    if nest.r_ivs and not prefers_block_reduce(nest):
        return len(nest.p_ubs) - 1
    if nest.r_ivs and nest.value_type not in REDUCIBLE | NARROW_INTS:
        return len(nest.p_ubs) - 1
    return len(nest.p_ubs)


def _common_prefix(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _row_local(members: list[Nest], k: int) -> bool:
    """Every access to a buffer the members write indexes its first k dims by the row."""
    written = set()
    for m in members:
        for op in accesses(m.body):
            if op.name == "memref.store":
                written.add(access_parts(op)[0])
    for m in members:
        for op in accesses(m.body):
            memref, idx = access_parts(op)
            if memref in written and (len(idx) < k or
                                      any(idx[j] != m.p_ivs[j] for j in range(k))):
                return False
    return True


def form_groups(nests: list[Nest]) -> list[Group]:
    """Greedy groups of consecutive nests (a group of one is mapped by itself)."""
    groups: list[Group] = []
    for nest in nests:
        limit = _max_rows(nest)
        if groups and limit > 0:
            group = groups[-1]
            k = min(group.k, limit, _common_prefix(group.row_ubs, nest.p_ubs))
            if k > 0 and _row_local(group.members + [nest], k):
                group.members.append(nest)
                group.k = k
                continue
        groups.append(Group([nest], max(limit, 0)))
    return groups


def map_nests(mapper, nests: list[Nest]) -> None:
    """Map a run of consecutive nests: fused groups (with their unfused fallback) and single
    nests."""
    from mlir import ir
    from mlir.dialects import arith

    for group in form_groups(nests):
        if len(group.members) < 2 or group.k == 0:
            for nest in group.members:
                mapper.map_nest(nest)
            continue
        if all(len(m.p_ubs) == group.k and not m.r_ivs for m in group.members):
            mapper.elementwise_launch(group.members)  # one point per thread, all statements
            for nest in group.members:
                nest.root.erase()
            continue
        anchor = group.members[-1].root
        with ir.InsertionPoint(anchor):
            rows = mapper.b.product(group.row_ubs)
            many = arith.cmpi(arith.CmpIPredicate.uge, rows, mapper.b.const(FUSE_MIN_ROWS))
            fused_end, fallback_end = mapper.b.if_else(many)
        with ir.InsertionPoint(fallback_end):
            for nest in group.members:
                clone = match_nest(nest.root.clone())
                if clone is None:  # a clone has the same form as its original
                    raise RuntimeError("cloned loop nest lost its form")
                mapper.map_nest(clone)
        _emit_fused(mapper, group, rows, fused_end)
        for nest in group.members:
            nest.root.erase()


def _emit_fused(mapper, group: Group, rows, end) -> None:
    """The fused launch before `end`: one block per row, one phase per member."""
    from mlir import ir
    from mlir.dialects import arith, gpu

    b, k = mapper.b, group.k
    with ir.InsertionPoint(end):
        work = None
        for nest in group.members:
            size = b.product(nest.p_ubs[k:]) if len(nest.p_ubs) > k else \
                b.product(nest.r_ubs)
            work = size if work is None else arith.maxui(work, size)
        threads = b.warp_threads(work, FUSED_THREADS_MAX)
        bx, tx, body_end = b.launch(rows, threads)
    with ir.InsertionPoint(body_end):
        row = b.delinearize(bx, group.row_ubs)
    for n, nest in enumerate(group.members):
        for old, new in zip(nest.p_ivs[:k], row):
            old.replace_all_uses_with(new)
        rest_ubs, rest_ivs = nest.p_ubs[k:], nest.p_ivs[k:]
        if not rest_ubs and nest.r_ivs:
            mapper.emit_block_reduction(body_end, nest, tx, threads)
        elif not rest_ubs:
            with ir.InsertionPoint(body_end):
                phase_end = b.if_then(arith.cmpi(arith.CmpIPredicate.eq, tx, b.const(0)))
            for op in ops(nest.body):
                op.move_before(phase_end)
        elif not nest.r_ivs:
            mapper.emit_unrolled_elementwise(body_end, nest, tx, threads, rest_ubs, rest_ivs)
        else:
            phase_end = mapper.strided_phase(body_end, tx, threads, rest_ubs, rest_ivs)
            mapper.emit_accumulation(phase_end, nest)
        if n + 1 < len(group.members):
            with ir.InsertionPoint(body_end):
                gpu.BarrierOp()

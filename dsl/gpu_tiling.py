"""Contractions (matmul and its batched and transposed forms) tiled through shared memory.

A nest qualifies when it has one reduction loop `k`, at least two parallel loops whose last
two are `m` and `n`, and its term reads exactly two tensors: `a`, whose indices depend on `m`
and `k` but not `n`, and `b`, on `k` and `n` but not `m` (`C[m, n] += A[m, k] * B[k, n]`,
`A[k, m]`, `B[n, k]`, batches, f16 inputs...). Each block computes a `TILE_M x TILE_N` tile of
the output (the other parallel dimensions index blocks too); its `THREADS` threads each keep
`THREAD_M x THREAD_N` accumulators in registers: `THREAD_M` consecutive rows times
`THREAD_N` columns `THREAD_COLS` apart (so a warp reads consecutive `b` columns). The
reduction walks `k` by `TILE_K`: the block stages an `a` tile and a `b` tile in shared memory
(`memref.global` in workgroup memory; every thread loads a few elements of each, guarded at
the edges), waits on a barrier, accumulates from shared memory (per step: `THREAD_M` loads
of `a` and `THREAD_N` of `b` feed `THREAD_M * THREAD_N` products), and waits again. Outputs
outside the matrix are computed from garbage and never stored, so any size works.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count

from tdsl.gpu_ir import COMBINERS, Nest, depends_on

TILE_M, TILE_N, TILE_K, THREAD_M, THREAD_N = 128, 128, 8, 8, 8
THREADS = TILE_M * TILE_N // (THREAD_M * THREAD_N)
THREAD_COLS = TILE_N // THREAD_N  # threads side by side along n
A_PAD = 1  # a tile rows are TILE_K + A_PAD long: the threads of a warp read two rows at once
_NAMES = count()


@dataclass
class Contraction:
    """A nest with the shape of a matrix product (see the module doc)."""

    nest: Nest
    a: object  # the memref.load of the m-k operand
    b: object  # the memref.load of the k-n operand


def match_contraction(nest: Nest) -> Contraction | None:
    """The nest as a contraction, or None."""
    if len(nest.r_ivs) != 1 or len(nest.p_ivs) < 2 or nest.combine is None:
        return None
    m, n, k = nest.p_ivs[-2], nest.p_ivs[-1], nest.r_ivs[0]
    loads = [op for op in nest.body_ops if op.name == "memref.load"]
    if len(loads) != 2 or any(len(op.regions) for op in nest.body_ops):
        return None
    if any(op.name.startswith(("memref.", "scf.", "gpu.")) and op.name != "memref.load"
           for op in nest.body_ops):
        return None

    def uses(op, iv) -> bool:
        return any(depends_on(v, [iv]) for v in list(op.operands)[1:])

    a, b = loads
    if uses(b, m) and not uses(b, n):
        a, b = b, a
    if not (uses(a, m) and uses(a, k) and not uses(a, n)):
        return None
    if not (uses(b, n) and uses(b, k) and not uses(b, m)):
        return None
    return Contraction(nest, a, b)


def clone_slice(value, mapping: dict, nest: Nest, before) -> object:
    """`value` recomputed before `before`: the ops of the nest's body that compute it are
    cloned with the values of `mapping` (induction variables, loads) substituted; memoized in
    `mapping`."""
    from mlir import ir

    if value in mapping:
        return mapping[value]
    owner = value.owner
    if isinstance(owner, ir.Block):
        if any(value == iv for iv in nest.p_ivs + nest.r_ivs):
            raise RuntimeError("an induction variable of a contraction was not mapped")
        return value
    op = owner.operation
    if op.block != nest.body:
        return value  # defined outside the nest
    for operand in op.operands:
        clone_slice(operand, mapping, nest, before)
    with ir.InsertionPoint(before):
        new = op.clone()
    for operand in op.operands:
        if operand in mapping:
            new.operation.replace_uses_of_with(operand, mapping[operand])
    for old, result in zip(op.results, new.results):
        mapping[old] = result
    return mapping[value]


def emit_tiled(mapper, c: Contraction) -> None:
    """The tiled launch of a contraction, before its nest (which the caller erases)."""
    from mlir import ir
    from mlir.dialects import arith, gpu, memref, scf

    nest, bld = c.nest, mapper.b
    ult = arith.CmpIPredicate.ult
    m_iv, n_iv, k_iv = nest.p_ivs[-2], nest.p_ivs[-1], nest.r_ivs[0]
    big_m, big_n, big_k = nest.p_ubs[-2], nest.p_ubs[-1], nest.r_ubs[0]
    batch_ubs, batch_ivs = nest.p_ubs[:-2], nest.p_ivs[:-2]
    names = [f"tdsl_smem_{next(_NAMES)}" for _ in range(2)]
    a_type = ir.MemRefType.get([TILE_M, TILE_K + A_PAD], c.a.results[0].type,
                               memory_space=ir.Attribute.parse("#gpu.address_space<workgroup>"))
    b_type = ir.MemRefType.get([TILE_K, TILE_N], c.b.results[0].type,
                               memory_space=ir.Attribute.parse("#gpu.address_space<workgroup>"))
    module_body = mapper.block.owner.operation.parent.regions[0].blocks[0]
    with ir.InsertionPoint.at_block_begin(module_body):
        for name, type_ in zip(names, (a_type, b_type)):
            memref.GlobalOp(name, ir.TypeAttr.get(type_), sym_visibility="private")
    c_ = bld.const
    with ir.InsertionPoint(nest.root):
        tiles_n = bld.ceil_div(big_n, TILE_N)
        tiles_m = bld.ceil_div(big_m, TILE_M)
        batch = bld.product(batch_ubs)
        blocks = arith.maxui(arith.muli(batch, arith.muli(tiles_m, tiles_n)), c_(1))
        bx, tx, body_end = bld.launch(blocks, c_(THREADS))
    with ir.InsertionPoint(body_end):
        rest = arith.divui(bx, tiles_n)
        n0 = arith.muli(arith.remui(bx, tiles_n), c_(TILE_N))
        m0 = arith.muli(arith.remui(rest, tiles_m), c_(TILE_M))
        b_index = arith.divui(rest, tiles_m)
        end = bld.if_then(arith.cmpi(ult, b_index, batch))
    with ir.InsertionPoint(end):
        base = dict(zip(batch_ivs, bld.delinearize(b_index, batch_ubs)))
        col = arith.remui(tx, c_(THREAD_COLS))
        row0 = arith.muli(arith.divui(tx, c_(THREAD_COLS)), c_(THREAD_M))
        cols = [arith.addi(col, c_(j * THREAD_COLS)) for j in range(THREAD_N)]
        ns = [arith.addi(n0, q) for q in cols]
        ms = [arith.addi(m0, arith.addi(row0, c_(i))) for i in range(THREAD_M)]
        cells = [(i, j) for i in range(THREAD_M) for j in range(THREAD_N)]
        tile_a = memref.get_global(a_type, names[0])
        tile_b = memref.get_global(b_type, names[1])
        acc_type = nest.combine.results[0].type
        # the accumulators start at the identity and meet the output's value after the loop:
        # no guard or index stays live across it
        inits = [bld.typed_const(acc_type, COMBINERS[nest.combine.name][1])] * len(cells)
        k_tiles = bld.ceil_div(big_k, TILE_K)
        outer = scf.ForOp(c_(0), k_tiles, c_(1), inits)
    with ir.InsertionPoint(outer.body):
        k0 = arith.muli(outer.induction_variable, c_(TILE_K))
        # stage the tiles: each thread loads TILE_M * TILE_K / THREADS elements of each
        for load, tile, width, coords in (
                (c.a, tile_a, TILE_K, lambda r, q: {m_iv: arith.addi(m0, r),
                                                    k_iv: arith.addi(k0, q)}),
                (c.b, tile_b, TILE_N, lambda r, q: {k_iv: arith.addi(k0, r),
                                                    n_iv: arith.addi(n0, q)})):
            for slot in range(TILE_M * TILE_K // THREADS):
                linear = arith.addi(tx, c_(slot * THREADS))
                r, q = arith.divui(linear, c_(width)), arith.remui(linear, c_(width))
                _stage(bld, nest, load, tile, r, q, {**base, **coords(r, q)},
                       {m_iv: big_m, n_iv: big_n, k_iv: big_k})
        gpu.BarrierOp()
        k_count = arith.minui(arith.subi(big_k, k0), c_(TILE_K))
        inner = scf.ForOp(c_(0), k_count, c_(1), list(outer.inner_iter_args))
        with ir.InsertionPoint(inner.body):
            kk = inner.induction_variable
            k_now = arith.addi(k0, kk)
            vas = [memref.load(tile_a, [arith.addi(row0, c_(i)), kk])
                   for i in range(THREAD_M)]
            vbs = [memref.load(tile_b, [kk, q]) for q in cols]
            yield_op = scf.YieldOp(list(inner.inner_iter_args))
        new_accs = []
        for (i, j), acc in zip(cells, inner.inner_iter_args):
            mapping = {**base, m_iv: ms[i], n_iv: ns[j], k_iv: k_now, c.a.results[0]: vas[i],
                       c.b.results[0]: vbs[j], nest.load.results[0]: acc}
            new_accs.append(clone_slice(nest.combine.results[0], mapping, nest, yield_op))
        for old, new in zip(inner.inner_iter_args, new_accs):
            yield_op.operation.replace_uses_of_with(old, new)
        gpu.BarrierOp()
        scf.YieldOp(list(inner.results))
    other = nest.combine.operands[1 - nest.acc_pos]
    with ir.InsertionPoint(end):
        n_oks = [arith.cmpi(ult, n, big_n) for n in ns]
        m_oks = [arith.cmpi(ult, m, big_m) for m in ms]
    for (i, j), partial in zip(cells, outer.results):
        with ir.InsertionPoint(end):
            store_end = bld.if_then(arith.andi(m_oks[i], n_oks[j]))
        mapping = {**base, m_iv: ms[i], n_iv: ns[j]}
        with ir.InsertionPoint(store_end):
            indices = [mapping.get(v, v) for v in list(nest.load.operands)[1:]]
            mapping[nest.load.results[0]] = memref.load(nest.load.operands[0], indices)
        mapping[other] = partial
        total = clone_slice(nest.combine.results[0], mapping, nest, store_end)
        indices = [mapping.get(v, v) for v in list(nest.store.operands)[2:]]
        with ir.InsertionPoint(store_end):
            memref.store(total, nest.store.operands[1], indices)


def _stage(bld, nest: Nest, load, tile, r, q, mapping: dict, bounds: dict) -> None:
    """Copy one operand element into its tile at [r, q], guarded by the operand's bounds."""
    from mlir import ir
    from mlir.dialects import arith, memref

    inside_ = None
    for iv, value in mapping.items():
        if iv in bounds:
            check = arith.cmpi(arith.CmpIPredicate.ult, value, bounds[iv])
            inside_ = check if inside_ is None else arith.andi(inside_, check)
    stage_end = bld.if_then(inside_)
    value = clone_slice(load.results[0], mapping, nest, stage_end)
    with ir.InsertionPoint(stage_end):
        memref.store(value, tile, [r, q])

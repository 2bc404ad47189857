"""Contractions (matmul and its batched and transposed forms) tiled through shared memory.

A nest qualifies when it has one reduction loop `k`, at least two parallel loops whose last
two are `m` and `n`, and its term reads exactly two tensors: `a`, whose indices depend on `m`
and `k` but not `n`, and `b`, on `k` and `n` but not `m` (`C[m, n] += A[m, k] * B[k, n]`,
`A[k, m]`, `B[n, k]`, batches, f16 inputs...). Each block computes a `TILE_M x TILE_N` tile of
the output (the other parallel dimensions index blocks too); its `THREADS` threads each keep
`THREAD_M` accumulators in registers, for `THREAD_M` consecutive rows of one column. The
reduction walks `k` by `TILE_K`: the block stages an `a` tile and a `b` tile in shared memory
(`memref.global` in workgroup memory; every thread loads one element of each, guarded at the
edges), waits on a barrier, accumulates from shared memory, and waits again. Outputs outside
the matrix are computed from garbage and never stored, so any size works.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count

from tdsl.gpu_ir import COMBINERS, Nest, depends_on

TILE_M, TILE_N, TILE_K, THREAD_M = 64, 64, 8, 8
THREADS = TILE_M * TILE_N // THREAD_M
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
    a_type = ir.MemRefType.get([TILE_M, TILE_K], c.a.results[0].type,
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
        col = arith.remui(tx, c_(TILE_N))
        row0 = arith.muli(arith.divui(tx, c_(TILE_N)), c_(THREAD_M))
        n = arith.addi(n0, col)
        n_ok = arith.cmpi(ult, n, big_n)
        ms = [arith.addi(m0, arith.addi(row0, c_(i))) for i in range(THREAD_M)]
        oks = [arith.andi(arith.cmpi(ult, m, big_m), n_ok) for m in ms]
        tile_a = memref.get_global(a_type, names[0])
        tile_b = memref.get_global(b_type, names[1])
        acc_type = nest.combine.results[0].type
        identity = bld.typed_const(acc_type, COMBINERS[nest.combine.name][1])
        inits = []
        for m, ok in zip(ms, oks):
            branch = scf.IfOp(ok, [acc_type], has_else=True)
            with ir.InsertionPoint(branch.then_block):
                mapping = {**base, m_iv: m, n_iv: n}
                indices = [mapping.get(v, v) for v in list(nest.load.operands)[1:]]
                scf.YieldOp([memref.load(nest.load.operands[0], indices)])
            with ir.InsertionPoint(branch.else_block):
                scf.YieldOp([identity])
            inits.append(branch.results[0])
        k_tiles = bld.ceil_div(big_k, TILE_K)
        outer = scf.ForOp(c_(0), k_tiles, c_(1), inits)
    with ir.InsertionPoint(outer.body):
        k0 = arith.muli(outer.induction_variable, c_(TILE_K))
        # stage one element of each operand per thread
        for load, tile, cols, coords in (
                (c.a, tile_a, TILE_K, lambda r, q: {m_iv: arith.addi(m0, r),
                                                   k_iv: arith.addi(k0, q)}),
                (c.b, tile_b, TILE_N, lambda r, q: {k_iv: arith.addi(k0, r),
                                                   n_iv: arith.addi(n0, q)})):
            r, q = arith.divui(tx, c_(cols)), arith.remui(tx, c_(cols))
            mapping = {**base, **coords(r, q)}
            bounds = {m_iv: big_m, n_iv: big_n, k_iv: big_k}
            inside_ = None
            for iv, value in mapping.items():
                if iv in bounds:
                    check = arith.cmpi(ult, value, bounds[iv])
                    inside_ = check if inside_ is None else arith.andi(inside_, check)
            stage_end = bld.if_then(inside_)
            value = clone_slice(load.results[0], mapping, nest, stage_end)
            with ir.InsertionPoint(stage_end):
                memref.store(value, tile, [r, q])
        gpu.BarrierOp()
        k_count = arith.minui(arith.subi(big_k, k0), c_(TILE_K))
        inner = scf.ForOp(c_(0), k_count, c_(1), list(outer.inner_iter_args))
        with ir.InsertionPoint(inner.body):
            kk = inner.induction_variable
            k_now = arith.addi(k0, kk)
            vb = memref.load(tile_b, [kk, col])
            yield_op = scf.YieldOp(list(inner.inner_iter_args))
        new_accs = []
        for i, acc in enumerate(inner.inner_iter_args):
            with ir.InsertionPoint(yield_op):
                va = memref.load(tile_a, [arith.addi(row0, c_(i)), kk])
            mapping = {**base, m_iv: ms[i], n_iv: n, k_iv: k_now, c.a.results[0]: va,
                       c.b.results[0]: vb, nest.load.results[0]: acc}
            new_accs.append(clone_slice(nest.combine.results[0], mapping, nest, yield_op))
        for old, new in zip(inner.inner_iter_args, new_accs):
            yield_op.operation.replace_uses_of_with(old, new)
        gpu.BarrierOp()
        scf.YieldOp(list(inner.results))
    for i, (m, ok) in enumerate(zip(ms, oks)):
        with ir.InsertionPoint(end):
            store_end = bld.if_then(ok)
        mapping = {**base, m_iv: m, n_iv: n}
        indices = [mapping.get(v, v) for v in list(nest.store.operands)[2:]]
        with ir.InsertionPoint(store_end):
            memref.store(outer.results[i], nest.store.operands[1], indices)

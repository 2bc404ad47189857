"""Threads: the outermost parallel loop of each loop nest runs on OpenMP's thread pool.

`convert-linalg-to-parallel-loops` makes every parallel dimension of a linalg op an
`scf.parallel` dimension. `outer_parallel_loops` (after the `loops` stage's passes) keeps
exactly one of them per nest: a top-level `scf.parallel` keeps its first dimension and runs the
others as `scf.for` inside it (so that the innermost loop stays a plain loop that LLVM
vectorizes, not a collapsed index space), and an `scf.parallel` nested in another loop becomes
`scf.for` loops. Before each remaining one it computes whether the nest's work (its trip
count times the trip counts of the loops inside, where they are known outside) reaches
`PARALLEL_WORK`, and tags that `i1` with `tdsl.parallel_if`.

The `openmp` stage runs `convert-scf-to-openmp` (`omp.parallel` + `omp.wsloop`, static
schedule) and `attach_parallel_if` gives each `omp.parallel` its tagged value as the `if`
clause: below the threshold the region runs on the calling thread (libomp's serialized
path, well under a microsecond). The team size is the calling thread's OpenMP `nthreads`
setting, which `tdsl.runtime.threads` sets from `TDSL_NUM_THREADS`.
"""

from __future__ import annotations

from tdsl.schedule_ir import nested_ops

PARALLEL_WORK = 1 << 17  # innermost iterations below which a nest stays on one thread
PARALLEL_IF_ATTR = "tdsl.parallel_if"
_LOOPS = ("scf.for", "scf.parallel", "scf.forall", "scf.while", "omp.parallel", "omp.wsloop")


def _nested(op) -> bool:
    parent = op.parent
    while parent is not None and parent.name not in ("func.func", "builtin.module"):
        if parent.name in _LOOPS:
            return True
        parent = parent.parent
    return False


def _segments(op) -> list[int]:
    from mlir import ir

    return list(ir.DenseI32ArrayAttr(op.attributes["operandSegmentSizes"]))


def _for_nest(bounds: list[tuple], ivs: list, body_ops: list, at) -> None:
    """Build `scf.for` loops over `bounds` (lb, ub, step) at insertion point `at`, move
    `body_ops` into the innermost one, and replace uses of `ivs` by the loops' variables."""
    from mlir import ir
    from mlir.dialects import scf

    with at:
        loop = scf.ForOp(*bounds[0])
    with ir.InsertionPoint(loop.body):
        terminator = scf.YieldOp([])
    ivs[0].replace_all_uses_with(loop.induction_variable)
    if len(bounds) > 1:
        _for_nest(bounds[1:], ivs[1:], body_ops, ir.InsertionPoint(terminator))
        return
    for op in body_ops:
        op.move_before(terminator)


def outer_parallel_loops(module) -> int:
    """Keep one parallel dimension per loop nest (see the module doc) and tag its threshold
    test; return the number of parallel loops left."""
    found = nested_ops(module.operation, "scf.parallel")
    kept = 0
    for par in reversed(found):  # inner loops first: the work estimate sees them as scf.for
        seg = _segments(par)
        n = seg[0]
        if seg[3] or len(par.results):  # a reduction loop (tdsl emits none): left as it is
            continue
        if _nested(par):
            _sequentialize(par, 0)
            continue
        if n > 1:
            par = _sequentialize(par, 1)
        _tag_threshold(par)
        kept += 1
    return kept


def _sequentialize(par, keep: int):
    """Replace `par` by a parallel loop over its first `keep` dimensions (0 or 1) holding
    `scf.for` loops over the others; return the new parallel op (or None)."""
    from mlir import ir

    seg = _segments(par)
    n = seg[0]
    operands = list(par.operands)
    lbs, ubs, steps = operands[:n], operands[n:2 * n], operands[2 * n:3 * n]
    block = par.regions[0].blocks[0]
    ivs = list(block.arguments)
    body_ops = [op for op in block.operations][:-1]  # all but scf.reduce
    bounds = list(zip(lbs, ubs, steps))
    new_par = None
    with par.location:
        if keep:
            new_par = ir.Operation.create(
                "scf.parallel", results=[], operands=[lbs[0], ubs[0], steps[0]],
                attributes={"operandSegmentSizes": ir.DenseI32ArrayAttr.get([1, 1, 1, 0])},
                regions=1, ip=ir.InsertionPoint(par))
            new_block = new_par.regions[0].blocks.append(ir.IndexType.get())
            with ir.InsertionPoint(new_block):
                ir.Operation.create("scf.reduce", operands=[], regions=0)
            ivs[0].replace_all_uses_with(new_block.arguments[0])
            at = ir.InsertionPoint.at_block_begin(new_block)
            if n > 1:
                _for_nest(bounds[1:], ivs[1:], body_ops, at)
            else:
                term = new_block.operations[0]
                for op in body_ops:
                    op.move_before(term)
        else:
            _for_nest(bounds, ivs, body_ops, ir.InsertionPoint(par))
    par.erase()
    return new_par


def _trip(lb, ub, step):
    """Ops computing max(ceil((ub - lb) / step), 0) at the current insertion point."""
    from mlir.dialects import arith

    span = arith.subi(ub, lb)
    trips = arith.ceildivsi(span, step)
    zero = arith.constant(trips.type, 0)
    return arith.maxsi(trips, zero)


def _defined_outside(value, par) -> bool:
    from mlir import ir

    owner = value.owner
    if isinstance(owner, ir.Block):
        owner_op = owner.owner
    else:
        owner_op = owner
    op = owner_op
    while op is not None:
        if op == par:
            return False
        op = op.parent
    return True


def _inner_work(op, par, at):
    """The iterations of the innermost bodies of `op`'s regions per iteration of `op`: a sum
    over its child loops of trip count x their inner work (1 without loops)."""
    from mlir.dialects import arith

    total = None
    for region in op.regions:
        for block in region.blocks:
            for child in block.operations:
                child = child.operation
                if child.name == "scf.for":
                    lb, ub, step = list(child.operands)[:3]
                    inner = _inner_work(child, par, at)
                    if all(_defined_outside(v, par) for v in (lb, ub, step)):
                        with at:
                            work = arith.muli(_trip(lb, ub, step), inner)
                    else:
                        work = inner
                elif child.regions:
                    work = _inner_work(child, par, at)
                    if work is None:
                        continue
                else:
                    continue
                with at:
                    total = work if total is None else arith.addi(total, work)
    if total is None:
        with at:
            total = arith.constant(_index_type(), 1)
    return total


def _index_type():
    from mlir import ir

    return ir.IndexType.get()


def _tag_threshold(par) -> None:
    """Insert before `par`: `work >= PARALLEL_WORK` as an i1 tagged `tdsl.parallel_if`."""
    from mlir import ir
    from mlir.dialects import arith

    at = ir.InsertionPoint(par)
    with par.location:
        operands = list(par.operands)
        inner = _inner_work(par, par, at)
        with at:
            work = arith.muli(_trip(operands[0], operands[1], operands[2]), inner)
            for size in _argument_sizes(par):
                work = arith.maxsi(work, size)
            limit = arith.constant(_index_type(), PARALLEL_WORK)
            cond = arith.cmpi(arith.CmpIPredicate.sge, work, limit)
        cond.owner.attributes[PARALLEL_IF_ATTR] = ir.UnitAttr.get()


def _argument_sizes(par) -> list:
    """The element counts of the function's memref arguments that the loop uses, computed
    before it: tiled loops (a contraction split into one chunk per core) have few iterations
    of unknown size, but the arrays they touch tell the work."""
    from mlir import ir
    from mlir.dialects import arith, memref

    used: list = []

    def walk(op) -> None:
        for region in op.regions:
            for block in region.blocks:
                for child in block.operations:
                    for value in child.operation.operands:
                        owner = value.owner
                        if isinstance(owner, ir.Block) and \
                                owner.owner.operation.name == "func.func" \
                                and isinstance(value.type, ir.MemRefType) and value not in used:
                            used.append(value)
                    walk(child.operation)

    walk(par)
    sizes = []
    with ir.InsertionPoint(par):
        for value in used:
            total = arith.constant(_index_type(), 1)
            for d in range(ir.MemRefType(value.type).rank):
                total = arith.muli(total, memref.dim(value, arith.constant(_index_type(), d)))
            sizes.append(total)
    return sizes


def attach_parallel_if(module) -> int:
    """Give every `omp.parallel` the nearest preceding tagged condition (in its block or an
    enclosing one) as its `if` clause, after `convert-scf-to-openmp`; return how many got
    one."""
    from mlir import ir

    parallels: list = []

    def walk(op, last) -> None:
        for region in op.regions:
            for block in region.blocks:
                current = last
                for child in block.operations:
                    child = child.operation
                    if PARALLEL_IF_ATTR in child.attributes:
                        current = child.results[0]
                    if child.name == "omp.parallel":
                        parallels.append((child, current))
                    else:
                        walk(child, current)

    walk(module.operation, None)
    done = 0
    for par, cond in parallels:
        if cond is None or _segments(par) != [0, 0, 0, 0, 0, 0]:
            continue
        new = ir.Operation.create(
            "omp.parallel", results=[], operands=[cond],
            attributes={"operandSegmentSizes": ir.DenseI32ArrayAttr.get([0, 0, 1, 0, 0, 0])},
            regions=1, loc=par.location, ip=ir.InsertionPoint(par))
        block = new.regions[0].blocks.append()
        for op in list(par.regions[0].blocks[0].operations):
            op = op.operation
            op.detach_from_parent()
            ir.InsertionPoint(block).insert(op)
        par.erase()
        done += 1
    return done

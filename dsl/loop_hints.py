"""Hints to LLVM's loop vectorizer on the loops of the `loops` stage.

An accumulation along a loop over a window, `out[.., j] = out[.., j] + x[.., j + s] * w[..]`
with the reduction loops around it (a convolution, a window sum: `tdsl.to_mlir_generic.loop_order` puts
the output's contiguous index innermost), runs once per output row and reduction step, over a
row of the output: often a short loop (a convolution's output width). LLVM vectorizes it 8
wide and interleaves 4 vectors, so a 56-element row ran 32 elements in vectors and 24 in the
scalar remainder (the vectorized epilogue is off: `tdsl.codegen.llvm.SCOPED_FLAGS`). With an
interleave count of 1 the same row is 7 vectors: a 3x3 convolution 4x faster (8 x 64 x 58 x 58,
64 filters, 1 thread: 731 -> 156 ms). On long rows the interleaved loop is faster (a 3x3
filter over 4096 x 4096: 34 against 45 ms; a column sum 7.4 against 8.4), so the loop runs
in two versions, chosen by its trip count (`SHORT`). Other loops keep LLVM's choice and
compile once: a reduction into one accumulator needs the interleaved accumulators, and a
column sum's rows are as long as its input's.

The hint is MLIR's `llvm.loop_annotation` on the `scf.for`; `convert-scf-to-cf` carries it to
the loop's back edge as a discardable attribute, which `promote_loop_annotations` turns into
the branch's own `loop_annotation` (what the translation to LLVM IR reads).
"""

from __future__ import annotations

from tdsl.gpu_ir import const_int, depends_on
from tdsl.row_loops import Access, accesses, plain
from tdsl.schedule_ir import nested_ops

ANNOTATION = "llvm.loop_annotation"
SHORT = 128
"""Accumulation loops of fewer iterations run the version that is not interleaved (a
128-element row: the same time either way)."""
INTERLEAVE_ONCE = "#llvm.loop_annotation<interleave = #llvm.loop_interleave<count = 1 : i32>>"


def hint_accumulations(module) -> int:
    """Give every accumulation along a loop (see the module's docstring) a version with an
    interleave count of 1, run when the loop is shorter than `SHORT`. Returns the number of
    loops versioned."""
    count = 0
    for loop in nested_ops(module.operation, "scf.for"):
        if accumulates_along(loop) and const_int(loop.operands[2]) == 1:
            _version(loop)
            count += 1
    return count


def _version(loop) -> None:
    """`scf.if (ub - lb < SHORT) { loop, not interleaved } else { loop }`, in place."""
    from mlir import ir
    from mlir.dialects import arith, scf

    with ir.InsertionPoint(loop), loop.location:
        trip = arith.subi(loop.operands[1], loop.operands[0])
        short = arith.cmpi(arith.CmpIPredicate.slt, trip,
                           arith.constant(ir.IndexType.get(), SHORT))
        branch = scf.IfOp(short, has_else=True)
        with ir.InsertionPoint(branch.then_block):
            once = loop.clone()
            once.attributes[ANNOTATION] = ir.Attribute.parse(INTERLEAVE_ONCE)
            scf.YieldOp([])
        with ir.InsertionPoint(branch.else_block):
            end = scf.YieldOp([])
    loop.move_before(end.operation)


def accumulates_along(loop) -> bool:
    """True for a plain innermost loop whose every store writes an element that depends on
    the induction variable and that the body also loads (read, update, write back), and that
    reads a window (`window_read`)."""
    if not plain(loop):
        return False
    iv = loop.regions[0].blocks[0].arguments[0]
    found = accesses(loop)
    if not window_read(found, iv):
        return False
    stores = [a for a in found if a.write]
    if not stores:
        return False
    loads = {(a.memref, a.indices) for a in found if not a.write}
    return all((s.memref, s.indices) in loads and any(depends_on(i, [iv]) for i in s.indices)
               for s in stores)


def window_read(found: list[Access], iv) -> bool:
    """True when one of a loop's loads (`found`) has a last index that adds the induction
    variable `iv` to another loop's value (`x[.., j + s]`): a convolution or a window sum,
    whose rows are often short. A column sum's rows (`y[j] += x[i, j]`) are as long as the
    input's, and stay as they are."""
    for access in found:
        if access.write or not access.indices:
            continue
        owner = access.indices[-1].owner  # a block for a block argument
        owner = getattr(owner, "operation", owner)
        if getattr(owner, "name", None) not in ("affine.apply", "arith.addi"):
            continue
        varying = [v for v in owner.operands if const_int(v) is None]
        if len(varying) >= 2 and iv in varying:
            return True
    return False


def promote_loop_annotations(module) -> None:
    """Turn the discardable `llvm.loop_annotation` that `convert-scf-to-cf` leaves on a loop's
    back edge into the `llvm.br`'s `loop_annotation`, in place."""
    for branch in nested_ops(module.operation, "llvm.br"):
        if ANNOTATION in branch.attributes:
            branch.attributes["loop_annotation"] = branch.attributes[ANNOTATION]
            del branch.attributes[ANNOTATION]

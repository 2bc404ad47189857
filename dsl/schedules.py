"""Per-kernel transform-dialect schedules for the CPU `fused` stage.

After the `fused` stage's passes, `apply_schedule` looks at the structure of the kernel's
linalg ops on tensors and, when one of four patterns is found, builds a transform script
(`transform.named_sequence @tdsl_schedule`), applies it with `transform-interpreter` and keeps
it in the module, so that `tdsl compile FILE --emit fused` shows both the script and its
result. `strip_schedules` removes it before bufferization.

Row-wise fusion (`rows`, `tdsl.schedule_rows`): the kernel's last linalg op (the root, the only
one whose result leaves the kernel) is tiled over the leading dimensions of its result (`t` =
rank - 1 of them): first into `chunks` (one `scf.forall` iteration per core: `scf.parallel`
after bufferization, which the threads stage runs on its pool), then, inside, one row at a time
(`transform.structured.fuse`, tile size 1). Every producer is fused into that nest in reverse
order, so a row of every temporary is computed right before its consumers read it: softmax,
layernorm and rmsnorm read each input row from memory once and re-read it from L1. The row
temporaries have loop-invariant shapes (`1 x N`), so `buffer-loop-hoisting` allocates them once
per chunk, not per row. Applies only when every intermediate is indexed by the root's leading
dimensions in the same positions ("row-local"): a column softmax is left alone.

Contractions (`contraction`, `tdsl.schedule_contraction`): a generic
`C[m, n] += A[m, k] * B[k, n]` (`A` or `A^T`; a `B[n, k]` is first transposed into a fresh
tensor by `transpose_b_operands`, since the NR-wide vectors of B must be plain loads; batched
products that are the kernel's only op get a batch loop around it all) is interchanged to (m, n, k),
its rows split into one `scf.forall` chunk per core (threads) and tiled the way BLIS does: NC
columns (its `fill` fused in), KC slices of k, MC rows, then `NR x MR x 1` register tiles. The
A and B slices of every tile are packed: padded to static shapes without folding (a copy, zero
past the edges) and the copies hoisted out of the register loops (`hoist_pad`), so B's KC x NR
panels are copied once per (NC, KC) block into a contiguous buffer, A's MR x KC panels once per
(MC, KC) block (no 4 KiB-stride cache aliasing, prefetchable streams). The tile is vectorized
(`vector.contract`) and its accumulators hoisted out of the `k` loop
(`hoist_loop_invariant_subsets`: kept in registers). Nothing but the packing loops is peeled:
C's padding at the edges folds into masked reads and writes (`pad_vectorization`), so one
micro-kernel serves every tile. After bufferization, `bound_packed_k_loops` runs each
micro-kernel for the block's `min(KC, K - k)` steps only (the panels are zero-padded to KC),
from zero accumulators added to C after the loop (C's tile prefetched before it). Vector
loads need a unit innermost stride, so such kernels are versioned: `@tdsl_k_<name>` checks the
innermost strides at run time and calls `_unit` (scheduled, memrefs `strided<[?, 1]>`) or
`_any`: the plain loops, or, where copies are fewer loop nests than the kernel's own
(attention), row-major copies of the arguments handed to `_unit`
(`schedule_ir.any_through_unit`). An element-wise epilogue that is the kernel's last op and the
product's only reader (bias, scale, activation; `schedule_contraction.epilogue`) becomes the
root instead: its rows are the per-core chunks and its columns the NC loop, the product and its
fill fused into both, so each NC block of the product is finished while in cache and no
temporary of the whole product is allocated.

Direct convolutions (`conv`, `tdsl.schedule_conv`): a kernel that starts with a generic
`out[.., f, .., j] = sum(image[.., j + s] * filter[..])` from zero (1-D and 2-D convolutions,
`f` a loop of the filter and the output but not of the image; the ops after it, a bias or an
activation, keep their plain loops over its result) gets register tiles
of `MR` filters x `NR` output columns (the contraction's register tile) kept in vector registers
over every reduction step, as outer products of the `MR` filter values (broadcast) with `NR`
image values (two vector loads): one `scf.forall` chunk of filters per core, the tile loops
peeled, the partial tiles masked. conv2d (8 x 64 x 58 x 58, 64 3x3 filters) went from 80 to
42 ms on one thread (AVX-512) and the plain loops' 52 to 21 ms on two; with a bias and a ReLU
77 to 42. Versioned like the contractions.

Contractions inside a larger kernel (`inner`, `schedule_inner.inner_contractions_script`):
a chain of two or more products (attention's `q @ k.T` and `p @ v`, 2-D or batched; at most
`INNER_MAX_PRODUCTS`), or a batched product among other ops that row-wise fusion does not take,
gets register tiles only: interchanged to (batch, m, n, k), its first loop split into one
`scf.forall` chunk per core, then static `MR x NR` tiles (peeled) whose accumulators stay in
vector registers across `k`. No packing and no cache blocks, which tripled attention's compile
time (with a head width of 64, `k` fits in one KC block anyway, so the packed schedule ran
unpacked tiles there). Without it a row of `o` was loaded and stored at every step of `j`
(`p @ v`) and every element of `s` was a dot product ending in a horizontal sum (`q @ k.T`).
Versioned like the contractions. When the other ops are row-local (attention: every
intermediate indexed by the root's leading loops, transposes and scalars aside), the kernel is
fused block by block first (`blocks`, `schedule_inner.fused_products_script`): one
`scf.forall` iteration per block of `ROW_BLOCK` rows of one head, every op but the transposes
fused into it, so that a block's scores, maxima, exponentials and sums stay in cache between
the two products (mha_causal H4 T512 D64: 15 % faster than one loop nest per op).

Tile sizes come from the host's vector width (`MR x NR` = 6 x 2 vectors with 16 vector
registers, 8 x 2 with 32) and the host's caches (`contraction_tiles`: `KC` from L1, 256 for
f32 with 32 KiB; `MC` = 12 `MR`; `NC` from this core's share of L3, at most 1024). They are
constants, never derived from the (dynamic) problem size, so the compile time does not depend
on it: a matmul compiles one vectorized copy of the 6 x 16 tile (0.5-0.9 s in all).

Split reductions (`split`, `tdsl.schedule_rows`): a reduction to a scalar (rank-0 result:
`sum[i](x[i])`, a dot product, a max over a matrix) has no parallel loop for the threads stage.
When kernels are compiled with threads (libomp), its outermost loop is split into one chunk per
core (at least 2; `tile_reduction_using_forall`): an `scf.forall` (`scf.parallel`, then OpenMP,
behind the usual work threshold) whose chunks reduce contiguous slices into private
accumulators (stack slots: `bufferize_to_allocation`) stored as partials, then a short serial
`linalg.reduce` combines the partials into the original init. Only combiners that may be
regrouped are split: integer ops (exact) and float ops with `reassoc` (sum, mean, max, min: nan
still propagates); a float `prod` stays ordered. The chunk count is fixed when compiling, so
results do not depend on the thread count. Bodies with `linalg.index` are left alone (MLIR 22's
partial tiling does not offset it), and so are rank >= 1 results (see `_splittable`).

Any failure of the interpreter leaves the kernel unscheduled (the schedule is applied to a
copy of the module first): schedules only ever make code faster, never break it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from tdsl.schedule_contraction import (  # noqa: F401 - ContractionTiles: the tile scan's
    ContractionTiles,
    alone,
    contraction_script,
    contraction_tiles,
    epilogue,
    has_transposed_b,
    is_batched_contraction,
    is_contraction,
    transpose_b_operands,
)
from tdsl.schedule_conv import conv_dims, conv_script, outer_products
from tdsl.schedule_inner import fused_products_script, inner_contractions_script
from tdsl.schedule_ir import (
    SCHEDULE_NAME,
    Host,
    LinalgInfo,
    host,
    kernel_function,
    linalg_info,
    linalg_ops,
    tileable,
    users,
)
from tdsl.schedule_rewrites import align_vector_buffers, pack_in_place
from tdsl.schedule_rows import (  # noqa: F401 - ROW_FUSION_MAX_OPS: a knob
    ROW_FUSION_MAX_OPS,
    row_plan,
    rows_script,
    split_chunks,
    split_reductions_script,
    splittable,
)

LOWER_NAME = "tdsl_lower_vectors"
# Register tiles cost about 0.35 s of compile time per product (MLIR, LLVM O3, codegen): a
# kernel with more products than this keeps plain loops for the rest (a chain of four: 1.4 s).
INNER_MAX_PRODUCTS = 4
_UNIT, _ANY = "_unit", "_any"


LOWER_VECTORS_SCRIPT = """
module attributes {transform.with_named_sequence} {
  transform.named_sequence @tdsl_lower_vectors(%arg0: !transform.any_op {transform.readonly}) {
    %f = transform.structured.match ops{["func.func"]} in %arg0
        : (!transform.any_op) -> !transform.any_op
    transform.apply_patterns to %f {
      transform.apply_patterns.vector.split_transfer_full_partial
          split_transfer_strategy = "vector-transfer"
    } : !transform.any_op
    transform.apply_patterns to %f {
      transform.apply_patterns.vector.lower_contraction lowering_strategy = "outerproduct"
      transform.apply_patterns.vector.transfer_permutation_patterns
      transform.apply_patterns.vector.lower_multi_reduction lowering_strategy = "innerparallel"
      transform.apply_patterns.vector.transfer_to_scf max_transfer_rank = 1 full_unroll = true
      transform.apply_patterns.vector.lower_transfer max_transfer_rank = 1
      transform.apply_patterns.vector.lower_transpose lowering_strategy = "shuffle_1d"
      transform.apply_patterns.vector.lower_outerproduct
      transform.apply_patterns.vector.lower_broadcast
      transform.apply_patterns.canonicalization
    } : !transform.any_op
    transform.apply_patterns to %f {
      transform.apply_patterns.vector.lower_shape_cast
    } : !transform.any_op
    transform.yield
  }
}
"""


# ---- versioning by innermost stride --------------------------------------------------------


def _unit_stride_type(type_text: str) -> str:
    return re.sub(r"strided<\[((?:\?, )*)\?\], offset: \?>",
                  lambda mt: f"strided<[{mt.group(1)}1], offset: ?>", type_text)


def versioned_text(func, symbol: str) -> str:
    """Text of three functions: `@symbol` (the dispatcher on innermost strides), a private
    `@symbol_unit` (unit innermost strides: the one scheduled) and `@symbol_any`."""
    from mlir import ir

    text = str(func.operation)
    head = f"func.func @{symbol}("
    any_text = text.replace(head, f"func.func private @{symbol}{_ANY}(", 1)
    unit_text = _unit_stride_type(text).replace(head, f"func.func private @{symbol}{_UNIT}(", 1)
    ftype = ir.FunctionType(ir.TypeAttr(func.attributes["function_type"]).value)
    types = [str(t) for t in ftype.inputs]
    args = [f"%arg{i}" for i in range(len(types))]
    lines = ["%c1 = arith.constant 1 : index", "%ok0 = arith.constant true"]
    ok = "%ok0"
    for i, t in enumerate(types):
        mt = ir.MemRefType(ftype.inputs[i])
        if mt.rank == 0:
            continue
        r = mt.rank
        lines.append(f"%b{i}, %o{i}, %s{i}:{r}, %st{i}:{r} = memref.extract_strided_metadata "
                     f"%arg{i} : {t} -> memref<{mt.element_type}>, index"
                     + ", index" * (2 * r))
        lines.append(f"%e{i} = arith.cmpi eq, %st{i}#{r - 1}, %c1 : index")
        lines.append(f"%ok{i + 1} = arith.andi {ok}, %e{i} : i1")
        ok = f"%ok{i + 1}"
    casts, unit_args = [], []
    for i, t in enumerate(types):
        ut = _unit_stride_type(t)
        if ut == t:
            unit_args.append(args[i])
            continue
        casts.append(f"%u{i} = memref.cast %arg{i} : {t} to {ut}")
        unit_args.append(f"%u{i}")
    unit_types = ", ".join(_unit_stride_type(t) for t in types)
    lines.append(f"scf.if {ok} {{")
    lines += ["  " + c for c in casts]
    lines.append(f"  func.call @{symbol}{_UNIT}({', '.join(unit_args)}) : ({unit_types}) -> ()")
    lines.append("} else {")
    lines.append(f"  func.call @{symbol}{_ANY}({', '.join(args)}) : ({', '.join(types)}) -> ()")
    lines.append("}")
    params = ", ".join(f"{a}: {t}" for a, t in zip(args, types))
    body = "\n    ".join(lines + ["return"])
    dispatcher = f"func.func @{symbol}({params}) {{\n    {body}\n  }}"
    return f"{dispatcher}\n{unit_text}\n{any_text}\n"


# ---- applying ------------------------------------------------------------------------------


@dataclass
class Plan:
    """What `plan_schedule` decided: the kind, the payload functions and the script."""

    kind: str  # "rows" | "contraction" | "conv" | "blocks" | "inner" | "split"
    script: str
    versioned: bool = False


def plan_schedule(module, symbol: str, h: Host | None = None) -> Plan | None:
    """The schedule of the kernel function `@symbol` of a `fused`-stage module, or None."""
    func = kernel_function(module, symbol)
    if func is None:
        return None
    ops = linalg_ops(func)
    infos = [linalg_info(op) for op in ops]
    if not infos or any(i is None for i in infos):
        return None
    if not all(tileable(op.operation) for op in ops):
        return None
    h = h or host()
    products = [(i, mnk) for i, info in enumerate(infos)
                if (mnk := is_contraction(info) or is_batched_contraction(info)) is not None]
    if len(products) == 1:  # packed, unless batched among other ops
        index, mnk = products[0]
        info = infos[index]
        if len(mnk) == 3 or alone(info, infos):
            tiles = contraction_tiles(h, info.elem_bits)
            script = contraction_script(symbol + _UNIT, len(infos), index, mnk, tiles,
                                        f"f{info.elem_bits}", h.cores,
                                        epilogue(infos, index) if len(mnk) == 3 else None)
            return Plan("contraction", script, versioned=True)
    dims = _first_conv(infos)
    if dims is not None:
        tiles = contraction_tiles(h, infos[1].elem_bits)
        return Plan("conv", conv_script(symbol + _UNIT, len(infos), 1, dims, tiles, h.cores),
                    versioned=True)
    t = row_plan(infos)
    if len(products) > 1 or products and not t:  # a chain of products (attention)
        tiles = contraction_tiles(h, infos[products[0][0]].elem_bits)
        tiled = products[:INNER_MAX_PRODUCTS]
        elems = [f"f{infos[index].elem_bits}" for index, _ in tiled]
        outside = _outside_blocks(infos)
        rows = row_plan([info for i, info in enumerate(infos) if i not in outside], len(infos))
        if rows:
            return Plan("blocks", fused_products_script(symbol + _UNIT, len(infos), tiled, tiles,
                                                        elems, rows, outside), versioned=True)
        return Plan("inner", inner_contractions_script(symbol + _UNIT, len(infos), tiled,
                                                       tiles, h.cores, elems), versioned=True)
    if not t:
        targets = [(i, len(info.iterators)) for i, info in enumerate(infos)
                   if splittable(info)]
        chunks = split_chunks(h) if targets else 1
        if chunks < 2:
            return None
        return Plan("split", split_reductions_script(symbol, len(infos), targets, chunks))
    root = infos[-1]
    tiled = tuple(d for d in root.maps[-1][:t])
    script = rows_script(symbol, len(infos), len(root.iterators), tiled, h.cores)
    return Plan("rows", script)


def _first_conv(infos: list[LinalgInfo]):
    """The `ConvDims` of a kernel that starts with a convolution from zero (its fill, then the
    convolution, the fill's only reader) and has no other: the ops after it (a bias, an
    activation) keep their plain loops. None otherwise."""
    if len(infos) < 2 or infos[0].name != "linalg.fill":
        return None
    if len(users(infos[0].op.operation.results[0])) != 1:
        return None
    dims = conv_dims(infos[1])
    if dims is None or any(conv_dims(info) is not None for info in infos[2:]):
        return None
    return dims


def _outside_blocks(infos: list[LinalgInfo]) -> set[int]:
    """The ops that stay out of the row blocks of `fused_products_script`: transposes (each
    reads a whole operand), the fills only they read, and rank-0 ops (scalars computed once)."""
    outside = set()
    for i, info in enumerate(infos):
        readers = users(info.op.operation.results[0])
        only_transposed = bool(readers) and all(r.name == "linalg.transpose" for r in readers)
        if (info.name == "linalg.transpose" or not info.maps[-1]
                or info.name == "linalg.fill" and only_transposed):
            outside.add(i)
    return outside


def apply_schedule(module, symbol: str, h: Host | None = None):
    """The module with the kernel's schedule applied and kept as `@tdsl_schedule` (the module
    itself, unchanged, when there is none or it fails)."""
    from mlir import ir, passmanager

    if os.environ.get("TDSL_SCHEDULES", "1") == "0":
        return module
    work = module
    func = kernel_function(module, symbol)
    if func is not None and has_transposed_b(func):
        work = ir.Module.parse(str(module))  # the argument stays untouched
        transpose_b_operands(kernel_function(work, symbol))
    plan = plan_schedule(work, symbol, h)
    if plan is None:
        return module
    func = kernel_function(work, symbol)
    funcs = versioned_text(func, symbol) if plan.versioned else str(func.operation)
    text = ("module attributes {transform.with_named_sequence} {\n" + funcs + "\n"
            + plan.script + "}\n")
    try:
        scheduled = ir.Module.parse(text)
        passmanager.PassManager.parse(
            f"builtin.module(transform-interpreter{{entry-point={SCHEDULE_NAME}}}, "
            "canonicalize, cse)").run(scheduled.operation)
        if plan.kind == "conv":
            outer_products(scheduled.operation)
            passmanager.PassManager.parse("builtin.module(canonicalize, cse)").run(
                scheduled.operation)
        if not scheduled.operation.verify():
            return module
        pack_in_place(scheduled)
    except Exception:  # a schedule that does not apply: keep the plain kernel
        if os.environ.get("TDSL_SCHEDULE_STRICT"):
            raise
        return module
    return scheduled


def strip_schedules(module) -> None:
    """Erase the transform scripts (named sequences) from the module, in place."""
    for op in list(module.body.operations):
        if op.operation.name.startswith("transform."):
            op.operation.erase()
    if "transform.with_named_sequence" in module.operation.attributes:
        del module.operation.attributes["transform.with_named_sequence"]


def lower_vectors(module) -> None:
    """Lower the vector ops a contraction schedule left (contract → FMAs, transfers → loads and
    stores) after bufferization, in place; nothing happens without vector ops."""
    from mlir import ir, passmanager

    if "vector." not in str(module):
        return
    library = ir.Module.parse(LOWER_VECTORS_SCRIPT)
    op = library.body.operations[0]
    op.operation.move_before(module.body.operations[0]) if len(module.body.operations) else None
    module.operation.attributes["transform.with_named_sequence"] = ir.UnitAttr.get()
    try:
        passmanager.PassManager.parse(
            f"builtin.module(transform-interpreter{{entry-point={LOWER_NAME}}})"
        ).run(module.operation)
    finally:
        strip_schedules(module)
    align_vector_buffers(module)

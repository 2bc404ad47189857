"""Row-wise fusion and split reductions (see `tdsl.schedules`): when they apply, and their
transform scripts."""

from __future__ import annotations

from tdsl.schedule_ir import Host, LinalgInfo, sequence, users

# Fusing each producer into the row loop costs compile time that grows fast with their
# number: attention's 11 ops took 2-3 s for a 7 % faster kernel. Softmax, layernorm and
# rmsnorm have at most 6.
ROW_FUSION_MAX_OPS = 8


def row_plan(infos: list[LinalgInfo], max_ops: int = ROW_FUSION_MAX_OPS) -> int:
    """The number `t` of leading result dimensions to tile row by row (0: no fusion)."""
    if len([i for i in infos if i.name == "linalg.generic"]) < 2:
        return 0
    if len(infos) > max_ops:
        return 0
    root = infos[-1]
    if root.name != "linalg.generic":
        return 0
    out = root.maps[-1]
    t = len(out) - 1
    if t < 1:
        return 0
    results = [i.op.operation.results[0] for i in infos]
    for info in infos:
        if info is not root:  # intermediates are only read by the kernel's linalg ops
            for user in users(info.op.operation.results[0]):
                if not user.name.startswith("linalg."):
                    return 0
        outs = info.maps[-1]
        if len(outs) < t or any(d is None or info.iterators[d] != "parallel"
                                for d in outs[:t]):
            return 0
        for pos, operand in enumerate(info.op.operation.operands[:info.n_inputs]):
            if any(operand == r for r in results) and info.maps[pos][:t] != outs[:t]:
                return 0
    return t


def rows_script(func_symbol: str, n_ops: int, root_loops: int, tiled: tuple[int, ...],
                chunks: int) -> str:
    """The transform script of row-wise fusion: the root (last of `n_ops` linalg ops) tiled by
    `chunks` along its loop `tiled[0]`, then by 1 along each loop of `tiled`, every producer
    fused in."""
    names = [f"%p{i}" for i in range(n_ops - 1)] + ["%root_op"]
    any_op = "!transform.any_op"
    lines = [
        f'%f = transform.structured.match ops{{["func.func"]}} '
        f'attributes{{sym_name = "{func_symbol}"}} in %arg0 : ({any_op}) -> {any_op}',
        f"%all = transform.structured.match interface{{LinalgOp}} in %f : ({any_op}) -> {any_op}",
        f"{', '.join(names)} = transform.split_handle %all : ({any_op}) -> "
        f"({', '.join([any_op] * n_ops)})",
    ]
    target = "%root_op"
    if chunks > 1:
        threads = [chunks if d == tiled[0] else 0 for d in range(root_loops)]
        lines.append(f"%tiled, %loop = transform.structured.tile_using_forall %root_op "
                     f"num_threads {threads} : ({any_op}) -> ({any_op}, {any_op})")
        container = "%loop"
        for i in reversed(range(n_ops - 1)):
            lines.append(f"%q{i}, %c{i} = transform.structured.fuse_into_containing_op %p{i} "
                         f"into {container} : ({any_op}, {any_op}) -> ({any_op}, {any_op})")
            container = f"%c{i}"
        target = "%tiled"
    sizes = [1 if d in tiled else 0 for d in range(root_loops)]
    loops = ", ".join([any_op] * len(tiled))
    lines.append(f"%rows, %row_loops:{len(tiled)} = transform.structured.fuse {target} "
                 f"tile_sizes {sizes} {{apply_cleanup}} : ({any_op}) -> ({any_op}, {loops})")
    return sequence(lines)


# A reduction to a scalar (a rank-0 result: a sum, max or min of a whole tensor) has no
# parallel loop for the threads stage: its outermost loop is split into one chunk per core.
# Outputs of rank >= 1 (a column sum) are left alone: their sizes are dynamic, and
# `tile_reduction_using_forall` puts the chunk index last in the partial results
# (`[N, chunks]`), a strided walk that made a 4096 x 4096 column sum 1.5x slower and a
# 2 x 4M one 10x slower.
# Combiners that may be regrouped: integer ops are exact in any order; float ones only where
# the language allows it (`reassoc`: sum, max, min). A float `prod` (no `reassoc`) is ordered.
_EXACT_COMBINERS = frozenset({"arith.addi", "arith.muli", "arith.maxsi", "arith.maxui",
                              "arith.minsi", "arith.minui", "arith.andi", "arith.ori",
                              "arith.xori"})


_REASSOC_COMBINERS = frozenset({"arith.addf", "arith.maximumf", "arith.minimumf"})


def _reassociable(op) -> bool:
    """True when the generic's one result is `out = out (op) f(inputs)` with a combiner that
    may be regrouped."""
    from mlir import ir

    block = op.operation.regions[0].blocks[0]
    out = block.arguments[len(block.arguments) - 1]
    body = list(block.operations)
    combiner = body[-1].operands[0].owner
    if isinstance(combiner, ir.Block):
        return False
    uses = list(out.uses)
    if len(uses) != 1 or uses[0].owner != combiner:
        return False
    if combiner.name in _EXACT_COMBINERS:
        return True
    return combiner.name in _REASSOC_COMBINERS and "fastmath" in combiner.attributes and \
        "reassoc" in str(combiner.attributes["fastmath"])


def splittable(info: LinalgInfo) -> bool:
    """A generic with one rank-0 result (every loop a reduction) and a combiner that may be
    regrouped."""
    from mlir import ir

    if info.name != "linalg.generic" or len(info.op.operation.results) != 1:
        return False
    if not info.iterators or ir.ShapedType(info.op.operation.results[0].type).rank != 0:
        return False
    return not _uses_index(info.op.operation) and _reassociable(info.op)


def _uses_index(op) -> bool:
    """True when a `linalg.index` is in the op's regions: the partial-reduction tiling of MLIR
    22 does not offset it by the chunk's start (`sum[i: N](x[N - 1 - i] * i)` came out wrong),
    so such reductions keep their plain loop."""
    for region in op.regions:
        for block in region.blocks:
            for child in block.operations:
                if child.operation.name == "linalg.index" or _uses_index(child.operation):
                    return True
    return False


def split_reductions_script(func_symbol: str, n_ops: int, targets: list[tuple[int, int]],
                            chunks: int) -> str:
    """The transform script that splits the outermost (reduction) loop of each target (linalg
    op index, number of loops) into `chunks` (`tile_reduction_using_forall`): one partial
    result per chunk, accumulated in a private stack slot (`bufferize_to_allocation` of the
    identity fill fused into the chunk: no false sharing between threads), then the partials
    combined in order (`linalg.reduce` into the original init)."""
    a = "!transform.any_op"
    names = [f"%p{i}" for i in range(n_ops)]
    lines = [
        f'%f = transform.structured.match ops{{["func.func"]}} '
        f'attributes{{sym_name = "{func_symbol}"}} in %arg0 : ({a}) -> {a}',
        f"%all = transform.structured.match interface{{LinalgOp}} in %f : ({a}) -> {a}",
        f"{', '.join(names)} = transform.split_handle %all : ({a}) -> ({', '.join([a] * n_ops)})",
    ]
    for index, loops in targets:
        threads = [chunks] + [0] * (loops - 1)
        lines += [
            f"%fill{index}, %part{index}, %merge{index}, %chunks{index} = "
            f"transform.structured.tile_reduction_using_forall %p{index} by num_threads = "
            f"{threads} : ({a}) -> ({a}, {a}, {a}, {a})",
            f"%fill_in{index}, %chunks_in{index} = transform.structured.fuse_into_containing_op "
            f"%fill{index} into %chunks{index} : ({a}, {a}) -> ({a}, {a})",
            f"%acc{index}, %acc_ops{index} = transform.structured.bufferize_to_allocation "
            f'%fill_in{index} {{alloc_op = "memref.alloca", bufferize_destination_only}} '
            f": {a}",
        ]
    return sequence(lines)


def split_chunks(h: Host) -> int:
    """Chunks of a split reduction: one per core, at least 2; 1 (no split) when kernels are
    compiled without threads (no libomp). The chunks are fixed when compiling, so a result
    does not depend on the number of threads that runs it."""
    from tdsl.runtime import threads

    if not threads.available():
        return 1
    return max(h.cores, 2)

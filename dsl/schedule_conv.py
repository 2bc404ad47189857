"""The direct-convolution schedule: `MR x NR` register tiles of the output (filters x output
columns for NCHW, output columns x filters for NHWC) kept in vector registers over the
reduction loops (channels and the window), the way a hand-written convolution micro-kernel runs
(see `conv_script`), and the rewrite of its broadcast products into outer products."""

from __future__ import annotations

from dataclasses import dataclass

from tdsl.gpu_ir import defining_op
from tdsl.schedule_contraction import (
    ContractionTiles,
    _hoist_accumulators,
    _linalg_handles,
    _peel,
    _thread_chunks,
)
from tdsl.schedule_ir import LinalgInfo, nested_ops, sequence

CONV_TILE = "tdsl.conv_tile"
"""Marks the convolution and its tiles (the kernel's other ops keep their plain loops)."""


@dataclass(frozen=True)
class ConvDims:
    """Loop positions of a convolution generic as its register tile sees them: `m` (the tile's
    MR rows: a parallel loop of the output that one input, the broadcast one, reads and the
    other does not), `n` (the NR columns: the output's last loop, the vector one; the other
    input's last subscript is `n` or `n + s`), `threads` (the loop split across cores) and the
    order the schedule runs the loops in (`order`: the parallel loops, `n` last among them,
    then the reductions). NCHW: m = filters, n = output columns, threads along the filters;
    NHWC: m = output columns, n = filters, threads along the output rows."""

    m: int
    n: int
    threads: int
    order: tuple[int, ...]


def _dim_sum(expr) -> tuple[int, int] | None:
    """(a, b) when `expr` is `d_a + d_b`, else None."""
    from mlir import ir

    if not isinstance(expr, ir.AffineAddExpr):
        return None
    lhs, rhs = expr.lhs, expr.rhs
    if isinstance(lhs, ir.AffineDimExpr) and isinstance(rhs, ir.AffineDimExpr):
        return lhs.position, rhs.position
    return None


def _reads(expr, loop: int, iterators: tuple[str, ...]) -> bool:
    """True when `expr` is the loop itself or `loop + s` with `s` a reduction (a window)."""
    from mlir import ir

    if isinstance(expr, ir.AffineDimExpr):
        return expr.position == loop
    pair = _dim_sum(expr)
    if pair is None or loop not in pair or pair[0] == pair[1]:
        return False
    return iterators[pair[1] if pair[0] == loop else pair[0]] == "reduction"


def _is_window(expr, iterators: tuple[str, ...]) -> bool:
    pair = _dim_sum(expr)
    return pair is not None and sorted(iterators[d] for d in pair) == ["parallel", "reduction"]


def conv_dims(info: LinalgInfo) -> ConvDims | None:
    """The `ConvDims` of a float generic `out[.., m, .., n] += row[.., n (+ s)] * col[..]`
    that is a convolution (some subscript is a window `i + r`: a matrix product is not), two
    inputs and a multiply-add body: `row`'s last subscript reads the output's last loop `n`
    (contiguous NR-wide vector loads) and nothing else of `row` or `col` does; `m` is the last
    other output loop that `col` reads (as `m` or `m + s`) and `row` does not. None
    otherwise."""
    from mlir import ir

    if info.name != "linalg.generic" or info.n_inputs != 2:
        return None
    if info.body != ("arith.mulf", "arith.addf", "linalg.yield"):
        return None
    maps = [ir.AffineMapAttr(m).value
            for m in ir.ArrayAttr(info.op.operation.attributes["indexing_maps"])]
    out, its = info.maps[2], info.iterators
    if None in out or not out or any(its[d] != "parallel" for d in out):
        return None
    if not any(_is_window(e, its) for amap in maps[:2] for e in amap.results):
        return None
    n = out[-1]
    for row, col in ((0, 1), (1, 0)):
        row_exprs, col_exprs = maps[row].results, maps[col].results
        if not row_exprs or not _reads(row_exprs[-1], n, its):
            continue
        if any(n in _positions(e) for e in [*row_exprs[:-1], *col_exprs]):
            continue
        row_loops = {d for e in row_exprs for d in _positions(e)}
        rows = [d for d in out[:-1] if d not in row_loops
                and any(_reads(e, d, its) for e in col_exprs)
                and all(_reads(e, d, its) for e in col_exprs if d in _positions(e))]
        if not rows:
            continue
        m = rows[-1]
        col_windows = any(_is_window(e, its) for e in col_exprs)
        others = [d for d in out[:-1] if d != m]
        threads = others[-1] if col_windows and others else m
        parallel = [d for d in range(len(its)) if its[d] == "parallel" and d != n]
        return ConvDims(m, n, threads, (*parallel, n, *_reduction_order(its, maps[:2])))
    return None


def _reduction_order(its: tuple[str, ...], maps: list) -> list[int]:
    """The reduction loops in their order, but with a single window loop (a 1-D convolution)
    first, so the channel loop runs innermost (64 steps instead of the window's few: conv1d
    8 x 64 x 4096, 64 x 64 x 5 filters 29-34 -> 28-29 ms). With two window loops (2-D) the
    channel loop stays outermost: innermost, each step's image row moves by a whole plane and
    a tile's rows of all channels overflow L1 (conv2d 41.6 -> 43 ms)."""
    reductions = [d for d in range(len(its)) if its[d] == "reduction"]
    windows = {d for amap in maps for e in amap.results if _is_window(e, its)
               for d in _positions(e) if its[d] == "reduction"}
    if len(windows) != 1:
        return reductions
    return sorted(reductions, key=lambda d: d not in windows)


def _positions(expr) -> list[int]:
    """The loop positions an affine expression reads."""
    from mlir import ir

    if isinstance(expr, ir.AffineDimExpr):
        return [expr.position]
    if isinstance(expr, ir.AffineBinaryExpr):
        return _positions(expr.lhs) + _positions(expr.rhs)
    return []


def conv_script(func_symbol: str, n_ops: int, index: int, dims: ConvDims,
                tiles: ContractionTiles, cores: int = 1) -> str:
    """The transform script of one convolution (linalg op `index` of `n_ops`, its fill the
    op before it; the ops after it are left alone): its loops interchanged to `dims.order`,
    split into one `scf.forall` chunk per core along `dims.threads`, its parallel loops tiled
    by one but `MR` along `dims.m` and `NR` along `dims.n`, the fill fused in; the `m` and `n`
    tile loops peeled; every tile cut into one step of each reduction loop (channels, window
    rows, window columns) around a tile whose accumulator is hoisted out of those loops and
    whose unit loops are folded away: `out[MR, NR] += col[MR] * row[NR]`, vectorized.
    `outer_products` then makes it an outer product (MR values broadcast, NR values loaded
    once), so the MR x NR accumulators stay in vector registers for the whole reduction, the
    way a hand-written direct convolution runs (NCHW: MR filters x NR output columns; NHWC:
    MR output columns x NR filters). The partial tiles get the same tile with masked reads
    and writes."""
    a = "!transform.any_op"
    pos = {d: i for i, d in enumerate(dims.order)}
    n_parallel = pos[dims.n] + 1
    n_reductions = len(dims.order) - n_parallel
    sizes = {dims.m: tiles.mr, dims.n: tiles.nr}
    parallel = [sizes.get(d, 1) for d in dims.order[:n_parallel]] + [0] * n_reductions
    steps = [0] * n_parallel + [1] * n_reductions
    threads = [cores if d == dims.threads else 0 for d in dims.order]
    generic = 'ops{["linalg.generic"]}'
    loop_names = ", ".join(f"%cl{i}" for i in range(n_parallel))
    lines = [
        *_linalg_handles(func_symbol, n_ops),
        f'transform.annotate %p{index} "{CONV_TILE}" : {a}',
        f"%conv = transform.structured.interchange %p{index} iterator_interchange = "
        f"[{', '.join(str(d) for d in dims.order)}] : ({a}) -> {a}",
        *_thread_chunks("%conv", "%mine", cores, str(threads)),
        f"%tile, {loop_names} = transform.structured.fuse %mine tile_sizes {parallel} "
        f"{{apply_cleanup}} : ({a}) -> ({', '.join([a] * (n_parallel + 1))})",
        *_peel(f"%cl{pos[dims.m]}", "%f_main", "%f_rest"),
        f"%in_f = transform.structured.match {generic} in %f_main : ({a}) -> {a}",
        f'%j_loop = transform.get_parent_op %in_f {{op_name = "scf.for"}} : ({a}) -> {a}',
        *_peel("%j_loop", "%j_main", "%j_rest"),
        f"transform.apply_patterns to %f {{ transform.apply_patterns.canonicalization }} : {a}",
        f"%tiles = transform.structured.match attributes{{{CONV_TILE}}} in %f : ({a}) -> {a}",
        f"%step, {', '.join(f'%rl{i}' for i in range(n_reductions))} = "
        f"transform.structured.tile_using_for %tiles tile_sizes {steps} "
        f": ({a}) -> ({', '.join([a] * (n_reductions + 1))})",
        f"transform.apply_patterns to %f {{ transform.apply_patterns.canonicalization }} : {a}",
        *_hoist_accumulators("%hl0"),
        f"transform.apply_patterns to %f {{ "
        f"transform.apply_patterns.linalg.fold_unit_extent_dims_via_slices "
        f"transform.apply_patterns.canonicalization }} : {a}",
        f"%full = transform.structured.match {generic} in %j_main : ({a}) -> {a}",
        f"transform.structured.vectorize %full : {a}",
        *[line for rest in ("j_rest", "f_rest") for line in (
            f"%edge_{rest} = transform.structured.match {generic} in %{rest} : ({a}) -> {a}",
            f"transform.structured.vectorize %edge_{rest} vector_sizes [{tiles.mr}, {tiles.nr}] "
            f": {a}")],
        # masks as transfer operands, computed once per tile: the edge accumulators hoist too
        f"transform.apply_patterns to %f {{ transform.apply_patterns.vector.lower_masked_transfers "
        f"transform.apply_patterns.scf.for_loop_canonicalization "
        f"transform.apply_patterns.memref.resolve_ranked_shaped_type_result_dims "
        f"transform.apply_patterns.canonicalization }} : {a}",
        f'%licm = transform.structured.match ops{{["scf.for"]}} in %f : ({a}) -> {a}',
        f"transform.apply_licm to %licm : {a}",
        *_hoist_accumulators("%hl1"),
    ]
    return sequence(lines)


def outer_products(func) -> int:
    """Rewrite `acc + read_col(w) * read_row(x)` in `func` (vectors `M x N` whose two operands
    are 1-D reads broadcast along columns, `(d0) -> (d0, 0)`, and along rows, `(d0) -> (0, d0)`)
    into `vector.outerproduct w, x, acc`: one broadcast of each `w` element and `M` FMAs with the
    row `x`. The vectorizer reads a column broadcast as a read, a broadcast and a transpose, which
    nothing downstream turns back into scalar broadcasts (a 3x3 convolution ran 50x slower).
    Returns how many were rewritten."""
    from mlir import ir

    rewritten = 0
    for add in nested_ops(func, "arith.addf"):
        product = _broadcast_product(add)
        if product is None:
            continue
        acc, column, row = product
        with ir.InsertionPoint(add), add.location:
            lhs, rhs = _plain_read(*column), _plain_read(*row)
            outer = ir.Operation.create(
                "vector.outerproduct", results=[add.results[0].type], operands=[lhs, rhs, acc],
                attributes={"kind": ir.Attribute.parse("#vector.kind<add>")})
        add.results[0].replace_all_uses_with(outer.results[0])
        add.erase()
        rewritten += 1
    return rewritten


def _broadcast_product(add):
    """(acc, column read, row read) when `add` is `acc + column * row` as in `outer_products`."""
    for acc_index in (0, 1):
        mul = defining_op(add.operands[1 - acc_index])
        if mul is None or mul.name != "arith.mulf":
            continue
        reads = [_read_kind(v) for v in mul.operands]
        kinds = {kind: (op, mask) for kind, op, mask in reads if kind}
        if set(kinds) == {"column", "row"}:
            return add.operands[acc_index], kinds["column"], kinds["row"]
    return None


def _read_kind(value) -> tuple[str | None, object, object]:
    """("column" | "row", the read, its mask or None) for a 1-D `vector.transfer_read` broadcast
    to 2-D, unmasked or masked along its 1-D source."""
    from mlir import ir

    op = defining_op(value)
    mask = None
    if op is None or op.name != "vector.transfer_read":
        return None, None, None
    if len(op.operands) not in (3, 4) or ir.ShapedType(op.operands[0].type).rank != 1:
        return None, None, None
    if len(op.operands) == 4:
        mask = op.operands[3]
        if ir.VectorType(mask.type).rank != 1:
            return None, None, None
    amap = str(op.attributes["permutation_map"])
    if amap.endswith("(d0) -> (d0, 0)>"):
        return "column", op, mask
    if amap.endswith("(d0) -> (0, d0)>"):
        return "row", op, mask
    return None, None, None


def _plain_read(read, mask):
    """A 1-D read of the same elements as the broadcast `read` (under `mask`, when there is
    one), as a 1-D vector."""
    from mlir import ir

    vector = ir.VectorType(read.results[0].type)
    column = str(read.attributes["permutation_map"]).endswith("(d0) -> (d0, 0)>")
    length = vector.shape[0] if column else vector.shape[1]
    in_bounds = ir.ArrayAttr(read.attributes["in_bounds"])[0 if column else 1]
    new = ir.Operation.create(
        "vector.transfer_read",
        results=[ir.VectorType.get([length], vector.element_type)],
        operands=list(read.operands)[:3] + ([] if mask is None else [mask]),
        attributes={"permutation_map": ir.Attribute.parse("affine_map<(d0) -> (d0)>"),
                    "in_bounds": ir.ArrayAttr.get([in_bounds]),
                    "operandSegmentSizes": ir.Attribute.parse(
                        f"array<i32: 1, 1, 1, {0 if mask is None else 1}>")})
    return new.results[0]

"""The direct-convolution schedule: register tiles of `MR` filters x `NR` output columns kept in
vector registers over the reduction loops (channels and the window), the way a hand-written
convolution micro-kernel runs (see `conv_script`)."""

from __future__ import annotations

from dataclasses import dataclass

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
    """Loop positions of a convolution generic: `f` (a parallel loop of the output that indexes
    the filter and not the image), `j` (the output's last loop, the image's last subscript being
    `j + s`), `s` (that window loop) and the order the schedule runs the loops in (`order`:
    the parallel loops, `j` last among them, then the reductions)."""

    f: int
    j: int
    s: int
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


def conv_dims(info: LinalgInfo) -> ConvDims | None:
    """The `ConvDims` of a float generic `out[.., f, .., j] += image[.., j + s] * filter[..]`
    (a 1-D or 2-D convolution, any layout whose output and image rows are contiguous in `j`):
    two inputs, a multiply-add body, the filter indexed by loops only (no `j`), `f` in the
    filter and the output but not the image; else None."""
    from mlir import ir

    if info.name != "linalg.generic" or info.n_inputs != 2:
        return None
    if info.body != ("arith.mulf", "arith.addf", "linalg.yield"):
        return None
    maps = [ir.AffineMapAttr(m).value
            for m in ir.ArrayAttr(info.op.operation.attributes["indexing_maps"])]
    out = info.maps[2]
    if None in out or not out or any(info.iterators[d] != "parallel" for d in out):
        return None
    j = out[-1]
    for image, filt in ((0, 1), (1, 0)):
        pair = _dim_sum(maps[image].results[-1]) if maps[image].results else None
        if pair is None or j not in pair or None in info.maps[filt]:
            continue
        s = pair[1] if pair[0] == j else pair[0]
        if info.iterators[s] != "reduction" or j in info.maps[filt]:
            continue
        image_dims = {d for e in maps[image].results for d in _positions(e)}
        if sum(e == j for e in _positions(maps[image].results[-1])) != 1 or \
                any(j in _positions(e) for e in maps[image].results[:-1]):
            continue
        filters = [d for d in out if d in info.maps[filt] and d not in image_dims]
        if not filters:
            continue
        parallel = [d for d in range(len(info.iterators))
                    if info.iterators[d] == "parallel" and d != j]
        reductions = [d for d in range(len(info.iterators)) if info.iterators[d] == "reduction"]
        return ConvDims(filters[-1], j, s, (*parallel, j, *reductions))
    return None


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
    op before it; the ops after it are left alone): its loops interchanged to `dims.order`, split into one `scf.forall` chunk of
    filters per core, its parallel loops tiled by one but `MR` filters (`f`) and `NR` output
    columns (`j`), the fill fused in; the `f` and `j` tile loops peeled; every tile cut into
    one step of each reduction loop (channels, window rows, window columns) around a tile
    whose accumulator is hoisted out of those loops and whose unit loops are folded away:
    `out[MR, NR] += filter[MR] * image[NR]`, vectorized. `outer_products` then makes it an
    outer product (the filter's MR values broadcast, NR image values loaded once), so the
    MR x NR accumulators stay in vector registers for the whole reduction, the way a
    hand-written direct convolution runs. The partial tiles (the last columns of a row, the
    last filters) get the same tile with masked reads and writes."""
    a = "!transform.any_op"
    pos = {d: i for i, d in enumerate(dims.order)}
    n_parallel = pos[dims.j] + 1
    n_reductions = len(dims.order) - n_parallel
    sizes = {dims.f: tiles.mr, dims.j: tiles.nr}
    parallel = [sizes.get(d, 1) for d in dims.order[:n_parallel]] + [0] * n_reductions
    steps = [0] * n_parallel + [1] * n_reductions
    threads = [cores if d == dims.f else 0 for d in dims.order]
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
        *_peel(f"%cl{pos[dims.f]}", "%f_main", "%f_rest"),
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
    from mlir import ir

    for acc_index in (0, 1):
        mul = add.operands[1 - acc_index].owner
        if not isinstance(mul, ir.Operation) and hasattr(mul, "operation"):
            mul = mul.operation
        if not isinstance(mul, ir.Operation) or mul.name != "arith.mulf":
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

    owner = value.owner
    op = owner.operation if hasattr(owner, "operation") else owner
    mask = None
    if not isinstance(op, ir.Operation) or op.name != "vector.transfer_read":
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
    new = ir.Operation.create(
        "vector.transfer_read",
        results=[ir.VectorType.get([length], vector.element_type)],
        operands=list(read.operands)[:3] + ([] if mask is None else [mask]),
        attributes={"permutation_map": ir.Attribute.parse("affine_map<(d0) -> (d0)>"),
                    "in_bounds": ir.Attribute.parse("[true]"),
                    "operandSegmentSizes": ir.Attribute.parse(
                        f"array<i32: 1, 1, 1, {0 if mask is None else 1}>")})
    return new.results[0]

"""The contraction schedule (BLIS-style packing, see `tdsl.schedules`), the detection of plain,
transposed and batched contractions, the rewrite that transposes a `B[n, k]` operand, and the
script pieces that `tdsl.schedule_inner` (products inside larger kernels) shares."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from tdsl.schedule_ir import Host, LinalgInfo, linalg_info, linalg_ops, sequence, users


@dataclass(frozen=True)
class ContractionTiles:
    """Cache tiles (mc, nc, kc) and the register tile (mr, nr) of a contraction."""

    mc: int
    nc: int
    kc: int
    mr: int
    nr: int


KC_LOOP = "tdsl.kc_loop"
"""The attribute marking a packed contraction's pc loop (`bound_packed_k_loops`)."""

# A larger NC block bought nothing measurable past 1024 columns here (2048^3, 1 and 2 threads).
NC_MAX = 1024


def contraction_tiles(h: Host, elem_bits: int) -> ContractionTiles:
    """Register tile: `nr` = 2 vectors, `mr` rows so that mr * 2 accumulators plus 2 B vectors
    and a broadcast fit the vector registers. Cache tiles, from the host's caches the way BLIS
    sizes them: a KC x NR micro-panel of B fills half of L1 (KC), an MC x KC block of A stays in
    L2 (MC: 12 register tiles of rows, so that only the last block has a remainder), and the
    KC x NC panel of B half of this core's share of L3 (NC, at most `NC_MAX`)."""
    lanes = max(h.vector_bits // elem_bits, 1)
    nr = 2 * lanes
    mr = 8 if h.vector_registers >= 32 else 6
    elem_bytes = max(elem_bits // 8, 1)
    kc = min(max(h.l1d // (2 * nr * elem_bytes) // 8 * 8, 64), 512)
    nc = min(max(h.l3_share // (2 * kc * elem_bytes) // nr * nr, nr), NC_MAX)
    return ContractionTiles(mc=12 * mr, nc=nc, kc=kc, mr=mr, nr=nr)


def _product_maps(info: LinalgInfo, loops: int) -> tuple[tuple, tuple, tuple, int] | None:
    """(A, B, C maps, reduction loop) of a float generic `C += A * B` with `loops` loops, one
    of them a reduction, whose operands each index `loops - 1` loops; else None."""
    if info.name != "linalg.generic" or info.n_inputs != 2 or len(info.iterators) != loops:
        return None
    if info.iterators.count("reduction") != 1:
        return None
    if info.body != ("arith.mulf", "arith.addf", "linalg.yield"):
        return None
    a, b, c = info.maps
    if None in a + b + c or not len(a) == len(b) == len(c) == loops - 1:
        return None
    return a, b, c, info.iterators.index("reduction")


def _b_order(k: int, n: int, b_layout: str) -> tuple[int, int]:
    return (k, n) if b_layout == "kn" else (n, k)


def is_contraction(info: LinalgInfo, b_layout: str = "kn") -> tuple[int, int, int] | None:
    """(m, n, k) loop positions of a plain 2-D float contraction generic whose B operand is
    laid out `b_layout` ("kn": B[k, n]; "nk": B[n, k], a transposed B), else None."""
    maps = _product_maps(info, 3)
    if maps is None:
        return None
    a, b, (m, n), k = maps
    if k in (m, n) or set(a) != {m, k} or b != _b_order(k, n, b_layout):
        return None  # B's rows must be contiguous in n: its NR-wide vectors are plain loads
    return m, n, k


def is_batched_contraction(info: LinalgInfo,
                           b_layout: str = "kn") -> tuple[int, int, int, int] | None:
    """(batch, m, n, k) loop positions of a batched float contraction generic
    (`C[h, m, n] = sum[k](A[h, m, k] * B[h, k, n])`, A's last two dims in either order, B laid
    out `b_layout` after the batch), else None."""
    maps = _product_maps(info, 4)
    if maps is None:
        return None
    a, b, (h, m, n), k = maps
    if k in (h, m, n) or a[0] != h or b[0] != h or set(a[1:]) != {m, k}:
        return None
    if b[1:] != _b_order(k, n, b_layout):
        return None
    return h, m, n, k


def transpose_b_operands(func) -> bool:
    """Give each contraction with a transposed B (`B[n, k]`, e.g. `x @ W.T` with W stored
    [out, in]) a `linalg.transpose` of B into a fresh `[k, n]` tensor, and read that instead,
    so the packed schedule applies (its B panels are plain NR-wide loads). The transpose costs
    one pass over B per call. Returns True when something changed (in place)."""
    from mlir import ir
    from mlir.dialects import arith, linalg, tensor

    changed = False
    for op in linalg_ops(func):
        info = linalg_info(op)
        if info is None or (is_contraction(info, "nk") is None
                            and is_batched_contraction(info, "nk") is None):
            continue
        generic = op.operation
        b = generic.operands[1]
        b_type = ir.RankedTensorType(b.type)
        perm = list(range(b_type.rank - 2)) + [b_type.rank - 1, b_type.rank - 2]
        with ir.InsertionPoint(generic), generic.location:
            sizes: list = []
            for d in perm:
                if b_type.is_dynamic_dim(d):
                    sizes.append(tensor.dim(b, arith.constant(ir.IndexType.get(), d)))
                else:
                    sizes.append(b_type.shape[d])
            empty = tensor.empty(sizes, b_type.element_type)
            transposed = linalg.transpose(b, outs=[empty], permutation=perm)
        generic.operands[1] = transposed.results[0]
        maps = list(ir.ArrayAttr(generic.attributes["indexing_maps"]))
        old = ir.AffineMapAttr(maps[1]).value
        maps[1] = ir.AffineMapAttr.get(ir.AffineMap.get(
            old.n_dims, old.n_symbols, [old.results[d] for d in perm]))
        generic.attributes["indexing_maps"] = ir.ArrayAttr.get(maps)
        changed = True
    return changed


def alone(info: LinalgInfo, infos: list[LinalgInfo]) -> bool:
    """True when every other op of the kernel is a fill or a transpose. A batched contraction
    gets the packed schedule only then: inside a larger kernel (attention's `q @ k.T` among the
    softmax's ops) it tripled the compile time (0.8 -> 2.7 s) for a 15 % faster call; such
    products get register tiles only (`inner_contractions_script`)."""
    return all(i is info or i.name in ("linalg.fill", "linalg.transpose") for i in infos)


def epilogue(infos: list[LinalgInfo], index: int) -> tuple[int, int] | None:
    """(op, operand) of an element-wise epilogue of the 2-D contraction `infos[index]`: the
    kernel's last op, a generic over the product's (m, n) with only parallel loops, the
    product's one user, reading it element for element (`relu(x @ W + b)`,
    `alpha * (A @ B) + beta * C`); else None."""
    root = infos[-1]
    if index == len(infos) - 1 or root.name != "linalg.generic":
        return None
    if root.iterators != ("parallel", "parallel") or root.maps[-1] != (0, 1):
        return None
    product = infos[index].op.operation.results[0]
    readers = users(product)
    if len(readers) != 1 or readers[0].operation != root.op.operation:
        return None
    found = [k for k, v in enumerate(root.op.operation.operands[:root.n_inputs])
             if v == product]
    if len(found) != 1 or root.maps[found[0]] != (0, 1):
        return None
    return len(infos) - 1, found[0]


def has_transposed_b(func) -> bool:
    infos = [linalg_info(op) for op in linalg_ops(func)]
    return any(i is not None and (is_contraction(i, "nk") is not None
                                  or is_batched_contraction(i, "nk") is not None)
               for i in infos)


def contraction_script(func_symbol: str, n_ops: int, index: int,
                       mnk: tuple[int, ...], tiles: ContractionTiles, elem: str,
                       cores: int = 1, epilogue: tuple[int, int] | None = None) -> str:
    """The transform script of one 2-D contraction (linalg op `index` of `n_ops`), tiled the
    way BLIS does: loops jc (NC columns, the fill fused) -> pc (KC) -> ic (MC rows) -> jr (NR)
    -> ir (MR) -> k. Every register tile's operand slices are padded to MR x KC, KC x NR and
    MR x NR without folding A's and B's (`pad`: zero-filled past the edges) and A's and B's
    copies hoisted (`hoist_pad`): B's panels once per (jc, pc) into a contiguous
    `[NC/NR][KC][NR]` buffer, A's once per (ic, pc) into `[MC/MR][MR][KC]`, each written in
    place (`pack_in_place`); the packing loops are peeled, so only the last panel of each is
    zero-filled past the matrix's edge. Nothing else is peeled, so there is one copy of the
    static MR x NR micro-kernel: C's padding folds into masked reads and writes of C
    (`pad_vectorization`), split at run time into the plain access for a full tile and a
    masked one at the edges (`lower_vectors`). The pc loop is marked `tdsl.kc_loop`: after
    bufferization its micro-kernels run only the block's `min(KC, K - k)` steps of k and its
    full panels are not zero-filled first (`bound_packed_k_loops`), so a short last block (or
    a K below KC) is neither padded nor computed past K.
    Before, the full KC blocks had three copies of the micro-kernel (the main tiles, the last
    row and the last column, the edges padding C by copies) and the last KC block three more
    (unpacked tiles, 1 x NR rows, tiles padded by copies of A, B and C): compile time 1.1-1.5 s.
    A batched contraction (`mnk` = (batch, m, n, k) positions) gets a batch loop of one matrix
    per iteration around jc, and the same tiles inside.

    `epilogue` = (linalg op, operand): the kernel's last op, element-wise over the product
    (bias, scale, activation: `relu(x @ W + b)`), which reads the product as that operand. It
    becomes the root: its rows are split into the per-core chunks and its columns into the jc
    loop, the product (and its fill) fused into both, so each NC-column block of a chunk's
    product is finished by the epilogue while it is still in cache, and the product never
    fills a temporary of the whole result."""
    batched = len(mnk) == 4
    ts = functools.partial(_tile_sizes, batched)
    a = "!transform.any_op"
    zero = f"0.0 : {elem}"
    generic = 'ops{["linalg.generic"]}'
    lines = [
        *_linalg_handles(func_symbol, n_ops),
        _interchanged(f"%p{index}", "%mnk", mnk),
        *_tiled_transposes(batched),
        *(_column_blocks(ts, tiles, cores, batched) if epilogue is None else
          _epilogue_blocks(tiles, cores, *epilogue)),
        f"%t1, %l1 = transform.structured.tile_using_for %t0 tile_sizes {ts(k=tiles.kc)} "
        f": ({a}) -> ({a}, {a})",
        f'transform.annotate %l1 "{KC_LOOP}" : {a}',
        f"%t2, %l2 = transform.structured.tile_using_for %t1 tile_sizes {ts(m=tiles.mc)} "
        f": ({a}) -> ({a}, {a})",
        *_padded_register_tiles("%t2", "f", tiles, ts),
        f"transform.apply_patterns to %f {{ "
        f"transform.apply_patterns.tensor.merge_consecutive_insert_extract_slice "
        f"transform.apply_patterns.canonicalization }} : {a}",
        f"%padded, %pads, %copy_back = transform.structured.pad %g_f {{"
        f"padding_values = [{zero}, {zero}, {zero}], "
        f"padding_dimensions = {list(range(len(mnk)))}, "
        f'nofold_flags = [1, 1, 0], copy_back_op = "none"}} : ({a}) -> ({a}, {a}, {a})',
        f"%pad_b = transform.get_producer_of_operand %padded[1] : ({a}) -> {a}",
        f"%hoisted_b = transform.structured.hoist_pad %pad_b by 3 loops : ({a}) -> {a}",
        f"%pad_a = transform.get_producer_of_operand %padded[0] : ({a}) -> {a}",
        f"%hoisted_a = transform.structured.hoist_pad %pad_a by 2 loops : ({a}) -> {a}",
        f"%dps_b = transform.structured.rewrite_in_destination_passing_style %hoisted_b "
        f": ({a}) -> {a}",
        f"%dps_a = transform.structured.rewrite_in_destination_passing_style %hoisted_a "
        f": ({a}) -> {a}",
        f'%pack_b = transform.get_parent_op %dps_b {{op_name = "scf.for"}} : ({a}) -> {a}',
        *_peel("%pack_b", "%pack_b_full", "%pack_b_edge"),
        f'%pack_a = transform.get_parent_op %dps_a {{op_name = "scf.for"}} : ({a}) -> {a}',
        *_peel("%pack_a", "%pack_a_full", "%pack_a_edge"),
        f"transform.apply_patterns to %f {{ transform.apply_patterns.canonicalization }} : {a}",
        f"%g_fp = transform.structured.match {generic} in %l1 : ({a}) -> {a}",
        # a batch loop's unit dim goes before the register tiles become vectors
        *([f"transform.apply_patterns to %f {{ "
           f"transform.apply_patterns.linalg.fold_unit_extent_dims_via_slices }} : {a}"]
          if batched else []),
        f"%tile_f, %lk_f = transform.structured.tile_using_for %g_fp tile_sizes [0, 0, 1] "
        f": ({a}) -> ({a}, {a})",
        f"transform.apply_patterns to %f {{ transform.apply_patterns.canonicalization }} : {a}",
        *_hoist_accumulators("%fl0"),
        f"transform.structured.vectorize %tile_f : {a}",
        *_vectors_to_contractions(),
        f"transform.apply_patterns to %f {{ transform.apply_patterns.linalg.pad_vectorization "
        f"transform.apply_patterns.canonicalization }} : {a}",
    ]
    return sequence(lines)


def _interchanged(op: str, result: str, mnk: tuple[int, ...]) -> str:
    """`result`: the product `op` with its loops interchanged to (batch,) m, n, k (`mnk`: their
    positions)."""
    a = "!transform.any_op"
    return (f"{result} = transform.structured.interchange {op} iterator_interchange = "
            f"[{', '.join(str(d) for d in mnk)}] : ({a}) -> {a}")


def _linalg_handles(func_symbol: str, n_ops: int) -> list[str]:
    """`%f`, the kernel function, and `%p0` ... `%p<n_ops - 1>`, its linalg ops in order."""
    a = "!transform.any_op"
    names = ", ".join(f"%p{i}" for i in range(n_ops))
    return [f'%f = transform.structured.match ops{{["func.func"]}} '
            f'attributes{{sym_name = "{func_symbol}"}} in %arg0 : ({a}) -> {a}',
            f"%all = transform.structured.match interface{{LinalgOp}} in %f : ({a}) -> {a}",
            f"{names} = transform.split_handle %all : ({a}) -> ({', '.join([a] * n_ops)})"]


def _tiled_transposes(batched: bool) -> list[str]:
    """A transposed B (`transpose_b_operands`) is copied in 32 x 32 tiles (cache-friendly), in
    an `scf.forall` (threads), each cut into 8 x 8 tiles (peeled) whose full ones are
    vectorized: a `vector.transpose` of 8 rows, lowered to shuffles (the scalar 32 x 32 copy
    took 11 % of a 1024^3 `A @ B.T`; now 4-9 % faster). `transform.foreach` keeps a kernel
    without a transpose from reaching the ops that need one payload; the full tiles are marked
    `tdsl.transpose_tile` and vectorized after a canonicalization makes their shapes static."""
    a = "!transform.any_op"
    lines = [f'%tr = transform.structured.match ops{{["linalg.transpose"]}} in %f '
             f": ({a}) -> {a}",
             f"%tr_tiled, %tr_loops = transform.structured.tile_using_forall %tr tile_sizes "
             f"{_tile_sizes(batched, b=1, m=32, n=32)} : ({a}) -> ({a}, {a})"]
    sizes = "[0, 8, 8]" if batched else "[8, 8]"
    return lines + [
        f"transform.foreach %tr_tiled : {a} {{",
        f"^bb0(%one: {a}):",
        f"  %tr8, %tr_rows, %tr_cols = transform.structured.tile_using_for %one tile_sizes "
        f"{sizes} : ({a}) -> ({a}, {a}, {a})",
        *["  " + x for x in _peel("%tr_rows", "%tr_rows_main", "%tr_rows_rest")],
        f'  %tr_in = transform.structured.match ops{{["linalg.transpose"]}} in %tr_rows_main '
        f": ({a}) -> {a}",
        f'  %tr_cols2 = transform.get_parent_op %tr_in {{op_name = "scf.for"}} : ({a}) -> {a}',
        *["  " + x for x in _peel("%tr_cols2", "%tr_cols_main", "%tr_cols_rest")],
        f'  %tr_v = transform.structured.match ops{{["linalg.transpose"]}} in %tr_cols_main '
        f": ({a}) -> {a}",
        f'  transform.annotate %tr_v "tdsl.transpose_tile" : {a}',
        "}",
        f"transform.apply_patterns to %f {{ transform.apply_patterns.canonicalization }} : {a}",
        f"%tr_tiles = transform.structured.match attributes{{tdsl.transpose_tile}} in %f "
        f": ({a}) -> {a}",
        f"transform.structured.vectorize %tr_tiles : {a}",
    ]


def _column_blocks(ts: Callable[..., str], tiles: ContractionTiles, cores: int,
                   batched: bool) -> list[str]:
    """The contraction `%mnk` split into per-core row chunks, then NC-column blocks (jc, and
    the batch loop first when batched), its fill fused into both; `%t0` is the block."""
    a = "!transform.any_op"
    return [
        *_thread_chunks("%mnk", "%mine", cores, ts(m=cores)),
        f"%t0, %l0{', %lb' if batched else ''} = transform.structured.fuse %mine tile_sizes "
        f"{ts(n=tiles.nc, b=1)} {{apply_cleanup}} : ({a}) -> "
        f"({a}, {a}{', ' + a if batched else ''})",
    ]


def _epilogue_blocks(tiles: ContractionTiles, cores: int, root: int, operand: int) -> list[str]:
    """The element-wise epilogue `%p<root>` split into per-core row chunks, then NC-column
    blocks, the contraction `%mnk` and its fill fused into both; `%t0` is the contraction's
    block, the producer of the epilogue's `operand`."""
    a = "!transform.any_op"
    lines, chunk = [], f"%p{root}"
    if cores > 1:
        lines = [
            f"%fill = transform.get_producer_of_operand %mnk[2] : ({a}) -> {a}",
            f"%e_chunk, %chunks = transform.structured.tile_using_forall %p{root} "
            f"num_threads [{cores}, 0] : ({a}) -> ({a}, {a})",
            f"%c_in, %chunks2 = transform.structured.fuse_into_containing_op %mnk into %chunks "
            f": ({a}, {a}) -> ({a}, {a})",
            f"%f_in, %chunks3 = transform.structured.fuse_into_containing_op %fill into "
            f"%chunks2 : ({a}, {a}) -> ({a}, {a})",
        ]
        chunk = "%e_chunk"
    return lines + [
        f"%e_t, %l0 = transform.structured.fuse {chunk} tile_sizes [0, {tiles.nc}] "
        f"{{apply_cleanup}} : ({a}) -> ({a}, {a})",
        f"%t0 = transform.get_producer_of_operand %e_t[{operand}] : ({a}) -> {a}",
    ]


def _tile_sizes(batched: bool, m: int = 0, n: int = 0, k: int = 0, b: int = 0) -> str:
    """The tile sizes of an (m, n, k) contraction loop nest, with the batch loop first when
    there is one."""
    sizes = ([b] if batched else []) + [m, n, k]
    return f"[{', '.join(str(v) for v in sizes)}]"


def _thread_chunks(op: str, chunk: str, cores: int, threads: str, tag: str = "") -> list[str]:
    """Split the rows of a contraction into one chunk per core (an `scf.forall`, run by the
    OpenMP runtime; `threads` its num_threads list), its `fill` fused into each chunk; `chunk`
    names the tiled op, `tag` ends the names of the other handles (one script, many ops)."""
    a = "!transform.any_op"
    if cores <= 1:
        return [f"{chunk} = transform.cast {op} : {a} to {a}"]
    return [
        f"%fill{tag} = transform.get_producer_of_operand {op}[2] : ({a}) -> {a}",
        f"{chunk}, %chunks{tag} = transform.structured.tile_using_forall {op} "
        f"num_threads {threads} : ({a}) -> ({a}, {a})",
        f"%fill_chunk{tag}, %chunks2{tag} = transform.structured.fuse_into_containing_op "
        f"%fill{tag} into %chunks{tag} : ({a}, {a}) -> ({a}, {a})",
    ]


def _peel(loop: str, main: str, rest: str) -> list[str]:
    """Peel an `scf.for` handle into its full iterations and its partial last one."""
    a, for_op = "!transform.any_op", '!transform.op<"scf.for">'
    cast = f"{loop}_for"
    return [f"{cast} = transform.cast {loop} : {a} to {for_op}",
            f"{main}, {rest} = transform.loop.peel {cast} {{fail_if_already_divisible = false}} "
            f": ({for_op}) -> ({a}, {a})"]


def _padded_register_tiles(op: str, tag: str, tiles: ContractionTiles,
                           ts: Callable[..., str]) -> list[str]:
    """NR columns, then MR rows of a tiled contraction, not peeled: `%g_<tag>` is every
    register tile, the last ones partial (padded to MR x NR by `pad`)."""
    a = "!transform.any_op"
    return [
        f"%tn_{tag}, %ln_{tag} = transform.structured.tile_using_for {op} tile_sizes "
        f"{ts(n=tiles.nr)} : ({a}) -> ({a}, {a})",
        f"%g_{tag}, %lm_{tag} = transform.structured.tile_using_for %tn_{tag} tile_sizes "
        f"{ts(m=tiles.mr)} : ({a}) -> ({a}, {a})",
    ]


def _vectors_to_contractions() -> list[str]:
    """After `vectorize`: the register tiles' vector ops folded into `vector.contract`s whose
    accumulators are hoisted out of the k loops (kept in registers)."""
    a = "!transform.any_op"
    return [f"transform.apply_patterns to %f {{ "
            f"transform.apply_patterns.vector.transfer_permutation_patterns "
            f"transform.apply_patterns.vector.reduction_to_contract "
            f"transform.apply_patterns.vector.cast_away_vector_leading_one_dim "
            f"transform.apply_patterns.canonicalization }} : {a}",
            *_hoist_accumulators("%fl1")]


def _hoist_accumulators(name: str) -> list[str]:
    """Keep loop-invariant tensor subsets (the C tile) in registers across the k loops."""
    a, for_op = "!transform.any_op", '!transform.op<"scf.for">'
    return [f'{name} = transform.structured.match ops{{["scf.for"]}} in %f : ({a}) -> {for_op}',
            f"transform.loop.hoist_loop_invariant_subsets {name} : {for_op}"]

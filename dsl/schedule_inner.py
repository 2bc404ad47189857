"""Register tiles for products inside larger kernels (attention's `q @ k.T` and `p @ v`, chains
of products): `inner_contractions_script` (each product in its own per-core chunks) and
`fused_products_script` (attention-like kernels fused block by block first). The packed
schedule of a product alone, and the script pieces both share, are in
`tdsl.schedule_contraction`."""

from __future__ import annotations

import functools

from tdsl.schedule_contraction import (
    ContractionTiles,
    _interchanged,
    _linalg_handles,
    _peel,
    _thread_chunks,
    _tile_sizes,
    _tiled_transposes,
    _vectors_to_contractions,
)
from tdsl.schedule_ir import sequence

ROW_BLOCK = 24
"""Rows per block of `fused_products_script` (4 register tiles of 6 rows)."""


def _register_tiles(op: str, tag: str, tiles: ContractionTiles, batched: bool,
                    zero: str) -> list[str]:
    """NR columns (peeled), then MR rows (peeled) of a tiled contraction; `%g_<tag>` is the
    static MR x NR tile. The remainder columns are cut into MR x NR tiles padded with zeros
    (`%re_<tag>`: copies of A's, B's and C's slices, no packing; `zero` is the element
    type's 0 literal), so that they too run the micro-kernel once tiled by k and vectorized;
    before, they were plain loops that loaded and stored C at every step of k. The remainder
    rows `%r1_<tag>` are tiled one row and one step of k at a time, to be vectorized (a
    1 x NR accumulator kept in registers across k). `batched`: the product has a batch loop
    first."""
    a = "!transform.any_op"
    generic = 'ops{["linalg.generic"]}'
    ts = functools.partial(_tile_sizes, batched)
    return [
        f"%tn_{tag}, %ln_{tag} = transform.structured.tile_using_for {op} tile_sizes "
        f"{ts(n=tiles.nr)} : ({a}) -> ({a}, {a})",
        *_peel(f"%ln_{tag}", f"%n_main_{tag}", f"%n_rest_{tag}"),
        f"%gn_{tag} = transform.structured.match {generic} in %n_main_{tag} : ({a}) -> {a}",
        f"%tm_{tag}, %lm_{tag} = transform.structured.tile_using_for %gn_{tag} tile_sizes "
        f"{ts(m=tiles.mr)} : ({a}) -> ({a}, {a})",
        *_peel(f"%lm_{tag}", f"%m_main_{tag}", f"%m_rest_{tag}"),
        f"%g_{tag} = transform.structured.match {generic} in %m_main_{tag} : ({a}) -> {a}",
        f"%rn_{tag} = transform.structured.match {generic} in %n_rest_{tag} : ({a}) -> {a}",
        f"%rm_{tag} = transform.structured.match {generic} in %m_rest_{tag} : ({a}) -> {a}",
        *_padded_edge(tag, tiles, batched, zero),
        f"%r1_{tag}, %lr1_{tag}, %lrk_{tag} = transform.structured.tile_using_for %rm_{tag} "
        f"tile_sizes {ts(m=1, k=1)} : ({a}) -> ({a}, {a}, {a})",
    ]


def _padded_edge(tag: str, tiles: ContractionTiles, batched: bool, zero: str) -> list[str]:
    """The remainder columns `%rn_<tag>` in MR x NR tiles padded to static shapes:
    `%re_<tag>`."""
    a = "!transform.any_op"
    rows, cols = (1, 2) if batched else (0, 1)
    ts = functools.partial(_tile_sizes, batched)
    return [
        f"%rt_{tag}, %lrt_{tag}, %lct_{tag} = transform.structured.tile_using_for %rn_{tag} "
        f"tile_sizes {ts(m=tiles.mr, n=tiles.nr)} : ({a}) -> ({a}, {a}, {a})",
        f"%re_{tag}, %rep_{tag}, %rec_{tag} = transform.structured.pad %rt_{tag} {{"
        f"padding_values = [{zero}, {zero}, {zero}], padding_dimensions = [{rows}, {cols}], "
        f'copy_back_op = "none"}} : ({a}) -> ({a}, {a}, {a})',
    ]


def fused_products_script(func_symbol: str, n_ops: int,
                          targets: list[tuple[int, tuple[int, ...]]], tiles: ContractionTiles,
                          elems: list[str], rows: int, outside: set[int]) -> str:
    """The transform script of an attention-like kernel: products (`targets`, as for
    `inner_contractions_script`) among row-local ops, whose root has `rows` leading loops. The
    root is tiled into one `scf.forall` iteration per block of `ROW_BLOCK` rows (one of each
    earlier leading loop: a head), and every op but those in `outside` (transposes, the fills
    only they read, scalars) is fused into it, so that a block's scores, maxima, exponentials
    and sums are computed right before they are used and stay in cache (before, each op was
    its own loop nest over the whole `H x T x T` score tensor). Each product gets its fusion
    once: canonicalization and CSE merge the slices its consumers read before it is fused, and
    the products, marked `tdsl.product_c<i>` first, are found again by that attribute. Then
    the register tiles of `inner_contractions_script`."""
    a = "!transform.any_op"
    batched = any(len(mnk) == 4 for _, mnk in targets)
    lines = [*_linalg_handles(func_symbol, n_ops), *_tiled_transposes(batched)]
    handle = {i: f"%p{i}" for i in range(n_ops)}
    for index, mnk in targets:
        lines += [_interchanged(f"%p{index}", f"%x_c{index}", mnk),
                  f'transform.annotate %x_c{index} "tdsl.product_c{index}" : {a}']
        handle[index] = f"%x_c{index}"
    tidy = [f"transform.apply_patterns to %f {{ transform.apply_patterns.canonicalization }} "
            f": {a}", f"transform.apply_cse to %f : {a}"]
    lines.append(f"%blocks_op, %blocks = transform.structured.tile_using_forall "
                 f"{handle[n_ops - 1]} tile_sizes {[1] * (rows - 1) + [ROW_BLOCK]} "
                 f": ({a}) -> ({a}, {a})")
    container = "%blocks"
    for i in reversed(range(n_ops - 1)):
        if i in outside:
            continue
        lines += [*tidy, f"%fused{i}, %in{i} = transform.structured.fuse_into_containing_op "
                         f"{handle[i]} into {container} : ({a}, {a}) -> ({a}, {a})"]
        container = f"%in{i}"
    lines += tidy
    tags = []
    for n, (index, mnk) in enumerate(targets):
        tag = f"c{index}"
        lines.append(f"%product_{tag} = transform.structured.match "
                     f"attributes{{tdsl.product_{tag}}} in %f : ({a}) -> {a}")
        lines += _register_tiles(f"%product_{tag}", tag, tiles, len(mnk) == 4,
                                 f"0.0 : {elems[n]}")
        tags.append(tag)
    return sequence(lines + _vectorized_register_tiles(tags, batched))


def inner_contractions_script(func_symbol: str, n_ops: int,
                              targets: list[tuple[int, tuple[int, ...]]],
                              tiles: ContractionTiles, cores: int, elems: list[str]) -> str:
    """The transform script of the contractions inside a larger kernel (attention's `q @ k.T`
    and `p @ v`, 2-D or batched: linalg ops `index` of `n_ops` at loop positions `mnk`, B laid
    out `[k, n]`), for which the packed schedule tripled the compile time: `MR x NR` register
    tiles without packing or cache blocks. Each product is interchanged to (batch, m, n, k),
    its first loop split into one `scf.forall` chunk per core (its `fill` fused in), then tiled
    into static `MR x NR` tiles (peeled; the remainder columns zero-padded MR x NR tiles, the
    remainder rows 1 x NR tiles: `_register_tiles`) whose accumulators stay in registers across
    k. Without it a row of C was loaded and stored at
    every step of k (`p @ v`: store-bound), or each element of C was a dot product ending in a
    horizontal sum (`q @ k.T`: latency-bound). `elems`: each product's element type, for
    the zero-padded remainder tiles (`_register_tiles`)."""
    a = "!transform.any_op"
    batched = any(len(mnk) == 4 for _, mnk in targets)
    lines = [*_linalg_handles(func_symbol, n_ops), *_tiled_transposes(batched)]
    tags = []
    for index, mnk in targets:
        tag = f"c{index}"
        ts = functools.partial(_tile_sizes, len(mnk) == 4)
        lines.append(_interchanged(f"%p{index}", f"%x_{tag}", mnk))
        first = ts(b=cores) if len(mnk) == 4 else ts(m=cores)  # chunks of the first loop
        lines += _thread_chunks(f"%x_{tag}", f"%ch_{tag}", cores, first, f"_{tag}")
        op = f"%ch_{tag}"
        if len(mnk) == 4:
            lines.append(f"%b_{tag}, %lb_{tag} = transform.structured.tile_using_for {op} "
                         f"tile_sizes {ts(b=1)} : ({a}) -> ({a}, {a})")
            op = f"%b_{tag}"
        lines += _register_tiles(op, tag, tiles, len(mnk) == 4, f"0.0 : {elems[len(tags)]}")
        tags.append(tag)
    return sequence(lines + _vectorized_register_tiles(tags, batched))


def _vectorized_register_tiles(tags: list[str], batched: bool) -> list[str]:
    """The register tiles of `_register_tiles` (one `tag` per product) tiled by one step of k,
    vectorized, and folded into `vector.contract`s with their accumulators in registers."""
    a = "!transform.any_op"
    lines = []
    if batched:  # the batch loop's unit dim goes before the register tiles become vectors
        lines.append(f"transform.apply_patterns to %f {{ "
                     f"transform.apply_patterns.linalg.fold_unit_extent_dims_via_slices }} : {a}")
    lines += [f"%tile_{tag}, %lk_{tag} = transform.structured.tile_using_for %g_{tag} "
              f"tile_sizes [0, 0, 1] : ({a}) -> ({a}, {a})" for tag in tags]
    lines += [f"%edge_{tag}, %lke_{tag} = transform.structured.tile_using_for %re_{tag} "
              f"tile_sizes [0, 0, 1] : ({a}) -> ({a}, {a})" for tag in tags]
    lines.append(f"transform.apply_patterns to %f {{ transform.apply_patterns.canonicalization }}"
                 f" : {a}")
    lines += [f"transform.structured.vectorize %{t}_{tag} : {a}" for tag in tags
              for t in ("tile", "r1", "edge")]
    return lines + _vectors_to_contractions()

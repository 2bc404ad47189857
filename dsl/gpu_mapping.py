"""Maps the loops of a bufferized kernel onto CUDA blocks and threads (an IR rewrite).

Input: the host function after `convert-linalg-to-parallel-loops`: one perfect loop nest per
linalg op (`scf.parallel` for its parallel dimensions, `scf.for` for its reduction dimensions
around a block that loads, combines and stores an accumulator; the loops come in whatever order
`tdsl.to_mlir` chose), a few operations at the top level (0-d statements, reductions into
rank-0 tensors) and `memref.copy`s. Output: the same function where all device work sits in
pairs of nested `scf.parallel` loops mapped to `block_x` / `thread_x`, ready for upstream
`convert-parallel-loops-to-gpu` and `gpu-kernel-outlining`. A nest becomes one launch:

- **element-wise** (and the fallback for unrecognized nests): the parallel dimensions are
  collapsed into one linear index, `BLOCK_THREADS` threads per block, one element per thread;
  the last dimension varies fastest across threads (coalesced), and `lin < total` guards the
  tail, so any size works. The grid has `max(1, ceil(total / BLOCK_THREADS))` blocks.
- **block reduction** (a reduction along contiguous memory): one block per output element;
  its threads stride over the linearized reduction domain, `REDUCE_UNROLL` terms per step
  into as many private accumulators (the step's loads in flight together), then
  `gpu.all_reduce` (warp shuffles, shared memory and barriers after `convert-gpu-to-nvvm`)
  combines them, and thread 0 stores.
  The block has 32 to 256 threads (the reduction size rounded up to a warp). Reductions
  shorter than `BLOCK_REDUCE_MIN` are a thread reduction instead, decided at run time.
- **grid reduction** (into a rank-0 tensor): up to `GRID_REDUCE_BLOCKS` blocks reduce strided
  shares into partials in device memory, then one block combines the partials.
- **thread reduction** (column reductions, convolutions: consecutive outputs read
  consecutive memory): the element-wise mapping with the accumulator in a register
  (`iter_args`): one load before the reduction loops and one store after them.
- **tiled contraction** (matmul and its batched and transposed forms): output tiles per
  block, operand tiles staged in shared memory (see `tdsl.gpu_tiling`).

Consecutive nests over the same rows (softmax, layernorm: reductions per row and element-wise
statements over the row) are also fused into one launch with a block per row (see
`tdsl.gpu_fusion`). Temporaries become `gpu.alloc` (device memory), freed with `gpu.dealloc`
before the return; device work left at the top level runs on one thread.
"""

from __future__ import annotations

from tdsl.gpu_ir import (
    COMBINERS,
    Builder,
    MappingError,
    Nest,
    match_nest,
    ops,
    owned_by,
    prefers_block_reduce,
    terminator,
)
from tdsl.gpu_phases import Phases

BLOCK_THREADS = 256
REDUCE_THREADS_MAX = 256
BLOCK_REDUCE_MIN = 32  # shorter reductions are a thread per output
GRID_REDUCE_BLOCKS = 1024  # the most blocks of a reduction into one value
GRID_TERMS = 64  # terms per thread before a reduction into one value takes another block
_VIEW_OPS = frozenset({"memref.cast", "memref.reinterpret_cast", "memref.subview",
                       "memref.expand_shape", "memref.collapse_shape"})
_HOST_PREFIXES = ("arith.", "index.", "affine.apply", "affine.min", "affine.max")
_HOST_MATH = frozenset({"math.absf", "math.copysign", "math.fma", "math.floor", "math.ceil",
                        "math.round", "math.roundeven", "math.trunc", "math.sqrt"})
"""`math` ops the host computes too: each is an LLVM intrinsic, no library call. The rounding
of a symbol to bf16 / f16 uses `math.absf`: kept on the device, it put the conversion into the
first statement's one-thread launch while a later launch read it (fuzz: `y2 = bf16(inf) +
bf16(N)`, `y1 = bf16(N) % 0.0` failed to map: "a device value escapes its launch")."""

__all__ = ["BLOCK_THREADS", "MappingError", "Mapper", "map_to_gpu"]


def map_to_gpu(module) -> None:
    """Rewrite every function of `module` (in place) so that its device work is mapped."""
    for op in module.body.operations:
        if op.operation.name == "func.func":
            Mapper(op.operation).run()


class Mapper(Phases):
    """Maps the device work of one function."""

    def __init__(self, func):
        from mlir import ir

        self.ir = ir
        self.block = func.regions[0].blocks[0]
        self.b = Builder()
        self.host: set = set(self.block.arguments)  # values the host computes
        self.allocs: list = []

    def is_host_op(self, op) -> bool:
        """Pure arithmetic on host values (sizes, counts, a symbol converted to a float),
        constants, and views of memrefs (a descriptor computed on the host, the data left
        where it is)."""
        if op.name in ("memref.dim", "arith.constant") or op.name in _VIEW_OPS:
            return True
        if len(op.regions) or not (op.name.startswith(_HOST_PREFIXES) or op.name in _HOST_MATH):
            return False
        return all(v in self.host for v in op.operands)

    def run(self) -> None:
        """Map the function body, then move its temporaries to device memory."""
        self.map_block(self.block)
        self._device_allocations()

    def map_block(self, block) -> None:
        """Map the device work among the operations of a host block, in order."""
        from tdsl.gpu_fusion import map_nests

        items: list = []  # Nest, list of loose device ops, or ("leading", op)
        loose: list = []
        for op in ops(block):
            if op.name == "memref.alloc" and block == self.block:
                self.allocs.append(op)
                continue
            if self.is_host_op(op):
                self.host.update(op.results)
                continue
            if op.name == "memref.copy":
                op = self._copy_loops(op)
            nest = match_nest(op) if op.name in ("scf.parallel", "scf.for") else None
            host_loop = nest is None and op.name == "scf.for" and self._is_host_loop(op)
            if nest is None and op.name != "scf.parallel" and not host_loop:
                loose.append(op)  # scalar work (an integer power's loop too): one thread
                continue
            if loose:
                items.append(loose)
                loose = []
            if nest is not None:
                items.append(nest)
            elif op.name == "scf.parallel":
                items.append(("leading", op))
            else:
                items.append(("host-loop", op))
        if loose:
            items.append(loose)
        run: list[Nest] = []
        for item in items + [None]:
            if isinstance(item, Nest):
                run.append(item)
                continue
            map_nests(self, run)
            run = []
            if isinstance(item, list):
                self._single_thread(item)
            elif isinstance(item, tuple) and item[0] == "leading":
                self._leading_parallel(item[1])
            elif isinstance(item, tuple):
                self.host.add(item[1].opview.induction_variable)
                self.map_block(item[1].opview.body)  # a host loop of launches (rare)

    def _is_host_loop(self, op) -> bool:
        view = op.opview
        if len(view.initArgs) or not all(v in self.host for v in
                                         (view.lowerBound, view.upperBound, view.step)):
            return False
        return any(inner.name in ("scf.parallel", "scf.for") for inner in ops(view.body))

    # ---- one nest, one launch -------------------------------------------------------------
    def map_nest(self, nest: Nest) -> None:
        """Map a nest by itself (element-wise, block or thread reduction, tiled contraction),
        erasing it."""
        from tdsl.gpu_tiling import emit_tiled, match_contraction

        contraction = match_contraction(nest)
        if contraction is not None:
            emit_tiled(self, contraction)
        elif not nest.r_ivs:
            self.elementwise_launch([nest])
        elif prefers_block_reduce(nest) and not nest.p_ivs:
            self._grid_reduce_launches(nest)
        elif prefers_block_reduce(nest):
            self._short_or_long_reduction(nest)
            return
        else:
            end = self._elementwise_launch(nest.root, nest.p_ubs, [nest.p_ivs])
            self.emit_accumulation(end, nest)
        nest.root.erase()

    def _short_or_long_reduction(self, nest: Nest) -> None:
        """A block per output for reductions of at least BLOCK_REDUCE_MIN terms, else a
        thread per output (decided at run time; both are compiled)."""
        from mlir.dialects import arith

        with self.ir.InsertionPoint(nest.root):
            size = self.b.product(nest.r_ubs)
            long = arith.cmpi(arith.CmpIPredicate.uge, size, self.b.const(BLOCK_REDUCE_MIN))
            long_end, short_end = self.b.if_else(long)
        with self.ir.InsertionPoint(short_end):
            short = match_nest(nest.root.clone())
        if short is None:
            raise MappingError("a cloned loop nest lost its form")
        end = self._elementwise_launch(short.root, short.p_ubs, [short.p_ivs])
        self.emit_accumulation(end, short)
        short.root.erase()
        nest.root.move_before(long_end)
        self._block_reduce_launch(nest)
        nest.root.erase()

    def elementwise_launch(self, nests: list[Nest]) -> None:
        """One launch running the bodies of element-wise nests over one domain, in order,
        each thread on one point (no barrier needed: a point depends only on itself)."""
        end = self._elementwise_launch(nests[-1].root, nests[0].p_ubs,
                                       [nest.p_ivs for nest in nests])
        for nest in nests:
            for op in ops(nest.body):
                op.move_before(end)

    def _elementwise_launch(self, anchor, ubs: list, ivs_lists: list[list]):
        """A launch of one thread per point of the domain of `ubs` (collapsed), before
        `anchor`; uses of each list of `ivs_lists` become the thread's indices. Returns the
        guarded block's end."""
        from mlir.dialects import arith

        with self.ir.InsertionPoint(anchor):
            total = self.b.product(ubs)
            per_block = self.b.const(BLOCK_THREADS)
            blocks = arith.maxui(self.b.ceil_div(total, BLOCK_THREADS), self.b.const(1))
            bx, tx, body_end = self.b.launch(blocks, per_block)
        with self.ir.InsertionPoint(body_end):
            linear = arith.addi(arith.muli(bx, per_block), tx)
            end = self.b.if_then(arith.cmpi(arith.CmpIPredicate.ult, linear, total))
        with self.ir.InsertionPoint(end):
            new_ivs = self.b.delinearize(linear, ubs)
        for ivs in ivs_lists:
            for old, new in zip(ivs, new_ivs):
                old.replace_all_uses_with(new)
        return end

    def _block_reduce_launch(self, nest: Nest) -> None:
        from mlir.dialects import arith

        with self.ir.InsertionPoint(nest.root):
            p_total = self.b.product(nest.p_ubs)
            threads = self.b.warp_threads(self.b.product(nest.r_ubs), REDUCE_THREADS_MAX)
            blocks = arith.maxui(p_total, self.b.const(1))
            bx, tx, body_end = self.b.launch(blocks, threads)
        with self.ir.InsertionPoint(body_end):
            end = self.b.if_then(arith.cmpi(arith.CmpIPredicate.ult, bx, p_total))
        with self.ir.InsertionPoint(end):
            for old, new in zip(nest.p_ivs, self.b.delinearize(bx, nest.p_ubs)):
                old.replace_all_uses_with(new)
        self.emit_block_reduction(end, nest, tx, threads)

    def _grid_reduce_launches(self, nest: Nest) -> None:
        """A reduction into one value, in two launches: up to `GRID_REDUCE_BLOCKS` blocks each
        reduce a strided share of the domain into a partial (device memory), then one block
        combines the partials with the accumulator and stores. The block count depends on the
        size alone, so a result does not change from call to call."""
        from mlir.dialects import arith, memref

        acc_type = nest.combine.results[0].type
        kind, _ = COMBINERS[nest.combine.name]
        other = nest.combine.operands[1 - nest.acc_pos]
        with self.ir.InsertionPoint(nest.root):
            total = self.b.product(nest.r_ubs)
            threads = self.b.const(REDUCE_THREADS_MAX)
            blocks = self.b.clamp(self.b.ceil_div(total, REDUCE_THREADS_MAX * GRID_TERMS),
                                  1, GRID_REDUCE_BLOCKS)
            partials_type = self.ir.MemRefType.get([GRID_REDUCE_BLOCKS], acc_type)
            partials = memref.AllocOp(partials_type, [], [])
            self.allocs.append(partials.operation)
            bx, tx, body_end = self.b.launch(blocks, threads)
        with self.ir.InsertionPoint(body_end):
            start = arith.addi(arith.muli(bx, threads), tx)
            stride = arith.muli(blocks, threads)
        partial = self._thread_terms(body_end, nest, start, stride)
        with self.ir.InsertionPoint(body_end):
            reduced = self._all_reduce(partial, kind, nest.combine.name)
            first = self.b.if_then(arith.cmpi(arith.CmpIPredicate.eq, tx, self.b.const(0)))
        with self.ir.InsertionPoint(first):
            memref.store(reduced, partials.result, [bx])
        self._combine_partials(nest, partials.result, blocks, other)

    def _combine_partials(self, nest: Nest, partials, count, other) -> None:
        """One block reduces `count` partials; thread 0 combines them with the accumulator."""
        from mlir.dialects import memref, scf

        acc_type = nest.combine.results[0].type
        _, identity_kind = COMBINERS[nest.combine.name]
        with self.ir.InsertionPoint(nest.root):
            threads = self.b.const(REDUCE_THREADS_MAX)
            _, tx, body_end = self.b.launch(self.b.const(1), threads)
        with self.ir.InsertionPoint(body_end):
            loop = scf.ForOp(tx, count, threads, [self.b.typed_const(acc_type, identity_kind)])
            with self.ir.InsertionPoint(loop.body):
                value = memref.load(partials, [loop.induction_variable])
                step = nest.combine.clone()
                scf.YieldOp([step.results[0]])
            step.operation.replace_uses_of_with(nest.load.results[0], loop.inner_iter_args[0])
            step.operation.replace_uses_of_with(other, value)
        self.store_block_result(body_end, nest, tx, loop.results[0], other)

    # ---- everything else ------------------------------------------------------------------
    def _leading_parallel(self, op) -> None:
        """An scf.parallel of another form: its outer loop element-wise, the rest inside."""
        view = op.opview
        body = op.regions[0].blocks[0]
        from tdsl.gpu_ir import const_int

        if len(view.initVals) or any(const_int(v) != 0 for v in view.lowerBound) or \
                any(const_int(v) != 1 for v in view.step):
            raise MappingError(f"unexpected scf.parallel form:\n{op}")
        end = self._elementwise_launch(op, list(view.upperBound), [list(body.arguments)])
        for inner in ops(body):
            inner.move_before(end)
        op.erase()

    def _copy_loops(self, op):
        """`memref.copy src, dst` as an scf.parallel nest (mapped like any other)."""
        from mlir.dialects import memref, scf

        src, dst = op.operands[0], op.operands[1]
        rank = self.ir.MemRefType(src.type).rank
        with self.ir.InsertionPoint(op):
            sizes = self._sizes(src, rank)
            loop = scf.ParallelOp([], [self.b.const(0)] * rank, sizes, [self.b.const(1)] * rank,
                                  [])
            block = loop.regions[0].blocks.append(*([self.b.index] * rank))
            with self.ir.InsertionPoint(block):
                ivs = list(block.arguments)
                memref.store(memref.load(src, ivs), dst, ivs)
                scf.ReduceOp([], 0)
        op.erase()
        return loop.operation

    def _sizes(self, value, rank: int) -> list:
        """The sizes of a memref; those of an allocation are its size operands (so that
        nests over it share their bounds with the statements that use the same sizes)."""
        from mlir.dialects import memref

        owner = value.owner
        shape = self.ir.MemRefType(value.type).shape
        if not isinstance(owner, self.ir.Block) and owner.operation.name == "memref.alloc":
            dynamic = iter(owner.operation.operands)
            return [next(dynamic) if s < 0 else self.b.const(s) for s in shape]
        return [memref.dim(value, self.b.const(d)) for d in range(rank)]

    def _single_thread(self, group: list) -> None:
        """Run consecutive top-level device operations on one thread."""
        with self.ir.InsertionPoint(group[-1]):
            one = self.b.const(1)
            _, _, end = self.b.launch(one, one)
        for op in group:
            op.move_before(end)
        launch = end.parent
        for op in group:
            for result in op.results:
                for use in result.uses:
                    if not owned_by(use.owner, launch):
                        raise MappingError(f"a device value escapes its launch: {op}")

    def _device_allocations(self) -> None:
        """`memref.alloc` -> `gpu.alloc`, each freed with `gpu.dealloc` before the return."""
        from mlir.dialects import gpu

        ret = terminator(self.block)
        for alloc in self.allocs:
            with self.ir.InsertionPoint(alloc):
                new = gpu.AllocOp(alloc.results[0].type, None, [], list(alloc.operands), [])
            alloc.results[0].replace_all_uses_with(new.memref)
            alloc.erase()
            with self.ir.InsertionPoint(ret):
                gpu.DeallocOp(None, [], new.memref)

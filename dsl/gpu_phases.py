"""The phases of a launch that the GPU mapping emits (`tdsl.gpu_mapping`, `tdsl.gpu_fusion`):
a thread's accumulation over a reduction, a block reduction, and element-wise work strided
over a block's threads, `REDUCE_UNROLL` points per step so that their loads are in flight
together."""

from __future__ import annotations

from tdsl.gpu_ir import COMBINERS, NARROW_INTS, Nest, ops, terminator

REDUCE_UNROLL = 4  # terms (or points) per step of a thread's strided loop


class Phases:
    """The phase emitters of `Mapper`: they need its `ir` (the `mlir.ir` module) and `b` (a
    `tdsl.gpu_ir.Builder`)."""

    def emit_accumulation(self, end, nest: Nest) -> None:
        """Before `end`, with the nest's P indices already replaced: load the accumulator,
        run the reduction loops carrying it in a register, store it."""
        from mlir.dialects import scf

        nest.load.move_before(end)
        loops: list = []

        def build(k: int, init):
            new = scf.ForOp(self.b.const(0), nest.r_ubs[k], self.b.const(1), [init])
            with self.ir.InsertionPoint(new.body):
                if k + 1 < len(nest.r_ubs):
                    scf.YieldOp([build(k + 1, new.inner_iter_args[0]).results[0]])
                else:
                    scf.YieldOp([new.inner_iter_args[0]])
            loops.append(new)
            return new

        with self.ir.InsertionPoint(end):
            top = build(0, nest.load.results[0])
        innermost = loops[0]
        yield_op = terminator(innermost.body)
        for op in nest.body_ops:
            op.move_before(yield_op)
        nest.combine.replace_uses_of_with(nest.load.results[0], innermost.inner_iter_args[0])
        yield_op.replace_uses_of_with(innermost.inner_iter_args[0], nest.combine.results[0])
        nest.store.move_before(end)
        nest.store.replace_uses_of_with(nest.combine.results[0], top.results[0])
        for old, new in zip(nest.r_ivs, reversed(loops)):
            old.replace_all_uses_with(new.induction_variable)

    def emit_block_reduction(self, end, nest: Nest, tx, threads) -> None:
        """Before `end`, with the nest's P indices already replaced: the block's threads
        stride over the reduction domain with private accumulators, `gpu.all_reduce`
        combines them, and thread 0 combines with the accumulator and stores."""
        other = nest.combine.operands[1 - nest.acc_pos]
        self.store_block_result(end, nest, tx, self._thread_terms(end, nest, tx, threads),
                                other)

    def store_block_result(self, end, nest: Nest, tx, partial, other) -> None:
        """Before `end`: `gpu.all_reduce` of the threads' `partial`s, then thread 0 combines
        it with the accumulator (the nest's load, combine and store, `other` replaced)."""
        from mlir.dialects import arith

        kind, _ = COMBINERS[nest.combine.name]
        with self.ir.InsertionPoint(end):
            reduced = self._all_reduce(partial, kind, nest.combine.name)
            first = self.b.if_then(arith.cmpi(arith.CmpIPredicate.eq, tx, self.b.const(0)))
        for op in (nest.load, nest.combine, nest.store):
            op.move_before(first)
        nest.combine.replace_uses_of_with(other, reduced)

    def _thread_terms(self, end, nest: Nest, start, stride):
        """Before `end`: a thread's partial of the terms `start`, `start + stride`, ... of the
        linearized reduction domain."""
        if any(len(op.regions) for op in nest.body_ops):
            return self._strided_terms(end, nest, start, stride)
        return self._unrolled_terms(end, nest, start, stride)

    def _strided_terms(self, end, nest: Nest, start, stride):
        """A thread's share of the terms, one per step: the nest's body moves into the loop."""
        from mlir.dialects import scf

        acc_type = nest.combine.results[0].type
        _, identity = COMBINERS[nest.combine.name]
        with self.ir.InsertionPoint(end):
            total = self.b.product(nest.r_ubs)
            loop = scf.ForOp(start, total, stride, [self.b.typed_const(acc_type, identity)])
            with self.ir.InsertionPoint(loop.body):
                new_r = self.b.delinearize(loop.induction_variable, nest.r_ubs)
                yield_op = scf.YieldOp([loop.inner_iter_args[0]])
        for op in nest.body_ops:
            if op != nest.combine:
                op.move_before(yield_op)
        with self.ir.InsertionPoint(yield_op):
            step = nest.combine.clone()
        step.operation.replace_uses_of_with(nest.load.results[0], loop.inner_iter_args[0])
        yield_op.operation.replace_uses_of_with(loop.inner_iter_args[0], step.results[0])
        for old, new in zip(nest.r_ivs, new_r):
            old.replace_all_uses_with(new)
        return loop.results[0]

    def _unrolled_terms(self, end, nest: Nest, start, stride):
        """A thread's share of the terms, `REDUCE_UNROLL` per step into as many accumulators.
        Every term of a step is computed before any is combined, at its index or, past the
        end, at the step's first (valid) index, its accumulator then keeping its value: the
        step's loads are in flight together. The nest's body is cloned per term (it has no
        regions); the accumulators are combined after the loop."""
        from mlir.dialects import arith, scf

        from tdsl.gpu_tiling import clone_slice

        acc_type = nest.combine.results[0].type
        _, identity = COMBINERS[nest.combine.name]
        other = nest.combine.operands[1 - nest.acc_pos]
        with self.ir.InsertionPoint(end):
            total = self.b.product(nest.r_ubs)
            step = arith.muli(stride, self.b.const(REDUCE_UNROLL))
            inits = [self.b.typed_const(acc_type, identity)] * REDUCE_UNROLL
            loop = scf.ForOp(start, total, step, inits)
            with self.ir.InsertionPoint(loop.body):
                yield_op = scf.YieldOp(list(loop.inner_iter_args))
        terms = []
        for u in range(REDUCE_UNROLL):
            ok, mapping = self._unrolled_point(yield_op, loop.induction_variable, stride, u,
                                               total, nest.r_ubs, nest.r_ivs)
            terms.append((ok, mapping, clone_slice(other, mapping, nest, yield_op)))
        accs = []
        for acc, (ok, mapping, term) in zip(loop.inner_iter_args, terms):
            mapping.update({nest.load.results[0]: acc, other: term})
            combined = clone_slice(nest.combine.results[0], mapping, nest, yield_op)
            with self.ir.InsertionPoint(yield_op):
                accs.append(arith.select(ok, combined, acc))
        for old, new in zip(loop.inner_iter_args, accs):
            yield_op.operation.replace_uses_of_with(old, new)
        with self.ir.InsertionPoint(end):
            partial = loop.results[0]
            for acc in list(loop.results)[1:]:
                mapping = {nest.load.results[0]: partial, other: acc}
                partial = clone_slice(nest.combine.results[0], mapping, nest, end)
        return partial

    def _unrolled_point(self, before, iv, stride, u: int, total, ubs, ivs) -> tuple:
        """Before `before`: (in range, {iv: index}) for the point `iv + u * stride` of a
        linearized domain, clamped to `iv` (valid in the loop) when past `total`."""
        from mlir.dialects import arith

        with self.ir.InsertionPoint(before):
            if u == 0:
                return arith.cmpi(arith.CmpIPredicate.ult, iv, total), dict(
                    zip(ivs, self.b.delinearize(iv, ubs)))
            index = arith.addi(iv, arith.muli(stride, self.b.const(u)))
            ok = arith.cmpi(arith.CmpIPredicate.ult, index, total)
            safe = arith.select(ok, index, iv)
            return ok, dict(zip(ivs, self.b.delinearize(safe, ubs)))

    def emit_unrolled_elementwise(self, end, nest: Nest, start, stride, ubs, ivs) -> None:
        """Before `end`: the element-wise nest (indices `ivs` over `ubs`, linearized) for the
        points `start`, `start + stride`, ..., `REDUCE_UNROLL` per step: every point's values
        are computed (clamped like `_unrolled_point`) before the step's guarded stores. Falls
        back to one point per step when the body has regions or writes other than stores at
        its end."""
        from mlir.dialects import arith, memref, scf

        from tdsl.gpu_tiling import clone_slice

        body = ops(nest.body)
        stores = [op for op in body if op.name == "memref.store"]
        if any(len(op.regions) for op in body) or body[len(body) - len(stores):] != stores:
            phase_end = self.strided_phase(end, start, stride, ubs, ivs)
            for op in body:
                op.move_before(phase_end)
            return
        with self.ir.InsertionPoint(end):
            total = self.b.product(ubs)
            step = arith.muli(stride, self.b.const(REDUCE_UNROLL))
            loop = scf.ForOp(start, total, step)
            with self.ir.InsertionPoint(loop.body):
                yield_op = scf.YieldOp([])
        points = []
        for u in range(REDUCE_UNROLL):
            ok, mapping = self._unrolled_point(yield_op, loop.induction_variable, stride, u,
                                               total, ubs, ivs)
            values = [[clone_slice(v, mapping, nest, yield_op) for v in store.operands]
                      for store in stores]
            points.append((ok, values))
        for ok, values in points:
            with self.ir.InsertionPoint(yield_op):
                guard_end = self.b.if_then(ok)
            with self.ir.InsertionPoint(guard_end):
                for operands in values:
                    memref.store(operands[0], operands[1], operands[2:])

    def strided_phase(self, end, start, stride, ubs, ivs):
        """Before `end`: a loop over the points `start`, `start + stride`, ... of the domain of
        `ubs` (linearized), the uses of `ivs` replaced by each point's indices; returns the
        loop body's end."""
        with self.ir.InsertionPoint(end):
            iv, phase_end = self.b.strided(start, self.b.product(ubs), stride)
        with self.ir.InsertionPoint(phase_end):
            for old, new in zip(ivs, self.b.delinearize(iv, ubs)):
                old.replace_all_uses_with(new)
        return phase_end

    def _all_reduce(self, value, kind: str, combine: str):
        """`gpu.all_reduce` of a value (8/16-bit integers widened to i32 and back)."""
        from mlir.dialects import arith, gpu

        type_ = value.type
        narrow = str(type_) in NARROW_INTS
        if narrow:
            i32 = self.ir.IntegerType.get_signless(32)
            widen = arith.extui if combine in ("arith.maxui", "arith.minui") else arith.extsi
            value = widen(i32, value)
        op = gpu.AllReduceOp(value, op=self.ir.Attribute.parse(f"#gpu<all_reduce_op {kind}>"),
                             uniform=True)
        return arith.trunci(type_, op.result) if narrow else op.result

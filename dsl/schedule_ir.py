"""What the CPU schedules see of a kernel: the host they are sized for, and the kernel's linalg
ops on tensors (`LinalgInfo`: iterators, indexing maps by loop position, body ops)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from tdsl.runtime.hostinfo import cache_sizes, usable_cores

SCHEDULE_NAME = "tdsl_schedule"


@dataclass(frozen=True)
class Host:
    """What the schedules are sized for: vector width, vector registers, cores, and the data
    caches (bytes; `l3_share` is the last level's size over the cores that share it)."""

    vector_bits: int = 256
    vector_registers: int = 16
    cores: int = 1
    l1d: int = 32 * 1024
    l2: int = 512 * 1024
    l3_share: int = 2 * 1024 * 1024


@functools.lru_cache(maxsize=1)
def host() -> Host:
    """The host's vector width (AVX-512: 512 bits, 32 registers), its usable cores and its
    caches (read once per process: about 1 ms, asked by several stages per kernel)."""
    from tdsl.codegen import llvm as cg

    _, features = cg.host_cpu()
    flags = set(features.split(","))
    cores, caches = usable_cores(), cache_sizes()
    if "+avx512f" in flags:
        return Host(512, 32, cores, **caches)
    if "+avx" in flags:
        return Host(256, 16, cores, **caches)
    return Host(128, 16, cores, **caches)


@dataclass
class LinalgInfo:
    """One linalg op of the kernel function, as the schedules see it."""

    op: object
    name: str
    iterators: tuple[str, ...]
    maps: tuple[tuple[int | None, ...], ...]  # per operand: result dims (None: not a dim)
    n_inputs: int
    body: tuple[str, ...]
    elem_bits: int = 32


def _dims(map_attr) -> tuple[int | None, ...]:
    from mlir import ir

    amap = ir.AffineMapAttr(map_attr).value
    out = []
    for e in amap.results:
        out.append(e.position if isinstance(e, ir.AffineDimExpr) else None)
    return tuple(out)


def linalg_info(op) -> LinalgInfo | None:
    from mlir import ir

    name = op.operation.name
    n_inputs = len(op.operation.operands) - len(op.operation.results)
    if name == "linalg.fill":
        rank = ir.ShapedType(op.operation.results[0].type).rank
        ident = tuple(range(rank))
        return LinalgInfo(op, name, ("parallel",) * rank, ((), ident), 1, ())
    if name == "linalg.transpose":  # from `transpose_b_operands`
        perm = tuple(ir.DenseI64ArrayAttr(op.attributes["permutation"]))
        return LinalgInfo(op, name, ("parallel",) * len(perm),
                          (tuple(perm.index(d) for d in range(len(perm))),
                           tuple(range(len(perm)))), 1, ())
    if name != "linalg.generic":
        return None
    iters = tuple("reduction" if "reduction" in str(a) else "parallel"
                  for a in ir.ArrayAttr(op.attributes["iterator_types"]))
    maps = tuple(_dims(m) for m in ir.ArrayAttr(op.attributes["indexing_maps"]))
    body = tuple(o.operation.name for o in op.operation.regions[0].blocks[0].operations)
    elem = ir.ShapedType(op.operation.results[0].type).element_type
    bits = 64 if str(elem) == "f64" else 32
    return LinalgInfo(op, name, iters, maps, n_inputs, body, bits)


def kernel_function(module, symbol: str):
    """The `func.func @symbol` of the module (None if absent)."""
    from mlir import ir

    for op in module.body.operations:
        if op.operation.name == "func.func" and \
                ir.StringAttr(op.attributes["sym_name"]).value == symbol:
            return op
    return None


def nested_ops(op, name: str) -> list:
    """Every op called `name` nested in `op` (at any depth), in program order."""
    found = []
    for region in op.regions:
        for block in region.blocks:
            for child in block.operations:
                if child.operation.name == name:
                    found.append(child.operation)
                found += nested_ops(child.operation, name)
    return found


def linalg_ops(func) -> list:
    ops = []

    def walk(block) -> None:
        for child in block.operations:
            if child.operation.name.startswith("linalg."):
                ops.append(child)  # the kernel's linalg ops are not nested in each other
                continue
            for region in child.operation.regions:
                for b in region.blocks:
                    walk(b)

    walk(func.operation.regions[0].blocks[0])
    return ops


def users(value) -> list:
    return [u.owner for u in value.uses]


def sequence(lines: list[str]) -> str:
    body = "\n    ".join(lines + ["transform.yield"])
    return (f"  transform.named_sequence @{SCHEDULE_NAME}(%arg0: !transform.any_op "
            f"{{transform.readonly}}) {{\n    {body}\n  }}\n")


def tileable(op) -> bool:
    """False when an indexing map of the linalg op multiplies a loop index by a constant <= 0
    (`x[-2 * k]`): MLIR 22's tiling asserts on such maps (an abort, not an error that the
    schedule's fallback could catch); or divides (`x[k / 2]`, floordiv, ceildiv, mod): tiling
    keeps the map on the tile's local indices, `(offset + k) / 2` becomes `offset / 2 + k / 2`
    in effect, wrong for a tile at an odd offset (a sum over `x[0, k / 2]` split into two chunks
    of 9 and 8 lost a term: fuzz corpus 029). Such kernels keep their plain loops."""
    from mlir import ir

    if "indexing_maps" not in op.attributes:
        return True
    for attr in ir.ArrayAttr(op.attributes["indexing_maps"]):
        if not all(_tileable_expr(e) for e in ir.AffineMapAttr(attr).value.results):
            return False
    return True


def _tileable_expr(expr) -> bool:
    from mlir import ir

    if isinstance(expr, ir.AffineFloorDivExpr | ir.AffineCeilDivExpr | ir.AffineModExpr):
        return False
    if isinstance(expr, ir.AffineMulExpr) and any(
            isinstance(side, ir.AffineConstantExpr) and side.value <= 0
            for side in (expr.lhs, expr.rhs)):
        return False
    if isinstance(expr, ir.AffineBinaryExpr):
        return _tileable_expr(expr.lhs) and _tileable_expr(expr.rhs)
    return True


def any_through_unit(module, symbol: str) -> bool:
    """Make the `@symbol_any` version of a versioned kernel (`tdsl.schedules.versioned_text`)
    copy its arguments into fresh row-major buffers and call `@symbol_unit`, in place.

    Calls with a non-unit innermost stride then run the scheduled code too, at the cost of
    one copy of each array (the kernel reads every input and writes every output anyway), and
    the kernel is compiled once instead of twice: no second copy of its loops goes through
    the MLIR stages, LLVM O3 and code generation. Outputs are copied back, not in (every
    element of an output is written). Only done when the copies are fewer loop nests than the
    kernel's own (attention, cosine similarity; not a plain matmul, whose `_any` stays the
    plain loops). Returns whether `@symbol_any` was rewritten; it is also left alone when an
    argument is used other than by the ops that bring it in and out.
    """
    from mlir import ir

    any_func = kernel_function(module, symbol + "_any")
    unit_func = kernel_function(module, symbol + "_unit")
    if any_func is None or unit_func is None:
        return False
    outputs = _written_arguments(any_func)
    if outputs is None:
        return False
    any_types = ir.FunctionType(ir.TypeAttr(any_func.attributes["function_type"]).value).inputs
    unit_types = ir.FunctionType(ir.TypeAttr(unit_func.attributes["function_type"]).value).inputs
    if len(any_types) != len(unit_types):
        return False
    copies = sum(1 for t, ut in zip(any_types, unit_types) if t != ut)
    if copies >= _loop_nests(any_func):
        return False  # a plain contraction: its own loops are no more code than the copies
    lines, after, call_args = [], [], []
    for i, (t, ut) in enumerate(zip(any_types, unit_types)):
        mt = ir.MemRefType(t)
        if mt.rank == 0 or t == ut:
            call_args.append(f"%arg{i}")
            continue
        sizes = []
        for d, extent in enumerate(mt.shape):
            if ir.ShapedType.is_dynamic_size(extent):
                lines.append(f"%c{i}_{d} = arith.constant {d} : index")
                lines.append(f"%d{i}_{d} = memref.dim %arg{i}, %c{i}_{d} : {t}")
                sizes.append(f"%d{i}_{d}")
        dense = ir.MemRefType.get(mt.shape, mt.element_type)
        lines.append(f"%a{i} = memref.alloc({', '.join(sizes)}) {{alignment = 64 : i64}} "
                     f": {dense}")
        if i in outputs:
            after.append(f"memref.copy %a{i}, %arg{i} : {dense} to {t}")
        else:
            lines.append(f"memref.copy %arg{i}, %a{i} : {t} to {dense}")
        lines.append(f"%u{i} = memref.cast %a{i} : {dense} to {ut}")
        call_args.append(f"%u{i}")
    unit_list = ", ".join(str(t) for t in unit_types)
    lines.append(f"func.call @{symbol}_unit({', '.join(call_args)}) : ({unit_list}) -> ()")
    params = ", ".join(f"%arg{i}: {t}" for i, t in enumerate(any_types))
    body = "\n    ".join(lines + after + ["return"])
    text = (f"func.func private @{symbol}_unit({unit_list})\n"
            f"func.func private @{symbol}_any({params}) {{\n    {body}\n}}\n")
    try:
        parsed = ir.Module.parse(text)
    except Exception as exc:
        from tdsl.pipelines import PipelineError

        raise PipelineError(f"rewriting @{symbol}_any failed: {exc}\n{text}") from exc
    new_func = kernel_function(parsed, symbol + "_any")
    new_func.operation.detach_from_parent()  # before `parsed` goes, which would free it
    ir.InsertionPoint(any_func).insert(new_func)
    any_func.operation.erase()
    return True


def _loop_nests(func) -> int:
    """The number of linalg ops (each a loop nest once lowered) in a function, nested too."""
    count = 0
    for region in func.operation.regions:
        for block in region.blocks:
            for op in block.operations:
                name = op.operation.name
                if name.startswith("linalg.") and name not in ("linalg.yield", "linalg.index"):
                    count += 1
                count += _loop_nests(op)
    return count


_READS = frozenset({"memref.dim", "memref.extract_strided_metadata", "memref.load"})


def _written_arguments(func) -> set[int] | None:
    """The indices of the arguments of a `fused`-stage kernel function that it writes
    (outputs), or None when an argument is used other than by `bufferization.to_tensor`, as
    the destination of `bufferization.materialize_in_destination` or by an op in `_READS`."""
    args = list(func.regions[0].blocks[0].arguments)
    written: set[int] = set()
    for i, arg in enumerate(args):
        for use in arg.uses:
            op = use.owner
            name = op.name
            if name == "bufferization.to_tensor":
                if "writable" in op.attributes:
                    written.add(i)
            elif name == "bufferization.materialize_in_destination" and use.operand_number == 1:
                written.add(i)
            elif name not in _READS:
                return None
    return written

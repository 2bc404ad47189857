"""What the CPU schedules see of a kernel: the host they are sized for, and the kernel's linalg
ops on tensors (`LinalgInfo`: iterators, indexing maps by loop position, body ops)."""

from __future__ import annotations

import os
from dataclasses import dataclass

SCHEDULE_NAME = "tdsl_schedule"


@dataclass(frozen=True)
class Host:
    """What the schedules are sized for: vector width, vector registers, cores."""

    vector_bits: int = 256
    vector_registers: int = 16
    cores: int = 1


def host() -> Host:
    """The host's vector width (AVX-512: 512 bits, 32 registers), and its usable cores."""
    from tdsl.codegen import llvm as cg

    _, features = cg.host_cpu()
    flags = set(features.split(","))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if "+avx512f" in flags:
        return Host(512, 32, cores or 1)
    if "+avx" in flags:
        return Host(256, 16, cores or 1)
    return Host(128, 16, cores or 1)


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
    schedule's fallback could catch), so such kernels keep their plain loops."""
    from mlir import ir

    if "indexing_maps" not in op.attributes:
        return True
    for attr in ir.ArrayAttr(op.attributes["indexing_maps"]):
        if not all(_positive_multipliers(e) for e in ir.AffineMapAttr(attr).value.results):
            return False
    return True


def _positive_multipliers(expr) -> bool:
    from mlir import ir

    if isinstance(expr, ir.AffineMulExpr) and any(
            isinstance(side, ir.AffineConstantExpr) and side.value <= 0
            for side in (expr.lhs, expr.rhs)):
        return False
    if isinstance(expr, ir.AffineBinaryExpr):
        return _positive_multipliers(expr.lhs) and _positive_multipliers(expr.rhs)
    return True

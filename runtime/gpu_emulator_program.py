"""The program the GPU emulator (`tdsl.runtime.gpu_emulator`) runs: the `gpu` stage's MLIR
converted once into plain `Op`/`Block` records (value ids, types, parsed attributes), so that
running it needs no MLIR calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tdsl.runtime.gpu_emulator_ops import EmulatorError


@dataclass
class Op:
    """One operation: operand and result value ids, result types, parsed attributes."""

    name: str
    operands: tuple[int, ...]
    results: tuple[int, ...]
    types: tuple[str, ...]
    attrs: dict[str, Any]
    regions: tuple[tuple[Block, ...], ...] = ()


@dataclass
class Block:
    """A block: its argument ids, operations and argument types (`memref:ELEM:RANK` for
    memrefs, else the MLIR type)."""

    args: tuple[int, ...]
    ops: tuple[Op, ...]
    types: tuple[str, ...] = ()


@dataclass
class Program:
    """The host function and the kernels (by `module::func` symbol) of a `gpu` stage."""

    host: Block
    kernels: dict[str, Block]


def load_program(text: str) -> Program:
    """Parse the printed `gpu` stage into plain Python objects."""
    from mlir import ir

    from tdsl.pipelines import _LOCK, mlir_context

    with _LOCK, mlir_context(), ir.Location.unknown():
        module = ir.Module.parse(text)
        ids: dict = {}
        host, kernels = None, {}
        for op in module.body.operations:
            op = op.operation
            if op.name == "func.func":
                host = _block(op.regions[0].blocks[0], ids)
            elif op.name == "gpu.module":
                mod = ir.StringAttr(op.attributes["sym_name"]).value
                for inner in op.regions[0].blocks[0].operations:
                    inner = inner.operation
                    if inner.name == "gpu.func":
                        name = ir.StringAttr(inner.attributes["sym_name"]).value
                        kernels[f"{mod}::{name}"] = _block(inner.regions[0].blocks[0], ids)
    if host is None:
        raise EmulatorError("no host function in the module")
    return Program(host, kernels)


def _vid(value, ids: dict) -> int:
    if value not in ids:
        ids[value] = len(ids)
    return ids[value]


def _type_name(t) -> str:
    from mlir import ir

    if isinstance(t, ir.MemRefType):
        return f"memref:{t.element_type}:{t.rank}"
    return str(t)


def _block(block, ids: dict) -> Block:
    args = tuple(_vid(a, ids) for a in block.arguments)
    return Block(args, tuple(_op(op.operation, ids) for op in block.operations),
                 tuple(_type_name(a.type) for a in block.arguments))


def _op(op, ids: dict) -> Op:
    from mlir import ir

    attrs: dict[str, Any] = {}
    name = op.name
    operands = tuple(_vid(v, ids) for v in op.operands)
    if name == "arith.constant":
        attr = op.attributes["value"]
        type_ = str(attr.type)
        if type_ == "i1":
            attrs["value"] = bool(attr.value) if isinstance(attr, ir.BoolAttr) \
                else bool(ir.IntegerAttr(attr).value)
        elif type_.startswith(("i", "index")):
            attrs["value"] = ir.IntegerAttr(attr).value
        else:
            attrs["value"] = ir.FloatAttr(attr).value
    elif name in ("arith.cmpi", "arith.cmpf"):
        attrs["predicate"] = ir.IntegerAttr(op.attributes["predicate"]).value
    elif name.startswith("gpu.") and "dimension" in op.attributes:
        attrs["dim"] = "xyz".index(str(op.attributes["dimension"]).rstrip(">")[-1])
    elif name == "gpu.all_reduce":
        attrs["op"] = str(op.attributes["op"]).split()[-1].rstrip(">")
    elif name == "gpu.launch_func":
        view = op.opview
        text = str(op.attributes["kernel"]).replace('"', "")
        attrs["kernel"] = text.replace("@", "")
        attrs["grid"] = tuple(_vid(v, ids) for v in (view.gridSizeX, view.gridSizeY,
                                                      view.gridSizeZ))
        attrs["block"] = tuple(_vid(v, ids) for v in (view.blockSizeX, view.blockSizeY,
                                                       view.blockSizeZ))
        attrs["args"] = tuple(_vid(v, ids) for v in view.kernelOperands)
    elif name == "gpu.alloc":
        attrs["sizes"] = tuple(_vid(v, ids) for v in op.opview.dynamicSizes)
    elif name == "scf.for":
        attrs["unsigned"] = "unsignedCmp" in op.attributes
    elif name == "memref.get_global":
        attrs["name"] = str(op.attributes["name"]).lstrip("@").strip('"')
    types = []
    for r in op.results:
        t = r.type
        if isinstance(t, ir.MemRefType):
            mt = t
            attrs.setdefault("shape", tuple(mt.shape))
            types.append(f"memref:{mt.element_type}")
        else:
            types.append(str(t))
    regions = tuple(tuple(_block(b, ids) for b in region.blocks) for region in op.regions)
    return Op(name, operands, tuple(_vid(r, ids) for r in op.results), tuple(types), attrs,
              regions)

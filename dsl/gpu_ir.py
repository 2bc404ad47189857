"""IR helpers of the GPU mapping: walking and building MLIR through the Python bindings, and
`Nest`, the perfect loop nest that each linalg op becomes after
`convert-linalg-to-parallel-loops`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

WARP = 32
BLOCK_X = "#gpu.loop_dim_map<processor = block_x, map = (d0) -> (d0), bound = (d0) -> (d0)>"
THREAD_X = "#gpu.loop_dim_map<processor = thread_x, map = (d0) -> (d0), bound = (d0) -> (d0)>"

# combine op of a reduction -> (gpu.all_reduce operation, identity kind)
COMBINERS = {
    "arith.addf": ("add", "zero"), "arith.mulf": ("mul", "one"),
    "arith.maximumf": ("maximumf", "-inf"), "arith.minimumf": ("minimumf", "+inf"),
    "arith.maxnumf": ("maxnumf", "-inf"), "arith.minnumf": ("minnumf", "+inf"),
    "arith.addi": ("add", "zero"), "arith.muli": ("mul", "one"),
    "arith.maxsi": ("maxsi", "smin"), "arith.minsi": ("minsi", "smax"),
    "arith.maxui": ("maxui", "zero"), "arith.minui": ("minui", "ones"),
    "arith.andi": ("and", "ones"), "arith.ori": ("or", "zero"), "arith.xori": ("xor", "zero"),
}
REDUCIBLE = {"f32", "f64", "i32", "i64"}  # gpu.all_reduce lowers these to NVVM
NARROW_INTS = {"i8", "i16"}  # reduced across threads as i32


class MappingError(RuntimeError):
    """The loops cannot be mapped onto the GPU (a bug in tdsl, not a user error)."""


# ---- walking -------------------------------------------------------------------------------


def ops(block) -> list:
    """The operations of a block (as `Operation`s), without its terminator."""
    result = [op.operation for op in block.operations]
    if result and result[-1].name in ("scf.yield", "scf.reduce", "func.return"):
        result = result[:-1]
    return result


def terminator(block):
    """The last operation of a block."""
    return [op.operation for op in block.operations][-1]


def const_int(value) -> int | None:
    """The integer value of an `arith.constant`, else None."""
    from mlir import ir

    owner = value.owner
    if isinstance(owner, ir.Block) or owner.operation.name != "arith.constant":
        return None
    try:
        return ir.IntegerAttr(owner.operation.attributes["value"]).value
    except ValueError:
        return None


def defining_op(value):
    """The operation that computes `value` (None for a block argument)."""
    from mlir import ir

    owner = value.owner
    return None if isinstance(owner, ir.Block) else owner.operation


def defining_block(value):
    """The block a value is defined in (a block argument's own block)."""
    from mlir import ir

    owner = value.owner
    return owner if isinstance(owner, ir.Block) else owner.operation.block


def owned_by(op, ancestor) -> bool:
    """True when `op` is `ancestor` or nested in it."""
    current = op.operation if hasattr(op, "operation") else op
    target = ancestor.operation
    while current is not None:
        if current == target:
            return True
        parent = current.parent
        current = parent.operation if parent is not None else None
    return False


def inside(value, op) -> bool:
    """True when `value` is defined inside a region of `op`."""
    parent = defining_block(value).owner
    return parent is not None and parent.operation != op.operation and \
        owned_by(parent, op)


def depends_on(value, ivs: Sequence, depth: int = 0) -> bool:
    """True when `value` is computed (through the ops defining it) from one of `ivs`."""
    from mlir import ir

    if any(value == iv for iv in ivs):
        return True
    owner = value.owner
    if isinstance(owner, ir.Block) or depth > 64:
        return False
    return any(depends_on(v, ivs, depth + 1) for v in owner.operation.operands)


def accesses(block) -> list:
    """Every memref.load / memref.store in a block (nested regions included)."""
    found = []
    for op in block.operations:
        op = op.operation
        if op.name in ("memref.load", "memref.store"):
            found.append(op)
        for region in op.regions:
            for inner in region.blocks:
                found += accesses(inner)
    return found


def access_parts(op) -> tuple:
    """(memref, indices) of a memref.load or memref.store."""
    operands = list(op.operands)
    if op.name == "memref.load":
        return operands[0], operands[1:]
    return operands[1], operands[2:]


# ---- building ------------------------------------------------------------------------------


class Builder:
    """Creates index arithmetic, loops and branches at the current insertion point."""

    def __init__(self):
        from mlir import ir

        self.ir = ir
        self.index = ir.IndexType.get()

    def const(self, value: int, type_=None):
        """An integer constant (index by default)."""
        from mlir.dialects import arith

        type_ = type_ or self.index
        return arith.ConstantOp(type_, self.ir.IntegerAttr.get(type_, value)).result

    def typed_const(self, type_, kind: str):
        """The identity constant `kind` of a reduction, of an integer or float type."""
        from mlir.dialects import arith

        text = str(type_)
        if text.startswith(("f", "bf")):
            value = {"zero": 0.0, "one": 1.0, "-inf": float("-inf"), "+inf": float("inf")}[kind]
            return arith.ConstantOp(type_, self.ir.FloatAttr.get(type_, value)).result
        width = int(text[1:])
        value = {"zero": 0, "one": 1, "ones": -1, "smin": -(1 << (width - 1)),
                 "smax": (1 << (width - 1)) - 1}[kind]
        return self.const(value, type_)

    def product(self, values: Sequence):
        """The product of index values (1 for none)."""
        from mlir.dialects import arith

        if not values:
            return self.const(1)
        total = values[0]
        for v in values[1:]:
            total = arith.muli(total, v)
        return total

    def ceil_div(self, value, divisor: int):
        """ceil(value / divisor) of a non-negative index."""
        from mlir.dialects import arith

        return arith.divui(arith.addi(value, self.const(divisor - 1)), self.const(divisor))

    def clamp(self, value, low: int, high: int):
        """`value` limited to [low, high] (unsigned)."""
        from mlir.dialects import arith

        return arith.minui(arith.maxui(value, self.const(low)), self.const(high))

    def warp_threads(self, size, limit: int):
        """A block size for `size` work items: a multiple of 32 in [32, limit]."""
        from mlir.dialects import arith

        return self.clamp(arith.muli(self.ceil_div(size, WARP), self.const(WARP)), WARP, limit)

    def delinearize(self, linear, sizes: Sequence) -> list:
        """Indices of `linear` in a row-major domain of `sizes` (the last varies fastest)."""
        from mlir.dialects import arith

        out = []
        rest = linear
        for k in range(len(sizes) - 1, 0, -1):
            out.append(arith.remui(rest, sizes[k]))
            rest = arith.divui(rest, sizes[k])
        out.append(rest)
        return out[::-1] if sizes else []

    def parallel(self, upper, mapping: str):
        """A one-dimensional `scf.parallel` from 0 to `upper` with a mapping attribute."""
        from mlir.dialects import scf

        op = scf.ParallelOp([], [self.const(0)], [upper], [self.const(1)], [])
        block = op.regions[0].blocks.append(self.index)
        with self.ir.InsertionPoint(block):
            scf.ReduceOp([], 0)
        op.attributes["mapping"] = self.ir.ArrayAttr.get([self.ir.Attribute.parse(mapping)])
        return op, block

    def launch(self, blocks, threads):
        """Block and thread loops at the insertion point; returns (bx, tx, thread body end)."""
        outer, outer_body = self.parallel(blocks, BLOCK_X)
        with self.ir.InsertionPoint(terminator(outer_body)):
            inner, inner_body = self.parallel(threads, THREAD_X)
        return outer_body.arguments[0], inner_body.arguments[0], terminator(inner_body)

    def if_then(self, cond):
        """An `scf.if` without results; returns its then-block's terminator."""
        from mlir.dialects import scf

        op = scf.IfOp(cond)
        with self.ir.InsertionPoint(op.then_block):
            end = scf.YieldOp([])
        return end.operation

    def if_else(self, cond):
        """An `scf.if` with an else branch; returns both blocks' terminators."""
        from mlir.dialects import scf

        op = scf.IfOp(cond, has_else=True)
        with self.ir.InsertionPoint(op.then_block):
            then_end = scf.YieldOp([])
        with self.ir.InsertionPoint(op.else_block):
            else_end = scf.YieldOp([])
        return then_end.operation, else_end.operation

    def strided(self, start, total, step):
        """`scf.for %i = start to total step step`; returns (iv, body end)."""
        from mlir.dialects import scf

        loop = scf.ForOp(start, total, step)
        with self.ir.InsertionPoint(loop.body):
            end = scf.YieldOp([])
        return loop.induction_variable, end.operation


# ---- nests ---------------------------------------------------------------------------------


@dataclass
class Nest:
    """A perfect nest of `scf.parallel` (P) and `scf.for` (R) loops, in nest order, each from
    0 by 1, and its innermost block; with R loops, the block accumulates into `acc[idx]`."""

    root: object  # the outermost loop (an Operation)
    p_ubs: list = field(default_factory=list)
    p_ivs: list = field(default_factory=list)
    r_ubs: list = field(default_factory=list)
    r_ivs: list = field(default_factory=list)
    body: object = None  # the innermost Block
    load: object = None  # memref.load of the accumulator
    combine: object = None  # the combining op
    acc_pos: int = 0  # which operand of `combine` is the accumulator
    store: object = None  # memref.store of the combined value

    @property
    def value_type(self) -> str:
        """The accumulator's type."""
        return str(self.combine.results[0].type)

    @property
    def body_ops(self) -> list:
        """The innermost operations other than the accumulator's load and store."""
        return [op for op in ops(self.body) if op not in (self.load, self.store)]


def match_nest(root) -> Nest | None:
    """The perfect loop nest rooted at `root` (None when it has another form: bounds
    computed inside, non-zero starts, steps other than 1, loop-carried values, or reduction
    loops without a recognized accumulation)."""
    nest = Nest(root)
    current = root
    while True:
        view = current.opview
        if current.name == "scf.parallel":
            if len(view.initVals) or any(const_int(v) != 0 for v in view.lowerBound) or \
                    any(const_int(v) != 1 for v in view.step) or \
                    any(inside(v, root) for v in view.upperBound):
                return None
            block = current.regions[0].blocks[0]
            nest.p_ubs += list(view.upperBound)
            nest.p_ivs += list(block.arguments)
        elif current.name == "scf.for":
            if len(view.initArgs) or const_int(view.lowerBound) != 0 or \
                    const_int(view.step) != 1 or inside(view.upperBound, root):
                return None
            block = view.body
            nest.r_ubs.append(view.upperBound)
            nest.r_ivs.append(view.induction_variable)
        else:
            return None
        inner = ops(block)
        if len(inner) == 1 and inner[0].name in ("scf.parallel", "scf.for"):
            current = inner[0]
            continue
        nest.body = block
        break
    if nest.r_ivs and not _match_accumulation(nest):
        return None
    return nest


def _match_accumulation(nest: Nest) -> bool:
    """Find `acc[idx] = combine(acc[idx], x)` ending the innermost block; idx must not vary
    with the reduction loops and `acc` must not be touched otherwise in the nest."""
    from mlir import ir

    body_ops = ops(nest.body)
    if not body_ops or body_ops[-1].name != "memref.store":
        return False
    store = body_ops[-1]
    value, acc, idx = store.operands[0], store.operands[1], list(store.operands)[2:]
    combine = value.owner
    if isinstance(combine, ir.Block) or combine.operation.name not in COMBINERS:
        return False
    combine = combine.operation
    if combine.block != nest.body:
        return False
    for pos in (0, 1):
        load = combine.operands[pos].owner
        if isinstance(load, ir.Block) or load.operation.name != "memref.load":
            continue
        load = load.operation
        if load.operands[0] == acc and list(load.operands)[1:] == idx and \
                load.block == nest.body and len(list(load.results[0].uses)) == 1:
            break
    else:
        return False
    if any(inside(v, nest.root) and not any(v == p for p in nest.p_ivs) for v in idx):
        return False
    for use in acc.uses:
        user = use.owner.operation
        if owned_by(user, nest.root) and user not in (load, store):
            return False
    nest.load, nest.combine, nest.acc_pos, nest.store = load, combine, pos, store
    return True


def prefers_block_reduce(nest: Nest) -> bool:
    """Block per output when the reduction walks contiguous memory and the outputs do not (a
    row reduction), or the output is rank 0; thread per output otherwise (matmul, column
    reductions, convolutions)."""
    if nest.value_type not in REDUCIBLE | NARROW_INTS:
        return False
    if nest.combine.name == "arith.mulf":
        return False  # a float product is taken in order, as on the CPU (see language.md)
    if not nest.p_ivs:
        return True
    loads = [o for o in nest.body_ops if o.name == "memref.load" and len(o.operands) > 1]
    last = [o.operands[len(o.operands) - 1] for o in loads]
    if any(depends_on(v, [nest.p_ivs[-1]]) for v in last):
        return False
    return any(depends_on(v, [nest.r_ivs[-1]]) for v in last)

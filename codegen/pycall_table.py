"""The table of a kernel's native call entry (`tdsl.codegen.pycall` emits the entry,
`tdsl.runtime.native` fills the table): the object layouts the entry relies on, the header
words, and where each parameter's words lie in a plan. The runtime imports only this module,
not the IR emitter."""

from __future__ import annotations

from typing import NamedTuple

from tdsl.types import DType

# Byte offsets in CPython / numpy objects that the generated code relies on.
LAYOUT = {"ob_type": 8, "ob_size": 16, "tuple_items": 24, "float_value": 16, "scalar_value": 16,
          "array_data": 16, "array_nd": 24, "array_dims": 32, "array_strides": 40,
          "array_descr": 56, "array_flags": 64}
NPY_ALIGNED = 0x0100
NPY_WRITEABLE = 0x0400

# Table words (int64) before the plans.
FALLBACK, VECTORCALL, INCREF, DECREF, SAVE_THREAD, RESTORE_THREAD, GETITEM, EMPTY_TUPLE, \
    TUPLE_PACK, NDARRAY_TYPE, FLOAT_TYPE, LONG_TYPE, AS_LONG_LONG, NP_EMPTY, OMP_SET, \
    ACTIVE, NUM_THREADS, PY_ACTIVE, ERR_CLEAR = range(19)
HEADER_WORDS = 19
PLANS = 2  # plans tried in turn: calls alternating between two shapes stay native


def native_symbol(kernel_name: str) -> str:
    """The symbol of a kernel's native call entry."""
    return f"tdsl_py_{kernel_name}"


class ParamWords(NamedTuple):
    """Where one parameter's words lie in the table, and how the entry treats it."""

    rank: int
    itemsize: int
    descr: int  # the expected dtype object (for rank-0 inputs: the canonical one, fixed)
    dims: int  # rank words: the plan's shape
    strides: int  # rank words: the plan's byte strides
    extent: int  # bytes spanned by the plan's array (0 when empty)
    scalar_type: int = -1  # rank-0 inputs: the numpy scalar type of the dtype
    name: int = -1  # outputs: the interned parameter name
    given: int = -1  # outputs: 1 when the plan's call passed this output
    shape: int = -1  # outputs: the shape tuple for np.empty, then the dtype (next word)
    scalar_kind: str = ""  # rank-0 inputs: "f32", "f64", "int" or "" (Python scalars taken)
    int_bits: int = 0
    int_range: tuple[int, int] = (0, 0)


class TableLayout(NamedTuple):
    """The word layout of a kernel's table: the header, then `PLANS` plans of `plan_words`
    words each; the indices of `valid`, `inputs` and `outputs` are those of plan 0 (plan p's
    are `p * plan_words` further)."""

    valid: int  # 1 when the plan holds a validated call's description
    inputs: tuple[ParamWords, ...]
    outputs: tuple[ParamWords, ...]
    plan_words: int

    @property
    def words(self) -> int:
        """Words of the whole table."""
        return HEADER_WORDS + PLANS * self.plan_words

    @property
    def slots(self) -> int:
        """Words of the packed memref descriptors the kernel's entry takes."""
        return sum(3 + 2 * p.rank for p in self.inputs + self.outputs)


def table_layout(signature) -> TableLayout:
    """The table layout of a `tdsl.runtime.signature.Signature` (or anything with `inputs`
    and `outputs` of `Param`s)."""
    at = HEADER_WORDS

    def take(n: int) -> int:
        nonlocal at
        at += n
        return at - n

    valid = take(1)
    inputs = []
    for p in signature.inputs:
        dtype, rank = p.type.dtype, p.type.rank
        kind, bits, bounds = "", 0, (0, 0)
        if rank == 0 and dtype in (DType.F32, DType.F64):
            kind = dtype.value
        elif rank == 0 and dtype.is_int:
            kind, bits, bounds = "int", dtype.bits, dtype.int_range
        descr = take(1)
        inputs.append(ParamWords(rank, _itemsize(dtype), descr, take(rank), take(rank), take(1),
                                 scalar_type=take(1) if rank == 0 else -1, scalar_kind=kind,
                                 int_bits=bits, int_range=bounds))
    outputs = []
    for p in signature.outputs:
        rank = p.type.rank
        name, given, descr = take(1), take(1), take(1)
        dims, strides, extent = take(rank), take(rank), take(1)
        outputs.append(ParamWords(rank, _itemsize(p.type.dtype), descr, dims, strides, extent,
                                  name=name, given=given, shape=take(2)))
    return TableLayout(valid, tuple(inputs), tuple(outputs), at - HEADER_WORDS)


def _itemsize(dtype: DType) -> int:
    return 1 if dtype is DType.BOOL else dtype.bits // 8

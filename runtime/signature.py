"""A kernel's signature (plain, JSON-able data) and the call validation shared by every target.

Validation happens completely before anything is computed or written: a bad call raises a
`TypeError` (wrong kind or dtype of argument, missing or unknown argument) or a `ValueError`
(rank, shape, symbol bound twice, failed call-time condition, read-only output) that names the
parameter, the expected and the actual value.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tdsl.runtime.record import Record
from tdsl.types import Affine, DType, TensorType

_NUMPY_DTYPES = {
    DType.BOOL: np.dtype(np.bool_), DType.I8: np.dtype(np.int8), DType.I16: np.dtype(np.int16),
    DType.I32: np.dtype(np.int32), DType.I64: np.dtype(np.int64), DType.U8: np.dtype(np.uint8),
    DType.F16: np.dtype(np.float16), DType.F32: np.dtype(np.float32),
    DType.F64: np.dtype(np.float64),
}
I64_MAX = (1 << 63) - 1
_FLOAT_FORMATS = {  # significand bits (with the implicit one) and the largest finite value
    DType.F16: (11, 65504.0), DType.BF16: (8, 3.3895313892515355e38),
    DType.F32: (24, 3.4028234663852886e38), DType.F64: (53, 1.7976931348623157e308),
}


def int_to_float(value: int, dtype: DType = DType.F64) -> float:
    """An integer rounded once to the nearest value of a float dtype (ties to even; inf past
    the largest), as a Python float. `float(value)` would first round to f64 (and raise for
    huge values); rounding that again to f32 can land on the other side of a tie."""
    bits, largest = _FLOAT_FORMATS[dtype]
    magnitude = abs(int(value))
    excess = magnitude.bit_length() - bits
    if excess > 0:
        quotient, rest = divmod(magnitude, 1 << excess)
        half = 1 << (excess - 1)
        if rest > half or rest == half and quotient & 1:
            quotient += 1
        magnitude = quotient << excess
    result = float(magnitude) if magnitude <= largest else math.inf
    return -result if value < 0 else result


@functools.lru_cache(maxsize=1)
def memory_bytes() -> int | None:
    """Physical memory plus swap: a kernel's temporaries beyond this cannot be allocated."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return sum(int(fields[k].split()[0]) * 1024 for k in ("MemTotal", "SwapTotal"))
    except (OSError, KeyError, ValueError):
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None


def numpy_dtype(dtype: DType) -> np.dtype:
    """The numpy dtype of a tdsl dtype (bf16 is `ml_dtypes.bfloat16`)."""
    if dtype is DType.BF16:
        return _bf16()
    return _NUMPY_DTYPES[dtype]


@functools.lru_cache(maxsize=1)
def _bf16() -> np.dtype:
    """numpy's bfloat16, from ml_dtypes, imported on first use (it costs ~15 ms)."""
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - ml_dtypes is a core dependency
        raise TypeError("bf16 needs the ml_dtypes package") from None
    return np.dtype(ml_dtypes.bfloat16)


def describe_value(value: Any) -> str:
    """A short description of an argument for error messages."""
    if isinstance(value, np.ndarray):
        order = "" if value.dtype.isnative else " (non-native byte order)"
        return f"{_dtype_name(value.dtype)}{order} array of shape {tuple(value.shape)}"
    if isinstance(value, np.generic):
        return f"numpy {_dtype_name(value.dtype)} scalar"
    return f"{type(value).__name__} {value!r}"[:80]


def _dtype_name(dt: np.dtype) -> str:
    return dt.newbyteorder("=").name if dt.kind != "O" else "object"


class Param(Record):
    """A named input or output and its declared type."""

    __slots__ = ("name", "type")
    name: str
    type: TensorType

    def to_json(self) -> dict:
        """JSON-able form."""
        return {"name": self.name, "dtype": self.type.dtype.value, "scalar": self.type.scalar,
                "shape": [d.to_json() for d in self.type.shape]}

    @staticmethod
    def from_json(data: Mapping) -> Param:
        """The inverse of `to_json`."""
        shape = tuple(Affine.from_json(d) for d in data["shape"])
        return Param(data["name"], TensorType(DType(data["dtype"]), shape, bool(data["scalar"])))


class Condition(Record):
    """A call-time shape condition: `expr >= 0` (kind "ge") or `expr == 0` (kind "eq"),
    over shape symbols, with the message to raise when it fails."""

    __slots__ = ("kind", "expr", "message", "unless_empty")
    _defaults = {"unless_empty": ()}
    kind: str
    expr: Affine
    message: str
    # The condition is vacuous when one of these extents is <= 0 (an empty loop domain).
    unless_empty: tuple[Affine, ...]

    def holds(self, symbols: Mapping[str, int]) -> bool:
        """True when the condition is satisfied by these symbol values."""
        if any(e.evaluate(symbols) <= 0 for e in self.unless_empty):
            return True
        value = self.expr.evaluate(symbols)
        return value >= 0 if self.kind == "ge" else value == 0

    def to_json(self) -> dict:
        """JSON-able form."""
        return {"kind": self.kind, "expr": self.expr.to_json(), "message": self.message,
                "unless_empty": [e.to_json() for e in self.unless_empty]}

    @staticmethod
    def from_json(data: Mapping) -> Condition:
        """The inverse of `to_json`."""
        return Condition(data["kind"], Affine.from_json(data["expr"]), data["message"],
                         tuple(Affine.from_json(e) for e in data.get("unless_empty", ())))


class SymbolSource(Record):
    """Where a shape symbol takes its value: dimension `dim` of input number `param`."""

    __slots__ = ("symbol", "param", "dim")
    symbol: str
    param: int
    dim: int


class Signature(Record):
    """Everything needed to validate a call and allocate its outputs, without the compiler."""

    __slots__ = ("name", "inputs", "outputs", "symbols", "conditions", "doc", "locals")
    _defaults = {"symbols": (), "conditions": (), "doc": "", "locals": ()}
    name: str
    inputs: tuple[Param, ...]
    outputs: tuple[Param, ...]
    symbols: tuple[SymbolSource, ...]
    conditions: tuple[Condition, ...]
    doc: str
    # The kernel's local tensors: a call whose temporaries cannot exist is refused.
    locals: tuple[Param, ...]

    def __str__(self) -> str:
        ins = ", ".join(f"{p.name}: {p.type}" for p in self.inputs)
        outs = ", ".join(f"{p.name}: {p.type}" for p in self.outputs)
        return f"{self.name}({ins}) -> ({outs})"

    def to_json(self) -> dict:
        """JSON-able form, stored beside every compiled artifact."""
        return {
            "name": self.name, "doc": self.doc,
            "inputs": [p.to_json() for p in self.inputs],
            "outputs": [p.to_json() for p in self.outputs],
            "symbols": [[s.symbol, s.param, s.dim] for s in self.symbols],
            "conditions": [c.to_json() for c in self.conditions],
            "locals": [p.to_json() for p in self.locals],
        }

    @staticmethod
    def from_json(data: Mapping) -> Signature:
        """The inverse of `to_json`."""
        return Signature(
            name=data["name"], doc=data.get("doc", ""),
            inputs=tuple(Param.from_json(p) for p in data["inputs"]),
            outputs=tuple(Param.from_json(p) for p in data["outputs"]),
            symbols=tuple(SymbolSource(s, int(p), int(d)) for s, p, d in data["symbols"]),
            conditions=tuple(Condition.from_json(c) for c in data["conditions"]),
            locals=tuple(Param.from_json(p) for p in data.get("locals", ())),
        )

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> BoundCall:
        """Validate a call completely and return its normalized arguments.

        Raises TypeError or ValueError naming the parameter; computes and writes nothing.
        """
        return _Binder(self).bind(args, kwargs)

    def input_array(self, index: int, value: Any) -> np.ndarray:
        """Input number `index` of a call as an array, validated like `bind` does (a Python
        or numpy scalar for a rank-0 input becomes a rank-0 array)."""
        return _Binder(self)._input(self.inputs[index], value)


class BoundCall:
    """A validated call: input arrays (rank 0 for scalars; native byte order), symbol values,
    output shapes and the output arrays the caller gave (None where the target allocates)."""

    __slots__ = ("signature", "inputs", "symbols", "output_shapes", "given_outputs", "outputs")

    def __init__(self, signature: Signature, inputs: list[np.ndarray], symbols: dict[str, int],
                 output_shapes: list[tuple[int, ...]], given_outputs: list[np.ndarray | None],
                 outputs: list[np.ndarray] | None = None) -> None:
        self.signature = signature
        self.inputs = inputs
        self.symbols = symbols
        self.output_shapes = output_shapes
        self.given_outputs = given_outputs
        self.outputs = [] if outputs is None else outputs

    def allocate_outputs(self) -> list[np.ndarray]:
        """The output arrays: the given ones, and new uninitialized ones for the rest."""
        self.outputs = []
        for param, shape, given in zip(self.signature.outputs, self.output_shapes,
                                       self.given_outputs):
            if given is not None:
                self.outputs.append(given)
                continue
            try:
                self.outputs.append(np.empty(shape, dtype=numpy_dtype(param.type.dtype)))
            except (MemoryError, ValueError) as exc:
                raise MemoryError(
                    f"{self.signature.name}(): cannot allocate output '{param.name}' of shape "
                    f"{shape} ({param.type.dtype})") from exc
        return self.outputs

    def result(self) -> Any:
        """What the call returns: one output, or a tuple; rank-0 outputs that the call
        allocated become numpy scalars."""
        values = []
        for out, given in zip(self.outputs, self.given_outputs):
            values.append(out[()] if out.ndim == 0 and given is None else out)
        return values[0] if len(values) == 1 else tuple(values)


class _Binder:
    """One validation of one call against one signature."""

    def __init__(self, signature: Signature):
        self.sig = signature
        self.where = f"{signature.name}()"

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> BoundCall:
        raw_inputs, raw_outputs = self._match_arguments(args, kwargs)
        inputs = [self._input(p, v) for p, v in zip(self.sig.inputs, raw_inputs)]
        symbols, origin = self._bind_symbols(inputs)
        self._check_declared_shapes(inputs, symbols, origin)
        for cond in self.sig.conditions:
            if not cond.holds(symbols):
                raise ValueError(f"{self.where}: {cond.message} ({self._symbol_text(cond, symbols)})")
        shapes = [self._output_shape(p, symbols) for p in self.sig.outputs]
        for local in self.sig.locals:
            self._check_local(local, symbols)
        given = [self._given_output(p, shape, raw_outputs.get(p.name), inputs)
                 for p, shape in zip(self.sig.outputs, shapes)]
        return BoundCall(self.sig, inputs, symbols, shapes, given)

    # ---- arguments ------------------------------------------------------------------------
    def _match_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]
                         ) -> tuple[list[Any], dict[str, Any]]:
        names_in = [p.name for p in self.sig.inputs]
        names_out = [p.name for p in self.sig.outputs]
        if len(args) > len(names_in):
            raise TypeError(f"{self.where} takes {len(names_in)} positional argument"
                            f"{'s' if len(names_in) != 1 else ''} ({', '.join(names_in)}) but "
                            f"{len(args)} were given; outputs are passed by name")
        values: dict[str, Any] = dict(zip(names_in, args))
        outputs: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in names_out:
                outputs[key] = value
            elif key not in names_in:
                raise TypeError(f"{self.where} got an unexpected argument '{key}'; inputs are "
                                f"{', '.join(names_in) or 'none'}; outputs are "
                                f"{', '.join(names_out)}")
            elif key in values:
                raise TypeError(f"{self.where} got multiple values for argument '{key}'")
            else:
                values[key] = value
        missing = [p for p in self.sig.inputs if p.name not in values]
        if missing:
            listed = ", ".join(f"'{p.name}' ({p.type})" for p in missing)
            raise TypeError(f"{self.where} missing argument{'s' if len(missing) > 1 else ''} "
                            f"{listed}")
        return [values[n] for n in names_in], outputs

    def _input(self, param: Param, value: Any) -> np.ndarray:
        want = numpy_dtype(param.type.dtype)
        if param.type.rank == 0 and not isinstance(value, np.ndarray):
            return self._scalar(param, value, want)
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{self.where}: argument '{param.name}' must be a numpy array of "
                            f"{param.type}, got {describe_value(value)}")
        array = np.asarray(value)
        if array.dtype.newbyteorder("=") != want or array.dtype.kind == "O":
            raise TypeError(f"{self.where}: argument '{param.name}' must have dtype "
                            f"{param.type.dtype} ({param.type}), got "
                            f"{describe_value(value)}{self._cast_hint(param)}")
        if array.ndim != param.type.rank:
            raise ValueError(f"{self.where}: argument '{param.name}' must have rank "
                             f"{param.type.rank} ({param.type}), got "
                             f"{describe_value(value)}")
        if not array.dtype.isnative:
            array = array.astype(want)
        return array

    def _cast_hint(self, param: Param) -> str:
        return f"; convert it with .astype({_numpy_name(param.type.dtype)})"

    def _scalar(self, param: Param, value: Any, want: np.dtype) -> np.ndarray:
        dtype = param.type.dtype
        if isinstance(value, np.generic):
            if value.dtype.newbyteorder("=") != want:
                raise TypeError(f"{self.where}: argument '{param.name}' must be {dtype}, got "
                                f"{describe_value(value)}")
            return np.asarray(value)
        ok = (isinstance(value, bool) if dtype is DType.BOOL else
              isinstance(value, int) and not isinstance(value, bool) if dtype.is_int else
              isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            raise TypeError(f"{self.where}: argument '{param.name}' must be {dtype}, got "
                            f"{describe_value(value)}")
        if dtype.is_int:
            low, high = dtype.int_range
            if not low <= value <= high:
                raise ValueError(f"{self.where}: argument '{param.name}' = {value} is out of "
                                 f"range for {dtype} [{low}, {high}]")
        elif dtype.is_float:
            return _weak_float(value, dtype, want)
        return np.asarray(value, dtype=want)

    # ---- shapes ---------------------------------------------------------------------------
    def _bind_symbols(self, inputs: list[np.ndarray]) -> tuple[dict[str, int], dict[str, str]]:
        symbols: dict[str, int] = {}
        origin: dict[str, str] = {}
        for src in self.sig.symbols:
            param = self.sig.inputs[src.param]
            value = int(inputs[src.param].shape[src.dim])
            if src.symbol in symbols and symbols[src.symbol] != value:
                raise ValueError(
                    f"{self.where}: argument '{param.name}' has {src.symbol} = {value} in "
                    f"dimension {src.dim} ({param.type}), but {origin[src.symbol]} bound "
                    f"{src.symbol} = {symbols[src.symbol]}")
            if src.symbol not in symbols:
                symbols[src.symbol] = value
                origin[src.symbol] = f"'{param.name}'"
        return symbols, origin

    def _check_declared_shapes(self, inputs: list[np.ndarray], symbols: dict[str, int],
                               origin: dict[str, str]) -> None:
        for param, array in zip(self.sig.inputs, inputs):
            for dim, (expected, actual) in enumerate(zip(param.type.shape, array.shape)):
                want = expected.evaluate(symbols)
                if want == actual:
                    continue
                name = expected.as_name()
                if name is not None:
                    raise ValueError(
                        f"{self.where}: argument '{param.name}' has {name} = {actual} in "
                        f"dimension {dim} ({param.type}), but {origin[name]} bound {name} = "
                        f"{want}")
                bound = ", ".join(f"{n} = {symbols[n]} from {origin[n]}"
                                  for n in sorted(expected.names()))
                detail = f" = {want} (with {bound})" if bound else ""
                raise ValueError(
                    f"{self.where}: argument '{param.name}' must have dimension {dim} equal "
                    f"to {expected}{detail} ({param.type}), got shape {tuple(array.shape)}")

    def _output_shape(self, param: Param, symbols: dict[str, int]) -> tuple[int, ...]:
        shape = tuple(d.evaluate(symbols) for d in param.type.shape)
        for dim, (expr, size) in enumerate(zip(param.type.shape, shape)):
            if size < 0:
                raise ValueError(f"{self.where}: output '{param.name}' would have dimension "
                                 f"{dim} = {expr} = {size} < 0 with "
                                 f"{self._env(expr, symbols)}")
        total = 1
        for size in shape:
            total *= size
        if total * numpy_dtype(param.type.dtype).itemsize > I64_MAX:
            raise ValueError(f"{self.where}: output '{param.name}' of shape {shape} has more "
                             "elements than a 64-bit index can address")
        return shape

    def _check_local(self, param: Param, symbols: dict[str, int]) -> None:
        """A local tensor whose byte count a 64-bit index cannot address, or that exceeds the
        machine's memory, is refused before the kernel tries to allocate it."""
        shape = tuple(d.evaluate(symbols) for d in param.type.shape)
        if any(size < 0 for size in shape):
            return  # a failed condition says so
        nbytes = math.prod(shape) * numpy_dtype(param.type.dtype).itemsize
        what = f"{self.where}: local tensor '{param.name}' of shape {shape} ({param.type.dtype})"
        if nbytes > I64_MAX:
            raise ValueError(f"{what} has more elements than a 64-bit index can address")
        limit = memory_bytes()
        if limit is not None and nbytes > limit:
            raise MemoryError(f"{what} needs {nbytes} bytes, more than this machine's memory "
                              f"and swap ({limit} bytes)")

    def _given_output(self, param: Param, shape: tuple[int, ...], value: Any,
                      inputs: list[np.ndarray]) -> np.ndarray | None:
        if value is None:
            return None
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{self.where}: output '{param.name}' must be a numpy array of "
                            f"{param.type}, got {describe_value(value)}")
        want = numpy_dtype(param.type.dtype)
        if value.dtype != want:
            raise TypeError(f"{self.where}: output '{param.name}' must have dtype "
                            f"{param.type.dtype} in native byte order, got "
                            f"{describe_value(value)}")
        if tuple(value.shape) != shape:
            raise ValueError(f"{self.where}: output '{param.name}' must have shape {shape} "
                             f"({param.type}), got {tuple(value.shape)}")
        if not value.flags.writeable:
            raise ValueError(f"{self.where}: output '{param.name}' is read-only")
        return value

    @staticmethod
    def _env(expr: Affine, symbols: Mapping[str, int]) -> str:
        names = sorted(expr.names())
        return ", ".join(f"{n} = {symbols[n]}" for n in names if n in symbols) or "no symbols"

    def _symbol_text(self, cond: Condition, symbols: Mapping[str, int]) -> str:
        return f"got {self._env(cond.expr, symbols)}"


def _weak_float(value: int | float, dtype: DType, want: np.dtype) -> np.ndarray:
    """A Python int or float for a float parameter, rounded once like a literal (numpy would
    round a large int through f64, and a float to bf16 through f32)."""
    if isinstance(value, int):
        return np.asarray(int_to_float(value, dtype), dtype=want)  # exact at the dtype
    if dtype is DType.BF16 and math.isfinite(value):
        near = np.float32(value) if abs(value) <= 3.4028234663852886e38 else None
        if near is not None and float(near) != value and not int(near.view(np.uint32)) & 1:
            # round to odd at f32 precision, so the rounding to bf16 is the only one
            near = np.nextafter(near, np.float32(math.copysign(math.inf, value - float(near))))
        value = near if near is not None else math.copysign(math.inf, value)
    with np.errstate(over="ignore"):
        return np.asarray(value, dtype=want)


def f64_to_bf16(x: np.ndarray) -> np.ndarray:
    """f64 -> bf16 rounded to nearest even once: round to odd at f32 precision, then to bf16
    (ml_dtypes rounds f64 through f32 to nearest twice)."""
    f = x.astype(np.float32)
    inexact = np.isfinite(x) & (f.astype(np.float64) != x)
    even = (f.view(np.uint32) & 1) == 0
    toward = np.where(x > f, np.float32(np.inf), np.float32(-np.inf))
    f = np.where(inexact & even, np.nextafter(f, toward), f)
    return np.asarray(f.astype(numpy_dtype(DType.BF16)))


def _numpy_name(dtype: DType) -> str:
    return "ml_dtypes.bfloat16" if dtype is DType.BF16 else f"np.{numpy_dtype(dtype).name}"


def element_count(shape: Sequence[int]) -> int:
    """The number of elements of a shape."""
    return math.prod(shape)

"""Random inputs for a kernel's signature: used by `tdsl run`, the benchmarks and tests."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tdsl.runtime.signature import Signature, numpy_dtype
from tdsl.types import DType

DEFAULT_SIZE = 64
SMALL_SYMBOLS = {"R": 3, "S": 3}


def symbol_values(signature: Signature, sizes: Mapping[str, int]) -> dict[str, int]:
    """A value for every shape symbol: the given size, else a default."""
    unknown = set(sizes) - {s.symbol for s in signature.symbols}
    if unknown:
        known = ", ".join(s.symbol for s in signature.symbols) or "none"
        raise ValueError(f"{signature.name} has no shape symbol {', '.join(sorted(unknown))}; "
                         f"its symbols: {known}")
    values = {}
    for src in signature.symbols:
        values[src.symbol] = sizes.get(src.symbol, SMALL_SYMBOLS.get(src.symbol, DEFAULT_SIZE))
        if values[src.symbol] < 0:
            raise ValueError(f"size of {src.symbol} must not be negative")
    return values


def random_array(rng: np.random.Generator, dtype: DType, shape: tuple[int, ...]) -> np.ndarray:
    """Random values suited to a dtype: normal floats, small signed ints, any bytes, bools."""
    if dtype is DType.BOOL:
        return rng.random(shape) < 0.5
    if dtype.is_float:
        return rng.standard_normal(shape).astype(numpy_dtype(dtype))
    low, high = dtype.int_range
    return rng.integers(max(low, -100), min(high, 100) + 1, shape).astype(numpy_dtype(dtype))


def random_inputs(signature: Signature, sizes: Mapping[str, int], seed: int = 0) -> list:
    """Inputs for every parameter: arrays for tensors, Python numbers for scalars."""
    rng = np.random.default_rng(seed)
    symbols = symbol_values(signature, sizes)
    inputs: list = []
    for param in signature.inputs:
        shape = tuple(d.evaluate(symbols) for d in param.type.shape)
        if any(n < 0 for n in shape):
            raise ValueError(f"'{param.name}' would have a negative dimension {shape}; "
                             "choose other --size values")
        value = random_array(rng, param.type.dtype, shape)
        if param.type.scalar:
            value = value[()] if param.type.dtype.is_float or param.type.dtype is DType.BOOL \
                else np.asarray(rng.integers(1, 10), dtype=value.dtype)[()]
        inputs.append(value)
    return inputs

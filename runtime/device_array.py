"""Arrays in GPU memory for the CUDA target: tdsl's own `DeviceArray` (`to_device`), and
zero-copy views of any object with `__cuda_array_interface__` (CuPy, PyTorch, Numba).

`bind_device_call` validates a call whose arguments may live on the device with the same
`Signature.bind` as every target: each device argument is replaced, for validation only, by a
numpy stand-in of its shape and dtype that owns no memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tdsl.runtime.signature import numpy_dtype


@dataclass(frozen=True)
class DeviceView:
    """Where an array lives on the device: address, shape, strides in elements, dtype."""

    ptr: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: np.dtype

    @property
    def span(self) -> tuple[int, int]:
        """The byte range [start, end) the array's elements occupy."""
        if any(n == 0 for n in self.shape):
            return self.ptr, self.ptr
        last = sum((n - 1) * s for n, s in zip(self.shape, self.strides))
        return self.ptr, self.ptr + (last + 1) * self.dtype.itemsize

    @property
    def contiguous(self) -> bool:
        """True for a row-major layout without gaps."""
        expected, step = [], 1
        for n in reversed(self.shape):
            expected.append(step)
            step *= n
        return all(n <= 1 or s == e for n, s, e in
                   zip(self.shape, self.strides, reversed(expected)))


def _c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


class DeviceArray:
    """A row-major array in the memory of the current CUDA device, owned by tdsl."""

    def __init__(self, shape: tuple[int, ...], dtype: Any, drv: Any = None):
        from tdsl.runtime.cuda_driver import driver

        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self._driver = drv if drv is not None else driver()
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        stream = self._driver.stream()
        self.ptr = self._driver.alloc(max(self.nbytes, 1), stream)
        self._driver.synchronize(stream)

    @property
    def ndim(self) -> int:
        """The rank."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """The number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def __cuda_array_interface__(self) -> dict:
        typestr = self.dtype.str if self.dtype.kind != "V" else f"<V{self.dtype.itemsize}"
        return {"shape": self.shape, "typestr": typestr, "data": (self.ptr, False),
                "strides": None, "version": 3}

    def view(self) -> DeviceView:
        """This array as a `DeviceView`."""
        return DeviceView(self.ptr, self.shape, _c_strides(self.shape), self.dtype)

    def copy_from_host(self, array: np.ndarray) -> None:
        """Overwrite the contents with a host array of the same shape and dtype."""
        array = np.array(array, dtype=self.dtype, order="C")  # a copy; keeps rank 0
        if array.shape != self.shape:
            raise ValueError(f"shape {array.shape} does not match the device array's "
                             f"{self.shape}")
        stream = self._driver.stream()
        self._driver.copy(self.ptr, array.ctypes.data, array.nbytes, stream)
        self._driver.synchronize(stream)

    def copy_to_host(self) -> np.ndarray:
        """A numpy copy of the contents."""
        host = np.empty(self.shape, dtype=self.dtype)
        stream = self._driver.stream()
        self._driver.copy(host.ctypes.data, self.ptr, host.nbytes, stream)
        self._driver.synchronize(stream)
        return host

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        host = self.copy_to_host()
        return host if dtype is None else host.astype(dtype)

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype})"

    def __del__(self) -> None:
        ptr, self.ptr = getattr(self, "ptr", 0), 0
        if ptr:
            try:
                stream = self._driver.stream()
                self._driver.synchronize(stream)
                self._driver.free(ptr, stream)
            except Exception:  # noqa: BLE001 - interpreter shutdown or a failed driver
                pass


def to_device(array: Any, drv: Any = None) -> DeviceArray:
    """A `DeviceArray` holding a copy of a numpy array (or anything `np.asarray` takes)."""
    host = np.array(array, order="C")  # (np.ascontiguousarray makes rank 0 into rank 1)
    device = DeviceArray(host.shape, host.dtype, drv)
    device.copy_from_host(host)
    return device


def device_view(obj: Any) -> DeviceView:
    """The `DeviceView` of a `DeviceArray` or of an object with `__cuda_array_interface__`."""
    if isinstance(obj, DeviceView):
        return obj
    if isinstance(obj, DeviceArray):
        return obj.view()
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is None:
        raise TypeError(f"{type(obj).__name__} is not a device array")
    shape = tuple(int(n) for n in cai["shape"])
    dtype = np.dtype(cai["typestr"])
    if cai.get("mask") is not None:
        raise TypeError("masked device arrays are not supported")
    strides_bytes = cai.get("strides")
    if strides_bytes is None:
        strides = _c_strides(shape)
    else:
        if any(s < 0 or s % dtype.itemsize for s in strides_bytes):
            raise TypeError(f"device array strides {tuple(strides_bytes)} are not non-negative "
                            f"multiples of the item size {dtype.itemsize}")
        strides = tuple(s // dtype.itemsize for s in strides_bytes)
    return DeviceView(int(cai["data"][0] or 0), shape, strides, dtype)


def is_device_array(obj: Any) -> bool:
    """True for a `DeviceArray` or an object with `__cuda_array_interface__`."""
    return isinstance(obj, DeviceArray) or hasattr(obj, "__cuda_array_interface__")


def _overlaps(a: DeviceView, b: DeviceView) -> bool:
    (a0, a1), (b0, b1) = a.span, b.span
    return a0 < b1 and b0 < a1


def bind_device_call(executable: Any, args: tuple, kwargs: dict) -> Any:
    """Validate and run a call whose arguments may be device arrays (see module doc)."""
    from tdsl.runtime.cuda_driver import driver

    views: dict[int, DeviceView] = {}
    originals: dict[int, Any] = {}

    def stand_in(value: Any) -> Any:
        if isinstance(value, np.ndarray) or not is_device_array(value):
            return value
        view = device_view(value)
        proxy = np.lib.stride_tricks.as_strided(np.zeros(1, dtype=view.dtype), shape=view.shape,
                                                strides=(0,) * len(view.shape))
        views[id(proxy)] = view
        originals[id(proxy)] = (value, proxy)  # the proxy stays alive while its id is used
        return proxy

    call = executable.signature.bind([stand_in(a) for a in args],
                                     {k: stand_in(v) for k, v in kwargs.items()})
    if not views:
        call.allocate_outputs()
        executable.run(call)
        return call.result()
    drv = driver()
    executable.load(drv)
    inputs = [views.get(id(a), a) for a in call.inputs]
    outputs: list[Any] = []
    results: list[Any] = []
    fix_ups: list[tuple[DeviceView, DeviceArray]] = []
    for param, shape, given in zip(executable.signature.outputs, call.output_shapes,
                                   call.given_outputs):
        if given is None:
            array = DeviceArray(shape, numpy_dtype(param.type.dtype), drv)
            outputs.append(array.view())
            results.append(array)
            continue
        view = views.get(id(given))
        results.append(originals[id(given)][0] if view is not None else given)
        if view is None:
            outputs.append(given)
        elif any(isinstance(i, DeviceView) and _overlaps(view, i) for i in inputs):
            if not view.contiguous:
                raise ValueError(f"{executable.signature.name}(): output '{param.name}' "
                                 "overlaps an input and is not contiguous")
            temp = DeviceArray(shape, view.dtype, drv)
            fix_ups.append((view, temp))
            outputs.append(temp.view())
        else:
            outputs.append(view)
    executable.launch(drv, inputs, outputs)
    stream = drv.stream()
    for view, temp in fix_ups:
        drv.copy(view.ptr, temp.ptr, temp.nbytes, stream)
    drv.synchronize(stream)
    return results[0] if len(results) == 1 else tuple(results)

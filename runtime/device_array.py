"""Arrays in GPU memory for the CUDA target: tdsl's own `DeviceArray` (`to_device`), and
zero-copy views of any object with `__cuda_array_interface__` (CuPy, PyTorch, Numba) or with
`__dlpack__` on a CUDA device (PyTorch, CuPy, JAX; read by `tdsl.runtime.dlpack`).

`bind_device_call` validates a call whose arguments may live on the device with the same
`Signature.bind` as every target: each device argument is replaced, for validation only, by a
numpy stand-in of its shape and dtype that owns no memory. A DLPack object on the CPU is
taken as the numpy array `np.from_dlpack` makes of it (refused where numpy cannot).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tdsl.runtime import dlpack
from tdsl.runtime.signature import numpy_dtype


@dataclass(frozen=True)
class DeviceView:
    """Where an array lives on the device: address, shape, strides in elements, dtype; the
    CUDA device ordinal where known, whether it may not be written, and an object to keep
    alive while the memory is used (a DLPack capsule)."""

    ptr: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: np.dtype
    device: int | None = None
    readonly: bool = False
    owner: Any = field(default=None, compare=False, repr=False)

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


_c_strides = dlpack.row_major_strides


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
        return DeviceView(self.ptr, self.shape, _c_strides(self.shape), self.dtype,
                          getattr(self._driver, "device", None))

    def __dlpack_device__(self) -> tuple[int, int]:
        """(kDLCUDA, device ordinal): where DLPack consumers find the array."""
        return dlpack.KDL_CUDA, int(getattr(self._driver, "device", 0) or 0)

    def __dlpack__(self, *, stream: Any = None, max_version: tuple[int, int] | None = None,
                   dl_device: tuple[int, int] | None = None, copy: bool | None = None) -> Any:
        """A DLPack capsule of this array, without a copy (`copy=True`: of a device copy).
        The contents are complete whenever tdsl has returned (its calls and copies end with a
        synchronize), so the consumer's `stream` needs no wait. A `max_version` of 1.0 or
        later gets a `dltensor_versioned` capsule, else a legacy `dltensor` one."""
        if dl_device is not None and tuple(dl_device) != self.__dlpack_device__():
            raise BufferError(f"a DeviceArray is on {self.__dlpack_device__()}, not on "
                              f"{tuple(dl_device)}")
        source, flags = self, 0
        if copy:
            source, flags = DeviceArray(self.shape, self.dtype, self._driver), dlpack.FLAG_IS_COPIED
            stream_handle = self._driver.stream()
            self._driver.copy(source.ptr, self.ptr, self.nbytes, stream_handle)
            self._driver.synchronize(stream_handle)
        versioned = max_version is not None and tuple(max_version)[0] >= 1
        return dlpack.export(source, source.ptr, source.shape, _c_strides(source.shape),
                             source.dtype, self.__dlpack_device__(), versioned, flags)

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


def device_view(obj: Any, stream: int | None = None) -> DeviceView:
    """The `DeviceView` of a `DeviceArray`, of an object with `__cuda_array_interface__`, or
    of a DLPack object on a CUDA device. For DLPack, `stream` (the consumer's CUDA stream,
    `None` for the legacy default stream) goes to `__dlpack__`, and the view holds the
    capsule, unconsumed, in `owner`: keep the view while the memory is used."""
    if isinstance(obj, DeviceView):
        return obj
    if isinstance(obj, DeviceArray):
        return obj.view()
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is not None:
        return _interface_view(cai)
    device = dlpack.dlpack_device(obj)
    if device is None:
        raise TypeError(f"{type(obj).__name__} is not a device array")
    if device[0] not in dlpack.CUDA_DEVICE_TYPES:
        raise TypeError(f"{type(obj).__name__} is on the {dlpack.device_name(device[0])} "
                        "device, not on a CUDA device")
    capsule = dlpack.get_capsule(obj, stream)
    tensor = dlpack.read_capsule(capsule)
    if tensor.device_type not in dlpack.CUDA_DEVICE_TYPES:
        raise TypeError(f"{type(obj).__name__}.__dlpack__ gave a tensor on the "
                        f"{dlpack.device_name(tensor.device_type)} device")
    if any(s < 0 for s in tensor.strides):
        raise TypeError(f"device array strides {tensor.strides} (in elements) are negative")
    return DeviceView(tensor.ptr, tensor.shape, tensor.strides, tensor.dtype, tensor.device_id,
                      tensor.readonly, owner=capsule)


def _interface_view(cai: dict) -> DeviceView:
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
    ptr, readonly = cai["data"]
    return DeviceView(int(ptr or 0), shape, strides, dtype, readonly=bool(readonly))


def is_device_array(obj: Any) -> bool:
    """True for a `DeviceArray`, an object with `__cuda_array_interface__`, or a DLPack object
    whose `__dlpack_device__` is a CUDA device (kDLCUDA or kDLCUDAManaged)."""
    if isinstance(obj, DeviceArray) or hasattr(obj, "__cuda_array_interface__"):
        return True
    if isinstance(obj, np.ndarray):
        return False
    device = dlpack.dlpack_device(obj)
    return device is not None and device[0] in dlpack.CUDA_DEVICE_TYPES


def device_call_needed(args: tuple, kwargs: dict) -> bool:
    """True when a call has an argument that `Signature.bind` alone would refuse but
    `bind_device_call` takes: a device array, or another object with `__dlpack__`."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, (np.ndarray, np.generic, int, float)):
            continue
        if is_device_array(value) or hasattr(value, "__dlpack__"):
            return True
    return False


def _overlaps(a: DeviceView, b: DeviceView) -> bool:
    (a0, a1), (b0, b1) = a.span, b.span
    return a0 < b1 and b0 < a1


def _host_array(value: Any, what: str) -> np.ndarray:
    """A DLPack object that is not on a CUDA device, as the numpy array numpy makes of it."""
    device = dlpack.dlpack_device(value)
    if device is not None and device[0] != dlpack.KDL_CPU:
        raise TypeError(f"{what} is on the {dlpack.device_name(device[0])} device; the cuda "
                        "target takes numpy arrays and arrays on a CUDA device")
    try:
        return np.from_dlpack(value)
    except Exception as exc:  # noqa: BLE001 - BufferError, TypeError, RuntimeError, ...
        raise TypeError(f"{what}: numpy cannot take this {type(value).__name__} through DLPack "
                        f"({exc}); pass a numpy array or an array on the CUDA device") from exc


class _DeviceBinder:
    """The stand-ins of one device call: device views and host arrays behind numpy proxies."""

    def __init__(self, signature: Any):
        self.signature = signature
        self.roles = {p.name: "argument" for p in signature.inputs}
        self.roles.update({p.name: "output" for p in signature.outputs})
        self.views: dict[int, DeviceView] = {}
        self.originals: dict[int, tuple[Any, Any]] = {}  # id(stand-in): (caller's, stand-in)
        self._driver: Any = None

    def driver(self) -> Any:
        """The driver, loaded on first need."""
        if self._driver is None:
            from tdsl.runtime.cuda_driver import driver

            self._driver = driver()
        return self._driver

    def bind(self, args: tuple, kwargs: dict) -> Any:
        """`Signature.bind` on the stand-ins."""
        names = [p.name for p in self.signature.inputs]
        return self.signature.bind(
            [self.stand_in(a, names[i] if i < len(names) else None) for i, a in enumerate(args)],
            {k: self.stand_in(v, k) for k, v in kwargs.items()})

    def stand_in(self, value: Any, name: str | None) -> Any:
        """What `Signature.bind` sees of one argument (arity and name errors are its own)."""
        if (name not in self.roles or isinstance(value, (np.ndarray, np.generic, int, float))
                or not (is_device_array(value) or hasattr(value, "__dlpack__"))):
            return value
        what = f"{self.signature.name}(): {self.roles[name]} '{name}'"
        if is_device_array(value):
            view = self._view(value, what)
            proxy = np.lib.stride_tricks.as_strided(np.zeros(1, dtype=view.dtype),
                                                    shape=view.shape,
                                                    strides=(0,) * len(view.shape))
            if view.readonly:
                proxy.flags.writeable = False  # so that bind refuses it as an output
            self.views[id(proxy)] = view
        else:
            proxy = _host_array(value, what)
        self.originals[id(proxy)] = (value, proxy)  # the proxy stays alive while its id is used
        return proxy

    def _view(self, value: Any, what: str) -> DeviceView:
        dlpack_only = not (isinstance(value, DeviceArray)
                           or hasattr(value, "__cuda_array_interface__"))
        try:
            view = device_view(value, self.driver().stream() if dlpack_only else None)
        except (TypeError, BufferError) as exc:
            raise TypeError(f"{what}: {exc}") from exc
        ordinal = getattr(self._driver, "device", None)
        if view.device is not None and ordinal is not None and view.device != ordinal:
            raise ValueError(f"{what} is on CUDA device {view.device}, but tdsl runs on device "
                             f"{ordinal} (set TDSL_CUDA_DEVICE)")
        return view

    def original(self, value: Any) -> Any:
        """The caller's object behind a stand-in (the value itself for others)."""
        return self.originals.get(id(value), (value,))[0]


def bind_device_call(executable: Any, args: tuple, kwargs: dict) -> Any:
    """Validate and run a call whose arguments may be device arrays (see module doc)."""
    binder = _DeviceBinder(executable.signature)
    call = binder.bind(args, kwargs)
    views = binder.views
    if not views:
        call.allocate_outputs()
        executable.run(call)
        result = call.result()
        if not binder.originals:
            return result
        values = list(result) if len(call.outputs) > 1 else [result]
        values = [binder.original(v) if g is not None else v
                  for v, g in zip(values, call.given_outputs)]
        return values[0] if len(values) == 1 else tuple(values)
    drv = binder.driver()
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
        results.append(binder.original(given))
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

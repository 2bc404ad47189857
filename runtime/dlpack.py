"""DLPack (https://dmlc.github.io/dlpack/latest/) through ctypes: reading the tensor that a
producer's `__dlpack__` capsule describes, and exporting tdsl's own device arrays.

Reading (`read_capsule`) never consumes a capsule: tdsl only looks at the `DLManagedTensor`
(or `DLManagedTensorVersioned`) it holds and keeps the capsule alive while the memory is in
use. The capsule keeps its name (`dltensor` / `dltensor_versioned`), so its own destructor
calls the producer's deleter when the capsule is released; tdsl never calls a deleter itself.

Exporting (`export`) makes a capsule of tdsl's: the managed tensor and its shape and strides
arrays live in a registry that keeps the owner (a `DeviceArray`) alive until the deleter runs,
called by the consumer that renamed the capsule to `used_dltensor`, or by the capsule's
destructor when no consumer took it.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

KDL_CPU = 1
KDL_CUDA = 2
KDL_CUDA_HOST = 3
KDL_CUDA_MANAGED = 13
# Device types whose memory a CUDA kernel of the current device can address.
CUDA_DEVICE_TYPES = frozenset({KDL_CUDA, KDL_CUDA_MANAGED})
DEVICE_NAMES = {1: "CPU", 2: "CUDA", 3: "CUDA host", 4: "OpenCL", 7: "Vulkan", 8: "Metal",
                9: "VPI", 10: "ROCm", 11: "ROCm host", 12: "ext_dev", 13: "CUDA managed",
                14: "oneAPI", 15: "WebGPU", 16: "Hexagon", 17: "MAIA"}
FLAG_READ_ONLY = 1 << 0
FLAG_IS_COPIED = 1 << 1
VERSION = (1, 0)  # the DLPack version tdsl writes and the highest major version it reads

_LEGACY, _VERSIONED, _USED = b"dltensor", b"dltensor_versioned", b"used_dltensor"


class DLDevice(ctypes.Structure):
    """`DLDevice`: device type (a C enum) and ordinal."""

    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    """`DLDataType`: type code, bits per lane, lanes."""

    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    """`DLTensor`; `strides` are in elements and may be NULL (row-major)."""

    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)  # void (*)(DLManagedTensor[Versioned] *)


class DLManagedTensor(ctypes.Structure):
    """`DLManagedTensor`, the payload of a `dltensor` capsule."""

    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", DELETER)]


class DLPackVersion(ctypes.Structure):
    """`DLPackVersion`."""

    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    """`DLManagedTensorVersioned` (DLPack 1.x), the payload of a `dltensor_versioned` capsule."""

    _fields_ = [("version", DLPackVersion), ("manager_ctx", ctypes.c_void_p),
                ("deleter", DELETER), ("flags", ctypes.c_uint64), ("dl_tensor", DLTensor)]


# Own prototypes (not ctypes.pythonapi's shared function objects, whose argtypes other code
# may set). PYFUNCTYPE keeps the GIL and turns a Python error set by the call into an exception.
_capsule_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_IsValid", ctypes.pythonapi))
_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi))
_capsule_name = ctypes.PYFUNCTYPE(ctypes.c_char_p, ctypes.py_object)(
    ("PyCapsule_GetName", ctypes.pythonapi))
_capsule_new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p,
                                 ctypes.c_void_p)(("PyCapsule_New", ctypes.pythonapi))
_incref = ctypes.PYFUNCTYPE(None, ctypes.py_object)(("Py_IncRef", ctypes.pythonapi))
# For the capsule destructor, which gets a dying capsule: no new references to it.
_raw_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_IsValid", ctypes.pythonapi))
_raw_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi))


@dataclass(frozen=True)
class DLPackTensor:
    """What a capsule describes: the first element's address (byte offset applied), shape,
    strides in elements, numpy dtype, device, and the read-only flag (DLPack 1.x)."""

    ptr: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: np.dtype
    device_type: int
    device_id: int
    readonly: bool


def device_name(device_type: int) -> str:
    """A DLPack device type in words."""
    return DEVICE_NAMES.get(device_type, f"device type {device_type}")


def dlpack_device(obj: Any) -> tuple[int, int] | None:
    """`obj.__dlpack_device__()` as (device type, ordinal); None for an object without it (or
    whose method fails)."""
    method = getattr(obj, "__dlpack_device__", None)
    if method is None or not hasattr(obj, "__dlpack__"):
        return None
    try:
        device_type, device_id = method()
        return int(device_type), int(device_id)
    except Exception:  # noqa: BLE001 - not a usable DLPack object
        return None


def get_capsule(obj: Any, stream: int | None) -> Any:
    """`obj.__dlpack__(stream=stream, max_version=(1, 0))`, falling back to older signatures
    (without `max_version`, then without arguments) for producers that reject them."""
    try:
        return obj.__dlpack__(stream=stream, max_version=VERSION)
    except TypeError:
        pass
    try:
        return obj.__dlpack__(stream=stream)
    except TypeError:
        return obj.__dlpack__()


def _int_codes() -> dict[tuple[int, int], np.dtype]:
    table = {(6, 8): np.dtype(np.bool_)}
    for bits in (8, 16, 32, 64):
        table[(0, bits)] = np.dtype(f"int{bits}")
        table[(1, bits)] = np.dtype(f"uint{bits}")
    for bits in (16, 32, 64):
        table[(2, bits)] = np.dtype(f"float{bits}")
    table[(5, 64)], table[(5, 128)] = np.dtype(np.complex64), np.dtype(np.complex128)
    return table


_DTYPES = _int_codes()
_CODES = {dtype: key for key, dtype in _DTYPES.items()}


def numpy_dtype(code: int, bits: int, lanes: int) -> np.dtype:
    """The numpy dtype of a `DLDataType`; TypeError for one numpy has no equivalent of."""
    if lanes != 1:
        raise TypeError(f"DLPack vector dtypes ({lanes} lanes) are not supported")
    if (code, bits) == (4, 16):
        from tdsl.runtime.signature import numpy_dtype as tdsl_numpy_dtype
        from tdsl.types import DType

        return tdsl_numpy_dtype(DType.BF16)
    if (code, bits) not in _DTYPES:
        raise TypeError(f"the DLPack dtype (type code {code}, {bits} bits) is not supported")
    return _DTYPES[(code, bits)]


def dlpack_dtype(dtype: np.dtype) -> tuple[int, int]:
    """(type code, bits) of a numpy dtype."""
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16":
        return 4, 16
    key = _CODES.get(dtype.newbyteorder("="))
    if key is None or not dtype.isnative:
        raise BufferError(f"dtype {dtype} cannot be exported through DLPack")
    return key


def read_capsule(capsule: Any) -> DLPackTensor:
    """The tensor a `dltensor` or `dltensor_versioned` capsule holds. The capsule is not
    consumed: keep it alive while the memory is used; its destructor frees the tensor."""
    flags = 0
    if _capsule_is_valid(capsule, _VERSIONED):
        managed = DLManagedTensorVersioned.from_address(_capsule_pointer(capsule, _VERSIONED))
        if managed.version.major > VERSION[0]:
            raise BufferError(f"DLPack version {managed.version.major}.{managed.version.minor} "
                              f"is not supported (tdsl reads {VERSION[0]}.x)")
        tensor, flags = managed.dl_tensor, int(managed.flags)
    elif _capsule_is_valid(capsule, _LEGACY):
        tensor = DLManagedTensor.from_address(_capsule_pointer(capsule, _LEGACY)).dl_tensor
    else:
        name = _capsule_name(capsule) if type(capsule).__name__ == "PyCapsule" else None
        if name == _USED:
            raise BufferError("the DLPack capsule was already consumed (a capsule can be used "
                              "once; call __dlpack__ again)")
        raise TypeError(f"not a DLPack capsule: {type(capsule).__name__}"
                        + (f" named {name.decode(errors='replace')!r}" if name else ""))
    ndim = int(tensor.ndim)
    if ndim < 0 or (ndim and not tensor.shape):
        raise BufferError(f"malformed DLPack tensor (ndim {ndim}, shape pointer "
                          f"{'set' if tensor.shape else 'NULL'})")
    shape = tuple(int(tensor.shape[i]) for i in range(ndim))
    if tensor.strides:
        strides = tuple(int(tensor.strides[i]) for i in range(ndim))
    else:
        strides = row_major_strides(shape)
    dtype = numpy_dtype(tensor.dtype.code, tensor.dtype.bits, tensor.dtype.lanes)
    ptr = (tensor.data or 0) + int(tensor.byte_offset)
    return DLPackTensor(ptr, shape, strides, dtype, int(tensor.device.device_type),
                        int(tensor.device.device_id), bool(flags & FLAG_READ_ONLY))


def row_major_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Row-major strides in elements (a dimension of size 0 counts as 1)."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(int(n), 1)
    return tuple(reversed(strides))


# ---- exporting ---------------------------------------------------------------------------

# address of a managed tensor -> (the struct, shape array, strides array, owner), until deleted
_EXPORTS: dict[int, tuple[Any, ...]] = {}


def _delete(address: int | None) -> None:
    _EXPORTS.pop(address or 0, None)


_DELETE = DELETER(_delete)


def _destroy_capsule(capsule: int | None) -> None:
    """PyCapsule destructor: free the tensor unless a consumer renamed (consumed) it."""
    try:
        for name in (_VERSIONED, _LEGACY):
            if _raw_is_valid(capsule, name):
                _delete(_raw_pointer(capsule, name))
                return
    except Exception:  # noqa: BLE001 - nothing may propagate into the interpreter here
        pass


_DESTRUCTOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(_destroy_capsule)
_DESTRUCTOR_ADDRESS = ctypes.cast(_DESTRUCTOR, ctypes.c_void_p).value
# A capsule may outlive this module at interpreter exit: what it points to (its name, the
# destructor and deleter callbacks) is never freed.
for _kept in (_LEGACY, _VERSIONED, _DELETE, _DESTRUCTOR):
    _incref(_kept)


def export(owner: Any, ptr: int, shape: Sequence[int], strides: Sequence[int], dtype: np.dtype,
           device: tuple[int, int], versioned: bool, flags: int = 0) -> Any:
    """A capsule describing memory that `owner` keeps valid (strides in elements): a
    `dltensor_versioned` capsule (DLPack 1.0, with `flags`) or a legacy `dltensor` one."""
    code, bits = dlpack_dtype(dtype)
    ndim = len(shape)
    shape_array = (ctypes.c_int64 * max(ndim, 1))(*shape)
    strides_array = (ctypes.c_int64 * max(ndim, 1))(*strides)
    managed: Any = DLManagedTensorVersioned() if versioned else DLManagedTensor()
    tensor = managed.dl_tensor
    tensor.data = ptr or None
    tensor.device = DLDevice(*device)
    tensor.ndim = ndim
    tensor.dtype = DLDataType(code, bits, 1)
    tensor.shape = ctypes.cast(shape_array, ctypes.POINTER(ctypes.c_int64))
    tensor.strides = ctypes.cast(strides_array, ctypes.POINTER(ctypes.c_int64))
    tensor.byte_offset = 0
    managed.deleter = _DELETE
    if versioned:
        managed.version = DLPackVersion(*VERSION)
        managed.flags = flags
    address = ctypes.addressof(managed)
    _EXPORTS[address] = (managed, shape_array, strides_array, owner)
    try:
        return _capsule_new(address, _VERSIONED if versioned else _LEGACY, _DESTRUCTOR_ADDRESS)
    except BaseException:
        _delete(address)
        raise


def live_exports() -> int:
    """How many exported tensors are not deleted yet (for tests)."""
    return len(_EXPORTS)

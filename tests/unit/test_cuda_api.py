"""The public GPU API without a GPU: `tdsl.cuda`, kernel calls with device arrays through
`Kernel.__call__`, and DLPack in both directions, all against `FakeDriver` (device memory is
host memory there, so device pointers can be read back and a DLPack producer can be built
here with ctypes, independently of `tdsl.runtime.dlpack`'s own structures)."""

from __future__ import annotations

import ctypes
import gc
import subprocess
import sys
import weakref

import ml_dtypes
import numpy as np
import pytest

import tdsl
import tdsl.cuda
from tdsl.runtime import cuda_driver, dlpack
from tdsl.runtime.cuda_driver import set_driver
from tdsl.runtime.cuda_fake import FakeDriver

SOURCE = """
kernel saxpy(a: f32, x: f32[N], y: f32[N]) -> (z: f32[N]) {
    z = a * x + y
}

kernel softmax(x: f32[B, N]) -> (y: f32[B, N]) {
    m[b] = max[n](x[b, n])
    e[b, n] = exp(x[b, n] - m[b])
    s[b] = sum[n](e[b, n])
    y[b, n] = e[b, n] / s[b]
}

kernel stats(x: f64[N]) -> (lo: f64, hi: f64) {
    lo = min[i](x[i])
    hi = max[i](x[i])
}
"""


@pytest.fixture(scope="module")
def fake():
    driver = FakeDriver()
    set_driver(driver)
    yield driver
    set_driver(None)


@pytest.fixture(scope="module")
def mod(fake):
    return tdsl.loads(SOURCE, target="cuda", filename="cuda_api.tdsl")


@pytest.fixture(scope="module")
def ref():
    return tdsl.loads(SOURCE, target="reference", filename="cuda_api.tdsl")


def floats(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).uniform(-2, 2, shape).astype(dtype)


# ---- a DLPack producer built with ctypes ---------------------------------------------------

class _Tensor(ctypes.Structure):  # DLTensor, with DLDevice and DLDataType written out
    _fields_ = [("data", ctypes.c_void_p), ("device_type", ctypes.c_int32),
                ("device_id", ctypes.c_int32), ("ndim", ctypes.c_int32),
                ("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16),
                ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("byte_offset", ctypes.c_uint64)]


_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _Managed(ctypes.Structure):
    _fields_ = [("tensor", _Tensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _CALLBACK)]


class _Versioned(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32),
                ("manager_ctx", ctypes.c_void_p), ("deleter", _CALLBACK),
                ("flags", ctypes.c_uint64), ("tensor", _Tensor)]


_api = ctypes.pythonapi
_capsule_new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p,
                                 ctypes.c_void_p)(("PyCapsule_New", _api))
_capsule_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_IsValid", _api))
_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", _api))
_capsule_set_name = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_SetName", _api))
_LEGACY, _VERSIONED, _USED = b"dltensor", b"dltensor_versioned", b"used_dltensor"
_ALIVE: dict[int, tuple] = {}  # managed-tensor address -> (producer, struct, arrays)


@_CALLBACK
def _deleter(address):
    _ALIVE[address][0].deleted += 1


@_CALLBACK
def _destructor(capsule):  # as the DLPack spec's producers do: free unless consumed
    for name in (_VERSIONED, _LEGACY):
        if _capsule_valid(capsule, name):
            address = _capsule_pointer(capsule, name)
            _ALIVE[address][1].deleter(address)


class Producer:
    """A tensor in (fake) device memory as a CUDA library hands it out through DLPack."""

    def __init__(self, base: int, shape, strides, dtype=(2, 32, 1), byte_offset=0,
                 device=(2, 0), versioned=False, readonly=False,
                 accepts=("stream", "max_version")):
        self.base, self.shape, self.strides = base, tuple(shape), strides
        self.dtype, self.byte_offset, self.device = dtype, byte_offset, device
        self.versioned, self.readonly, self.accepts = versioned, readonly, accepts
        self.deleted, self.streams, self.exported = 0, [], 0

    def __dlpack_device__(self):
        return self.device

    def __dlpack__(self, **kwargs):
        if set(kwargs) - set(self.accepts):
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        self.streams.append(kwargs.get("stream"))
        versioned = self.versioned and kwargs.get("max_version") is not None
        managed = _Versioned() if versioned else _Managed()
        if versioned:
            managed.major, managed.minor, managed.flags = 1, 0, int(self.readonly)
        ndim = len(self.shape)
        shape = (ctypes.c_int64 * max(ndim, 1))(*self.shape)
        strides = None if self.strides is None else (ctypes.c_int64 * max(ndim, 1))(*self.strides)
        t = managed.tensor
        t.data, t.device_type, t.device_id, t.ndim = self.base, *self.device, ndim
        t.code, t.bits, t.lanes = self.dtype
        t.shape = ctypes.addressof(shape)
        t.strides = None if strides is None else ctypes.addressof(strides)
        t.byte_offset = self.byte_offset
        managed.deleter = _deleter
        address = ctypes.addressof(managed)
        _ALIVE[address] = (self, managed, shape, strides)
        self.exported += 1
        name = _VERSIONED if versioned else _LEGACY
        return _capsule_new(address, name, ctypes.cast(_destructor, ctypes.c_void_p).value)


def released(producer: Producer) -> bool:
    gc.collect()
    return producer.deleted == producer.exported


class HostWrapper:
    """A CPU tensor of some other library: only `__dlpack__` and `__dlpack_device__`."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


# ---- tdsl.cuda -----------------------------------------------------------------------------

def test_tdsl_cuda_imports_without_cuda_or_compiler():
    code = ("import sys, tdsl.runtime.cuda_driver as d; d.LIBRARY = 'libcuda-missing.so.1'\n"
            "import tdsl, tdsl.cuda\n"
            "assert tdsl.cuda.is_available() is False and tdsl.cuda.device_name() is None\n"
            "assert tdsl.cuda.to_device and tdsl.cuda.DeviceArray and tdsl.cuda.is_device_array\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('llvmlite', 'mlir', 'lark')]\n"
            "assert not heavy, heavy\n"
            "try:\n    tdsl.cuda.device_info()\nexcept tdsl.cuda.CudaUnavailableError as e:\n"
            "    print('unavailable', 'libcuda-missing' in str(e))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "unavailable True"
    attribute = subprocess.run([sys.executable, "-c", "import tdsl; print(tdsl.cuda.__name__)"],
                               capture_output=True, text=True, check=True)
    assert attribute.stdout.strip() == "tdsl.cuda"


def test_is_available_ignores_the_fake_driver(fake, monkeypatch):
    monkeypatch.setattr(cuda_driver, "LIBRARY", "libcuda-missing.so.1")
    monkeypatch.setattr(cuda_driver, "_DRIVER", [])
    assert tdsl.cuda.is_available() is False
    assert tdsl.cuda.device_name() is None
    assert tdsl.cuda.device_info().name == "tdsl GPU emulator"  # the driver calls use
    monkeypatch.setattr(cuda_driver, "system_driver", lambda: 1 / 0)
    assert tdsl.cuda.is_available() is False  # never raises


# ---- Kernel.__call__ with device arrays ----------------------------------------------------

def test_kernel_call_takes_device_arrays(mod, ref, fake):
    allocated = fake.allocated
    x, y = floats(3, 70), floats(3, 70, seed=1)
    dy = mod.softmax(tdsl.cuda.to_device(x))
    assert isinstance(dy, tdsl.cuda.DeviceArray) and dy.shape == (3, 70)
    np.testing.assert_allclose(dy.copy_to_host(), ref.softmax(x), rtol=1e-5, atol=1e-7)
    a, b = floats(9), floats(9, seed=1)
    da, db = tdsl.cuda.to_device(a), tdsl.cuda.to_device(b)
    want = ref.saxpy(1.5, a, b)
    np.testing.assert_allclose(np.asarray(mod.saxpy(1.5, da, b)), want, rtol=1e-6)  # mixed
    np.testing.assert_allclose(np.asarray(mod.saxpy(a=1.5, x=da, y=db)), want, rtol=1e-6)
    out = tdsl.cuda.DeviceArray((9,), np.float32)
    assert mod.saxpy(1.5, a, b, z=out) is out  # a device output alone makes a device call
    np.testing.assert_allclose(out.copy_to_host(), want, rtol=1e-6)
    assert mod.saxpy(1.5, da, db, z=da) is da  # the output aliases an input
    np.testing.assert_allclose(da.copy_to_host(), want, rtol=1e-6)
    lo, hi = mod.stats(tdsl.cuda.to_device(y.ravel().astype(np.float64)))
    assert lo.shape == () and isinstance(hi, tdsl.cuda.DeviceArray)
    assert (float(np.asarray(lo)), float(np.asarray(hi))) == tuple(ref.stats(y.ravel()
                                                                            .astype(np.float64)))
    assert isinstance(mod.saxpy(1.5, a, b), np.ndarray)  # numpy calls stay numpy calls
    del dy, da, db, out, lo, hi
    gc.collect()
    assert fake.allocated == allocated


@pytest.mark.parametrize("call,error,message", [
    (lambda m, d: m.saxpy(2.0, d(np.ones(5)), np.ones(5, np.float32)), TypeError,
     r"saxpy\(\): argument 'x' must have dtype f32 \(f32\[N\]\), got float64"),
    (lambda m, d: m.saxpy(2.0, d(np.ones((5, 1), np.float32)), np.ones(5, np.float32)),
     ValueError, r"saxpy\(\): argument 'x' must have rank 1 \(f32\[N\]\)"),
    (lambda m, d: m.saxpy(2.0, np.ones(5, np.float32), d(np.ones(6, np.float32))), ValueError,
     r"saxpy\(\): argument 'y' has N = 6 in dimension 0 \(f32\[N\]\), but 'x' bound N = 5"),
    (lambda m, d: m.saxpy(2.0, d(np.ones(5, np.float32)), d(np.ones(5, np.float32)),
                          z=d(np.ones(4, np.float32))), ValueError,
     r"saxpy\(\): output 'z' must have shape \(5,\) \(f32\[N\]\), got \(4,\)"),
    (lambda m, d: m.saxpy(2.0, d(np.ones(5, np.float32)), d(np.ones(5, np.float32)),
                          z=d(np.ones(5, np.int32))), TypeError,
     r"saxpy\(\): output 'z' must have dtype f32"),
    (lambda m, d: m.saxpy(2.0, d(np.ones(5, np.float32))), TypeError,
     r"saxpy\(\) missing argument 'y'"),
    (lambda m, d: m.softmax(x=d(np.ones(3, np.float32))), ValueError,
     r"softmax\(\): argument 'x' must have rank 2"),
])
def test_bad_device_array_calls_name_the_parameter(mod, fake, call, error, message):
    with pytest.raises(error, match=message):
        call(mod, tdsl.cuda.to_device)


def test_read_only_device_output_is_refused(mod, fake):
    x = tdsl.cuda.to_device(np.ones(4, np.float32))

    class ReadOnly:
        __cuda_array_interface__ = {"shape": (4,), "typestr": "<f4", "version": 3,
                                    "data": (x.ptr, True), "strides": None}

    np.testing.assert_allclose(np.asarray(mod.saxpy(1.0, ReadOnly(), x)), 2.0)  # input: fine
    with pytest.raises(ValueError, match=r"saxpy\(\): output 'z' is read-only"):
        mod.saxpy(1.0, x, x, z=ReadOnly())


# ---- DLPack producers ----------------------------------------------------------------------

@pytest.mark.parametrize("versioned", [False, True], ids=["dltensor", "dltensor_versioned"])
def test_dlpack_cuda_producer_end_to_end(mod, ref, fake, versioned):
    host = floats(20)
    base = tdsl.cuda.to_device(host)
    # every other element from the third: strides in elements, the start in byte_offset
    x = Producer(base.ptr, (5,), (2,), byte_offset=8, versioned=versioned)
    y = np.ones(5, np.float32)
    z = mod.saxpy(3.0, x, y)
    assert isinstance(z, tdsl.cuda.DeviceArray)
    np.testing.assert_allclose(z.copy_to_host(), ref.saxpy(3.0, host[2:12:2].copy(), y),
                               rtol=1e-6)
    assert x.streams == [fake.stream()]  # tdsl's stream, for the producer to order its work
    assert released(x)  # not consumed: the capsule's destructor ran the deleter, once
    out_memory = tdsl.cuda.DeviceArray((5,), np.float32)
    out = Producer(out_memory.ptr, (5,), None, versioned=versioned)  # strides NULL: row-major
    assert mod.saxpy(1.0, x, y, z=out) is out  # written in place, the producer returned
    np.testing.assert_allclose(out_memory.copy_to_host(), host[2:12:2] + 1, rtol=1e-6)
    same = Producer(out_memory.ptr, (5,), (1,), versioned=versioned)
    mod.saxpy(2.0, same, same, z=same)  # output overlapping inputs: computed, then copied
    np.testing.assert_allclose(out_memory.copy_to_host(), 3 * (host[2:12:2] + 1), rtol=1e-6)
    assert released(out) and released(same)


@pytest.mark.parametrize("accepts", [(), ("stream",)], ids=["no-arguments", "stream-only"])
def test_dlpack_producers_with_older_signatures(mod, fake, accepts):
    base = tdsl.cuda.to_device(np.arange(4, dtype=np.float32))
    x = Producer(base.ptr, (4,), (1,), accepts=accepts)
    np.testing.assert_allclose(np.asarray(mod.saxpy(2.0, x, np.zeros(4, np.float32))),
                               [0, 2, 4, 6])
    assert x.streams == [fake.stream() if accepts else None]
    assert released(x)


def test_bad_dlpack_producers_are_refused_by_name(mod, fake, monkeypatch):
    base = tdsl.cuda.to_device(np.zeros(8, np.float32))
    y = np.zeros(4, np.float32)
    cases = [
        (Producer(base.ptr, (4,), (1,), device=(10, 0)), TypeError,
         r"saxpy\(\): argument 'x' is on the ROCm device; the cuda target takes"),
        (Producer(base.ptr, (4,), (-1,), byte_offset=12), TypeError,
         r"saxpy\(\): argument 'x': device array strides \(-1,\)"),
        (Producer(base.ptr, (4,), (1,), dtype=(2, 32, 2)), TypeError,
         r"saxpy\(\): argument 'x': DLPack vector dtypes"),
        (Producer(base.ptr, (4,), (1,), dtype=(2, 64, 1)), TypeError,
         r"saxpy\(\): argument 'x' must have dtype f32 \(f32\[N\]\), got float64"),
    ]
    for x, error, message in cases:
        with pytest.raises(error, match=message):
            mod.saxpy(1.0, x, y)
        assert released(x)
    readonly = Producer(base.ptr, (4,), (1,), versioned=True, readonly=True)
    with pytest.raises(ValueError, match=r"saxpy\(\): output 'z' is read-only"):
        mod.saxpy(1.0, y, y, z=readonly)
    monkeypatch.setattr(fake, "device", 0, raising=False)  # the device tdsl runs on
    other = Producer(base.ptr, (4,), (1,), device=(2, 1))
    with pytest.raises(ValueError, match=r"argument 'x' is on CUDA device 1, but tdsl runs on "
                                         r"device 0"):
        mod.saxpy(1.0, other, y)
    assert released(readonly) and released(other)


def test_dlpack_cpu_producers_go_through_numpy(mod, ref, fake):
    x, y = floats(6), floats(6, seed=1)
    got = mod.saxpy(2.0, HostWrapper(x), y)
    assert isinstance(got, np.ndarray)  # a CPU tensor is copied to the device and back
    np.testing.assert_allclose(got, ref.saxpy(2.0, x, y), rtol=1e-6)
    out = np.zeros(6, np.float32)
    wrapped = HostWrapper(out)
    assert mod.saxpy(2.0, x, y, z=wrapped) is wrapped  # numpy's view of it is written
    np.testing.assert_allclose(out, ref.saxpy(2.0, x, y), rtol=1e-6)
    with pytest.raises(TypeError, match=r"saxpy\(\): argument 'x': numpy cannot take this "
                                        r"HostWrapper through DLPack"):
        mod.saxpy(2.0, HostWrapper(np.ones(6, ml_dtypes.bfloat16)), y)
    with pytest.raises(TypeError, match=r"argument 'x' must have dtype f32"):
        mod.saxpy(2.0, HostWrapper(np.ones(6, np.int32)), y)  # numpy takes it; bind refuses


def test_reading_numpy_capsules():
    """The reader against a real producer: numpy's legacy and versioned capsules."""
    array = np.arange(24, dtype=np.int16).reshape(4, 6)[1:, ::3]
    for capsule in (array.__dlpack__(), array.__dlpack__(max_version=(1, 0))):
        tensor = dlpack.read_capsule(capsule)
        assert (tensor.ptr, tensor.shape, tensor.strides) == (array.ctypes.data, (3, 2), (6, 3))
        assert (tensor.dtype, tensor.device_type, tensor.readonly) == (np.int16, 1, False)
    frozen = np.arange(3.0)
    frozen.flags.writeable = False
    assert dlpack.read_capsule(frozen.__dlpack__(max_version=(1, 0))).readonly
    capsule = np.arange(3.0).__dlpack__()
    _capsule_set_name(capsule, _USED)  # as a consumer that took it would
    with pytest.raises(BufferError, match="already consumed"):
        dlpack.read_capsule(capsule)
    _capsule_set_name(capsule, _LEGACY)  # give it back to its destructor
    with pytest.raises(TypeError, match="not a DLPack capsule"):
        dlpack.read_capsule(object())


# ---- DeviceArray as a DLPack producer ------------------------------------------------------

def test_device_array_exports_dlpack(mod, fake):
    before, allocated = dlpack.live_exports(), fake.allocated
    x = tdsl.cuda.to_device(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert x.__dlpack_device__() == (2, 0)
    owner = weakref.ref(x)
    for kwargs, name in (({}, "dltensor"), ({"max_version": (1, 1)}, "dltensor_versioned")):
        capsule = x.__dlpack__(stream=None, **kwargs)
        assert f'"{name}"' in repr(capsule)
        tensor = dlpack.read_capsule(capsule)
        assert (tensor.ptr, tensor.shape, tensor.strides) == (x.ptr, (2, 3), (3, 1))
        assert (tensor.dtype, tensor.device_type, tensor.readonly) == (np.float32, 2, False)
        del capsule
    assert dlpack.live_exports() == before
    # a consumer that takes the capsule renames it and calls the deleter itself
    capsule = x.__dlpack__()
    _capsule_set_name(capsule, _USED)
    managed = _Managed.from_address(_capsule_pointer(ctypes.c_void_p(id(capsule)), _USED))
    del x
    assert owner() is not None  # the export keeps the array alive ...
    managed.deleter(ctypes.addressof(managed))
    del capsule, managed
    gc.collect()
    assert owner() is None and dlpack.live_exports() == before  # ... until it is deleted
    # copy=True, bf16, and a DeviceArray through the DLPack path of a kernel call
    x = tdsl.cuda.to_device(np.arange(4, dtype=np.float32))
    copied = dlpack.read_capsule(keep := x.__dlpack__(copy=True))
    assert copied.ptr != x.ptr and ctypes.string_at(copied.ptr, 16) == ctypes.string_at(x.ptr, 16)
    del keep
    half = dlpack.read_capsule(tdsl.cuda.to_device(np.ones(2, ml_dtypes.bfloat16)).__dlpack__())
    assert half.dtype == np.dtype(ml_dtypes.bfloat16)
    with pytest.raises(BufferError):
        x.__dlpack__(dl_device=(1, 0))
    z = mod.saxpy(2.0, HostWrapper(x), x)  # HostWrapper forwards to x: a CUDA producer
    np.testing.assert_allclose(z.copy_to_host(), [0, 3, 6, 9])
    del half, z, x, copied
    gc.collect()
    assert dlpack.live_exports() == before and fake.allocated == allocated

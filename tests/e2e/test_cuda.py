"""The CUDA target on a real GPU: every sample case and the hand-built kernels against their
references, large sizes, device arrays. Skipped where no CUDA device is usable (the same
paths run on the emulator in tests/unit/test_cuda_runtime.py and test_gpu_emulator.py)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import handbuilt_kernels as hk  # noqa: E402
from sample_cases import CASES, tolerance  # noqa: E402

import tdsl  # noqa: E402
from tdsl.runtime import cuda_driver  # noqa: E402

pytestmark = pytest.mark.skipif(not cuda_driver.available(), reason="no CUDA device")


@functools.cache
def load(path: str):
    return tdsl.load(path, target="cuda")


def as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def assert_close(got, want, rtol=None, atol=None) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = tolerance(want.dtype)
    if tol is None:
        np.testing.assert_array_equal(got, want)
        return
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                               rtol=(rtol or tol[0]) * 4, atol=(atol or tol[1]) * 4,
                               equal_nan=True)


def test_device_is_described():
    info = cuda_driver.driver().info
    assert info.name and info.capability >= (5, 0) and info.peak_bandwidth_gbs > 0


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_sample_case_on_gpu(case):
    kernel = getattr(load(str(case.path)), case.kernel)
    inputs = case.make_inputs()
    for got, want in zip(as_tuple(kernel(*inputs)), as_tuple(case.expected(*inputs))):
        assert_close(got, want, case.rtol, case.atol)


#: Hand-built kernels run at large sizes (tools/device_check.py prebuilds the same list).
HANDBUILT_ON_GPU = [
    ("saxpy", {"N": 1 << 20}), ("softmax", {"B": 300, "N": 1000}),
    ("matmul", {"M": 127, "K": 300, "N": 129}), ("total_sum", {"M": 1000, "N": 999}),
    ("row_stats", {"B": 77, "N": 4097}), ("conv1d", {"N": 100_000, "R": 7}),
    ("int_divmod", {"N": 10_000}), ("bool_ops", {"N": 1000, "M": 300}),
    ("nested_reduction", {"M": 1000, "N": 33}), ("upsample", {"N": 5000}),
]
#: The small kernel of the device-array tests.
TWICE = "kernel f(x: f32[N]) -> (y: f32[N]) { y = 2.0 * x }"


@pytest.mark.parametrize("name,sizes", HANDBUILT_ON_GPU)
def test_handbuilt_kernel_on_gpu_matches_reference(name, sizes):
    from tdsl.runtime.cuda import compile_kernel
    from tdsl.runtime.inputs import random_inputs
    from tdsl.runtime.reference import ReferenceExecutable

    kernel = getattr(hk, name)()
    inputs = random_inputs(kernel.signature, sizes, seed=3)
    got = as_tuple(compile_kernel(kernel)(*inputs))
    call = kernel.signature.bind(inputs, {})
    call.allocate_outputs()
    ReferenceExecutable(kernel).run(call)
    for g, w in zip(got, as_tuple(call.result())):
        assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_device_arrays_stay_on_the_device():
    from tdsl.runtime.cuda import DeviceArray, to_device

    module = load(str(Path(__file__).resolve().parents[2] / "samples" / "softmax.tdsl"))
    executable = module.softmax.executable()
    x = np.random.default_rng(0).standard_normal((64, 1000)).astype(np.float32)
    dy = executable(to_device(x))
    assert isinstance(dy, DeviceArray)
    np.testing.assert_allclose(dy.copy_to_host(), module.softmax(x), rtol=1e-5, atol=1e-7)


def test_cupy_or_torch_arrays_if_installed():
    try:
        import cupy as cp
    except ImportError:
        cp = None
    if cp is None:
        try:
            import torch
        except ImportError:
            pytest.skip("neither CuPy nor PyTorch is installed")
        x = torch.randn(1000, device="cuda")
        module = tdsl.loads(TWICE, "cuda")
        y = torch.empty_like(x)
        module.f.executable()(x, y=y)
        torch.cuda.synchronize()
        assert torch.allclose(y, 2 * x)
        return
    x = cp.arange(1000, dtype=cp.float32)
    module = tdsl.loads(TWICE, "cuda")
    y = module.f.executable()(x)
    np.testing.assert_allclose(y.copy_to_host(), 2 * cp.asnumpy(x))


def test_kernel_call_with_device_arrays_and_dlpack():
    import tdsl.cuda

    class DLPackOnly:  # hides __cuda_array_interface__: the DLPack path
        def __init__(self, array):
            self.array = array

        def __dlpack__(self, **kwargs):
            return self.array.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self.array.__dlpack_device__()

    assert tdsl.cuda.is_available() and tdsl.cuda.device_name()
    module = tdsl.loads(TWICE, "cuda")
    x = np.arange(1000, dtype=np.float32)
    dx = tdsl.cuda.to_device(x)
    dy = module.f(dx)  # through Kernel.__call__
    assert isinstance(dy, tdsl.cuda.DeviceArray)
    np.testing.assert_allclose(dy.copy_to_host(), 2 * x)
    out = tdsl.cuda.DeviceArray((1000,), np.float32)
    wrapped = DLPackOnly(out)
    assert module.f(DLPackOnly(dx), y=wrapped) is wrapped  # DeviceArray's own export
    np.testing.assert_allclose(out.copy_to_host(), 2 * x)
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        t = torch.arange(1000, dtype=torch.float32, device="cuda")
        got = module.f(DLPackOnly(t))
        assert torch.equal(torch.from_dlpack(got), 2 * t)

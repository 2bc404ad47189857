"""Repeated device calls (`CudaExecutable._fast_call`): a call laid out like the last accepted
one skips `bind_device_call`; anything else takes it, with the same results and errors. Runs
on the GPU emulator standing in for the driver."""

from __future__ import annotations

import numpy as np
import pytest

import tdsl
from tdsl.runtime import cuda_driver, device_array
from tdsl.runtime.cuda import DeviceArray, to_device
from tdsl.runtime.cuda_fake import FakeDriver

SOURCE = """
kernel saxpy(a: f32, x: f32[N], y: f32[N]) -> (z: f32[N]) { z = a * x + y }
kernel stats(x: f64[B, N]) -> (s: f64[B], m: f64[B]) {
    s[b] = sum[n](x[b, n]); m[b] = max[n](x[b, n])
}
"""


@pytest.fixture
def module(monkeypatch):
    cuda_driver.set_driver(FakeDriver())
    calls = []
    slow = device_array.bind_device_call

    def counting(executable, args, kwargs):
        calls.append(executable.signature.name)
        return slow(executable, args, kwargs)

    monkeypatch.setattr(device_array, "bind_device_call", counting)
    mod = tdsl.loads(SOURCE, target="cuda")
    mod.calls = calls
    yield mod
    cuda_driver.set_driver(None)


def _host(a: DeviceArray) -> np.ndarray:
    return a.copy_to_host()


def test_repeated_calls_skip_the_binding_and_stay_right(module):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(37).astype(np.float32), rng.standard_normal(37).astype(np.float32)
    dx, dy, dz = to_device(x), to_device(y), DeviceArray((37,), np.float32)
    for a in (1.5, -2.0, 0.25):
        assert module.saxpy(np.float32(a), dx, dy, z=dz) is dz
        np.testing.assert_allclose(_host(dz), np.float32(a) * x + y, rtol=1e-6)
    assert module.calls == ["saxpy"]  # the first call only


def test_allocated_outputs_are_fresh_arrays(module):
    x = np.random.default_rng(1).standard_normal((3, 40))
    dx = to_device(x)
    first = module.stats(dx)
    second = module.stats(dx)
    assert module.calls == ["stats"]
    assert first[0].ptr != second[0].ptr and first[1].ptr != second[1].ptr
    for got in (first, second):
        np.testing.assert_allclose(_host(got[0]), x.sum(axis=1), rtol=1e-12)
        np.testing.assert_allclose(_host(got[1]), x.max(axis=1))


def test_other_layouts_and_bad_calls_take_the_checked_path(module):
    x = np.arange(10, dtype=np.float32)
    dx, dz = to_device(x), DeviceArray((10,), np.float32)
    module.saxpy(np.float32(2), dx, dx, z=dz)
    module.saxpy(np.float32(2), to_device(x[:7]), to_device(x[:7]))  # another shape
    assert module.calls == ["saxpy", "saxpy"]
    with pytest.raises(TypeError, match="'x'"):  # validated: another dtype
        module.saxpy(np.float32(2), to_device(x.astype(np.float64)), dx, z=dz)
    np.testing.assert_allclose(_host(module.saxpy(np.float32(3), dx, dx)), 4 * x)


def test_an_output_overlapping_an_input_takes_the_checked_path(module):
    x = np.arange(16, dtype=np.float32)
    dx, dy, dz = to_device(x), to_device(x), DeviceArray((16,), np.float32)
    module.saxpy(np.float32(2), dx, dy, z=dz)
    assert module.saxpy(np.float32(2), dx, dy, z=dy) is dy  # y = 2 x + y in place
    np.testing.assert_allclose(_host(dy), 3 * x)
    assert module.calls == ["saxpy", "saxpy"]


def test_a_scalar_of_another_dtype_is_refused_every_time(module):
    dx = to_device(np.arange(5, dtype=np.float32))
    module.saxpy(np.float32(0.5), dx, dx)
    for _ in range(2):
        with pytest.raises(TypeError, match="argument 'a' must be f32"):
            module.saxpy(np.float64(0.5), dx, dx)
    assert module.calls == ["saxpy"] * 3

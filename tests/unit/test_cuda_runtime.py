"""The CUDA runtime without a GPU: importing never fails, a call without a driver raises one
clear error, and the whole host path (JIT-compiled host code, the mgpu* callbacks, argument
packing, launches, device memory, device arrays) runs against `FakeDriver`, which executes
each launched kernel with the GPU emulator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from sample_cases import CASES, tolerance  # noqa: E402

import tdsl  # noqa: E402
from tdsl.runtime import cuda_driver  # noqa: E402
from tdsl.runtime.cuda import CudaError, DeviceArray, compile_kernel, to_device  # noqa: E402
from tdsl.runtime.cuda_driver import CudaUnavailableError, set_driver  # noqa: E402
from tdsl.runtime.cuda_fake import FakeDriver  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
SAXPY = "kernel saxpy(a: f32, x: f32[N], y: f32[N]) -> (z: f32[N]) {\n    z = a * x + y\n}\n"


@pytest.fixture
def fake():
    driver = FakeDriver()
    set_driver(driver)
    yield driver
    set_driver(None)


def test_import_never_needs_cuda():
    code = ("import tdsl, tdsl.runtime.cuda, tdsl.runtime.cuda_driver as d; "
            "d.LIBRARY = 'libcuda-missing.so.1'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_call_without_driver_raises_one_clear_error(monkeypatch):
    monkeypatch.setattr(cuda_driver, "LIBRARY", "libcuda-missing.so.1")
    monkeypatch.setattr(cuda_driver, "_DRIVER", [])
    set_driver(None)
    module = tdsl.loads(SAXPY, target="cuda")
    x = np.ones(4, np.float32)
    with pytest.raises(CudaUnavailableError, match="libcuda-missing.so.1") as info:
        module.saxpy(2.0, x, x)
    assert "--emit ptx" in str(info.value)
    assert isinstance(info.value, OSError)
    executable = module.saxpy.executable()  # compiling needed no GPU
    assert ".visible .entry tdsl_saxpy_0(" in executable.ptx


def test_cli_run_without_driver_is_a_user_error(tmp_path):
    path = tmp_path / "k.tdsl"
    path.write_text(SAXPY)
    code = ("import sys, tdsl.runtime.cuda_driver as d; d.LIBRARY = 'libcuda-missing.so.1'; "
            "from tdsl.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "run", str(path), "--target", "cuda"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "tdsl: error: tdsl target 'cuda' needs the NVIDIA driver" in proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr


def test_compile_kernel_needs_no_gpu():
    program = tdsl.check.check_source(SAXPY, "k.tdsl")
    executable = compile_kernel(program.kernels[0], arch="sm_90")
    assert executable.arch == "sm_90" and ".target sm_90" in executable.ptx
    assert executable.entries == ["tdsl_saxpy_0"]
    assert "mgpuModuleLoadJIT" in executable.host_llvm


# ---- the host path on the emulator ---------------------------------------------------------

RUNTIME_CASES = [c for c in CASES if c.file in ("softmax.tdsl", "matmul.tdsl", "total.tdsl",
                                                "multi_output.tdsl", "half.tdsl",
                                                "int_ops.tdsl", "saxpy.tdsl")]


@pytest.mark.parametrize("case", RUNTIME_CASES, ids=lambda c: c.id)
def test_sample_through_the_cuda_runtime(fake, case):
    module = tdsl.load(str(case.path), target="cuda")
    inputs = case.make_inputs()
    got = getattr(module, case.kernel)(*inputs)
    want = case.expected(*inputs)
    for g, w in zip(got if isinstance(got, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,)):
        tol = tolerance(np.asarray(w).dtype)
        if tol is None:
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64),
                                       rtol=(case.rtol or tol[0]) * 4,
                                       atol=(case.atol or tol[1]) * 4)
    assert fake.allocated == 0  # every device buffer was freed


def test_strided_inputs_outputs_and_empty_arrays(fake):
    module = tdsl.loads(SAXPY, target="cuda")
    x = np.arange(20, dtype=np.float32)[::2]
    y = np.ones(10, np.float32)
    out = np.zeros(20, np.float32)[::2]
    assert module.saxpy(3.0, x, y, z=out) is out
    np.testing.assert_allclose(out, 3 * x + 1)
    empty = np.zeros(0, np.float32)
    assert module.saxpy(1.0, empty, empty).shape == (0,)


def test_device_arrays_in_and_out(fake):
    module = tdsl.load(str(SAMPLES / "softmax.tdsl"), target="cuda")
    executable = module.softmax.executable()
    x = np.random.default_rng(0).standard_normal((3, 70)).astype(np.float32)
    expected = module.softmax(x)
    dx = to_device(x)
    dy = executable(dx)
    assert isinstance(dy, DeviceArray) and dy.shape == (3, 70)
    np.testing.assert_allclose(dy.copy_to_host(), expected, rtol=1e-6)
    out = DeviceArray((3, 70), np.float32)
    assert executable(dx, y=out) is out
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6)
    assert executable(dx, y=dx) is dx  # aliasing a device input is computed correctly
    np.testing.assert_allclose(dx.copy_to_host(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        executable(dx, y=DeviceArray((3, 71), np.float32))


def test_foreign_cuda_array_interface(fake):
    class Foreign:
        def __init__(self, device: DeviceArray):
            self.device = device
            self.__cuda_array_interface__ = {
                "shape": device.shape, "typestr": device.dtype.str, "version": 3,
                "data": (device.ptr, False),
                "strides": tuple(s * device.dtype.itemsize for s in device.view().strides)}

    module = tdsl.loads(SAXPY, target="cuda")
    x = np.arange(5, dtype=np.float32)
    z = module.saxpy.executable()(2.0, Foreign(to_device(x)), Foreign(to_device(x)))
    np.testing.assert_allclose(z.copy_to_host(), 3 * x)
    with pytest.raises(TypeError, match="dtype"):
        module.saxpy.executable()(2.0, Foreign(to_device(x.astype(np.float64))), x)


def test_driver_failures_become_cuda_errors(fake, monkeypatch):
    module = tdsl.loads(SAXPY, target="cuda")
    x = np.ones(4, np.float32)
    module.saxpy(1.0, x, x)

    def fail(*args):
        raise CudaError("cuLaunchKernel failed: CUDA_ERROR_LAUNCH_FAILED")

    monkeypatch.setattr(fake, "launch", fail)
    with pytest.raises(CudaError, match="CUDA_ERROR_LAUNCH_FAILED"):
        module.saxpy(1.0, x, x)
    assert fake.allocated == 0
    monkeypatch.undo()
    np.testing.assert_allclose(module.saxpy(1.0, x, x), 2 * x)  # the next call works


@pytest.mark.parametrize("rows,n", [(300, 8), (257, 130)])
def test_fused_row_launch_through_the_driver(fake, rows, n):
    """At least FUSE_MIN_ROWS rows take the fused launch, whose threads read what thread 0
    stored in an earlier phase, after a barrier. Through the driver its memory comes from
    outside the emulated program, and barriers must order it too (they once did not: a false
    data race)."""
    module = tdsl.load(str(SAMPLES / "softmax.tdsl"), target="cuda")
    x = np.random.default_rng(rows).standard_normal((rows, n)).astype(np.float32)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(module.softmax(x), e / e.sum(axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-7)


def test_host_code_defines_its_no_op_runtime_calls(fake):
    """The mgpu* functions that do nothing (synchronizations, destroys: one stream per thread)
    are defined in the host code, so a call makes no round trip into Python for them."""
    from tdsl.runtime import cuda

    executable = tdsl.load(str(SAMPLES / "softmax.tdsl"), target="cuda").softmax.executable()
    host = cuda.define_no_ops(executable.host_llvm)
    assert "declare void @mgpuStreamSynchronize" in executable.host_llvm
    assert "define void @mgpuStreamSynchronize(ptr %0)" in host
    assert not any(f"declare void @{name}(" in host for name in cuda._NO_OPS)
    dx = to_device(np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32))
    executable(dx)
    called: list[str] = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename == cuda.__file__:
            called.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        executable(dx)
    finally:
        sys.setprofile(None)
    assert "_launch" in called
    assert not {"_stream_synchronize", "_stream_destroy"} & set(called)
    assert not set(cuda._NO_OPS) & cuda.MGPU_SYMBOLS  # no Python callback left for them

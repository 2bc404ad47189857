"""Native kernel calls (`tdsl.runtime.native`): after one validated call, calls with the same
dtypes, shapes and strides go from Python straight into machine code (`tdsl_py_<kernel>`).
They must give exactly what the Python path gives, fall back to it for anything else, refuse
bad calls the same way, and leak no references."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from concurrent_work import run_threads  # noqa: E402

import tdsl  # noqa: E402
from tdsl.codegen import pycall  # noqa: E402
from tdsl.runtime import native  # noqa: E402

SOURCE = """
kernel saxpy(a: f32, x: f32[N], y: f32[N]) -> (z: f32[N]) { z = a * x + y }
kernel stats(x: f64[N, M], k: i32) -> (s: f64[M], t: f64) {
    s[j] = sum[i](x[i, j]) + f64(k)
    t = sum[i, j](x[i, j])
}
kernel shift(x: i8[N], k: i8) -> (y: i8[N]) { y = x + k }
kernel scale(x: f64[N], w: f64) -> (y: f64[N]) { y = x * w }
kernel flip(m: bool[N]) -> (r: bool[N]) { r = not m }
"""

RNG = np.random.default_rng(11)

pytestmark = pytest.mark.skipif(not native.enabled(), reason="native calls unsupported here")


@pytest.fixture(scope="module")
def mod():
    return tdsl.loads(SOURCE, filename="native.tdsl")


def _entry(kernel) -> native.NativeEntry:
    kernel.executable()
    entry = kernel.executable().native
    assert entry is not None
    return entry


def _native_calls(kernel, call, times: int = 5) -> int:
    """How many of `times` calls of `call()` stayed native (after a first one)."""
    entry = _entry(kernel)
    call()
    before = entry.fallbacks
    for _ in range(times):
        call()
    return times - (entry.fallbacks - before)


def test_the_native_entry_takes_repeated_calls(mod):
    x = RNG.standard_normal(37).astype(np.float32)
    y = RNG.standard_normal(37).astype(np.float32)
    for a in (2.5, np.float32(1.25), 3, np.array(0.5, np.float32)):
        assert _native_calls(mod.saxpy, lambda a=a: mod.saxpy(a, x, y)) == 5
        np.testing.assert_allclose(mod.saxpy(a, x, y), np.float32(a) * x + y, rtol=1e-6)
    results = [mod.saxpy(1.0, x, y) for _ in range(3)]
    assert len({id(r) for r in results}) == 3  # fresh outputs every call


def _outcome(kernel, *args):
    try:
        return kernel(*args)
    except (TypeError, ValueError, OverflowError) as exc:
        return type(exc)


def test_scalars_convert_like_the_python_path(mod):
    ref = tdsl.loads(SOURCE, target="reference", filename="native.tdsl")
    x = RNG.standard_normal(5).astype(np.float32)
    zero = np.zeros(5, np.float32)
    cases = [0.1, -0.0, 1e-45, 3.4e38, 16777217, -16777216, float("inf"), float("nan"),
             1e39, 2 ** 70, True, np.float64(0.1), np.float16(0.5), "1", None]
    for a in cases:
        mod.saxpy(1.0, x, zero)  # a plan for these shapes
        got, want = _outcome(mod.saxpy, a, x, zero), _outcome(ref.saxpy, a, x, zero)
        if isinstance(want, type):
            assert got is want, repr(a)
        else:
            np.testing.assert_array_equal(got, want, err_msg=repr(a))
    y = np.arange(-3, 4, dtype=np.int8)
    for k in (0, 5, -128, 127, np.int8(-7), 128, -129, 2 ** 64, 1.5, True):
        mod.shift(y, 1)
        got, want = _outcome(mod.shift, y, k), _outcome(ref.shift, y, k)
        if isinstance(want, type):
            assert got is want, repr(k)
        else:
            np.testing.assert_array_equal(got, want, err_msg=repr(k))


def test_f64_scalars_and_bools(mod):
    x = RNG.standard_normal(8)
    for w in (0.3, 2 ** 53, -(2 ** 53) - 1, np.float64(1e300), 7):
        np.testing.assert_array_equal(mod.scale(x, w), x * np.float64(w))
    m = RNG.standard_normal(9) > 0
    for _ in range(3):
        np.testing.assert_array_equal(mod.flip(m), ~m)


def test_rank0_outputs_and_tuples(mod):
    x = RNG.standard_normal((6, 4))
    assert _native_calls(mod.stats, lambda: mod.stats(x, 2)) == 5
    s, t = mod.stats(x, 2)
    np.testing.assert_allclose(s, x.sum(axis=0) + 2, rtol=1e-12)
    assert isinstance(t, np.float64) and t == pytest.approx(x.sum(), rel=1e-12)
    s_out, t_out = np.empty(4), np.empty(())
    assert _native_calls(mod.stats, lambda: mod.stats(x, 1, s=s_out, t=t_out)) == 5
    got = mod.stats(x, 1, t=t_out, s=s_out)  # names in another order
    assert got[0] is s_out and got[1] is t_out
    np.testing.assert_allclose(s_out, x.sum(axis=0) + 1, rtol=1e-12)
    s2, t2 = mod.stats(x, 1, t=t_out)  # one output given, one allocated: a new plan
    assert t2 is t_out and s2 is not s_out


def test_new_shapes_and_views_fall_back_then_plan(mod):
    base = RNG.standard_normal((12, 10))
    for x in (base, base.T, base[1:, ::2], base[:0], base[::-1]):
        for _ in range(3):
            s, t = mod.stats(x, 3)
            np.testing.assert_allclose(s, x.sum(axis=0) + 3, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(t, x.sum(), rtol=1e-12, atol=1e-12)
    assert _native_calls(mod.stats, lambda: mod.stats(base.T, 3)) == 5
    flipped = base[::-1]  # negative strides: always the Python path (a copy)
    assert _native_calls(mod.stats, lambda: mod.stats(flipped, 3)) == 0


def test_bad_calls_after_good_ones_are_refused_the_same_way(mod):
    x = RNG.standard_normal(10).astype(np.float32)
    mod.saxpy(1.0, x, x)
    with pytest.raises(TypeError, match="'x'"):
        mod.saxpy(1.0, x.astype(np.float64), x)
    with pytest.raises(ValueError, match="N"):
        mod.saxpy(1.0, x, x[:9])
    with pytest.raises(TypeError):
        mod.saxpy(1.0, x)
    with pytest.raises(TypeError):
        mod.saxpy(1.0, x, x, w=np.empty(10, np.float32))
    readonly = np.empty(10, np.float32)
    readonly.flags.writeable = False
    with pytest.raises((TypeError, ValueError)):
        mod.saxpy(1.0, x, x, z=readonly)
    np.testing.assert_allclose(mod.saxpy(2.0, x, x), 3 * x, rtol=1e-6)


def test_outputs_overlapping_inputs_stay_right(mod):
    x = RNG.standard_normal(16).astype(np.float32)
    y = RNG.standard_normal(16).astype(np.float32)
    want = 2 * x + y
    out = np.empty(16, np.float32)
    mod.saxpy(2.0, x, y, z=out)  # a plan with a given output
    mod.saxpy(2.0, x, y, z=y)  # the output is an input: detected, taken by the Python path
    np.testing.assert_allclose(y, want, rtol=1e-6)
    buffer = RNG.standard_normal(32).astype(np.float32)
    a, b = buffer[:16], buffer[8:24]
    want = 2 * a + b
    mod.saxpy(2.0, a, b, z=buffer[16:])  # partly overlapping b
    np.testing.assert_allclose(buffer[16:], want, rtol=1e-6)


def test_subclasses_lists_and_odd_objects(mod):
    x = RNG.standard_normal(5).astype(np.float32)
    mod.saxpy(1.0, x, x)

    class Sub(np.ndarray):
        pass

    np.testing.assert_allclose(mod.saxpy(1.0, x.view(Sub), x), 2 * x, rtol=1e-6)
    with pytest.raises(TypeError, match="'x'"):
        mod.saxpy(1.0, list(x), x)


def test_no_reference_leaks(mod):
    x = RNG.standard_normal(7).astype(np.float32)
    out = np.empty(7, np.float32)
    a = 1.5
    mod.saxpy(a, x, x, z=out)
    counts = [sys.getrefcount(o) for o in (x, out, a)]
    for _ in range(1000):
        mod.saxpy(a, x, x, z=out)
        mod.saxpy(a, x, x)
    assert [sys.getrefcount(o) for o in (x, out, a)] == counts
    r = mod.saxpy(a, x, x)
    assert sys.getrefcount(r) == 2  # only `r` (and getrefcount's argument)
    m = RNG.standard_normal((3, 2))
    s, t = mod.stats(m, 1)
    assert sys.getrefcount(s) == 2


def test_a_failed_allocation_falls_back(mod):
    x = RNG.standard_normal(4).astype(np.float32)
    mod.saxpy(1.0, x, x)
    entry = _entry(mod.saxpy)

    def refuse(*args, **kwargs):
        raise MemoryError("refused")

    saved = entry.table[pycall.NP_EMPTY]
    entry.table.keep.append(refuse)
    entry.table[pycall.NP_EMPTY] = id(refuse)
    try:
        before = entry.fallbacks
        np.testing.assert_allclose(mod.saxpy(1.0, x, x), 2 * x, rtol=1e-6)
        assert entry.fallbacks == before + 1  # the Python path allocated with np.empty
    finally:
        entry.table[pycall.NP_EMPTY] = saved


def test_threads_call_concurrently(mod):
    xs = [RNG.standard_normal(20000).astype(np.float32) for _ in range(4)]

    def work(index: int) -> None:
        for k in range(200):
            np.testing.assert_allclose(mod.saxpy(float(k), xs[index], xs[index]),
                                       (k + 1) * xs[index], rtol=1e-5)

    assert run_threads(work, 4) == []
    from tdsl.runtime import threads as runtime_threads

    assert runtime_threads._NATIVE_ACTIVE.value == 0
    assert runtime_threads._PYTHON_ACTIVE.value == 0


def test_kernel_objects_keep_their_api(mod):
    k = mod.saxpy
    k(1.0, np.ones(3, np.float32), np.ones(3, np.float32))
    assert isinstance(k, tdsl.api.Kernel)
    assert k.name == "saxpy" and "saxpy" in repr(k) and k.signature.name == "saxpy"
    assert type(k).__name__ == "Kernel"


def test_the_environment_switch(monkeypatch):
    monkeypatch.setenv("TDSL_NATIVE_CALLS", "0")
    m = tdsl.loads(SOURCE, filename="native-off.tdsl")
    x = np.ones(3, np.float32)
    np.testing.assert_allclose(m.saxpy(2.0, x, x), 3 * x)
    assert m.saxpy.executable().native is None
    assert type(m.saxpy) is tdsl.api.Kernel


def test_the_llvm_ir_has_the_entry():
    from tdsl.check import check_source
    from tdsl.pipelines import compile_to_llvm_ir

    program = check_source(SOURCE, "native.tdsl")
    text = compile_to_llvm_ir(program.kernels[0])
    assert f"define ptr @{pycall.native_symbol('saxpy')}(" in text


def test_threads_with_different_shapes_rewrite_the_plan_safely(mod):
    """Each thread's calls alternate shapes, so plans are rewritten while other threads call:
    every result must still be right and of the right shape."""
    sizes = [(5, 3), (64, 7), (1, 1), (300, 2)]
    arrays = [RNG.standard_normal(s) for s in sizes]

    def work(offset: int) -> None:
        for k in range(300):
            x = arrays[(k + offset) % len(arrays)]
            s, t = mod.stats(x, k % 5)
            assert s.shape == (x.shape[1],)
            np.testing.assert_allclose(s, x.sum(axis=0) + k % 5, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(t, x.sum(), rtol=1e-12, atol=1e-12)

    assert run_threads(work, 4) == []


def test_two_alternating_shapes_stay_native(mod):
    entry = _entry(mod.saxpy)
    a, b = (RNG.standard_normal(n).astype(np.float32) for n in (10, 1000))
    for x in (a, b, a, b):
        mod.saxpy(1.0, x, x)
    before = entry.fallbacks
    for _ in range(10):
        np.testing.assert_allclose(mod.saxpy(1.0, a, a), 2 * a, rtol=1e-6)
        np.testing.assert_allclose(mod.saxpy(1.0, b, b), 2 * b, rtol=1e-6)
    assert entry.fallbacks == before
    c = RNG.standard_normal(7).astype(np.float32)  # a third shape replaces one of the plans
    for x in (c, a, b, c):
        np.testing.assert_allclose(mod.saxpy(3.0, x, x), 4 * x, rtol=1e-6)

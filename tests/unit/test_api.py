"""The Python API and the call validation shared by every target."""

from __future__ import annotations

import threading

import ml_dtypes
import numpy as np
import pytest

import tdsl

SOURCE = """
# Row-wise softmax.
kernel softmax(x: f32[B, N]) -> (y: f32[B, N]) {
    m[b] = max[n](x[b, n])
    e[b, n] = exp(x[b, n] - m[b])
    s[b] = sum[n](e[b, n])
    y[b, n] = e[b, n] / s[b]
}

kernel saxpy(a: f32, x: f32[N], y: f32[N]) -> (z: f32[N]) {
    z = a * x + y
}

kernel stats(x: f64[N]) -> (lo: f64, hi: f64) {
    lo = min[i](x[i])
    hi = max[i](x[i])
}

kernel pairs(x: f32[N], y: f32[M]) -> (z: f32[N]) {
    z[i] = x[i] + y[i]
}

kernel scale_i8(x: i8[N], k: i8) -> (y: i8[N]) {
    y = x * k
}

kernel half(x: bf16[N]) -> (y: bf16[N]) {
    y = x * 2.0
}
"""

TARGETS = ["reference", "cpu"]


@pytest.fixture(scope="module", params=TARGETS)
def mod(request):
    return tdsl.loads(SOURCE, target=request.param, filename="api.tdsl")


def rand(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 1.5, shape).astype(dtype)


class TestModule:
    def test_kernels_are_attributes(self, mod):
        assert set(mod.kernels) == {"softmax", "saxpy", "stats", "pairs", "scale_i8", "half"}
        assert "softmax" in dir(mod)
        assert mod["saxpy"] is mod.saxpy

    def test_unknown_kernel(self, mod):
        with pytest.raises(AttributeError, match="no kernel 'nope'.*softmax"):
            mod.nope  # noqa: B018

    def test_signature_and_doc(self, mod):
        assert str(mod.softmax.signature) == "softmax(x: f32[B, N]) -> (y: f32[B, N])"
        assert mod.softmax.__doc__.startswith("Row-wise softmax.")
        assert "softmax(x: f32[B, N])" in mod.softmax.__doc__
        assert str(mod.saxpy.signature) == "saxpy(a: f32, x: f32[N], y: f32[N]) -> (z: f32[N])"

    def test_unknown_target(self):
        with pytest.raises(ValueError, match="unknown target 'tpu'"):
            tdsl.loads(SOURCE, target="tpu")

    def test_load_file(self, tmp_path):
        path = tmp_path / "k.tdsl"
        path.write_text("kernel neg(x: f32[N]) -> (y: f32[N]) { y = -x }\n")
        mod = tdsl.load(path, target="reference")
        x = rand(5)
        np.testing.assert_array_equal(mod.neg(x), -x)

    def test_errors_are_tdsl_errors(self):
        with pytest.raises(tdsl.TdslError) as info:
            tdsl.loads("kernel f(x: f32[N]) -> (y: f32[N]) { y[i] = x[k] }", "reference",
                       "f.tdsl")
        assert "f.tdsl:1:47: error: index 'k' is not defined" in str(info.value)


class TestCalls:
    def test_positional_keyword_and_scalar(self, mod):
        x, y = rand(7), rand(7, seed=1)
        np.testing.assert_allclose(mod.saxpy(2.0, x, y), 2 * x + y, rtol=1e-6)
        np.testing.assert_allclose(mod.saxpy(x=x, y=y, a=np.float32(3)), 3 * x + y, rtol=1e-6)
        np.testing.assert_allclose(mod.saxpy(2, x, y), 2 * x + y, rtol=1e-6)

    def test_strided_inputs(self, mod):
        big = rand(9, 14)
        x = big[::2, 1::3]
        want = np.exp(x - x.max(1, keepdims=True))
        want /= want.sum(1, keepdims=True)
        np.testing.assert_allclose(mod.softmax(x), want, rtol=1e-5)

    def test_out_argument_written_and_returned(self, mod):
        x, y = rand(6), rand(6, seed=2)
        out = np.zeros(6, np.float32)
        got = mod.saxpy(2.0, x, y, z=out)
        assert got is out
        np.testing.assert_allclose(out, 2 * x + y, rtol=1e-6)

    def test_strided_out(self, mod):
        x, y = rand(5), rand(5, seed=2)
        buf = np.zeros(10, np.float32)
        mod.saxpy(1.0, x, y, z=buf[::2])
        np.testing.assert_allclose(buf[::2], x + y, rtol=1e-6)
        assert not buf[1::2].any()

    def test_out_aliasing_input(self, mod):
        x = rand(4, 9)
        want = np.exp(x - x.max(1, keepdims=True))
        want /= want.sum(1, keepdims=True)
        mod.softmax(x, y=x)
        np.testing.assert_allclose(x, want, rtol=1e-5)

    def test_multiple_outputs_and_rank0(self, mod):
        x = rand(11, dtype=np.float64)
        lo, hi = mod.stats(x)
        assert isinstance(lo, np.float64) and lo == x.min() and hi == x.max()

    def test_bfloat16(self, mod):
        x = rand(5).astype(ml_dtypes.bfloat16)
        y = mod.half(x)
        assert y.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(y.astype(np.float32), x.astype(np.float32) * 2)

    def test_non_native_byte_order_input(self, mod):
        x = rand(3, 4).astype(">f4")
        got = mod.softmax(x)
        want = np.exp(x - x.max(1, keepdims=True))
        np.testing.assert_allclose(got, want / want.sum(1, keepdims=True), rtol=1e-5)

    def test_subclass_input(self, mod):
        x = rand(3, 4).view(np.matrix)
        assert mod.softmax(x).shape == (3, 4)

    def test_many_threads(self, mod):
        x = rand(16, 33)
        want = mod.softmax(x)
        errors = []

        def work():
            for _ in range(20):
                if not np.array_equal(mod.softmax(x), want):
                    errors.append("mismatch")

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors


class TestBadCalls:
    """Each bad call names the parameter, the expected and the actual value, and touches
    nothing: a given output keeps its contents."""

    def check(self, mod, kernel, exc, pattern, *args, **kwargs):
        outs = {k: v for k, v in kwargs.items() if isinstance(v, np.ndarray) and v.flags.writeable}
        before = {k: v.copy() for k, v in outs.items()}
        with pytest.raises(exc, match=pattern):
            getattr(mod, kernel)(*args, **kwargs)
        for k, v in outs.items():
            np.testing.assert_array_equal(v, before[k])

    def test_wrong_dtype(self, mod):
        out = np.full((2, 3), 7.0, np.float32)
        self.check(mod, "softmax", TypeError,
                   r"argument 'x' must have dtype f32 \(f32\[B, N\]\), got float64 array of "
                   r"shape \(2, 3\).*astype\(np.float32\)", np.ones((2, 3)), y=out)

    def test_wrong_rank(self, mod):
        self.check(mod, "softmax", ValueError, r"argument 'x' must have rank 2 \(f32\[B, N\]\),"
                   r" got float32 array of shape \(6,\)", rand(6))

    def test_symbol_bound_twice(self, mod):
        out = np.full(4, 7.0, np.float32)
        self.check(mod, "saxpy", ValueError, r"argument 'y' has N = 5 in dimension 0.*'x' "
                   r"bound N = 4", 1.0, rand(4), rand(5), z=out)

    def test_failed_call_time_condition(self, mod):
        out = np.full(6, 7.0, np.float32)
        self.check(mod, "pairs", ValueError, r"subscript i of 'y'.*M - N >= 0.*M = 4, N = 6",
                   rand(6), rand(4), z=out)

    def test_condition_holds(self, mod):
        x, y = rand(3), rand(5)
        np.testing.assert_allclose(mod.pairs(x, y), x + y[:3], rtol=1e-6)

    def test_read_only_out(self, mod):
        out = np.zeros(3, np.float32)
        out.flags.writeable = False
        self.check(mod, "saxpy", ValueError, "output 'z' is read-only", 1.0, rand(3), rand(3),
                   z=out)

    def test_out_wrong_shape_and_dtype(self, mod):
        out = np.full(4, 7.0, np.float32)
        self.check(mod, "saxpy", ValueError, r"output 'z' must have shape \(3,\)", 1.0,
                   rand(3), rand(3), z=out)
        out64 = np.full(3, 7.0)
        self.check(mod, "saxpy", TypeError, r"output 'z' must have dtype f32", 1.0, rand(3),
                   rand(3), z=out64)

    def test_missing_and_unknown_arguments(self, mod):
        out = np.full(3, 7.0, np.float32)
        self.check(mod, "saxpy", TypeError, r"missing argument 'y' \(f32\[N\]\)", 1.0, rand(3),
                   z=out)
        self.check(mod, "saxpy", TypeError, r"unexpected argument 'w'.*inputs are a, x, y; "
                   "outputs are z", 1.0, rand(3), rand(3), w=out)
        self.check(mod, "saxpy", TypeError, "takes 3 positional arguments", 1.0, rand(3),
                   rand(3), rand(3))
        self.check(mod, "saxpy", TypeError, "multiple values for argument 'x'", 1.0, rand(3),
                   rand(3), x=rand(3))

    def test_bad_scalars(self, mod):
        self.check(mod, "saxpy", TypeError, r"argument 'a' must be f32, got str", "2", rand(3),
                   rand(3))
        self.check(mod, "saxpy", TypeError, r"argument 'a' must be f32, got numpy float64",
                   np.float64(2), rand(3), rand(3))
        x8 = np.ones(3, np.int8)
        self.check(mod, "scale_i8", TypeError, r"argument 'k' must be i8, got float", x8, 2.5)
        self.check(mod, "scale_i8", ValueError, r"argument 'k' = 300 is out of range for i8",
                   x8, 300)
        self.check(mod, "scale_i8", TypeError, r"argument 'k' must be i8, got bool", x8, True)

    def test_not_an_array(self, mod):
        self.check(mod, "softmax", TypeError, r"argument 'x' must be a numpy array of "
                   r"f32\[B, N\], got list", [[1.0, 2.0]])
        obj = np.empty((2, 2), dtype=object)
        self.check(mod, "softmax", TypeError, "argument 'x' must have dtype f32", obj)

    def test_element_count_overflow(self):
        mod = tdsl.loads("kernel big(x: f32[N]) -> (y: f32[N, 4294967296, 4294967296]) {\n"
                         "    y[i, j, k] = x[i]\n}", target="reference")
        with pytest.raises(ValueError, match="output 'y' of shape .* has more elements than "
                           "a 64-bit index can address"):
            mod.big(rand(2))

    def test_output_too_large_is_memory_error(self):
        mod = tdsl.loads("kernel big(x: f32[N]) -> (y: f32[N, 1048576, 1048576]) {\n"
                         "    y[i, j, k] = x[i]\n}", target="reference")
        with pytest.raises(MemoryError, match="cannot allocate output 'y'"):
            mod.big(rand(2))

"""Hostile programs and hostile calls.

Programs: huge literals and constant expressions, unicode of every kind, names that shadow
builtins, deep nesting through fns and lets, very many items, undecodable files. Each ends in
a located diagnostic (or compiles), never a traceback, a hang or a crash. (Random text, token
soups, mutated samples and deep syntax are in test_frontend_fuzz.py.)

Calls, on every target: element counts that overflow i64, outputs and local tensors too large
to allocate, byte order, object and structured arrays, read-only and broadcast outputs,
outputs aliasing inputs or each other, ndarray subclasses, empty arrays, zero strides, strides
and offsets beyond 2**31, and Python scalars that need rounding.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
import gen  # noqa: E402
from guarded import guarded_copy, guarded_empty  # noqa: E402
from test_frontend_fuzz import SAMPLES, check_never_crashes  # noqa: E402

import tdsl  # noqa: E402
from tdsl.check import check_source  # noqa: E402
from tdsl.source import TdslError  # noqa: E402

TARGETS = ["reference"] + gen.api_targets()


def kernel(expr: str, head: str = "") -> str:
    return f"{head}kernel k(x: f32[N]) -> (y: f32[N]) {{\n    y[i] = {expr}\n}}\n"


def error_of(text: str) -> str:
    """The first diagnostic's message ('' when the program is accepted)."""
    try:
        check_source(text, "hostile.tdsl")
    except TdslError as exc:  # every diagnostic is located in the text and renders
        assert exc.diagnostics
        assert all(0 <= d.span.start <= len(text) + 1 and d.message for d in exc.diagnostics)
        assert exc.render().count(": error: ") >= len(exc.diagnostics)
        return exc.diagnostics[0].message
    return ""


# ---- literals and constant expressions -----------------------------------------------------

LITERALS = {
    "5000-digit integer": (kernel("x[i] + f32(1" + "0" * 5000 + ")"), "integer literal too large"),
    "100000 hex digits": (kernel("x[i] + f32(0x" + "F" * 100_000 + ")"),
                          "integer literal too large"),
    "leading zeros": (kernel("x[i] + " + "0" * 5000 + "1"), ""),
    "power tower": (kernel("x[i] + f32(2 ** 2 ** 40)"), "integer constant too large"),
    "power of a big base": (kernel("x[i] + f32(9223372036854775807 ** 9999)"),
                            "integer constant too large"),
    "2**2000 as a float operand": (kernel("x[i] * (2 ** 2000)"), ""),
    "2**2000 cast": (kernel("f32(2 ** 2000)"), ""),
    "2**2000 in a builtin": (kernel("x[i] + exp(2 ** 2000)"), ""),
    "2**2000 plus a float": (kernel("x[i] + ((2 ** 2000) + 0.5)"), ""),
    "2**2000 wrapped to i8": (kernel("f32(i8(2 ** 2000 + 3))"), ""),
    "2**2000 as i64": (kernel("f32(x[i] > 0.0) + f32(i64(1) + 2 ** 2000)"), "does not fit in i64"),
    "exponent overflow": (kernel("x[i] + 1e99999999999999999999"), ""),
    "exponent underflow": (kernel("x[i] + 1e-99999999999999999999"), ""),
    "long float": (kernel("x[i] + 0." + "3" * 100_000), ""),
    "huge subscript": (kernel("x[i + 99999999999999999999]"), "too large"),
    "huge extent": (kernel("sum[k: 99999999999999999999](x[k])"), "too large"),
    "huge dimension": ("kernel k(x: f32[N]) -> (y: f32[N * 99999999999999999999]) "
                       "{ y[i] = 1.0 }", "too large"),
}


@pytest.mark.parametrize("name", LITERALS)
def test_huge_literals(name):
    text, expected = LITERALS[name]
    message = error_of(text)
    assert (expected in message) if expected else message == "", (name, message)


def test_huge_constants_fold_to_the_cast_rules():
    mod = tdsl.loads("kernel k(x: f32[N]) -> (a: f32[N], b: i8[N], c: f64[N], d: f64[N]) {\n"
                     "    a[i] = x[i] * (2 ** 2000)\n    b[i] = i8(2 ** 2000 + 3)\n"
                     "    c[i] = f64(2 ** 1024 - 2 ** 970 - 1) + f64(i) * 0.0\n"
                     "    d[i] = f64(2 ** 1024 - 2 ** 970) + f64(i) * 0.0\n}\n",
                     target="reference")
    a, b, c, d = mod.k(np.array([1.0, -1.0, 0.0], np.float32))
    assert a[0] == np.inf and a[1] == -np.inf and np.isnan(a[2])
    assert b.tolist() == [3, 3, 3]
    assert c[0] == np.finfo(np.float64).max  # just below half an ulp past the largest f64
    assert d[0] == np.inf  # half an ulp past it: ties to even, i.e. to inf


# ---- unicode -------------------------------------------------------------------------------

UNICODE = {
    "byte order mark": ("\ufeff" + kernel("x[i]"), "unexpected character"),
    "NUL": (kernel("x[i]\x00"), "unexpected character"),
    "zero-width space in a name": (kernel("x\u200b[i]"), "unexpected character"),
    "no-break space": (kernel("x[i]\u00a0+ 1.0"), "unexpected character"),
    "fullwidth digit": (kernel("x[i] + \uff11"), "unexpected character"),
    "arabic-indic digit": (kernel("x[i] + \u0663.0"), "unexpected character"),
    "greek parameter": ("kernel k(\u03b1: f32[N]) -> (y: f32[N]) { y = \u03b1 }",
                        "unexpected character"),
    "emoji": (kernel("x[i] + \U0001F600"), "unexpected character"),
    "combining accent": (kernel("x\u0301[i]"), "unexpected character"),
    "lone surrogate": (kernel("x[i] + \ud800"), "unexpected character"),
    "vertical tab": (kernel("x[i] +\x0b 1.0"), "unexpected character"),
    "right-to-left override in a comment": (kernel("x[i] # \u202e evil"), ""),
    "unicode comment": ("# h\u00e9llo \u2713 \U0001F600\n" + kernel("x[i]"), ""),
    "CRLF lines": (kernel("x[i]").replace("\n", "\r\n"), ""),
    "CR lines": (kernel("x[i]").replace("\n", "\r"), ""),
    "tabs": (kernel("x[i]").replace("    ", "\t"), ""),
    "form feed": (kernel("x[i]\x0c"), ""),
}


@pytest.mark.parametrize("name", UNICODE)
def test_unicode(name):
    text, expected = UNICODE[name]
    message = error_of(text)
    assert (expected in message) if expected else message == "", (name, message)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SAMPLES), st.lists(st.tuples(st.floats(0, 1), st.characters()),
                                          min_size=1, max_size=4))
def test_unicode_inserted_into_samples(text, insertions):
    for where, char in insertions:
        at = int(where * len(text))
        text = text[:at] + char + text[at:]
    check_never_crashes(text)


def test_undecodable_file_is_a_located_error(tmp_path):
    path = tmp_path / "bad.tdsl"
    path.write_bytes(b"kernel k(x: f32[N]) -> (y: f32[N]) { y = x }\n# caf\xe9\n")
    with pytest.raises(TdslError) as info:
        tdsl.load(path, target="reference")
    assert "bad.tdsl:2:6: error: not UTF-8 text" in str(info.value)


def test_cli_never_shows_a_traceback(tmp_path):
    files = {"bytes.tdsl": b"\xff\xfe\x00garbage", "deep.tdsl": kernel(
        "-" * 10_000 + "x[i]").encode(), "huge.tdsl": kernel(
        "x[i] + f32(2 ** 2 ** 40)").encode()}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        done = subprocess.run([sys.executable, "-m", "tdsl", "check", str(tmp_path / name)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and "Traceback" not in done.stderr, (name, done.stderr)
        assert "error" in done.stderr, (name, done.stderr)


# ---- names that shadow builtins ------------------------------------------------------------

SHADOWING = {
    "parameter exp": ("kernel k(exp: f32[N]) -> (y: f32[N]) { y = exp }", "built-in function"),
    "parameter sum": ("kernel k(sum: f32[N]) -> (y: f32[N]) { y = sum }", "reduction"),
    "parameter f32": ("kernel k(f32: f32[N]) -> (y: f32[N]) { y = f32 }", "dtype name"),
    "output select": ("kernel k(x: f32[N]) -> (select: f32[N]) { select = x }",
                      "built-in function"),
    "symbol pi": ("kernel k(x: f32[pi]) -> (y: f32[pi]) { y = x }", "built-in constant"),
    "symbol i8": ("kernel k(x: f32[i8]) -> (y: f32[i8]) { y = x }", "dtype name"),
    "index sum": (kernel("x[i] + sum[sum](x[sum])"), "reduction"),
    "index nan": ("kernel k(x: f32[N]) -> (y: f32[N]) { y[nan] = x[nan] }", "constant"),
    "local max": ("kernel k(x: f32[N]) -> (y: f32[N]) {\n max[i] = x[i]\n y = x }",
                  "built-in function"),
    "let exp": ("kernel k(x: f32[N]) -> (y: f32[N]) {\n let exp = 1.0\n y = x }",
                "built-in function"),
    "let true": ("kernel k(x: f32[N]) -> (y: f32[N]) {\n let true = 1.0\n y = x }", ""),
    "fn exp": ("fn exp(a: f32) -> f32 { return a }\n" + kernel("exp(x[i])"),
               "built-in function"),
    "fn bool": ("fn bool(a: f32) -> f32 { return a }\n" + kernel("x[i]"), "dtype name"),
    "fn parameter relu": ("fn g(relu: f32) -> f32 { return relu }\n" + kernel("g(x[i])"),
                          "built-in function"),
    "fn let inf": ("fn g(a: f32) -> f32 {\n let inf = a\n return inf }\n" + kernel("g(x[i])"),
                   "built-in constant"),
    "kernel mean": ("kernel mean(x: f32[N]) -> (y: f32[N]) { y = x }", "reduction"),
    "kernel true": ("kernel true(x: f32[N]) -> (y: f32[N]) { y = x }", ""),
    "fn named like the kernel": ("fn k(a: f32) -> f32 { return a }\n" + kernel("x[i]"),
                                 "already defined"),
    "a kernel called like a fn": ("kernel g(x: f32[N]) -> (y: f32[N]) { y = x }\n"
                                  + kernel("g(x[i])"), "unknown function 'g'"),
    "index named like a tensor": ("kernel k(x: f32[N]) -> (y: f32[N]) { y[x] = 1.0 }",
                                  "is a tensor"),
    "index named like a symbol": ("kernel k(x: f32[N]) -> (y: f32[N]) { y[N] = x[N] }",
                                  "shape symbol"),
    "builtin as a value": (kernel("exp + x[i]"), "unknown name 'exp'"),
    "dtype as a value": (kernel("f32 + x[i]"), "unknown name 'f32'"),
    "names differing in case": ("kernel k(x: f32[N], X: f32[n]) -> (Y: f32[N], y: f32[n]) "
                                "{\n Y = x\n y = X\n}", ""),
    "builtin-like names": ("kernel k(Exp: f32[N], sum_: f32[N], f33: f32[N]) -> "
                           "(y: f32[N]) { y = Exp + sum_ + f33 }", ""),
}


@pytest.mark.parametrize("name", SHADOWING)
def test_names_shadowing_builtins(name):
    text, expected = SHADOWING[name]
    message = error_of(text)
    if name in ("let true", "kernel true"):
        assert message, name  # a keyword: a syntax error
        return
    assert (expected in message) if expected else message == "", (name, message)


# ---- deep nesting and many items -----------------------------------------------------------

DEEP = {
    "10000 chained lets in a fn": (
        "fn g(a: f32) -> f32 {\n" + "".join(f"    let v{n} = v{n - 1} + 1.0\n" if n else
                                            "    let v0 = a\n" for n in range(10_000))
        + "    return v9999\n}\n" + kernel("g(x[i])"), "nested too deeply once fn 'g'"),
    "lets that double (2**40 terms)": (
        "fn g(a: f32) -> f32 {\n" + "".join(f"    let v{n} = v{n - 1} * v{n - 1}\n" if n
                                            else "    let v0 = a\n" for n in range(41))
        + "    return v40\n}\n" + kernel("g(x[i])"), "expression too large once fn 'g'"),
    "parameters that double (2**40 terms)": (
        "fn g(a: f32) -> f32 { return a * a }\n" + kernel("g(" * 40 + "x[i]" + ")" * 40),
        "expression too large once fn 'g'"),
    "10000 nested selects": (kernel("select(true, " * 10_000 + "x[i]" + ", 0.0)" * 10_000),
                             "nested too deeply"),
    "10000 nested fn calls": ("fn g(a: f32) -> f32 { return a }\n"
                              + kernel("g(" * 10_000 + "x[i]" + ")" * 10_000),
                              "nested too deeply"),
    "10000 parentheses in a dimension": (
        "kernel k(x: f32[" + "(" * 10_000 + "N" + ")" * 10_000 + "]) -> (y: f32[N]) "
        "{ y = x }", ""),
    "10000 parentheses in an extent": (kernel("sum[k: " + "(" * 10_000 + "N" + ")" * 10_000
                                              + "](x[k])"), ""),
    "10000 unary plus": (kernel("+" * 10_000 + "x[i]"), "nested too deeply"),
    "rank 200": ("kernel k(x: f32[" + ", ".join(["N"] * 200) + "]) -> (y: f32[N]) "
                 "{ y[i] = x[" + ", ".join(["i"] * 200) + "] }", ""),
    "2000 parameters": ("kernel k(" + ", ".join(f"x{n}: f32[N]" for n in range(2000))
                        + ") -> (y: f32[N]) { y = x1999 }", ""),
    "2000 outputs": ("kernel k(x: f32[N]) -> (" + ", ".join(f"y{n}: f32[N]" for n in
                                                          range(2000))
                     + ") { " + "; ".join(f"y{n} = x" for n in range(2000)) + " }", ""),
    "2000 kernels": ("".join(f"kernel k{n}(x: f32[N]) -> (y: f32[N]) {{ y = x }}\n"
                             for n in range(2000)), ""),
    "2000 fns": ("".join(f"fn g{n}(a: f32) -> f32 {{ return a }}\n" for n in range(2000))
                 + kernel("g1999(x[i])"), ""),
    "a 1 MB name": (kernel("x[i] + " + "a" * 1_000_000), "unknown name"),
    "100000 semicolons": ("kernel k(x: f32[N]) -> (y: f32[N]) {" + ";" * 100_000 + "y = x }",
                          ""),
}


@pytest.mark.parametrize("name", DEEP)
def test_deep_and_many(name):
    text, expected = DEEP[name]
    message = error_of(text)
    assert (expected in message) if expected else message == "", (name, message)


def test_source_over_the_limit():
    assert "source too large" in error_of("#" * 10_000_001)


def test_fn_at_the_depth_limit_runs():
    """A let chain just inside the limit checks and runs on every target."""
    text = ("fn g(a: f32) -> f32 {\n" + "".join(f"    let v{n} = v{n - 1} + 1.0\n" if n else
                                                "    let v0 = a\n" for n in range(150))
            + "    return v149\n}\n" + kernel("g(x[i])"))
    for target in TARGETS:
        got = tdsl.loads(text, target=target).k(np.zeros(3, np.float32))
        assert got.tolist() == [149.0] * 3, target


# ---- hostile calls -------------------------------------------------------------------------

CALLS = """
kernel softmax(x: f32[B, N]) -> (y: f32[B, N]) {
    m[b] = max[n](x[b, n])
    e[b, n] = exp(x[b, n] - m[b])
    s[b] = sum[n](e[b, n])
    y[b, n] = e[b, n] / s[b]
}
kernel shift(x: f64[N]) -> (y: f64[N]) {
    y[i] = x[N - 1 - i] * 2.0
}
kernel two(x: f64[N]) -> (y: f64[N], z: f64[N]) {
    y = x + 1.0
    z = x * 3.0
}
kernel rowsum(x: f64[M, N]) -> (s: f64[M], lo: f64[M], p: f64[M]) {
    s[i] = sum[j](x[i, j])
    lo[i] = min[j](x[i, j])
    p[i] = prod[j](x[i, j])
}
kernel tail(x: i8[N], w: i8[M]) -> (y: i8[M]) {
    y[i] = x[N - 1 - i]
}
kernel cube(x: f32[N]) -> (y: f32[N, N, N]) {
    y[i, j, m] = x[i]
}
kernel square(x: f32[N]) -> (y: f32[N, N]) {
    y[i, j] = x[i] * x[j]
}
kernel local_square(x: f32[N]) -> (y: f32) {
    t[i, j]: f32[N, N] = x[i] * x[j]
    y = t[1, 2]
}
kernel local_cube(x: f32[N]) -> (y: f32) {
    t[i, j, m]: f32[N, N, N] = x[i] * x[j]
    y = t[1, 2, 3]
}
kernel scalars(a: f32, b: bf16, c: f16, d: i8) -> (y: f32, z: bf16, w: f16, v: i8) {
    y = a
    z = b
    w = c
    v = d
}
"""


@pytest.fixture(scope="module", params=TARGETS)
def mod(request):
    return tdsl.loads(CALLS, target=request.param, filename="calls.tdsl")


@pytest.fixture(scope="module")
def ref():
    return tdsl.loads(CALLS, target="reference", filename="calls.tdsl")


def rand(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).uniform(-2, 2, shape).astype(dtype)


# A zero-stride input with 2**22 elements costs nothing and binds N = 2**22.
WIDE = np.broadcast_to(np.float32(1.0), (2**22,))


def test_element_count_overflowing_i64(mod):
    with pytest.raises(ValueError, match=r"output 'y' of shape \(4194304, 4194304, 4194304\) "
                       "has more elements than a 64-bit index can address"):
        mod.cube(WIDE)


def test_output_too_large_to_allocate(mod):
    with pytest.raises(MemoryError, match=r"cannot allocate output 'y' of shape \(4194304, "
                       r"4194304\)"):
        mod.square(WIDE)


def test_local_too_large_to_allocate(mod):
    """Refused before the kernel runs (a compiled kernel would dereference a failed
    allocation)."""
    with pytest.raises(MemoryError, match=r"local tensor 't' of shape \(4194304, 4194304\) "
                       r"\(f32\) needs 70368744177664 bytes"):
        mod.local_square(WIDE)
    with pytest.raises(ValueError, match="local tensor 't' .* more elements than a 64-bit "
                       "index can address"):
        mod.local_cube(WIDE)
    assert mod.local_square(np.arange(4, dtype=np.float32)) == 2.0


def test_byte_order(mod, ref):
    x = rand(3, 5)
    np.testing.assert_allclose(mod.softmax(x.astype(">f4")), ref.softmax(x), rtol=1e-6)
    out = np.full((3, 5), 7, ">f4")
    with pytest.raises(TypeError, match="output 'y' must have dtype f32 in native byte order, "
                       r"got float32 \(non-native byte order\) array"):
        mod.softmax(x, y=out)
    assert (out == 7).all()


def test_object_and_structured_arrays(mod):
    with pytest.raises(TypeError, match="argument 'x' must have dtype f32"):
        mod.softmax(np.empty((2, 2), dtype=object))
    with pytest.raises(TypeError, match="output 'y' must have dtype f32"):
        mod.softmax(rand(2, 2), y=np.empty((2, 2), dtype=object))
    with pytest.raises(TypeError, match="argument 'x' must have dtype f32"):
        mod.softmax(np.zeros((2, 2), dtype=[("a", "f4")]))
    with pytest.raises(TypeError, match="must be a numpy array"):
        mod.softmax([[1.0, 2.0]])


def test_read_only_and_broadcast_outputs(mod):
    x = rand(2, 3)
    out = np.full((2, 3), 7, np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="output 'y' is read-only"):
        mod.softmax(x, y=out)
    assert (out == 7).all()
    with pytest.raises(ValueError, match="output 'y' is read-only"):
        mod.softmax(x, y=np.broadcast_to(np.float32(0), (2, 3)))


def test_outputs_aliasing_inputs(mod, ref):
    x = rand(4, 9)
    want = ref.softmax(x)
    same = x.copy()
    assert mod.softmax(same, y=same) is same
    np.testing.assert_allclose(same, want, rtol=1e-6)
    fortran = np.asfortranarray(x)
    mod.softmax(fortran, y=fortran)
    np.testing.assert_allclose(fortran, want, rtol=1e-6)
    for lo, hi in ((0, 1), (1, 0)):  # partial overlaps, either way
        buf = rand(11, dtype=np.float64, seed=lo)
        x1, y1 = buf[lo:lo + 10], buf[hi:hi + 10]
        expected = ref.shift(x1.copy())
        mod.shift(x1, y=y1)
        np.testing.assert_array_equal(y1, expected)
    buf = rand(6, dtype=np.float64)  # the same memory seen as another array object
    expected = ref.shift(buf.copy())
    mod.shift(buf, y=buf.view(np.int64).view(np.float64))
    np.testing.assert_array_equal(buf, expected)


def test_outputs_aliasing_each_other(mod):
    """Both are computed; they are written in signature order, so the last one wins."""
    x = rand(5, dtype=np.float64)
    out = np.zeros(5)
    mod.two(x, y=out, z=out)
    np.testing.assert_array_equal(out, x * 3.0)


def test_ndarray_subclasses(mod, ref):
    x = rand(3, 4)
    want = ref.softmax(x)

    class Sub(np.ndarray):
        pass

    np.testing.assert_allclose(mod.softmax(x.view(np.matrix)), want, rtol=1e-6)
    np.testing.assert_allclose(mod.softmax(x.view(Sub)), want, rtol=1e-6)
    masked = np.ma.masked_array(x, mask=x > 0)  # viewed as an ndarray: the mask is ignored
    np.testing.assert_allclose(mod.softmax(masked), want, rtol=1e-6)
    out = np.zeros((3, 4), np.float32).view(Sub)
    assert mod.softmax(x, y=out) is out
    np.testing.assert_allclose(out, want, rtol=1e-6)


def test_memory_mapped_arrays(mod, ref, tmp_path):
    x = np.memmap(tmp_path / "x.bin", dtype=np.float32, mode="w+", shape=(3, 4))
    x[:] = rand(3, 4)
    out = np.memmap(tmp_path / "y.bin", dtype=np.float32, mode="w+", shape=(3, 4))
    mod.softmax(x, y=out)
    np.testing.assert_allclose(out, ref.softmax(np.asarray(x)), rtol=1e-6)


@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (0, 0)])
def test_empty_arrays(mod, shape):
    x = guarded_copy(np.zeros(shape, np.float32), "end")
    assert mod.softmax(x).shape == shape
    s, lo, p = mod.rowsum(guarded_copy(np.zeros(shape), "start"))
    assert s.tolist() == [0.0] * shape[0] and p.tolist() == [1.0] * shape[0]
    assert lo.tolist() == [np.inf] * shape[0]
    assert mod.shift(np.zeros(0)).shape == (0,)


def test_zero_strides(mod, ref):
    row = np.broadcast_to(rand(1, 9), (5, 9))
    np.testing.assert_allclose(mod.softmax(row), ref.softmax(np.ascontiguousarray(row)),
                               rtol=1e-6)
    s, lo, p = mod.rowsum(np.broadcast_to(np.float64(1.5), (3, 1000)))
    assert s.tolist() == [1500.0] * 3 and lo.tolist() == [1.5] * 3
    column = np.broadcast_to(np.arange(3.0)[:, None], (3, 4))
    assert mod.rowsum(column)[0].tolist() == [0.0, 4.0, 8.0]


def _sparse(nbytes: int) -> mmap.mmap:
    """An anonymous mapping: pages cost memory only once touched."""
    return mmap.mmap(-1, nbytes)


def test_strides_beyond_2_31_bytes(mod):
    step = 2**31 + 8
    data, out = _sparse(2 * step + 8), _sparse(2 * step + 8)
    x = np.ndarray((3,), np.float64, buffer=data, strides=(step,))
    x[:] = [1.0, 2.0, 3.0]
    y = np.ndarray((3,), np.float64, buffer=out, strides=(step,))
    mod.shift(x, y=y)
    assert y.tolist() == [6.0, 4.0, 2.0]
    rows = np.ndarray((2, 2), np.float64, buffer=data, strides=(step, 8))
    rows[:] = [[1.0, 2.0], [3.0, 4.0]]
    assert mod.rowsum(rows)[0].tolist() == [3.0, 7.0]


def test_offsets_beyond_2_31_elements(mod):
    n = 2**31 + 16
    data = _sparse(n)
    x = np.frombuffer(data, np.int8)
    x[-4:] = [1, 2, 3, 4]
    assert mod.tail(x, np.zeros(4, np.int8)).tolist() == [4, 3, 2, 1]


def test_scalars_round_once_like_literals(mod):
    y, z, w, v = mod.scalars(2**60 + 2**36 + 1, 1 + 2**-8 + 2**-40, 65520, -128)
    assert y == np.float32(1.1529216e18)  # one rounding (through f64 would give 2**60)
    assert z == ml_dtypes.bfloat16(1.0078125)  # through f32 would give 1.0
    assert np.isinf(w) and v == -128
    y, z, w, _ = mod.scalars(2**2000, -1e300, -1e10, 0)
    assert y == np.inf and z == -np.inf and w == -np.inf
    with pytest.raises(ValueError, match="argument 'd' = 128 is out of range for i8"):
        mod.scalars(1.0, 1.0, 1.0, 128)
    with pytest.raises(TypeError, match="argument 'a' must be f32, got complex"):
        mod.scalars(1j, 1.0, 1.0, 1)
    with pytest.raises(TypeError, match="argument 'd' must be i8, got float"):
        mod.scalars(1.0, 1.0, 1.0, 1.5)


def test_guarded_hostile_shapes(mod, ref):
    """Odd shapes against guard pages on both sides: nothing is read or written outside."""
    for shape in [(1, 1), (1, 17), (17, 1), (3, 4097)]:
        for at in ("start", "end"):
            x = guarded_copy(rand(*shape), at)
            out = guarded_empty(shape, np.float32, at)
            mod.softmax(x, y=out)
            np.testing.assert_allclose(out, ref.softmax(np.array(x)), rtol=1e-6)


def test_hostile_call_in_a_subprocess_does_not_crash(tmp_path):
    """The process survives every refused call (a crash would be a signal exit)."""
    code = textwrap.dedent(f"""
        import numpy as np, tdsl
        mod = tdsl.loads({CALLS!r}, target={TARGETS[-1]!r})
        wide = np.broadcast_to(np.float32(1.0), (2**22,))
        for name in ("cube", "square", "local_square", "local_cube"):
            try:
                getattr(mod, name)(wide)
            except (ValueError, MemoryError) as exc:
                print(name, type(exc).__name__)
        """)
    env = {**os.environ, "TDSL_CACHE": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["cube", "ValueError", "square", "MemoryError",
                                   "local_square", "MemoryError", "local_cube", "ValueError"]

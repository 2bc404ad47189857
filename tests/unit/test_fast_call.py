"""The fast call path of CPU kernels: a plan per set of dtypes, shapes and strides, made after
a full validation, then calls that only pass the arrays (their data pointers are read in
machine code). Every call must give what the full path gives and refuse what it refuses."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from concurrent_work import run_threads  # noqa: E402

import tdsl  # noqa: E402
import tdsl.runtime.signature  # noqa: E402
from tdsl.runtime import cpu  # noqa: E402

SOURCE = """
kernel saxpy(a: f32, x: f32[N], y: f32[N]) -> (z: f32[N]) { z = a * x + y }
kernel colsum(x: f64[N, M]) -> (s: f64[M], t: f64) {
    s[j] = sum[i](x[i, j])
    t = sum[i, j](x[i, j])
}
kernel shift(x: i8[N], k: i8) -> (y: i8[N]) { y = x + k }
"""

RNG = np.random.default_rng(5)


@pytest.fixture(scope="module")
def mod():
    return tdsl.loads(SOURCE, filename="fast.tdsl")


def _count_binds(monkeypatch) -> list[int]:
    calls = [0]
    real = tdsl.runtime.signature.Signature.bind

    def counting(self, args, kwargs):
        calls[0] += 1
        return real(self, args, kwargs)

    monkeypatch.setattr(tdsl.runtime.signature.Signature, "bind", counting)
    return calls


def test_repeated_calls_skip_validation_and_stay_right(mod, monkeypatch):
    x = RNG.standard_normal(37).astype(np.float32)
    y = RNG.standard_normal(37).astype(np.float32)
    first = mod.saxpy(2.5, x, y)
    binds = _count_binds(monkeypatch)
    results = [mod.saxpy(np.float32(1.5), x, y) for _ in range(5)]
    assert binds[0] <= 1  # one plan for a numpy scalar, then none
    for r in results:
        np.testing.assert_allclose(r, np.float32(1.5) * x + y, rtol=1e-6)
    assert len({id(r) for r in results}) == len(results)  # fresh outputs every call
    np.testing.assert_allclose(first, np.float32(2.5) * x + y, rtol=1e-6)
    assert cpu._DATA_OFFSET is not None
    assert mod.saxpy.executable()._plans


@pytest.mark.parametrize("view", ["transposed", "reversed", "unaligned", "offset", "empty"])
def test_views_and_shapes_alternate(mod, view):
    base = RNG.standard_normal((9, 7))
    if view == "transposed":
        x = base.T
    elif view == "reversed":
        x = base[::-1, ::2]  # negative strides: copied by the full path
    elif view == "unaligned":
        raw = np.zeros(base.size * 8 + 1, np.uint8)[1:]
        x = raw.view(np.float64).reshape(base.shape)
        x[...] = base
        assert not x.flags.aligned
    elif view == "offset":
        x = base[2:, 1:]
    else:
        x = base[:0]
    for _ in range(3):  # the plan is made once, then used; a contiguous call in between
        s, t = mod.colsum(x)
        np.testing.assert_allclose(s, x.sum(axis=0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(t, x.sum(), rtol=1e-12, atol=1e-12)
        assert isinstance(t, np.float64)
        s2, _ = mod.colsum(base)
        np.testing.assert_allclose(s2, base.sum(axis=0), rtol=1e-12)


def test_bad_calls_after_good_ones_are_still_refused(mod):
    x = np.ones(8, np.float32)
    for _ in range(2):
        mod.saxpy(1.0, x, x)
    with pytest.raises(ValueError, match="'y' has N = 9"):
        mod.saxpy(1.0, x, np.ones(9, np.float32))
    with pytest.raises(TypeError, match="argument 'x' must have dtype f32"):
        mod.saxpy(1.0, x.astype(np.float64), x)
    with pytest.raises(ValueError, match="rank 1"):
        mod.saxpy(1.0, np.ones((8, 1), np.float32), x)
    with pytest.raises(TypeError, match="'a' must be f32"):
        mod.saxpy("1", x, x)
    with pytest.raises(TypeError, match="takes 3 positional"):
        mod.saxpy(1.0, x, x, x)
    ints = np.arange(5, dtype=np.int8)
    for _ in range(2):
        np.testing.assert_array_equal(mod.shift(ints, 3), ints + 3)
    with pytest.raises(ValueError, match="out of range for i8"):
        mod.shift(ints, 300)
    big = np.arange(5, dtype=">f4")
    np.testing.assert_allclose(mod.saxpy(1.0, big, big), 2 * big)  # byte-swapped: full path


def test_subclasses_and_lists_take_the_full_path(mod):
    class Tagged(np.ndarray):
        pass

    x = np.arange(6, dtype=np.float32).view(Tagged)
    for _ in range(2):
        np.testing.assert_allclose(mod.saxpy(2.0, x, x), 3 * np.arange(6))
    with pytest.raises(TypeError, match="must be a numpy array"):
        mod.saxpy(2.0, [1.0, 2.0], np.ones(2, np.float32))


def test_plans_are_bounded(mod):
    for n in range(cpu._PLANS_MAX + 10):
        x = np.full(n, 2.0, np.float32)
        np.testing.assert_allclose(mod.saxpy(1.0, x, x), 2 * x)
    assert len(mod.saxpy.executable()._plans) <= cpu._PLANS_MAX


def test_threads_share_plans(mod):
    xs = [RNG.standard_normal(n).astype(np.float32) for n in (3, 64, 1000, 4097)]

    def work(seed: int) -> None:
        for k in range(200):
            x = xs[(seed + k) % len(xs)]
            np.testing.assert_allclose(mod.saxpy(3.0, x, x), 4 * x, rtol=1e-6)

    assert run_threads(work, 4) == []


def test_libraries_have_the_fast_entry(tmp_path):
    path = tmp_path / "k.tdsl"
    path.write_text(SOURCE)
    lib = tmp_path / "libk.so"
    from tdsl.cli import main

    assert main(["compile", str(path), "-o", str(lib)]) == 0
    mod = tdsl.load_library(lib)
    x = np.arange(4, dtype=np.float32)
    for _ in range(2):
        np.testing.assert_allclose(mod.saxpy(2.0, x, x), 3 * x)
    assert mod.saxpy.executable().fast_address


def test_outputs_given_by_name(mod, monkeypatch):
    x = RNG.standard_normal((6, 5))
    s_out = np.empty(5)
    for _ in range(2):
        s, t = mod.colsum(x, s=s_out)
        assert s is s_out and isinstance(t, np.float64)
        np.testing.assert_allclose(s_out, x.sum(axis=0), rtol=1e-12)
    binds = _count_binds(monkeypatch)
    wide = np.zeros((3, 10))
    view = wide[1, ::2]  # a strided output
    t_out = np.empty(())
    for _ in range(3):
        s, t = mod.colsum(x, s=view, t=t_out)
        assert s is view and t is t_out  # given rank-0 outputs stay arrays
    assert binds[0] <= 1
    np.testing.assert_allclose(view, x.sum(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(wide[1, 1::2], 0)
    np.testing.assert_allclose(t_out, x.sum(), rtol=1e-12)


def test_given_outputs_are_still_checked(mod):
    x = np.ones(8, np.float32)
    z = np.empty(8, np.float32)
    for _ in range(2):
        mod.saxpy(1.0, x, x, z=z)
    np.testing.assert_allclose(z, 2.0)
    with pytest.raises(ValueError, match="'z' must have shape"):
        mod.saxpy(1.0, x, x, z=np.empty(9, np.float32))
    with pytest.raises(TypeError, match="'z' must have dtype"):
        mod.saxpy(1.0, x, x, z=np.empty(8, np.float64))
    frozen = np.empty(8, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        mod.saxpy(1.0, x, x, z=frozen)
    with pytest.raises(TypeError, match="unexpected argument 'w'"):
        mod.saxpy(1.0, x, x, w=z)
    y = np.arange(8, dtype=np.float32)
    for _ in range(2):  # the output is an input: computed apart, then copied
        mod.saxpy(2.0, y, y, z=y)
    np.testing.assert_allclose(y, 3 * 3 * np.arange(8))

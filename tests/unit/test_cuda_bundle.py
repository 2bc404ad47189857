"""CUDA bundles (tdsl.runtime.cuda_bundle): written by `tdsl compile --target cuda --emit
bundle`, loaded by `tdsl.load_library` without the compiler, and the `TDSL_CUDA_BUNDLES`
folder. Calls run on the GPU emulator standing in for the driver."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tdsl
from tdsl.cli import main as cli_main
from tdsl.runtime import cuda_bundle, cuda_driver
from tdsl.runtime.cuda_fake import FakeDriver

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
SOURCE = """
kernel scale(a: f32, x: f32[N]) -> (y: f32[N]) { y = a * x }
kernel rowsum(x: f32[B, N]) -> (s: f32[B]) { s[b] = sum[n](x[b, n]) }
"""


@pytest.fixture
def fake_gpu():
    cuda_driver.set_driver(FakeDriver())
    yield
    cuda_driver.set_driver(None)


def _check(module, rng) -> None:
    x = rng.standard_normal((5, 33)).astype(np.float32)
    np.testing.assert_allclose(module.rowsum(x), x.sum(axis=1), rtol=1e-5, atol=1e-5)
    v = rng.standard_normal(77).astype(np.float32)
    np.testing.assert_allclose(module.scale(np.float32(-1.5), v), -1.5 * v, rtol=1e-6)


def test_cli_bundle_loads_as_a_cuda_module(tmp_path, fake_gpu, capsys):
    src = tmp_path / "two.tdsl"
    src.write_text(SOURCE)
    out = tmp_path / "two.tdslcuda"
    assert cli_main(["compile", str(src), "--target", "cuda", "--emit", "bundle",
                     "--arch", "sm_90", "-o", str(out)]) == 0
    assert "2 kernels, sm_90" in capsys.readouterr().err
    module = tdsl.load_library(out)
    assert module.target == "cuda" and sorted(module.kernels) == ["rowsum", "scale"]
    _check(module, np.random.default_rng(1))
    with pytest.raises(TypeError, match="argument .x. must have dtype f32"):  # validated
        module.rowsum(np.ones((2, 3), np.float64))


def test_bundle_needs_an_output_file(tmp_path, capsys):
    src = tmp_path / "two.tdsl"
    src.write_text(SOURCE)
    assert cli_main(["compile", str(src), "--target", "cuda", "--emit", "bundle"]) != 0
    assert "-o" in capsys.readouterr().err


def test_corrupt_and_foreign_bundles_are_refused(tmp_path):
    bad = tmp_path / "bad.tdslcuda"
    bad.write_text("{not json")
    with pytest.raises(cuda_bundle.BundleError, match="cannot read"):
        tdsl.load_library(bad)
    bad.write_bytes(b"\x1f\x8b truncated gzip")
    with pytest.raises(cuda_bundle.BundleError, match="cannot read"):
        tdsl.load_library(bad)
    bad.write_text(json.dumps({"magic": "something else"}))
    with pytest.raises(cuda_bundle.BundleError, match="not a tdsl CUDA bundle"):
        tdsl.load_library(bad)
    bad.write_text(json.dumps({"magic": cuda_bundle.MAGIC, "format": 1, "kernels": [{}]}))
    with pytest.raises(cuda_bundle.BundleError, match="corrupt"):
        tdsl.load_library(bad)
    bad.write_text(json.dumps({"magic": cuda_bundle.MAGIC, "format": 99, "kernels": []}))
    with pytest.raises(cuda_bundle.BundleError, match="format 99"):
        tdsl.load_library(bad)


def test_bundle_folder_stores_then_serves_without_the_compiler(tmp_path, monkeypatch,
                                                                fake_gpu):
    monkeypatch.setenv(cuda_bundle.FOLDER_VARIABLE, str(tmp_path / "builds"))
    monkeypatch.setenv("TDSL_CUDA_ARCH", "sm_90")
    rng = np.random.default_rng(2)
    _check(tdsl.loads(SOURCE, target="cuda"), rng)
    stored = sorted(p.name.split("-")[0] for p in (tmp_path / "builds").iterdir())
    assert stored == ["rowsum", "scale"]

    import tdsl.runtime.cuda as cuda

    def no_compiler(kernel, target):
        raise ImportError("No module named 'mlir'")

    monkeypatch.setattr(cuda, "_compile", no_compiler)
    _check(tdsl.loads(SOURCE, target="cuda"), rng)  # served from the folder
    changed = SOURCE.replace("a * x", "a * x + x")
    with pytest.raises(cuda.CudaError, match="no bundle of kernel 'scale' for sm_90"):
        tdsl.loads(changed, target="cuda").scale(np.float32(1), np.ones(3, np.float32))


def test_bundle_key_follows_the_kernel_and_the_arch():
    from tdsl.check import check_source

    one = check_source(SOURCE, "a.tdsl").kernels[0]
    same = check_source(SOURCE, "b.tdsl").kernels[0]
    other = check_source(SOURCE.replace("a * x", "x * a"), "a.tdsl").kernels[0]
    key = cuda_bundle.kernel_key(one, "sm_90")
    assert key == cuda_bundle.kernel_key(same, "sm_90")
    assert key != cuda_bundle.kernel_key(one, "sm_80")
    assert key != cuda_bundle.kernel_key(other, "sm_90")


def test_a_bundle_runs_its_host_code_without_mlir_or_lark(tmp_path):
    """A GPU machine may have neither the MLIR bindings nor lark (tools/device_check.py): a
    bundle loads and JIT-compiles its host code (which loads the PTX) with both blocked."""
    import subprocess
    import sys

    src = tmp_path / "two.tdsl"
    src.write_text(SOURCE)
    out = tmp_path / "two.tdslcuda"
    assert cli_main(["compile", str(src), "--target", "cuda", "--emit", "bundle", "-o",
                     str(out)]) == 0
    script = f"""
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mlir", "lark"):
            raise ImportError("blocked: " + name)
        return None

sys.meta_path.insert(0, Block())
import tdsl

class Stub:
    def __init__(self):
        self.images = []
    def load_module(self, image):
        self.images.append(image)
        return 1
    def function(self, module, name):
        return 1

module = tdsl.load_library({str(out)!r})
stub = Stub()
executable = module.rowsum.executable()
executable.load(stub)
assert stub.images and b".entry" in stub.images[0], stub.images
assert not any(m.split(".")[0] in ("mlir", "lark") for m in sys.modules)
print("ok", sorted(module.kernels))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ok ['rowsum', 'scale']" in result.stdout

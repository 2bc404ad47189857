"""The GPU pipeline: every sample and every hand-built test kernel compiles to PTX that
`ptxas` accepts for sm_80 and sm_90, each launched kernel is an `.entry`, the stages verify,
the mapping picks the intended strategy, and `tdsl compile --target cuda` prints each stage.
Tests that need `ptxas` skip cleanly without it."""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

import handbuilt_kernels as hk  # noqa: E402

from tdsl.check import check_source  # noqa: E402
from tdsl.cli import main  # noqa: E402
from tdsl.codegen.ptx import (  # noqa: E402
    PtxError,
    arch_features,
    find_ptxas,
    ptx_entries,
    ptxas,
)
from tdsl.gpu_pipeline import GPU_STAGE_NAMES, run_gpu_pipeline  # noqa: E402
from tdsl.runtime.gpu_emulator import EmulatedExecutable  # noqa: E402
from tdsl.types import DType  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
SAMPLE_FILES = sorted(p.name for p in SAMPLES.glob("*.tdsl"))
ARCHS = ("sm_80", "sm_90")
needs_ptxas = pytest.mark.skipif(find_ptxas() is None, reason="ptxas not found (install the "
                                 "CUDA toolkit or the nvidia-cuda-nvcc wheel)")

HANDBUILT = {
    "saxpy": hk.saxpy, "saxpy_f16": lambda: hk.saxpy(DType.F16), "softmax": hk.softmax,
    "softmax_bf16": lambda: hk.softmax(DType.BF16), "matmul": hk.matmul,
    "matmul_f64": lambda: hk.matmul(DType.F64), "conv1d": hk.conv1d, "reverse": hk.reverse,
    "causal_mask": hk.causal_mask, "int_divmod": hk.int_divmod,
    "int_divmod_i8": lambda: hk.int_divmod(DType.I8), "total_sum": hk.total_sum,
    "total_sum_i64": lambda: hk.total_sum(DType.I64), "row_stats": hk.row_stats,
    "symbol_scale": hk.symbol_scale, "float_unary_f32": hk.float_unary,
    "float_unary_f64": lambda: hk.float_unary(DType.F64),
    "float_unary_f16": lambda: hk.float_unary(DType.F16),
    "float_binary_bf16": lambda: hk.float_binary(DType.BF16), "int_ops": hk.int_ops,
    "int_ops_u8": lambda: hk.int_ops(DType.U8),
    "casts": lambda: hk.casts(DType.F32, (DType.I8, DType.U8, DType.I64, DType.F16, DType.BF16,
                                          DType.F64, DType.BOOL)),
    "bool_ops": hk.bool_ops, "reductions_i8": lambda: hk.reductions(DType.I8),
    "reductions_f16": lambda: hk.reductions(DType.F16), "pairwise": hk.pairwise,
    "upsample": hk.upsample, "decimate_sum": hk.decimate_sum, "copy": hk.copy,
    "nested_reduction": hk.nested_reduction,
}


@functools.cache
def program(name: str):
    path = SAMPLES / name
    return check_source(path.read_text(), str(path))


def launched(gpu_ir: str) -> list[str]:
    """The kernels the host function launches, in order."""
    return re.findall(r"gpu\.launch_func\s+@[\w$]+::@([\w$]+)", gpu_ir)


def check_ptx(kernel, arch: str = "sm_80", assemble: tuple[str, ...] = ARCHS) -> None:
    """Compile for `arch`; every launched kernel is an .entry; `ptxas -arch=A` accepts the
    PTX for each A of `assemble` (PTX for sm_80 is also valid input for sm_90)."""
    result = run_gpu_pipeline(kernel, until="ptx", arch=arch, keep=["gpu"])
    ptx = result.ptx
    assert ptx and f".target {arch}" in ptx
    entries = ptx_entries(ptx)
    calls = launched(result.ir["gpu"])
    assert calls and set(calls) <= set(entries), (calls, entries)
    assert set(entries) == set(calls)  # every kernel is an .entry and is launched
    assert ".extern .func" not in ptx  # libdevice is linked in, nothing left to resolve
    for target in assemble:
        ptxas(ptx, target)


@needs_ptxas
@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_sample_ptx_is_accepted_by_ptxas(name):
    for kernel in program(name).kernels:
        check_ptx(kernel)


@needs_ptxas
@pytest.mark.parametrize("name", sorted(HANDBUILT))
def test_handbuilt_kernel_ptx_is_accepted_by_ptxas(name):
    check_ptx(HANDBUILT[name]())


@needs_ptxas
@pytest.mark.parametrize("name", ["softmax.tdsl", "matmul.tdsl", "half.tdsl"])
def test_ptx_for_sm90_is_accepted_by_ptxas(name):
    for kernel in program(name).kernels:
        check_ptx(kernel, "sm_90", ("sm_90",))


@needs_ptxas
def test_integer_abs_reaches_ptx():
    """math.absi has no NVVM pattern; it must not stop the PTX (found by tests/fuzz/batch.py)."""
    source = ("kernel k(x: i64[N], y: i32[N], z: i8[N]) -> (a: i64[N], b: i32[N], c: i8[N]) "
              "{ a = abs(x); b = abs(y); c = abs(z) }")
    check_ptx(check_source(source, "abs.tdsl").kernels[0])


def test_ptx_without_ptxas():
    """PTX generation itself needs no CUDA installation."""
    check_ptx(hk.softmax(), assemble=())


@needs_ptxas
def test_ptxas_rejects_broken_ptx():
    with pytest.raises(PtxError, match="ptxas"):
        ptxas(".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry k( {\n", "sm_80")


def test_every_stage_is_produced_and_verified():
    result = run_gpu_pipeline(hk.softmax(), until="llvm")
    assert set(result.ir) == set(GPU_STAGE_NAMES)
    assert "gpu.launch_func" in result.ir["gpu"] and "gpu.module" in result.ir["gpu"]
    assert "scf.parallel" not in result.ir["gpu"]
    assert "gpu.alloc" in result.ir["mapped"] and "memref.alloc" not in result.ir["mapped"]
    assert "nvvm." in result.ir["nvvm"]
    assert "mgpuStreamCreate" in result.ir["host"] and "gpu.binary" in result.ir["host"]
    assert "define void @tdsl_entry_softmax(ptr" in result.ir["llvm"]
    assert 'target triple = "nvptx64-nvidia-cuda"' in result.ir["llvm"]


def test_arch_features():
    assert arch_features("sm_80") == "+ptx80"
    assert arch_features("sm_90a") == "+ptx80"
    assert arch_features("sm_120") == "+ptx87"
    with pytest.raises(ValueError, match="unknown GPU arch"):
        arch_features("compute_80")


# ---- the mapping ---------------------------------------------------------------------------


def gpu_ir(kernel) -> str:
    return run_gpu_pipeline(kernel, until="gpu", keep=["gpu"]).ir["gpu"]


def test_row_reduction_is_a_block_reduction():
    text = gpu_ir(hk.softmax())
    assert "gpu.all_reduce  maximumf" in text and "gpu.all_reduce  add" in text


def test_row_statements_are_fused_with_an_unfused_fallback():
    text = gpu_ir(hk.softmax())
    host = text[:text.index("gpu.module")]
    fused, fallback = host.split("} else {", 1)
    assert "arith.cmpi uge" in fused and fused.count("gpu.launch_func") == 1
    # two fills, two maps, and each reduction as a block or a thread per row (at run time)
    assert fallback.count("gpu.launch_func") == 8
    kernel = text[text.index("gpu.func @tdsl_softmax_0"):text.index("gpu.func @tdsl_softmax_1")]
    assert kernel.count("gpu.barrier") == 5 and kernel.count("gpu.all_reduce") == 2


def test_elementwise_statements_over_one_domain_share_a_launch():
    text = gpu_ir(hk.int_divmod())
    assert text.count("gpu.launch_func") == 1 and "scf.if" not in text.split("gpu.module")[0]


def test_short_reductions_are_a_thread_per_output(monkeypatch):
    from tdsl import gpu_fusion

    monkeypatch.setattr(gpu_fusion, "FUSE_MIN_ROWS", 1 << 62)
    ex = EmulatedExecutable(hk.softmax())
    x = np.ones((3, 20), np.float32)
    np.testing.assert_allclose(ex(x), np.full((3, 20), 0.05, np.float32))
    assert [b for _, _, b in ex.launches].count((256, 1, 1)) == 6  # no block of 32
    ex(np.ones((3, 40), np.float32))
    assert [b for _, _, b in ex.launches].count((64, 1, 1)) == 2  # two block reductions


def test_rank0_reduction_spreads_over_blocks_then_combines_partials():
    text = gpu_ir(hk.total_sum())
    assert text.count("gpu.all_reduce  add") == 2  # the blocks' partials, then the partials
    launches = re.findall(r"gpu\.launch_func .* blocks in \((%\w+)", text)
    assert len(launches) == 3  # the accumulator's fill, the blocks, the partials
    assert launches[1] != "%c1" and "gpu.alloc" in text and "gpu.dealloc" in text


def test_row_reduction_threads_keep_several_terms_in_flight():
    text = gpu_ir(hk.softmax())
    assert re.search(r"scf\.for .* -> \((f32, ){3}f32\)", text)  # 4 accumulators per thread


def test_fused_elementwise_phases_load_several_points_before_storing():
    text = gpu_ir(hk.softmax())
    phase = re.search(r"scf\.for %\w+ = %\w+ to %\w+ step %\w+ \{(.*?)\n      \}", text,
                      re.S)
    assert phase and phase.group(1).count("memref.load") >= 4 and "scf.if" in phase.group(1)


def test_sqrt_f32_is_correctly_rounded_in_ptx():
    source = "kernel k(x: f32[N]) -> (y: f32[N], z: f64[N]) { y = sqrt(x); z = sqrt(f64(x)) }"
    ptx = run_gpu_pipeline(check_source(source, "s.tdsl").kernels[0], until="ptx").ptx
    assert "sqrt.rn.f32" in ptx and "sqrt.rn.f64" in ptx and "sqrt.approx" not in ptx


def test_registers_are_capped_except_for_tiled_contractions():
    def capped(kernel) -> dict[str, bool]:
        ptx = run_gpu_pipeline(kernel, until="ptx", arch="sm_90").ptx
        return {name: ".maxnreg 64" in ptx.split(f".entry {name}(", 1)[1].split("{", 1)[0]
                for name in ptx_entries(ptx)}

    assert all(capped(hk.softmax()).values())
    assert capped(hk.matmul()) == {"tdsl_matmul_0": True, "tdsl_matmul_1": False}  # fill, tiles


def test_matmul_is_tiled_through_shared_memory():
    text = gpu_ir(hk.matmul())
    assert "gpu.all_reduce" not in text
    assert text.count("memref.get_global") == 2 and "#gpu.address_space<workgroup>" in text
    assert re.search(r"scf\.for .* -> \((f32, ){63}f32\)", text)  # 8 x 8 accumulators
    assert text.count("gpu.barrier") == 2


def test_convolution_keeps_one_accumulator_per_thread():
    text = gpu_ir(hk.conv1d())
    assert "gpu.all_reduce" not in text and "memref.get_global" not in text
    assert re.search(r"scf\.for .* iter_args\(.*\) -> \(f32\)", text)


def test_narrow_integer_reductions_are_widened():
    text = gpu_ir(hk.reductions(DType.I8))
    assert ": (i32) -> i32" in text and "arith.extsi" in text


def test_elementwise_launch_is_guarded():
    text = gpu_ir(hk.saxpy())
    assert re.search(r"arith\.cmpi ult, %\w+, %\w+ : index\s+scf\.if", text)


# ---- command line --------------------------------------------------------------------------


@pytest.mark.parametrize("emit,marker", [("gpu", "gpu.launch_func"), ("ptx", ".visible .entry"),
                                         ("llvm", "mgpuLaunchKernel"),
                                         ("mapped", "#gpu.loop_dim_map")])
def test_cli_emits_cuda_stages(emit, marker, capsys):
    path = str(SAMPLES / "saxpy.tdsl")
    assert main(["compile", path, "--target", "cuda", "--emit", emit, "-k", "saxpy"]) == 0
    assert marker in capsys.readouterr().out


def test_cli_arch_and_output_file(tmp_path):
    out = tmp_path / "k.ptx"
    assert main(["compile", str(SAMPLES / "saxpy.tdsl"), "--target", "cuda", "--arch", "sm_90",
                 "-k", "saxpy", "-o", str(out)]) == 0
    assert ".target sm_90" in out.read_text()


def test_cli_rejects_gpu_stage_for_cpu(capsys):
    assert main(["compile", str(SAMPLES / "saxpy.tdsl"), "--emit", "ptx"]) == 1
    assert "--target cuda" in capsys.readouterr().err


def test_cli_rejects_cpu_stage_for_cuda(capsys):
    assert main(["compile", str(SAMPLES / "saxpy.tdsl"), "--target", "cuda", "--emit",
                 "asm"]) == 1
    assert "not a stage of --target cuda" in capsys.readouterr().err

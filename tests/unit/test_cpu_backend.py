"""Unit tests of the CPU pipeline (tdsl.pipelines), LLVM code generation (tdsl.codegen.llvm)
and the CPU runtime's marshalling (tdsl.runtime.cpu)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

import handbuilt_kernels as hk  # noqa: E402

from tdsl.codegen import llvm as cg  # noqa: E402
from tdsl.pipelines import (  # noqa: E402
    STAGE_NAMES,
    PipelineError,
    entry_symbol,
    entry_wrapper,
    run_pipeline,
)
from tdsl.runtime import threads  # noqa: E402
from tdsl.runtime.cpu import _passable, compile_kernel  # noqa: E402
from tdsl.to_mlir import kernel_to_mlir  # noqa: E402


def test_stage_names():
    assert STAGE_NAMES == ("mlir", "vector-math", "fused", "bufferized", "loops", "openmp",
                           "llvm-dialect", "llvm", "asm", "obj")


def test_unknown_stage():
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        run_pipeline(hk.saxpy(), "nope")


def test_every_stage_prints_and_obj_is_an_object_file():
    result = run_pipeline(hk.saxpy(), "obj")
    assert set(result.ir) == set(STAGE_NAMES)
    assert "linalg.generic" in result.ir["fused"]
    assert "memref<" in result.ir["bufferized"] and "tensor<" not in result.ir["bufferized"]
    assert "scf.parallel" in result.ir["loops"]  # the outermost loop, for threads
    assert "omp.parallel if(" in result.ir["openmp"] or not threads.available()
    assert "llvm.func" in result.ir["llvm-dialect"]
    assert f"define void @{entry_symbol('saxpy')}" in result.ir["llvm"]
    assert f"{entry_symbol('saxpy')}:" in result.ir["asm"]
    assert isinstance(result.ir["obj"], bytes) and result.ir["obj"][:4] == b"\x7fELF"
    assert set(result.timings) >= set(STAGE_NAMES)


def test_keep_and_per_pass_ir_and_times():
    result = run_pipeline(hk.softmax(), "loops", keep=["loops"], print_ir_after_all=True,
                          time_passes=True)
    assert list(result.ir) == ["loops"]
    names = [name for name, _ in result.pass_ir]
    assert "one-shot-bufferize" in names
    assert "func.func(convert-linalg-to-parallel-loops)" in names
    assert len(result.pass_timings) == len(result.pass_ir)


def test_pipeline_from_mlir_text():
    text = kernel_to_mlir(hk.matmul())
    result = run_pipeline(text, "llvm-dialect", keep=["llvm-dialect"])
    assert "llvm.func internal @tdsl_k_matmul" in result.ir["llvm-dialect"]


def test_invalid_mlir_is_a_pipeline_error():
    with pytest.raises(PipelineError, match="does not parse"):
        run_pipeline("module { func.func @tdsl_k_x( }", "fused")


def test_entry_wrapper_loads_each_argument():
    ir = "define internal void @tdsl_k_k(ptr %0, ptr noalias %1, i64 %2) {\n  ret void\n}\n"
    wrapper = entry_wrapper(ir, "k")
    assert "define void @tdsl_entry_k(ptr" in wrapper
    assert "load ptr, ptr %p1" in wrapper and "load i64, ptr %p2" in wrapper
    assert "call void @tdsl_k_k(ptr %a0, ptr %a1, i64 %a2)" in wrapper


_CALLS = """
declare float @{name}(float)
define float @f(float %x) {{
  %y = call float @{name}(float %x)
  ret float %y
}}
"""


@pytest.mark.parametrize("name", ["memrefCopy", "tdsl_no_such_function"])
def test_unknown_external_functions_fail_loudly(name):
    with pytest.raises(cg.CodegenError, match=name):
        cg.optimize_ir(_CALLS.format(name=name))


def test_libm_functions_are_known():
    mod = cg.optimize_ir(_CALLS.format(name="tanhf"))
    assert cg.external_functions(mod) == ["tanhf"]


def test_host_target():
    name, features = cg.host_cpu()
    assert name and isinstance(features, str)


def test_passable_arrays():
    a = np.zeros((4, 6), np.float32)
    assert _passable(a) and _passable(a[:, ::2]) and _passable(a.T)
    assert not _passable(a[::-1])
    raw = np.zeros(17, np.uint8)[1:].view(np.float32)  # unaligned
    assert not _passable(raw)


def test_compiled_code_declares_only_known_functions():
    for builder in (hk.softmax, hk.float_unary, hk.row_stats, hk.int_ops):
        mod = run_pipeline(builder(), "llvm", keep=["llvm"]).llvm_module
        calls = {f for f in cg.external_functions(mod) if not f.startswith(cg.OPENMP_PREFIXES)}
        assert calls <= cg.KNOWN_EXTERNALS


def test_compile_time_budget():
    compile_kernel(hk.saxpy())  # imports and one-time initialization
    start = time.perf_counter()
    ex = compile_kernel(hk.saxpy())
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, ex.compile_seconds  # ~30 ms on a quiet machine


def test_runtime_imports_no_compiler():
    code = ("import sys, tdsl.runtime.cpu; "
            "bad = [m for m in ('mlir', 'lark', 'llvmlite') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


_ADD_LOOP = """
define void @add(ptr noalias %a, ptr noalias %b, i64 %n) {
entry:
  %c = icmp sgt i64 %n, 0
  br i1 %c, label %loop, label %exit
loop:
  %i = phi i64 [ 0, %entry ], [ %next, %loop ]
  %pa = getelementptr float, ptr %a, i64 %i
  %pb = getelementptr float, ptr %b, i64 %i
  %x = load float, ptr %pa
  %y = load float, ptr %pb
  %s = fadd float %x, %y
  store float %s, ptr %pa
  %next = add i64 %i, 1
  %done = icmp eq i64 %next, %n
  br i1 %done, label %exit, label %loop
exit:
  ret void
}
"""


def test_llvm_flags_are_ours_only_while_we_optimize(monkeypatch):
    """tdsl's O3 has no vectorized epilogue (on AVX2 hosts: forced here); LLVM's own O3 in the
    same process (Numba's) keeps it, before and after a tdsl compile (a global flag left set
    cost Numba 4-6x)."""
    import llvmlite.binding as llvm

    monkeypatch.setattr(cg, "WIDE_VECTORS_FLAGS", {})

    def others_o3() -> str:
        mod = cg.parse(_ADD_LOOP)
        pb = llvm.create_pass_builder(cg._shared_target_machine(),
                                      llvm.create_pipeline_tuning_options(speed_level=3))
        pb.getModulePassManager().run(mod, pb)
        return str(mod)

    assert "vec.epilog" in others_o3()
    assert "vec.epilog" not in str(cg.optimize(cg.parse(_ADD_LOOP)))
    assert "vec.epilog" in others_o3()


def test_hosts_with_512_bit_vectors_keep_the_vectorized_epilogue():
    """AVX-512's interleaved loop takes 64 floats per iteration: its remainder is vectorized."""
    wide = "+avx512f" in cg.host_cpu()[1].split(",")
    assert cg.scoped_flags()["-enable-epilogue-vectorization"] == ("true" if wide else "false")
    assert ("vec.epilog" in str(cg.optimize(cg.parse(_ADD_LOOP)))) == wide

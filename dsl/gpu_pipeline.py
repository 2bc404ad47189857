"""The CUDA pipeline as data: named stages beside the CPU ones (`tdsl.pipelines`).

| stage        | what it holds                                          | how it is made              |
|--------------|--------------------------------------------------------|-----------------------------|
| `mlir`       | linalg on tensors                                      | `kernel_to_mlir`            |
| `fused`      | canonicalized, element-wise ops fused                  | MLIR passes (as the CPU's)  |
| `bufferized` | linalg on memrefs                                      | MLIR passes                 |
| `loops`      | `scf.parallel` loops (reductions as `scf.for` inside)  | MLIR passes                 |
| `mapped`     | loops mapped to `block_x` / `thread_x` (element-wise, block and thread reductions, row fusion, tiled contractions); `gpu.alloc` | `tdsl.gpu_mapping` |
| `gpu`        | host function of `gpu.launch_func`s and one `gpu.module` | upstream passes + merge   |
| `nvvm`       | kernels in the NVVM / LLVM dialects, target attached   | MLIR passes                 |
| `ptx`        | PTX of the kernels (libdevice linked in)               | `gpu-module-to-binary`      |
| `host`       | host function in the LLVM dialect calling `mgpu*`      | `gpu-to-llvm` and friends   |
| `llvm`       | host LLVM IR with the packed entry point (and, printed, the kernels' LLVM IR) | translation |

Every stage's output is verified. The PTX target is chosen with `arch` (`sm_80` by default);
the PTX ISA version is 8.0, or the newer one an arch needs (`tdsl.codegen.ptx.arch_features`). The host code calls the MLIR CUDA
runtime's C functions (`mgpuModuleLoadJIT`, `mgpuLaunchKernel`, `mgpuMemAlloc`, ...), which
`tdsl.runtime.cuda` provides over the driver API.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tdsl.pipelines import _LOCK, CPU_STAGES, PipelineError, entry_wrapper, mlir_context

if TYPE_CHECKING:
    from tdsl.checked import Kernel

DEFAULT_ARCH = "sm_80"


@dataclass(frozen=True)
class GpuStage:
    """A named stage: pass pipelines (text, `{chip}`/`{features}` filled in) and Python
    rewrites (callables taking the module and the kernel name), run in order."""

    name: str
    description: str
    steps: tuple[str | Callable, ...] = ()


def _cpu_passes(name: str) -> tuple[str, ...]:
    return next(s.passes for s in CPU_STAGES if s.name == name)


def _map(module, name: str) -> None:
    from tdsl.gpu_mapping import map_to_gpu

    map_to_gpu(module)


def _merge(module, name: str) -> None:
    merge_gpu_modules(module, name)


def _correctly_rounded_sqrt(module, name: str) -> None:
    """f32 `math.sqrt` -> PTX `sqrt.rn.f32` (inline assembly). convert-gpu-to-nvvm would make
    it libdevice's `__nv_sqrtf`, which is `sqrt.approx.f32` unless the reflect flag
    `__CUDA_PREC_SQRT` is set (and the pass refuses `llvm.intr.sqrt`); sqrt must be
    correctly rounded (language.md). f64 sqrt is `sqrt.rn.f64` already."""
    from mlir import ir

    found = []

    def visit(op):
        if op.name == "math.sqrt" and str(op.results[0].type) == "f32":
            found.append(op)
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    for op in found:
        with ir.InsertionPoint(op), op.location:
            new = ir.Operation.create(
                "llvm.inline_asm", results=[op.results[0].type], operands=[op.operands[0]],
                attributes={"asm_string": ir.StringAttr.get("sqrt.rn.f32 $0, $1;"),
                            "constraints": ir.StringAttr.get("=f,f")})
        op.results[0].replace_all_uses_with(new.results[0])
        op.erase()


MAX_REGISTERS = 64  # per thread of a kernel without shared-memory tiles: 4 blocks of 256


def _cap_registers(module, name: str) -> None:
    """`nvvm.maxnreg` on every kernel but the tiled contractions (`tdsl_smem_*` tiles, 8x8
    accumulators per thread): a fused row kernel (softmax) took 72 registers, so 3 blocks of
    256 threads fit an SM; at 64, 4 do, without spills."""
    from mlir import ir

    def visit(op):
        if op.name != "gpu.func" or "gpu.kernel" not in op.attributes:
            return ir.WalkResult.ADVANCE
        if "tdsl_smem_" not in str(op):
            op.attributes["nvvm.maxnreg"] = ir.IntegerAttr.get(
                ir.IntegerType.get_signless(32), MAX_REGISTERS)
        return ir.WalkResult.SKIP

    module.operation.walk(visit)


GPU_STAGES: tuple[GpuStage, ...] = (
    GpuStage("mlir", "linalg.generic on tensors, as emitted from the checked kernel"),
    GpuStage("fused", "canonicalized; single-use elementwise producers fused into consumers",
             _cpu_passes("fused")),
    GpuStage("bufferized", "linalg on memrefs",
             ("eliminate-empty-tensors", "one-shot-bufferize", "canonicalize", "cse")),
    GpuStage("loops", "scf.parallel loops; reductions as scf.for nests inside",
             ("func.func(convert-linalg-to-parallel-loops)", "canonicalize", "cse")),
    GpuStage("mapped", "loops mapped to blocks and threads; temporaries in device memory",
             (_map, "cse")),
    GpuStage("gpu", "gpu.launch_func on the host, the kernels in one gpu.module",
             ("func.func(convert-parallel-loops-to-gpu)", "gpu-kernel-outlining", _merge,
              "lower-affine", "canonicalize", "cse")),
    GpuStage("nvvm", "kernels lowered to the NVVM and LLVM dialects, target attached",
             (_correctly_rounded_sqrt, _cap_registers,
              "nvvm-attach-target{{chip={chip} features={features} O=3}}",
              # what convert-gpu-to-nvvm leaves of math (math.absi) becomes LLVM intrinsics
              "gpu.module(convert-scf-to-cf, convert-gpu-to-nvvm{{index-bitwidth=64}}, "
              "convert-math-to-llvm, canonicalize, cse)")),
    GpuStage("ptx", "PTX of the kernels", ("gpu-module-to-binary{{format=isa}}",)),
    GpuStage("host", "host function in the LLVM dialect, calling the mgpu* runtime",
             ("func.func(gpu-async-region)", "expand-strided-metadata", "lower-affine",
              "convert-scf-to-cf", "convert-math-to-llvm", "convert-arith-to-llvm",
              "convert-index-to-llvm", "gpu-to-llvm", "finalize-memref-to-llvm",
              "convert-func-to-llvm", "convert-cf-to-llvm", "convert-ub-to-llvm",
              "reconcile-unrealized-casts")),
    GpuStage("llvm", "host LLVM IR with the packed entry point"),
)
GPU_STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in GPU_STAGES)


@dataclass
class GpuResult:
    """What `run_gpu_pipeline` produced: printed IR per stage kept, seconds per stage, the
    PTX, the host LLVM IR (with the entry wrapper) and the kernel entry names."""

    ir: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    ptx: str | None = None
    host_llvm: str | None = None
    device_llvm: str | None = None
    entries: list[str] = field(default_factory=list)
    arch: str = DEFAULT_ARCH


def run_gpu_pipeline(kernel: Kernel | str, until: str = "llvm", *, arch: str = DEFAULT_ARCH,
                     keep: Sequence[str] | None = None,
                     kernel_name: str | None = None) -> GpuResult:
    """Run the GPU stages from a checked kernel (or MLIR text of the `mlir` stage) up to and
    including `until`, verifying after each stage. `keep` names the stages whose printed IR is
    returned (default: all that ran); the PTX is always returned once reached."""
    from tdsl.codegen.ptx import arch_features

    if until not in GPU_STAGE_NAMES:
        raise ValueError(f"unknown GPU stage '{until}'; stages are {', '.join(GPU_STAGE_NAMES)}")
    features = arch_features(arch)
    last = GPU_STAGE_NAMES.index(until)
    wanted = set(GPU_STAGE_NAMES[:last + 1] if keep is None else keep)
    result = GpuResult(arch=arch)
    start = time.perf_counter()
    if isinstance(kernel, str):
        from tdsl.pipelines import _func_name

        text, name = kernel, kernel_name or _func_name(kernel)
    else:
        from tdsl.to_mlir import kernel_to_mlir

        text, name = kernel_to_mlir(kernel, scalar_reads=False), kernel.name
    with _LOCK:
        _run(text, name, GPU_STAGES[1:last + 1], wanted, result, {"chip": arch,
                                                                  "features": features}, start)
    return result


def _run(text: str, name: str, stages: Sequence[GpuStage], wanted: set[str], result: GpuResult,
         options: dict[str, str], start: float) -> None:
    from mlir import ir, passmanager

    from tdsl.codegen.ptx import extract_ptx, ptx_entries

    with mlir_context(), ir.Location.unknown():
        try:
            module = ir.Module.parse(text)
        except Exception as exc:  # MLIRError, ValueError
            raise PipelineError(f"MLIR of kernel '{name}' does not parse:\n{exc}\n{text}") from exc
        _verify(module, "mlir", name)
        result.timings["mlir"] = time.perf_counter() - start
        if "mlir" in wanted:
            result.ir["mlir"] = str(module)
        for stage in stages:
            t0 = time.perf_counter()
            if stage.name == "llvm":
                from mlir.dialects import llvm as mlir_llvm

                llvm_ir = str(mlir_llvm.translate_module_to_llvmir(module.operation))
                result.host_llvm = llvm_ir + entry_wrapper(llvm_ir, name)
                result.timings["llvm"] = time.perf_counter() - t0
                if "llvm" in wanted:
                    result.ir["llvm"] = _show_llvm(result)
                return
            if stage.name == "ptx" and "llvm" in wanted:
                result.device_llvm = device_llvm_ir(module)
            for step in stage.steps:
                try:
                    if callable(step):
                        step(module, name)
                    else:
                        pipeline = f"builtin.module({step.format(**options)})"
                        passmanager.PassManager.parse(pipeline).run(module.operation)
                except PipelineError:
                    raise
                except Exception as exc:
                    label = getattr(step, "__name__", step)
                    raise PipelineError(f"GPU stage '{stage.name}' ({label}) failed on kernel "
                                        f"'{name}': {exc}") from exc
            _verify(module, stage.name, name)
            if stage.name == "ptx":
                result.ptx = extract_ptx(module)
                result.entries = ptx_entries(result.ptx)
            result.timings[stage.name] = time.perf_counter() - t0
            if stage.name in wanted:
                result.ir[stage.name] = result.ptx if stage.name == "ptx" else str(module)


def _verify(module, stage: str, name: str) -> None:
    try:
        ok = module.operation.verify()
    except Exception as exc:
        raise PipelineError(f"GPU stage '{stage}' of kernel '{name}' does not verify: "
                            f"{exc}") from exc
    if not ok:
        raise PipelineError(f"GPU stage '{stage}' of kernel '{name}' does not verify")


def _show_llvm(result: GpuResult) -> str:
    parts = [f"; ---- host (tdsl target cuda, {result.arch}) ----", result.host_llvm or ""]
    if result.device_llvm:
        parts += [f"; ---- device kernels ({result.arch}) ----", result.device_llvm]
    return "\n".join(parts)


def device_llvm_ir(module) -> str:
    """LLVM IR of the kernels (the NVVM-dialect `gpu.module`s translated, before libdevice
    is linked), for `--emit llvm`."""
    from mlir import ir
    from mlir.dialects import llvm as mlir_llvm

    texts = []
    for op in module.body.operations:
        if op.operation.name != "gpu.module":
            continue
        body = "\n".join(str(inner) for inner in op.regions[0].blocks[0].operations)
        inner = ir.Module.parse(f"module {{\n{body}\n}}")
        llvm_ir = str(mlir_llvm.translate_module_to_llvmir(inner.operation))
        llvm_ir = llvm_ir.replace('source_filename = "LLVMDialectModule"',
                                  'target triple = "nvptx64-nvidia-cuda"', 1)
        texts.append(llvm_ir)
    return "\n".join(texts)


def merge_gpu_modules(module, name: str) -> None:
    """Put every outlined kernel into one `gpu.module @tdsl_<name>` with kernels named
    `tdsl_<name>_<n>` in launch order (one PTX module, one driver load per kernel), with the
    workgroup-memory globals they use; those globals leave the host module."""
    from mlir import ir

    ops = [op.operation for op in module.body.operations]
    gpu_modules = [op for op in ops if op.name == "gpu.module"]
    for op in ops:
        if op.name == "memref.global" and "workgroup" in str(op.attributes["type"]):
            op.erase()  # outlining copied it into the kernels' modules
    if not gpu_modules:
        return
    target = gpu_modules[0]
    target_block = target.regions[0].blocks[0]
    module_name = f"tdsl_{name}"
    renamed: dict[str, str] = {}
    symbols = {ir.StringAttr(op.attributes["sym_name"]).value
               for op in [o.operation for o in target_block.operations]
               if "sym_name" in op.attributes}
    for gm in gpu_modules:
        old_module = ir.StringAttr(gm.attributes["sym_name"]).value
        for inner in [o.operation for o in gm.regions[0].blocks[0].operations]:
            if inner.name != "gpu.func":
                if gm != target and "sym_name" in inner.attributes:
                    symbol = ir.StringAttr(inner.attributes["sym_name"]).value
                    if symbol not in symbols:
                        symbols.add(symbol)
                        target_block.append(inner)
                continue
            old = ir.StringAttr(inner.attributes["sym_name"]).value
            new = f"tdsl_{name}_{len(renamed)}"
            renamed[f"{old_module}::{old}"] = new
            inner.attributes["sym_name"] = ir.StringAttr.get(new)
            if gm != target:
                target_block.append(inner)
    for gm in gpu_modules[1:]:
        gm.erase()
    target.attributes["sym_name"] = ir.StringAttr.get(module_name)
    _retarget_launches(module, renamed, module_name)


def _retarget_launches(module, renamed: dict[str, str], module_name: str) -> None:
    from mlir import ir

    def visit(op):
        if op.name == "gpu.launch_func":
            text = str(op.attributes["kernel"])  # @module::@func
            m = re.fullmatch(r'@"?([\w.$-]+)"?::@"?([\w.$-]+)"?', text)
            if m is None or f"{m.group(1)}::{m.group(2)}" not in renamed:
                raise PipelineError(f"unexpected launch target {text}")
            new = renamed[f"{m.group(1)}::{m.group(2)}"]
            op.attributes["kernel"] = ir.SymbolRefAttr.get([module_name, new])
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)


def emit_cuda(program, stage: str, kernel: str | None = None,
              arch: str = DEFAULT_ARCH) -> str:
    """`tdsl compile --target cuda --emit STAGE`: the stage's text for one kernel or all."""
    from tdsl.codegen.ptx import arch_number

    if stage not in GPU_STAGE_NAMES:
        raise ValueError(f"--emit {stage} is not a stage of --target cuda; its stages are "
                         f"{', '.join(GPU_STAGE_NAMES)}")
    arch_number(arch)
    kernels = [program.kernel(kernel)] if kernel else list(program.kernels)
    parts = []
    for k in kernels:
        result = run_gpu_pipeline(k, until=stage, arch=arch, keep=[stage])
        parts.append(result.ir[stage])
    return "\n".join(parts)

"""Compilation pipelines as data: per target, a list of named stages.

CPU stages (each prints as `tdsl compile FILE --emit STAGE`):

| stage          | what it holds                            | how it is made                      |
|----------------|------------------------------------------|-------------------------------------|
| `mlir`         | linalg on tensors                        | `tdsl.to_mlir.kernel_to_mlir`       |
| `vector-math`  | transcendentals as branch-free arith     | `tdsl.vector_math_pass`             |
| `fused`        | canonicalized, elementwise ops fused     | MLIR passes                         |
| `bufferized`   | linalg on memrefs, temporaries freed     | MLIR passes, `bound_packed_k_loops` |
| `loops`        | scf loops; outermost parallel kept; row  | MLIR passes, `tdsl.parallel_loops`, |
|                | passes fused, next rows prefetched;      | `tdsl.row_loops`,                   |
|                | large outputs written by streaming stores| `tdsl.stream_stores`,               |
|                | accumulations not interleaved            | `tdsl.loop_hints`                   |
| `openmp`       | omp.parallel with a work threshold       | MLIR pass, `tdsl.parallel_loops`    |
| `llvm-dialect` | the LLVM dialect                         | MLIR passes, `noalias` args, loop   |
|                |                                          | annotations on the back edges       |
| `llvm`         | LLVM IR after O3 (vectorized loops)      | translation, entry wrapper, llvmlite|
| `asm`          | host assembly                            | llvmlite                            |
| `obj`          | host object file (bytes)                 | llvmlite                            |

Every stage's output is verified before the next one runs. One MLIR `Context` serves the whole
process (creating one costs ~7 ms); MLIR work is serialized by a lock.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tdsl.codegen.pycall import native_wrapper
from tdsl.schedule_ir import any_through_unit, nested_ops
from tdsl.schedule_rewrites import accumulate_from_zero, bound_packed_k_loops
from tdsl.schedules import apply_schedule, lower_vectors, strip_schedules

if TYPE_CHECKING:
    from tdsl.checked import Kernel


@dataclass(frozen=True)
class Stage:
    """A named stage: MLIR passes (anchored on the module), or a stage done outside MLIR."""

    name: str
    description: str
    passes: tuple[str, ...] = ()

    @property
    def pipeline(self) -> str:
        """The pass-pipeline text, e.g. `builtin.module(canonicalize, cse)`."""
        return f"builtin.module({', '.join(self.passes)})"


CPU_STAGES: tuple[Stage, ...] = (
    Stage("mlir", "linalg.generic on tensors, as emitted from the checked kernel"),
    Stage("vector-math", "math.exp/log/tanh/erf/sin/cos/powf expanded into branch-free arith "
          "(tdsl.vector_math), so that loops of them vectorize"),
    Stage("fused", "canonicalized; single-use elementwise producers fused into consumers; the "
          "kernel's schedule (tdsl.schedules: row-wise fusion, tiled contractions) applied and "
          "shown as @tdsl_schedule",
          ("canonicalize", "cse", "func.func(linalg-fuse-elementwise-ops)", "canonicalize",
           "cse")),
    Stage("bufferized", "linalg on memrefs; temporaries allocated and freed; packed "
          "contractions' k loops bounded by K (tdsl.schedule_rewrites.bound_packed_k_loops)",
          ("eliminate-empty-tensors", "one-shot-bufferize", "canonicalize", "cse",
           "func.func(buffer-loop-hoisting)",
           "func.func(promote-buffers-to-stack{max-alloc-size-in-bytes=512})",
           "buffer-deallocation-pipeline",
           "canonicalize")),
    Stage("loops", "loops of memref loads and stores; the outermost parallel loop of each nest "
          "an scf.parallel (tdsl.parallel_loops), after a tagged work-threshold test; small "
          "consecutive passes over a row fused, the heaviest one prefetching the next row "
          "(tdsl.row_loops); passes writing a large output vectorized with aligned "
          "non-temporal stores behind a run-time test (tdsl.stream_stores); accumulations "
          "along a loop (a convolution's output rows) marked not to interleave "
          "(tdsl.loop_hints)",
          ("func.func(scf-forall-to-parallel)", "func.func(convert-linalg-to-parallel-loops)",
           "canonicalize", "cse")),
    Stage("openmp", "each scf.parallel an omp.parallel + omp.wsloop with its threshold as the "
          "if clause (sequential loops when libomp is not installed)",
          ("convert-scf-to-openmp",)),
    Stage("llvm-dialect", "the LLVM dialect (memref arguments expanded, pointers noalias)",
          ("expand-strided-metadata", "lower-affine", "finalize-memref-to-llvm",
           "convert-scf-to-cf", "convert-vector-to-llvm", "convert-math-to-llvm", "convert-math-to-libm",
           "convert-arith-to-llvm", "convert-func-to-llvm", "convert-cf-to-llvm",
           "convert-ub-to-llvm", "convert-openmp-to-llvm", "reconcile-unrealized-casts")),
    Stage("llvm", "LLVM IR with the packed entry point, after LLVM O3"),
    Stage("asm", "host assembly"),
    Stage("obj", "host object file"),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in CPU_STAGES)
_MLIR_STAGES = ("vector-math", "fused", "bufferized", "loops", "openmp", "llvm-dialect")

_LOCK = threading.RLock()
_CONTEXT: list = []


class PipelineError(RuntimeError):
    """A stage failed or produced IR that does not verify (a bug in tdsl)."""


def mlir_context():
    """The process-wide MLIR context (created on first use)."""
    with _LOCK:
        if not _CONTEXT:
            from mlir import ir

            ctx = ir.Context()
            ctx.enable_multithreading(False)  # small modules: the thread pool costs more
            _CONTEXT.append(ctx)
        return _CONTEXT[0]


def entry_symbol(kernel_name: str) -> str:
    """The packed entry point: `void tdsl_entry_<kernel>(int64_t *args)`."""
    return f"tdsl_entry_{kernel_name}"


@dataclass
class PipelineResult:
    """What `run_pipeline` produced: printed IR per stage kept (bytes for `obj`), seconds per
    stage, optional per-pass IR and times, and the final LLVM module when it was reached."""

    ir: dict[str, str | bytes] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    pass_ir: list[tuple[str, str]] = field(default_factory=list)
    pass_timings: list[tuple[str, float]] = field(default_factory=list)
    llvm_module: object | None = None


def run_pipeline(kernel: Kernel | str, until: str = "llvm", *,
                 keep: Sequence[str] | None = None, print_ir_after_all: bool = False,
                 time_passes: bool = False, kernel_name: str | None = None) -> PipelineResult:
    """Run the CPU stages from a checked kernel (or MLIR text of the `mlir` stage) up to and
    including `until`, verifying after each stage.

    `keep` names the stages whose printed IR is returned (default: all that ran). With
    `print_ir_after_all` or `time_passes`, passes run one at a time, and the IR after each /
    its time is recorded in `pass_ir` / `pass_timings`.
    """
    if until not in STAGE_NAMES:
        raise ValueError(f"unknown stage '{until}'; stages are {', '.join(STAGE_NAMES)}")
    last = STAGE_NAMES.index(until)
    wanted = set(STAGE_NAMES[:last + 1] if keep is None else keep)
    result = PipelineResult()
    t0 = time.perf_counter()
    if isinstance(kernel, str):
        text, name = kernel, kernel_name or _func_name(kernel)
    else:
        from tdsl.to_mlir import kernel_to_mlir

        text, name = kernel_to_mlir(kernel), kernel.name
    with _LOCK:
        llvm_ir = _run_mlir(text, name, STAGE_NAMES[1:last + 1], wanted, result,
                            print_ir_after_all, time_passes, t0,
                            None if isinstance(kernel, str) else kernel.signature)
    if last < STAGE_NAMES.index("llvm"):
        return result
    _run_llvm(llvm_ir, STAGE_NAMES[STAGE_NAMES.index("llvm"):last + 1], wanted, result)
    return result


def compile_to_llvm_ir(kernel: Kernel) -> str:
    """LLVM IR text (unoptimized, with the entry wrapper) of a kernel, printing nothing else."""
    from tdsl.to_mlir import kernel_to_mlir

    with _LOCK:
        return _run_mlir(kernel_to_mlir(kernel), kernel.name, _MLIR_STAGES + ("llvm",), set(),
                         PipelineResult(), False, False, time.perf_counter(), kernel.signature)


def _func_name(text: str) -> str:
    from tdsl.to_mlir import ENTRY_PREFIX

    m = re.search(rf"func\.func @{ENTRY_PREFIX}(\w+)", text)
    if not m:
        raise PipelineError(f"no function @{ENTRY_PREFIX}<name> in the MLIR text")
    return m.group(1)


def _run_mlir(text: str, name: str, stages: Sequence[str], wanted: set[str],
              result: PipelineResult, per_pass_ir: bool, per_pass_time: bool,
              t0: float, signature=None) -> str | None:
    """Run the MLIR stages; at the `llvm` stage return the LLVM IR text with the entry
    wrappers (the native call entry too when the kernel's `signature` is known)."""
    from mlir import ir, passmanager

    ctx = mlir_context()
    with ctx, ir.Location.unknown():
        try:
            module = ir.Module.parse(text)
        except Exception as exc:  # MLIRError and ValueError, with the diagnostics
            raise PipelineError(f"MLIR of kernel '{name}' does not parse:\n{exc}\n{text}") from exc
        _verify(module, "mlir", name)
        result.timings["mlir"] = time.perf_counter() - t0
        if "mlir" in wanted:
            result.ir["mlir"] = str(module)
        by_name = {s.name: s for s in CPU_STAGES}
        for stage_name in stages:
            start = time.perf_counter()
            if stage_name == "llvm":
                from mlir.dialects import llvm as mlir_llvm

                llvm_ir = str(mlir_llvm.translate_module_to_llvmir(module.operation))
                result.timings["translate"] = time.perf_counter() - start
                llvm_ir += entry_wrapper(llvm_ir, name)
                if signature is not None:
                    llvm_ir += native_wrapper(signature, entry_symbol(name))
                return llvm_ir
            stage = by_name[stage_name]
            if stage_name == "vector-math":
                module = _expand_vector_math(module, name)
            if stage_name == "bufferized":
                strip_schedules(module)
            if stage_name == "loops":
                lower_vectors(module)
            groups = ([(p, f"builtin.module({p})") for p in stage.passes]
                      if per_pass_ir or per_pass_time else [(stage.name, stage.pipeline)])
            if stage_name == "openmp" and not _openmp():
                groups = []  # scf.parallel stays, and convert-scf-to-cf makes it sequential
            for label, pipeline in groups:
                pass_start = time.perf_counter()
                try:
                    passmanager.PassManager.parse(pipeline).run(module.operation)
                except Exception as exc:
                    raise PipelineError(
                        f"stage '{stage_name}' ({label}) failed on kernel '{name}': {exc}"
                    ) from exc
                if per_pass_time:
                    result.pass_timings.append((label, time.perf_counter() - pass_start))
                if per_pass_ir:
                    result.pass_ir.append((label, str(module)))
            if stage_name == "fused":
                from tdsl.to_mlir import func_symbol

                module = apply_schedule(module, func_symbol(name))
                any_through_unit(module, func_symbol(name))  # after: it reads the versions
            if stage_name == "bufferized":
                copies_to_linalg(module)
                bound_packed_k_loops(module)
                accumulate_from_zero(module)
            if stage_name == "loops":
                from tdsl.loop_hints import hint_accumulations
                from tdsl.parallel_loops import outer_parallel_loops
                from tdsl.row_loops import fuse_sibling_loops, prefetch_next_rows
                from tdsl.stream_stores import stream_stores

                outer_parallel_loops(module)
                fuse_sibling_loops(module)
                prefetch_next_rows(module)
                stream_stores(module)
                hint_accumulations(module)
            if stage_name == "openmp" and groups:
                from tdsl.parallel_loops import attach_parallel_if

                attach_parallel_if(module)
            if stage_name == "llvm-dialect":
                from tdsl.loop_hints import promote_loop_annotations

                mark_noalias(module, name)
                promote_loop_annotations(module)
            _verify(module, stage_name, name)
            result.timings[stage_name] = time.perf_counter() - start
            if stage_name in wanted:
                result.ir[stage_name] = str(module)
    return None


def _openmp() -> bool:
    """True when kernels are compiled for OpenMP's threads (libomp is installed)."""
    from tdsl.runtime import threads

    return threads.libomp_path() is not None


def _expand_vector_math(module, name: str):
    """The module with its transcendental `math` ops expanded (`tdsl.vector_math_pass`)."""
    from mlir import ir

    from tdsl.vector_math_pass import expand_math, has_expandable

    text = str(module)
    if not has_expandable(text):
        return module
    try:
        return ir.Module.parse(expand_math(text))
    except Exception as exc:
        raise PipelineError(f"vector math expansion of kernel '{name}' failed: {exc}") from exc


def _verify(module, stage: str, name: str) -> None:
    try:
        ok = module.operation.verify()
    except Exception as exc:
        raise PipelineError(f"stage '{stage}' of kernel '{name}' does not verify: {exc}") from exc
    if not ok:
        raise PipelineError(f"stage '{stage}' of kernel '{name}' does not verify")


def copies_to_linalg(module) -> None:
    """Rewrite every `memref.copy` (left by bufferization where a statement folds to a plain
    copy) as `linalg.copy`, which becomes loops: `memref.copy` would call the `memrefCopy`
    runtime function, which we do not ship."""
    from mlir import ir
    from mlir.dialects import linalg

    for op in nested_ops(module.operation, "memref.copy"):
        source, target = op.operands[0], op.operands[1]
        with ir.InsertionPoint(op), op.location:
            linalg.copy(source, outs=[target])
        op.operation.erase()


def mark_noalias(module, name: str) -> None:
    """Mark the aligned pointer of every memref argument `noalias` on the lowered function,
    and give the function internal linkage (it is reached through the entry wrapper).

    The runtime guarantees it: outputs never overlap inputs or each other (it computes into a
    fresh array and copies back otherwise), and inputs are only read.
    """
    from mlir import ir

    from tdsl.to_mlir import func_symbol

    symbol = func_symbol(name)
    found = False
    for op in module.body.operations:
        if op.operation.name != "llvm.func":
            continue
        sym = ir.StringAttr(op.attributes["sym_name"]).value
        if sym != symbol and sym not in (symbol + "_unit", symbol + "_any"):
            continue
        func_type = str(op.attributes["function_type"])
        inner = func_type[func_type.index("(") + 1:func_type.rindex(")")]
        arg_types = [t.strip() for t in inner.split(",")] if inner.strip() else []
        attrs, ptr_seen = [], 0
        for t in arg_types:
            if t in ("ptr", "!llvm.ptr"):
                ptr_seen += 1
                if ptr_seen % 2 == 0:  # (allocated, aligned) pairs: accesses use aligned
                    attrs.append(ir.DictAttr.get({"llvm.noalias": ir.UnitAttr.get()}))
                    continue
            attrs.append(ir.DictAttr.get({}))
        op.attributes["arg_attrs"] = ir.ArrayAttr.get(attrs)
        # Only the entry wrapper calls it: once inlined there, no second copy is compiled.
        op.attributes["linkage"] = ir.Attribute.parse("#llvm.linkage<internal>")
        found = found or sym == symbol
    if not found:
        raise PipelineError(f"no llvm.func @{symbol} after lowering")


def entry_wrapper(llvm_ir: str, name: str) -> str:
    """LLVM IR of `void tdsl_entry_<name>(ptr args)`: loads every argument of the lowered
    function (pointers and i64s of the expanded memref descriptors, in order) from
    consecutive 8-byte slots and calls it. One pointer per call keeps ctypes cheap."""
    from tdsl.to_mlir import func_symbol

    symbol = func_symbol(name)
    m = re.search(rf"define (?:internal )?void @{symbol}\((.*?)\)", llvm_ir)
    if m is None:
        raise PipelineError(f"no function @{symbol} in the LLVM IR")
    types = [p.split()[0] for p in m.group(1).split(",")] if m.group(1).strip() else []
    lines = [f"define void @{entry_symbol(name)}(ptr noalias nocapture readonly %args) {{"]
    values = []
    for k, t in enumerate(types):
        if t not in ("ptr", "i64"):
            raise PipelineError(f"unexpected argument type {t} of @{symbol}")
        lines.append(f"  %p{k} = getelementptr inbounds i64, ptr %args, i64 {k}")
        lines.append(f"  %a{k} = load {t}, ptr %p{k}, align 8")
        values.append(f"{t} %a{k}")
    lines.append(f"  call void @{symbol}({', '.join(values)})")
    lines += ["  ret void", "}", ""]
    return "\n" + "\n".join(lines) + _fast_wrapper(types, name)


def fast_symbol(kernel_name: str) -> str:
    """The fast entry point: `void tdsl_fast_<kernel>(int64_t *template, int64_t data_offset,
    PyObject *array...)`."""
    return f"tdsl_fast_{kernel_name}"


def _fast_wrapper(types: list[str], name: str) -> str:
    """LLVM IR of the fast entry: copies a template of the packed slots (every field but the
    data pointers, fixed for a given set of shapes and strides) to the stack, reads each
    array's data pointer from the numpy array object (`data_offset` bytes into it, checked by
    the runtime) and calls the packed entry. It spares the caller the slow `ndarray.ctypes`."""
    starts = [k for k in range(len(types) - 1) if types[k] == types[k + 1] == "ptr"]
    arrays = ", ".join(f"ptr %o{k}" for k in range(len(starts)))
    lines = [f"define void @{fast_symbol(name)}(ptr noalias nocapture readonly %template, "
             f"i64 %data_offset{', ' + arrays if arrays else ''}) {{",
             f"  %slots = alloca [{max(len(types), 1)} x i64], align 8"]
    for k in range(len(types)):
        lines += [f"  %tp{k} = getelementptr inbounds i64, ptr %template, i64 {k}",
                  f"  %tv{k} = load i64, ptr %tp{k}, align 8",
                  f"  %sp{k} = getelementptr inbounds i64, ptr %slots, i64 {k}",
                  f"  store i64 %tv{k}, ptr %sp{k}, align 8"]
    for k, start in enumerate(starts):
        lines += [f"  %field{k} = getelementptr inbounds i8, ptr %o{k}, i64 %data_offset",
                  f"  %data{k} = load ptr, ptr %field{k}, align 8",
                  f"  store ptr %data{k}, ptr %sp{start}, align 8",
                  f"  store ptr %data{k}, ptr %sp{start + 1}, align 8"]
    lines += [f"  call void @{entry_symbol(name)}(ptr %slots) noinline", "  ret void", "}", ""]
    return "\n" + "\n".join(lines)


def _run_llvm(llvm_ir: str | None, stages: Sequence[str], wanted: set[str],
              result: PipelineResult) -> None:
    from tdsl.codegen import llvm as cg

    if llvm_ir is None:
        raise PipelineError("no LLVM IR was produced")
    start = time.perf_counter()
    mod = cg.optimize_ir(llvm_ir)
    result.timings["llvm"] = time.perf_counter() - start
    result.llvm_module = mod
    if "llvm" in wanted:
        result.ir["llvm"] = str(mod)
    steps: dict[str, Callable] = {"asm": cg.emit_assembly, "obj": cg.emit_object}
    for stage in stages[1:]:
        start = time.perf_counter()
        out = steps[stage](mod)
        result.timings[stage] = time.perf_counter() - start
        if stage in wanted:
            result.ir[stage] = out

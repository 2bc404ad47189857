"""LLVM IR text -> machine code with llvmlite: parse, verify, O3 for the host, objects,
assembly and MCJIT-loaded code.

The host target machine uses `get_host_cpu_name()` and `get_host_cpu_features()` (AVX-512
where present). Optimization is LLVM's O3 through the new pass manager. Before any code is
loaded, the module's external functions are checked against the symbols we know to exist in
the process (libc allocation and memory functions, libm): MCJIT does not report an undefined
symbol, the call just jumps to address 0. `llvmlite.binding.initialize()` is never called
(it raises in llvmlite 0.50).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import threading
from dataclasses import dataclass

import llvmlite.binding as llvm

_LOCK = threading.RLock()
_STATE: dict[str, object] = {}

# Functions the generated code may call, all resolved from the running process.
_LIBC = frozenset({"malloc", "free", "aligned_alloc", "posix_memalign", "calloc", "realloc",
                   "memcpy", "memmove", "memset"})
_LIBM_BASE = ("exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "cbrt", "sin",
              "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "tanh", "asinh",
              "acosh", "atanh", "erf", "erfc", "pow", "fmod", "floor", "ceil", "round", "trunc",
              "rint", "nearbyint", "fabs", "copysign", "fmin", "fmax", "hypot", "ldexp", "frexp")
_LIBM = frozenset(n + suffix for n in _LIBM_BASE + ("fma",) for suffix in ("", "f"))
KNOWN_EXTERNALS = _LIBC | _LIBM
OPENMP_PREFIXES = ("__kmpc_", "omp_")  # libomp's entry points (tdsl.runtime.threads)


# Compile time versus code: the loop vectorizer stays on (with interleaving, which gives
# reductions several accumulators), but the vectorized epilogue loop is off on AVX2 hosts (it
# doubled code size and compile time for little gain), and so is the generic loop unroller
# (its runtime unrolling of remainder loops too). With AVX-512 the interleaved loop takes 64
# floats per iteration and leaves up to 63 to the scalar remainder (a third of a 254-wide
# stencil row): there the epilogue stays on (stencil3d 256^3 10.5 -> 9.8 ms on one thread;
# LLVM's time over the samples' 108 kernels +11 %). The epilogue switch is a `cl::opt`, global
# to the process's LLVM, which Numba shares: it is set for the length of `optimize` only, then
# put back to LLVM's default (set for good, it cost a Numba convolution in the same process 6x).
SCOPED_FLAGS = {"-enable-epilogue-vectorization": ("false", "true")}
"""Each LLVM flag `optimize` sets: (tdsl's value, LLVM's default, restored afterwards);
`scoped_flags` adapts tdsl's values to the host."""
WIDE_VECTORS_FLAGS = {"-enable-epilogue-vectorization": "true"}
"""tdsl's values on hosts with 512-bit vectors (AVX-512)."""
LOOP_UNROLLING = False
LOOP_INTERLEAVING = True


class CodegenError(RuntimeError):
    """LLVM IR that cannot become safe machine code (a bug in tdsl, not a user error)."""


def _init() -> None:
    """Initialize the native target once per process and make sure libm is loaded."""
    with _LOCK:
        if _STATE.get("ready"):
            return
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        llvm.initialize_native_asmparser()
        # The JIT resolves calls from the process's libraries: libm, and libgcc_s for the
        # conversions LLVM leaves to a runtime routine (f64 -> f16 `__truncdfhf2`, and f32 ->
        # f16 without F16C), which the shared-library path gets from the linker.
        for name in ("m", "gcc_s"):
            found = ctypes.util.find_library(name)
            if found:
                llvm.load_library_permanently(found)
        from tdsl.runtime import threads

        if threads.load() is not None:  # the JIT resolves __kmpc_* from the process's libomp
            llvm.load_library_permanently(threads.libomp_path())
        _STATE["ready"] = True


def host_cpu() -> tuple[str, str]:
    """The host CPU name and its feature string (as LLVM spells them)."""
    _init()
    return llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


def target_machine(jit: bool = False) -> llvm.TargetMachine:
    """A new target machine for the host at O3: for MCJIT (which takes ownership of it), or
    position-independent for objects that go into shared libraries."""
    _init()
    name, features = host_cpu()
    target = llvm.Target.from_triple(llvm.get_process_triple())
    if jit:
        return target.create_target_machine(cpu=name, features=features, opt=3,
                                            reloc="default", codemodel="jitdefault", jit=True)
    return target.create_target_machine(cpu=name, features=features, opt=3, reloc="pic",
                                        codemodel="default")


def _shared_target_machine() -> llvm.TargetMachine:
    with _LOCK:
        if "tm" not in _STATE:
            _STATE["tm"] = target_machine()
        return _STATE["tm"]  # type: ignore[return-value]


def parse(llvm_ir: str) -> llvm.ModuleRef:
    """Parse and verify LLVM IR text, set to the host triple and data layout."""
    _init()
    with _LOCK:  # llvmlite parses into LLVM's global context, which is not thread-safe
        try:
            mod = llvm.parse_assembly(llvm_ir)
            mod.verify()
        except RuntimeError as exc:
            raise CodegenError(f"invalid LLVM IR: {exc}") from exc
        tm = _shared_target_machine()
        mod.triple = llvm.get_process_triple()
        mod.data_layout = str(tm.target_data)
    return mod


def optimize(mod: llvm.ModuleRef, speed_level: int = 3) -> llvm.ModuleRef:
    """Run LLVM's O`speed_level` pipeline (new pass manager) on the module, in place."""
    with _LOCK:
        tm = _shared_target_machine()
        pto = llvm.create_pipeline_tuning_options(speed_level=speed_level)
        pto.loop_vectorization = True
        pto.slp_vectorization = True
        pto.loop_unrolling = LOOP_UNROLLING
        pto.loop_interleaving = LOOP_INTERLEAVING
        pb = llvm.create_pass_builder(tm, pto)
        pm = pb.getModulePassManager()
        for flag, ours in scoped_flags().items():
            llvm.set_option("tdsl", f"{flag}={ours}")
        try:
            pm.run(mod, pb)
        finally:
            for flag, (_, default) in SCOPED_FLAGS.items():
                llvm.set_option("tdsl", f"{flag}={default}")
        mod.verify()
    return mod


def scoped_flags() -> dict[str, str]:
    """tdsl's value of each of `SCOPED_FLAGS` on this host."""
    ours = {flag: value for flag, (value, _) in SCOPED_FLAGS.items()}
    if "+avx512f" in host_cpu()[1].split(","):
        ours.update(WIDE_VECTORS_FLAGS)
    return ours


def external_functions(mod: llvm.ModuleRef) -> list[str]:
    """The functions the module declares but does not define (intrinsics excluded)."""
    return sorted(f.name for f in mod.functions
                  if f.is_declaration and not f.name.startswith("llvm."))


def check_externals(mod: llvm.ModuleRef, provided: frozenset[str] = frozenset()) -> None:
    """Fail loudly when the module calls a function that is not known to exist."""
    _init()
    for name in external_functions(mod):
        if name in provided:
            continue
        if name not in KNOWN_EXTERNALS and not name.startswith(OPENMP_PREFIXES):
            raise CodegenError(f"generated code calls unknown external function '{name}'")
        if not llvm.address_of_symbol(name):
            raise CodegenError(f"external function '{name}' is not available in this process")
    # Intrinsics that codegen turns into libm calls (llvm.exp.v8f32 -> expf).
    for f in mod.functions:
        m = re.match(r"llvm\.(\w+)\.(?:v\d+)?(f32|f64)$", f.name)
        if f.is_declaration and m and m.group(1) in _LIBM_BASE:
            libname = m.group(1) + ("f" if m.group(2) == "f32" else "")
            if not llvm.address_of_symbol(libname):
                raise CodegenError(f"'{f.name}' needs '{libname}', not found in this process")


def uses_openmp(mod: llvm.ModuleRef) -> bool:
    """True when the module calls libomp (a kernel with a parallel loop)."""
    return any(name.startswith(OPENMP_PREFIXES) for name in external_functions(mod))


def optimize_ir(llvm_ir: str) -> llvm.ModuleRef:
    """Parse, verify, optimize at O3 and check the external functions of LLVM IR text."""
    with _LOCK:
        mod = optimize(parse(llvm_ir))
        check_externals(mod)
    return mod


def emit_assembly(mod: llvm.ModuleRef) -> str:
    """Host assembly of an optimized module."""
    with _LOCK:
        return _shared_target_machine().emit_assembly(mod)


def emit_object(mod: llvm.ModuleRef) -> bytes:
    """A host object file (ELF / Mach-O) of an optimized module."""
    with _LOCK:
        return _shared_target_machine().emit_object(mod)


@dataclass
class JitCode:
    """Machine code loaded in this process by MCJIT; keep it alive while its functions run."""

    engine: llvm.ExecutionEngine
    module: llvm.ModuleRef

    def address(self, name: str) -> int:
        """The address of a defined function (CodegenError if absent)."""
        addr = self.engine.get_function_address(name)
        if not addr:
            raise CodegenError(f"no function '{name}' in the loaded code")
        return addr


def jit(mod: llvm.ModuleRef) -> JitCode:
    """Load an optimized, checked module with MCJIT (one engine per module)."""
    _init()
    with _LOCK:
        engine = llvm.create_mcjit_compiler(mod, target_machine(jit=True))
        engine.finalize_object()
        engine.run_static_constructors()
    return JitCode(engine, mod)

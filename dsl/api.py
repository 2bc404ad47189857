"""The Python API: `load`, `loads` and the module and kernel objects they return.

A kernel call validates its arguments through the kernel's `Signature` (the same code for
every target), allocates the outputs it was not given, and runs the target's executable. On
the cuda target, a call with a device array (or another DLPack object) goes to the
executable's own `__call__` (`tdsl.runtime.device_array.bind_device_call`), which validates
with the same `Signature`.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from tdsl.runtime.signature import BoundCall, Signature

TARGETS = ("cpu", "reference", "cuda")
DEFAULT_TARGET = "cpu"


class Executable(Protocol):
    """What a target produces for one kernel."""

    def run(self, call: BoundCall) -> None:
        """Compute the outputs of a validated call into `call.outputs`."""


class Kernel:
    """A callable kernel of a loaded module.

    Call it with the inputs (positionally or by name); it returns the outputs (a tuple when
    there are several), or writes into arrays passed by output name. On the cuda target the
    arrays may also be device arrays (`tdsl.cuda`): outputs the call allocates are then
    `tdsl.cuda.DeviceArray`s.
    """

    def __init__(self, signature: Signature, target: str,
                 make_executable: Callable[[], Executable]):
        self.signature = signature
        self.target = target
        self.__name__ = signature.name
        doc = signature.doc.strip()
        self.__doc__ = f"{doc}\n\n{signature}" if doc else str(signature)
        self._make_executable = make_executable
        self._executable: Executable | None = None
        # The executable's fast path, once the executable exists: the first call validates
        # (and compiles) through the full path.
        self._fast_call: Callable[[tuple, dict], Any] | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The kernel's name."""
        return self.signature.name

    def executable(self) -> Executable:
        """The target's compiled form, built on first use (once, even across threads)."""
        if self._executable is None:
            with self._lock:
                if self._executable is None:
                    executable = self._make_executable()
                    self._fast_call = getattr(executable, "fast_call", None)
                    entry = getattr(executable, "native", None)
                    if entry is not None:  # from now on calls go straight to machine code
                        self.__class__ = _native_kernel_class(entry.function)
                    self._executable = executable
        return self._executable

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._fast_call is not None:
            result = self._fast_call(args, kwargs)
            if result is not None:
                return result
        if self.target == "cuda":
            from tdsl.runtime.device_array import device_call_needed

            if device_call_needed(args, kwargs):
                return self._device_call(args, kwargs)
        call = self.signature.bind(args, kwargs)
        executable = self.executable()
        call.allocate_outputs()
        aliased = _detach_aliased_outputs(call)
        executable.run(call)
        for index, given in aliased:
            given[...] = call.outputs[index]
            call.outputs[index] = given
        return call.result()

    def _device_call(self, args: tuple, kwargs: dict) -> Any:
        """A cuda call with device arrays: `CudaExecutable.__call__` validates and runs it."""
        executable: Any = self.executable()
        return executable(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<tdsl kernel {self.signature} on {self.target}>"


def _native_kernel_class(function: Callable[..., Any]) -> type:
    """A subclass of `Kernel` whose `__call__` is the kernel's native entry itself.

    A builtin function is not a descriptor, so `kernel(...)` calls it with the arguments
    alone, without a Python-level frame in between (about 0.3 us less per call)."""
    return type("Kernel", (Kernel,), {"__call__": function, "__module__": Kernel.__module__,
                                      "__qualname__": Kernel.__qualname__})


def _detach_aliased_outputs(call: BoundCall) -> list[tuple[int, np.ndarray]]:
    """Give each output that may overlap an input a fresh array; return (index, original)
    pairs to copy back after the run, so aliasing never changes a result."""
    pairs = []
    for index, out in enumerate(call.outputs):
        if call.given_outputs[index] is None:
            continue
        if any(np.may_share_memory(out, array) for array in call.inputs):
            pairs.append((index, out))
            call.outputs[index] = np.empty_like(out, order="C")
    return pairs


class Module:
    """The kernels of one source file, as attributes (and by name with `module[name]`)."""

    def __init__(self, kernels: dict[str, Kernel], filename: str, target: str):
        self.kernels = kernels
        self.filename = filename
        self.target = target
        for name, kernel in kernels.items():  # plain attributes: no __getattr__ per call
            if not hasattr(type(self), name) and name not in self.__dict__:
                self.__dict__[name] = kernel

    def __getattr__(self, name: str) -> Kernel:
        kernels = self.__dict__.get("kernels", {})
        if name in kernels:
            return kernels[name]
        raise AttributeError(f"module {self.__dict__.get('filename')!r} has no kernel "
                             f"{name!r}; kernels: {', '.join(kernels) or 'none'}")

    def __getitem__(self, name: str) -> Kernel:
        return self.kernels[name]

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.kernels))

    def __iter__(self):
        return iter(self.kernels.values())

    def __repr__(self) -> str:
        return f"<tdsl module {self.filename} ({self.target}): {', '.join(self.kernels)}>"


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; targets are {', '.join(TARGETS)}")


def loads(source: str, target: str = DEFAULT_TARGET, filename: str = "<string>") -> Module:
    """Check a tdsl source text and return its kernels for `target` (cpu, reference, cuda).

    Raises `tdsl.TdslError` with located diagnostics for a program with errors.
    """
    _check_target(target)
    if target == "cpu" and _cache_usable():
        cached = _load_cached_cpu(source, filename)
        if cached is not None:
            return cached
    from tdsl.check import check_source

    program = check_source(source, filename)
    factory = _executable_factory(target)
    kernels = {k.name: Kernel(k.signature, target, _bind(factory, k, program))
               for k in program.kernels}
    return Module(kernels, filename, target)


def load(path: str | os.PathLike[str], target: str = DEFAULT_TARGET) -> Module:
    """Read, check and prepare a `.tdsl` file (see `loads`)."""
    _check_target(target)
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:  # a located diagnostic, like any other source error
        from tdsl.source import Diagnostic, Source, Span, TdslError

        text = data.decode("utf-8", errors="replace")
        at = len(data[:exc.start].decode("utf-8", errors="replace"))
        raise TdslError(Source(text, os.fspath(path)), [Diagnostic(
            Span(at, at + 1), f"not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    return loads(text, target, os.fspath(path))


def _cache_usable() -> bool:
    from tdsl.runtime import cache

    return cache.enabled() and cache.usable()


def _load_cached_cpu(source: str, filename: str) -> Module | None:
    """The cpu module from the disk cache, compiling and storing it on a miss; None on a miss
    without a linker (the kernels are then compiled in memory). A hit needs neither the
    parser, nor the compiler, nor a linker."""
    from tdsl.runtime import cache
    from tdsl.runtime.aot import LibraryError, open_library

    entry = cache.key(source, "cpu")
    for attempt in (1, 2):
        library = cache.lookup(entry)
        if library is None:
            from tdsl.codegen.link import find_linker

            if find_linker() is None:
                return None
            from tdsl.check import check_source
            from tdsl.compiler import build_library

            program = check_source(source, filename)
            library = cache.store(entry, functools.partial(build_library, program))
        try:
            _, executables = open_library(library)
            break
        except LibraryError as exc:
            if attempt == 2:
                raise
            cache.drop(entry, str(exc))
    kernels = {name: Kernel(ex.signature, "cpu", _constant(ex))
               for name, ex in executables.items()}
    return Module(kernels, filename, "cpu")


def _constant(value):
    return lambda: value


def _bind(factory, kernel, program) -> Callable[[], Executable]:
    return lambda: factory(kernel, program)


def _executable_factory(target: str) -> Callable[..., Executable]:
    if target == "reference":
        from tdsl.runtime.reference import ReferenceExecutable

        return lambda kernel, program: ReferenceExecutable(kernel)
    if target == "cpu":
        from tdsl.runtime import cpu

        return lambda kernel, program: cpu.compile_kernel(kernel)
    from tdsl.runtime import cuda  # noqa: F401 - raises a clear error where unavailable

    return lambda kernel, program: cuda.compile_kernel(kernel)

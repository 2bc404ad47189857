"""tdsl kernels over Dask arrays: lazy, chunked by the kernel's own structure.

    import tdsl.dask
    mod = tdsl.dask.load("samples/softmax.tdsl")     # check, compile once, analyse
    y = mod.softmax(x)                               # x: a dask array; y: a lazy dask array
    y.compute()                                      # threaded scheduler or a distributed Client

The kernel decides the chunking (`tdsl.dask_structure`): dimensions indexed only by parallel
indices keep their chunks; stencil dimensions keep theirs and borrow a halo from the next
block (dask's overlap); a single sum/max/min/prod kernel is split into per-chunk partials
combined by `dask.array.reduction`; every other dimension is put in one chunk (a
`ChunkingWarning` when that makes blocks larger than dask's `array.chunk-size`, a
`ValueError` with `allow_rechunk=False`). Arguments are validated before any task exists,
with the messages of a numpy call.

Workers never compile: each task carries a reference to one compiled library, whose bytes
travel once per worker as a graph dependency (`ship="bytes"`, the default), are read from the
same path (`ship="path"`, a cache directory all workers share), or, with `ship="source"`,
the source is compiled once per worker process (also the way to run `target="reference"`).
The compiled call releases the GIL, so threads of one worker run blocks in parallel.
"""

from __future__ import annotations

import hashlib
import math
import operator
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

try:
    import dask
    import dask.array as da
    from dask.array.core import unify_chunks
    from dask.array.overlap import overlap
    from dask.utils import format_bytes, parse_bytes
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("tdsl.dask needs dask: pip install 'tdsl[dask]'") from exc

import tdsl
from tdsl import checked as c
from tdsl.dask_structure import Structure, analyze
from tdsl.dask_worker import BlockRunner, LibraryRef, aggregate, combine, keep, module_for
from tdsl.runtime.signature import Signature, numpy_dtype

__all__ = ["ChunkingWarning", "DaskKernel", "DaskModule", "Plan", "load", "loads", "wrap"]
SHIP_MODES = ("bytes", "path", "source")


class ChunkingWarning(UserWarning):
    """A dimension the kernel needs whole was put in one chunk, making large blocks."""


# ---- the plan of one call ------------------------------------------------------------------------


@dataclass
class Plan:
    """How one call is cut into blocks: the halo of each chunked symbol (0: chunked freely),
    the split symbols and their op, the symbols put in one chunk and why, the input chunks
    per symbol, and notes on every rechunk made for the kernel."""

    kernel: str
    halos: dict[str, int] = field(default_factory=dict)
    split: dict[str, str] = field(default_factory=dict)
    merged: dict[str, str] = field(default_factory=dict)
    chunks: dict[str, tuple[int, ...]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"plan of {self.kernel}():"]
        lines += [f"  {s}: chunks {self.chunks.get(s)}, halo {h}" for s, h in self.halos.items()]
        lines += [f"  {s}: chunks {self.chunks.get(s)}, partial {op}s" for s, op in
                  self.split.items()]
        lines += [f"  {s}: one chunk ({why})" for s, why in self.merged.items()]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


@dataclass
class _Prepared:
    plan: Plan
    values: list[Any]  # per input: a dask array or a 0-d ndarray (a scalar)
    indices: list[tuple[str, ...] | None]
    output_shapes: list[tuple[int, ...]]


def _fake(value: Any, name: str, where: str) -> Any:
    """A zero-memory numpy stand-in of a dask array (same shape, dtype in native order)."""
    if not isinstance(value, da.Array):
        return value
    if any(np.isnan(s) for s in value.shape):
        raise ValueError(f"{where}: argument '{name}' has unknown chunk sizes (shape "
                         f"{value.shape}); call {name}.compute_chunk_sizes() first")
    dtype = value.dtype.newbyteorder("=") if value.dtype.kind not in "OV" else value.dtype
    return np.broadcast_to(np.zeros((), dtype=dtype), value.shape)


def _fit_chunks(chunks: tuple[int, ...], least: int) -> tuple[int, ...]:
    """Merge neighbouring chunks until each holds at least `least` elements."""
    if all(size >= least for size in chunks):
        return chunks
    fitted: list[int] = []
    pending = 0
    for size in chunks:
        pending += size
        if pending >= least:
            fitted.append(pending)
            pending = 0
    if pending:
        if fitted:
            fitted[-1] += pending
        else:
            fitted.append(pending)
    return tuple(fitted)


class DaskKernel:
    """A tdsl kernel called on dask arrays: returns lazy dask arrays (a tuple for several
    outputs). Inputs may be dask arrays, numpy arrays or scalars; outputs cannot be given.

    Options: `split_reductions` (split a single sum/max/min/prod kernel into per-chunk
    partials; False puts the reduced dimensions in one chunk instead), `allow_rechunk`
    (False: raise instead of changing the chunks the kernel cannot use), `max_block_bytes`
    (the block size over which merging dimensions warns; default dask's `array.chunk-size`),
    `split_every` (the fan-in of the tree that combines partial results).
    """

    def __init__(self, checked: c.Kernel, ref: LibraryRef, payload: bytes | str | None, *,
                 split_reductions: bool = True, allow_rechunk: bool = True,
                 max_block_bytes: int | str | None = None, split_every: int | None = None):
        self.signature: Signature = checked.signature
        self.structure: Structure = analyze(checked)
        self.name = checked.name
        self.__name__ = checked.name
        doc = self.signature.doc.strip()
        self.__doc__ = f"{doc}\n\n{self.signature}" if doc else str(self.signature)
        self._ref = ref
        self._payload = None if payload is None else dask.delayed(
            payload, name=f"tdsl-library-{ref.digest[:24]}", pure=True)
        self.split_reductions = split_reductions
        self.allow_rechunk = allow_rechunk
        self.max_block_bytes = max_block_bytes
        self.split_every = split_every

    def __repr__(self) -> str:
        return f"<tdsl dask kernel {self.signature} ({self._ref.target}, {self._ref.kind})>"

    def plan(self, *args: Any, **kwargs: Any) -> Plan:
        """How a call with these arguments would be chunked (validates them; runs nothing)."""
        return self._prepare(args, kwargs).plan

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        prepared = self._prepare(args, kwargs)
        return self._build(prepared)

    # ---- validation and chunking -----------------------------------------------------------
    def _prepare(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> _Prepared:
        sig, where = self.signature, f"{self.name}()"
        given = [k for k in kwargs if k in {p.name for p in sig.outputs}]
        if given:
            raise TypeError(f"{where}: outputs cannot be given to a dask call ({given[0]}=); "
                            "dask arrays are immutable, use the returned arrays")
        names = [p.name for p in sig.inputs]
        fakes = [_fake(v, names[k] if k < len(names) else f"#{k}", where)
                 for k, v in enumerate(args)]
        call = sig.bind(fakes, {k: _fake(v, k, where) for k, v in kwargs.items()})
        raw = {**dict(zip(names, args)), **kwargs}
        values: list[Any] = []
        for index, param in enumerate(sig.inputs):
            value = raw[param.name]
            if not isinstance(value, da.Array):
                value = call.inputs[index]
                if value.ndim:
                    value = da.from_array(value, chunks=value.shape)
            values.append(value)
        if not any(isinstance(v, da.Array) for v in values):
            raise TypeError(f"{where}: a kernel with no array inputs has nothing to chunk; "
                            "call it with tdsl directly")
        split = dict(self.structure.split) if self.split_reductions else {}
        merged = dict(self.structure.reasons)
        if not self.split_reductions:
            merged.update({s: "split_reductions=False" for s in self.structure.split})
        windowed = set(self.structure.windowed)
        while True:
            attempt = self._attempt(values, call.symbols, windowed, split, merged)
            if isinstance(attempt, _Prepared):
                attempt.output_shapes = call.output_shapes
                return attempt
            windowed -= set(attempt)
            merged.update(attempt)

    def _halos(self, symbols: dict[str, int], windowed: set[str],
               merged: dict[str, str]) -> dict[str, int]:
        halos: dict[str, int] = {}
        for sym in sorted(windowed):
            outs = {-a.evaluate(symbols) for a in self.structure.windowed[sym]}
            locs = [-a.evaluate(symbols) for a in self.structure.local_offsets.get(sym, ())]
            halo = next(iter(outs)) if len(outs) == 1 else -1
            if halo < 0 or any(not 0 <= h <= halo for h in locs):
                merged[sym] = "its outputs and locals do not share one halo"
                continue
            halos[sym] = halo
        return halos

    def _attempt(self, values: list[Any], symbols: dict[str, int], windowed: set[str],
                 split: dict[str, str], merged: dict[str, str]) -> _Prepared | dict[str, str]:
        """Chunk the inputs for these roles; or return symbols to merge and try again."""
        halos = self._halos(symbols, windowed, merged)
        chunked = set(halos) | set(split)
        plan = Plan(self.name, halos, split, {s: merged[s] for s in sorted(merged)})
        indices: list[tuple[str, ...] | None] = []
        arrays = list(values)
        for k, (param, value) in enumerate(zip(self.signature.inputs, values)):
            if not isinstance(value, da.Array):
                indices.append(None)
                continue
            index = tuple(d.as_name() if d.as_name() in chunked else f"{param.name}.{n}"
                          for n, d in enumerate(param.type.shape))
            indices.append(index)
            arrays[k] = self._merge(param.name, value, index, plan)
        pairs = [x for a, i in zip(arrays, indices) if i is not None for x in (a, i)]
        chunkss, unified = unify_chunks(*pairs)
        unified_iter = iter(unified)
        arrays = [next(unified_iter) if i is not None else a for a, i in zip(arrays, indices)]
        for sym, halo in halos.items():
            fitted = _fit_chunks(chunkss[sym], halo + 1) if halo else chunkss[sym]
            if fitted != chunkss[sym]:
                self._refuse(f"chunks of {sym} {chunkss[sym]} are merged to {fitted} so that "
                             f"every block holds at least its halo of {halo} plus one")
                plan.notes.append(f"{sym}: chunks {chunkss[sym]} merged to {fitted} (halo "
                                  f"{halo})")
                arrays = [a.rechunk({i.index(sym): fitted}) if i and sym in i else a
                          for a, i in zip(arrays, indices)]
            plan.chunks[sym] = fitted
        plan.chunks.update({s: chunkss[s] for s in split})
        failing = self._conditions(symbols, plan)
        if failing:
            return failing
        for k, index in enumerate(indices):
            depth = {n: (0, halos[s]) for n, s in enumerate(index or ()) if halos.get(s)}
            if depth:
                arrays[k] = overlap(arrays[k], depth=depth,
                                    boundary={n: "none" for n in depth})
        return _Prepared(plan, arrays, indices, [])

    def _conditions(self, symbols: dict[str, int], plan: Plan) -> dict[str, str]:
        """Symbols to merge because a call-time condition would fail on the smallest block."""
        smallest = dict(symbols)
        for sym, halo in plan.halos.items():
            sizes = list(plan.chunks[sym])
            windows = [s + halo for s in sizes[:-1]] + sizes[-1:]
            smallest[sym] = min(windows)
        failing: dict[str, str] = {}
        for cond in self.signature.conditions:
            if not cond.holds(smallest):
                for sym in cond.expr.names() & set(plan.halos):
                    failing[sym] = f"{cond.message} would fail on a block"
        return failing

    def _refuse(self, what: str, hint: str = "rechunk the input") -> None:
        if not self.allow_rechunk:
            raise ValueError(f"{self.name}(): {what}; {hint}, or load with "
                             "allow_rechunk=True")

    def _merge(self, name: str, array: Any, index: tuple[str, ...], plan: Plan) -> Any:
        """Put the dimensions the kernel needs whole in one chunk (warning when large)."""
        whole = {n: -1 for n, label in enumerate(index)
                 if label.startswith(f"{name}.") and array.numblocks[n] > 1}
        if not whole:
            return array
        param = next(p for p in self.signature.inputs if p.name == name)
        reasons = []
        for n in whole:
            dim = param.type.shape[n]
            why = plan.merged.get(dim.as_name() or "", f"its size is fixed at {dim}")
            self._refuse(f"argument '{name}' has {array.numblocks[n]} chunks along dimension "
                         f"{n} ({dim}), which must be one chunk: {why}",
                         f"rechunk it ({name}.rechunk({{{n}: -1}}))")
            plan.notes.append(f"'{name}' dimension {n} ({dim}) put in one chunk: {why}")
            reasons.append(f"{dim}: {why}")
        merged = array.rechunk(whole)
        block = math.prod(max(c, default=0) for c in merged.chunks) * merged.dtype.itemsize
        limit = parse_bytes(self.max_block_bytes or dask.config.get("array.chunk-size"))
        if block > limit:
            warnings.warn(
                f"{self.name}(): argument '{name}' is put in one chunk along "
                f"{'; '.join(reasons)}. Its blocks now hold up to {format_bytes(int(block))}, "
                f"over the {format_bytes(limit)} block limit (dask's array.chunk-size or "
                "max_block_bytes); chunk its other dimensions more finely.",
                ChunkingWarning, stacklevel=5)
        return merged

    # ---- the graph ------------------------------------------------------------------------
    def _build(self, prepared: _Prepared) -> Any:
        plan = prepared.plan
        split_labels = tuple(plan.split)
        runner = BlockRunner(self._ref, self.name, len(split_labels))
        args: list[Any] = [self._payload, None]
        for value, index in zip(prepared.values, prepared.indices):
            args += [value, index]
        token = dask.base.tokenize(runner, *args)
        name = f"tdsl-{self.name}-{token}"
        adjust = {s: tuple(plan.chunks[s][:-1]) + (plan.chunks[s][-1] - h,)
                  for s, h in plan.halos.items() if h}
        adjust.update({s: 1 for s in split_labels})
        outs = []
        shared = tuple(sorted(plan.halos))
        results = None
        if len(self.signature.outputs) > 1:
            results = da.blockwise(runner, shared, *args, name=f"{name}-all", concatenate=True,
                                   adjust_chunks={s: adjust[s] for s in shared if s in adjust},
                                   meta=np.empty((0,) * len(shared), dtype=object))
        for k, (param, shape) in enumerate(zip(self.signature.outputs, prepared.output_shapes)):
            index, new_axes = [], {}
            for n, (dim, size) in enumerate(zip(param.type.shape, shape)):
                sym = next((s for s in dim.names() if s in plan.halos), None)
                label = sym if sym is not None else f"{param.name}.{n}"
                index.append(label)
                if sym is None:
                    new_axes[label] = size
            dtype = numpy_dtype(param.type.dtype)
            if results is not None:
                outs.append(da.blockwise(operator.itemgetter(k), tuple(index), results, shared,
                                         new_axes=new_axes, name=f"{name}-{param.name}",
                                         meta=np.empty((0,) * len(index), dtype=dtype)))
                continue
            full = tuple(index) + split_labels
            out = da.blockwise(runner, full, *args, name=name, new_axes=new_axes,
                               adjust_chunks=adjust, concatenate=True,
                               meta=np.empty((0,) * len(full), dtype=dtype))
            if split_labels:
                out = self._combine_partials(out, len(index), dtype)
            outs.append(out)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _combine_partials(self, partials: Any, rank: int, dtype: np.dtype) -> Any:
        op = self.structure.split_op or "sum"
        acc = np.dtype(np.float32) if dtype.kind == "f" and dtype.itemsize < 4 else dtype
        if dtype.name == "bfloat16":
            acc = np.dtype(np.float32)
        axes = tuple(range(rank, partials.ndim))
        return da.reduction(partials, chunk=keep, combine=partial(combine, op, acc),
                            aggregate=partial(aggregate, op, acc, dtype), axis=axes,
                            keepdims=False, dtype=dtype, split_every=self.split_every,
                            concatenate=True, meta=np.empty((0,) * rank, dtype=dtype),
                            name=f"tdsl-{self.name}-{op}")


class DaskModule:
    """The kernels of one source, as `DaskKernel` attributes (and `module[name]`)."""

    def __init__(self, kernels: dict[str, DaskKernel], filename: str, ref: LibraryRef):
        self.kernels = kernels
        self.filename = filename
        self.ref = ref

    def __getattr__(self, name: str) -> DaskKernel:
        kernels = self.__dict__.get("kernels", {})
        if name in kernels:
            return kernels[name]
        raise AttributeError(f"module {self.__dict__.get('filename')!r} has no kernel "
                             f"{name!r}; kernels: {', '.join(kernels) or 'none'}")

    def __getitem__(self, name: str) -> DaskKernel:
        return self.kernels[name]

    def __iter__(self):
        return iter(self.kernels.values())

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.kernels))

    def __repr__(self) -> str:
        return f"<tdsl dask module {self.filename}: {', '.join(self.kernels)}>"


# ---- loading -----------------------------------------------------------------------------------


def _compiled_library(source: str, program: c.Program) -> Path | None:
    """The shared library of a source for this CPU: from the disk cache (compiling on a miss),
    built into a private directory when the cache is off, None without a linker."""
    from tdsl.codegen.link import find_linker
    from tdsl.compiler import build_library
    from tdsl.runtime import cache

    if find_linker() is None:
        return None
    if cache.enabled():
        entry = cache.key(source, "cpu")
        found = cache.lookup(entry)
        if found is None:
            found = cache.store(entry, partial(build_library, program))
        return found
    return build_library(program, Path(tempfile.mkdtemp(prefix="tdsl-dask-")) / "kernels.so")


def loads(source: str, target: str = "cpu", filename: str = "<string>", *,
          library: str | os.PathLike[str] | None = None, ship: str = "bytes",
          **options: Any) -> DaskModule:
    """Check a source, compile it once (or use the AOT `library` built from it) and return
    its kernels for dask arrays. `ship` says how workers get the compiled code: "bytes" (the
    library travels with the graph, once per worker), "path" (workers read the same file),
    "source" (each worker process compiles once; the only way for `target="reference"`).
    `options`: split_reductions, allow_rechunk, max_block_bytes, split_every (see DaskKernel)."""
    from tdsl.check import check_source

    if ship not in SHIP_MODES:
        raise ValueError(f"unknown ship mode {ship!r}; modes are {', '.join(SHIP_MODES)}")
    program = check_source(source, filename)
    path = Path(library) if library is not None else None
    if path is None and target == "cpu" and ship != "source":
        path = _compiled_library(source, program)
    if path is None or ship == "source":
        digest = hashlib.sha256(f"{target}\0{source}".encode()).hexdigest()
        ref, payload = LibraryRef(digest, "source", target, "", filename), source
    else:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        ref = LibraryRef(digest, "library", "cpu", str(path.resolve()), filename)
        payload = data if ship == "bytes" else None
        driver = module_for(ref, None)
        _check_library(driver, program, path)
    kernels = {k.name: DaskKernel(k, ref, payload, **options) for k in program.kernels}
    return DaskModule(kernels, filename, ref)


def _check_library(module: tdsl.Module, program: c.Program, path: Path) -> None:
    for kernel in program.kernels:
        found = module.kernels.get(kernel.name)
        if found is None or found.signature.to_json() != kernel.signature.to_json():
            raise ValueError(f"library {path} does not match the source: kernel "
                             f"{kernel.name!r} is {'missing' if found is None else 'different'}")


def load(path: str | os.PathLike[str], target: str = "cpu", **options: Any) -> DaskModule:
    """Read a `.tdsl` file and prepare its kernels for dask arrays (see `loads`)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return loads(text, target, os.fspath(path), **options)


def wrap(obj: Any, *, source: str | os.PathLike[str] | None = None,
         **options: Any) -> DaskModule | DaskKernel:
    """The dask form of a tdsl `Module` (its source is read from `module.filename` unless
    `source` gives the text or a path) or of one `Kernel` (then `source` is required: a
    kernel alone does not keep its source, which says how it may be chunked)."""
    if isinstance(obj, DaskModule | DaskKernel):
        return obj
    target = getattr(obj, "target", "cpu")
    text = _source_text(source, getattr(obj, "filename", None))
    if isinstance(obj, tdsl.Module):
        return loads(text, target, obj.filename, **options)
    if isinstance(obj, tdsl.Kernel):
        if text is None:
            raise TypeError(f"tdsl.dask.wrap({obj.name}): a kernel does not keep its source; "
                            "pass source=TEXT_OR_PATH, or wrap the module it came from")
        return loads(text, target, **options)[obj.name]
    raise TypeError(f"tdsl.dask.wrap() takes a tdsl Module or Kernel, got {type(obj).__name__}")


def _source_text(source: str | os.PathLike[str] | None, filename: str | None) -> str | None:
    candidate = source if source is not None else filename
    if candidate is None:
        return None
    if isinstance(candidate, os.PathLike) or (
            "\n" not in str(candidate) and Path(str(candidate)).is_file()):
        return Path(candidate).read_text(encoding="utf-8")
    if source is None:
        raise TypeError(f"tdsl.dask.wrap(): cannot read the module's source {filename!r}; "
                        "pass source=TEXT_OR_PATH")
    return str(source)

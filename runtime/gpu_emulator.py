"""An emulator of the mapped `gpu` stage on the CPU: every block and thread, in numpy.

It runs the output of the `gpu` stage of `tdsl.gpu_pipeline` (the host function with its
`gpu.alloc` / `gpu.launch_func` / `gpu.dealloc`, and the `gpu.func` kernels) so that the GPU
mapping (index arithmetic, bounds guards, block reductions) is tested on machines without a
GPU. A launch runs all its threads in lockstep, one numpy lane per thread; `scf.if` and loops
with per-thread bounds run under masks, and `gpu.all_reduce` combines the lanes of each block
(its phases are separated like barriers). The emulator checks what a GPU would not:

- every load and store of an active thread stays inside its memref (`EmulatorError`);
- no two threads store to one element in one op, and no thread reads an element that another
  thread wrote since the last barrier (data races);
- host code touches no device memory, collectives are not divergent, and device memory is
  born as garbage (NaN or 0x5A bytes), so an element that is never written shows up.

Sizes should be small: a launch of T threads costs a few numpy operations of length T per
emulated op. `EmulatedExecutable(kernel)` runs a checked kernel like any tdsl target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np

from tdsl.runtime import gpu_emulator_ops as semantics
from tdsl.runtime.gpu_emulator_ops import EmulatorError, numpy_type
from tdsl.runtime.gpu_emulator_program import Block, Op, Program, load_program
from tdsl.runtime.signature import BoundCall

if TYPE_CHECKING:
    from tdsl.checked import Kernel

MAX_ITERATIONS = 10_000_000
_GARBAGE_BYTE = 0x5A
_BF16 = np.dtype(ml_dtypes.bfloat16)


def storage_dtype(dtype: np.dtype) -> np.dtype:
    """The element type a kernel's memref holds for an array dtype, as the emulator keeps
    signless integers (as signed numpy integers): bool and u8 as i8, bf16 as its i16 bits."""
    return {np.dtype(np.bool_): np.dtype(np.int8), np.dtype(np.uint8): np.dtype(np.int8),
            _BF16: np.dtype(np.int16)}.get(dtype, dtype)


# ---- memory --------------------------------------------------------------------------------


@dataclass
class MemRef:
    """A strided view (offset, sizes, strides in elements) of a flat buffer."""

    data: np.ndarray
    offset: int
    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    writer: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    lane_base: np.ndarray | None = field(default=None, repr=False)  # per-block copies

    def __post_init__(self) -> None:
        if self.writer is None:
            self.writer = np.full(self.data.shape, -1, dtype=np.int64)

    @staticmethod
    def garbage(dtype: np.dtype, sizes: tuple[int, ...]) -> MemRef:
        """A fresh row-major buffer full of garbage (NaN for floats, 0x5A bytes otherwise)."""
        count = int(np.prod(sizes, dtype=np.int64)) if sizes else 1
        if dtype.kind == "f":
            data = np.full(count, np.nan, dtype=np.float32).astype(dtype)
        else:
            data = np.full(count * dtype.itemsize, _GARBAGE_BYTE, dtype=np.uint8).view(dtype)
        strides, step = [], 1
        for size in reversed(sizes):
            strides.append(step)
            step *= size
        return MemRef(data, 0, tuple(sizes), tuple(reversed(strides)))

    @staticmethod
    def from_array(array: np.ndarray, pad: int = 0) -> MemRef:
        """A device copy of an array; `pad` > 0 gives a strided layout with gaps (the last
        dimension has stride 1 + pad) and an offset, to test stride handling."""
        array = np.asarray(array)
        storage = array.view(storage_dtype(array.dtype))
        ref = MemRef.garbage(storage.dtype, tuple(array.shape) if not pad else ())
        if pad:
            strides, step = [], 1 + pad
            for size in reversed(array.shape):
                strides.append(step)
                step = step * max(size, 1) + pad
            count = pad + step
            data = MemRef.garbage(storage.dtype, (count,)).data
            ref = MemRef(data, pad, tuple(array.shape), tuple(reversed(strides)))
        ref.view()[...] = storage
        return ref

    def view(self) -> np.ndarray:
        """The elements as a (writeable) numpy view of the buffer."""
        item = self.data.itemsize
        base = self.data[self.offset:] if self.data.size > self.offset else self.data[:0]
        return np.lib.stride_tricks.as_strided(base, shape=self.sizes,
                                               strides=[s * item for s in self.strides])

    def flat_index(self, indices: list, mask: np.ndarray, what: str) -> np.ndarray:
        """Flat positions of per-lane indices; bounds are checked on active lanes."""
        flat = np.full(mask.shape, self.offset, dtype=np.int64)
        if self.lane_base is not None:
            flat = flat + self.lane_base
        for k, (idx, size, stride) in enumerate(zip(indices, self.sizes, self.strides)):
            idx = np.broadcast_to(np.asarray(idx, dtype=np.int64), mask.shape)
            bad = mask & ((idx < 0) | (idx >= size))
            if bad.any():
                lane = int(np.argmax(bad))
                raise EmulatorError(f"{what} out of bounds: index {int(idx[lane])} in dimension "
                                    f"{k} of size {size} (thread {lane})")
            flat = flat + idx * stride
        return np.where(mask, flat, 0)


# ---- execution -----------------------------------------------------------------------------


@dataclass
class _Lanes:
    """The threads of one launch (or the single host thread)."""

    count: int
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    host: bool

    @property
    def per_block(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]

    def ids(self, what: str, dim: int) -> np.ndarray:
        lane = np.arange(self.count, dtype=np.int64)
        local, blk = lane % self.per_block, lane // self.per_block
        if what == "thread":
            sizes, value = self.block, local
        elif what == "block":
            sizes, value = self.grid, blk
        else:
            sizes = self.block if what == "block_dim" else self.grid
            return np.full(self.count, sizes[dim], dtype=np.int64)
        for d in range(dim):
            value = value // sizes[d]
        return value % sizes[dim]


class Machine:
    """Runs a `Program`: the host function, and each launch over all its threads."""

    def __init__(self, program: Program):
        self.program = program
        self.memories: list[MemRef] = []
        self.launch_args: list[MemRef] = []  # the current launch's memref arguments
        self.shared: dict[str, MemRef] = {}  # workgroup memory of the current launch
        self.launches: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []

    def run(self, args: list[MemRef]) -> None:
        """Run the host function with memrefs for its parameters (inputs then outputs)."""
        host = self.program.host
        if len(args) != len(host.args):
            raise EmulatorError(f"host function takes {len(host.args)} memrefs, got {len(args)}")
        self.memories = list(args)
        env = dict(zip(host.args, args))
        lanes = _Lanes(1, (1, 1, 1), (1, 1, 1), host=True)
        with np.errstate(all="ignore"):
            self._block(host, env, np.ones(1, dtype=bool), lanes)

    def _block(self, block: Block, env: dict, mask: np.ndarray, lanes: _Lanes) -> list | None:
        for op in block.ops:
            if op.name in ("scf.yield", "gpu.return", "func.return", "scf.reduce"):
                return [env[v] for v in op.operands]
            self._op(op, env, mask, lanes)
        return None

    def _op(self, op: Op, env: dict, mask: np.ndarray, lanes: _Lanes) -> None:
        name = op.name
        args = [env[v] for v in op.operands]
        if name == "scf.if":
            self._if(op, args[0], env, mask, lanes)
        elif name == "scf.for":
            self._for(op, args, env, mask, lanes)
        elif name == "scf.parallel":
            self._parallel(op, args, env, mask, lanes)
        elif name in ("memref.load", "memref.store"):
            self._memory(op, args, env, mask, lanes)
        elif name in ("gpu.all_reduce", "gpu.barrier"):
            self._collective(op, args, env, mask, lanes)
        elif name.startswith("gpu."):
            self._gpu(op, env, lanes)
        elif name == "memref.dim":
            env[op.results[0]] = np.int64(args[0].sizes[int(np.max(args[1]))])
        elif name == "memref.cast":
            env[op.results[0]] = args[0]
        elif name == "memref.get_global":
            env[op.results[0]] = self._shared(op, lanes)
        else:
            value = semantics.evaluate(op, args)
            env[op.results[0]] = value

    def _shared(self, op: Op, lanes: _Lanes) -> MemRef:
        """A workgroup-memory global: one garbage-filled copy per block of the launch."""
        if lanes.host:
            raise EmulatorError("memref.get_global in host code")
        key = op.attrs["name"]
        if key not in self.shared:
            shape = op.attrs["shape"]
            size = int(np.prod(shape, dtype=np.int64))
            blocks = lanes.count // lanes.per_block
            ref = MemRef.garbage(numpy_type(op.types[0].split(":", 1)[1]), (blocks * size,))
            base = (np.arange(lanes.count, dtype=np.int64) // lanes.per_block) * size
            strides = MemRef.garbage(np.dtype(np.int8), tuple(shape)).strides
            self.shared[key] = MemRef(ref.data, 0, tuple(shape), strides, lane_base=base)
            self.memories.append(self.shared[key])
        return self.shared[key]

    def _if(self, op: Op, cond, env: dict, mask: np.ndarray, lanes: _Lanes) -> None:
        cond = np.broadcast_to(np.asarray(cond, dtype=bool), mask.shape)
        count = len(op.results)
        then = self._region(op.regions[0], env, mask & cond, lanes, count)
        other = self._region(op.regions[1], env, mask & ~cond, lanes, count)
        for k, rid in enumerate(op.results):
            type_ = numpy_type(op.types[k])  # before np.where: a placeholder is float64
            env[rid] = np.where(cond, np.asarray(then[k]).astype(type_, copy=False),
                                np.asarray(other[k]).astype(type_, copy=False))

    def _region(self, region: tuple[Block, ...], env: dict, mask: np.ndarray, lanes: _Lanes,
                count: int) -> list:
        """Run a region on the lanes of `mask`; a region no lane runs gives placeholders."""
        if not region or not mask.any():
            return [np.zeros(1)] * count
        return self._block(region[0], env, mask, lanes) or []

    def _for(self, op: Op, args: list, env: dict, mask: np.ndarray, lanes: _Lanes) -> None:
        lb, ub, step = (np.broadcast_to(np.asarray(a, dtype=np.int64), mask.shape)
                        for a in args[:3])
        values = list(args[3:])
        body = op.regions[0][0]
        if (mask & (step <= 0)).any():
            raise EmulatorError("scf.for with a non-positive step")
        iv = lb.copy()
        for _ in range(MAX_ITERATIONS):
            below = (iv.view(np.uint64) < ub.view(np.uint64)) if op.attrs["unsigned"] \
                else iv < ub
            active = mask & below
            if not active.any():
                break
            env[body.args[0]] = iv
            for arg, value in zip(body.args[1:], values):
                env[arg] = value
            new = self._block(body, env, active, lanes) or []
            values = [np.where(active, n, old) for n, old in zip(new, values)]
            iv = iv + step
        else:
            raise EmulatorError("scf.for ran past the iteration limit")
        for rid, value in zip(op.results, values):
            env[rid] = value

    def _parallel(self, op: Op, args: list, env: dict, mask: np.ndarray,
                  lanes: _Lanes) -> None:
        """An scf.parallel left inside a kernel runs sequentially (a valid schedule)."""
        body = op.regions[0][0]
        rank = len(body.args)
        if len(args) != 3 * rank or op.results:
            raise EmulatorError("scf.parallel with reductions in a kernel")
        bounds = [np.broadcast_to(np.asarray(a, dtype=np.int64), mask.shape) for a in args]

        def level(k: int, active: np.ndarray) -> None:
            if k == rank:
                self._block(body, env, active, lanes)
                return
            iv = bounds[k].copy()
            for _ in range(MAX_ITERATIONS):
                now = active & (iv < bounds[rank + k])
                if not now.any():
                    return
                env[body.args[k]] = iv
                level(k + 1, now)
                iv = iv + bounds[2 * rank + k]
            raise EmulatorError("scf.parallel ran past the iteration limit")

        level(0, mask)

    def _memory(self, op: Op, args: list, env: dict, mask: np.ndarray, lanes: _Lanes) -> None:
        if lanes.host:
            raise EmulatorError(f"{op.name} in host code (device memory is not accessible)")
        load = op.name == "memref.load"
        ref: MemRef = args[0] if load else args[1]
        indices = args[1:] if load else args[2:]
        flat = ref.flat_index(indices, mask, "load" if load else "store")
        lane = np.arange(mask.size, dtype=np.int64)
        if load:
            writers = ref.writer[flat]
            race = mask & (writers >= 0) & (writers != lane)
            if race.any():
                k = int(np.argmax(race))
                raise EmulatorError(f"data race: thread {k} reads an element that thread "
                                    f"{int(writers[k])} wrote without a barrier between")
            env[op.results[0]] = ref.data[flat]
            return
        active = flat[mask]
        if np.unique(active).size != active.size:
            raise EmulatorError("data race: several threads store to one element at once")
        value = np.broadcast_to(np.asarray(args[0]), mask.shape)
        ref.data[active] = value[mask].astype(ref.data.dtype, copy=False)
        ref.writer[active] = lane[mask]

    def _collective(self, op: Op, args: list, env: dict, mask: np.ndarray,
                    lanes: _Lanes) -> None:
        per_block = mask.reshape(-1, lanes.per_block)
        if (per_block.any(axis=1) != per_block.all(axis=1)).any():
            raise EmulatorError(f"divergent {op.name}: some threads of a block skip it")
        for ref in self.memories + self.launch_args:
            ref.writer.fill(-1)
        if op.name == "gpu.barrier":
            return
        value = np.broadcast_to(np.asarray(args[0]), mask.shape).reshape(-1, lanes.per_block)
        reduced = semantics.all_reduce(op.attrs["op"], value)
        env[op.results[0]] = np.repeat(reduced, lanes.per_block)

    def _gpu(self, op: Op, env: dict, lanes: _Lanes) -> None:
        name = op.name
        ids = {"gpu.thread_id": "thread", "gpu.block_id": "block", "gpu.block_dim": "block_dim",
               "gpu.grid_dim": "grid_dim"}
        if name in ids:
            if lanes.host:
                raise EmulatorError(f"{name} in host code")
            env[op.results[0]] = lanes.ids(ids[name], op.attrs["dim"])
        elif name == "gpu.alloc":
            sizes = tuple(int(np.max(env[v])) for v in op.attrs["sizes"])
            shape = op.attrs["shape"]
            it = iter(sizes)
            full = tuple(next(it) if s < 0 else s for s in shape)
            ref = MemRef.garbage(numpy_type(op.types[0].split(":", 1)[1]), full)
            self.memories.append(ref)
            env[op.results[0]] = ref
        elif name == "gpu.dealloc":
            pass
        elif name == "gpu.launch_func":
            self._launch(op, env)
        else:
            raise EmulatorError(f"unsupported operation {name}")

    def _launch(self, op: Op, env: dict) -> None:
        grid = tuple(int(np.max(env[v])) for v in op.attrs["grid"])
        block = tuple(int(np.max(env[v])) for v in op.attrs["block"])
        self.launch(op.attrs["kernel"], grid, block, [env[v] for v in op.attrs["args"]])

    def launch(self, name: str, grid: tuple[int, ...], block: tuple[int, ...],
               args: list) -> None:
        """Run kernel `name` (`module::func`) on a grid, with its argument values."""
        if len(grid) != 3 or len(block) != 3 or min(grid + block) < 1 or grid[0] >= 2**31 or \
                max(grid[1:]) > 65535 or block[0] * block[1] * block[2] > 1024 or block[2] > 64:
            raise EmulatorError(f"invalid launch configuration grid={grid} block={block}")
        kernel = self.program.kernels.get(name)
        if kernel is None:
            raise EmulatorError(f"no kernel {name}")
        self.launches.append((name, grid, block))
        count = int(np.prod(grid)) * int(np.prod(block))
        lanes = _Lanes(count, grid, block, host=False)  # type: ignore[arg-type]
        kenv = dict(zip(kernel.args, args))
        self.memories = [m for m in self.memories if m.lane_base is None]
        self.shared = {}
        # memory from outside (a driver's allocations): a barrier orders its accesses too
        self.launch_args = [a for a in args if isinstance(a, MemRef)]
        for ref in self.memories + self.launch_args:
            ref.writer.fill(-1)
        with np.errstate(all="ignore"):
            self._block(kernel, kenv, np.ones(count, dtype=bool), lanes)


# ---- a tdsl target -------------------------------------------------------------------------


class EmulatedExecutable:
    """A checked kernel compiled to the `gpu` stage and run by the emulator (`run(call)`
    like every target's executable). `pad` > 0 passes the arguments with gaps in memory."""

    def __init__(self, kernel: Kernel, pad: int = 0):
        from tdsl.gpu_pipeline import run_gpu_pipeline

        self.signature = kernel.signature
        self.text = run_gpu_pipeline(kernel, until="gpu", keep=["gpu"]).ir["gpu"]
        self.program = load_program(self.text)
        self.pad = pad
        self.launches: list = []

    def run(self, call: BoundCall) -> None:
        """Compute the outputs of a validated call into `call.outputs`."""
        inputs = [MemRef.from_array(a, self.pad) for a in call.inputs]
        outputs = []
        for out in call.outputs:
            storage = storage_dtype(out.dtype)
            outputs.append(MemRef.from_array(MemRef.garbage(storage, out.shape).view(),
                                             self.pad) if self.pad else
                           MemRef.garbage(storage, out.shape))
        machine = Machine(self.program)
        machine.run(inputs + outputs)
        self.launches = machine.launches
        for given, ref in zip(call.outputs, outputs):
            values = ref.view()
            given[...] = values.view(given.dtype)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Validate, allocate outputs, run and return like a tdsl kernel call."""
        call = self.signature.bind(args, kwargs)
        call.allocate_outputs()
        self.run(call)
        return call.result()

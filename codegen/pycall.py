"""The native call entry of a CPU kernel: a CPython `METH_FASTCALL | METH_KEYWORDS` function in
LLVM IR, so that a call from Python reaches machine code without ctypes or Python-level
argument handling.

`PyObject *tdsl_py_<kernel>(PyObject *table, PyObject *const *args, Py_ssize_t nargs,
PyObject *kwnames)` is wrapped by the runtime into a builtin function (`PyCFunction_NewEx`)
whose `self` is an int64 numpy array, the *table*: CPython entry points, a few objects, and
`PLANS` call plans (the dtypes, shapes and strides of calls that the Python path validated,
`tdsl.runtime.native`), tried in turn. A call whose arguments match a plan (exact `ndarray`s
with the same dtype object, shape and strides, aligned; given outputs writeable and
overlapping nothing; rank-0 inputs as 0-d arrays, numpy scalars of the dtype, or in-range
Python floats / ints) is run directly: outputs allocated with `np.empty`, the GIL released
around the kernel. Any other call goes, unchanged, to the table's fallback (the Python path),
which validates it, raises the usual errors, and writes a plan for its shapes.

The code calls CPython only through pointers in the table, so the library links against no
Python symbol. The function is `optnone`: optimizing its ~500 lines of guards doubled the
LLVM time of a small kernel (+35-50 ms) for a few nanoseconds per call. Object layouts used
(checked by the runtime on the running interpreter before the entry is used, see
`tdsl.codegen.pycall_table.LAYOUT`): `ob_type` at 8, a float's value and a numpy scalar's
value at 16, a tuple's size at 16 and items at 24, and numpy's `PyArrayObject` fields.
"""

from __future__ import annotations

from tdsl.codegen.pycall_table import (
    ACTIVE,
    AS_LONG_LONG,
    DECREF,
    EMPTY_TUPLE,
    ERR_CLEAR,
    FALLBACK,
    FLOAT_TYPE,
    GETITEM,
    HEADER_WORDS,
    INCREF,
    LAYOUT,
    LONG_TYPE,
    NDARRAY_TYPE,
    NP_EMPTY,
    NPY_ALIGNED,
    NPY_WRITEABLE,
    NUM_THREADS,
    OMP_SET,
    PLANS,
    PY_ACTIVE,
    RESTORE_THREAD,
    SAVE_THREAD,
    TUPLE_PACK,
    VECTORCALL,
    ParamWords,
    TableLayout,
    native_symbol,
    table_layout,
)


class _Emitter:
    """LLVM IR text of one function, with fresh value names and guard blocks. Mutable state
    lives in allocas of the entry block (`cell`); LLVM's SROA turns them into registers."""

    def __init__(self) -> None:
        self.prologue: list[str] = []
        self.lines: list[str] = []
        self.count = 0
        self.plan_offset = 0  # added to the indices of plan words (not header words)
        self.fail = "fallback"  # where a failed guard goes: the next plan, or the fallback

    def value(self, text: str) -> str:
        name = f"%v{self.count}"
        self.count += 1
        self.lines.append(f"  {name} = {text}")
        return name

    def cell(self, type_: str, initial: str) -> str:
        """An entry-block alloca of `type_` holding `initial`."""
        name = f"%c{self.count}"
        self.count += 1
        self.prologue += [f"  {name} = alloca {type_}, align 8",
                          f"  store {type_} {initial}, ptr {name}, align 8"]
        return name

    def do(self, text: str) -> None:
        self.lines.append(f"  {text}")

    def label(self) -> str:
        self.count += 1
        return f"b{self.count}"

    def block(self, label: str) -> None:
        self.lines.append(f"{label}:")

    def branch(self, condition: str, yes: str, no: str) -> None:
        self.do(f"br i1 {condition}, label %{yes}, label %{no}")

    def jump(self, label: str) -> None:
        self.do(f"br label %{label}")

    def guard(self, condition: str, otherwise: str | None = None) -> None:
        """Go on when `condition` holds, else branch to `otherwise` (default: `fail`)."""
        ok = self.label()
        self.branch(condition, ok, otherwise or self.fail)
        self.block(ok)

    def at(self, base: str, offset: int | str, type_: str) -> str:
        """Load a `type_` from `offset` bytes into the object at `base`."""
        address = self.value(f"getelementptr inbounds i8, ptr {base}, i64 {offset}")
        return self.value(f"load {type_}, ptr {address}, align 8")

    def offset(self, base: str, offset: int | str) -> str:
        """`base` + `offset` bytes (no `inbounds`: `base` may be null)."""
        return self.value(f"getelementptr i8, ptr {base}, i64 {offset}")

    def load(self, cell: str, type_: str = "ptr") -> str:
        return self.value(f"load {type_}, ptr {cell}, align 8")

    def store(self, cell: str, value: str, type_: str = "ptr") -> None:
        self.do(f"store {type_} {value}, ptr {cell}, align 8")

    def word(self, index: int, type_: str = "i64") -> str:
        """Load table word `index` (of the current plan, for a plan word)."""
        if index >= HEADER_WORDS:
            index += self.plan_offset
        address = self.value(f"getelementptr inbounds i64, ptr %table, i64 {index}")
        return self.value(f"load {type_}, ptr {address}, align 8")

    def slot(self, index: int, value: str, type_: str = "i64") -> None:
        address = self.value(f"getelementptr inbounds i64, ptr %slots, i64 {index}")
        self.do(f"store {type_} {value}, ptr {address}, align 8")

    def call_word(self, index: int, arguments: str, returns: str = "void") -> str | None:
        """Call the CPython function whose address is table word `index`."""
        text = f"call {returns} {self.word(index, 'ptr')}({arguments})"
        if returns == "void":
            self.do(text)
            return None
        return self.value(text)


def native_wrapper(signature, entry: str) -> str:
    """LLVM IR of the native call entry of a kernel whose packed entry is `@<entry>`."""
    layout = table_layout(signature)
    ir = _Emitter()
    ir.prologue.append(f"  %slots = alloca [{max(layout.slots, 1)} x i64], align 8")
    outs = [ir.cell("ptr", "null") for _ in layout.outputs]  # the output objects
    fresh = [ir.cell("ptr", "null") for _ in layout.outputs]  # the ones this call allocated
    ir.do(f"%table = load ptr, ptr {ir.offset('%self', LAYOUT['array_data'])}, align 8")
    ir.guard(ir.value(f"icmp eq i64 %nargs, {len(layout.inputs)}"))
    _keywords(ir, layout, outs)
    allocation_args = [ir.cell("[2 x i64]", "zeroinitializer") for _ in layout.outputs]
    for plan in range(PLANS):
        if plan:
            ir.block(f"plan{plan}")
        ir.plan_offset = plan * layout.plan_words
        ir.fail = f"plan{plan + 1}" if plan + 1 < PLANS else "fallback"
        _check_plan(ir, layout, outs, allocation_args)
        ir.jump("matched")
    ir.block("matched")
    ir.plan_offset, ir.fail = 0, "fallback"
    slot = sum(3 + 2 * p.rank for p in layout.inputs)
    empty = ir.word(NP_EMPTY, "ptr")
    _allocate(ir, layout, outs, fresh, empty, allocation_args)
    for param, out in zip(layout.outputs, outs):
        obj = ir.load(out)
        _descriptor(ir, slot, ir.at(obj, LAYOUT["array_data"], "ptr"), obj, param)
        slot += 3 + 2 * param.rank
    _run(ir, entry)
    _result(ir, layout, outs, fresh)
    ir.block("fallback")
    redirected = ir.call_word(VECTORCALL, f"ptr {ir.word(FALLBACK, 'ptr')}, ptr %args, "
                              f"i64 %nargs, ptr %kwnames", "ptr")
    ir.do(f"ret ptr {redirected}")
    head = [f"define ptr @{native_symbol(signature.name)}(ptr %self, ptr %args, i64 %nargs, "
            f"ptr %kwnames) noinline optnone {{", "entry:"]
    return "\n" + "\n".join(head + ir.prologue + ir.lines + ["}", ""])


def _check_plan(ir: _Emitter, layout: TableLayout, outs: list[str],
                allocation_args: list[str]) -> None:
    """Check the arguments against the current plan (`ir.plan_offset`; a failed check goes to
    `ir.fail`) and store the inputs' descriptors. Then read what the allocations need from the
    plan: everything after the checks may run Python code (np.empty can collect garbage, a
    finalizer can switch threads, another thread can rewrite the plan), so the allocations
    use the plan the checks used (its objects outlive a rewrite)."""
    ir.guard(ir.value(f"icmp ne i64 {ir.word(layout.valid)}, 0"))
    slot = 0
    ranges: list[tuple[str, str]] = []  # the bytes [low, high) each array argument spans
    for index, param in enumerate(layout.inputs):
        obj = ir.load(ir.value(f"getelementptr inbounds ptr, ptr %args, i64 {index}"))
        if param.rank == 0:
            data, low = _scalar_input(ir, param, obj)
            ranges.append((low, ir.offset(low, param.itemsize)))
        else:
            data = _checked_array(ir, param, obj, writeable=False)
            ranges.append((data, ir.offset(data, ir.word(param.extent))))
        _descriptor(ir, slot, data, obj, param)
        slot += 3 + 2 * param.rank
    for param, out in zip(layout.outputs, outs):
        low, high = _given_output(ir, param, out, ranges)
        ranges.append((ir.load(low), ir.load(high)))
    for param, cell in zip(layout.outputs, allocation_args):
        for i in range(2):
            ir.store(ir.value(f"getelementptr inbounds i64, ptr {cell}, i64 {i}"),
                     ir.word(param.shape + i), "i64")


def _keywords(ir: _Emitter, layout: TableLayout, outs: list[str]) -> None:
    """Match the keyword arguments with the outputs' names (interned strings, compared by
    identity: call sites use interned names); anything else goes to the fallback."""
    done, names = ir.label(), ir.label()
    ir.branch(ir.value("icmp ne ptr %kwnames, null"), names, done)
    ir.block(names)
    count = ir.at("%kwnames", LAYOUT["ob_size"], "i64")
    ir.guard(ir.value(f"icmp ule i64 {count}, {len(layout.outputs)}"))
    for k in range(len(layout.outputs)):
        ir.guard(ir.value(f"icmp ult i64 {k}, {count}"), done)
        key = ir.at("%kwnames", LAYOUT["tuple_items"] + 8 * k, "ptr")
        position = ir.value(f"add i64 %nargs, {k}")
        obj = ir.load(ir.value(f"getelementptr inbounds ptr, ptr %args, i64 {position}"))
        matched = "false"
        for param, out in zip(layout.outputs, outs):
            same = ir.value(f"icmp eq ptr {key}, {ir.word(param.name, 'ptr')}")
            ir.store(out, ir.value(f"select i1 {same}, ptr {obj}, ptr {ir.load(out)}"))
            matched = ir.value(f"or i1 {matched}, {same}")
        ir.guard(matched)
    ir.jump(done)
    ir.block(done)


def _checked_array(ir: _Emitter, param: ParamWords, obj: str, writeable: bool) -> str:
    """Check that `obj` is an ndarray matching the plan; return its data pointer."""
    type_ = ir.at(obj, LAYOUT["ob_type"], "ptr")
    ir.guard(ir.value(f"icmp eq ptr {type_}, {ir.word(NDARRAY_TYPE, 'ptr')}"))
    descr = ir.at(obj, LAYOUT["array_descr"], "ptr")
    ir.guard(ir.value(f"icmp eq ptr {descr}, {ir.word(param.descr, 'ptr')}"))
    nd = ir.at(obj, LAYOUT["array_nd"], "i32")
    ir.guard(ir.value(f"icmp eq i32 {nd}, {param.rank}"))
    flags = ir.at(obj, LAYOUT["array_flags"], "i32")
    need = NPY_ALIGNED | (NPY_WRITEABLE if writeable else 0)
    ir.guard(ir.value(f"icmp eq i32 {ir.value(f'and i32 {flags}, {need}')}, {need}"))
    if param.rank:
        dims = ir.at(obj, LAYOUT["array_dims"], "ptr")
        strides = ir.at(obj, LAYOUT["array_strides"], "ptr")
        for d in range(param.rank):
            for fields, start in ((dims, param.dims), (strides, param.strides)):
                got = ir.at(fields, 8 * d, "i64")
                ir.guard(ir.value(f"icmp eq i64 {got}, {ir.word(start + d)}"))
    return ir.at(obj, LAYOUT["array_data"], "ptr")


def _given_output(ir: _Emitter, param: ParamWords, out: str,
                  ranges: list[tuple[str, str]]) -> tuple[str, str]:
    """Check an output passed by name (writeable, like the plan's, overlapping no other
    argument); return cells holding its byte range (null, null when the call allocates
    it)."""
    low, high = ir.cell("ptr", "null"), ir.cell("ptr", "null")
    obj = ir.load(out)
    given = ir.value(f"icmp ne ptr {obj}, null")
    expected = ir.value(f"icmp ne i64 {ir.word(param.given)}, 0")
    ir.guard(ir.value(f"icmp eq i1 {given}, {expected}"))
    checked, done = ir.label(), ir.label()
    ir.branch(given, checked, done)
    ir.block(checked)
    data = _checked_array(ir, param, obj, writeable=True)
    end = ir.offset(data, ir.word(param.extent))
    for other_low, other_high in ranges:
        apart = ir.value(f"icmp ule ptr {end}, {other_low}")
        beyond = ir.value(f"icmp ule ptr {other_high}, {data}")
        ir.guard(ir.value(f"or i1 {apart}, {beyond}"))
    ir.store(low, data)
    ir.store(high, end)
    ir.jump(done)
    ir.block(done)
    return low, high


def _scalar_input(ir: _Emitter, param: ParamWords, obj: str) -> tuple[str, str]:
    """The data pointer of a rank-0 input, and the start of the array memory it lies in (null
    when it lies in a scalar object or on the stack): a 0-d array, a numpy scalar of the
    dtype, or (f32, f64, integer dtypes) a Python float or int that converts exactly like the
    Python path does (in range, rounded once)."""
    pointer, low = ir.cell("ptr", "null"), ir.cell("ptr", "null")
    type_ = ir.at(obj, LAYOUT["ob_type"], "ptr")
    done, array_case, not_array = ir.label(), ir.label(), ir.label()
    ir.branch(ir.value(f"icmp eq ptr {type_}, {ir.word(NDARRAY_TYPE, 'ptr')}"),
              array_case, not_array)
    ir.block(array_case)
    data = _checked_array(ir, param, obj, writeable=False)
    ir.store(pointer, data)
    ir.store(low, data)
    ir.jump(done)
    ir.block(not_array)
    scalar_case, python_case = ir.label(), ir.label()
    ir.branch(ir.value(f"icmp eq ptr {type_}, {ir.word(param.scalar_type, 'ptr')}"),
              scalar_case, python_case)
    ir.block(scalar_case)
    ir.store(pointer, ir.offset(obj, LAYOUT["scalar_value"]))
    ir.jump(done)
    ir.block(python_case)
    if param.scalar_kind in ("f32", "f64"):
        _int_as_float(ir, param, obj, type_, pointer, done)
        ir.guard(ir.value(f"icmp eq ptr {type_}, {ir.word(FLOAT_TYPE, 'ptr')}"))
        double = ir.at(obj, LAYOUT["float_value"], "double")
        limit = "0x47EFFFFFE0000000" if param.scalar_kind == "f32" else "0x7FEFFFFFFFFFFFFF"
        ir.guard(ir.value(f"fcmp ole double {double}, {limit}"))
        ir.guard(ir.value(f"fcmp oge double {double}, {_negative(limit)}"))
        if param.scalar_kind == "f64":
            ir.store(pointer, ir.offset(obj, LAYOUT["float_value"]))
        else:
            cell = ir.cell("float", "0.0")
            ir.store(cell, ir.value(f"fptrunc double {double} to float"), "float")
            ir.store(pointer, cell)
    elif param.scalar_kind == "int":
        ir.guard(ir.value(f"icmp eq ptr {type_}, {ir.word(LONG_TYPE, 'ptr')}"))
        overflow = ir.cell("i32", "0")
        ir.store(overflow, "0", "i32")
        got = ir.call_word(AS_LONG_LONG, f"ptr {obj}, ptr {overflow}", "i64")
        ir.guard(ir.value(f"icmp eq i32 {ir.load(overflow, 'i32')}, 0"))
        lowest, highest = param.int_range
        ir.guard(ir.value(f"icmp sge i64 {got}, {lowest}"))
        ir.guard(ir.value(f"icmp sle i64 {got}, {min(highest, 2 ** 63 - 1)}"))
        bits = param.int_bits
        cell = ir.cell(f"i{bits}", "0")
        narrow = got if bits == 64 else ir.value(f"trunc i64 {got} to i{bits}")
        ir.store(cell, narrow, f"i{bits}")
        ir.store(pointer, cell)
    else:
        ir.jump(ir.fail)
        ir.block(ir.label())  # not reached
    ir.jump(done)
    ir.block(done)
    return ir.load(pointer), low


def _int_as_float(ir: _Emitter, param: ParamWords, obj: str, type_: str, pointer: str,
                  done: str) -> None:
    """A Python int for an f32 / f64 input, when the float holds it exactly (|v| <= 2**24,
    2**53); other objects go on to the next case."""
    int_case, other = ir.label(), ir.label()
    ir.branch(ir.value(f"icmp eq ptr {type_}, {ir.word(LONG_TYPE, 'ptr')}"), int_case, other)
    ir.block(int_case)
    overflow = ir.cell("i32", "0")
    ir.store(overflow, "0", "i32")
    got = ir.call_word(AS_LONG_LONG, f"ptr {obj}, ptr {overflow}", "i64")
    ir.guard(ir.value(f"icmp eq i32 {ir.load(overflow, 'i32')}, 0"))
    exact = 2 ** 24 if param.scalar_kind == "f32" else 2 ** 53
    ir.guard(ir.value(f"icmp sle i64 {got}, {exact}"))
    ir.guard(ir.value(f"icmp sge i64 {got}, {-exact}"))
    type_name = "float" if param.scalar_kind == "f32" else "double"
    cell = ir.cell(type_name, "0.0")
    ir.store(cell, ir.value(f"sitofp i64 {got} to {type_name}"), type_name)
    ir.store(pointer, cell)
    ir.jump(done)
    ir.block(other)


def _negative(hex_double: str) -> str:
    """The LLVM hex literal of minus a positive double given as an LLVM hex literal."""
    return "0x" + format(int(hex_double, 16) | (1 << 63), "016X")


def _descriptor(ir: _Emitter, start: int, data: str, obj: str, param: ParamWords) -> None:
    """Store the memref descriptor of `data` (dims and strides from the array `obj`) at slot
    `start`."""
    ir.slot(start, data, "ptr")
    ir.slot(start + 1, data, "ptr")
    ir.slot(start + 2, "0")
    if not param.rank:
        return
    dims = ir.at(obj, LAYOUT["array_dims"], "ptr")
    strides = ir.at(obj, LAYOUT["array_strides"], "ptr")
    for d in range(param.rank):
        ir.slot(start + 3 + d, ir.at(dims, 8 * d, "i64"))
        stride = ir.at(strides, 8 * d, "i64")
        ir.slot(start + 3 + param.rank + d,
                ir.value(f"sdiv exact i64 {stride}, {param.itemsize}"))


def _allocate(ir: _Emitter, layout: TableLayout, outs: list[str], fresh: list[str],
              empty: str, allocation_args: list[str]) -> None:
    """`np.empty(shape, dtype)` (`empty` and each output's (shape, dtype) pair, read from the
    plan) for each output the call did not give; on failure, release what was allocated,
    clear the error and take the fallback (which reports it properly)."""
    for out, new, args in zip(outs, fresh, allocation_args):
        allocate, skip = ir.label(), ir.label()
        ir.branch(ir.value(f"icmp eq ptr {ir.load(out)}, null"), allocate, skip)
        ir.block(allocate)
        array = ir.call_word(VECTORCALL, f"ptr {empty}, ptr {args}, i64 2, ptr null", "ptr")
        ir.guard(ir.value(f"icmp ne ptr {array}, null"), "allocation_failed")
        ir.store(out, array)
        ir.store(new, array)
        ir.jump(skip)
        ir.block(skip)
    after = ir.label()
    ir.jump(after)
    ir.block("allocation_failed")
    for new in fresh:
        ir.call_word(DECREF, f"ptr {ir.load(new)}")  # Py_DecRef(NULL) does nothing
    ir.call_word(ERR_CLEAR, "")
    ir.jump("fallback")
    ir.block(after)


def _run(ir: _Emitter, entry: str) -> None:
    """Set the OpenMP team size (1 while another threaded call runs), release the GIL, run."""
    omp_set = ir.word(OMP_SET, "ptr")
    threaded = ir.value(f"icmp ne ptr {omp_set}, null")
    team, call = ir.label(), ir.label()
    ir.branch(threaded, team, call)
    ir.block(team)
    before = ir.value(f"atomicrmw add ptr {ir.word(ACTIVE, 'ptr')}, i64 1 seq_cst")
    python_calls = ir.load(ir.word(PY_ACTIVE, "ptr"), "i64")
    busy = ir.value(f"icmp sgt i64 {ir.value(f'add i64 {before}, {python_calls}')}, 0")
    wanted = ir.load(ir.word(NUM_THREADS, "ptr"), "i64")
    count = ir.value(f"select i1 {busy}, i64 1, i64 {wanted}")
    ir.do(f"call void {omp_set}(i32 {ir.value(f'trunc i64 {count} to i32')})")
    ir.jump(call)
    ir.block(call)
    state = ir.call_word(SAVE_THREAD, "", "ptr")
    ir.do(f"call void @{entry}(ptr %slots)")
    ir.call_word(RESTORE_THREAD, f"ptr {state}")
    leave, done = ir.label(), ir.label()
    ir.branch(threaded, leave, done)
    ir.block(leave)
    ir.value(f"atomicrmw sub ptr {ir.word(ACTIVE, 'ptr')}, i64 1 seq_cst")
    ir.jump(done)
    ir.block(done)


def _result(ir: _Emitter, layout: TableLayout, outs: list[str], fresh: list[str]) -> None:
    """Return the output (a tuple of them when there are several): given outputs with a new
    reference, allocated rank-0 outputs as numpy scalars (`array[()]`)."""
    results = []
    for param, out, new in zip(layout.outputs, outs, fresh):
        result = ir.cell("ptr", "null")
        obj = ir.load(out)
        given, allocated, done = ir.label(), ir.label(), ir.label()
        ir.branch(ir.value(f"icmp eq ptr {ir.load(new)}, null"), given, allocated)
        ir.block(given)
        ir.call_word(INCREF, f"ptr {obj}")
        ir.store(result, obj)
        ir.jump(done)
        ir.block(allocated)
        if param.rank == 0:
            scalar = ir.call_word(GETITEM, f"ptr {obj}, ptr {ir.word(EMPTY_TUPLE, 'ptr')}",
                                  "ptr")
            ir.call_word(DECREF, f"ptr {obj}")
            ir.store(result, scalar)
        else:
            ir.store(result, obj)
        ir.jump(done)
        ir.block(done)
        results.append(ir.load(result))
    if len(results) == 1:
        ir.do(f"ret ptr {results[0]}")
        return
    failed = "false"  # a rank-0 conversion failed: its error propagates
    for r in results:
        failed = ir.value(f"or i1 {failed}, {ir.value(f'icmp eq ptr {r}, null')}")
    pack, fail = ir.label(), ir.label()
    ir.branch(failed, fail, pack)
    ir.block(pack)
    items = ", ".join(f"ptr {r}" for r in results)
    packed = ir.value(f"call ptr (i64, ...) {ir.word(TUPLE_PACK, 'ptr')}(i64 {len(results)}, "
                      f"{items})")
    for r in results:
        ir.call_word(DECREF, f"ptr {r}")
    ir.do(f"ret ptr {packed}")
    ir.block(fail)
    for r in results:
        ir.call_word(DECREF, f"ptr {r}")
    ir.do("ret ptr null")

"""`tdsl.row_loops` on hand-written loops: which consecutive loops `fuse_sibling_loops` merges
(only where no element is touched at two different iterations) and where
`prefetch_next_rows` prefetches."""

from __future__ import annotations

import pytest

from tdsl.pipelines import mlir_context
from tdsl.row_loops import fuse_sibling_loops, prefetch_next_rows

HEADER = """
func.func @f(%x: memref<?xf32>, %y: memref<?xf32>, %n: index) {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %t = memref.alloc(%n) : memref<?xf32>
  %acc = memref.alloca() : memref<1xf32>
"""
FOOTER = """
  memref.dealloc %t : memref<?xf32>
  return
}
"""
COPY_X_TO_T = """
  scf.for %i = %c0 to %n step %c1 {
    %v = memref.load %x[%i] : memref<?xf32>
    memref.store %v, %t[%i] : memref<?xf32>
  }
"""


def _fuse(body: str) -> tuple[int, str]:
    from mlir import ir

    with mlir_context(), ir.Location.unknown():
        module = ir.Module.parse(HEADER + body + FOOTER)
        merged = fuse_sibling_loops(module)
        assert module.operation.verify()
        return merged, str(module)


def test_a_temporary_written_then_read_at_the_same_element_is_fused():
    merged, text = _fuse(COPY_X_TO_T + """
  scf.for %i = %c0 to %n step %c1 {
    %v = memref.load %t[%i] : memref<?xf32>
    %w = arith.mulf %v, %v : f32
    memref.store %w, %y[%i] : memref<?xf32>
  }""")
    assert merged == 1
    assert text.count("scf.for") == 1
    body = text[text.index("scf.for"):]
    assert body.index("memref.store %0, %alloc") < body.index("memref.load %alloc")


@pytest.mark.parametrize("second", [
    # the next element: written by the first loop's next iteration
    """scf.for %i = %c0 to %n step %c1 {
         %j = arith.addi %i, %c1 : index
         %v = memref.load %t[%j] : memref<?xf32>
         memref.store %v, %y[%i] : memref<?xf32>
       }""",
    # the first loop's input, overwritten
    """scf.for %i = %c0 to %n step %c1 {
         %v = memref.load %t[%i] : memref<?xf32>
         memref.store %v, %x[%c0] : memref<?xf32>
       }""",
    # other bounds
    """scf.for %i = %c1 to %n step %c1 {
         %v = memref.load %t[%i] : memref<?xf32>
         memref.store %v, %y[%i] : memref<?xf32>
       }""",
    # a nested loop: not a plain body
    """scf.for %i = %c0 to %n step %c1 {
         scf.for %k = %c0 to %n step %c1 {
           %v = memref.load %t[%k] : memref<?xf32>
           memref.store %v, %y[%i] : memref<?xf32>
         }
       }""",
])
def test_loops_that_touch_an_element_at_other_iterations_stay_apart(second):
    merged, text = _fuse(COPY_X_TO_T + second)
    assert merged == 0


def test_an_accumulator_finished_by_the_first_loop_keeps_the_loops_apart():
    merged, _ = _fuse("""
  scf.for %i = %c0 to %n step %c1 {
    %v = memref.load %x[%i] : memref<?xf32>
    %a = memref.load %acc[%c0] : memref<1xf32>
    %s = arith.maximumf %a, %v : f32
    memref.store %s, %acc[%c0] : memref<1xf32>
  }
  scf.for %i = %c0 to %n step %c1 {
    %v = memref.load %x[%i] : memref<?xf32>
    %m = memref.load %acc[%c0] : memref<1xf32>
    %d = arith.subf %v, %m : f32
    memref.store %d, %y[%i] : memref<?xf32>
  }""")
    assert merged == 0


def test_an_initialization_between_the_loops_moves_before_them_when_safe():
    init_acc = "  %zero = arith.constant 0.0 : f32\n  memref.store %zero, %acc[%c0] : memref<1xf32>\n"
    sum_of_t = """
  scf.for %i = %c0 to %n step %c1 {
    %v = memref.load %t[%i] : memref<?xf32>
    %a = memref.load %acc[%c0] : memref<1xf32>
    %s = arith.addf %a, %v : f32
    memref.store %s, %acc[%c0] : memref<1xf32>
  }"""
    merged, text = _fuse(COPY_X_TO_T + init_acc + sum_of_t)
    assert merged == 1
    assert text.index("memref.store %cst, %alloca") < text.index("scf.for")
    # a store into what the first loop reads may not move before it
    clobber = "  %zero = arith.constant 0.0 : f32\n  memref.store %zero, %x[%c0] : memref<?xf32>\n"
    merged, _ = _fuse(COPY_X_TO_T + clobber + sum_of_t)
    assert merged == 0


def test_two_views_of_one_argument_written_stay_apart():
    merged, _ = _fuse("""
  %a = memref.subview %y[0] [%n] [1] : memref<?xf32> to memref<?xf32, strided<[1]>>
  %b = memref.subview %y[1] [%n] [1] : memref<?xf32> to memref<?xf32, strided<[1], offset: 1>>
  scf.for %i = %c0 to %n step %c1 {
    %v = memref.load %x[%i] : memref<?xf32>
    memref.store %v, %a[%i] : memref<?xf32, strided<[1]>>
  }
  scf.for %i = %c0 to %n step %c1 {
    %v = memref.load %b[%i] : memref<?xf32, strided<[1], offset: 1>>
    memref.store %v, %t[%i] : memref<?xf32>
  }""")
    assert merged == 0


ROWS = """
func.func @g(%x: memref<?x?xf32>, %y: memref<?x?xf32>, %rows: index, %n: index) {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %acc = memref.alloca() : memref<1xf32>
  %tmp = memref.alloc(%n) : memref<1x?xf32>
  scf.for %r = %c0 to %rows step %c1 {
    %row = memref.subview %x[%r, 0] [1, %n] [1, 1]
        : memref<?x?xf32> to memref<1x?xf32, strided<[?, 1], offset: ?>>
    %out = memref.subview %y[%r, 0] [1, %n] [1, 1]
        : memref<?x?xf32> to memref<1x?xf32, strided<[?, 1], offset: ?>>
    scf.for %i = %c0 to %n step %c1 {
      %v = memref.load %row[%c0, %i] : memref<1x?xf32, strided<[?, 1], offset: ?>>
      %a = memref.load %acc[%c0] : memref<1xf32>
      %s = arith.maximumf %a, %v : f32
      memref.store %s, %acc[%c0] : memref<1xf32>
    }
    SECOND
  }
  memref.dealloc %tmp : memref<1x?xf32>
  return
}
"""
SECOND_PASS = """scf.for %i = %c0 to %n step %c1 {
      %v = memref.load %row[%c0, %i] : memref<1x?xf32, strided<[?, 1], offset: ?>>
      %m = memref.load %acc[%c0] : memref<1xf32>
      %d = arith.subf %v, %m : f32
      %e = math.exp %d : f32
      memref.store %e, %tmp[%c0, %i] : memref<1x?xf32>
    }"""


def _prefetch(text: str) -> tuple[int, str]:
    from mlir import ir

    with mlir_context(), ir.Location.unknown():
        module = ir.Module.parse(text)
        count = prefetch_next_rows(module)
        assert module.operation.verify()
        return count, str(module)


def test_the_heavier_pass_over_a_row_prefetches_the_next_row():
    count, text = _prefetch(ROWS.replace("SECOND", SECOND_PASS))
    assert count == 1
    assert text.count("memref.prefetch") == 4  # 64 columns of f32: 4 cache lines
    strip = text[text.index("step %c64"):]
    assert "math.exp" in strip and strip.index("memref.prefetch") < strip.index("math.exp")
    assert "arith.minsi" in text  # the last row prefetches itself
    assert text.count("math.exp") == 2  # the strips and the remainder


def test_a_single_pass_over_a_row_gets_no_prefetch():
    count, text = _prefetch(ROWS.replace("SECOND", ""))
    assert count == 0 and "memref.prefetch" not in text


def test_a_pass_writing_the_output_is_left_whole_for_streaming_stores():
    second = SECOND_PASS.replace("memref.store %e, %tmp[%c0, %i] : memref<1x?xf32>",
                                 "memref.store %e, %out[%c0, %i] : "
                                 "memref<1x?xf32, strided<[?, 1], offset: ?>>")
    count, text = _prefetch(ROWS.replace("SECOND", second))
    assert count == 1
    strip = text[text.index("step %c64"):]
    assert strip.index("arith.maximumf") < strip.index("math.exp")
    assert text.count("math.exp") == 1 and text.count("arith.maximumf") == 2

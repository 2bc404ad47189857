"""Arrays placed against guard pages: an access past either end of the data faults at once
(SIGSEGV) instead of reading or writing neighbouring memory silently."""

from __future__ import annotations

import ctypes
import mmap

import numpy as np

PAGE = mmap.PAGESIZE
PROT_NONE = 0
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_KEEP: list[mmap.mmap] = []  # mappings stay alive for the test session


def guarded_empty(shape: tuple[int, ...], dtype: np.dtype, at: str = "end") -> np.ndarray:
    """An uninitialized C-contiguous array whose data ends right before a PROT_NONE page
    (`at="end"`) or starts right after one (`at="start"`)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    data_pages = max(1, -(-nbytes // PAGE))
    buf = mmap.mmap(-1, (data_pages + 2) * PAGE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    _KEEP.append(buf)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    for page in (base, base + (data_pages + 1) * PAGE):
        if _libc.mprotect(page, PAGE, PROT_NONE) != 0:
            raise OSError(ctypes.get_errno(), "mprotect failed")
    offset = PAGE if at == "start" else PAGE + data_pages * PAGE - nbytes
    return np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=offset).view(dtype).reshape(
        shape)


def guarded_copy(array: np.ndarray, at: str = "end") -> np.ndarray:
    """A guarded copy of an array (scalars and non-arrays are returned unchanged)."""
    if not isinstance(array, np.ndarray):
        return array
    out = guarded_empty(array.shape, array.dtype, at)
    out[...] = array
    return out

"""Hand freed heap memory back to the operating system.

glibc keeps memory that the process has freed (activations of the last batches, decoded
images) in its heaps for reuse, so the resident size stays at its peak long after a
burst of large batches. malloc_trim releases the free pages in the middle of the heaps,
which free() alone never does.
"""

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)  # glibc only: absent from musl
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Return the heaps' free pages to the OS; False where the C library cannot (not glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True

"""Giving freed memory back to the system at once, so that peak RSS is what is in use.

The analysis of a long trace allocates arrays of a few hundred KiB to tens of
MiB (a row group's column, a block of a computation) and frees them soon
after. glibc's allocator serves such sizes from mmap at first, but raises its
mmap threshold (up to 32 MiB) each time one is freed, after which they come
from the heap and stay in the process once freed: on a ten-million-step trace
that was about 200 MiB of RSS holding nothing. A fixed threshold keeps large
blocks on mmap, returned on free.
"""

from __future__ import annotations

import contextlib
import ctypes

#: glibc's `mallopt` parameter for the mmap threshold.
_M_MMAP_THRESHOLD = -3
#: Blocks at least this large are mmapped: whole-trace arrays, not a row group's column
#: (65,536 rows of 8 bytes), which is allocated and freed over and over.
MMAP_THRESHOLD = 1 << 20

_done = False


def return_freed_memory() -> None:
    """Keep glibc's mmap threshold fixed for this process (once; elsewhere, nothing)."""
    global _done
    if _done:
        return
    _done = True
    with contextlib.suppress(OSError, AttributeError):  # no mallopt (not glibc): nothing to do
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)

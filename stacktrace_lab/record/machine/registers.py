"""Registers read and written in one call to unicorn's C library, for the Python hooks
that run at a few instructions of every run (a system call, cpuid).

The binding's `reg_read`/`reg_write` go through several Python frames each (about
5 µs): a system call's seven reads and three writes, and cpuid's two and four, cost
more than the rest of its handling (the C example: 0.57 µs of each step of its
10,600, mostly its start-up's cpuid and system calls). Batches of prepared ctypes
buffers, through the library loaded without prototypes (as record/core/hooks.py
calls it), cost about one such call each.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from typing import Any

from unicorn.unicorn_py3.unicorn import Uc, UcError, uclib

_raw = ctypes.CDLL(uclib._name)
_read_batch = _raw.uc_reg_read_batch
_write_batch = _raw.uc_reg_write_batch


class RegisterBatch:
    """Unicorn register ids, read or written together (64-bit values). The buffers
    are each thread's own: ctypes lets go of the GIL during the call, and two
    recordings may run at once in one process."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.count = len(ids)
        self._ids = (ctypes.c_int * self.count)(*ids)
        self._local = threading.local()

    def _buffers(self) -> tuple[Any, Any]:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            values = (ctypes.c_uint64 * self.count)()
            base = ctypes.addressof(values)
            pointers = (ctypes.c_void_p * self.count)(*[base + 8 * i for i in range(self.count)])
            buffers = self._local.buffers = (values, pointers)
        return buffers

    def read(self, uc: Uc) -> list[int]:
        """The registers' values, in the order of `ids` (a 32-bit register, eflags,
        fills the low half of a zeroed word, as the binding reads it)."""
        values, pointers = self._buffers()
        ctypes.memset(values, 0, 8 * self.count)
        _check(_read_batch(uc._uch, self._ids, pointers, self.count))
        return list(values)

    def write(self, uc: Uc, new: Sequence[int]) -> None:
        values, pointers = self._buffers()
        for i, value in enumerate(new):
            values[i] = value
        _check(_write_batch(uc._uch, self._ids, pointers, self.count))


def _check(status: int) -> None:
    if status != 0:
        raise UcError(status)

"""Keeping a long trace's analysis in bounded memory: the per-step stack pointer in
four bytes a step, and handing freed heap pages back between phases.

- `StepRsp`: rsp before every step, answering `rsp[i]`, `rsp[steps]`, `rsp[a:b]`
  and `rsp[mask]` as the uint64 array it replaces did, from the low 32 bits of
  each step and the high 32 bits as runs (they change only when rsp moves between
  mappings more than 4 GiB apart: a thread's stack against the main one). Half the
  memory of a uint64 per step: 40 MB less at ten million steps.
- `release_freed_memory`: the analysis pass keeps small numpy pieces per row group
  (writes, landings) while it frees each group's temporaries, then joins the
  pieces; glibc keeps the holes that leaves in its heap (about 90 MiB at ten
  million steps) resident until something reuses them. `malloc_trim` gives those
  pages back at once (a few milliseconds); elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from .kinds import I64, U8, U64, Kind

U32 = npt.NDArray[np.uint32]
_LOW = np.uint64(0xFFFF_FFFF)
_SHIFT = np.uint64(32)


class StepRsp:
    """rsp per step: uint32 low halves, and the high halves as (first step, value) runs."""

    __slots__ = ("_low", "_run_highs", "_run_starts", "shape", "size")

    def __init__(self, low: U32, run_starts: I64, run_highs: U64) -> None:
        self._low = low
        #: The step each run of one high half starts at (the first is 0), ascending.
        self._run_starts = run_starts
        #: The high half of each run, already shifted into place.
        self._run_highs = run_highs
        self.size = int(low.size)
        self.shape = (self.size,)

    @classmethod
    def empty(cls, steps: int) -> StepRsp:
        """Room for `steps` values, filled a block at a time by `fill`."""
        return cls(np.empty(steps, dtype=np.uint32), np.zeros(0, np.int64), np.zeros(0, np.uint64))

    @classmethod
    def of(cls, values: U64) -> StepRsp:
        """The compact form of a whole uint64 array (tests, short traces)."""
        rsp = cls.empty(int(values.size))
        rsp.fill(0, values)
        return rsp

    def fill(self, start: int, values: U64) -> None:
        """Set the steps `start ..< start + values.size`: blocks must come in step order."""
        if not values.size:
            return
        self._low[start : start + values.size] = values & _LOW
        high = values & ~_LOW
        changes = np.flatnonzero(high[1:] != high[:-1]) + 1
        if not self._run_highs.size or self._run_highs[-1] != high[0]:
            changes = np.concatenate([[0], changes])
        if changes.size:
            self._run_starts = np.concatenate([self._run_starts, changes.astype(np.int64) + start])
            self._run_highs = np.concatenate([self._run_highs, high[changes]])

    def __len__(self) -> int:
        return self.size

    @overload
    def __getitem__(self, index: int | np.integer[Any]) -> np.uint64: ...
    @overload
    def __getitem__(self, index: slice | npt.NDArray[Any]) -> U64: ...
    def __getitem__(
        self, index: int | np.integer[Any] | slice | npt.NDArray[Any]
    ) -> np.uint64 | U64:
        if not isinstance(index, (slice, np.ndarray)):
            i = int(index)
            i = i + self.size if i < 0 else i
            if not 0 <= i < self.size:
                raise IndexError(index)
            run = int(np.searchsorted(self._run_starts, i, side="right")) - 1
            return np.uint64(int(self._low[i]) | int(self._run_highs[run]))
        out: U64 = self._low[index].astype(np.uint64)
        if self._run_highs.size == 1:
            if self._run_highs[0]:
                out |= self._run_highs[0]
        elif self._run_highs.size > 1:
            # Which step each value is, to find its run.
            if isinstance(index, slice):
                positions: I64 = np.arange(*index.indices(self.size), dtype=np.int64)
            elif index.dtype == np.bool_:
                positions = np.flatnonzero(index)
            else:
                positions = np.where(index < 0, index + self.size, index).astype(np.int64)
            runs = np.searchsorted(self._run_starts, positions, side="right") - 1
            out |= self._run_highs[runs]
        return out


class StepKinds:
    """The `Kind` of every step, kept as the sorted steps of each kind other than
    `OTHER` (the calls, rets, indirect jumps and syscalls the pass lists anyway):
    `kinds[i]`, `kinds[steps]` and `kinds[a:b]` answer as the uint8 array per step
    they replace (10 MB at ten million steps) did."""

    __slots__ = ("_by_kind", "shape", "size")

    def __init__(self, steps: int, by_kind: dict[Kind, I64]) -> None:
        self._by_kind = by_kind
        self.size = steps
        self.shape = (steps,)

    @classmethod
    def of(cls, kinds: U8) -> StepKinds:
        """The compact form of a uint8 array per step."""
        return cls(
            int(kinds.size),
            {k: np.flatnonzero(kinds == k).astype(np.int64) for k in Kind if k != Kind.OTHER},
        )

    def __len__(self) -> int:
        return self.size

    def steps_of(self, kind: Kind) -> I64:
        """The steps of one kind, in order (`OTHER` is not kept)."""
        return self._by_kind[kind]

    @overload
    def __getitem__(self, index: int | np.integer[Any]) -> np.uint8: ...
    @overload
    def __getitem__(self, index: slice | npt.NDArray[Any]) -> U8: ...
    def __getitem__(self, index: int | np.integer[Any] | slice | npt.NDArray[Any]) -> np.uint8 | U8:
        if isinstance(index, slice):
            start, stop, stride = index.indices(self.size)
            if stride != 1:
                return self[np.arange(start, stop, stride, dtype=np.int64)]
            out = np.zeros(max(stop - start, 0), dtype=np.uint8)
            for kind, steps in self._by_kind.items():
                lo, hi = np.searchsorted(steps, [start, stop])
                out[steps[lo:hi] - start] = kind
            return out
        if not isinstance(index, np.ndarray):
            i = int(index)
            i = i + self.size if i < 0 else i
            if not 0 <= i < self.size:
                raise IndexError(index)
            return np.uint8(self[np.array([i], dtype=np.int64)][0])
        if index.dtype == np.bool_:
            return self[np.flatnonzero(index)]
        positions = np.where(index < 0, index + self.size, index)
        out = np.zeros(positions.shape, dtype=np.uint8)
        for kind, steps in self._by_kind.items():
            if steps.size:
                at = np.minimum(np.searchsorted(steps, positions), steps.size - 1)
                out[steps[at] == positions] = kind
        return out


@cache
def _malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


def release_freed_memory() -> None:
    """Give the heap pages freed so far back to the system (glibc), after a phase
    that freed many small pieces between the arrays it keeps."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)

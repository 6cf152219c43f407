"""The vocabulary of the shared pass: array types, instruction kinds, ret origins,
and the event tables (writes, rets, indirect jumps) that analysis/events.py derives
and every other analysis module reads.

It is a module of its own so that `transfers.py` (which classifies the events)
and `events.py` (which derives them and caches the classification) do not import
each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
I16 = npt.NDArray[np.int16]
U16 = npt.NDArray[np.uint16]
B = npt.NDArray[np.bool_]
#: Step numbers stored as 32-bit integers where they fit.
Steps = npt.NDArray[np.int32] | npt.NDArray[np.int64]


class Kind(IntEnum):
    """What an instruction does to the stack's return-address slots."""

    OTHER = 0
    CALL = 1
    RET = 2
    SYSCALL = 3
    #: `jmp *%r8`, `jmp *56(%rdi)`: a jump whose target is read at run time, the way
    #: Boost, libaco, marl and longjmp resume a context.
    JMP_INDIRECT = 4


class Origin(IntEnum):
    """Who wrote the slot a `ret` popped."""

    CALL = 0  # the `call` that pushed it: an ordinary return
    PLANTED = 1  # an ordinary store: a planted return, i.e. a stack switch
    ENTRY = 2  # nobody in the program: the machine's sentinel under the entry function
    UNWRITTEN = 3  # nobody at all, and not the sentinel: a bug
    #: Nobody in the trace, but the slot was on the stack (at or above rsp) when a
    #: recording that began past the entry (`--from`) started, and it holds a code
    #: address: a return address pushed before row 0, returning to a frame entered
    #: before the trace began.
    BEFORE = 4
    #: Nobody in the trace, the slot was not live stack when a `--from` trace began,
    #: and it holds a code address: a store before row 0 planted it (a switch set up
    #: before the trace). A switch like `PLANTED`, but its store is not in the trace.
    PLANTED_BEFORE = 5


@dataclass(frozen=True)
class Writes:
    """Every memory write of the trace, one entry per write, in step order."""

    #: int32 while the trace's steps fit (`derive_facts`), else int64.
    step: Steps
    addr: U64
    #: Bytes written: uint16, as the trace stores it (a quarter of int64's memory).
    size: U16

    def __len__(self) -> int:
        return int(self.step.size)


@dataclass(frozen=True)
class Returns:
    """Every `ret`, in step order: the slot it popped and who wrote that slot last."""

    step: I64
    slot: U64  # rsp at the ret: the address of the popped slot
    value: U64  # the popped address, i.e. rip after the ret
    entry_rsp: U64  # rsp after the ret
    origin: U8  # an `Origin`
    writer: I64  # index into `Writes` of the slot's last write before the ret, or -1

    def __len__(self) -> int:
        return int(self.step.size)

    @property
    def planted(self) -> B:
        """Per ret: it popped a planted address (in the trace or before it began)."""
        planted: B = (self.origin == Origin.PLANTED) | (self.origin == Origin.PLANTED_BEFORE)
        return planted


@dataclass(frozen=True)
class Jumps:
    """Every indirect `jmp`, in step order, and where it landed (rsp does not change)."""

    step: I64
    target: U64


@dataclass(frozen=True)
class ThreadRuns:
    """Where the `thread` column changes: an OS thread switch, made by the machine's
    scheduler between two rows, not by any instruction. The row after a thread's
    last row of a turn belongs to another thread; the instruction's own effect
    shows on the row where its thread runs next (`next_rows`)."""

    #: The last row of each turn that another thread's turn follows, in order.
    ends: I64
    #: The row where that thread runs next (the trace's length: never again).
    resumes: I64
    #: The thread of each turn (one more than `ends`: the last turn runs to the end).
    numbers: npt.NDArray[np.uint16] = field(default_factory=lambda: np.ones(1, dtype=np.uint16))

    @classmethod
    def of(cls, thread: npt.NDArray[np.uint16]) -> ThreadRuns:
        ends = np.flatnonzero(thread[1:] != thread[:-1]).astype(np.int64)
        resumes = np.full(ends.shape, thread.size, dtype=np.int64)
        starts = np.concatenate([[0], ends + 1]).astype(np.int64)
        numbers = thread[starts] if thread.size else np.ones(1, dtype=np.uint16)
        if ends.size:
            owners = numbers.tolist()
            upcoming: dict[int, int] = {}
            for k in range(len(starts) - 1, -1, -1):
                if k < ends.size:
                    resumes[k] = upcoming.get(owners[k], thread.size)
                upcoming[owners[k]] = int(starts[k])
        return cls(ends, resumes, numbers)

    def same_thread(self, first: int, last: int, anchor: int | None = None) -> I64:
        """The rows `first ..= last` of the thread that ran row `anchor` (default `first`)."""
        if not self.ends.size:
            return np.arange(first, last + 1, dtype=np.int64)
        starts = np.concatenate([[0], self.ends + 1])
        stops = np.append(self.ends + 1, np.iinfo(np.int64).max)
        at = first if anchor is None else anchor
        turn = int(np.searchsorted(starts, at, side="right")) - 1
        mine = self.numbers == self.numbers[turn]
        pieces = [
            np.arange(max(lo, first), min(hi, last + 1), dtype=np.int64)
            for lo, hi in zip(starts[mine].tolist(), stops[mine].tolist(), strict=True)
            if lo <= last and hi > first
        ]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)

    def thread_of(self, step: int) -> int:
        """The thread (1 = the first) that ran row `step`."""
        turn = int(np.searchsorted(self.ends, step, side="left"))
        return int(self.numbers[min(turn, self.numbers.size - 1)])

    def cut(self, steps: I64) -> I64:
        """Positions in `steps` (sorted) of the rows that end a thread's turn."""
        if not self.ends.size or not steps.size:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(np.isin(steps, self.ends)).astype(np.int64)

    def next_rows(self, steps: I64) -> I64:
        """The row after each of `steps` in its own thread: step + 1, unless the
        step ended its thread's turn."""
        out = steps + 1
        if self.ends.size and steps.size:
            at = np.minimum(np.searchsorted(self.ends, steps), self.ends.size - 1)
            hit = self.ends[at] == steps
            out[hit] = self.resumes[at[hit]]
        return out

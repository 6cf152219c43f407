"""A trace as a debugging target: a position, and moves forwards and backwards.

A trace of N rows has N + 1 states: state `s < N` is the machine before the
instruction of row `s` (its registers are that row's), and state N is the
machine after the last instruction (the metadata's `final` registers). The
target sits at one state; every move is a search over the trace, never a run:

- a step forward executes the instruction of row `s` (state s + 1); a step
  back un-executes the instruction of row `s - 1` (state s - 1);
- continuing forward stops before the first later instruction at a
  breakpoint, or after the first instruction (from `s` on) that accessed a
  watched range, as x86 debug registers trap after the access;
- continuing backward stops before the last earlier instruction at a
  breakpoint or that accessed a watched range: un-executing it brings the
  machine back to just before it, which is where gdb expects a reverse
  watchpoint hit (the store is the instruction at pc, its old value in memory);
- running past either end reports `replaylog:end` or `replaylog:begin`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from ..arch import REGISTERS
from ..trace.arrays import numpy_of
from ..trace.reader import Trace
from .memory import AccessIndex, TraceMemory
from .registers import REGISTER_TABLE, TRACE_COLUMN

U64 = npt.NDArray[np.uint64]

ARCH_SET_GS, ARCH_SET_FS = 0x1001, 0x1002
#: Register row groups kept in memory (each 18 columns of up to 65536 rows).
CACHED_GROUPS = 4

WatchKind = Literal["write", "read", "access"]
#: Z2, Z3, Z4: write, read and access watchpoints.
_WATCH_KINDS: dict[int, WatchKind] = {2: "write", 3: "read", 4: "access"}
StopWhy = Literal["step", "breakpoint", "watch", "rwatch", "awatch", "begin", "end"]


@dataclass(frozen=True)
class Stop:
    why: StopWhy
    #: The watched range's start, for a watchpoint stop.
    addr: int = 0


@dataclass
class Watch:
    kind: WatchKind
    addr: int
    length: int


@dataclass
class Points:
    breakpoints: set[int] = field(default_factory=set)
    watches: list[Watch] = field(default_factory=list)


class TraceTarget:
    def __init__(self, trace: Trace, memory: TraceMemory) -> None:
        self.trace = trace
        self.memory = memory
        self.steps = trace.num_rows
        self.state = 0
        self.points = Points()
        self._reads: AccessIndex | None = None
        sizes = [trace.parquet.metadata.row_group(g).num_rows for g in range(trace.num_row_groups)]
        self._group_starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._groups: OrderedDict[int, dict[str, U64]] = OrderedDict()
        self._bases = _segment_bases(trace)
        self.threads = ThreadTable.of(trace)

    # --- state ---------------------------------------------------------------

    def registers(
        self, state: int | None = None, thread: int | None = None
    ) -> dict[str, int | None]:
        """Every register of the target description at a state: None where unknown.
        `thread` (a tid): another thread's, as it waits there (its next row)."""
        s = self.state if state is None else state
        if thread is not None and thread != self.threads.running(s):
            return self._waiting_registers(s, thread)
        if s >= self.steps:
            known = {name: self.trace.metadata.final[name] for name in REGISTERS}
        else:
            group = self._group_of(s)
            columns = self._registers_of_group(group)
            row = s - int(self._group_starts[group])
            known = {name: int(columns[name][row]) for name in REGISTERS}
        fs_base, gs_base = self._segment_bases_at(s)
        tls = self.threads.tls.get(self.threads.running(s))
        return _values(known, tls if tls else fs_base, gs_base)

    def _waiting_registers(self, state: int, tid: int) -> dict[str, int | None]:
        """A thread that does not run at `state`: the registers of its next row (where
        the scheduler left it), else of its last one; its fs base from its start."""
        row = self.threads.row_of(tid, state)
        if row is None:
            return _values({name: None for name in REGISTERS}, None, None)
        known = self.registers(row)
        known["fs_base"] = self.threads.tls.get(tid) or known["fs_base"]
        return known

    def read_memory(self, addr: int, length: int) -> bytes | None:
        return self.memory.read(addr, length, self.state)

    # --- moves ---------------------------------------------------------------

    def step(self, forward: bool) -> Stop:
        if forward:
            if self.state >= self.steps:
                return Stop("end")
            hit = self._watch_hit(self.state, self.state + 1)
            self.state += 1
        else:
            if self.state <= 0:
                return Stop("begin")
            self.state -= 1
            hit = self._watch_hit(self.state, self.state + 1)
        return hit or Stop("step")

    def resume(self, forward: bool) -> Stop:
        """Continue until a breakpoint, a watchpoint or the end of the trace."""
        if forward:
            breakpoint = self._next_breakpoint(self.state + 1)
            watch = self._first_access_from(self.state)
            candidates = []
            if watch is not None:
                candidates.append((watch[0] + 1, 0, watch[1]))
            if breakpoint is not None:
                candidates.append((breakpoint, 1, Stop("breakpoint")))
            if not candidates:
                self.state = self.steps
                return Stop("end")
            state, _, stop = min(candidates, key=lambda c: (c[0], c[1]))
        else:
            breakpoint = self._previous_breakpoint(self.state - 1)
            watch = self._last_access_before(self.state)
            candidates = []
            if watch is not None:
                candidates.append((watch[0], 1, watch[1]))
            if breakpoint is not None:
                candidates.append((breakpoint, 0, Stop("breakpoint")))
            if not candidates:
                self.state = 0
                return Stop("begin")
            state, _, stop = max(candidates, key=lambda c: (c[0], c[1]))
        self.state = state
        return stop

    # --- searches ------------------------------------------------------------

    def _watch_hit(self, start: int, stop: int) -> Stop | None:
        """The watchpoint the instruction of row `start` triggers, if any (stop = start + 1)."""
        found = self._first_access_from(start)
        if found is not None and found[0] < stop:
            return found[1]
        return None

    def _indexes(self, kind: WatchKind) -> list[tuple[AccessIndex, StopWhy]]:
        if kind == "write":
            return [(self.memory.writes, "watch")]
        if self._reads is None:
            self._reads = AccessIndex(self.trace, "reads")
        if kind == "read":
            return [(self._reads, "rwatch")]
        return [(self._reads, "awatch"), (self.memory.writes, "awatch")]

    def _first_access_from(self, step: int) -> tuple[int, Stop] | None:
        best: tuple[int, Stop] | None = None
        for watch in self.points.watches:
            for index, why in self._indexes(watch.kind):
                found = index.first_after([(watch.addr, watch.addr + watch.length)], step)
                if found is not None and (best is None or found[0] < best[0]):
                    best = (found[0], Stop(why, watch.addr))
        return best

    def _last_access_before(self, step: int) -> tuple[int, Stop] | None:
        best: tuple[int, Stop] | None = None
        for watch in self.points.watches:
            for index, why in self._indexes(watch.kind):
                found = index.last_before_any([(watch.addr, watch.addr + watch.length)], step)
                if found is not None and (best is None or found[0] > best[0]):
                    best = (found[0], Stop(why, watch.addr))
        return best

    def _next_breakpoint(self, start: int) -> int | None:
        """First row at or after `start` whose rip is a breakpoint."""
        if not self.points.breakpoints or start >= self.steps:
            return None
        wanted = np.array(sorted(self.points.breakpoints), dtype=np.uint64)
        for group in range(self._group_of(start), self.trace.num_row_groups):
            first = int(self._group_starts[group])
            rips = self._rips_of_group(group)
            offset = max(start - first, 0)
            hits = np.flatnonzero(np.isin(rips[offset:], wanted))
            if len(hits):
                return first + offset + int(hits[0])
        return None

    def _previous_breakpoint(self, start: int) -> int | None:
        """Last row at or before `start` whose rip is a breakpoint."""
        if not self.points.breakpoints or start < 0:
            return None
        wanted = np.array(sorted(self.points.breakpoints), dtype=np.uint64)
        start = min(start, self.steps - 1)
        for group in range(self._group_of(start), -1, -1):
            first = int(self._group_starts[group])
            rips = self._rips_of_group(group)
            hits = np.flatnonzero(np.isin(rips[: start - first + 1], wanted))
            if len(hits):
                return first + int(hits[-1])
        return None

    # --- row groups ----------------------------------------------------------

    def _group_of(self, row: int) -> int:
        return int(np.searchsorted(self._group_starts, row, side="right")) - 1

    def _rips_of_group(self, group: int) -> U64:
        """A row group's rip column: from the register cache, else read alone (a
        search through many groups needs no other column)."""
        cached = self._groups.get(group)
        if cached is not None:
            return cached["rip"]
        rips: U64 = numpy_of(self.trace.row_group(group, ["rip"]).column(0))
        return rips

    def _registers_of_group(self, group: int) -> dict[str, U64]:
        """The register columns of a row group, by name."""
        cached = self._groups.get(group)
        if cached is None:
            table = self.trace.row_group(group, list(REGISTERS))
            cached = {
                name: numpy_of(table.column(name)).astype(np.uint64, copy=False)
                for name in REGISTERS
            }
            self._groups[group] = cached
            while len(self._groups) > CACHED_GROUPS:
                self._groups.popitem(last=False)
        self._groups.move_to_end(group)
        return cached

    def _segment_bases_at(self, state: int) -> tuple[int, int]:
        fs_base = gs_base = 0
        for step, which, value in self._bases:
            if step >= state:
                break
            if which == "fs":
                fs_base = value
            else:
                gs_base = value
        return fs_base, gs_base

    # --- watchpoint and breakpoint bookkeeping ---------------------------------

    def insert(self, kind: int, addr: int, length: int) -> bool:
        if kind in (0, 1):
            self.points.breakpoints.add(addr)
            return True
        watch_kind = _WATCH_KINDS[kind]
        if not any(
            w.kind == watch_kind and w.addr == addr and w.length == length
            for w in self.points.watches
        ):
            self.points.watches.append(Watch(watch_kind, addr, length))
        return True

    def remove(self, kind: int, addr: int, length: int) -> bool:
        if kind in (0, 1):
            self.points.breakpoints.discard(addr)
            return True
        watch_kind = _WATCH_KINDS[kind]
        self.points.watches = [
            w
            for w in self.points.watches
            if not (w.kind == watch_kind and w.addr == addr and w.length == length)
        ]
        return True


def _values(
    known: dict[str, int] | dict[str, None], fs_base: int | None, gs_base: int | None
) -> dict[str, int | None]:
    values: dict[str, int | None] = {r.name: None for r in REGISTER_TABLE}
    for name, column in TRACE_COLUMN.items():
        values[name] = known[column]
    values["fs_base"], values["gs_base"] = fs_base, gs_base
    return values


@dataclass
class ThreadTable:
    """The threads of a trace for gdb, by tid (a trace without threads: one, tid 1)."""

    #: The `thread` column (None: one thread).
    column: npt.NDArray[np.uint16] | None
    #: tid of each thread number.
    tids: dict[int, int]
    #: The fs base each thread started with, by tid (its thread-local storage).
    tls: dict[int, int]

    @classmethod
    def of(cls, trace: Trace) -> ThreadTable:
        if "threads" not in trace.metadata.extra or not trace.num_rows:
            return cls(None, {1: 1}, {})
        column = trace.table(["thread"]).column(0).to_numpy()
        threads = trace.metadata.threads
        tids = {int(t["number"]): int(t["tid"]) for t in threads}
        tls = {int(t["tid"]): int(t.get("tls") or 0) for t in threads}
        return cls(column, tids, tls)

    def running(self, state: int) -> int:
        """The tid of the thread whose row `state` is (the last row's after the end)."""
        if self.column is None:
            return 1
        row = min(state, self.column.size - 1)
        return self.tids.get(int(self.column[row]), int(self.column[row]))

    def alive(self, state: int) -> list[int]:
        """tids of the threads that have run by `state` (at or before it), and that
        still run at or after it: gdb's thread list there."""
        if self.column is None:
            return [1]
        number_of = {tid: n for n, tid in self.tids.items()}
        found = []
        for tid in self.tids.values():
            rows = np.flatnonzero(self.column == number_of[tid])
            if rows.size and rows[0] <= state and (rows[-1] >= state or tid == self.running(state)):
                found.append(tid)
        return found or [self.running(state)]

    def row_of(self, tid: int, state: int) -> int | None:
        """The row where thread `tid` runs next at or after `state`, else its last row."""
        if self.column is None:
            return state if tid == 1 else None
        number = next((n for n, t in self.tids.items() if t == tid), None)
        if number is None:
            return None
        rows = np.flatnonzero(self.column == number)
        if not rows.size:
            return None
        at = int(np.searchsorted(rows, state))
        return int(rows[at]) if at < rows.size else int(rows[-1])


def _segment_bases(trace: Trace) -> list[tuple[int, str, int]]:
    """(step after which it holds, "fs" or "gs", base) for each successful arch_prctl."""
    changes = []
    # trace.syscalls(): the metadata's list of a version 2 trace, else the `syscall` column.
    for call in trace.syscalls():
        if call.name != "arch_prctl" or call.result != 0 or len(call.args) < 2:
            continue
        if call.args[0] in (ARCH_SET_FS, ARCH_SET_GS):
            which = "fs" if call.args[0] == ARCH_SET_FS else "gs"
            changes.append((call.step, which, call.args[1]))
    return changes

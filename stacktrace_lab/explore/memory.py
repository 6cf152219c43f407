"""Memory as it was before a step, rebuilt from the `writes` log, with who wrote each byte.

The `stack__` columns hold a stack's bytes (or its top bytes) at every step,
but not who wrote them, and not the part of a large stack below the
snapshot window. The write log has both: every byte's value before step N is
the data of the last write to it before N, or the initial memory if none.
Initial memory is all zero except what the step-0 snapshots show (the
sentinel return address under the entry frame), so the rebuilt bytes are
exact.

The log is scanned row group by row group with numpy, never row by row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from ..trace.arrays import numpy_of
from ..trace.reader import Trace

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
U8 = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class AccessLog:
    """The entries of a `reads` or `writes` column of some rows, flattened.

    Entry `i` was made by the instruction at `step[i]` (row `row[i]` of the
    table it came from), `size[i]` bytes at `addr[i]`, and its bytes are
    `data[offsets[i]:offsets[i + 1]]`. Entries are in execution order.
    """

    row: I64
    step: I64
    addr: U64
    size: I64
    offsets: I64
    data: U8

    def __len__(self) -> int:
        return len(self.step)

    def bytes_of(self, i: int) -> bytes:
        return self.data[self.offsets[i] : self.offsets[i + 1]].tobytes()

    def before(self, step: int) -> AccessLog:
        """The entries of steps before `step` (entries are in step order)."""
        n = int(np.searchsorted(self.step, step, side="left"))
        return AccessLog(
            self.row[:n],
            self.step[:n],
            self.addr[:n],
            self.size[:n],
            self.offsets[: n + 1],
            self.data,
        )


def _binary_parts(array: pa.Array) -> tuple[I64, U8]:
    """(offsets, bytes) of a binary array, honouring its slice offset."""
    buffers = array.buffers()
    n = len(array)
    offsets = np.frombuffer(buffers[1], dtype=np.int32)[array.offset : array.offset + n + 1]
    data = (
        np.frombuffer(buffers[2], dtype=np.uint8)
        if buffers[2] is not None
        else np.zeros(0, dtype=np.uint8)
    )
    return offsets.astype(np.int64), data


def flatten_accesses(group: pa.Table, column: str) -> AccessLog:
    """The `column` ("reads" or "writes") entries of a table that also has `step`."""
    lists = group.column(column).combine_chunks()
    steps = numpy_of(group.column("step"))
    parents = numpy_of(pc.list_parent_indices(lists))
    addr_array, _sizes, data_array = lists.flatten().flatten()
    offsets, data = _binary_parts(data_array)
    return AccessLog(
        row=parents.astype(np.int64),
        step=steps[parents].astype(np.int64),
        addr=numpy_of(addr_array).astype(np.uint64),
        # The bytes carried are what counts; `size` should equal their length.
        size=np.diff(offsets),
        offsets=offsets,
        data=data,
    )


def iter_access_logs(
    trace: Trace, column: str, before: int | None = None, extra: tuple[str, ...] = ()
) -> Iterator[tuple[pa.Table, AccessLog]]:
    """Per row group (up to the one holding `before`): the table and its flattened accesses."""
    columns = ["step", column, *extra]
    offset = 0
    for index in range(trace.num_row_groups):
        if before is not None and offset >= before:
            return
        group = trace.row_group(index, columns)
        if before is not None and offset + group.num_rows > before:
            group = group.slice(0, before - offset)
        offset += trace.parquet.metadata.row_group(index).num_rows
        yield group, flatten_accesses(group, column)


@dataclass
class ByteHistory:
    """Bytes `lo ..< hi`: each byte's value and the step that last wrote it (-1: never)."""

    lo: int
    hi: int
    values: U8
    writers: I64

    @classmethod
    def empty(cls, lo: int, hi: int) -> ByteHistory:
        return cls(lo, hi, np.zeros(hi - lo, dtype=np.uint8), np.full(hi - lo, -1, dtype=np.int64))

    def apply(self, log: AccessLog) -> None:
        """Lay the log's writes over the bytes, later writes winning."""
        lo, hi = self.lo, self.hi
        ends = log.addr + log.size.astype(np.uint64)
        hit = np.flatnonzero((log.addr < np.uint64(hi)) & (ends > np.uint64(lo)))
        if len(hit) == 0:
            return
        size = log.size[hit]
        k = np.arange(int(size.max()), dtype=np.int64)
        # One candidate per (entry, byte of the entry); entry order is execution order.
        position = (log.addr[hit].astype(np.int64) - lo)[:, None] + k[None, :]
        valid = (k[None, :] < size[:, None]) & (position >= 0) & (position < hi - lo)
        entry = np.broadcast_to(hit[:, None], position.shape)[valid]
        source = (log.offsets[hit][:, None] + k[None, :])[valid]
        position = position[valid]
        order = np.lexsort((entry, position))
        ordered = position[order]
        last = np.ones(len(order), dtype=bool)
        last[:-1] = ordered[1:] != ordered[:-1]
        chosen = order[last]
        self.values[position[chosen]] = log.data[source[chosen]]
        self.writers[position[chosen]] = log.step[entry[chosen]]


def initial_bytes(trace: Trace, lo: int, hi: int) -> U8:
    """Memory `lo ..< hi` before step 0: zero, except what the step-0 stack snapshots hold."""
    values = np.zeros(hi - lo, dtype=np.uint8)
    if trace.num_rows == 0:
        return values
    for window in trace.metadata.snapshots.values():
        first, last = max(lo, window.base), min(hi, window.top)
        if first >= last:
            continue
        snapshot = trace.value_at(0, window.column)
        values[first - lo : last - lo] = np.frombuffer(
            snapshot[first - window.base : last - window.base], dtype=np.uint8
        )
    return values


def memory_before(trace: Trace, lo: int, hi: int, step: int) -> ByteHistory:
    """Bytes `lo ..< hi` as they were before the instruction at `step` ran."""
    history = ByteHistory.empty(lo, hi)
    history.values[:] = initial_bytes(trace, lo, hi)
    for _, log in iter_access_logs(trace, "writes", before=step):
        history.apply(log)
    return history


def snapshot_before(trace: Trace, stack: str, step: int) -> tuple[int, bytes] | None:
    """(base address, bytes) of `stack`'s snapshot window at `step`, or None if not recorded."""
    window = trace.metadata.snapshots.get(stack)
    if window is None or window.column not in trace.column_names:
        return None
    value = trace.value_at(step, window.column)
    return window.base, bytes(value)


def memory_before_many(trace: Trace, requests: Sequence[tuple[int, int, int]]) -> list[ByteHistory]:
    """`memory_before` for several (lo, hi, step) requests in one pass over the write log."""
    histories = []
    for lo, hi, _ in requests:
        history = ByteHistory.empty(lo, hi)
        history.values[:] = initial_bytes(trace, lo, hi)
        histories.append(history)
    last = max((step for *_, step in requests), default=0)
    for _, log in iter_access_logs(trace, "writes", before=last):
        if len(log) == 0:
            continue
        for history, (_, _, step) in zip(histories, requests, strict=True):
            if log.step[0] >= step:
                continue
            history.apply(log if log.step[-1] < step else log.before(step))
    return histories


def access_log_between(trace: Trace, column: str, start: int, stop: int) -> AccessLog:
    """The `column` entries of steps `start ..< stop`, reading only their row groups."""
    return flatten_accesses(trace.slice(start, stop, ["step", column]), column)


#: At most this many bytes of checkpoints (values and writers) are kept.
CHECKPOINT_BUDGET = 64 << 20


class MemoryCheckpoints:
    """Some address ranges (the stacks) as they were at the start of every row group,
    or of every k-th one, so that memory before any step costs one row group's
    writes instead of a replay from step 0: what `serve` needs deep in a long trace.

    Built with one pass over the `writes` column. Each checkpoint holds a copy
    of the ranges' bytes and last writers (9 bytes per byte); row groups are
    skipped evenly to stay within `CHECKPOINT_BUDGET`.
    """

    def __init__(self, trace: Trace, ranges: Sequence[tuple[int, int]]) -> None:
        self.trace = trace
        # Ranges too large for the budget (a program's 8 MiB main stack) are left out:
        # `before` answers None for them, and the caller replays from step 0.
        self.ranges = []
        total = 0
        for lo, hi in ranges:
            if total + 9 * (hi - lo) <= CHECKPOINT_BUDGET:
                self.ranges.append((lo, hi))
                total += 9 * (hi - lo)
        sizes = [trace.parquet.metadata.row_group(g).num_rows for g in range(trace.num_row_groups)]
        self.group_starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        per_checkpoint = 9 * sum(hi - lo for lo, hi in self.ranges)
        count = max(trace.num_row_groups, 1)
        self.stride = max(1, -(-count * per_checkpoint // CHECKPOINT_BUDGET))
        histories = []
        for lo, hi in self.ranges:
            history = ByteHistory.empty(lo, hi)
            history.values[:] = initial_bytes(trace, lo, hi)
            histories.append(history)
        #: group index -> per range (values, writers) before that group's first step.
        self._states: dict[int, list[tuple[npt.NDArray[np.uint8], I64]]] = {}
        for g, (_, log) in enumerate(iter_access_logs(trace, "writes")):
            if g % self.stride == 0:
                self._states[g] = [(h.values.copy(), h.writers.copy()) for h in histories]
            for history in histories:
                history.apply(log)

    def before(self, lo: int, hi: int, step: int) -> ByteHistory | None:
        """Bytes `lo ..< hi` before `step`, if they lie inside one checkpointed range."""
        inside = [i for i, (rlo, rhi) in enumerate(self.ranges) if rlo <= lo and hi <= rhi]
        if not inside:
            return None
        r = inside[0]
        rlo = self.ranges[r][0]
        group = int(np.searchsorted(self.group_starts, step, side="right")) - 1
        group = max(0, min(group, len(self.group_starts) - 2))
        group -= group % self.stride
        values, writers = self._states[group][r]
        history = ByteHistory(
            lo, hi, values[lo - rlo : hi - rlo].copy(), writers[lo - rlo : hi - rlo].copy()
        )
        start = int(self.group_starts[group])
        if start < step:
            history.apply(access_log_between(self.trace, "writes", start, step))
        return history

"""Memory at any step of a trace, and the steps that touched an address: what gdb asks.

Memory before step `s` is the initial image (the code, the program's
segments, the step-0 stack snapshots, zeros elsewhere in a mapped region)
with every write of a step before `s` laid over it, later writes winning.

`AccessIndex` makes that cheap at any step of a long trace. It reads the
`writes` (or `reads`) column once, row group by row group with numpy, and
sorts the entries into *cells*: all the entries of one (address, size),
ordered by step. One sorted int64 key per entry, `cell * (steps + 1) + step`,
then answers both questions gdb asks with binary searches:

- the last write of each cell overlapping a range before a step (memory);
- the first access after, or the last before, a step that overlaps a range
  (watchpoints, both directions).

A hot stack slot written millions of times is one cell, so a read costs a
binary search per cell of the range, not a scan of the slot's history. The
index holds 16 bytes per entry plus the entries' data (kept as the column had
it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..arch import PAGE
from ..errors import BadInput
from ..explore.memory import iter_access_logs
from ..layout import page_ceil
from ..trace.reader import Trace

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
U8 = npt.NDArray[np.uint8]

#: Most bytes one `m` request is answered with (gdb asks again for the rest).
MAX_READ = 0x1000


class AccessIndex:
    """Every entry of a trace's `writes` or `reads` column, by (address, size) and step."""

    def __init__(self, trace: Trace, column: str) -> None:
        self.stride = trace.num_rows + 1
        steps: list[I64] = []
        addrs: list[U64] = []
        sizes: list[I64] = []
        starts: list[I64] = []
        datas: list[U8] = []
        base = 0
        for _, log in iter_access_logs(trace, column):
            if len(log) == 0:
                continue
            steps.append(log.step)
            addrs.append(log.addr)
            sizes.append(log.size)
            starts.append(log.offsets[:-1] - log.offsets[0] + base)
            piece = log.data[log.offsets[0] : log.offsets[-1]]
            datas.append(piece)
            base += len(piece)
        step = np.concatenate(steps) if steps else np.zeros(0, np.int64)
        addr = np.concatenate(addrs) if addrs else np.zeros(0, np.uint64)
        size = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
        start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self.data: U8 = np.concatenate(datas) if datas else np.zeros(0, np.uint8)
        del steps, addrs, sizes, starts, datas  # halve the peak while sorting
        self.entries = len(step)
        order = np.lexsort((step, size, addr))
        addr, size, step, start = addr[order], size[order], step[order], start[order]
        new_cell = np.ones(len(addr), dtype=bool)
        new_cell[1:] = (addr[1:] != addr[:-1]) | (size[1:] != size[:-1])
        cell_of_entry = np.cumsum(new_cell) - 1
        first = np.flatnonzero(new_cell)
        #: Per cell: its address and size, and its entries `first[c] ..< end[c]`.
        self.cell_addr: U64 = addr[first]
        self.cell_size: I64 = size[first]
        self.cell_first: I64 = first.astype(np.int64)
        self.cell_end: I64 = np.append(first[1:], len(addr)).astype(np.int64)
        self.key: I64 = cell_of_entry.astype(np.int64) * self.stride + step
        self.start: I64 = start
        self.max_size = int(size.max()) if len(size) else 0

    def _cells(self, lo: int, hi: int) -> I64:
        """Cells that overlap bytes `lo ..< hi`."""
        if self.max_size == 0 or hi <= lo:
            return np.zeros(0, dtype=np.int64)
        first = int(np.searchsorted(self.cell_addr, np.uint64(max(0, lo - self.max_size + 1))))
        last = int(np.searchsorted(self.cell_addr, np.uint64(hi)))
        cells = np.arange(first, last, dtype=np.int64)
        ends = self.cell_addr[cells] + self.cell_size[cells].astype(np.uint64)
        result: I64 = cells[ends > np.uint64(lo)]
        return result

    def last_before(self, lo: int, hi: int, step: int) -> list[tuple[int, int, bytes]]:
        """(step, address, bytes) of the last access before `step` in each cell
        overlapping `lo ..< hi`, oldest first."""
        cells = self._cells(lo, hi)
        if len(cells) == 0:
            return []
        at = np.searchsorted(self.key, cells * self.stride + step, side="left") - 1
        found = at >= self.cell_first[cells]
        cells, at = cells[found], at[found]
        steps = self.key[at] - cells * self.stride
        order = np.argsort(steps, kind="stable")
        found_at = self.start[at]
        sizes = self.cell_size[cells]
        return [
            (
                int(steps[i]),
                int(self.cell_addr[cells[i]]),
                self.data[found_at[i] : found_at[i] + sizes[i]].tobytes(),
            )
            for i in order.tolist()
        ]

    def first_after(self, ranges: Sequence[tuple[int, int]], step: int) -> tuple[int, int] | None:
        """(step, range start) of the first access at or after `step` overlapping a range."""
        best: tuple[int, int] | None = None
        for lo, hi in ranges:
            cells = self._cells(lo, hi)
            if len(cells) == 0:
                continue
            at = np.searchsorted(self.key, cells * self.stride + step, side="left")
            found = at < self.cell_end[cells]
            if not found.any():
                continue
            first = int((self.key[at[found]] - cells[found] * self.stride).min())
            if best is None or first < best[0]:
                best = (first, lo)
        return best

    def last_before_any(
        self, ranges: Sequence[tuple[int, int]], step: int
    ) -> tuple[int, int] | None:
        """(step, range start) of the last access before `step` overlapping a range."""
        best: tuple[int, int] | None = None
        for lo, hi in ranges:
            cells = self._cells(lo, hi)
            if len(cells) == 0:
                continue
            at = np.searchsorted(self.key, cells * self.stride + step, side="left") - 1
            found = at >= self.cell_first[cells]
            if not found.any():
                continue
            last = int((self.key[at[found]] - cells[found] * self.stride).max())
            if best is None or last > best[0]:
                best = (last, lo)
        return best


@dataclass(frozen=True)
class Image:
    """Memory before step 0: mapped ranges (zero-filled) and the bytes known in them."""

    mapped: tuple[tuple[int, int], ...]  # (lo, hi), sorted, merged, page aligned
    chunks: tuple[tuple[int, bytes], ...]  # (address, bytes), later ones win

    def mapped_end(self, addr: int) -> int | None:
        """End of the mapped range holding `addr`, or None when `addr` is not mapped."""
        for lo, hi in self.mapped:
            if lo <= addr < hi:
                return hi
        return None

    def read(self, addr: int, length: int) -> bytearray:
        out = bytearray(length)
        for base, data in self.chunks:
            first, last = max(addr, base), min(addr + length, base + len(data))
            if first < last:
                out[first - addr : last - addr] = data[first - base : last - base]
        return out


def trace_image(trace: Trace, program: bytes | None) -> Image:
    """The initial image of `trace`; `program` is the ELF file a compiled program's trace
    was recorded from (checked by the caller), whose segments hold its code and data."""
    meta = trace.metadata
    spans = sorted((r.map_start, r.map_start + r.map_size) for r in meta.regions)
    merged: list[tuple[int, int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    chunks: list[tuple[int, bytes]] = []
    if meta.code:
        chunks.append((meta.code_base, meta.code))
    if program is not None:
        chunks.extend(_segments(trace.path, program))
        # A program's segments are mapped whole, page by page.
        for vaddr, data in chunks:
            lo, hi = vaddr // PAGE * PAGE, page_ceil(vaddr + len(data))
            if not any(a <= lo and hi <= b for a, b in merged):
                merged = _merge([*merged, (lo, hi)])
    if trace.num_rows:
        for window in meta.snapshots.values():
            first = trace.slice(0, 1, [window.column]).column(0)[0].as_py()
            chunks.append((window.base, bytes(first)))
    return Image(tuple(merged), tuple(chunks))


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _segments(trace_path: Path, program: bytes) -> list[tuple[int, bytes]]:
    """(address, bytes) of each loadable segment of the program, as the recorder loaded it."""
    import io

    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    from ..record.linux.elf import PIE_BASE

    try:
        elf = ELFFile(io.BytesIO(program))
        load_base = PIE_BASE if elf.header["e_type"] == "ET_DYN" else 0
        return [
            (load_base + int(s["p_vaddr"]), s.data())
            for s in elf.iter_segments()
            if s["p_type"] == "PT_LOAD"
        ]
    except (ELFError, ValueError, KeyError) as exc:
        raise BadInput(f"{trace_path}: the program is not a readable ELF file: {exc}") from None


class TraceMemory:
    """Memory before any step: the image, with the write index laid over it."""

    def __init__(self, image: Image, writes: AccessIndex) -> None:
        self.image = image
        self.writes = writes

    def read(self, addr: int, length: int, step: int) -> bytes | None:
        """Up to `length` bytes (at most `MAX_READ`, and not past the end of the mapped
        range) before `step`; None when `addr` is not mapped."""
        end = self.image.mapped_end(addr)
        if end is None or length <= 0:
            return None
        length = min(length, MAX_READ, end - addr)
        out = self.image.read(addr, length)
        for _, at, data in self.writes.last_before(addr, addr + length, step):
            first, last = max(addr, at), min(addr + length, at + len(data))
            out[first - addr : last - addr] = data[first - at : last - at]
        return bytes(out)

"""A process's mappings as the kernel keeps them: sorted, non-overlapping, found by bisection.

The Linux model (syscalls.py) asks four things of its mappings at each call:
is this range free (mmap, brk), is it mapped (a buffer's EFAULT), take this
range out (munmap, MAP_FIXED), and how much is mapped (the memory limit).
Kept in address order with the start addresses in a list of their own, each
answer is a bisection plus the few mappings it touches, so a program that
makes thousands of mappings costs linear time, not quadratic (issue 26: 2,000
mappings took 24 s when every call sorted unicorn's whole region list).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Area:
    """One mapping of the process, as /proc/self/maps shows it."""

    start: int
    end: int
    perms: str  # "r-xp"
    name: str  # "[stack]", "[heap]", the program's path, or ""
    kind: str  # code, data, stack, heap, mapped

    def line(self) -> str:
        return f"{self.start:08x}-{self.end:08x} {self.perms} 00000000 00:00 0 {self.name}".rstrip()


class AddressSpace:
    """Non-overlapping areas in address order (adjacent ones are kept apart, as their
    names may differ); `bytes` is their total size."""

    def __init__(self, areas: list[Area] | None = None) -> None:
        self._starts: list[int] = []
        self._areas: list[Area] = []
        self.bytes = 0
        #: Changes with every change (/proc/self/maps is generated again after one).
        self.version = 0
        for area in sorted(areas or [], key=lambda a: a.start):
            self.remove(area.start, area.end)  # a later area wins where two overlap
            self.add(area)

    def __len__(self) -> int:
        return len(self._areas)

    def __iter__(self) -> Iterator[Area]:
        return iter(self._areas)

    def _first_ending_after(self, addr: int) -> int:
        """Index of the first area whose end is above `addr` (areas are sorted by
        start and do not overlap, so ends are sorted too)."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and self._areas[i].end > addr:
            return i
        return i + 1

    def overlaps(self, start: int, end: int) -> bool:
        i = self._first_ending_after(start)
        return i < len(self._areas) and self._areas[i].start < end

    def between(self, start: int, end: int) -> list[Area]:
        """The areas that overlap `start ..< end`, in address order."""
        i = self._first_ending_after(start)
        j = i
        while j < len(self._areas) and self._areas[j].start < end:
            j += 1
        return self._areas[i:j]

    def covers(self, start: int, end: int) -> bool:
        """Whether every byte of `start ..< end` is in some area."""
        i = self._first_ending_after(start)
        cursor = start
        while cursor < end:
            if i >= len(self._areas) or self._areas[i].start > cursor:
                return False
            cursor = self._areas[i].end
            i += 1
        return True

    def highest_below(self, top: int, size: int, floor: int) -> int | None:
        """The highest page-aligned start of `size` free bytes ending at or under `top`
        and starting at or above `floor`: skipping down past each area in the way."""
        end = top
        while end - size >= floor:
            i = bisect.bisect_left(self._starts, end) - 1  # the highest area starting below end
            if i < 0 or self._areas[i].end <= end - size:
                return end - size
            end = self._areas[i].start
        return None

    def add(self, area: Area) -> None:
        """Insert an area over free addresses (callers check `overlaps` first)."""
        i = bisect.bisect_left(self._starts, area.start)
        self._starts.insert(i, area.start)
        self._areas.insert(i, area)
        self.bytes += area.end - area.start
        self.version += 1

    def remove(self, start: int, end: int) -> list[tuple[int, int]]:
        """Take `start ..< end` out of every area it touches (splitting the ones it
        cuts); returns the (start, end) pieces that were mapped."""
        i = self._first_ending_after(start)
        j = i
        kept: list[Area] = []
        removed: list[tuple[int, int]] = []
        while j < len(self._areas) and self._areas[j].start < end:
            area = self._areas[j]
            if area.start < start:
                kept.append(replace(area, end=start))
            if area.end > end:
                kept.append(replace(area, start=end))
            removed.append((max(area.start, start), min(area.end, end)))
            j += 1
        if removed:
            self._areas[i:j] = kept
            self._starts[i:j] = [a.start for a in kept]
            self.bytes -= sum(hi - lo for lo, hi in removed)
            self.version += 1
        return removed

    def grow(self, area: Area, new_end: int) -> Area:
        """`area` (present) extended to `new_end` over free addresses."""
        i = bisect.bisect_left(self._starts, area.start)
        grown = replace(area, end=new_end)
        self._areas[i] = grown
        self.bytes += new_end - area.end
        self.version += 1
        return grown

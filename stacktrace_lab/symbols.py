"""Naming code addresses `label+offset`: one rule for the recorder and the analysis side.

Pure data, no capstone or unicorn, so both sides can import it.
"""

from __future__ import annotations

import bisect

import numpy as np
import numpy.typing as npt


class LabelTable:
    """The nearest label at or below an address.

    Of several labels at one address the alphabetically first names it. The
    rule has to be one that the trace's metadata can reproduce (its JSON keys
    are sorted, so source order is gone after writing): then the trace's
    `symbol` column, the report and `show` agree.
    """

    def __init__(self, symbols: dict[str, int]) -> None:
        first: dict[int, str] = {}
        for name, addr in sorted(symbols.items()):
            first.setdefault(addr, name)
        self._addrs = sorted(first)
        self._names = [first[addr] for addr in self._addrs]
        self._sorted: npt.NDArray[np.uint64] | None = None  # `_addrs` for nearest_many

    def nearest(self, addr: int) -> tuple[str, int] | None:
        """(label, offset from it), or None below the first label."""
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0:
            return None
        return self._names[i], addr - self._addrs[i]

    def nearest_many(self, addrs: list[int]) -> list[tuple[str, int] | None]:
        """`nearest` of each address: the same answers, without a call per address
        (one search of all of them in numpy: a bisection each was most of the time)."""
        if self._sorted is None:
            self._sorted = np.array(self._addrs, dtype=np.uint64)
        wanted = np.array(addrs, dtype=np.uint64)
        found = (np.searchsorted(self._sorted, wanted, side="right") - 1).tolist()
        names, bases = self._names, self._addrs
        return [
            None if i < 0 else (names[i], addr - bases[i])
            for i, addr in zip(found, addrs, strict=True)
        ]

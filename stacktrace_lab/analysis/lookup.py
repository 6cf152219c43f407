"""Which region an address lies in, for millions of addresses at once, whatever the
number of regions: one binary search per address over the regions' bounds.

Regions may touch or overlap (a stack inside a heap block); the rule everywhere
is that the first region listed wins. So the address space is cut at every
region's bounds into spans, each span knows the first region listed that covers
it, and an address is looked up by the span it falls in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ..layout import Region

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

#: Elements looked up per block, so that temporaries stay small on long traces.
_BLOCK = 1 << 20
_TOP = (1 << 64) - 1


class RegionLookup:
    """The first of `regions` holding each address, with each region's top included
    when `with_top` (a stack's top is where an empty stack's rsp is)."""

    def __init__(self, regions: Sequence[Region], *, with_top: bool) -> None:
        self.regions = tuple(regions)
        ends = [min(r.top + 1, _TOP) if with_top else r.top for r in self.regions]
        cuts = sorted({r.base for r in self.regions} | set(ends))
        #: Span k is `starts[k] <= addr < starts[k + 1]`; `owner[k]` its region (-1: none).
        self.starts = np.array(cuts, dtype=np.uint64)
        owner = np.full(len(cuts), -1, dtype=np.int64)
        # Last listed first, so that the first listed overwrites it where they overlap.
        for i in reversed(range(len(self.regions))):
            lo = np.searchsorted(self.starts, np.uint64(self.regions[i].base))
            hi = np.searchsorted(self.starts, np.uint64(ends[i]))
            owner[lo:hi] = i
        self.owner = owner

    def index(self, addrs: U64) -> I64:
        """For each address, the index in `regions` of the first one holding it, or -1."""
        out = np.full(addrs.shape, -1, dtype=np.int64)
        if not self.starts.size:
            return out
        for lo in range(0, addrs.size, _BLOCK):
            block = addrs[lo : lo + _BLOCK]
            span = np.searchsorted(self.starts, block, side="right").astype(np.int64) - 1
            inside = span >= 0
            out[lo : lo + _BLOCK][inside] = self.owner[span[inside]]
        return out

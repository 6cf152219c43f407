"""Which bytes of each stack the trace stores per step: its snapshot windows.

A stack larger than the snapshot limit cannot be stored whole. Storing its
top (what `snapshot_windows` in recorder.py did) shows a process stack's
argv, environment and auxv, flat for the whole run, and never the frames,
which sit thousands of bytes lower. The recorder's discovery pass runs the
program once before recording it, so it knows where rsp actually went in
each stack: `choose_windows` puts each window there.

- A stack no bigger than the limit is stored whole.
- Otherwise the window starts `RED_ZONE` bytes under the deepest rsp seen
  (a leaf function writes up to 128 bytes below rsp without moving it) and
  runs up towards the top for `limit` bytes; when that would pass the top it
  is the top `limit` bytes, as before. The deepest frames are what a switch
  or an overflow is about; the frames above the window are older ones.
- When rsp went below a stack's base (an overflow), the bytes it reached
  there are stored too, in a window of their own keyed `<stack>__below`
  (`overflow_key`): from `RED_ZONE` under the deepest rsp up to the base,
  at most `limit` bytes, the part next to the base kept. Its top is the
  stack's base. It is not a region: those bytes belong to whatever lies
  under the stack (a heap chunk's header, another variable), and the
  analysis keeps attributing rsp there to the stack as an overflow. Its
  first row holds what the bytes held before the overflow reached them, so
  a reader sees what was clobbered.

A stack rsp never entered keeps its top window. Windows are 8-byte aligned
where the region allows, so slots read as whole words.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ...layout import Region
from ...trace.format import (
    BELOW,
    SnapshotWindow,
    overflow_key,
    overflow_stack,
    snapshot_misfit,
    stack_column,
)

#: Bytes below rsp a leaf function may use without moving rsp (the System V red zone).
RED_ZONE = 128
WORD = 8
__all__ = ["BELOW", "RED_ZONE", "Extent", "choose_windows", "overflow_key", "overflow_stack"]


@dataclass(frozen=True)
class Extent:
    """The lowest and highest rsp seen while rsp belonged to one stack; `lowest`
    is below the stack's base when it overflowed."""

    lowest: int
    highest: int


def window_fits(key: str, window: SnapshotWindow, regions: Iterable[Region]) -> bool:
    """The format's rule for a snapshot window (trace/format.py, `snapshot_misfit`):
    inside the stack region of its name, or, for `<stack>__below`, ending at that
    stack's base."""
    stacks = {r.name: (r.base, r.top) for r in regions if r.kind == "stack"}
    return window.size > 0 and snapshot_misfit(key, window.base, window.size, stacks) is None


def choose_windows(
    regions: Iterable[Region], limit: int, extents: Mapping[str, Extent]
) -> dict[str, SnapshotWindow]:
    """The snapshot window of every stack region, placed where rsp went (see the
    module's docstring), plus a `<stack>__below` window for each stack whose rsp
    went below its base. `extents` is by stack name; a stack missing from it
    keeps its top `limit` bytes."""
    if limit < WORD:
        raise ValueError(f"the snapshot limit must be at least {WORD} bytes, got {limit}")
    regions = list(regions)
    names = {r.name for r in regions}
    windows: dict[str, SnapshotWindow] = {}
    for region in regions:
        if region.kind != "stack":
            continue
        extent = extents.get(region.name)
        windows[region.name] = _inside(region, limit, extent)
        if extent is not None and extent.lowest < region.base:
            low = _align_down(max(extent.lowest - RED_ZONE, 0))
            base = max(low, region.base - _align_down(limit))
            key = overflow_key(region.name)
            # (A region named like the key would own it: no overflow window then.)
            if base < region.base and key not in names:
                windows[key] = SnapshotWindow(stack_column(key), base, region.base - base)
    return windows


def _inside(region: Region, limit: int, extent: Extent | None) -> SnapshotWindow:
    column = stack_column(region.name)
    if region.size <= limit:
        return SnapshotWindow(column, region.base, region.size)
    size = _align_down(limit)
    if extent is None or extent.highest < region.base or extent.lowest >= region.top:
        return SnapshotWindow(column, region.top - size, size)
    base = _align_down(max(extent.lowest - RED_ZONE, region.base))
    base = max(base, region.base)
    # Past the top: the top `size` bytes, which still reach down to the deepest rsp.
    base = min(base, region.top - size)
    return SnapshotWindow(column, base, size)


def _align_down(value: int) -> int:
    return value - value % WORD

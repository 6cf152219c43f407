"""`heatmap.png`: what every 8-byte slot of each used stack held, step by step.

One panel per stack region the program used. x is the step, y the byte index
within the region (its base is 0); each cell is one 8-byte slot as the
trace's `stack__<name>` snapshot holds it *before* that step, coloured by what
the slot holds: zero, a code address (a return address or a function
pointer), an address into a stack (a saved rsp or rbp, a context pointer), or
other data. Over it: an x where a step writes the slot, the rsp line, and for
each planted return a red frame around its slot from the store that planted
it to the `ret` that popped it, labelled.

For a region larger than the snapshot limit only its stored top is shown; a
large stack is cropped to the slots the program touched. Long traces are
sampled: the snapshot columns are read row group by row group and at most
`MAX_COLUMNS` steps are kept, so memory stays at one row group of snapshots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from matplotlib.axes import Axes
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.text import Annotation, Text
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

from ..analysis.events import _BLOCK, TraceFacts
from ..analysis.memory import StepRsp
from ..analysis.model import PlantedReturn
from ..arch import WORD
from ..layout import Region
from ..record.core.windows import overflow_key
from ..trace.arrays import arrow_indices
from ..trace.format import SnapshotWindow
from .figures import (
    OVERFLOW_COLOUR,
    PLANTED_COLOUR,
    Columns,
    columns_between,
    columns_for,
    declutter,
    envelope,
    new_figure,
    plot_style,
    png_bytes,
    steps_per_column,
)

#: Sampled steps kept per panel at most (the figure is about 1000 pixels wide).
MAX_COLUMNS = 2000
#: Write marks drawn as x one by one up to this many per panel, else shaded cells.
MAX_WRITE_MARKS = 600
#: Slot contents written as text inside the cells when the grid is at most this wide.
MAX_LABELLED_COLUMNS = 40
#: White lines between columns up to this many columns (more would stripe the picture).
MAX_GRID_COLUMNS = 60
#: Planted returns framed and labelled per panel at most.
MAX_PLANTED_FRAMES = 6
#: Bytes shown above the highest rsp of a big stack's window: the caller's frame.
ABOVE_RSP = 64
#: A stack in use for at most this share of the run gets a zoomed panel of that stretch.
ZOOM_SHARE = 0.1
#: Zoomed panels per figure at most.
MAX_ZOOMS = 2
#: Steps shown before and after a zoomed stretch at least.
ZOOM_MARGIN_STEPS = 20

#: A white box behind text drawn over cells.
LABEL_BOX = {"boxstyle": "square,pad=0.1", "facecolor": "white", "alpha": 0.85, "linewidth": 0}

ZERO, CODE, STACK, OTHER = 0, 1, 2, 3
CATEGORY_NAMES = ("zero", "code address", "stack address", "other data")
CATEGORY_COLOURS = ("#f2f2f2", "#fdae6b", "#9ecae1", "#c7e9c0")
#: Slots under a base that an overflow overwrote while they held data.
OVERWRITTEN_COLOUR = "#d62728"

U64 = npt.NDArray[np.uint64]
U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Panel:
    """The slots of one stack shown in the heatmap, and what they held at each column."""

    stack: Region
    window: SnapshotWindow
    #: Byte index (from the region's base) of the lowest slot shown.
    first_index: int
    #: Slot values, shape (slots, columns): row 0 is the lowest slot shown.
    values: U64
    #: Byte index of the lowest slot drawn: below 0 when the stack overflowed (those
    #: slots are outside the region: hatched, unless an overflow window stores them).
    floor_index: int
    #: The overflow window's slots (`<stack>__below`, record/core/windows.py), shape
    #: (slots, columns), row 0 its lowest; None when the trace has none.
    below: U64 | None = None

    @property
    def below_index(self) -> int:
        """Byte index (negative) of the lowest slot the overflow window stores."""
        return 0 if self.below is None else -WORD * int(self.below.shape[0])

    @property
    def slots(self) -> int:
        return int(self.values.shape[0])

    @property
    def rows(self) -> int:
        """Slots drawn, the overflow below the base included."""
        return (self.top_index - self.floor_index) // WORD

    @property
    def top_index(self) -> int:
        return self.first_index + WORD * self.slots


def heatmap_png(facts: TraceFacts) -> bytes:
    with plot_style():
        return png_bytes(heatmap_figure(facts))


def heatmap_figure(facts: TraceFacts) -> Figure:
    columns = columns_for(facts.steps, MAX_COLUMNS)
    stacks = [s for s in (facts.stacks_used() or facts.stacks) if s.name in facts.meta.snapshots]
    snapshots = read_snapshots(facts, _keys(facts, stacks), columns.starts)
    panels = [_panel(facts, stack, snapshots) for stack in stacks]
    # A stack used for a short stretch of a long run (the 48-byte stack of the Rust
    # example: its last 3 %) again, under the others, over that stretch alone.
    zooms: list[tuple[Panel, Columns]] = []
    for stack, first, stop in zoom_spans(facts, stacks):
        between = columns_between(first, stop, MAX_COLUMNS)
        shown = read_snapshots(facts, _keys(facts, [stack]), between.starts)
        zooms.append((_panel(facts, stack, shown), between))

    everything = [*[(p, columns) for p in panels], *zooms]
    heights = [float(np.clip(p.rows * 0.24, 1.1, 4.2)) for p, _ in everything]
    # Fixed inches around and between the panels, whatever their number and size; more
    # between them when a zoom's own step axis and title sit between two panels.
    top, bottom, gap = 0.95, 0.55, 0.95 if zooms else 0.6
    height = top + bottom + sum(heights) + gap * max(len(heights) - 1, 0)
    figure = new_figure(height)
    hspace = gap / (sum(heights) / max(len(heights), 1))
    grid = figure.add_gridspec(
        max(len(heights), 1), 1, height_ratios=heights or [1.0], hspace=hspace
    )
    axes: list[Axes] = []
    labels: list[Text] = []
    for row, panel in enumerate(panels):
        ax = figure.add_subplot(grid[row], sharex=axes[0] if axes else None)
        axes.append(ax)
        _draw_panel(ax, facts, panel, columns, labels)
    if axes:
        last = axes[-1]
        last.set_xlabel("step (each column: the stack before that step runs)")
        for ax in axes[:-1]:
            ax.tick_params(labelbottom=False)
        _step_ticks(last, columns)
    for row, (panel, between) in enumerate(zooms, start=len(panels)):
        ax = figure.add_subplot(grid[row])
        _draw_panel(ax, facts, panel, between, labels)
        ax.set_title(
            f"zoom on steps {between.first:,}-{between.steps - 1:,}: " + ax.get_title(loc="left"),
            loc="left",
            fontsize=9,
        )
        ax.set_xlabel("step")
        _step_ticks(ax, between)

    scale = (
        ""
        if columns.exact
        else f", one column per ~{steps_per_column(facts.steps, columns.count)} steps"
    )
    figure.suptitle(
        f"stack contents over time: {facts.meta.scenario.name} ({facts.steps:,} steps{scale})",
        x=0.01,
        y=1 - 0.1 / height,
        ha="left",
        va="top",
    )
    figure.legend(
        handles=_legend(any(p.below is not None for p in panels)),
        loc="upper left",
        ncol=8,
        bbox_to_anchor=(0.01, 1 - 0.35 / height),
    )
    figure.subplots_adjust(left=0.1, right=0.965, top=1 - top / height, bottom=bottom / height)
    declutter(figure, labels)
    return figure


def _keys(facts: TraceFacts, stacks: list[Region]) -> list[str]:
    """The snapshot keys of `stacks`: each one's window, and its overflow window if stored."""
    keys = [s.name for s in stacks]
    keys += [overflow_key(s.name) for s in stacks if overflow_key(s.name) in facts.meta.snapshots]
    return keys


def zoom_spans(facts: TraceFacts, stacks: list[Region]) -> list[tuple[Region, int, int]]:
    """(stack, first step, stop) for each stack rsp was on (or under, an overflow) only
    for a stretch shorter than `ZOOM_SHARE` of the run, from the store that planted its
    first return, with a margin; at most `MAX_ZOOMS`, the shortest stretches first."""
    n = facts.steps
    found = []
    for stack in stacks:
        k = facts.stacks.index(stack)
        span = _first_and_stop(facts.rsp_owner == k)
        if span is None:
            continue
        first, stop = span
        # A return planted before a --from trace began has no store step to zoom from.
        planted = [
            p.planted_step
            for p in facts.planted_returns
            if p.region == stack.name and p.planted_step is not None
        ]
        first = min([first, *planted])
        margin = max(ZOOM_MARGIN_STEPS, (stop - first) // 10)
        first, stop = max(first - margin, 0), min(stop + margin, n)
        if stop - first <= ZOOM_SHARE * n:
            found.append((stop - first, stack, first, stop))
    found.sort(key=lambda f: f[0])
    return [(stack, first, stop) for _, stack, first, stop in found[:MAX_ZOOMS]]


def _first_and_stop(mask: npt.NDArray[np.bool_]) -> tuple[int, int] | None:
    """(first True index, one past the last), or None when none is True: two argmax
    scans of the mask, not `np.flatnonzero` (8 bytes per True step: 80 MB at ten
    million steps on one stack)."""
    if not mask.any():
        return None
    return int(mask.argmax()), mask.size - int(mask[::-1].argmax())


#: Rows per batch when reading the snapshot windows (about 8 MiB of two 512-byte windows).
_SNAPSHOT_BATCH = 8192


def read_snapshots(facts: TraceFacts, keys: list[str], steps: I64) -> dict[str, U8]:
    """The bytes of each snapshot window (by key) at `steps` (sorted), one row group at
    a time."""
    windows = {key: facts.meta.snapshots[key] for key in keys}
    out = {name: np.zeros((steps.size, w.size), dtype=np.uint8) for name, w in windows.items()}
    if not windows or not steps.size:
        return out
    names = [w.column for w in windows.values()]
    start = 0
    for group in range(facts.trace.num_row_groups):
        rows = int(facts.trace.parquet.metadata.row_group(group).num_rows)
        lo, hi = np.searchsorted(steps, [start, start + rows])
        if hi > lo:
            # A batch of rows at a time: a whole group's windows are tens of MiB.
            for batch in facts.trace.row_group_batches(group, names, _SNAPSHOT_BATCH):
                b_lo, b_hi = np.searchsorted(steps, [start, start + batch.num_rows])
                if b_hi > b_lo:
                    table = batch.take(arrow_indices(steps[b_lo:b_hi] - start))
                    for name, window in windows.items():
                        out[name][b_lo:b_hi] = _fixed_binary(
                            table.column(window.column), window.size
                        )
                start += batch.num_rows
        else:
            start += rows
    return out


def _fixed_binary(column: pa.ChunkedArray, size: int) -> U8:
    array = column.combine_chunks()
    data = np.frombuffer(array.buffers()[1], dtype=np.uint8)
    start = array.offset * size
    return data[start : start + len(array) * size].reshape(len(array), size)


def _slots(window: SnapshotWindow, snapshot: U8) -> tuple[int, U64]:
    """(address of the lowest whole slot, the slots' values (slots, columns)): slots are
    8-byte aligned in memory, counted down from the window's top."""
    slots = window.size // WORD
    first_addr = window.top - WORD * slots
    skip = first_addr - window.base
    values = (
        np.ascontiguousarray(snapshot[:, skip : skip + WORD * slots])
        .view("<u8")
        .reshape(snapshot.shape[0], slots)
        .T.astype(np.uint64)
    )
    return first_addr, values


def _panel(facts: TraceFacts, stack: Region, snapshots: dict[str, U8]) -> Panel:
    window = facts.meta.snapshots[stack.name]
    first_addr, values = _slots(window, snapshots[stack.name])
    lowest = _lowest_used_slot(facts, stack, first_addr, values)
    highest = _highest_used_slot(facts, stack, first_addr, values)
    if highest <= lowest:  # rsp never in the stored bytes: show them all
        highest = values.shape[0]
    first_index = first_addr - stack.base + WORD * lowest
    # A whole-region panel (starting at index 0) grows downwards over an overflow.
    floor_index = -_overflow_depth(facts, stack) if first_index == 0 else first_index
    below = None
    key = overflow_key(stack.name)
    if first_index == 0 and key in snapshots:
        below_window = facts.meta.snapshots[key]
        if below_window.top == stack.base and below_window.size >= WORD:
            _, below = _slots(below_window, snapshots[key])
            floor_index = min(floor_index, -WORD * int(below.shape[0]))
    return Panel(
        stack=stack,
        window=window,
        first_index=first_index,
        values=values[lowest:highest],
        floor_index=floor_index,
        below=below,
    )


@dataclass(frozen=True)
class Clobbered:
    """A slot under a stack's base that the stack's overflow wrote while it held data."""

    #: Byte index from the stack's base (negative).
    index: int
    #: The first step of the overflow that wrote the slot.
    step: int
    #: What the slot held just before that step: a heap chunk's header, a neighbour's data.
    before: int


def clobbered_slots(facts: TraceFacts, stack: Region, window: SnapshotWindow) -> list[Clobbered]:
    """The slots of `stack`'s overflow window (`<stack>__below`) that the overflow
    overwrote: written at a step when rsp was on the stack or under its base, and
    not zero just before. Writes there while rsp was elsewhere (the allocator
    setting up the heap, the neighbours' own stores) are not the overflow's."""
    k = facts.stacks.index(stack)
    writes = facts.writes
    ends = writes.addr + writes.size.astype(np.uint64)
    hit = np.flatnonzero((writes.addr < np.uint64(window.top)) & (ends > np.uint64(window.base)))
    hit = hit[facts.rsp_owner[writes.step[hit]] == k]
    first_step: dict[int, int] = {}  # slot address -> the first overflow write to it
    for i in hit.tolist():
        lo = max(int(writes.addr[i]), window.base)
        hi = min(int(ends[i]), window.top)
        for slot in range(lo - (lo - window.top) % WORD, hi, WORD):
            if slot >= window.top - WORD * (window.size // WORD):
                first_step.setdefault(slot, int(writes.step[i]))
    found = []
    rows: dict[int, bytes] = {}
    for slot, step in sorted(first_step.items()):
        if step not in rows:  # the window's bytes before that step
            rows[step] = bytes(facts.trace.value_at(step, window.column))
        offset = slot - window.base
        before = int.from_bytes(rows[step][offset : offset + WORD], "little")
        if before:
            found.append(Clobbered(slot - stack.base, step, before))
    return found


def _draw_below(
    ax: Axes,
    facts: TraceFacts,
    panel: Panel,
    columns: Columns,
    colours: ListedColormap,
    norm: BoundaryNorm,
) -> None:
    """The bytes an overflow reached under the base, coloured by what they held, and
    each slot the overflow overwrote while it held data (`clobbered_slots`) shaded
    red from that step on, with what it held before in the label."""
    below = panel.below
    assert below is not None
    extent = (float(columns.first), float(columns.steps), float(panel.below_index), 0.0)
    ax.imshow(
        categories(facts, below),
        cmap=colours,
        norm=norm,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        extent=extent,
        zorder=1,
    )
    window = facts.meta.snapshots[overflow_key(panel.stack.name)]
    clobbered = clobbered_slots(facts, panel.stack, window)
    if clobbered:
        overwritten = np.zeros(below.shape, dtype=np.float64)
        for slot in clobbered:
            row = (slot.index - panel.below_index) // WORD
            column = max(int(columns.column_of(np.array([slot.step]))[0]), 0)
            overwritten[row, column:] = 1.0
        ax.imshow(
            np.ma.masked_equal(overwritten, 0.0),
            cmap=ListedColormap([OVERWRITTEN_COLOUR]),
            origin="lower",
            aspect="auto",
            interpolation="nearest",
            extent=extent,
            alpha=0.55,
            zorder=2,
        )
    ax.axhline(0, color=OVERFLOW_COLOUR, linewidth=1.2, zorder=5)
    count = len(clobbered)
    said = f"below {panel.stack.shown_name}'s base: {-panel.below_index} bytes stored; "
    said += f"the overflow overwrote {count} slot{'s' if count != 1 else ''} that held data"
    if clobbered:
        shown = ", ".join(f"[{c.index}] {c.before:#x}" for c in clobbered[-3:][::-1])
        said += f" ({shown}{', ...' if count > 3 else ''})"
    ax.text(
        0.998,
        panel.below_index + WORD / 2,
        said + " ",
        transform=ax.get_yaxis_transform(),
        ha="right",
        va="center",
        fontsize=7,
        color=OVERFLOW_COLOUR,
        zorder=7,
        bbox=LABEL_BOX,
    )


def _highest_used_slot(facts: TraceFacts, stack: Region, first_addr: int, values: U64) -> int:
    """One past the highest slot worth showing: `ABOVE_RSP` bytes above the highest rsp
    in the window (the caller's frame, the return address), or the highest slot written.
    The rest of a big window (argv and the environment above a process stack's
    frames) stays the same all run and is cut; a small one is shown whole."""
    slots = int(values.shape[0])
    if slots <= 16:
        return slots
    k = facts.stacks.index(stack)
    top = first_addr + WORD * slots
    highest_rsp = _extreme(facts.rsp, first_addr, top, np.max, facts.rsp_stack, k)
    if highest_rsp is None:
        return slots
    reach = highest_rsp + ABOVE_RSP
    highest_write = _extreme(facts.writes.addr, first_addr, top, np.max)
    if highest_write is not None:
        reach = max(reach, highest_write + WORD)
    highest = -(-(reach - first_addr) // WORD)
    # Cutting a few slots only makes the panel harder to compare with the region.
    return slots if slots - highest < 8 else int(min(highest, slots))


def _extreme(
    values: U64 | StepRsp,
    lo: int,
    hi: int,
    pick: Callable[[U64], np.uint64],
    owner: npt.NDArray[np.int16] | None = None,
    k: int = -1,
) -> int | None:
    """`pick` (np.min or np.max) of the values in [lo, hi), only where `owner == k`
    when `owner` is given; None when there are none. In blocks: no temporary as long
    as a ten-million-step trace."""
    best: list[int] = []
    for start in range(0, values.size, _BLOCK):
        block = values[start : start + _BLOCK]
        keep = (block >= np.uint64(lo)) & (block < np.uint64(hi))
        if owner is not None:
            keep &= owner[start : start + _BLOCK] == k
        if keep.any():
            best.append(int(pick(block[keep])))
    return int(pick(np.array(best, dtype=np.uint64))) if best else None


def rsp_outside_window(facts: TraceFacts, stack: Region) -> tuple[int, int] | None:
    """(lowest, highest) rsp as byte indexes in `stack` when rsp was in the stack but
    never in its stored window (a trace whose window is a big stack's top), else None."""
    window = facts.meta.snapshots[stack.name]
    k = facts.stacks.index(stack)
    if _extreme(facts.rsp, window.base, window.top, np.min, facts.rsp_stack, k) is not None:
        return None
    # rsp_stack == k holds rsp from the base up to the top, inclusive.
    lowest = _extreme(facts.rsp, stack.base, stack.top + 1, np.min, facts.rsp_stack, k)
    highest = _extreme(facts.rsp, stack.base, stack.top + 1, np.max, facts.rsp_stack, k)
    if lowest is None or highest is None:
        return None
    return lowest - stack.base, highest - stack.base


def _overflow_depth(facts: TraceFacts, stack: Region) -> int:
    """How far below the base writes and rsp went, rounded up to whole slots."""
    k = facts.stacks.index(stack)
    below = facts.writes.addr[facts.overflowed(facts.writes.addr) == k]
    out_rsp = facts.rsp[(facts.rsp_owner == k) & (facts.rsp_stack < 0)]
    lowest = min([int(a.min()) for a in (below, out_rsp) if a.size], default=stack.base)
    depth = stack.base - lowest
    return -(-depth // WORD) * WORD


def _lowest_used_slot(facts: TraceFacts, stack: Region, first_addr: int, values: U64) -> int:
    """Crop a big window to the slots the program touched, with two slots of margin."""
    slots = values.shape[0]
    if slots <= 16:
        return 0
    touched = [slots - 4]
    nonzero = np.flatnonzero(values.any(axis=1))
    if nonzero.size:
        touched.append(int(nonzero[0]))
    k = facts.stacks.index(stack)
    lowest = [
        _extreme(facts.writes.addr, first_addr, stack.top, np.min),
        _extreme(facts.rsp, first_addr, stack.top, np.min, facts.rsp_stack, k),
    ]
    known = [a for a in lowest if a is not None]
    if known:
        touched.append(int((min(known) - first_addr) // WORD))
    return int(max(min(touched) - 2, 0))


def categories(facts: TraceFacts, values: U64) -> npt.NDArray[np.int8]:
    """What each 64-bit value is: ZERO, CODE (or the sentinel return), STACK or OTHER."""
    out = np.full(values.shape, OTHER, dtype=np.int8)
    for region in facts.meta.regions:
        inside = (values >= np.uint64(region.base)) & (values <= np.uint64(region.top))
        if region.kind == "code":
            out[inside & (values < np.uint64(region.top))] = CODE
        elif region.kind == "stack":
            out[inside] = STACK
    out[values == np.uint64(facts.sentinel)] = CODE
    out[values == 0] = ZERO
    return out


def _draw_panel(
    ax: Axes, facts: TraceFacts, panel: Panel, columns: Columns, labels: list[Text]
) -> None:
    stack = panel.stack
    # The steps shown: the whole run, or a zoom's (`columns_between`).
    lo, n = columns.first, columns.steps
    kinds = categories(facts, panel.values)
    colours = ListedColormap(list(CATEGORY_COLOURS))
    norm = BoundaryNorm([-0.5, 0.5, 1.5, 2.5, 3.5], colours.N)
    ax.imshow(
        kinds,
        cmap=colours,
        norm=norm,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        extent=(lo, n, panel.first_index, panel.top_index),
        zorder=1,
    )
    if columns.exact and columns.count <= MAX_GRID_COLUMNS:
        # Thin white gaps between cells read as a grid for short traces.
        for x in range(n + 1):
            ax.axvline(x, color="white", linewidth=0.6, zorder=2)
    if panel.below is not None:
        _draw_below(ax, facts, panel, columns, colours, norm)
    if panel.floor_index < panel.below_index:
        # Below the base: not the stack's memory, and no snapshot of it.
        ax.add_patch(
            Rectangle(
                (lo, panel.floor_index),
                n - lo,
                panel.below_index - panel.floor_index,
                facecolor="#fdf0f0",
                edgecolor="#e9a3a3",
                hatch="///",
                linewidth=0,
                zorder=1,
            )
        )
        ax.text(
            0.998,
            panel.floor_index + WORD / 2,
            f"below {stack.shown_name}'s base: overflow (not stored) ",
            transform=ax.get_yaxis_transform(),
            ha="right",
            va="center",
            fontsize=7,
            color=OVERFLOW_COLOUR,
            zorder=7,
            bbox={
                "boxstyle": "square,pad=0.1",
                "facecolor": "white",
                "alpha": 0.85,
                "linewidth": 0,
            },
        )
    for y in range(panel.floor_index, panel.top_index + 1, WORD):
        ax.axhline(y, color="white", linewidth=0.8 if panel.rows <= 64 else 0.3, zorder=2)

    if columns.exact and columns.count <= MAX_LABELLED_COLUMNS:
        _label_cells(ax, facts, panel)
    _write_marks(ax, facts, panel, columns)
    _rsp_line(ax, facts, panel, columns)
    by_slot: dict[int, list[PlantedReturn]] = {}
    for p in facts.planted_returns:
        if p.region == stack.name:
            by_slot.setdefault(p.index - p.index % WORD, []).append(p)
    framed = set(by_slot)
    for group in list(by_slot.values())[:MAX_PLANTED_FRAMES]:
        label = _frame_planted(ax, panel, group, framed, lo, n)
        if label is not None:
            labels.append(label)

    ax.set_ylim(panel.floor_index, panel.top_index)
    ax.set_xlim(lo, max(n, lo + 1))
    ticks = list(range(panel.floor_index, panel.top_index + 1, WORD))
    every = max(1, len(ticks) // 8)
    ax.yaxis.set_major_locator(FixedLocator(ticks[::-1][::every]))
    window = panel.window
    if window.size >= stack.size:
        shown = ""
    elif window.top == stack.top:
        shown = f", top {window.size} B stored"
    else:
        shown = f", {window.size} B stored where rsp went (top-{stack.top - window.base})"
    missed = rsp_outside_window(facts, stack)
    title = f"{stack.shown_name}: {stack.size} bytes at {stack.base:#x}{shown}"
    if missed is not None:
        title += f"; rsp went to {missed[0]:,}-{missed[1]:,}, outside them"
    ax.set_title(title, loc="left", fontsize=9, color=OVERFLOW_COLOUR if missed else "black")
    ax.set_ylabel("byte index")
    for spine in ax.spines.values():
        spine.set_visible(False)


def _label_cells(ax: Axes, facts: TraceFacts, panel: Panel) -> None:
    """Name each value where it first appears in a slot (a run of equal values)."""
    values = panel.values
    for row in range(panel.slots):
        previous = None
        for column in range(values.shape[1]):
            value = int(values[row, column])
            if value != previous and value != 0:
                text = _short_value(facts, value)
                ax.text(
                    column + 0.08,
                    panel.first_index + WORD * row + WORD / 2,
                    text,
                    va="center",
                    ha="left",
                    fontsize=6.5,
                    color="#333333",
                    zorder=3,
                    clip_on=True,
                )
            previous = value


def _short_value(facts: TraceFacts, value: int) -> str:
    if facts.is_code(value):
        return facts.symbolize(value)
    if value == facts.sentinel:
        return "sentinel"
    where = facts.where(value)
    return f"&{where.split(' ')[0]}" if not where.startswith("0x") else f"{value:#x}"


#: Writes per block in `_write_marks`: a block where every write hits the panel makes
#: about ten 8-byte temporaries per write (over 100 MiB with `_BLOCK`'s million).
_MARK_BLOCK = 1 << 16


def _write_marks(ax: Axes, facts: TraceFacts, panel: Panel, columns: Columns) -> None:
    lo = panel.stack.base + panel.floor_index
    hi = panel.stack.base + panel.top_index
    writes = facts.writes
    # The distinct (column, slot) cells written, in column order: a mask, not a sort;
    # only the writes in the panel's steps (a zoom shows a stretch of the run),
    # filled a block of writes at a time, so the temporaries stay small.
    written = np.zeros(columns.count * panel.rows, dtype=np.bool_)
    for start in range(0, len(writes), _MARK_BLOCK):
        addr = writes.addr[start : start + _MARK_BLOCK]
        ends = addr + writes.size[start : start + _MARK_BLOCK].astype(np.uint64)
        step = writes.step[start : start + _MARK_BLOCK]
        hit = np.flatnonzero(
            (addr < np.uint64(hi))
            & (ends > np.uint64(lo))
            & (step >= columns.first)
            & (step < columns.steps)
        )
        if not hit.size:
            continue
        # A write may cover several slots (a 16-byte store): mark each one.
        first = (np.maximum(addr[hit], np.uint64(lo)) - np.uint64(lo)) // np.uint64(WORD)
        last = (np.minimum(ends[hit], np.uint64(hi)) - np.uint64(lo) - np.uint64(1)) // (
            np.uint64(WORD)
        )
        spans = (last - first + np.uint64(1)).astype(np.int64)
        owner = np.repeat(np.arange(hit.size), spans)
        row = first[owner].astype(np.int64) + (
            np.arange(owner.size) - (np.cumsum(spans) - spans)[owner]
        )
        column = columns.column_of(step[hit][owner])
        written[column * panel.rows + row] = True
    flat = np.flatnonzero(written)
    if not flat.size:
        return
    cells = np.stack([flat // panel.rows, flat % panel.rows])
    y = panel.floor_index + WORD * cells[1] + WORD / 2
    if cells.shape[1] <= MAX_WRITE_MARKS:
        x = columns.starts[cells[0]] + (0.5 if columns.exact else 0.0)
        # Smaller marks when the columns are narrower than a marker.
        size, width = (22, 1.0) if columns.count <= 200 else (8, 0.6)
        ax.scatter(x, y, marker="x", s=size, color="#222222", linewidths=width, zorder=4)
    else:
        # Too many for markers: a dark stripe through the middle fifth of each written
        # cell, so the cell's colour (what the slot holds) stays readable around it.
        mask = np.zeros((5 * panel.rows, columns.count), dtype=np.float64)
        mask[5 * cells[1] + 2, cells[0]] = 1.0
        ax.imshow(
            np.ma.masked_equal(mask, 0.0),
            cmap=ListedColormap(["#333333"]),
            origin="lower",
            aspect="auto",
            interpolation="nearest",
            extent=(columns.first, columns.steps, panel.floor_index, panel.top_index),
            zorder=3,
        )


def _rsp_line(ax: Axes, facts: TraceFacts, panel: Panel, columns: Columns) -> None:
    k = facts.stacks.index(panel.stack)
    n = columns.steps
    final_index = facts.final_rsp - panel.stack.base
    final = final_index if facts.final_owner == k else np.nan
    if n < facts.steps:
        # A zoom that stops before the trace's end: the line ends at rsp after its last step.
        inside = int(facts.rsp_owner[n]) == k
        final = int(facts.rsp[n]) - panel.stack.base if inside else np.nan
    low, high = envelope(facts.rsp, facts.rsp_owner, k, panel.stack.base, columns)
    if columns.exact:
        x = np.arange(n + 1, dtype=np.float64)
        y = np.append(low, final)
        for colour, width in (("white", 3.6), ("#111111", 1.6)):
            ax.step(x, y, where="post", color=colour, linewidth=width, zorder=5)
        return
    edges = np.append(columns.starts, n).astype(np.float64)
    for series in (low, high):
        y = np.append(series, series[-1])
        ax.step(edges, y, where="post", color="white", linewidth=2.2, zorder=5)
        ax.step(edges, y, where="post", color="#111111", linewidth=0.9, zorder=5)


def _stored_after(planted: PlantedReturn) -> int:
    """The first step the planted address is in the slot (0: planted before the trace)."""
    return 0 if planted.planted_step is None else planted.planted_step + 1


def _planted_at(planted: PlantedReturn) -> str:
    return "before the trace" if planted.planted_step is None else f"at step {planted.planted_step}"


def _frame_planted(
    ax: Axes,
    panel: Panel,
    group: list[PlantedReturn],
    framed: set[int],
    shown_from: int,
    shown_to: int,
) -> Annotation | None:
    """Frame a planted slot from the step after each store to the ret that pops it, and
    label the slot once (every ret that popped it from there), above the frame, or inside
    it when the slot above is framed too."""
    first = group[0]
    y = first.index - first.index % WORD
    if not panel.first_index <= y < panel.top_index:
        return None
    for planted in group:
        x0 = _stored_after(planted)
        ax.add_patch(
            Rectangle(
                (x0, y),
                max(planted.ret_step + 1 - x0, 1),
                WORD,
                fill=False,
                edgecolor=PLANTED_COLOUR,
                linewidth=1.8,
                zorder=6,
            )
        )
    if len(group) == 1:
        text = (
            f"index {first.index}: {first.target}, planted {_planted_at(first)}, "
            f"popped at step {first.ret_step}"
        )
    else:
        popped = ", ".join(str(p.ret_step) for p in group[:4])
        more = f" and {len(group) - 4} more" if len(group) > 4 else ""
        targets = ", ".join(sorted({p.target for p in group}))
        text = f"index {first.index}: {targets}, popped at steps {popped}{more}"
    x0 = _stored_after(first)
    # Past the middle the label ends at the frame instead of starting there: it stays
    # inside the figure.
    if not shown_from <= x0 < shown_to:
        return None  # framed, but the store is outside the steps shown: no label
    right = x0 > (shown_from + shown_to) / 2
    if y + WORD < panel.top_index and y + WORD not in framed:
        return ax.annotate(
            text,
            xy=(x0, y + WORD),
            xytext=(0, 3),
            ha="right" if right else "left",
            textcoords="offset points",
            fontsize=7.5,
            color=PLANTED_COLOUR,
            va="bottom",
            zorder=7,
        )
    return ax.annotate(
        text,
        xy=(x0, y + WORD / 2),
        xytext=(-3 if right else 3, 0),
        ha="right" if right else "left",
        textcoords="offset points",
        fontsize=7,
        color=PLANTED_COLOUR,
        va="center",
        zorder=7,
        bbox=LABEL_BOX,
    )


def _step_ticks(ax: Axes, columns: Columns) -> None:
    if columns.exact and columns.count <= 60:
        # Label cells at their centres: column s is the stack before step s.
        ax.xaxis.set_major_locator(FixedLocator([s + 0.5 for s in range(columns.count)]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{int(x)}"))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))


def _legend(overwritten: bool = False) -> list[Patch | Line2D]:
    handles: list[Patch | Line2D] = [
        Patch(facecolor=c, edgecolor="#bbbbbb", label=name)
        for name, c in zip(CATEGORY_NAMES, CATEGORY_COLOURS, strict=True)
    ]
    handles.append(Line2D([], [], marker="x", color="#222222", linestyle="", label="written"))
    handles.append(Line2D([], [], color="#111111", linewidth=1.6, label="rsp"))
    handles.append(Patch(facecolor="none", edgecolor=PLANTED_COLOUR, label="planted return"))
    if overwritten:
        handles.append(
            Patch(facecolor=OVERWRITTEN_COLOUR, alpha=0.55, label="overwritten under a base")
        )
    return handles

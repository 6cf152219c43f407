"""`rsp.png`: rsp over time, one panel per stack region the program used.

Each panel's y axis is the byte index within that region (0 = its base, the
region's size = its top, an empty stack), so a 48-byte green stack is as
legible as the top of a 64 KiB main stack. rsp is drawn in a panel only while
it points into that region: a stack switch shows as the line leaving one
panel and starting in another, at a dashed vertical line. Calls (▼), returns
(▲) and planted returns (★, labelled with where they pop from and where they
land) are marked; a `ret` that pops a slot nothing wrote, or data where a
return address belongs, is drawn as a failure (✖), and the first step of
each cause the check found is marked in red with a short label. Past
`MAX_COLUMNS` steps the line becomes a min-max band per column and calls
and returns become counts per column in a panel of their own; the shape of
the figure does not depend on how long the trace is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, MultipleLocator

from ..analysis.events import I64, Kind, Origin, TraceFacts
from ..analysis.model import Cause, PlantedReturn
from ..layout import Region
from .figures import (
    CALL_COLOUR,
    F64,
    FAIL_COLOUR,
    OVERFLOW_COLOUR,
    PLANTED_COLOUR,
    RETURN_COLOUR,
    SWITCH_COLOUR,
    Columns,
    columns_for,
    counts,
    envelope,
    new_figure,
    plot_style,
    png_bytes,
    stack_colour,
    steps_per_column,
)

#: Columns of the plot; about one per pixel column of the plot area.
MAX_COLUMNS = 1000
#: Calls and returns are drawn one by one up to this many, else counted per column.
MAX_MARKERS = 300
#: Switches drawn as vertical lines up to this many (the band shows the rest).
MAX_SWITCH_LINES = 40
#: Switch lines are labelled (`switch main → green`) up to this many.
MAX_SWITCH_LABELS = 6
#: Columns of the calls/returns panel: counts per ~1% of the trace read better than per pixel.
EVENT_COLUMNS = 120
#: Planted returns labelled with text up to this many per panel.
MAX_PLANTED_LABELS = 4
#: A stack's columns are drawn as visible ticks when it is visited in at most this many.
MAX_SPARSE_COLUMNS = 50
#: Stacks larger than this are zoomed to the part the program used.
ZOOM_ABOVE = 512
#: Causes marked (with a label) in the plot, the first ones by step.
MAX_CAUSE_MARKS = 6


def rsp_png(facts: TraceFacts, causes: Sequence[Cause] = ()) -> bytes:
    with plot_style():
        return png_bytes(rsp_figure(facts, causes))


def failed_returns(facts: TraceFacts) -> I64:
    """Steps of the rets that pop a slot nothing wrote, or planted data (not code)."""
    r = facts.returns
    values = r.value
    code = [reg for reg in facts.meta.regions if reg.kind == "code"]
    if code:
        in_code = (values >= np.uint64(code[0].base)) & (values < np.uint64(code[0].top))
    else:
        in_code = np.zeros(values.shape, dtype=np.bool_)
    planted_data = (r.origin == Origin.PLANTED) & ~in_code & (values != np.uint64(facts.sentinel))
    failed: I64 = r.step[(r.origin == Origin.UNWRITTEN) | planted_data]
    return failed


def rsp_figure(facts: TraceFacts, causes: Sequence[Cause] = ()) -> Figure:
    stacks = facts.stacks_used() or facts.stacks
    n = facts.steps
    columns = columns_for(n, MAX_COLUMNS)
    returns = facts.returns
    failed = failed_returns(facts)
    ordinary = returns.step[returns.origin != Origin.PLANTED]
    ordinary = ordinary[~np.isin(ordinary, failed)]
    planted_steps = returns.step[facts.planted_steps]
    planted_steps = planted_steps[~np.isin(planted_steps, failed)]
    per_column = not columns.exact or facts.calls.size + ordinary.size > MAX_MARKERS

    heights = [2.0] * len(stacks) + ([1.1] if per_column else [])
    figure = new_figure(0.9 + sum(heights) * 1.05)
    grid = figure.add_gridspec(len(heights), 1, height_ratios=heights, hspace=0.3)
    axes: list[Axes] = []
    for row in range(len(heights)):
        axes.append(figure.add_subplot(grid[row], sharex=axes[0] if axes else None))

    planted_by_step = {p.ret_step: p for p in facts.planted_returns}
    for ax, stack in zip(axes, stacks, strict=False):
        k = facts.stacks.index(stack)
        _stack_panel(ax, facts, stack, k, columns, per_column, planted_steps, planted_by_step)
        _failed_rets(ax, facts, stack, k, failed)

    _cause_marks(axes, stacks, facts, causes[:MAX_CAUSE_MARKS])
    switches = facts.switch_steps()
    if switches.size <= MAX_SWITCH_LINES:
        _switch_lines(axes, facts, switches, labelled=switches.size <= MAX_SWITCH_LABELS)

    if per_column:
        _events_panel(axes[-1], facts, columns_for(n, EVENT_COLUMNS), ordinary, planted_steps)

    last = axes[-1]
    last.set_xlim(0, max(n, 1))
    last.set_xlabel("step")
    last.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=20 if n < 60 else 10))
    last.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)

    per = steps_per_column(n, columns.count)
    scale = "" if columns.exact else f", one column per ~{per} steps"
    figure.suptitle(
        f"rsp over time: {facts.meta.scenario.name} ({n:,} steps{scale})", x=0.01, ha="left"
    )
    height = figure.get_figheight()
    figure.legend(
        handles=_legend(per_column, bool(switches.size), bool(failed.size), bool(causes)),
        loc="upper left",
        ncol=5,
        bbox_to_anchor=(0.01, 1 - 0.3 / height),
    )
    figure.subplots_adjust(left=0.1, right=0.965, top=1 - 0.85 / height, bottom=0.5 / height)
    return figure


def _boundary(ax: Axes, y: float, label: str) -> None:
    """A dotted line across the panel at a stack's top or base, labelled at the right."""
    ax.axhline(y, color="#999999", linestyle=":", linewidth=0.9, zorder=1)
    ax.text(
        0.998,
        y,
        f"{label} ",
        transform=ax.get_yaxis_transform(),
        va="bottom",
        ha="right",
        fontsize=7,
        color="#777777",
    )


def _stack_panel(
    ax: Axes,
    facts: TraceFacts,
    stack: Region,
    k: int,
    columns: Columns,
    per_column: bool,
    planted_steps: np.ndarray,
    planted_by_step: dict[int, PlantedReturn],
) -> None:
    colour = stack_colour(k)
    n = facts.steps
    # Just below the base counts as this stack (an overflow), drawn below its 0 line.
    final_index = facts.final_rsp - stack.base
    final_inside = facts.final_owner == k
    low, high = envelope(facts.rsp, facts.rsp_owner, k, stack.base, columns)

    def index(steps: I64) -> F64:
        values: F64 = facts.rsp[steps].astype(np.float64) - float(stack.base)
        return values

    def inside(steps: I64) -> I64:
        mine: I64 = steps[facts.rsp_owner[steps] == k]
        return mine

    if columns.exact:
        x = np.arange(n + 1, dtype=np.float64)
        y = np.append(low, final_index if final_inside else np.nan)
        ax.step(x, y, where="post", color=colour, linewidth=1.8, zorder=3)
    else:
        edges = np.append(columns.starts, n).astype(np.float64)
        ax.fill_between(
            edges,
            np.append(low, low[-1]),
            np.append(high, high[-1]),
            step="post",
            color=colour,
            alpha=0.45,
            linewidth=0,
            zorder=2,
        )
        ax.step(edges, np.append(low, low[-1]), where="post", color=colour, linewidth=0.8)
        visited = np.flatnonzero(~np.isnan(low))
        if visited.size <= MAX_SPARSE_COLUMNS:
            # A stack visited for a few columns only would vanish in a one-pixel band.
            at = columns.starts[visited]
            ax.vlines(at, low[visited], high[visited], color=colour, linewidth=2.5, zorder=3)
            ax.scatter(at, low[visited], marker="_", s=60, color=colour, zorder=3)

    if not per_column:
        for steps, marker, c in (
            (facts.calls, "v", CALL_COLOUR),
            (facts.returns.step[facts.returns.origin != Origin.PLANTED], "^", RETURN_COLOUR),
        ):
            here = inside(steps)
            ax.scatter(here, index(here), marker=marker, s=36, color=c, zorder=4, linewidths=0)

    here = inside(planted_steps)
    ax.scatter(here, index(here), marker="*", s=150, color=PLANTED_COLOUR, zorder=5, linewidths=0)
    _label_planted(ax, facts, [planted_by_step[int(x)] for x in here if int(x) in planted_by_step])

    low_y = _lowest_shown(facts, stack, k, low)
    pad = max((stack.size - low_y) * 0.08, 2.0)
    ax.set_ylim(low_y - pad, stack.size + pad)
    if low_y < 0:
        ax.axhspan(low_y - pad, 0, color=OVERFLOW_COLOUR, alpha=0.12, linewidth=0, zorder=0)
        ax.text(
            0.998,
            (low_y - pad) / 2,
            "below the base: overflow ",
            transform=ax.get_yaxis_transform(),
            va="center",
            ha="right",
            fontsize=7,
            color=OVERFLOW_COLOUR,
        )
    _boundary(ax, stack.size, "top")
    if low_y <= 0:
        _boundary(ax, 0, "base")
    ax.yaxis.set_major_locator(MultipleLocator(_slot_ticks(stack.size - low_y)))
    ax.set_ylabel(f"{stack.name} ({_size(stack.size)})\nbyte index", color=colour)
    ax.grid(axis="y", color="#eeeeee", linewidth=0.6)


def _label_planted(ax: Axes, facts: TraceFacts, planted: list[PlantedReturn]) -> None:
    """Label planted returns; those close together in time share one label."""
    gap = max(facts.steps, 1) * 0.06
    groups: list[list[PlantedReturn]] = []
    for p in planted:
        if groups and p.ret_step - groups[-1][-1].ret_step <= gap:
            groups[-1].append(p)
        else:
            groups.append([p])
    for group in groups[:MAX_PLANTED_LABELS]:
        lines = []
        for p in group[:3]:
            lines.append(f"ret pops {p.target} from {p.where} (planted at step {p.planted_step})")
        if len(group) > 3:
            lines.append(f"... and {len(group) - 3} more")
        entered = [p for p in group if p.landing == "entry"]
        if len(group) == 1 and entered:
            lines.append(
                f"{entered[0].target} entered with rsp % 16 == {entered[0].entry_rsp % 16}"
            )
        first = group[0]
        # Near the right edge the label goes to the left of the star.
        left = first.ret_step > 0.6 * facts.steps
        ax.annotate(
            "\n".join(lines),
            xy=(first.ret_step, first.slot - facts.meta.region(first.region).base)
            if first.region
            else (first.ret_step, 0),
            xytext=(-8 if left else 8, -4),
            textcoords="offset points",
            ha="right" if left else "left",
            va="top",
            fontsize=8,
            color=PLANTED_COLOUR,
            zorder=6,
            bbox={
                "boxstyle": "square,pad=0.15",
                "facecolor": "white",
                "alpha": 0.85,
                "linewidth": 0,
            },
        )


def _slot_ticks(span: float) -> int:
    """A tick spacing that is a multiple of the 8-byte slot, with at most 7 ticks."""
    spacing = 8
    while span / spacing > 7:
        spacing *= 2
    return spacing


def _lowest_shown(facts: TraceFacts, stack: Region, k: int, low: F64) -> float:
    """Whole region for small stacks; for big ones, the used part near the top; and
    whatever overflowed below the base."""
    writes = facts.writes.addr[
        ((facts.writes.addr >= np.uint64(stack.base)) & (facts.writes.addr < np.uint64(stack.top)))
        | (facts.overflowed(facts.writes.addr) == k)
    ]
    lowest = 0.0 if stack.size <= ZOOM_ABOVE else stack.size - 64.0
    if not np.all(np.isnan(low)):
        lowest = min(lowest, float(np.nanmin(low)))
    if writes.size:
        lowest = min(lowest, float(int(writes.min()) - stack.base))
    if lowest >= 0 and stack.size <= ZOOM_ABOVE:
        return 0.0
    if lowest < 0:
        return lowest
    return max(0.0, lowest - (stack.size - lowest) * 0.1)


def _switch_lines(
    axes: list[Axes], facts: TraceFacts, switches: np.ndarray, labelled: bool
) -> None:
    names = {i: s.name for i, s in enumerate(facts.stacks)}
    owner = np.append(facts.rsp_owner, np.int16(facts.final_owner))
    for step in switches.tolist():
        x = step + 1  # the first step on the new stack
        for ax in axes:
            ax.axvline(x, color=SWITCH_COLOUR, linestyle="--", linewidth=0.9, zorder=1)
        if not labelled:
            continue
        src = names.get(int(owner[step]), "outside")
        dst = names.get(int(owner[step + 1]), "outside")
        right = x > 0.8 * facts.steps  # near the right edge, label to the left of the line
        axes[0].annotate(
            f"switch {src} → {dst}",
            xy=(x, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(-3 if right else 3, -2),
            textcoords="offset points",
            ha="right" if right else "left",
            va="top",
            fontsize=7,
            color=SWITCH_COLOUR,
        )


def _events_panel(
    ax: Axes, facts: TraceFacts, columns: Columns, ordinary: np.ndarray, planted: np.ndarray
) -> None:
    edges = np.append(columns.starts, facts.steps).astype(np.float64)
    series = [(facts.calls, "calls", CALL_COLOUR), (ordinary, "returns", RETURN_COLOUR)]
    if planted.size > MAX_SWITCH_LINES:  # fewer are starred one by one in the stack panels
        series.append((planted, "planted returns", PLANTED_COLOUR))
    top = 1.0
    drawn = 0
    for steps, label, colour in series:
        if not steps.size:
            continue
        drawn += 1
        per = counts(steps, columns)
        top = max(top, float(per.max()))
        ax.step(
            edges,
            np.append(per, per[-1]),
            where="post",
            color=colour,
            linewidth=0.9,
            label=label,
            alpha=0.85,
        )
    width = max(facts.steps // max(columns.count, 1), 1)
    ax.set_ylabel(f"per {width:,} step{'s' if width > 1 else ''}")
    ax.set_ylim(0, top * 1.45)  # room for the legend above the lines
    if drawn:
        ax.legend(loc="upper right", ncol=3)
    else:  # a loop without calls: say so, instead of an empty legend (and matplotlib's warning)
        ax.text(0.5, 0.5, "no calls or returns", transform=ax.transAxes, ha="center", va="center")
    ax.grid(axis="y", color="#eeeeee", linewidth=0.6)


def _failed_rets(ax: Axes, facts: TraceFacts, stack: Region, k: int, failed: I64) -> None:
    """A ret that pops an unwritten slot or data: a failure, not an ordinary return."""
    here = failed[facts.rsp_owner[failed] == k]
    if not here.size:
        return
    y = facts.rsp[here].astype(np.float64) - float(stack.base)
    ax.scatter(here, y, marker="X", s=110, color=FAIL_COLOUR, zorder=7, linewidths=0)
    for x, yy in list(zip(here.tolist(), y.tolist(), strict=True))[:MAX_PLANTED_LABELS]:
        left = x > 0.6 * facts.steps  # near the right edge, the label goes to the left
        ax.annotate(
            "ret pops a slot no call or store\nwrote a return address to",
            xy=(x, yy),
            xytext=(-10 if left else 10, 6),
            textcoords="offset points",
            ha="right" if left else "left",
            fontsize=7,
            color=FAIL_COLOUR,
            zorder=7,
        )


def _cause_marks(
    axes: list[Axes], stacks: Sequence[Region], facts: TraceFacts, causes: Sequence[Cause]
) -> None:
    """A red line at each cause's first step across every panel, a red ring where rsp
    was, and a short label (`1: alignment: entered misaligned at thread1+0`)."""
    for number, cause in enumerate(causes, start=1):
        step = cause.first_step
        for ax in axes:
            ax.axvline(step, color=FAIL_COLOUR, linewidth=1.2, alpha=0.7, zorder=6)
        owner = int(facts.rsp_owner[step]) if step < facts.steps else facts.final_owner
        panel = 0
        y: float | None = None
        for i, stack in enumerate(stacks):
            if owner >= 0 and facts.stacks[owner] == stack:
                panel = i
                y = float(int(facts.rsp[min(step, facts.steps - 1)]) - stack.base)
        ax = axes[panel]
        if y is not None:
            ax.scatter(
                [step],
                [y],
                s=160,
                facecolors="none",
                edgecolors=FAIL_COLOUR,
                linewidths=1.8,
                zorder=7,
            )
        right = step > 0.6 * facts.steps
        # At the panel's foot: its top carries the planted-return and switch labels.
        ax.annotate(
            f"{number}: {cause.title}",
            xy=(step, 0.0),
            xycoords=("data", "axes fraction"),
            xytext=(-4 if right else 4, 6 + 11 * (number - 1)),
            textcoords="offset points",
            ha="right" if right else "left",
            va="bottom",
            fontsize=8,
            fontweight="bold",
            color=FAIL_COLOUR,
            zorder=8,
            bbox={
                "boxstyle": "square,pad=0.1",
                "facecolor": "white",
                "alpha": 0.85,
                "linewidth": 0,
            },
        )


def _legend(per_column: bool, switched: bool, failed: bool, causes: bool) -> list[Line2D]:
    handles = [
        Line2D([], [], color="#444444", linewidth=1.8, label="rsp (byte index in the stack)")
    ]
    if not per_column:
        handles += [
            Line2D([], [], marker="v", color=CALL_COLOUR, linestyle="", label="call"),
            Line2D([], [], marker="^", color=RETURN_COLOUR, linestyle="", label="return"),
        ]
    handles.append(
        Line2D(
            [],
            [],
            marker="*",
            markersize=10,
            color=PLANTED_COLOUR,
            linestyle="",
            label="planted return",
        )
    )
    if switched:
        handles.append(Line2D([], [], color=SWITCH_COLOUR, linestyle="--", label="stack switch"))
    if failed:
        handles.append(
            Line2D([], [], marker="X", color=FAIL_COLOUR, linestyle="", label="ret of a bad slot")
        )
    if causes:
        handles.append(Line2D([], [], color=FAIL_COLOUR, label="cause (first step)"))
    return handles


def _size(size: int) -> str:
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


# Kind is re-exported for callers that classify steps the way the plot does.
__all__ = ["MAX_COLUMNS", "Kind", "rsp_figure", "rsp_png"]

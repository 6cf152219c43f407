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

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, MaxNLocator, MultipleLocator

from ..analysis.events import TraceFacts
from ..analysis.kinds import I64, Kind, Origin
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
    declutter,
    envelope,
    new_figure,
    plot_style,
    png_bytes,
    stack_colour,
    steps_per_column,
    text_box,
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
#: Causes marked (with a number) in the plot, the first ones by step.
MAX_CAUSE_MARKS = 6
#: Planted returns on one stack closer than this share of the trace share one number.
GROUP_GAP = 0.03
#: Zoomed ranges at most, and per row under the overview.
MAX_ZOOMS = 4
ZOOMS_PER_ROW = 3
#: Switches and causes closer than this share of the trace are one zoom.
CLUSTER_GAP = 0.05
#: A zoom reaches this many steps (or a tenth of its span) before and after its events.
ZOOM_PAD_STEPS = 12
#: A range covering more of the trace than this is not zoomed: the overview shows it.
MAX_ZOOM_SHARE = 0.5
#: Traces shorter than this are not zoomed: the overview is at step scale already.
MIN_ZOOM_STEPS = 200
#: Stacks drawn in one zoom at most (the ones first in the overview).
MAX_ZOOM_ROWS = 4
ZOOM_INCHES = 2.2
ZOOM_TITLE_INCHES = 0.5
ZOOM_TITLE_WRAP = 44
ZOOM_COLOUR = "#fff2b3"
#: Numbered notes listed under the figure at most, their font and wrap width.
MAX_NOTE_LINES = 20
LEGEND_FONT = 7.5
LEGEND_WRAP = 150
LEGEND_LINE_INCHES = 0.145


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
    ordinary = returns.step[~returns.planted]
    ordinary = ordinary[~np.isin(ordinary, failed)]
    planted_steps = returns.step[facts.planted_steps]
    planted_steps = planted_steps[~np.isin(planted_steps, failed)]
    per_column = not columns.exact or facts.calls.size + ordinary.size > MAX_MARKERS
    causes = causes[:MAX_CAUSE_MARKS]
    switches = facts.switch_steps()
    zooms = choose_zooms(facts, switches, causes, failed)
    notes = numbered_notes(facts, stacks, causes, failed)
    lines = _legend_lines(notes)

    heights = [(1.6 if zooms else 2.0)] * len(stacks) + ([1.1] if per_column else [])
    layout = _Layout(heights, zooms, lines)
    figure = new_figure(layout.height)
    grid = figure.add_gridspec(
        len(heights),
        1,
        height_ratios=heights,
        hspace=0.3,
        left=0.1,
        right=0.965,
        top=layout.frac(layout.overview_top),
        bottom=layout.frac(layout.overview_bottom),
    )
    axes: list[Axes] = []
    for row in range(len(heights)):
        axes.append(figure.add_subplot(grid[row], sharex=axes[0] if axes else None))

    for ax, stack in zip(axes, stacks, strict=False):
        k = facts.stacks.index(stack)
        _stack_panel(ax, facts, stack, k, columns, per_column, planted_steps)
        _failed_rets(ax, facts, k, failed)
    _cause_lines(axes, stacks, facts, causes)
    if switches.size <= MAX_SWITCH_LINES:
        for step in switches.tolist():
            for ax in axes:
                ax.axvline(step + 1, color=SWITCH_COLOUR, linestyle="--", linewidth=0.9, zorder=1)

    if per_column:
        _events_panel(axes[-1], facts, columns_for(n, EVENT_COLUMNS), ordinary, planted_steps)

    last = axes[-1]
    last.set_xlim(0, max(n, 1))
    last.set_xlabel("step")
    last.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=20 if n < 60 else 10))
    last.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)

    labels = _note_marks(axes, stacks, notes)
    labels += _zoom_spans(axes, zooms)
    if zooms:
        labels += _zoom_panels(figure, layout, facts, stacks, zooms, causes, failed, planted_steps)
    _legend_block(figure, layout, lines)

    per = steps_per_column(n, columns.count)
    scale = "" if columns.exact else f", one column per ~{per} steps"
    height = layout.height
    figure.suptitle(
        f"rsp over time: {facts.meta.scenario.name} ({n:,} steps{scale})",
        x=0.01,
        y=1 - 0.08 / height,
        ha="left",
        va="top",
    )
    figure.legend(
        handles=_legend(per_column, bool(switches.size), bool(failed.size), bool(causes)),
        loc="upper left",
        ncol=6,
        bbox_to_anchor=(0.01, 1 - 0.3 / height),
    )
    declutter(figure, labels)
    return figure


# --- what happens where: numbered notes, zooms, and labels that never overlap ------------


@dataclass(frozen=True)
class Note:
    """One numbered thing the figure points at: a cause, a failed ret, or a group of
    planted returns close together on one stack."""

    number: int
    step: int
    last_step: int
    #: Index into the drawn stacks of the panel it is marked in, and rsp's byte index there.
    panel: int
    y: float
    text: str
    cause: bool


@dataclass(frozen=True)
class Zoom:
    """A step range drawn enlarged under the overview: a cluster of switches or a cause."""

    letter: str
    start: int
    stop: int
    #: What happens there, for its title.
    what: str


def numbered_notes(
    facts: TraceFacts, stacks: Sequence[Region], causes: Sequence[Cause], failed: I64
) -> list[Note]:
    """Causes first (they are what the report is about), then failed rets that are not
    a cause's first step, then planted returns grouped per stack and nearby steps."""
    panel_of = {facts.stacks.index(s): i for i, s in enumerate(stacks)}
    notes: list[Note] = []

    def where(step: int) -> tuple[int, float]:
        at = min(step, facts.steps - 1)
        owner = int(facts.rsp_owner[at]) if facts.steps else -1
        if owner in panel_of:
            return panel_of[owner], float(int(facts.rsp[at]) - facts.stacks[owner].base)
        return 0, float("nan")

    for cause in causes:
        panel, y = where(cause.first_step)
        text = f"cause: {cause.title}" + (
            f" ({cause.count} times, steps {cause.first_step:,}-{cause.last_step:,})"
            if cause.count > 1
            else f" (step {cause.first_step:,})"
        )
        notes.append(Note(0, cause.first_step, cause.last_step, panel, y, text, True))
    cause_steps = {c.first_step for c in causes}
    for step in failed.tolist()[:MAX_PLANTED_LABELS]:
        if step in cause_steps:
            continue
        panel, y = where(step)
        text = f"step {step:,}: ret pops a slot no call or store wrote a return address to"
        notes.append(Note(0, step, step, panel, y, text, True))

    gap = max(facts.steps, 1) * GROUP_GAP
    groups: dict[int, list[list[PlantedReturn]]] = {}
    for p in facts.planted_returns:
        if p.ret_step in cause_steps or p.region is None:
            continue
        panel, _ = where(p.ret_step)
        runs = groups.setdefault(panel, [])
        if runs and p.ret_step - runs[-1][-1].ret_step <= gap:
            runs[-1].append(p)
        else:
            runs.append([p])
    planted_notes = []
    for panel, runs in groups.items():
        for run in runs:
            first = run[0]
            y = float(first.slot - facts.meta.region(first.region or "").base)
            planted_notes.append(
                Note(0, first.ret_step, run[-1].ret_step, panel, y, _planted_text(run), False)
            )
    switches = facts.switch_steps()
    if switches.size <= MAX_SWITCH_LABELS:
        names = {i: s.shown_name for i, s in enumerate(facts.stacks)}
        owner = facts.owners
        for step in switches.tolist():
            src = names.get(int(owner[step]), "outside")
            dst = names.get(int(owner[step + 1]), "outside")
            panel, y = where(step + 1)
            text = f"step {step:,}: switch {src} → {dst}"
            planted_notes.append(Note(0, step + 1, step + 1, panel, y, text, False))
    # A switch and the planted return that made it are one mark, not two on top of each other.
    merged: list[Note] = []
    for note in sorted(planted_notes, key=lambda note: note.step):
        last = merged[-1] if merged else None
        if last is not None and last.panel == note.panel and abs(last.step - note.step) <= 1:
            merged[-1] = replace(last, text=f"{last.text}; {note.text}")
        else:
            merged.append(note)
    notes += merged
    return [replace(note, number=i) for i, note in enumerate(notes, start=1)]


def _planted_text(run: list[PlantedReturn]) -> str:
    first = run[0]
    if len(run) == 1:
        text = f"step {first.ret_step:,}: ret pops {first.target} from {first.where}"
        if first.planted_step is None:
            text += " (planted before the trace began)"
        else:
            text += f" (planted at step {first.planted_step:,})"
        if first.landing == "entry":
            text += f", entered with rsp % 16 == {first.entry_rsp % 16}"
        return text
    targets = sorted({p.target for p in run})
    shown = ", ".join(targets[:3]) + (f" and {len(targets) - 3} more" if len(targets) > 3 else "")
    return (
        f"steps {first.ret_step:,}-{run[-1].ret_step:,}: {len(run)} planted returns on "
        f"{first.region}, to {shown}"
    )


def choose_zooms(
    facts: TraceFacts, switches: I64, causes: Sequence[Cause], failed: I64
) -> list[Zoom]:
    """Step ranges around each cluster of switches and each cause, at most `MAX_ZOOMS`.

    Anchors closer than `CLUSTER_GAP` of the trace are one cluster; while there are
    too many clusters the two closest merge. A cluster that spans most of the trace
    is not a zoom: the overview already shows it at that scale."""
    n = facts.steps
    anchors = sorted(
        {int(s) for s in switches.tolist()}
        | {c.first_step for c in causes}
        | {int(s) for s in failed.tolist()}
        | set(_deepest_overflows(facts))
    )
    if n < MIN_ZOOM_STEPS or not anchors:
        return []
    gap = n * CLUSTER_GAP
    clusters: list[list[int]] = []
    for step in anchors:
        if clusters and step - clusters[-1][-1] <= gap:
            clusters[-1].append(step)
        else:
            clusters.append([step])
    while len(clusters) > MAX_ZOOMS:
        k = min(range(len(clusters) - 1), key=lambda i: clusters[i + 1][0] - clusters[i][-1])
        clusters[k : k + 2] = [clusters[k] + clusters[k + 1]]
    zooms: list[Zoom] = []
    for cluster in clusters:
        span = cluster[-1] - cluster[0]
        pad = max(ZOOM_PAD_STEPS, span // 10)
        start, stop = max(cluster[0] - pad, 0), min(cluster[-1] + pad + 1, n)
        if stop - start > n * MAX_ZOOM_SHARE:
            continue
        what = _zoom_what(facts, switches, causes, failed, start, stop)
        zooms.append(Zoom(chr(ord("A") + len(zooms)), start, stop, what))
    return zooms


def _deepest_overflows(facts: TraceFacts) -> list[int]:
    """For each stack rsp left through its base, the step where it was deepest below it:
    an overflow's extent is what a zoom on it should reach."""
    out = []
    below = np.flatnonzero((facts.rsp_owner >= 0) & (facts.rsp_stack < 0))
    for k in np.unique(facts.rsp_owner[below]).tolist():
        mine = below[facts.rsp_owner[below] == k]
        out.append(int(mine[np.argmin(facts.rsp[mine])]))
    return out


def _zoom_what(
    facts: TraceFacts, switches: I64, causes: Sequence[Cause], failed: I64, start: int, stop: int
) -> str:
    names = {i: s.shown_name for i, s in enumerate(facts.stacks)}
    owner = facts.owners
    here = switches[(switches >= start) & (switches < stop)].tolist()
    parts = []
    if here:
        pairs: dict[tuple[str, str], int] = {}
        for step in here:
            pair = (
                names.get(int(owner[step]), "outside"),
                names.get(int(owner[step + 1]), "outside"),
            )
            pairs[pair] = pairs.get(pair, 0) + 1
        listed = [f"{a} → {b}" + (f" x{c}" if c > 1 else "") for (a, b), c in pairs.items()]
        more = f", +{len(listed) - 3} more" if len(listed) > 3 else ""
        s = "es" if len(here) > 1 else ""
        parts.append(f"{len(here)} switch{s}: " + ", ".join(listed[:3]) + more)
    for number, cause in enumerate(causes, start=1):
        if start <= cause.first_step < stop:
            parts.append(f"cause {number}: {cause.title}")
    for step in _deepest_overflows(facts):
        if start <= step < stop:
            stack = facts.stacks[int(facts.rsp_owner[step])]
            depth = stack.base - int(facts.rsp[step])
            parts.append(f"rsp {depth:,} bytes below {stack.shown_name}'s base at step {step:,}")
    bad = [s for s in failed.tolist() if start <= s < stop]
    if bad and not any(start <= c.first_step < stop for c in causes):
        parts.append(f"{len(bad)} ret(s) of a bad slot")
    return "; ".join(parts)


class _Layout:
    """Where each block of the figure goes, in inches from the top."""

    def __init__(self, heights: list[float], zooms: list[Zoom], lines: list[str]) -> None:
        self.overview_top = 0.85
        self.overview_bottom = self.overview_top + sum(heights) * 1.05
        rows = -(-len(zooms) // ZOOMS_PER_ROW)
        self.zoom_rows: list[tuple[float, float]] = []
        y = self.overview_bottom + 0.5
        for _ in range(rows):
            top = y + ZOOM_TITLE_INCHES
            self.zoom_rows.append((top, top + ZOOM_INCHES))
            y = top + ZOOM_INCHES + 0.45
        self.legend_top = y + 0.1
        self.height = self.legend_top + LEGEND_LINE_INCHES * len(lines) + 0.15

    def frac(self, inches: float) -> float:
        """A distance from the top, in inches, as a figure fraction from the bottom."""
        return 1 - inches / self.height


def _legend_lines(notes: list[Note]) -> list[str]:
    lines = []
    for note in notes[:MAX_NOTE_LINES]:
        for k, part in enumerate(textwrap.wrap(note.text, LEGEND_WRAP) or [""]):
            lines.append(f"{note.number:>2}  {part}" if k == 0 else f"     {part}")
    if len(notes) > MAX_NOTE_LINES:
        lines.append(
            f"     ... and {len(notes) - MAX_NOTE_LINES} more (the report's tables list them)"
        )
    return lines


def _legend_block(figure: Figure, layout: _Layout, lines: list[str]) -> None:
    if not lines:
        return
    figure.text(
        0.01,
        layout.frac(layout.legend_top),
        "\n".join(lines),
        ha="left",
        va="top",
        fontsize=LEGEND_FONT,
        family="DejaVu Sans Mono",
        linespacing=1.25,
    )


def _note_marks(axes: list[Axes], stacks: Sequence[Region], notes: list[Note]) -> list[Text]:
    """A small numbered box at each note, the text itself in the legend under the figure."""
    out: list[Text] = []
    for note in notes[:MAX_NOTE_LINES]:  # only those the legend lists
        if note.panel >= len(stacks):
            continue
        ax = axes[note.panel]
        colour = FAIL_COLOUR if note.cause else PLANTED_COLOUR
        if np.isnan(note.y):  # rsp outside every drawn stack: mark at the panel's foot
            xy: tuple[float, float] = (note.step, 0.05)
            coords: tuple[str, str] | str = ("data", "axes fraction")
        else:
            xy, coords = (note.step, note.y), "data"
        out.append(
            ax.annotate(
                str(note.number),
                xy=xy,
                xycoords=coords,
                xytext=(0, 9),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7.5,
                fontweight="bold",
                color="white",
                zorder=9,
                bbox={"boxstyle": "round,pad=0.2", "facecolor": colour, "linewidth": 0},
            )
        )
    return out


def _zoom_spans(axes: list[Axes], zooms: list[Zoom]) -> list[Text]:
    """Shade each zoomed range in the overview and letter it at the top."""
    out: list[Text] = []
    for zoom in zooms:
        for ax in axes:
            ax.axvspan(zoom.start, zoom.stop, color=ZOOM_COLOUR, alpha=0.35, linewidth=0, zorder=0)
        out.append(
            axes[0].annotate(
                zoom.letter,
                xy=((zoom.start + zoom.stop) / 2, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=9,
                fontweight="bold",
                color="#555555",
            )
        )
    return out


def _zoom_panels(
    figure: Figure,
    layout: _Layout,
    facts: TraceFacts,
    stacks: Sequence[Region],
    zooms: list[Zoom],
    causes: Sequence[Cause],
    failed: I64,
    planted_steps: I64,
) -> list[Text]:
    """Each zoom: one small panel per stack rsp visited in its range, y cropped to the
    bytes rsp covered there, with the switches, planted returns and causes."""
    texts: list[Text] = []
    per_row = min(len(zooms), ZOOMS_PER_ROW)
    wrap = ZOOM_TITLE_WRAP * ZOOMS_PER_ROW // per_row
    for row, (top, bottom) in enumerate(layout.zoom_rows):
        row_zooms = zooms[row * ZOOMS_PER_ROW : (row + 1) * ZOOMS_PER_ROW]
        outer = figure.add_gridspec(
            1,
            per_row,
            left=0.1,
            right=0.965,
            top=layout.frac(top),
            bottom=layout.frac(bottom),
            wspace=0.35,
        )
        for col, zoom in enumerate(row_zooms):
            owners = facts.rsp_owner[zoom.start : zoom.stop]
            here = [s for s in stacks if np.any(owners == facts.stacks.index(s))][:MAX_ZOOM_ROWS]
            if not here:
                here = list(stacks[:1])
            inner = outer[0, col].subgridspec(len(here), 1, hspace=0.15)
            axes: list[Axes] = []
            for r, stack in enumerate(here):
                ax = figure.add_subplot(inner[r], sharex=axes[0] if axes else None)
                axes.append(ax)
                _zoom_stack(ax, facts, stack, zoom, failed, planted_steps)
            for step in facts.switch_steps().tolist():
                if zoom.start <= step < zoom.stop:
                    for ax in axes:
                        ax.axvline(
                            step + 1, color=SWITCH_COLOUR, linestyle="--", linewidth=0.7, zorder=1
                        )
            for cause in causes:
                if zoom.start <= cause.first_step < zoom.stop:
                    for ax in axes:
                        ax.axvline(cause.first_step, color=FAIL_COLOUR, linewidth=1.2, zorder=6)
            axes[-1].set_xlim(zoom.start, zoom.stop)
            axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
            axes[-1].xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
            for ax in axes[:-1]:
                ax.tick_params(labelbottom=False)
            title = f"{zoom.letter}: steps {zoom.start:,}-{zoom.stop - 1:,}. {zoom.what}"
            wrapped = textwrap.wrap(title, wrap)
            if len(wrapped) > 3:
                wrapped = [*wrapped[:2], textwrap.shorten(" ".join(wrapped[2:]), wrap)]
            texts.append(axes[0].set_title("\n".join(wrapped), loc="left", fontsize=8))
    return texts


def _zoom_stack(
    ax: Axes, facts: TraceFacts, stack: Region, zoom: Zoom, failed: I64, planted_steps: I64
) -> None:
    k = facts.stacks.index(stack)
    colour = stack_colour(k)
    steps = np.arange(zoom.start, zoom.stop, dtype=np.int64)
    y = facts.rsp[zoom.start : zoom.stop].astype(np.float64) - float(stack.base)
    y[facts.rsp_owner[zoom.start : zoom.stop] != k] = np.nan
    ax.step(steps, y, where="post", color=colour, linewidth=1.4, zorder=3)
    for marks, marker, c, size in (
        (planted_steps, "*", PLANTED_COLOUR, 90),
        (failed, "X", FAIL_COLOUR, 70),
    ):
        at = marks[(marks >= zoom.start) & (marks < zoom.stop)]
        at = at[facts.rsp_owner[at] == k]
        ax.scatter(
            at,
            facts.rsp[at].astype(np.float64) - float(stack.base),
            marker=marker,
            s=size,
            color=c,
            zorder=5,
            linewidths=0,
        )
    shown = y[~np.isnan(y)]
    low, high = (float(shown.min()), float(shown.max())) if shown.size else (0.0, 8.0)
    pad = max((high - low) * 0.15, 8.0)
    ax.set_ylim(low - pad, high + pad)
    if low < 0:
        ax.axhspan(low - pad, 0, color=OVERFLOW_COLOUR, alpha=0.12, linewidth=0, zorder=0)
        ax.axhline(0, color="#999999", linestyle=":", linewidth=0.9, zorder=1)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
    ax.set_ylabel(stack.shown_name, color=colour, fontsize=7)
    ax.tick_params(labelsize=7)
    ax.grid(axis="y", color="#eeeeee", linewidth=0.6)


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
            (facts.returns.step[~facts.returns.planted], "^", RETURN_COLOUR),
        ):
            here = inside(steps)
            ax.scatter(here, index(here), marker=marker, s=36, color=c, zorder=4, linewidths=0)

    here = inside(planted_steps)
    ax.scatter(here, index(here), marker="*", s=150, color=PLANTED_COLOUR, zorder=5, linewidths=0)

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
    ax.set_ylabel(f"{stack.shown_name} ({_size(stack.size)})\nbyte index", color=colour)
    ax.grid(axis="y", color="#eeeeee", linewidth=0.6)


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


def _failed_rets(ax: Axes, facts: TraceFacts, k: int, failed: I64) -> None:
    """A ret that pops an unwritten slot or data: a failure, not an ordinary return."""
    here = failed[facts.rsp_owner[failed] == k]
    if here.size:
        y = facts.rsp[here].astype(np.float64) - float(facts.stacks[k].base)
        ax.scatter(here, y, marker="X", s=110, color=FAIL_COLOUR, zorder=7, linewidths=0)


def _cause_lines(
    axes: list[Axes], stacks: Sequence[Region], facts: TraceFacts, causes: Sequence[Cause]
) -> None:
    """A red line at each cause's first step across every panel, and a red ring where
    rsp was; the cause's number and text are the note's."""
    for cause in causes:
        step = cause.first_step
        for ax in axes:
            ax.axvline(step, color=FAIL_COLOUR, linewidth=1.2, alpha=0.7, zorder=6)
        owner = int(facts.rsp_owner[step]) if step < facts.steps else facts.final_owner
        for i, stack in enumerate(stacks):
            if owner >= 0 and facts.stacks[owner] == stack:
                y = float(int(facts.rsp[min(step, facts.steps - 1)]) - stack.base)
                axes[i].scatter(
                    [step],
                    [y],
                    s=160,
                    facecolors="none",
                    edgecolors=FAIL_COLOUR,
                    linewidths=1.8,
                    zorder=7,
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
__all__ = ["MAX_COLUMNS", "Kind", "rsp_figure", "rsp_png", "text_box"]

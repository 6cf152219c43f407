"""`switches.png`: which stack ran when, for programs with many stacks or switches.

One lane per stack rsp visited, a bar wherever rsp was in that stack, every
switch an arrow from the lane it left to the lane it entered, and each cause
the check found a red line with its number (the same numbers as the report's
list of causes). With the from→to table (`switch_pairs`) it answers at a
glance what rsp.png spreads over one panel per stack: who switched to whom,
how often, and where it went wrong. Long traces are drawn per column like
rsp.png; past `MAX_ARROWS` switches only the first ones get arrows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

from ..analysis.events import TraceFacts
from ..analysis.model import Cause
from .figures import (
    FAIL_COLOUR,
    SWITCH_COLOUR,
    columns_for,
    envelope,
    new_figure,
    plot_style,
    png_bytes,
    stack_colour,
)

#: More stacks than this, or more switches than `MANY_SWITCHES`, and the report leads
#: with the switch picture.
FEW_STACKS = 2
MANY_SWITCHES = 5
#: Switches drawn as arrows at most (the bars show the rest).
MAX_ARROWS = 80
MAX_COLUMNS = 1000
LANE_INCHES = 0.45
#: From→to pairs the Markdown table lists before it says how many it left out.
MAX_PAIRS_MARKDOWN = 12
OUTSIDE = "outside the stacks"


@dataclass(frozen=True)
class SwitchPair:
    """All switches from one stack to another: how many, the first and the last."""

    source: str
    target: str
    count: int
    first_step: int
    last_step: int


def wanted(facts: TraceFacts) -> bool:
    """Whether the report leads with the switch picture: more than two stacks used,
    or more than a handful of switches."""
    return len(facts.stacks_used()) > FEW_STACKS or int(facts.switch_steps().size) > MANY_SWITCHES


def switch_pairs(facts: TraceFacts) -> list[SwitchPair]:
    """The from→to table, most frequent first (ties: the earliest first)."""
    steps = facts.switch_steps()
    if not steps.size:
        return []
    owner = facts.owners
    src = owner[steps].astype(np.int64)
    dst = owner[steps + 1].astype(np.int64)
    names = {i: s.shown_name for i, s in enumerate(facts.stacks)}
    pairs: dict[tuple[int, int], list[int]] = {}
    # One pass over distinct pairs (a runtime may switch a million times between few stacks).
    keys = (src + 1) * (len(facts.stacks) + 2) + (dst + 1)
    for key in np.unique(keys).tolist():
        at = steps[keys == key]
        a, b = divmod(int(key), len(facts.stacks) + 2)
        pairs[(a - 1, b - 1)] = [int(at.size), int(at[0]), int(at[-1])]
    out = [
        SwitchPair(names.get(a, OUTSIDE), names.get(b, OUTSIDE), n, first, last)
        for (a, b), (n, first, last) in pairs.items()
    ]
    return sorted(out, key=lambda p: (-p.count, p.first_step))


def switches_png(facts: TraceFacts, causes: Sequence[Cause] = ()) -> bytes:
    with plot_style():
        return png_bytes(switches_figure(facts, causes))


def switches_figure(facts: TraceFacts, causes: Sequence[Cause] = ()) -> Figure:
    stacks = list(facts.stacks_used() or facts.stacks)
    lanes = {facts.stacks.index(s): i for i, s in enumerate(stacks)}
    n = facts.steps
    columns = columns_for(n, MAX_COLUMNS)
    height = 1.5 + LANE_INCHES * len(stacks)
    figure = new_figure(height)
    ax = figure.add_subplot(1, 1, 1)
    figure.subplots_adjust(left=0.12, right=0.965, top=1 - 0.75 / height, bottom=0.5 / height)

    edges = np.append(columns.starts, n).astype(np.int64)
    for k, lane in lanes.items():
        low, _ = envelope(facts.rsp, facts.rsp_owner, k, 0, columns)
        visited = ~np.isnan(low)
        # Runs of columns where rsp was in this stack, as (start, width) bars.
        change = np.flatnonzero(np.diff(np.concatenate([[0], visited.astype(np.int8), [0]])))
        bars = [
            (float(edges[a]), float(edges[b] - edges[a]))
            for a, b in zip(change[::2], change[1::2], strict=True)
        ]
        ax.broken_barh(bars, (lane - 0.3, 0.6), color=stack_colour(k), alpha=0.8, linewidth=0)

    steps = facts.switch_steps()
    owner = facts.owners
    for step in steps[:MAX_ARROWS].tolist():
        a, b = lanes.get(int(owner[step])), lanes.get(int(owner[step + 1]))
        if a is None or b is None:
            continue
        x = step + 1
        ax.annotate(
            "",
            xy=(x, b + (-0.3 if b > a else 0.3)),
            xytext=(x, a + (0.3 if b > a else -0.3)),
            arrowprops={"arrowstyle": "-|>", "color": SWITCH_COLOUR, "linewidth": 0.9},
            zorder=4,
        )
    for number, cause in enumerate(causes, start=1):
        ax.axvline(cause.first_step, color=FAIL_COLOUR, linewidth=1.4, zorder=5)
        cause_lane = lanes.get(int(owner[min(cause.first_step, n)]))
        if cause_lane is not None:
            ax.scatter([cause.first_step], [cause_lane], s=60, color=FAIL_COLOUR, zorder=6)
        ax.annotate(
            str(number),
            xy=(cause.first_step, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
            fontweight="bold",
            color="white",
            bbox={"boxstyle": "round,pad=0.2", "facecolor": FAIL_COLOUR, "linewidth": 0},
        )

    ax.set_yticks(range(len(stacks)), [s.shown_name for s in stacks])
    for label, stack in zip(ax.get_yticklabels(), stacks, strict=True):
        label.set_color(stack_colour(facts.stacks.index(stack)))
    ax.set_ylim(len(stacks) - 0.5, -0.5)  # the first stack at the top, as in rsp.png
    ax.set_xlim(0, max(n, 1))
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.spines["left"].set_visible(False)
    ax.tick_params(axis="y", length=0)
    arrows = f", the first {MAX_ARROWS} as arrows" if steps.size > MAX_ARROWS else ", each an arrow"
    figure.suptitle(
        f"which stack ran when: {facts.meta.scenario.name} ({len(stacks)} stacks, "
        f"{steps.size:,} switches{arrows if steps.size else ''})",
        x=0.01,
        y=1 - 0.08 / height,
        ha="left",
        va="top",
    )
    handles = [
        Line2D([], [], color="#777777", linewidth=6, label="rsp in this stack"),
        Line2D([], [], color=SWITCH_COLOUR, marker=">", label="switch (from → to)"),
    ]
    if causes:
        handles.append(Line2D([], [], color=FAIL_COLOUR, label="cause (its number in the report)"))
    figure.legend(
        handles=handles, loc="upper left", ncol=3, bbox_to_anchor=(0.01, 1 - 0.3 / height)
    )
    return figure

"""Deterministic matplotlib figures, and the step-to-column binning both plots share.

The same trace must give byte-identical PNGs on every run, so the plots can be
golden files: figures are made with the Agg canvas directly (no pyplot, no
global backend), under matplotlib's default style plus fixed overrides (so a
user's matplotlibrc changes nothing), at a fixed size and dpi, and saved
without the "Software" PNG text chunk that carries matplotlib's version.

Long traces are drawn per pixel column, not per step: `Columns` cuts the steps
into at most `max_columns` contiguous bins and `envelope` gives the min and
max of a series within each bin, so a million steps draw a few thousand
vertices, not a million.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import matplotlib
import matplotlib.style
import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox

from ..analysis.memory import StepRsp

DPI = 100
WIDTH_INCHES = 11.0
#: Overrides of matplotlib's defaults, fixed so that output does not depend on the host.
STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "path.simplify": True,
    "agg.path.chunksize": 0,
}
#: One colour per stack region, in the order the regions are declared.
STACK_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#7f7f7f", "#bcbd22")
CALL_COLOUR = "#1f77b4"
RETURN_COLOUR = "#2ca02c"
PLANTED_COLOUR = "#d62728"
SWITCH_COLOUR = "#555555"
OVERFLOW_COLOUR = "#d62728"
#: What failed: the step of each cause, and a ret that pops an unwritten or wrong slot.
FAIL_COLOUR = "#b00000"

#: Tries to move a label clear of the others before it is hidden.
MAX_NUDGES = 6

#: Steps per block where a whole-trace series would need large float temporaries.
BLOCK_STEPS = 1 << 20

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]


@contextmanager
def plot_style() -> Iterator[None]:
    """matplotlib's defaults plus `STYLE`, whatever the user's matplotlibrc says."""
    with matplotlib.style.context("default"), matplotlib.rc_context(cast(Any, STYLE)):
        yield


def new_figure(height_inches: float) -> Figure:
    figure = Figure(figsize=(WIDTH_INCHES, height_inches), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def stack_colour(index: int) -> str:
    return STACK_COLOURS[index % len(STACK_COLOURS)]


@dataclass(frozen=True)
class Columns:
    """How steps map to plot columns: one per step (`exact`), or contiguous bins."""

    steps: int
    #: The first step of each column; column `i` covers `starts[i] ..< starts[i + 1]`.
    starts: I64

    @property
    def count(self) -> int:
        return int(self.starts.size)

    @property
    def exact(self) -> bool:
        return self.count == self.steps

    @property
    def first(self) -> int:
        """The first step shown: 0, or where a zoom starts (`columns_between`)."""
        return int(self.starts[0]) if self.count else 0

    @property
    def stops(self) -> I64:
        return np.append(self.starts[1:], self.steps)

    def column_of(self, steps: I64 | npt.NDArray[np.int32]) -> I64:
        return np.searchsorted(self.starts, steps, side="right").astype(np.int64) - 1


def columns_between(first: int, stop: int, max_columns: int) -> Columns:
    """Columns over steps `first ..< stop` only (a zoom): one per step when they fit.
    `steps` is `stop`, so `stops` ends there; such columns are never `exact`
    unless `first` is 0."""
    span = stop - first
    if span <= max_columns:
        return Columns(stop, np.arange(first, stop, dtype=np.int64))
    starts = first + (np.arange(max_columns, dtype=np.int64) * span) // max_columns
    return Columns(stop, np.unique(starts))


def columns_for(steps: int, max_columns: int) -> Columns:
    if steps <= max_columns:
        return Columns(steps, np.arange(steps, dtype=np.int64))
    starts = (np.arange(max_columns, dtype=np.int64) * steps) // max_columns
    return Columns(steps, np.unique(starts))


def envelope(
    values: npt.NDArray[np.uint64] | StepRsp,
    owner: npt.NDArray[np.int16],
    k: int,
    offset: int,
    columns: Columns,
) -> tuple[F64, F64]:
    """Per column, the min and max of `values - offset` over the steps where `owner == k`
    (rsp within stack k, as a byte index); NaN where there are none. One value per step
    when the columns are exact. Long traces are done in blocks of about `BLOCK_STEPS`
    steps, so the float temporaries stay small."""
    if columns.exact:
        # Exact columns start at step 0 but may stop before the trace's end (a zoom
        # on the first steps): one value per column, not per step of the trace.
        shown = values[: columns.steps].astype(np.float64) - float(offset)
        shown[owner[: columns.steps] != k] = np.nan
        return shown, shown
    low = np.full(columns.count, np.nan)
    high = np.full(columns.count, np.nan)
    stops = columns.stops
    per_block = max(1, BLOCK_STEPS * columns.count // max(columns.steps, 1))
    for c0 in range(0, columns.count, per_block):
        c1 = min(c0 + per_block, columns.count)
        s0, s1 = int(columns.starts[c0]), int(stops[c1 - 1])
        block = values[s0:s1].astype(np.float64) - float(offset)
        inside = owner[s0:s1] == k
        at = columns.starts[c0:c1] - s0
        low[c0:c1] = np.minimum.reduceat(np.where(inside, block, np.inf), at)
        high[c0:c1] = np.maximum.reduceat(np.where(inside, block, -np.inf), at)
    low[~np.isfinite(low)] = np.nan
    high[~np.isfinite(high)] = np.nan
    return low, high


def steps_per_column(steps: int, columns: int) -> str:
    """ "1.7" or "1,000": how many steps one column stands for, for titles."""
    per = steps / max(columns, 1)
    return f"{per:.1f}" if per < 10 else f"{per:,.0f}"


def counts(steps: I64, columns: Columns) -> I64:
    """How many of `steps` fall in each column."""
    return np.bincount(columns.column_of(steps), minlength=columns.count).astype(np.int64)


def text_box(text: Text, renderer: Any) -> Bbox:
    """The pixels a text covers, its box (the coloured patch behind it) included."""
    box = text.get_window_extent(renderer)
    patch = text.get_bbox_patch()
    if patch is None:
        return box
    text.update_bbox_position_size(renderer)
    return Bbox.union([box, patch.get_window_extent(renderer)])


def declutter(figure: Figure, labels: Sequence[Text]) -> None:
    """Move each annotation in `labels` up until its box overlaps no other text of the
    figure; one that cannot be placed within `MAX_NUDGES` moves is hidden (the numbered
    legend still lists it). Other texts in `labels` (titles) stay where they are."""
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    movable = [t for t in labels if isinstance(t, Annotation)]
    moving = {id(t) for t in movable}
    placed = [
        text_box(t, renderer)
        for t in figure.findobj(Text)
        if isinstance(t, Text) and t.get_visible() and t.get_text() and id(t) not in moving
    ]
    for label in movable:
        box = text_box(label, renderer)
        for _ in range(MAX_NUDGES):
            if not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
            dx, dy = label.xyann
            label.xyann = (dx, dy + box.height * 72 / figure.dpi + 1)
            box = text_box(label, renderer)
        else:
            label.set_visible(False)

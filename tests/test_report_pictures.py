"""The report's pictures on real programs: zooms, numbered labels that never overlap.

The three-coroutine program (tests/report_programs/three_coroutines.c, glibc's
makecontext/swapcontext) is built with gcc -static -g and recorded from main:
it plants 18 returns on four stacks, the case where the labels used to be
printed over each other.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from stacktrace_lab.analysis import check, derive_facts
from stacktrace_lab.analysis.events import TraceFacts
from stacktrace_lab.analysis.model import Cause
from stacktrace_lab.record.elf_front import record_elf
from stacktrace_lab.report import rsp_plot
from stacktrace_lab.report.figures import plot_style
from stacktrace_lab.trace.reader import load_trace

PROGRAMS = Path(__file__).parent / "report_programs"
COROUTINES = PROGRAMS / "three_coroutines.c"


@pytest.fixture(scope="module")
def coroutines_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: the three-coroutine program cannot be built")
    out = tmp_path_factory.mktemp("coroutines")
    program = out / "three_coroutines"
    build = subprocess.run(
        [
            "gcc",
            "-static",
            "-g",
            "-O1",
            "-fno-toplevel-reorder",
            "-o",
            str(program),
            COROUTINES.name,
        ],
        cwd=PROGRAMS,
        capture_output=True,
        text=True,
        check=False,
    )
    if build.returncode != 0:
        pytest.skip(f"gcc -static could not build the program (no static libc?): {build.stderr}")
    trace = out / "three_coroutines.parquet"
    record_elf(program, trace, from_symbol="main", name="three-coroutines")
    return trace


def analysed(path: Path) -> tuple[TraceFacts, tuple[Cause, ...]]:
    trace = load_trace(path)
    facts = derive_facts(trace)
    return facts, tuple(check(trace, facts).causes)


def drawn_texts(figure: Figure) -> list[tuple[str, Bbox]]:
    """Every text the canvas draws, with its box in pixels (the patch behind it
    included): tick labels only for the ticks inside their axis's view (matplotlib
    keeps the others but does not draw them)."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    shown: set[int] = set()
    for ax in figure.axes:
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            low, high = min(lo, hi), max(lo, hi)
            for tick in axis.get_major_ticks():
                if low - 1e-9 <= tick.get_loc() <= high + 1e-9:
                    shown.add(id(tick.label1))
    ticks = {
        id(t.label1)
        for ax in figure.axes
        for a in (ax.xaxis, ax.yaxis)
        for t in a.get_major_ticks()
    }
    out = []
    for text in figure.findobj(Text):
        assert isinstance(text, Text)
        if not text.get_visible() or not text.get_text().strip():
            continue
        if id(text) in ticks and id(text) not in shown:
            continue
        out.append((text.get_text(), rsp_plot.text_box(text, renderer)))
    return out


def overlaps(figure: Figure) -> list[str]:
    texts = drawn_texts(figure)
    found = []
    for i, (a, box_a) in enumerate(texts):
        for b, box_b in texts[i + 1 :]:
            if box_a.overlaps(box_b) and box_a.intersection(box_a, box_b) is not None:
                inter = Bbox.intersection(box_a, box_b)
                if inter is not None and inter.width > 0.5 and inter.height > 0.5:
                    found.append(f"{a!r} overlaps {b!r}")
    return found


def test_no_label_of_the_coroutine_rsp_plot_overlaps_another(coroutines_trace: Path) -> None:
    facts, causes = analysed(coroutines_trace)
    assert facts.planted_steps.size >= 9  # the case the labels used to collide in
    with plot_style():
        figure = rsp_plot.rsp_figure(facts, causes)
        texts = [t for t, _ in drawn_texts(figure)]
        assert overlaps(figure) == []
    # Every planted return is numbered in the figure or listed in its legend.
    notes = rsp_plot.numbered_notes(
        facts, facts.stacks_used(), causes, rsp_plot.failed_returns(facts)
    )
    assert len(notes) >= 9
    legend = next(t for t in texts if t.lstrip().startswith("1 "))
    for note in notes[: rsp_plot.MAX_NOTE_LINES]:
        assert f"{note.number:>2}  " in legend


def test_the_coroutine_plot_zooms_on_the_switches_and_on_the_cause(coroutines_trace: Path) -> None:
    facts, causes = analysed(coroutines_trace)
    switches = facts.switch_steps()
    zooms = rsp_plot.choose_zooms(facts, switches, causes, rsp_plot.failed_returns(facts))
    assert 1 <= len(zooms) <= rsp_plot.MAX_ZOOMS
    # Every switch falls in a zoom, and each zoom is a small part of the trace.
    for step in switches.tolist():
        assert any(z.start <= step < z.stop for z in zooms), step
    for zoom in zooms:
        assert zoom.stop - zoom.start <= facts.steps * rsp_plot.MAX_ZOOM_SHARE
        assert zoom.what
    assert any("switches" in z.what for z in zooms)
    for cause in causes:
        assert any(z.start <= cause.first_step < z.stop for z in zooms)
    with plot_style():
        figure = rsp_plot.rsp_figure(facts, causes)
    titles = [ax.get_title(loc="left") for ax in figure.axes]
    for zoom in zooms:
        assert any(t.startswith(f"{zoom.letter}: steps {zoom.start:,}-") for t in titles)


def test_the_overlap_check_catches_overlapping_labels(first_switch_trace: Path) -> None:
    """The measure itself: two labels drawn at one place are reported."""
    facts, causes = analysed(first_switch_trace)
    with plot_style():
        figure = rsp_plot.rsp_figure(facts, causes)
        ax = figure.axes[0]
        ax.text(0.5, 0.5, "one label", transform=ax.transAxes)
        ax.text(0.5, 0.5, "another label", transform=ax.transAxes)
        assert "'one label' overlaps 'another label'" in overlaps(figure)


def test_no_label_of_the_first_switch_plot_overlaps_another(first_switch_trace: Path) -> None:
    facts, causes = analysed(first_switch_trace)
    with plot_style():
        assert overlaps(rsp_plot.rsp_figure(facts, causes)) == []
    # A short trace: the overview is at step scale, nothing to zoom.
    assert (
        rsp_plot.choose_zooms(facts, facts.switch_steps(), causes, rsp_plot.failed_returns(facts))
        == []
    )

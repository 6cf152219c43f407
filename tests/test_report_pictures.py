"""The report's pictures on real programs: zooms, numbered labels that never overlap.

The three-coroutine program (tests/report_programs/three_coroutines.c, glibc's
makecontext/swapcontext) is built with gcc -static -g and recorded from main:
it plants 18 returns on four stacks, the case where the labels used to be
printed over each other.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from stacktrace_lab.analysis import check, derive_facts
from stacktrace_lab.analysis.events import TraceFacts
from stacktrace_lab.analysis.model import Cause
from stacktrace_lab.record.linux.elf_front import record_elf
from stacktrace_lab.report import heatmap, rsp_plot, switch_picture
from stacktrace_lab.report.build import build_report
from stacktrace_lab.report.content import FOLD_ROWS
from stacktrace_lab.report.figures import plot_style
from stacktrace_lab.report.program import program_header
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


@pytest.fixture(scope="module")
def coroutines_report(coroutines_trace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("coroutines-report") / "report"
    build_report(load_trace(coroutines_trace), out)
    return out


def test_the_coroutine_report_leads_with_the_switch_picture(coroutines_report: Path) -> None:
    png = (coroutines_report / "switches.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    page = (coroutines_report / "index.html").read_text()
    sections = re.findall(r'<section id="([a-z]+)">', page)
    assert sections[0] == "switches"
    markdown = (coroutines_report / "report.md").read_text()
    headings = re.findall(r"^## (.+)$", markdown, flags=re.M)
    assert headings[0] == "Which stack ran when"
    # Three coroutines resumed three times each from the process stack: 9 switches each way.
    assert "18 switches between 6 pairs of stacks." in markdown
    for stack in ("stack_a", "stack_b", "stack_c"):
        assert re.search(rf"^\| stack \| {stack} \| 3 \| \d+ \| \d+ \|$", markdown, flags=re.M)
        assert re.search(rf"^\| {stack} \| stack \| 3 \| \d+ \| \d+ \|$", markdown, flags=re.M)


def test_the_switch_table_counts_each_direction(coroutines_trace: Path) -> None:
    facts, causes = analysed(coroutines_trace)
    pairs = switch_picture.switch_pairs(facts)
    assert sum(p.count for p in pairs) == facts.switch_steps().size == 18
    assert all(p.first_step <= p.last_step for p in pairs)
    assert switch_picture.wanted(facts)
    with plot_style():
        figure = switch_picture.switches_figure(facts, causes)
        assert overlaps(figure) == []
    lanes = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert sorted(lanes) == ["stack", "stack_a", "stack_b", "stack_c"]


def test_the_header_names_the_binary_its_build_and_the_recorded_range(
    coroutines_report: Path,
) -> None:
    markdown = (coroutines_report / "report.md").read_text()
    assert "- program: `three_coroutines`" in markdown
    built = next(line for line in markdown.splitlines() if line.startswith("- built: "))
    assert "GNU C" in built and "-O1" in built and built.endswith(", static")
    assert re.search(r"- recorded: from main \([\d,]+ start-up steps ran unrecorded\)", markdown)
    assert "- entry:" not in markdown  # "entry main (att syntax)" is for scenarios
    page = (coroutines_report / "index.html").read_text()
    assert "<dt>built</dt>" in page and "att syntax" not in page


def test_long_tables_fold_in_html_and_are_cut_in_markdown(
    coroutines_report: Path, coroutines_trace: Path
) -> None:
    markdown = (coroutines_report / "report.md").read_text()
    planted = markdown.split("## Planted returns", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in planted.splitlines() if re.match(r"^\| \d+ ", line)]
    assert len(rows) == FOLD_ROWS
    assert re.search(r"\| \.\.\. and \d+ more \(index\.html lists them\) \|", planted)
    page = (coroutines_report / "index.html").read_text()
    section = page.split('<section id="planted">', 1)[1].split("</section>", 1)[0]
    assert re.search(r"<details><summary>\d+ more planted returns</summary>", section)
    # Every planted return is in the page: the shown rows plus the folded ones.
    facts, _ = analysed(coroutines_trace)
    assert len(facts.planted_returns) > FOLD_ROWS
    assert section.count("<tr><td>") == len(facts.planted_returns)


def test_a_scenario_report_has_no_switch_picture(first_switch_trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    (out).mkdir()
    (out / "switches.png").write_bytes(b"stale")  # from an earlier report in this folder
    build_report(load_trace(first_switch_trace), out)
    assert not (out / "switches.png").exists()
    markdown = (out / "report.md").read_text()
    assert "- entry: `main` (att syntax)" in markdown
    assert "Which stack ran when" not in markdown


def test_program_header_of_a_binary_that_is_gone(coroutines_trace: Path) -> None:
    meta = load_trace(coroutines_trace).metadata
    assert meta.program is not None
    gone = replace(meta, program=replace(meta.program, path="/nonexistent/three_coroutines"))
    header = program_header(gone)
    assert header is not None
    assert header.unread == "the binary is no longer at this path"
    assert header.producer is None and header.linkage is None
    assert header.recorded.startswith("from main (")


def test_the_heatmap_labels_each_planted_slot_once_and_says_where_rsp_went(
    coroutines_trace: Path,
) -> None:
    facts, _ = analysed(coroutines_trace)
    with plot_style():
        figure = heatmap.heatmap_figure(facts)
        assert overlaps(figure) == []
    texts = [t.get_text() for ax in figure.axes for t in ax.texts if t.get_visible()]
    # Each coroutine resumes twice from one slot: one label names both rets.
    assert sum("popped at steps" in t for t in texts) == 3
    # The process stack's stored window is where its frames were (record/core/windows.py),
    # not its top 512 bytes (argv, environment): rsp went inside it, and the panel's
    # title has no "outside them" warning.
    stack = facts.meta.region("stack")
    assert heatmap.rsp_outside_window(facts, stack) is None
    titles = [ax.get_title(loc="left") for ax in figure.axes]
    title = next(t for t in titles if t.startswith("stack"))
    assert "outside them" not in title


def test_program_header_finds_the_program_next_to_its_trace(coroutines_trace: Path) -> None:
    """`demo` keeps the program it built next to the trace, which names it relatively."""
    meta = load_trace(coroutines_trace).metadata
    assert meta.program is not None
    relative = replace(meta, program=replace(meta.program, path="elsewhere/three_coroutines"))
    header = program_header(relative, coroutines_trace)
    assert header is not None and header.unread is None
    assert header.linkage == "static" and header.producer is not None

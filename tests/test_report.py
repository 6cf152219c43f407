"""The report's outputs: deterministic plots, one panel per stack, a self-contained page."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import Collection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from stacktrace_lab.analysis import check, derive_facts
from stacktrace_lab.analysis.events import TraceFacts
from stacktrace_lab.record.recorder import Recording
from stacktrace_lab.report import heatmap, rsp_plot
from stacktrace_lab.report.build import FILES, build_report
from stacktrace_lab.report.content import gather
from stacktrace_lab.report.figures import DPI, WIDTH_INCHES, plot_style
from stacktrace_lab.report.markdown import _code
from stacktrace_lab.trace.reader import load_trace

from .programs import ZERO_R12

RecordSource = Callable[..., Recording]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def first_switch_report(first_switch_trace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "first-switch"
    build_report(load_trace(first_switch_trace), out)
    return out


def facts_of(path: Path) -> TraceFacts:
    return derive_facts(load_trace(path))


def png_width(png: bytes) -> int:
    assert png.startswith(PNG_MAGIC)
    return int.from_bytes(png[16:20], "big")


# --- plots ----------------------------------------------------------------------


def test_plots_are_byte_identical_run_to_run(first_switch_trace: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.parquet"
    shutil.copy(first_switch_trace, copy)
    first, second = facts_of(first_switch_trace), facts_of(copy)
    assert rsp_plot.rsp_png(first) == rsp_plot.rsp_png(second)
    assert heatmap.heatmap_png(first) == heatmap.heatmap_png(second)


def test_plots_have_a_fixed_width_and_no_software_chunk(first_switch_trace: Path) -> None:
    facts = facts_of(first_switch_trace)
    for png in (rsp_plot.rsp_png(facts), heatmap.heatmap_png(facts)):
        assert png_width(png) == int(WIDTH_INCHES * DPI)
        assert b"matplotlib" not in png  # no version text that would change the bytes


def test_rsp_plot_has_one_panel_per_stack(first_switch_trace: Path) -> None:
    with plot_style():
        figure = rsp_plot.rsp_figure(facts_of(first_switch_trace))
    labels = [ax.get_ylabel() for ax in figure.axes]
    assert labels == ["main (64 KiB)\nbyte index", "green (48 B)\nbyte index"]
    main_axes, green_axes = figure.axes
    # green is shown whole, in its own bytes; main is zoomed to the top it used
    assert green_axes.get_ylim()[0] < 0 and green_axes.get_ylim()[1] > 48
    assert main_axes.get_ylim()[0] > 65000
    # Numbered marks in the panels, their text in the legend under the figure.
    legend = "\n".join(t.get_text() for t in figure.texts)
    assert "ret pops hello from green[32]" in legend
    assert "switch main → green" in legend
    numbers = {t.get_text() for t in green_axes.texts + main_axes.texts}
    assert "1" in numbers


def test_heatmap_panels_and_planted_slot(first_switch_trace: Path) -> None:
    with plot_style():
        figure = heatmap.heatmap_figure(facts_of(first_switch_trace))
    titles = [ax.get_title(loc="left") for ax in figure.axes]
    assert titles[0].startswith("main: 65536 bytes")
    assert titles[1].startswith("green: 48 bytes")
    green = figure.axes[1]
    assert any(
        "index 32: hello, planted at step 6, popped at step 12" in t.get_text() for t in green.texts
    )
    assert green.get_ylim() == (0.0, 48.0)


def test_heatmap_categories(first_switch_trace: Path) -> None:
    facts = facts_of(first_switch_trace)
    hello = facts.meta.symbols["hello"]
    green = facts.meta.region("green")
    values = np.array([0, hello, green.base + 32, 12345, facts.sentinel], dtype=np.uint64)
    assert heatmap.categories(facts, values).tolist() == [
        heatmap.ZERO,
        heatmap.CODE,
        heatmap.STACK,
        heatmap.OTHER,
        heatmap.CODE,
    ]


THREE_STACKS = """
main:
    movabs $a_top, %rsp
    push %rax
    movabs $b_top, %rsp
    push %rax
    movabs $c_top, %rsp
    push %rax
    hlt
"""


def test_one_panel_for_each_stack_used(record_source: RecordSource) -> None:
    recording = record_source(
        THREE_STACKS,
        stacks=(("main", 4096), ("a", 64), ("b", 128), ("unused", 64), ("c", 64)),
    )
    facts = facts_of(recording.path)
    with plot_style():
        rsp_figure = rsp_plot.rsp_figure(facts)
        heat_figure = heatmap.heatmap_figure(facts)
    names = [ax.get_ylabel().split(" ")[0] for ax in rsp_figure.axes]
    assert names == ["main", "a", "b", "c"]
    assert [ax.get_title(loc="left").split(":")[0] for ax in heat_figure.axes] == names


LOOP = """
main:
    push %rbx
    mov $0, %rbx
again:
    call f
    add $1, %rbx
    jmp again
f:
    push %rbp
    pop %rbp
    ret
"""


def _vertices(figure: Figure) -> int:
    count = 0
    for ax in figure.axes:
        for line in ax.get_lines():
            assert isinstance(line, Line2D)
            count += len(line.get_xdata())
        for collection in ax.collections:
            assert isinstance(collection, Collection)
            count += sum(len(p.vertices) for p in collection.get_paths())
    return count


def test_long_traces_are_drawn_per_column(
    record_source: RecordSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stacktrace_lab.record.recorder import RecordOptions

    recording = record_source(LOOP, options=RecordOptions(max_steps=6000, row_group_size=1000))
    facts = facts_of(recording.path)
    assert facts.calls.size == 1000
    monkeypatch.setattr(rsp_plot, "MAX_COLUMNS", 100)
    monkeypatch.setattr(heatmap, "MAX_COLUMNS", 100)
    with plot_style():
        rsp_figure = rsp_plot.rsp_figure(facts)
        heat_figure = heatmap.heatmap_figure(facts)
    # Per column, not per step: a few hundred vertices for 6000 steps and 1000 calls.
    assert _vertices(rsp_figure) < 1500
    assert rsp_figure.axes[-1].get_ylabel() == "per 50 steps"  # calls/returns counted
    assert _vertices(heat_figure) < 1500
    (image, *_) = heat_figure.axes[0].get_images()
    assert image.get_array().shape[1] == 100


def test_a_loop_without_calls_draws_without_warnings(
    record_source: RecordSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single-stack loop with no call or ret: the events panel says so, no empty legend."""
    import warnings

    from stacktrace_lab.record.recorder import RecordOptions

    spin = "main:\n    mov $5000, %ecx\nagain:\n    dec %ecx\n    jnz again\n    hlt\n"
    recording = record_source(spin, options=RecordOptions(row_group_size=1000))
    facts = facts_of(recording.path)
    assert facts.calls.size == 0
    monkeypatch.setattr(rsp_plot, "MAX_COLUMNS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels" would raise
        with plot_style():
            figure = rsp_plot.rsp_figure(facts)
    events = figure.axes[-1]
    assert events.get_legend() is None
    assert [t.get_text() for t in events.texts] == ["no calls or returns"]


# --- content, HTML, Markdown, JSON ------------------------------------------------


def test_report_writes_every_file(first_switch_report: Path) -> None:
    assert sorted(p.name for p in first_switch_report.iterdir()) == sorted(FILES)


def test_listing_around_the_switch(first_switch_trace: Path) -> None:
    facts = facts_of(first_switch_trace)
    content = gather(facts, check(facts.trace, facts))
    (window,) = content.windows
    rows = {row.step: row for row in window.rows}
    assert rows[6].notes == ("plants hello at green[32]",)
    assert rows[6].touched == ("write green[32] = hello",)
    assert rows[11].notes == ("switch: rsp moves from main to green",)
    assert rows[12].notes == ("ret pops planted hello from green[32]",)
    assert rows[12].touched == ("read green[32] = hello",)
    assert rows[12].rsp_where == "green[32]"
    assert rows[13].rsp_where == "green[40]"
    assert rows[10].rsp_where == "main[65504] (top-32)"


def test_html_is_self_contained(first_switch_report: Path) -> None:
    html = (first_switch_report / "index.html").read_text()
    assert html.count('src="data:image/png;base64,') == 2
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html)
    assert "<link" not in html and "<script src" not in html and "@import" not in html
    for section in ("run", "invariants", "planted", "plots", "listing", "source"):
        assert f'<section id="{section}">' in html
    assert "every invariant holds" in html
    assert "movq %rcx, 0x20(%rax)" in html
    assert "I LOVE WAKING UP ON A NEW STACK!" in html


def test_scenario_values_are_escaped_in_html(record_source: RecordSource, tmp_path: Path) -> None:
    recording = record_source(
        """
        main:
            mov $1, %eax
            mov $1, %edi
            lea message(%rip), %rsi
            mov $21, %edx
            syscall
            hlt
        message:
            .ascii "<script>x()</script>\\\\n"
        """,
        extra='description = "<b>bold</b> & co"',
    )
    report = build_report(load_trace(recording.path), tmp_path / "out")
    html = (report.directory / "index.html").read_text()
    assert "<script>x()</script>" not in html
    assert "&lt;script&gt;x()&lt;/script&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in html
    assert "<b>bold</b>" not in html
    markdown = (report.directory / "report.md").read_text()
    assert "&lt;b>bold&lt;/b> & co" in markdown


def test_markdown_has_the_same_content(first_switch_report: Path) -> None:
    md = (first_switch_report / "report.md").read_text()
    for heading in (
        "# first-switch",
        "## Scenario and run",
        "## Invariants",
        "## Planted returns",
        "## rsp and the stacks",
        "## Around each switch",
        "## Source",
    ):
        assert f"\n{heading}\n" in f"\n{md}"
    assert "![rsp over time, one panel per stack region](rsp.png)" in md
    assert "(heatmap.png)" in md
    assert "| `alignment` | holds | 0 | 0 |" in md
    assert (
        "| 12 `gt_switch+3` `first-switch.toml:49` | green | 32 "
        "| step 6 `main+36` `first-switch.toml:38` | `movq %rcx, 0x20(%rax)` | `hello` | entry |"
    ) in md
    assert "```asm\n    .equ SSIZE, 48" in md


def test_code_spans_survive_backticks_and_pipes() -> None:
    assert _code("a`b") == "``a`b``"
    assert _code("x|y") == "`x\\|y`"


def test_invariants_json(first_switch_report: Path) -> None:
    doc = json.loads((first_switch_report / "invariants.json").read_text())
    assert doc["status"] == "holds"
    assert [i["id"] for i in doc["invariants"]] == [
        "alignment",
        "ret-source",
        "stack-bounds",
        "callee-saved",
        "stop",
        "expect",
    ]
    (planted,) = doc["planted_returns"]
    assert (planted["stack"], planted["index"], planted["target"]) == ("green", 32, "hello")
    # hello is the first code on green: a function entry; both lines are named
    assert planted["landing"] == "entry"
    assert planted["source"].startswith("first-switch.toml:")
    assert planted["planted_source"].startswith("first-switch.toml:")


def test_a_failing_trace_reports_its_violation(record_source: RecordSource, tmp_path: Path) -> None:
    recording = record_source(ZERO_R12)
    report = build_report(load_trace(recording.path), tmp_path / "out")
    assert report.check.exit_status == 1
    html = (report.directory / "index.html").read_text()
    assert "fails: callee-saved" in html
    assert "r12 changed across the call to zero_r12" in html
    md = (report.directory / "report.md").read_text()
    assert "### `callee-saved` violations" in md


def test_the_committed_example_is_current(first_switch_trace: Path, tmp_path: Path) -> None:
    """reports/first-switch/ (shown by the README) says what a fresh report says.

    The text outputs only: PNG bytes may differ between matplotlib versions.
    Regenerate with `stacktrace-lab demo` from the repository's root, which
    records into `stacktrace-lab-traces/` (the command line's folder).
    """
    example = Path(__file__).resolve().parent.parent / "reports" / "first-switch"
    fresh = build_report(load_trace(first_switch_trace), tmp_path / "fresh").directory
    for name in ("report.md", "invariants.json"):
        committed = (example / name).read_text()
        now = (
            (fresh / name)
            .read_text()
            .replace(str(first_switch_trace), "stacktrace-lab-traces/first-switch.parquet")
        )
        assert committed == now, f"{name}: regenerate with `stacktrace-lab demo`"


def test_an_overflow_is_drawn_below_the_base(record_source: RecordSource) -> None:
    recording = record_source(
        """
        main:
            movabs $tiny_top, %rsp
            push %rax
            push %rax
            push %rax       # 8 bytes below tiny's base
            push %rax       # 16 bytes below
            movabs $main_top, %rsp
            hlt
        """,
        stacks=(("main", 4096), ("tiny", 16)),
    )
    facts = facts_of(recording.path)
    with plot_style():
        rsp_figure = rsp_plot.rsp_figure(facts)
        heat_figure = heatmap.heatmap_figure(facts)
    tiny_rsp = rsp_figure.axes[1]
    assert tiny_rsp.get_ylabel().startswith("tiny")
    assert tiny_rsp.get_ylim()[0] < -16  # rsp went 16 bytes below the base, and is shown
    assert any("overflow" in t.get_text() for t in tiny_rsp.texts)
    tiny_heat = heat_figure.axes[1]
    assert tiny_heat.get_ylim() == (-16.0, 16.0)
    assert any("below tiny's base: overflow" in t.get_text() for t in tiny_heat.texts)
    # going below a stack's base is an overflow of it, not a switch to "outside"
    assert facts.switch_steps().tolist() == [0, 5]

"""Verdicts a user can trust: runs that end badly fail, causes come first, advice is right,
every finding names its source line, and the pictures show what failed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from stacktrace_lab.analysis import check, derive_facts
from stacktrace_lab.cli import main
from stacktrace_lab.record.recorder import Recording, record
from stacktrace_lab.report import rsp_plot
from stacktrace_lab.report.build import build_report, stepper_switches
from stacktrace_lab.report.figures import plot_style
from stacktrace_lab.scenario import load_scenario
from stacktrace_lab.trace.reader import load_trace

RecordSource = Callable[..., Recording]

FAULTS = """
main:
    movabs $0x1234, %rax
    movq (%rax), %rbx
    ret
"""
LOOPS = """
main:
    nop
    jmp main
"""


# --- runs that end badly ----------------------------------------------------------


@pytest.mark.parametrize(("source", "reason"), [(FAULTS, "fault"), (LOOPS, "max_steps")])
def test_a_run_that_ends_badly_fails_check(
    record_source: RecordSource, capsys: pytest.CaptureFixture[str], source: str, reason: str
) -> None:
    path = record_source(source, name="bad").path
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "stop" in out and f'[expect] stop = "{reason}"' in out
    result = check(load_trace(path))
    assert result.failed == ("stop",)
    (cause,) = result.causes
    assert cause.kind == reason
    # the line of the instruction that stopped the run, in the scenario's own file
    toml = path.with_suffix(".toml")
    file, line = str(cause.first.source).split(":")
    assert file == toml.name
    stopped_at = toml.read_text().splitlines()[int(line) - 1].strip()
    assert stopped_at == ("movq (%rax), %rbx" if reason == "fault" else "jmp main")
    if reason == "fault":
        assert "the run faulted" in cause.first.message and "0x1234" in cause.first.message
    else:
        assert "hit max_steps" in cause.first.message


@pytest.mark.parametrize(("source", "reason"), [(FAULTS, "fault"), (LOOPS, "max_steps")])
def test_expect_stop_makes_it_pass(
    record_source: RecordSource, capsys: pytest.CaptureFixture[str], source: str, reason: str
) -> None:
    path = record_source(source, extra=f'[expect]\nstop = "{reason}"').path
    assert main(["check", str(path)]) == 0
    assert "all invariants hold" in capsys.readouterr().out


def test_expecting_another_stop_fails_both(record_source: RecordSource) -> None:
    path = record_source(FAULTS, extra='[expect]\nstop = "returned"').path
    assert check(load_trace(path)).failed == ("stop", "expect")


# --- green-threads-no-skip: one cause ---------------------------------------------


@pytest.fixture(scope="module")
def no_skip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("no-skip") / "green-threads-no-skip.parquet"
    record(load_scenario("green-threads-no-skip"), out)
    return out


def test_no_skip_is_one_cause_with_its_consequences(no_skip: Path) -> None:
    result = check(load_trace(no_skip))
    assert result.headline == "1 cause, 83 violations"
    (cause,) = result.causes
    assert (cause.invariant, cause.kind, cause.count) == ("alignment", "misaligned-entry", 3)
    # the three thread functions are entered misaligned: planted by one line of spawn
    assert cause.site_symbol.startswith("spawn")
    scenario = load_scenario("green-threads-no-skip")
    text = Path(scenario.path).read_text()
    planting = text[: text.index("mov %rdi, -24(%rsi)")].count("\n") + 1
    assert cause.site_source == f"green-threads-no-skip.toml:{planting}"
    assert cause.first.symbol == "thread1+0"
    (consequence,) = cause.consequences
    assert consequence.kind == "misaligned-call" and consequence.count == 80
    assert cause.total == 83 == result.result("alignment").total


def test_no_skip_advice_keeps_guard_in_its_slot(no_skip: Path) -> None:
    """The fix is a trampoline slot: never move thread1 onto guard's slot (1008)."""
    message = check(load_trace(no_skip)).causes[0].first.message
    assert "plant it at index 992" in message
    assert "plant a trampoline there" in message
    assert "guard stays at index 1008" in message
    assert "plant it at index 1008" not in message


def test_no_skip_fits_on_one_screen(no_skip: Path) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "stacktrace_lab", "check", str(no_skip)],
        capture_output=True,
        text=True,
        env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert shown.returncode == 1
    lines = shown.stdout.splitlines()
    assert len(lines) <= 50, shown.stdout
    assert "1 cause, 83 violations" in shown.stdout
    assert "then 80 misaligned-call violations follow from it" in shown.stdout


# --- source lines, in every output ---------------------------------------------------


def test_every_violation_and_planted_return_names_its_line(no_skip: Path, tmp_path: Path) -> None:
    report = build_report(load_trace(no_skip), tmp_path / "report")
    doc = json.loads((report.directory / "invariants.json").read_text())
    assert doc["headline"] == "1 cause, 83 violations"
    for invariant in doc["invariants"]:
        for violation in invariant["violations"]:
            assert violation["source"].startswith("green-threads-no-skip.toml:")
    for planted in doc["planted_returns"]:
        assert planted["source"].startswith("green-threads-no-skip.toml:")
        assert planted["planted_source"].startswith("green-threads-no-skip.toml:")
    assert [p["landing"] for p in doc["planted_returns"]] == ["entry"] * 3 + ["return"] * 3
    md = (report.directory / "report.md").read_text()
    html = (report.directory / "index.html").read_text()
    line = doc["causes"][0]["site_source"]
    for page in (md, html):
        assert "1 cause, 83 violations" in page
        assert line in page
        assert "follow from it" in page


# --- pictures ------------------------------------------------------------------------


def test_rsp_plot_marks_each_cause_and_a_bad_ret(tmp_path: Path) -> None:
    out = tmp_path / "wrong-slot.parquet"
    record(load_scenario("first-switch-wrong-slot"), out)
    facts = derive_facts(load_trace(out))
    result = check(facts.trace, facts)
    with plot_style():
        figure = rsp_plot.rsp_figure(facts, result.causes)
    # Numbered marks on the panels; their text in the numbered list under the figure.
    marks = [t.get_text() for ax in figure.axes for t in ax.texts]
    listed = "\n".join(t.get_text() for t in figure.texts)
    assert "1" in marks
    assert "1  cause: ret-source: ret pops an unwritten slot at gt_switch+3 (step 12)" in listed
    assert rsp_plot.failed_returns(facts).tolist() == [result.causes[0].first_step]
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert "ret of a bad slot" in legend and "cause (first step)" in legend


def test_stepper_switches_are_the_switches_of_the_plot(tmp_path: Path) -> None:
    out = tmp_path / "green-threads.parquet"
    record(load_scenario("green-threads"), out)
    facts = derive_facts(load_trace(out))
    switches = stepper_switches(facts)
    drawn = set(facts.switch_steps().tolist())
    planted = {p.ret_step for p in facts.planted_returns}
    assert {s.ret_step for s in switches} == drawn | planted
    assert len(drawn) > len(planted)  # most switches come back through a call's own slot
    notes = [s.note for s in switches if s.ret_step not in planted]
    assert all(n.startswith("stack switch: rsp moves from ") for n in notes)


# --- function entries that realign -----------------------------------------------------

REALIGNS = """
main:
    movabs $worker_top, %rax
    movabs $entry, %rcx
    movq %rcx, -16(%rax)
    lea -16(%rax), %rsp
    ret
entry:
    {first}
    call leaf
    hlt
leaf:
    ret
"""


def test_an_entry_that_realigns_is_a_note_not_a_failure(record_source: RecordSource) -> None:
    stacks = (("main", 4096), ("worker", 256))
    # planted 24 below the top: the ret leaves rsp = top - 16, so entry starts with
    # rsp % 16 == 0 where a call would have left 8
    source = REALIGNS.replace("-16(%rax)", "-24(%rax)")
    fails = check(load_trace(record_source(source.format(first="nop"), stacks=stacks).path))
    assert fails.failed == ("alignment",)
    realigned = source.format(first="and $-16, %rsp")
    result = check(load_trace(record_source(realigned, stacks=stacks).path))
    assert result.holds
    (note,) = result.result("alignment").notes
    assert "entry is entered with rsp % 16 == 0" in note and "realigns rsp" in note


def test_first_switch_misaligned_fails_at_hello_the_first_code_on_green(tmp_path: Path) -> None:
    out = tmp_path / "misaligned.parquet"
    record(load_scenario("first-switch-misaligned"), out)
    result = check(load_trace(out))
    assert result.failed == ("alignment",)
    (cause,) = result.causes
    assert cause.first.symbol == "hello+0"
    assert "the first code to run on green" in cause.first.message
    # the mistake is main's store of hello at SSIZE - 8
    assert cause.site_symbol.startswith("main")
    text = Path(load_scenario("first-switch-misaligned").path).read_text()
    line = text[: text.index("movq %rcx, SSIZE-8(%rax)")].count("\n") + 1
    assert cause.site_source == f"first-switch-misaligned.toml:{line}"
    (planted,) = result.planted
    assert planted.landing == "entry"


# --- a new coroutine on a reused stack ---------------------------------------------

RESTARTS = """
main:
    push %rbp
again:
    movabs $co_top, %rax
    movabs $coro_fn, %rcx
    mov %rcx, {slot}(%rax)
    lea {slot}(%rax), %rdx
    movabs $ctx_base, %rdi
    mov %rdx, 8(%rdi)
    call switch
    jmp again
switch:
    mov %rsp, 0(%rdi)
    mov 8(%rdi), %rsp
    ret
coro_fn:
    push %rbp
    call work
    movabs $ctx_base, %rdi
    mov 0(%rdi), %rsp
    ret
work:
    ret
"""


@pytest.mark.parametrize(("slot", "holds"), [(-16, True), (-24, False)])
def test_every_start_on_a_reused_stack_is_an_entry(
    record_source: RecordSource, slot: int, holds: bool
) -> None:
    """main starts coro_fn afresh on the same stack again and again: each start is an
    entry with the alignment rule, not only the first one on the stack."""
    path = record_source(
        RESTARTS.format(slot=slot),
        stacks=(("main", 4096), ("co", 256)),
        data=(("ctx", 64),),
        extra='max_steps = 170\n[expect]\nstop = "max_steps"',
    ).path
    facts = derive_facts(load_trace(path))
    result = check(facts.trace, facts)
    assert [p.landing for p in result.planted] == ["entry"] * 10
    assert result.holds == holds
    if not holds:
        (cause,) = result.causes
        assert cause.count == 10 and cause.consequences[0].count == 10


def test_a_long_loop_of_one_mistake_is_one_cause(
    record_source: RecordSource, capsys: pytest.CaptureFixture[str]
) -> None:
    """main calls f with a misaligned frame forever: one cause at main, f's own calls
    its consequences, however many times the loop runs."""
    path = record_source(
        """
        main:
            call f
            jmp main
        f:
            push %rbp
            call g
            pop %rbp
            ret
        g:
            ret
        """,
        extra='max_steps = 20000\n[expect]\nstop = "max_steps"',
    ).path
    result = check(load_trace(path))
    (cause,) = result.causes
    assert (cause.invariant, cause.kind, cause.site_symbol) == (
        "alignment",
        "misaligned-call",
        "main",
    )
    (consequence,) = cause.consequences
    assert cause.count + consequence.count == result.total > 5000
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert len(out.splitlines()) < 30 and out.count("call to f") == 1


def test_a_lost_register_seen_again_by_the_caller_is_one_cause(tmp_path: Path) -> None:
    """green-threads-clobber: switch loses rbx; yield, which called switch, returns
    with the same wrong rbx. That is the same mistake: yield's are consequences."""
    out = tmp_path / "clobber.parquet"
    record(load_scenario("green-threads-clobber"), out)
    result = check(load_trace(out))
    (cause,) = result.causes
    assert cause.kind == "clobbered rbx" and cause.site_symbol.startswith("switch")
    (consequence,) = cause.consequences
    assert consequence.example.symbol.startswith("yield")
    assert cause.count == consequence.count == 9


def test_a_jump_within_a_function_is_not_blamed_for_its_calls(
    record_source: RecordSource,
) -> None:
    """A jump table (`jmp *%rax` to a place in the same function) sets up no frame: a
    misaligned call after it is the function's own mistake."""
    path = record_source(
        """
        main:
            movabs $.Lcase, %rax
            jmp *%rax
        .Lcase:
            call f
            hlt
        f:
            ret
        """
    ).path
    facts = derive_facts(load_trace(path))
    assert [facts.transfers.kind(i).label for i in range(len(facts.transfers))] == ["other"]
    (cause,) = check(facts.trace, facts).causes
    assert (cause.kind, cause.site_symbol) == ("misaligned-call", "main")


def test_a_misaligned_call_after_an_other_landing_is_blamed_on_it(tmp_path: Path) -> None:
    """own-ret-style's guard without its `push %rbp`: skip's ret lands on guard (no
    rule of its own: neither an entry, a resume nor a return), and guard's call is
    misaligned. The cause is the landing, at skip's ret."""
    text = (Path(__file__).parent / "switches" / "own-ret-style.toml").read_text()
    broken = text.replace(
        "    push %rbp                     # entered with rsp % 16 == 8, as if called\n",
        "    nop\n",
    )
    assert broken != text
    path = tmp_path / "own-ret-style.toml"
    path.write_text(broken)
    out = tmp_path / "trace.parquet"
    record(load_scenario(path), out)
    result = check(load_trace(out))
    (cause,) = result.causes
    assert (cause.kind, cause.site_symbol) == ("landing-misaligns-calls", "skip")
    assert cause.first.symbol.startswith("guard")
    assert "which landed on guard" in cause.first.message

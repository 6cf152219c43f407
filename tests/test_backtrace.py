"""Backtraces at any step: the running stack's and every suspended stack's frames."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stacktrace_lab.analysis.events import derive_facts
from stacktrace_lab.analysis.kinds import Kind
from stacktrace_lab.cli import main
from stacktrace_lab.explore.backtrace import StackBacktrace, backtraces, frame_history
from stacktrace_lab.record.recorder import record
from stacktrace_lab.scenario import load_scenario
from stacktrace_lab.trace import load_trace


@pytest.fixture(scope="module")
def green_threads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("green-threads") / "green-threads.parquet"
    record(load_scenario("green-threads"), out)
    return out


def _functions(found: list[StackBacktrace], stack: str) -> list[str]:
    bt = next(b for b in found if b.stack == stack)
    return [f.function for f in bt.frames]


def test_first_switch_hello_runs_on_green_while_main_waits_in_gt_switch(
    first_switch_trace: Path,
) -> None:
    facts = derive_facts(load_trace(first_switch_trace))
    found = backtraces(facts, 14)
    assert [(b.stack, b.running) for b in found] == [("green", True), ("main", False)]
    green, main_stack = found
    assert [(f.function, f.how, f.entered_step) for f in green.frames] == [
        ("hello", "planted return", 12)
    ]
    assert green.frames[0].location == "hello+5"
    # main left at the ret that switched (step 12 ran on green: rsp moved at step 11).
    assert main_stack.at_step == 11
    assert [f.function for f in main_stack.frames] == ["gt_switch", "main"]
    assert main_stack.frames[1].how == "start"
    # The caller's line is where gt_switch returns to in main, with its source line.
    assert main_stack.frames[1].location.startswith("main+")
    assert main_stack.frames[1].source is not None
    assert main_stack.frames[1].source.startswith("first-switch.toml:")


def test_green_threads_one_backtrace_per_stack(green_threads: Path) -> None:
    facts = derive_facts(load_trace(green_threads))
    found = backtraces(facts, 900)
    assert [b.stack for b in found if b.running] == ["worker3"]
    assert _functions(found, "worker3") == ["yield", "worker", "thread3"]
    # Every suspended thread is inside switch, called from yield.
    assert _functions(found, "main") == ["switch", "yield", "main"]
    assert _functions(found, "worker1") == ["switch", "yield", "worker", "thread1"]
    assert _functions(found, "worker2") == ["switch", "yield", "worker", "thread2"]
    # A thread function has no call: spawn planted it, and switch's ret entered it.
    thread3 = next(b for b in found if b.stack == "worker3").frames[-1]
    assert thread3.how == "planted return"


def test_a_function_reached_by_a_ret_is_the_outermost_frame(green_threads: Path) -> None:
    """A finished thread waits in guard, which a ret (skip's) reached: no call or entry
    made its frame, but yield returns into it, so it is the outermost frame."""
    facts = derive_facts(load_trace(green_threads))
    found = backtraces(facts, facts.steps - 3)
    worker1 = next(b for b in found if b.stack == "worker1")
    assert [f.function for f in worker1.frames] == ["switch", "yield", "guard"]
    guard = worker1.frames[-1]
    assert guard.how == "return" and guard.location.startswith("guard+")
    assert guard.source is not None


def test_after_every_call_the_innermost_frame_is_the_callee(green_threads: Path) -> None:
    """At the step after each call, the running stack's frame 0 is the callee, entered by it;
    at the step after its matching ret, that frame is gone again."""
    facts = derive_facts(load_trace(green_threads))
    history = frame_history(facts)
    checked = 0
    for call in facts.calls[:60].tolist():
        found = backtraces(facts, call + 1, history)
        top = found[0].frames[0]
        assert found[0].running
        assert (top.how, top.entered_step) == ("call", call)
        assert facts.kind[call] == Kind.CALL
        checked += 1
    assert checked == 60


def test_show_prints_and_exports_the_backtraces(
    green_threads: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", str(green_threads), "--step", "900"]) == 0
    out = capsys.readouterr().out
    assert "worker3 (running)" in out
    assert "main (suspended at step" in out
    assert main(["show", str(green_threads), "--step", "900", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    stacks = {b["stack"]: b for b in doc["backtraces"]}
    assert stacks["worker3"]["running"] is True
    assert [f["function"] for f in stacks["worker1"]["frames"]][:2] == ["switch", "yield"]


SWITCHES = Path(__file__).parent / "switches"


@pytest.mark.parametrize("technique", ["boost-style", "libco-style"])
def test_a_resumed_context_gets_its_frames_back(technique: str, tmp_path: Path) -> None:
    """Boost's `pop; jmp *%r8` and libco's re-pushed `ret` resume a call: after the
    first resume, main runs again in main, and the coroutine waits inside the switch
    it called from coro_fn."""
    from stacktrace_lab.analysis.transfers import Landing

    path = tmp_path / f"{technique}.parquet"
    record(load_scenario(SWITCHES / f"{technique}.toml"), path)
    facts = derive_facts(load_trace(path))
    transfers = facts.transfers
    resumes = [
        int(transfers.step[i]) for i in range(len(transfers)) if transfers.kind(i) == Landing.RESUME
    ]
    found = {b.stack: b for b in backtraces(facts, resumes[0] + 2)}
    assert found["main"].running and [f.function for f in found["main"].frames] == ["main"]
    co = next(b for name, b in found.items() if name != "main")
    assert not co.running
    assert [f.function for f in co.frames][-1] == "coro_fn"
    assert len(co.frames) == 2  # the switch function, called from coro_fn

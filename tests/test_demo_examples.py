"""`stacktrace-lab demo --example NAME`: the one command that regenerates each
committed example report (README, "More example reports")."""

from __future__ import annotations

from pathlib import Path

import pytest

from stacktrace_lab.cli import main
from stacktrace_lab.examples import EXAMPLE_REPORTS, compiler_missing

REPO = Path(__file__).resolve().parent.parent


def test_every_example_has_its_committed_report_and_readme_line() -> None:
    readme = (REPO / "README.md").read_text()
    for name in EXAMPLE_REPORTS:
        assert (REPO / "reports" / name / "index.html").is_file(), name
        assert f"`stacktrace-lab demo --example {name}`" in readme, name


def test_an_unknown_example_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--example", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no example 'nope'" in err[0] and "three-coroutines" in err[0]
    assert main(["demo", "--rust", "--example", "three-coroutines"]) == 2
    assert not (tmp_path / "reports").exists()  # nothing half-written


def test_demo_example_three_coroutines_builds_records_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    why = compiler_missing("c-coroutines")
    if why is not None:
        pytest.skip(f"cannot build the three-coroutine example: {why}")
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--example", "three-coroutines"]) == 0  # every invariant holds
    capsys.readouterr()
    report = tmp_path / "reports" / "three-coroutines"
    markdown = (report / "report.md").read_text()
    assert "18 switches between 6 pairs of stacks" in markdown
    assert "| stack | ping_stack | 3 |" in markdown and "| tick_stack | stack | 3 |" in markdown
    assert (report / "switches.png").stat().st_size > 0  # more than two stacks: it leads
    # The program stays next to its trace, so replay finds it.
    trace = tmp_path / "stacktrace-lab-traces" / "three-coroutines.parquet"
    assert main(["replay", str(trace)]) == 0

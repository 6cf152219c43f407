"""The pytest plugin, run on small projects with pytester: goldens pass, fail, appear, update."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stacktrace_lab.diff import diff_traces
from stacktrace_lab.record.recorder import record
from stacktrace_lab.scenario import load_scenario

from .conftest import scenario_toml
from .test_diff import ADD

pytest_plugins = ["pytester"]

CHECK_PROG = """
def test_prog(golden_trace):
    golden_trace.check("prog.toml")
"""


def _project(pytester: pytest.Pytester, imm: int, golden_imm: int | None) -> Path:
    """A project with prog.toml (`add $imm`) and, if asked, a golden of `add $golden_imm`."""
    pytester.makepyfile(test_prog=CHECK_PROG)
    scenario = pytester.path / "prog.toml"
    if golden_imm is not None:
        scenario.write_text(scenario_toml(ADD.format(imm=golden_imm), name="prog"))
        record(load_scenario(scenario), pytester.path / "traces" / "prog.parquet")
    scenario.write_text(scenario_toml(ADD.format(imm=imm), name="prog"))
    return pytester.path / "traces" / "prog.parquet"


def test_a_matching_golden_passes(pytester: pytest.Pytester) -> None:
    _project(pytester, imm=0, golden_imm=0)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)


def test_a_differing_golden_fails_with_the_diff(pytester: pytest.Pytester) -> None:
    golden = _project(pytester, imm=5, golden_imm=0)
    before = golden.read_bytes()
    result = pytester.runpytest("--stacktrace-lab-results-dir", "results")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*first divergent step: A step 1 / B step 1, differs in: insn*",
            "*after this step: rax: A 0x1  B 0x6*",
            "*pytest --stacktrace-lab-update*",
        ]
    )
    assert "Traceback" not in result.stdout.str()
    assert golden.read_bytes() == before  # a failing check never touches the golden
    results = pytester.path / "results"
    assert (results / "prog.diff.md").read_text().startswith("### stacktrace-lab diff: different")
    assert "rax" in (results / "prog.diff.txt").read_text()
    assert not diff_traces(golden, results / "prog.parquet").same


def test_a_missing_golden_fails_and_is_written(pytester: pytest.Pytester) -> None:
    golden = _project(pytester, imm=0, golden_imm=None)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*golden trace *prog.parquet did not exist: wrote it*"])
    result.stdout.fnmatch_lines(["*written (was missing): *prog.parquet"])
    assert golden.exists()
    pytester.runpytest().assert_outcomes(passed=1)


def test_update_rewrites_the_golden(pytester: pytest.Pytester) -> None:
    golden = _project(pytester, imm=5, golden_imm=0)
    result = pytester.runpytest("--stacktrace-lab-update")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*rewritten (differed): *prog.parquet"])
    rewritten = load_scenario(pytester.path / "prog.toml")
    fresh = record(rewritten, pytester.path / "fresh.parquet").path
    assert diff_traces(golden, fresh).same
    pytester.runpytest().assert_outcomes(passed=1)


def test_ini_settings_choose_the_golden_dir_and_ignored_names(pytester: pytest.Pytester) -> None:
    golden = _project(pytester, imm=0, golden_imm=0)
    shutil.move(golden.parent, pytester.path / "goldens")
    # Same program, one comment more: only the metadata field `source` differs.
    prog = pytester.path / "prog.toml"
    prog.write_text(prog.read_text().replace("ret", "ret  # back to the sentinel"))
    pytester.makeini("[pytest]\nstacktrace_lab_golden_dir = goldens\n")
    failed = pytester.runpytest()
    failed.assert_outcomes(failed=1)
    failed.stdout.fnmatch_lines(["*metadata differs: source*"])
    assert not (pytester.path / "traces").exists()

    pytester.makeini(
        "[pytest]\nstacktrace_lab_golden_dir = goldens\nstacktrace_lab_ignore = source\n"
    )
    pytester.runpytest().assert_outcomes(passed=1)
    # The command line option wins over the ini setting.
    pytester.runpytest("--stacktrace-lab-ignore=rflags").assert_outcomes(failed=1)


def test_unknown_scenario_fails_with_one_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_it(golden_trace):
            golden_trace.check("no-such-scenario")
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*stacktrace-lab: *no-such-scenario*"])

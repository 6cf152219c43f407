"""Scripting and config: `[tool.stacktrace-lab]`, `record -o -`, golden safety, --json, --report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stacktrace_lab.cli import main
from stacktrace_lab.config import load_config
from stacktrace_lab.diff import diff_traces
from stacktrace_lab.trace import load_trace

pytest_plugins = ["pytester"]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory with a pyproject.toml, as the current directory."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\n\n[tool.stacktrace-lab]\ntraces-dir = "goldens"\n'
        'reports-dir = "out/reports"\ndiff-ignore = ["rflags"]\n'
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_config_is_read_from_the_nearest_pyproject(project: Path) -> None:
    sub = project / "a" / "b"
    sub.mkdir(parents=True)
    config = load_config(sub)
    assert config.traces_dir == project / "goldens"
    assert config.reports_dir == project / "out" / "reports"
    assert config.diff_ignore == ("rflags",)
    assert (config.max_steps, config.snapshot_limit) == (None, None)
    assert load_config().traces_dir == Path("goldens")  # the CLI: relative to the cwd


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("trace-dir = 'x'", "trace-dir: unknown setting"),
        ("max-steps = 0", "max-steps: must be a positive integer"),
        ("diff-ignore = 3", "diff-ignore: must be a list of names"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    setting: str,
    message: str,
) -> None:
    (tmp_path / "pyproject.toml").write_text(f"[tool.stacktrace-lab]\n{setting}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["record", "first-switch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pyproject.toml: [tool.stacktrace-lab] " + message in err
    assert not (tmp_path / "traces").exists()


def test_record_uses_the_configured_limits(project: Path) -> None:
    pyproject = project / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text() + "max-steps = 7\nsnapshot-limit = 64\n", encoding="utf-8"
    )
    assert main(["record", "first-switch"]) == 0
    meta = load_trace(project / "stacktrace-lab-traces" / "first-switch.parquet").metadata
    assert meta.steps == 7
    assert meta.options["snapshot_limit"] == 64
    # An option on the command line wins.
    assert main(["record", "first-switch", "-o", "x.parquet", "--max-steps", "9"]) == 0
    assert load_trace(project / "x.parquet").metadata.steps == 9


def test_diff_ignores_the_configured_names(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["record", "first-switch", "-o", "a.parquet"]) == 0
    capsys.readouterr()
    main(["diff", "a.parquet", "a.parquet"])
    assert "ignored: rflags" in capsys.readouterr().out
    main(["diff", "a.parquet", "a.parquet", "--ignore", ""])
    assert "ignored: nothing" in capsys.readouterr().out


def test_a_golden_is_never_silently_replaced(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    golden = project / "goldens" / "first-switch.parquet"
    to_golden = ["-o", str(golden)]
    assert main(["record", "first-switch", *to_golden]) == 0
    before = golden.read_bytes()
    stamp = golden.stat().st_mtime_ns
    # Byte-identical: fine, and the file is not even rewritten.
    assert main(["record", "first-switch", *to_golden]) == 0
    assert golden.stat().st_mtime_ns == stamp
    capsys.readouterr()
    # Different: refused in one line, the golden untouched, no stray temporary file.
    assert main(["record", "first-switch", "--max-steps", "5", *to_golden]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a different golden trace is already there" in err
    assert "--force" in err and golden.read_bytes() == before
    assert sorted(p.name for p in golden.parent.iterdir()) == ["first-switch.parquet"]
    # ... also when named relative to the project.
    assert (
        main(["record", "first-switch", "--max-steps", "5", "-o", "goldens/first-switch.parquet"])
        == 2
    )
    # --force replaces it.
    assert main(["record", "first-switch", "--max-steps", "5", "--force", *to_golden]) == 0
    assert load_trace(golden).metadata.steps == 5
    # Outside the goldens directory a trace is an ordinary output file.
    assert main(["record", "first-switch", "-o", "scratch.parquet"]) == 0
    assert main(["record", "first-switch", "-o", "scratch.parquet", "--max-steps", "5"]) == 0


def test_record_to_stdout_writes_the_trace(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "stacktrace_lab", "record", "first-switch", "-o", "-"],
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(b"PAR1")
    assert run.stderr.decode().startswith("-: 19 steps, stopped: spin")
    assert os.listdir(tmp_path) == []  # no file named "-", no traces/ directory
    piped = tmp_path / "piped.parquet"
    piped.write_bytes(run.stdout)
    assert main(["record", "first-switch", "-o", str(tmp_path / "file.parquet")]) == 0
    assert piped.read_bytes() == (tmp_path / "file.parquet").read_bytes()
    assert diff_traces(piped, tmp_path / "file.parquet").same


def test_record_to_a_terminal_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["record", "first-switch", "-o", "-"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stdout is a terminal" in err
    assert os.listdir(tmp_path) == []


def test_json_outputs_and_record_with_report(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["record", "first-switch-misaligned", "--report", "--json"]) == 1
    recorded = json.loads(capsys.readouterr().out)
    assert recorded["trace"] == str(
        Path("stacktrace-lab-traces") / "first-switch-misaligned.parquet"
    )
    assert recorded["steps"] == 19 and recorded["stop"]["reason"] == "spin"
    report = recorded["report"]
    assert report["directory"] == str(Path("out/reports/first-switch-misaligned"))
    assert report["holds"] is False and report["failed"] == ["alignment"]
    assert all(Path(f).is_file() for f in report["files"])

    assert main(["report", recorded["trace"], "--json"]) == 1
    again = json.loads(capsys.readouterr().out)
    assert again["directory"] == report["directory"] and again["files"] == report["files"]

    assert main(["scenarios", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    by_name = {s["name"]: s for s in listing}
    assert by_name["first-switch"]["breaks"] is None
    assert by_name["first-switch-misaligned"]["breaks"] == "alignment"


def test_the_plugin_reads_the_same_config(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml('[tool.stacktrace-lab]\ntraces-dir = "goldens"\n')
    pytester.makepyfile(
        test_it="def test_it(golden_trace):\n    golden_trace.check('first-switch', name='fs')\n"
    )
    pytester.runpytest().assert_outcomes(failed=1)  # missing: written
    assert (pytester.path / "goldens" / "fs.parquet").is_file()
    pytester.runpytest().assert_outcomes(passed=1)


def test_report_names_each_stage_to_its_progress(first_switch_trace: Path, tmp_path: Path) -> None:
    from stacktrace_lab.report.build import build_report

    stages: list[str] = []
    build_report(load_trace(first_switch_trace), tmp_path / "r", progress=stages.append)
    assert stages == [
        "reading the trace",
        "checking the invariants",
        "drawing rsp.png",
        "drawing heatmap.png",
        "writing the HTML stepper",
    ]


def test_naming_the_testpaths_is_a_whole_run(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntestpaths = t\n")
    tests = pytester.mkdir("t")
    (tests / "test_it.py").write_text(
        "def test_it(golden_trace):\n    golden_trace.check('first-switch', name='fs')\n"
    )
    pytester.runpytest()  # writes traces/fs.parquet
    (pytester.path / "traces" / "old.parquet").write_bytes(b"")
    for args in ((), ("t",)):
        result = pytester.runpytest(*args)
        result.stdout.fnmatch_lines(["goldens: 1 passed, * 1 unused"])
    result = pytester.runpytest("t/test_it.py")
    result.stdout.fnmatch_lines(["goldens: 1 passed, *; unused: not checked (partial run)"])

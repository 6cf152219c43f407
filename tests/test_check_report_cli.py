"""`check`, `report` and `demo` on the command line: output, files and exit status."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click
import pytest

from stacktrace_lab.cli import main
from stacktrace_lab.record.recorder import Recording
from stacktrace_lab.report.build import FILES

from .programs import ZERO_R12

RecordSource = Callable[..., Recording]


@pytest.fixture
def broken_trace(record_source: RecordSource) -> Path:
    return record_source(ZERO_R12).path


def test_check_passes_on_the_seed(
    first_switch_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(first_switch_trace)]) == 0
    out = capsys.readouterr().out
    for invariant in ("alignment", "ret-source", "stack-bounds", "callee-saved", "expect"):
        assert invariant in out
    assert "green[32]" in out and "movq %rcx, 0x20(%rax)" in out
    assert "all invariants hold" in out
    # gt_switch's call never comes back: counted, not called "holds" silently
    assert "callee-saved: 1 call never returned: not checked" in out


def test_check_json(first_switch_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(first_switch_trace), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {i["id"]: i["status"] for i in doc["invariants"]} == {
        "alignment": "holds",
        "ret-source": "holds",
        "stack-bounds": "holds",
        "callee-saved": "holds",
        "stop": "holds",
        "expect": "holds",
    }
    assert all(i["violations"] == [] for i in doc["invariants"])
    (planted,) = doc["planted_returns"]
    assert planted["stack"] == "green"
    assert planted["index"] == 32
    assert planted["target"] == "hello"
    assert planted["planted_insn"] == "movq %rcx, 0x20(%rax)"


def test_check_fails_with_status_1(broken_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(broken_trace)]) == 1
    out = capsys.readouterr().out
    assert "FAILS" in out
    assert "r12 changed across the call to zero_r12" in out
    assert "fails: callee-saved" in out


def test_check_json_of_a_failure(broken_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--json", str(broken_trace)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["failed"] == ["callee-saved"]
    failing = next(i for i in doc["invariants"] if i["id"] == "callee-saved")
    (violation,) = failing["violations"]
    assert set(violation) == {"invariant", "step", "rip", "symbol", "message", "source"}
    assert violation["symbol"] == "zero_r12+3"


def test_bad_input_is_status_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.parquet"
    not_a_trace = tmp_path / "notes.parquet"
    not_a_trace.write_text("hello")
    for command in ("check", "report"):
        for path in (missing, not_a_trace):
            assert main([command, str(path)]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1
            assert str(path) in err
    assert not (Path("reports") / "missing").exists()


def test_report_writes_into_the_default_directory(
    first_switch_trace: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(first_switch_trace)]) == 0
    directory = tmp_path / "reports" / "first-switch"
    assert sorted(p.name for p in directory.iterdir()) == sorted(FILES)
    out = capsys.readouterr().out
    assert "reports/first-switch/index.html" in out


def test_report_exit_status_follows_the_check(
    broken_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(broken_trace), "-o", str(tmp_path / "out")]) == 1
    assert "fails: callee-saved" in capsys.readouterr().out
    assert (tmp_path / "out" / "index.html").is_file()


def test_report_into_a_file_is_bad_input(
    first_switch_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "file"
    target.write_text("")
    assert main(["report", str(first_switch_trace), "-o", str(target)]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_demo_records_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 0
    assert (tmp_path / "stacktrace-lab-traces" / "first-switch.parquet").is_file()
    assert not (tmp_path / "traces").exists()  # the goldens' folder is the plugin's
    for name in FILES:
        assert (tmp_path / "reports" / "first-switch" / name).is_file()
    out = capsys.readouterr().out
    assert "stacktrace-lab-traces/first-switch.parquet" in out
    assert "reports/first-switch/index.html" in out


def test_end_to_end(first_switch_trace: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stacktrace_lab", *args],
            capture_output=True,
            text=True,
            check=False,
        )

    checked = run("check", "--json", str(first_switch_trace))
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["status"] == "holds"
    reported = run("report", str(first_switch_trace), "-o", str(tmp_path / "r"))
    assert reported.returncode == 0, reported.stderr
    assert (tmp_path / "r" / "heatmap.png").is_file()
    missing = run("check", str(tmp_path / "nope.parquet"))
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr


def test_help_lists_every_command_without_importing_any() -> None:
    """`--help` reads the registry: each line matches the command's own help, and no
    command module (nor pandas, matplotlib, unicorn, pyarrow) is imported."""
    from stacktrace_lab.cli import cli
    from stacktrace_lab.commands import COMMANDS, SHORT_HELP

    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None and command.help is not None
        assert " ".join(command.help.split("\n\n")[0].split()) == SHORT_HELP[name]
    probe = (
        "import sys\nfrom stacktrace_lab.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pandas', 'matplotlib', 'unicorn', 'pyarrow', 'numpy') "
        "or m.startswith('stacktrace_lab.commands.')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert re.search(r"\n  record +Record SCENARIO", out.stdout)


HEAVY_MODULES = ("pyarrow", "pandas", "matplotlib", "unicorn", "keystone", "capstone", "numpy")


def test_every_subcommand_help_imports_nothing_heavy() -> None:
    """Each `COMMAND --help` prints without loading the libraries that make start-up slow
    (issue 24: every --help under 0.3 s, measured in benchmarks/bench_startup.py). One
    interpreter asks every command in turn: what none of them loaded, none loaded alone."""
    from stacktrace_lab.commands import COMMANDS

    probe = (
        "import contextlib, io, sys\nfrom stacktrace_lab.cli import main\n"
        f"for name in {list(COMMANDS)!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        assert main([name, '--help']) == 0, name\n"
        "    assert 'Usage:' in out.getvalue(), name\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY_MODULES!r}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_defaults_copied_for_a_light_help_match_the_library() -> None:
    """`diff --context` and `who-wrote --depth` show their defaults without importing the
    diff or the explorer: the copies must stay equal to the library's own."""
    import importlib

    from stacktrace_lab.commands import diff, who_wrote
    from stacktrace_lab.diff import core

    # explore/__init__ exports a function named `provenance`: ask for the module itself.
    provenance = importlib.import_module("stacktrace_lab.explore.provenance")
    assert diff.DEFAULT_CONTEXT == core.DEFAULT_CONTEXT
    assert who_wrote.DEFAULT_DEPTH == provenance.DEFAULT_DEPTH

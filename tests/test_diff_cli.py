"""`stacktrace-lab diff A B`: exit 0 same, 1 different, 2 bad input (one line, no traceback)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stacktrace_lab.cli import main
from stacktrace_lab.diff import diff_traces
from stacktrace_lab.record.recorder import Recording
from stacktrace_lab.scenario import load_scenario

from .test_diff import ADD, ADD_STEP, FIRST_SWITCH_STACKS, first_switch_with

Record = Callable[..., Recording]


@pytest.fixture
def add_traces(record_source: Record) -> tuple[Path, Path]:
    return record_source(ADD.format(imm=0)).path, record_source(ADD.format(imm=5)).path


def test_a_builtin_recorded_twice_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert main(["record", "first-switch", "-o", str(a)]) == 0
    assert main(["record", "first-switch", "-o", str(b)]) == 0
    capsys.readouterr()
    assert main(["diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "result: SAME" in out


def test_a_changed_immediate_exits_1_and_names_rax(
    add_traces: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = add_traces
    assert main(["diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert f"first divergent step: A step {ADD_STEP} / B step {ADD_STEP}" in out
    assert "after this step: rax: A 0x1  B 0x6" in out
    assert "convention:" in out


def test_formats(add_traces: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    a, b = add_traces
    assert main(["diff", str(a), str(b), "--format", "json", "--ignore", "rflags"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["first_divergence"]["a"]["step"] == ADD_STEP
    assert doc["ignored"] == ["rflags"]
    assert "rflags" not in doc["columns"]
    assert main(["diff", str(a), str(b), "--format", "markdown", "--context", "0"]) == 1
    md = capsys.readouterr().out
    assert md.startswith("### stacktrace-lab diff: different")
    assert md.count("**>**") == 1  # only the divergent row in the context


def test_align_reports_the_inserted_nop(
    record_source: Record, capsys: pytest.CaptureFixture[str]
) -> None:
    a = record_source(first_switch_with(""), stacks=FIRST_SWITCH_STACKS).path
    b = record_source(first_switch_with("    nop\n"), stacks=FIRST_SWITCH_STACKS).path
    assert main(["diff", str(a), str(b), "--align"]) == 1
    out = capsys.readouterr().out
    assert "1 step(s) inserted in B, 0 deleted from A" in out
    assert "paired steps are equal in every compared column" in out
    # Only the inserted step and the code/source it came from differ.
    assert main(["diff", str(a), str(b), "--align", "--ignore", "source,code"]) == 1


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda d: d / "missing.parquet", "no such file"),
        (lambda d: d, "is a directory"),
        (
            lambda d: _write(d / "notes.parquet", b"not parquet at all"),
            "not a stacktrace-lab trace",
        ),
        (lambda d: _plain_parquet(d / "plain.parquet"), "no 'stacktrace_lab' metadata"),
    ],
    ids=["missing", "directory", "not-parquet", "not-a-trace"],
)
def test_bad_input_exits_2_with_one_line(
    first_switch_trace: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make_bad: Callable[[Path], Path],
    message: str,
) -> None:
    bad = make_bad(tmp_path)
    assert main(["diff", str(first_switch_trace), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and str(bad) in err


def test_truncated_trace_and_unknown_ignore_exit_2(
    first_switch_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = first_switch_trace.read_bytes()
    cut = _write(tmp_path / "cut.parquet", data[: len(data) // 2])
    assert main(["diff", str(cut), str(first_switch_trace)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["diff", str(first_switch_trace), str(first_switch_trace), "--ignore", "nope"]) == 2
    assert "unknown column or field 'nope'" in capsys.readouterr().err


def test_end_to_end_exit_codes(first_switch_trace: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stacktrace_lab", "diff", *args],
            capture_output=True,
            text=True,
            check=False,
        )

    same = run(str(first_switch_trace), str(first_switch_trace), "--format", "markdown")
    assert same.returncode == 0, same.stderr
    assert same.stdout.startswith("### stacktrace-lab diff: same")
    missing = run(str(first_switch_trace), str(tmp_path / "nope.parquet"))
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr and missing.stderr.count("\n") == 1


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _plain_parquet(path: Path) -> Path:
    pq.write_table(pa.table({"x": [1, 2, 3]}), path)
    return path


CI_DOC = Path(__file__).parent.parent / "docs" / "ci.md"


def test_ci_doc_names_only_real_commands_and_options(pytestconfig: pytest.Config) -> None:
    import re

    import click

    from stacktrace_lab.cli import cli

    text = CI_DOC.read_text()
    uses = re.findall(r"stacktrace-lab ([a-z-]+)((?: [^\n|`]*)?)", text)
    assert {"record", "check", "report", "diff"} <= {command for command, _ in uses}
    for command, rest in uses:
        if command in ("diff", "record", "check", "report"):
            found = cli.get_command(click.Context(cli), command)
            assert found is not None, command
            options = {opt for param in found.params for opt in param.opts}
            for option in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", rest):
                assert option in options, f"stacktrace-lab {command} has no {option}"
    for option in set(re.findall(r"--stacktrace-lab-[a-z-]+", text)):
        pytestconfig.getoption(option)  # raises ValueError when there is no such option
    for name in set(re.findall(r"stacktrace_lab_[a-z_]+", text)):
        pytestconfig.getini(name)  # raises ValueError when there is no such ini setting


def _first_switch_with_sub_after(label: str, tmp_path: Path) -> tuple[Path, Path]:
    """first-switch, and the same with `sub $8, %rsp` right after `label:`, both recorded."""
    source = Path(load_scenario("first-switch").path).read_text()
    changed = source.replace(f"\n{label}:\n", f"\n{label}:\n    sub $8, %rsp\n", 1)
    assert changed != source
    paths = []
    for name, text in (("a", source), ("b", changed)):
        toml = tmp_path / f"{name}.toml"
        toml.write_text(text)
        paths.append(tmp_path / f"{name}.parquet")
        assert main(["record", str(toml), "-o", str(paths[-1])]) == 0
    return paths[0], paths[1]


#: A line that reports a value difference: `name: A <value>  B <value>`.
_VALUE_LINE = re.compile(r"^\s*(\S+): A (.*?)  B (.*)$")


@pytest.mark.parametrize("label", ["main", "gt_switch", "hello"])
def test_align_never_reports_equal_values_as_different(
    label: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = _first_switch_with_sub_after(label, tmp_path)
    capsys.readouterr()
    assert main(["diff", "--align", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    # The first divergence is the inserted instruction itself, nothing before it.
    assert "first divergence: 1 step(s) inserted in B" in out
    assert "B: " in out and "subq $8, %rsp" in out.split("first divergence")[1].split("\n")[2]
    for line in out.splitlines():
        match = _VALUE_LINE.match(line)
        if match and not line.lstrip().startswith(("A:", "B:")):
            assert match.group(2) != match.group(3), line
    # The case: the address of hello in rcx and in the planted write is the same.
    assert "rcx: A 0x40003e  B 0x40003e" not in out


def test_align_after_hello_differs_only_where_the_sub_acts(tmp_path: Path) -> None:
    a, b = _first_switch_with_sub_after("hello", tmp_path)
    diff = diff_traces(a, b, align=True)
    d = diff.first_divergence
    assert d is not None and d.kind == "inserted" and d.b is not None and d.b.step == 13
    # hello's address (rcx, the planted slot, the write) compares equal; the sub moves rsp
    # and sets the flags, which the write syscall then copies into r11.
    assert {c.column for c in diff.columns} == {"rsp", "rflags", "r11"}


def test_values_are_shown_as_values(
    add_traces: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = add_traces
    main(["diff", str(a), str(b), "--ignore", "insn,rax,rbx,rflags"])
    out = capsys.readouterr().out
    # push %rbx writes rax's value: 1 against 6, as numbers, not little-endian bytes.
    assert "writes[0]: A 8 bytes at " in out and "= 0x1  B 8 bytes at" in out and "= 0x6" in out
    assert "0100000000000000" not in out

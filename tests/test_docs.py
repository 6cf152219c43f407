"""The examples in docs/trace-format.md run, and print what the page says."""

from __future__ import annotations

import re
import runpy
import shlex
from pathlib import Path

import pytest

from stacktrace_lab.cli import main
from stacktrace_lab.record.recorder import record
from stacktrace_lab.scenario import load_scenario

DOC = Path(__file__).parent.parent / "docs" / "trace-format.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture
def in_a_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    record(load_scenario("first-switch"), tmp_path / "traces" / "first-switch.parquet")
    return tmp_path


def test_pandas_example(in_a_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (block,) = _blocks("python")
    script = in_a_project / "example.py"
    script.write_text(block)
    runpy.run_path(str(script))
    out = capsys.readouterr().out
    assert "step 12: retq reads green[32]" in out
    assert "spin 'I LOVE WAKING UP ON A NEW STACK!\\n'" in out


def test_duckdb_example(in_a_project: Path) -> None:
    duckdb = pytest.importorskip("duckdb", reason="DuckDB is an optional extra")
    (query,) = _blocks("sql")
    rows = duckdb.connect().sql(query).fetchall()
    assert rows == [(12, "gt_switch+3", "retq", 32, 8, "3E00400000000000")]


SQL_DOC = Path(__file__).parent.parent / "docs" / "sql.md"


def test_sql_page_examples_print_what_the_page_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("duckdb", reason="DuckDB is an optional extra")
    monkeypatch.chdir(tmp_path)
    for name in ("first-switch", "green-threads", "green-threads-no-skip"):
        record(load_scenario(name), tmp_path / "traces" / f"{name}.parquet")
    blocks = re.findall(r"```console\n(.*?)```", SQL_DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5
    for block in blocks:
        command, _, expected = block.partition("\n")
        args = shlex.split(command.removeprefix("$ "))
        assert args[0] == "stacktrace-lab"
        assert main(args[1:]) == 0, command
        assert capsys.readouterr().out == expected, command

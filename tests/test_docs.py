"""Every example in docs/trace-format.md runs, and gives what the page says.

Python blocks run as scripts in a project with the built-in traces recorded;
each SQL block runs in DuckDB, and its result must be the table that follows
it on the page.
"""

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
TRACES = ("first-switch", "first-switch-overflow")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def _sql_with_results() -> list[tuple[str, list[list[str]]]]:
    """Each SQL block with the rows of the box table right after it (cells as text)."""
    pairs = re.findall(r"```sql\n(.*?)```\s*```\n(.*?)```", DOC.read_text(), flags=re.S)
    out = []
    for query, table in pairs:
        lines = [line for line in table.splitlines() if line.startswith("│")]
        rows = [[cell.strip() for cell in line.strip("│").split("│")] for line in lines]
        out.append((query, rows[1:]))  # without the header row
    return out


@pytest.fixture
def in_a_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in TRACES:
        record(load_scenario(name), tmp_path / "traces" / f"{name}.parquet")
    return tmp_path


def _run(block: str, where: Path, capsys: pytest.CaptureFixture[str]) -> str:
    script = where / "example.py"
    script.write_text(block)
    runpy.run_path(str(script))
    return capsys.readouterr().out


def test_every_python_example_runs(in_a_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("polars", reason="polars is in the test extra")
    pytest.importorskip("duckdb", reason="DuckDB is in the test extra")
    reading, pandas_offsets, polars_offsets, round_trip = _blocks("python")
    out = _run(reading, in_a_project, capsys)
    assert "step 12: retq reads green[32]" in out
    assert "spin 'I LOVE WAKING UP ON A NEW STACK!\\n'" in out
    out = _run(pandas_offsets, in_a_project, capsys)
    assert "pandas: wrapped max 18446744073709551568, signed min -48" in out
    assert "polars: signed min -48" in _run(polars_offsets, in_a_project, capsys)
    out = _run(round_trip, in_a_project, capsys).splitlines()
    assert out == [
        "copy-pyarrow.parquet 5 19 fixed_size_binary[48]",
        "copy-polars.parquet 5 19 fixed_size_binary[48]",
        "copy-duckdb.parquet 5 19 fixed_size_binary[48]",
    ]


def test_every_sql_example_gives_the_table_shown(in_a_project: Path) -> None:
    duckdb = pytest.importorskip("duckdb", reason="DuckDB is an optional extra")
    examples = _sql_with_results()
    assert len(examples) == len(_blocks("sql")) == 4
    for query, expected in examples:
        rows = duckdb.connect().sql(query).fetchall()
        assert [[str(value) for value in row] for row in rows] == expected, query


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


EXPLORE_DOC = Path(__file__).parent.parent / "docs" / "explore.md"


def test_explore_page_backtrace_is_what_show_prints(
    in_a_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (block,) = re.findall(r"```console\n(.*?)```", EXPLORE_DOC.read_text(), flags=re.S)
    command, _, expected = block.partition("\n")
    args = shlex.split(command.removeprefix("$ "))
    assert main(args[1:]) == 0
    shown = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    assert shown[: len(expected.splitlines())] == expected.splitlines()

"""Text from programs and traces is printed as it is (issue 26 item 4).

A symbol, a scenario name or an SQL value such as `[/]`, `[bold red]RED[/bold red]`
or `postgres:x:101:` once went through Rich's markup and emoji parsers: `[/]` was a
MarkupError traceback, `[bold]B[/bold]` lost its brackets and `:x:` became an
emoji. Each command here prints a trace forged with such names; the names must
come out byte for byte, with no emoji and no traceback. Piped tables also end
their lines without blanks (issue 24 item 7).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from stacktrace_lab.cli import main

#: label in the trace -> hostile name it gets
HOSTILE_LABELS = {"hello": "[bold red]RED[/bold red]", "gt_switch": "[/]:x:"}
HOSTILE_NAME = "postgres:x:101:[bold]B[/bold]"


@pytest.fixture(scope="module")
def hostile_trace(tmp_path_factory: pytest.TempPathFactory, first_switch_trace: Path) -> Path:
    """first-switch with its labels and scenario name replaced by markup and emoji codes."""
    parquet = pq.ParquetFile(first_switch_trace)
    doc = json.loads(parquet.metadata.metadata[b"stacktrace_lab"])
    symbols = doc["layout"]["symbols"]
    for old, new in HOSTILE_LABELS.items():
        symbols[new] = symbols.pop(old)
    doc["scenario"]["name"] = HOSTILE_NAME
    table = parquet.read()
    column = table.column("symbol").cast(pa.string())
    for old, new in HOSTILE_LABELS.items():
        column = pc.replace_substring(column, old, new)
    encoded = column.combine_chunks().dictionary_encode()
    index = table.schema.get_field_index("symbol")
    table = table.set_column(index, pa.field("symbol", encoded.type), encoded)
    table = table.replace_schema_metadata({b"stacktrace_lab": json.dumps(doc).encode()})
    target = tmp_path_factory.mktemp("hostile") / "markup.parquet"
    pq.write_table(table, target)
    return target


def run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    status = main(list(args))
    out, err = capsys.readouterr()
    assert status in (0, 1), err
    assert "Traceback" not in out + err
    assert "❌" not in out  # the emoji :x: becomes when read as an emoji code
    for line in out.splitlines():
        assert line == line.rstrip(), f"trailing blanks in {line!r}"
    return out


def test_check_prints_symbols_and_names_as_they_are(
    capsys: pytest.CaptureFixture[str], hostile_trace: Path
) -> None:
    out = run(capsys, "check", str(hostile_trace))
    assert HOSTILE_NAME in out
    assert "[/]:x:+3" in out
    assert "[bold red]RED[/bold red]" in out


def test_show_prints_symbols_as_they_are(
    capsys: pytest.CaptureFixture[str], hostile_trace: Path
) -> None:
    out = run(capsys, "show", str(hostile_trace), "--step", "12")
    assert f"{HOSTILE_NAME}  step 12" in out
    assert "[/]:x:+3" in out
    assert "[bold red]RED[/bold red]+0" in out


def test_who_wrote_prints_symbols_as_they_are(
    capsys: pytest.CaptureFixture[str], hostile_trace: Path
) -> None:
    out = run(capsys, "who-wrote", str(hostile_trace), "green:32")
    assert "-> [bold red]RED[/bold red]+0" in out


def test_diff_prints_symbols_as_they_are(
    capsys: pytest.CaptureFixture[str], hostile_trace: Path, first_switch_trace: Path
) -> None:
    out = run(capsys, "diff", str(first_switch_trace), str(hostile_trace))
    assert f"({HOSTILE_NAME}, 19 steps" in out
    assert "[bold red]RED[/bold red]+0" in out


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_query_prints_values_as_they_are(
    capsys: pytest.CaptureFixture[str], hostile_trace: Path, fmt: str
) -> None:
    pytest.importorskip("duckdb")
    sql = f"SELECT '[/]' AS a, '{HOSTILE_NAME}' AS b, symbol FROM steps WHERE step = 12"
    out = run(capsys, "query", str(hostile_trace), sql, "--format", fmt)
    for value in ("[/]", HOSTILE_NAME, "[/]:x:+3"):
        assert value in out


def test_export_and_report_name_a_hostile_trace_as_it_is(
    capsys: pytest.CaptureFixture[str], hostile_trace: Path, tmp_path: Path
) -> None:
    named = tmp_path / "[red]x[blink]:x:.parquet"
    named.write_bytes(hostile_trace.read_bytes())
    out = run(capsys, "export", str(named), "--to", "tenet")
    assert "[red]x[blink]:x:.tenet.log" in out
    out = run(capsys, "report", str(named), "-o", str(tmp_path / "[/]"))
    assert f"{tmp_path / '[/]'}/:" in out

"""`stacktrace-lab query TRACE... SQL`: SQL over traces, through DuckDB views of their files."""

from __future__ import annotations

import csv
import glob
import io
import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ..errors import BadInput
from .show import output_console


def expand(patterns: tuple[str, ...]) -> list[Path]:
    """Each argument as a path, or a glob (quoted, so the shell leaves it alone)."""
    paths: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matched = sorted(glob.glob(pattern))
            if not matched:
                raise BadInput(f"{pattern}: no trace matches this pattern")
            paths += [Path(m) for m in matched]
        else:
            paths.append(Path(pattern))
    return paths


def _plain(value: Any) -> Any:
    """A JSON/CSV value: bytes as hex, lists element-wise."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _cell(value: Any) -> str:
    plain = _plain(value)
    if plain is None:
        return ""
    if isinstance(plain, list):
        return "[" + ", ".join(_cell(v) for v in plain) + "]"
    return str(plain)


@click.command("query")
@click.argument("traces", nargs=-1, required=True)
@click.argument("sql")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="How to print the rows.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON (--format json).")
def query_command(traces: tuple[str, ...], sql: str, fmt: str, as_json: bool) -> int:
    """Run SQL over one or more traces (paths or quoted globs): views
    steps, accesses, calls, switches, planted, syscalls (and tables traces,
    regions, labels), each with a `trace` column. See docs/sql.md.

    Needs DuckDB: pip install 'stacktrace-lab[duckdb]'.
    """
    from ..explore.sql import VIEWS, DuckDBMissing, connect, open_traces, require_duckdb

    fmt = "json" if as_json else fmt

    try:
        duckdb = require_duckdb()
    except DuckDBMissing as exc:
        click.echo(f"stacktrace-lab: error: {exc}", err=True)
        return 2
    if not sql.strip():
        raise BadInput("query: the SQL is empty (give a statement, e.g. 'SELECT * FROM steps')")
    files = open_traces(expand(traces))
    con = connect(files)
    try:
        result = con.execute(sql)
        if result is None:  # DuckDB returns no result for a comment or `;` alone
            raise BadInput("query: the SQL holds no statement")
        columns = [d[0] for d in result.description or []]
        rows = result.fetchall()
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"query: {first} (views: {', '.join(VIEWS)})") from None
    if fmt == "json":
        doc = [dict(zip(columns, (_plain(v) for v in row), strict=True)) for row in rows]
        click.echo(json.dumps(doc, indent=2, default=str))
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(v) for v in row] for row in rows)
        sys.stdout.write(out.getvalue())
    else:
        table = Table(box=None, padding=(0, 1), show_header=True)
        for name in columns:
            table.add_column(name, no_wrap=True)
        for row in rows:
            table.add_row(*(_cell(v) for v in row))
        console = output_console()
        console.print(table)
        console.print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return 0

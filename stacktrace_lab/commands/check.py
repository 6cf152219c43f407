"""`stacktrace-lab check TRACE [--json] [--format ...]`: run the invariants, print the result.

`--format github|junit|sarif` prints the violations for CI, each at the
source line of its step (`stacktrace_lab/ci/`).
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from ..analysis import CheckResult, check
from ..report.invariants_json import render_json
from ..trace.reader import load_trace
from .common import ci_options, render_ci, stdout_console, table_box


@click.command("check")
@click.argument("trace", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (--format json).")
@ci_options(("text", "json"))
def check_command(trace: Path, as_json: bool, fmt: str, source: str | None) -> int:
    """Check TRACE against the invariants: exit 0 if all hold, 1 if one fails."""
    loaded = load_trace(trace)
    result = check(loaded)
    if as_json or fmt == "json":
        click.echo(render_json(result), nl=False)
    elif fmt == "text":
        print_result(result)
    else:
        from ..ci.model import from_check

        render_ci(from_check(result, loaded.metadata, source), fmt)
    return result.exit_status


def print_result(result: CheckResult) -> None:
    """The invariants as a table, then each violation on its own lines, then the planted returns.

    Every cell is a `Text`, so brackets in scenario-derived strings are not read as markup.
    """
    out = stdout_console
    table = Table(
        title=Text(f"{result.scenario}: {result.trace}"), title_justify="left", box=table_box()
    )
    table.add_column("invariant", style="bold")
    table.add_column("status")
    table.add_column("violations", justify="right")
    table.add_column("rule")
    for r in result.results:
        status = Text("holds", style="green") if r.holds else Text("FAILS", style="bold red")
        table.add_row(Text(r.id), status, Text(str(r.total)), Text(r.summary))
    out.print(table)

    for r in result.results:
        for v in r.violations:
            where = f"  step {v.step}  {v.symbol} ({v.rip:#x})"
            out.print(Text.assemble((r.id, "bold red"), where))
            out.print(Padding(Text(v.message), (0, 0, 0, 4)))
        if r.total > len(r.violations):
            more = r.total - len(r.violations)
            out.print(Padding(Text(f"... and {more} more {r.id} violations"), (0, 0, 0, 4)))

    if result.planted_total:
        planted = Table(title="planted returns", title_justify="left", box=table_box())
        for column in ("ret step", "slot", "planted at", "by", "lands on"):
            planted.add_column(column)
        for p in result.planted:
            planted.add_row(
                Text(str(p.ret_step)),
                Text(p.where),
                Text(f"step {p.planted_step} ({p.planted_symbol})"),
                Text(p.planted_insn),
                Text(p.target),
            )
        if result.planted_total > len(result.planted):
            more = result.planted_total - len(result.planted)
            planted.add_row("", "", "", "", Text(f"... and {more} more"))
        out.print(planted)
    else:
        out.print("no planted returns: every ret popped what its call pushed")
    verdict = "all invariants hold" if result.holds else f"fails: {', '.join(result.failed)}"
    out.print(Text(verdict, style="green" if result.holds else "bold red"))

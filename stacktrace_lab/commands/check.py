"""`stacktrace-lab check TRACE [--json] [--format ...]`: run the invariants, print the result.

`--format github|junit|sarif` prints the violations for CI, each at the
source line of its step (`stacktrace_lab/ci/`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich import box
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from .common import ci_options, render_ci, stdout_console, table_box, trace_callers

if TYPE_CHECKING:  # the analysis loads pyarrow: imported when the command runs, not for --help
    from ..analysis import CheckResult
    from ..analysis.model import Cause, Violation


@click.command("check")
@click.argument("trace", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (--format json).")
@ci_options(("text", "json"))
def check_command(trace: Path, as_json: bool, fmt: str, source: str | None) -> int:
    """Check TRACE against the invariants: exit 0 if all hold, 1 if one fails."""
    from ..analysis import check
    from ..report.invariants_json import render_json
    from ..trace.reader import load_trace

    loaded = load_trace(trace)
    result = check(loaded)
    if as_json or fmt == "json":
        click.echo(render_json(result), nl=False)
    elif fmt == "text":
        print_result(result)
        from ..report.threads import threads_summary

        threads = threads_summary(loaded.metadata)
        if threads:  # each thread is judged on its own stack (docs/invariants.md)
            stdout_console.print(Text(threads))
    else:
        from ..ci.model import from_check

        report = from_check(result, loaded.metadata, source, trace_callers(loaded))
        render_ci(report, fmt)
    return result.exit_status


#: Causes shown in full in the terminal (all are in --json and the report).
MAX_CAUSES_SHOWN = 5
#: Planted returns listed in the terminal.
MAX_PLANTED_SHOWN = 8


def print_result(result: CheckResult) -> None:
    """Causes first: the invariants as a table, then each cause with its first violation,
    source line and consequences, then notes, the planted returns and the verdict.
    Sized to fit on one screen; `--json` and the report have everything.

    Every cell is a `Text`, so brackets in scenario-derived strings are not read as markup.
    """
    out = stdout_console
    out.print(Text(f"{result.scenario}: {result.trace}", style="bold"))
    table = Table(box=table_box(box.SIMPLE_HEAD), show_edge=False)
    table.add_column("invariant", style="bold")
    table.add_column("status")
    table.add_column("causes", justify="right")
    table.add_column("violations", justify="right")
    for r in result.results:
        status = Text("holds", style="green") if r.holds else Text("FAILS", style="bold red")
        count = str(len(r.causes)) if r.causes else ("-" if r.holds else "0")
        table.add_row(Text(r.id), status, Text(count), Text(str(r.total)))
    out.print(table)

    causes = result.causes
    if causes:
        out.print(Text(result.headline, style="bold red"))
    for n, cause in enumerate(causes[:MAX_CAUSES_SHOWN], start=1):
        _print_cause(n, len(causes), cause)
    if len(causes) > MAX_CAUSES_SHOWN:
        more = len(causes) - MAX_CAUSES_SHOWN
        out.print(Text(f"... and {more} more causes (--json lists them all)"))

    for r in result.results:
        for note in r.notes:
            out.print(Text.assemble((f"{r.id}: ", "bold"), note))

    if result.planted_total:
        _print_planted(result)
    elif not any(note for r in result.results if r.id == "ret-source" for note in r.notes):
        out.print("no planted returns: every ret popped what its call pushed")
    else:
        out.print("no planted returns in the trace")
    if result.holds:
        verdict = Text("all invariants hold", style="green")
    else:
        verdict = Text(f"fails: {', '.join(result.failed)} ({result.headline})", style="bold red")
    out.print(verdict)


def _print_cause(n: int, of: int, cause: Cause) -> None:
    from ..analysis.model import kind_title

    out = stdout_console
    times = f"{cause.count} times, steps {cause.first_step}-{cause.last_step}"
    once = f"step {cause.first_step}"
    site = cause.site_symbol + (f" ({cause.site_source})" if cause.site_source else "")
    out.print(
        Text.assemble(
            (f"cause {n} of {of}: ", "bold"),
            (cause.invariant, "bold red"),
            f", {kind_title(cause.kind)} ",
            f"({times if cause.count > 1 else once}), at {site}",
        )
    )
    _print_violation(cause.first, 2)
    for c in cause.consequences:
        out.print(
            Padding(
                Text(f"then {c.summary}, the first:"),
                (0, 0, 0, 2),
            )
        )
        _print_violation(c.example, 4)


def _print_violation(v: Violation, indent: int) -> None:
    where = f"step {v.step}{v.in_thread}  {v.symbol} ({v.rip:#x})"
    if v.source:
        where += f"  {v.source}"
    stdout_console.print(Padding(Text(where, style="dim"), (0, 0, 0, indent)))
    stdout_console.print(Padding(Text(v.message), (0, 0, 0, indent + 2)))


def _print_planted(result: CheckResult) -> None:
    out = stdout_console
    out.print(Text(f"planted returns ({result.planted_total}):", style="bold"))
    for p in result.planted[:MAX_PLANTED_SHOWN]:
        out.print(
            Padding(
                Text(f"step {p.ret_step}: ret pops {p.target} from {p.where}: {p.landing}"),
                (0, 0, 0, 2),
            )
        )
        if p.planted_step is None:
            line = "planted before the trace began (the store is not in the trace)"
        else:
            where = p.planted_source or p.planted_symbol
            line = f"planted at step {p.planted_step} by `{p.planted_insn}` ({where})"
        out.print(Padding(Text(line), (0, 0, 0, 4)))
    shown = min(len(result.planted), MAX_PLANTED_SHOWN)
    if result.planted_total > shown:
        out.print(Padding(Text(f"... and {result.planted_total - shown} more"), (0, 0, 0, 2)))

"""`stacktrace-lab report TRACE [-o DIR]`: plots, HTML, Markdown and JSON of one trace."""

from __future__ import annotations

from pathlib import Path

import click

from ..report.build import Report, build_report, default_report_dir
from ..trace.reader import load_trace


@click.command("report")
@click.argument("trace", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Directory to write [default: reports/<trace name>/].",
)
def report_command(trace: Path, output: Path | None) -> int:
    """Write the report of TRACE: exit 0 if every invariant holds, 1 if one fails."""
    loaded = load_trace(trace)
    report = build_report(loaded, output or default_report_dir(trace))
    print_written(report)
    return report.check.exit_status


def print_written(report: Report) -> None:
    verdict = (
        "every invariant holds"
        if report.check.holds
        else "fails: " + ", ".join(report.check.failed)
    )
    click.echo(f"{report.directory}/: {verdict}")
    for path in report.files:
        click.echo(f"  {path}")

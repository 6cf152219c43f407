"""`stacktrace-lab report TRACE [-o DIR] [--json]`: plots, HTML, Markdown and JSON of one trace."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..config import load_config
from ..errors import BadInput
from ..safe_output import refuse_dash_folder
from .common import stderr_console

if TYPE_CHECKING:  # matplotlib and pyarrow: imported when the command runs, not for --help
    from ..report.build import Report


@click.command("report")
@click.argument("trace", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Directory to write [default: <reports-dir>/<trace name>/, reports-dir from "
    "[tool.stacktrace-lab], else reports].",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def report_command(trace: Path, output: Path | None, as_json: bool) -> int:
    """Write the report of TRACE: exit 0 if every invariant holds, 1 if one fails."""
    from ..report.build import build_report, default_report_dir
    from ..trace.reader import load_trace

    refuse_dash_folder("-o", output)
    if not os.path.lexists(trace):
        raise BadInput(f"{trace}: no such file{_suggestion(trace)}")
    loaded = load_trace(trace)
    directory = output or default_report_dir(trace, load_config().reports_dir)
    with stage_progress(f"report of {trace.name}") as progress:
        report = build_report(loaded, directory, progress=progress)
    if as_json:
        click.echo(json.dumps(report_summary(report), indent=2, sort_keys=True))
    else:
        print_written(report)
    return report.check.exit_status


def _suggestion(trace: Path) -> str:
    """`report first-switch`: the trace of that name, where `record` puts it."""
    config = load_config()
    named = trace.name if trace.suffix == ".parquet" else f"{trace.name}.parquet"
    for folder in (config.record_dir, config.traces_dir):
        if (folder / named).is_file():
            return f" (did you mean {folder / named}?)"
    from ..scenario import builtin_names

    if trace.name in builtin_names():
        recorded = config.record_dir / named
        return f" (record it first: stacktrace-lab record {trace.name}, then report {recorded})"
    return ""


@contextmanager
def stage_progress(label: str) -> Iterator[Callable[[str], None] | None]:
    """A spinner naming the current stage, on a terminal (stderr) only."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.text import Text

    # Text, not str: a spinner reads a str as markup, and a trace's name is the user's.
    with stderr_console.status(Text(label)) as status:

        def update(stage: str) -> None:
            status.update(Text(f"{label}: {stage}"))

        yield update


def report_summary(report: Report) -> dict[str, Any]:
    return {
        "directory": str(report.directory),
        "files": [str(p) for p in report.files],
        "holds": report.check.holds,
        "failed": list(report.check.failed),
    }


def print_written(report: Report) -> None:
    verdict = (
        "every invariant holds"
        if report.check.holds
        else "fails: " + ", ".join(report.check.failed)
    )
    click.echo(f"{report.directory}/: {verdict}")
    for path in report.files:
        click.echo(f"  {path}")

"""`stacktrace-lab export TRACE --to perfetto|tenet`: the trace for another viewer."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import click

#: `-o -`: standard output.
STDOUT = Path("-")

SUFFIXES = {"perfetto": ".perfetto.json", "tenet": ".tenet.log"}


@click.command("export")
@click.argument("trace", type=click.Path(path_type=Path))
@click.option(
    "--to",
    "target",
    type=click.Choice(sorted(SUFFIXES)),
    required=True,
    help="perfetto: Chrome trace-event JSON (Perfetto UI, chrome://tracing); "
    "tenet: Tenet's text trace.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, allow_dash=True),
    help="Output file, or - for stdout (default: next to TRACE, TRACE.perfetto.json or "
    "TRACE.tenet.log).",
)
def export_command(trace: Path, target: str, output: Path | None) -> int:
    """Export TRACE for Perfetto UI (one track per stack, a slice per call, instants at
    switches and violations) or for the Tenet trace explorer."""
    from ..safe_output import check_target
    from ..trace.reader import load_trace

    to_stdout = output == STDOUT
    out = output or trace.with_name(trace.name.removesuffix(".parquet") + SUFFIXES[target])
    if not to_stdout:
        check_target(out)  # a device, FIFO or directory: refused before the work
    loaded = load_trace(trace)
    destination: Path | TextIO = sys.stdout if to_stdout else out
    # With -o - the data is the output: the summary goes to stderr.
    if target == "perfetto":
        from ..export.perfetto import write_chrome_trace

        count = write_chrome_trace(loaded, destination)
        summary = f"{out}: {count} trace events (open it in https://ui.perfetto.dev)"
    else:
        from ..export.tenet import write_tenet

        count = write_tenet(loaded, destination)
        summary = f"{out}: {count} lines"
    click.echo(summary, err=to_stdout)
    return 0

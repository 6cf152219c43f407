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
@click.option(
    "--thread",
    type=int,
    default=None,
    metavar="N",
    help="tenet: the thread to export, for a threaded program (Tenet follows one "
    "thread; default 1). Perfetto shows every thread, a track each.",
)
def export_command(trace: Path, target: str, output: Path | None, thread: int | None) -> int:
    """Export TRACE for Perfetto UI (one track per stack, a slice per call, instants at
    switches and violations) or for the Tenet trace explorer."""
    from ..errors import BadInput
    from ..safe_output import check_target
    from ..trace.reader import load_trace

    if thread is not None and target != "tenet":
        raise BadInput(f"{trace}: --thread is for --to tenet (Perfetto shows every thread)")

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
        from ..export.tenet import thread_numbers, write_tenet

        chosen = 1 if thread is None else thread
        count = write_tenet(loaded, destination, chosen)
        summary = f"{out}: {count} lines"
        threads = thread_numbers(loaded)
        if len(threads) > 1:
            summary += f" of thread {chosen} ({len(threads)} threads: --thread N for another)"
    click.echo(summary, err=to_stdout)
    return 0

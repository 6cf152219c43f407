"""`stacktrace-lab export TRACE --to perfetto|tenet`: the trace for another viewer."""

from __future__ import annotations

from pathlib import Path

import click

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
    type=click.Path(path_type=Path),
    help="Output file (default: next to TRACE, TRACE.perfetto.json or TRACE.tenet.log).",
)
def export_command(trace: Path, target: str, output: Path | None) -> int:
    """Export TRACE for Perfetto UI (one track per stack, a slice per call, instants at
    switches and violations) or for the Tenet trace explorer."""
    from ..trace.reader import load_trace

    loaded = load_trace(trace)
    out = output or trace.with_name(trace.name.removesuffix(".parquet") + SUFFIXES[target])
    if target == "perfetto":
        from ..export.perfetto import write_chrome_trace

        count = write_chrome_trace(loaded, out)
        click.echo(f"{out}: {count} trace events (open it in https://ui.perfetto.dev)")
    else:
        from ..export.tenet import write_tenet

        count = write_tenet(loaded, out)
        click.echo(f"{out}: {count} lines")
    return 0

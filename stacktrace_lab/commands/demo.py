"""`stacktrace-lab demo`: record the seed scenario and report it, in one command."""

from __future__ import annotations

from pathlib import Path

import click

from ..record.recorder import record
from ..report.build import build_report
from ..scenario import load_scenario
from ..trace.reader import load_trace
from .report import print_written

DEMO_SCENARIO = "first-switch"


@click.command("demo")
def demo_command() -> int:
    """Record first-switch into traces/ and write its report into reports/first-switch/."""
    scenario = load_scenario(DEMO_SCENARIO)
    recording = record(scenario, Path("traces") / f"{scenario.name}.parquet")
    meta = recording.metadata
    click.echo(f"recorded {recording.path}: {meta.steps} steps, stopped: {meta.stop.reason}")
    report = build_report(load_trace(recording.path), Path("reports") / scenario.name)
    print_written(report)
    click.echo(f"open {report.directory / 'index.html'} in a browser")
    return report.check.exit_status

"""`stacktrace-lab demo`: record the seed scenario and report it, in one command."""

from __future__ import annotations

import click

from ..config import load_config
from ..record.recorder import RecordOptions
from ..report.build import build_report
from ..scenario import load_scenario
from ..trace.reader import load_trace
from .record import record_safely
from .report import print_written

DEMO_SCENARIO = "first-switch"


@click.command("demo")
def demo_command() -> int:
    """Record first-switch into traces/ and write its report into reports/first-switch/."""
    config = load_config()
    scenario = load_scenario(DEMO_SCENARIO)
    # As `record`: a different golden already there is not silently replaced.
    target = config.traces_dir / f"{scenario.name}.parquet"
    meta = record_safely(scenario, target, RecordOptions()).metadata
    click.echo(f"recorded {target}: {meta.steps} steps, stopped: {meta.stop.reason}")
    report = build_report(load_trace(target), config.reports_dir / scenario.name)
    print_written(report)
    click.echo(f"open {report.directory / 'index.html'} in a browser")
    return report.check.exit_status

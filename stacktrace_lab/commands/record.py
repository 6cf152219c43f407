"""`stacktrace-lab record [SCENARIO] [-o FILE]`."""

from __future__ import annotations

from pathlib import Path

import click

from ..record.recorder import RecordOptions, record
from ..scenario import load_scenario
from ..trace.format import DEFAULT_SNAPSHOT_LIMIT
from .common import step_progress


def default_trace_path(name: str) -> Path:
    return Path("traces") / f"{name}.parquet"


@click.command("record")
@click.argument("scenario", default="first-switch")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Trace file to write [default: traces/<name>.parquet].",
)
@click.option("--max-steps", type=int, help="Stop after this many steps [default: the scenario's].")
@click.option(
    "--snapshot-limit",
    type=int,
    default=DEFAULT_SNAPSHOT_LIMIT,
    show_default=True,
    help="Bytes of each stack (its top) stored per step.",
)
def record_command(
    scenario: str, output: Path | None, max_steps: int | None, snapshot_limit: int
) -> int:
    """Record SCENARIO (a built-in name or a .toml file) into a trace."""
    loaded = load_scenario(scenario)
    options = RecordOptions(max_steps=max_steps, snapshot_limit=snapshot_limit)
    target = output or default_trace_path(loaded.name)
    with step_progress(options.max_steps or loaded.max_steps, f"recording {loaded.name}") as bar:
        recording = record(loaded, target, options, progress=bar)
    meta = recording.metadata
    click.echo(
        f"{recording.path}: {meta.steps} steps, stopped: {meta.stop.reason} ({meta.stop.detail})"
    )
    return 0

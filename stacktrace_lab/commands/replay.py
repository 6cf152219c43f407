"""`stacktrace-lab replay TRACE`: re-run the trace's program and confirm every step."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .progress import step_progress


@click.command("replay")
@click.argument("trace", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@click.option(
    "--program",
    type=click.Path(path_type=Path),
    help="For a trace of a program: where the program is now (its sha256 must match).",
)
def replay_command(trace: Path, as_json: bool, program: Path | None) -> int:
    """Re-run TRACE from its own code, layout and initial state; compare every step.

    Exit 0 when every step matches, 1 naming the first step and column that differ.
    """
    from ..replay import replay
    from ..trace.reader import load_trace

    loaded = load_trace(trace)
    with step_progress(loaded.num_rows, f"replaying {trace.name}") as bar:
        result = replay(loaded, progress=bar, binary=str(program) if program else None)
    difference = result.difference
    if as_json:
        doc = {
            "trace": str(trace),
            "matches": result.matches,
            "steps": loaded.num_rows,
            "steps_matched": result.steps_compared,
            "difference": difference.to_json() if difference else None,
        }
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    elif difference is None:
        meta = loaded.metadata
        click.echo(
            f"{trace}: replay matches all {loaded.num_rows} steps "
            f"(stop: {meta.stop.reason} at step {meta.stop.step}; output and final registers too)"
        )
    else:
        click.echo(f"{trace}: replay differs at step {difference.step}: {difference.detail}")
    return 0 if difference is None else 1

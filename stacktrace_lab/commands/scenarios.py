"""`stacktrace-lab scenarios [--json]`: the built-in scenarios."""

from __future__ import annotations

import json

import click
from rich.table import Table

from ..scenario import builtin_names, load_scenario
from .common import stdout_console, table_box


@click.command("scenarios")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def scenarios_command(as_json: bool) -> int:
    """List the built-in scenarios with what each shows."""
    scenarios = [load_scenario(name) for name in builtin_names()]
    if as_json:
        listing = [
            {"name": s.name, "breaks": s.breaks, "description": s.description} for s in scenarios
        ]
        click.echo(json.dumps(listing, indent=2))
        return 0
    table = Table(show_lines=False, box=table_box())
    table.add_column("name", style="bold")
    table.add_column("breaks")
    table.add_column("description")
    for scenario in scenarios:
        table.add_row(scenario.name, scenario.breaks or "-", scenario.description)
    stdout_console.print(table)
    return 0

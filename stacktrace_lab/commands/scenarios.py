"""`stacktrace-lab scenarios`: the built-in scenarios."""

from __future__ import annotations

import click
from rich.table import Table

from ..scenario import builtin_names, load_scenario
from .common import stdout_console, table_box


@click.command("scenarios")
def scenarios_command() -> int:
    """List the built-in scenarios with what each shows."""
    table = Table(show_lines=False, box=table_box())
    table.add_column("name", style="bold")
    table.add_column("breaks")
    table.add_column("description")
    for name in builtin_names():
        scenario = load_scenario(name)
        table.add_row(name, scenario.breaks or "-", scenario.description)
    stdout_console.print(table)
    return 0

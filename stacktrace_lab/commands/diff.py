"""`stacktrace-lab diff A B`: exit 0 same, 1 different, 2 bad input."""

from __future__ import annotations

from pathlib import Path

import click

from ..diff import RENDERERS, diff_traces, render
from ..diff.core import DEFAULT_CONTEXT


@click.command("diff")
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option(
    "--ignore",
    "ignore",
    default="",
    metavar="COLUMN,...",
    help="Columns (rflags, reads, a stack name, globs) or metadata fields (source, "
    "symbols, ...) to leave out of the comparison.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(sorted(RENDERERS)),
    default="text",
    show_default=True,
    help="markdown suits a CI job summary; json has the first divergent step "
    "under 'first_divergence'.",
)
@click.option(
    "--align",
    is_flag=True,
    help="Pair steps by label and instruction instead of step number, so an inserted "
    "instruction shows as one inserted step.",
)
@click.option(
    "--context",
    type=click.IntRange(0, 50),
    default=DEFAULT_CONTEXT,
    show_default=True,
    help="Steps of context shown around the first divergence.",
)
def diff_command(a: Path, b: Path, ignore: str, fmt: str, align: bool, context: int) -> int:
    """Compare trace A (the reference, e.g. a golden) with trace B."""
    result = diff_traces(a, b, ignore=ignore.split(","), align=align, context=context)
    click.echo(render(result, fmt), nl=False)
    return 0 if result.same else 1

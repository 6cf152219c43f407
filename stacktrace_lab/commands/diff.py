"""`stacktrace-lab diff A B`: exit 0 same, 1 different, 2 bad input."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import load_config
from .common import ci_options, render_ci, trace_callers

#: Steps of context around the first divergence (diff.core's default; kept here so
#: `--help` does not load the diff and pyarrow).
DEFAULT_CONTEXT = 3


@click.command("diff")
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option(
    "--ignore",
    "ignore",
    default=None,
    metavar="COLUMN,...",
    help="Columns (rflags, reads, a stack name, globs) or metadata fields (source, "
    "symbols, ...) to leave out of the comparison [default: diff-ignore of "
    "[tool.stacktrace-lab] in pyproject.toml, else nothing].",
)
@ci_options(("text", "json", "markdown"))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (--format json).")
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
def diff_command(
    a: Path,
    b: Path,
    ignore: str | None,
    fmt: str,
    source: str | None,
    align: bool,
    context: int,
    as_json: bool,
) -> int:
    """Compare trace A (the reference, e.g. a golden) with trace B.

    markdown suits a CI job summary; json has the first divergent step under
    'first_divergence'; github, junit and sarif point at B's source line there.
    """
    from ..diff import RENDERERS, diff_traces, render

    fmt = "json" if as_json else fmt
    names = ignore.split(",") if ignore is not None else load_config().diff_ignore
    result = diff_traces(a, b, ignore=names, align=align, context=context)
    if fmt in RENDERERS:
        click.echo(render(result, fmt), nl=False)
    else:
        from ..ci.model import from_diff
        from ..trace import load_trace

        new = load_trace(b)
        render_ci(from_diff(result, new.metadata, source, trace_callers(new)), fmt)
    return 0 if result.same else 1

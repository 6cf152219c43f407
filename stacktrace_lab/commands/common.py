"""Helpers shared by the commands."""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, TypeVar, cast

import click
from rich import box
from rich.console import Console

if TYPE_CHECKING:
    from ..ci.model import Callers, CiReport
    from ..trace.reader import Trace


#: Outside a terminal (a CI log, a pipe) nothing is wrapped at 80 columns:
#: a log line is as long as its content.
class LogLines(io.TextIOBase):
    """sys.stdout (looked up at each write, as tests swap it) without trailing blanks."""

    def write(self, text: str) -> int:
        return sys.stdout.write(re.sub(r"[ \t]+\n", "\n", text))

    def flush(self) -> None:
        sys.stdout.flush()


_LOG_WIDTH = 1000  # wide enough that no table cell is wrapped
#: Text from programs and traces (symbols, instructions, SQL values, file names) is
#: printed as it is: no console reads `[bold]` as markup or `:x:` as an emoji. Styles
#: come only from `Text` objects the commands build.
PLAIN: dict[str, Any] = {"highlight": False, "markup": False, "emoji": False}
stdout_console = (
    Console(**PLAIN)
    if sys.stdout.isatty()
    else Console(file=cast("IO[str]", LogLines()), width=_LOG_WIDTH, soft_wrap=True, **PLAIN)
)
stderr_console = Console(stderr=True, **PLAIN)

F = TypeVar("F", bound=Callable[..., Any])

#: The formats every command with CI output has, besides its own.
CI_FORMATS = ("github", "junit", "sarif")


def table_box(on_terminal: box.Box = box.HEAVY_HEAD) -> box.Box | None:
    """`on_terminal` borders on a terminal; none in a log or a pipe (plain aligned columns)."""
    return on_terminal if stdout_console.is_terminal else None


def ci_options(own: tuple[str, ...]) -> Callable[[F], F]:
    """`--format` (the command's own formats and the CI ones) and `--source`."""

    def decorate(command: F) -> F:
        command = click.option(
            "--source",
            metavar="FILE",
            help="The scenario file as this checkout names it, for file:line in CI "
            "formats [default: as recorded in the trace, else <scenario>.toml].",
        )(command)
        return click.option(
            "--format",
            "fmt",
            type=click.Choice([*own, *CI_FORMATS]),
            default=own[0],
            show_default=True,
            help="github: workflow annotations at the source line; junit: JUnit XML; "
            "sarif: SARIF 2.1.0.",
        )(command)

    return decorate


def trace_callers(trace: Trace) -> Callers:
    """For CI output: the return addresses of the frames running at a step, innermost
    first (the backtrace is built once, on the first finding that asks)."""
    from ..analysis.events import derive_facts
    from ..explore.backtrace import FrameHistory, backtraces, frame_history

    built: list[tuple[Any, FrameHistory]] = []

    def callers(step: int) -> list[int]:
        if not built:
            facts = derive_facts(trace)
            built.append((facts, frame_history(facts)))
        facts, history = built[0]
        for stack in backtraces(facts, step, history):
            if stack.running:
                return [frame.addr for frame in stack.frames[1:] if frame.addr]
        return []

    return callers


def render_ci(report: CiReport, fmt: str) -> None:
    from ..ci import render

    click.echo(render(report, fmt), nl=False)

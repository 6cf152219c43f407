"""`stacktrace-lab show TRACE`: one step of a trace, as a debugger shows it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar, cast

import click
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ..errors import BadInput
from .common import PLAIN, LogLines, stdout_console

if TYPE_CHECKING:  # the explorer loads pyarrow and capstone: imported when the command runs
    from ..explore.backtrace import FrameLine, StackBacktrace
    from ..explore.view import StepView
    from ..trace.format import TraceMetadata
    from ..trace.reader import Trace

F = TypeVar("F", bound=Callable[..., Any])

#: Output width when stdout is not a terminal: the telescope's rows stay whole.
PIPED_WIDTH = 160


def step_options(function: F) -> F:
    """`--step`, `--at` and `--first-planted-ret`: the ways to name a step (who-wrote too)."""
    function = click.option(
        "--first-planted-ret",
        is_flag=True,
        help="The first ret that pops an address planted by an ordinary store (a stack switch).",
    )(function)
    function = click.option(
        "--at", "at", metavar="SYMBOL", help="The first step at SYMBOL (label or label+offset)."
    )(function)
    function = click.option("--step", type=int, help="Step number (negative counts from the end).")(
        function
    )
    return function


def _hex(value: int) -> str:
    return f"{value:#018x}"


def _header(trace: Trace, view: StepView) -> Text:
    row = view.row
    text = Text()
    text.append(f"{trace.metadata.scenario.name}", style="bold")
    text.append(f"  step {row.step} of 0..{view.last_step}  ")
    if "threads" in trace.metadata.extra:  # a threaded program: which thread ran it
        text.append(f"thread {row.thread}  ", style="bold magenta")
    text.append(f"{row.rip:#x} {row.symbol}  ", style="cyan")
    text.append(row.insn, style="bold green")
    return text


def _registers(view: StepView) -> Table:
    table = Table(
        title="registers (before the instruction; yellow: changed by the last step)",
        title_justify="left",
        box=None,
        padding=(0, 1),
    )
    table.add_column("reg")
    table.add_column("value", no_wrap=True)
    table.add_column("after this step", no_wrap=True)
    table.add_column("points to")
    for reg in view.registers:
        style = "bold yellow" if reg.changed else ""
        after = _hex(reg.after) if reg.after is not None else ""
        table.add_row(reg.name, Text(_hex(reg.value), style=style), after, reg.points_to)
    return table


def short_source(source: tuple[str, int] | None) -> str:
    """`file:line`; a long path cut to its last two parts (Rust std: /rustc/<hash>/...)."""
    if source is None:
        return ""
    file, line = source
    parts = file.split("/")
    if len(file) > 32 and len(parts) > 2:
        file = ".../" + "/".join(parts[-2:])
    return f"{file}:{line}"


def _listing(view: StepView, meta: TraceMetadata) -> Table:
    table = Table(
        title="executed instructions around rip", title_justify="left", box=None, padding=(0, 1)
    )
    table.add_column("")
    table.add_column("address", no_wrap=True)
    table.add_column("symbol", no_wrap=True)
    table.add_column("instruction", no_wrap=True)
    sources = [meta.source_line(insn.addr) for insn in view.listing]
    if any(sources):
        table.add_column("source", no_wrap=True)
    for insn, source in zip(view.listing, sources, strict=True):
        current = insn.addr == view.row.rip
        style = "bold reverse" if current else ""
        cells = ["=>" if current else "", f"{insn.addr:#x}", insn.symbol, insn.text]
        if any(sources):
            cells.append(short_source(source))
        table.add_row(*cells, style=style)
    return table


def _accesses(trace: Trace, view: StepView) -> Text:
    from ..explore.telescope import describe_pointer

    meta = trace.metadata
    text = Text()
    for verb, accesses in (("reads", view.row.reads), ("writes", view.row.writes)):
        for a in accesses:
            where = describe_pointer(meta, a.addr) or f"{a.addr:#x}"
            what = describe_pointer(meta, a.value) if a.size == 8 else ""
            text.append(f"{verb} {a.size} bytes at {where} ({a.addr:#x}): {a.value:#x}")
            text.append(f" -> {what}\n" if what else "\n")
    return text


def _telescope(view: StepView) -> Table | Text:
    tel = view.telescope
    if tel is None:
        return Text(f"rsp = {view.row.rsp:#x} is in no stack region", style="bold red")
    region = tel.region
    shown = "" if tel.whole else f", showing {len(tel.slots)} slots around rsp"
    table = Table(
        title=(
            f"stack {region.display}: {region.base:#x}..{region.top:#x}, "
            f"{region.size} bytes, rsp = {region.name}[{tel.rsp - region.base}]{shown}"
        ),
        title_justify="left",
        box=None,
        padding=(0, 1),
    )
    table.add_column("")
    table.add_column("index", justify="right")
    table.add_column("address", no_wrap=True)
    table.add_column("value", no_wrap=True)
    table.add_column("points to", no_wrap=True)
    table.add_column("last written")
    rbp = next(r.value for r in view.registers if r.name == "rbp")
    for slot in tel.slots:
        marks = [name for name, addr in (("rsp", tel.rsp), ("rbp", rbp)) if slot.holds(addr)]
        if slot.written_at is None:
            written = "-"
        else:
            writer = f" {slot.writer.text}" if slot.writer else ""
            written = f"step {slot.written_at}{writer}"
        table.add_row(
            "->".join([",".join(marks), ""]) if marks else "",
            str(slot.index),
            f"{slot.addr:#x}",
            _hex(slot.value),
            slot.points_to,
            written,
            style="bold" if slot.holds(tel.rsp) else "",
        )
    return table


def _entered(frame: FrameLine) -> str:
    from ..explore.backtrace import RETURNED_TO

    if frame.how == RETURNED_TO:
        return "not seen: a ret returned to it"
    if frame.entered_step < 0:
        return "at the start"
    return f"step {frame.entered_step} by {frame.how}"


def _backtraces(
    found: list[StackBacktrace],
    waiting: dict[int, int] | None = None,
    shown: dict[str, str] | None = None,
) -> Table:
    """`waiting`: for a threaded program, the thread of each suspended stack's last row
    when that is another thread than the running one (it waits for the scheduler).
    `shown`: what a person calls each stack, by region name (`thread 2 stack`)."""
    table = Table(
        title="backtraces (innermost frame first; suspended stacks where they left)",
        title_justify="left",
        box=None,
        padding=(0, 1),
    )
    table.add_column("stack", no_wrap=True)
    table.add_column("#", justify="right")
    table.add_column("function", no_wrap=True)
    table.add_column("at", no_wrap=True)
    table.add_column("source", no_wrap=True)
    table.add_column("entered")
    for bt in found:
        state = "running" if bt.running else f"suspended at step {bt.at_step}"
        if not bt.running and waiting and bt.at_step in waiting:
            state = f"thread {waiting[bt.at_step]}, waiting since step {bt.at_step}"
        for depth, frame in enumerate(bt.frames):
            entered = _entered(frame)
            table.add_row(
                f"{(shown or {}).get(bt.stack, bt.stack)} ({state})" if depth == 0 else "",
                str(depth),
                frame.function,
                f"{frame.addr:#x} {frame.location}" if frame.addr else frame.location,
                frame.source or "",
                entered,
                style="bold" if bt.running and depth == 0 else "",
            )
    return table


def output_console() -> Console:
    """The terminal's console; when piped, one wide enough that rows do not wrap."""
    if stdout_console.is_terminal:
        return stdout_console
    return Console(file=cast("IO[str]", LogLines()), width=PIPED_WIDTH, **PLAIN)


def _other_threads(trace: Trace, view: StepView, found: list[StackBacktrace]) -> dict[int, int]:
    """The thread of each suspended stack's last row, where it is not the running one."""
    if "threads" not in trace.metadata.extra:
        return {}
    out = {}
    for bt in found:
        if not bt.running and 0 <= bt.at_step < trace.num_rows:
            thread = int(trace.slice(bt.at_step, bt.at_step + 1, ["thread"]).column(0)[0].as_py())
            if thread != view.row.thread:
                out[bt.at_step] = thread
    return out


def render(trace: Trace, view: StepView, found: list[StackBacktrace]) -> Group:
    parts: list[Any] = [_header(trace, view), Text("")]
    if found:
        shown = {r.name: r.shown_name for r in trace.metadata.stacks}
        parts += [_backtraces(found, _other_threads(trace, view, found), shown), Text("")]
    parts += [_registers(view), Text("")]
    parts += [_listing(view, trace.metadata), Text("")]
    accesses = _accesses(trace, view)
    if accesses.plain:
        parts += [accesses]
    parts += [_telescope(view)]
    return Group(*parts)


@click.command("show")
@click.argument("trace", type=click.Path(path_type=Path))
@step_options
@click.option(
    "--context",
    type=click.IntRange(0, 100),
    default=4,
    show_default=True,
    help="Instructions shown either side of rip.",
)
@click.option("--region", metavar="NAME", help="Show this stack instead of the one rsp is in.")
@click.option("--json", "as_json", is_flag=True, help="Print the view as JSON.")
def show_command(
    trace: Path,
    step: int | None,
    at: str | None,
    first_planted_ret: bool,
    context: int,
    region: str | None,
    as_json: bool,
) -> int:
    """Show one step of TRACE: every stack's backtrace, registers, code around rip and the
    stack telescope."""
    from ..analysis.events import derive_facts
    from ..explore.backtrace import backtraces
    from ..explore.select import choose_step
    from ..explore.view import step_view
    from ..trace.reader import load_trace

    loaded = load_trace(trace)
    chosen = choose_step(loaded, step, at, first_planted_ret)
    shown_region = None
    if region is not None:
        memory = {r.name: r for r in loaded.metadata.regions if r.kind != "code"}
        if region not in memory:
            names = ", ".join(memory)
            raise BadInput(f"{trace}: no stack or data region '{region}' (regions: {names})")
        shown_region = memory[region]
    view = step_view(loaded, chosen, context, shown_region)
    found = backtraces(derive_facts(loaded), chosen)
    if as_json:
        doc = view.to_json(loaded)
        doc["backtraces"] = [bt.to_json() for bt in found]
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        output_console().print(render(loaded, view, found))
    return 0

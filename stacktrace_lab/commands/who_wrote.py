"""`stacktrace-lab who-wrote TRACE SLOT`: which step wrote a slot, and where its value came from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table
from rich.text import Text

from .show import output_console, short_source, step_options

if TYPE_CHECKING:  # the explorer loads pyarrow and capstone: imported when the command runs
    from ..explore.provenance import Provenance
    from ..trace.format import TraceMetadata

#: Links followed back by default (explore.provenance's own default, kept here so
#: `--help` does not load the explorer).
DEFAULT_DEPTH = 6


def _line(meta: TraceMetadata, link: Any) -> tuple[str, int] | None:
    """(file, line) of a link's instruction, when the trace knows it."""
    return meta.source_line(link.instruction.addr) if link.instruction else None


def _source(meta: TraceMetadata, link: Any) -> str | None:
    line = _line(meta, link)
    return f"{line[0]}:{line[1]}" if line else None


def _to_json(result: Provenance, trace: str, meta: TraceMetadata) -> dict[str, Any]:
    return {
        "trace": trace,
        "slot": result.slot.name,
        "addr": result.slot.addr,
        "size": result.slot.size,
        "before_step": result.before,
        "value": result.value,
        "points_to": result.pointer,
        "partial_writers": list(result.partial_writers),
        "chain": [
            {
                "kind": link.kind,
                "step": link.step,
                "what": link.what,
                "value": link.value,
                "rip": link.instruction.addr if link.instruction else None,
                "symbol": link.instruction.symbol if link.instruction else None,
                "insn": link.instruction.text if link.instruction else None,
                "source": _source(meta, link),
                "note": link.note,
            }
            for link in result.chain
        ],
    }


def _render(result: Provenance, meta: TraceMetadata) -> list[Any]:
    slot = result.slot
    pointer = f" -> {result.pointer}" if result.pointer else ""
    title = Text()
    title.append(f"{slot.name}", style="bold")
    title.append(f" ({slot.addr:#x}, {slot.size} bytes) before step {result.before} holds ")
    title.append(f"{result.value:#x}{pointer}", style="bold")
    table = Table(box=None, padding=(0, 1), show_header=True)
    table.add_column("step", justify="right")
    table.add_column("symbol", no_wrap=True)
    table.add_column("instruction", no_wrap=True)
    table.add_column("what happened")
    sources = [_line(meta, link) for link in result.chain]
    if any(sources):
        table.add_column("source", no_wrap=True)
    for depth, (link, source) in enumerate(zip(result.chain, sources, strict=True)):
        arrow = "  " * depth + ("<- " if depth else "")
        cells = [
            "-" if link.step is None else str(link.step),
            link.instruction.symbol if link.instruction else "",
            link.instruction.text if link.instruction else "",
            arrow + link.note,
        ]
        if any(sources):
            cells.append(short_source(source))
        table.add_row(*cells)
    parts: list[Any] = [title, table]
    if result.partial_writers:
        others = ", ".join(str(s) for s in result.partial_writers)
        parts.append(Text(f"(earlier steps that wrote some of its bytes: {others})"))
    return parts


@click.command("who-wrote")
@click.argument("trace", type=click.Path(path_type=Path))
@click.argument("slot")
@step_options
@click.option(
    "--depth",
    type=click.IntRange(1, 50),
    default=DEFAULT_DEPTH,
    show_default=True,
    help="How many links to follow back.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
def who_wrote_command(
    trace: Path,
    slot: str,
    step: int | None,
    at: str | None,
    first_planted_ret: bool,
    depth: int,
    as_json: bool,
) -> int:
    """Which step last wrote SLOT (REGION[INDEX] such as green[32], or an address) before a step.

    The step defaults to the end of the trace. The value is then followed back:
    the store that wrote it, where the stored register got its value, and so on.
    """
    from ..explore.provenance import parse_slot, provenance
    from ..explore.select import choose_step
    from ..trace.reader import load_trace

    loaded = load_trace(trace)
    before = choose_step(loaded, step, at, first_planted_ret, default=loaded.num_rows)
    result = provenance(loaded, parse_slot(loaded, slot), before, depth)
    if as_json:
        click.echo(
            json.dumps(_to_json(result, str(trace), loaded.metadata), indent=2, sort_keys=True)
        )
    else:
        console = output_console()
        for part in _render(result, loaded.metadata):
            console.print(part)
    return 0

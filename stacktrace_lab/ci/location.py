"""Where in the program's source an address is: the one place that maps rip to file:line.

The trace records, for each source line, the address of its first
instruction and the file it is in, relative to the scenario
(`TraceMetadata.source_line`), and the scenario's path as it was given to
`record` (`program.path`; a built-in's name for a built-in). An annotation
needs the file as the CI checkout names it: the scenario's directory joined
with the line's file, or, with `--source FILE` (the scenario file as the
checkout names it), FILE itself for a line of the scenario's inline source
and FILE's directory joined with the line's file for a `.S` file beside it.
Violations that come to carry their own file:line can still be mapped here
from their rip.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..trace.format import TraceMetadata


def source_location(
    meta: TraceMetadata, addr: int, scenario_file: str | None = None
) -> tuple[str, int] | None:
    """(file, line) of the source line holding the instruction at `addr`, or None."""
    found = meta.source_line(addr)
    if found is None:
        return None
    file, line = found
    if os.path.isabs(file):
        return file, line
    if scenario_file is not None:
        # Inline source: the line's file is the scenario (.toml) itself.
        if file.endswith(".toml"):
            return scenario_file, line
        return os.path.normpath(os.path.join(os.path.dirname(scenario_file), file)), line
    program = meta.program
    if program is not None and program.kind == "scenario":
        file = os.path.normpath(os.path.join(os.path.dirname(program.path), file))
    return file, line


def frame_locations(
    meta: TraceMetadata, rip: int, callers: Sequence[int], scenario_file: str | None = None
) -> tuple[tuple[str, int], ...]:
    """(file, line) of `rip`, then of each caller's call site, innermost first, where known.

    `callers` are return addresses: the call is the instruction before one, so
    its line is looked up at the address before (the return address itself may
    already be on the next line).
    """
    places = []
    for n, addr in enumerate([rip, *callers]):
        found = source_location(meta, addr if n == 0 else addr - 1, scenario_file)
        if found is not None:
            places.append(found)
    return tuple(places)


def repository_root(start: Path | None = None) -> Path:
    """The repository the command runs in (the nearest directory above with `.git`),
    else the current directory: what SARIF calls `%SRCROOT%`."""
    start = (start or Path.cwd()).resolve()
    for directory in (start, *start.parents):
        if (directory / ".git").exists():
            return directory
    return start


def in_repository(file: str, root: Path) -> str | None:
    """`file` relative to `root` (with `/`) if it is a file of the repository, else None:
    `library/std/src/io/stdio.rs` of a Rust program is in no user's repository."""
    path = Path(file)
    try:
        full = (path if path.is_absolute() else Path.cwd() / path).resolve()
        relative = full.relative_to(root)
    except (OSError, ValueError, RuntimeError):
        return None
    return relative.as_posix() if full.is_file() else None

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

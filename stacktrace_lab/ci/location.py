"""Where in the program's source an address is: the one place that maps rip to file:line.

Trace format 1 records `code.lines`, the address of each source line's first
instruction -> its line in the scenario file, but not the file's path; format
2 adds `TraceMetadata.source_line(addr) -> (file, line)` with the file
relative to the scenario, and the scenario's own path. This function uses
whichever the trace has, so the annotations need no change when format 2
lands. Violations that come to carry their own file:line can still be mapped
here from their rip.
"""

from __future__ import annotations

import bisect
import os
from typing import Any

from ..trace.format import TraceMetadata


def source_location(
    meta: TraceMetadata, addr: int, scenario_file: str | None = None
) -> tuple[str, int] | None:
    """(file, line) of the source line holding the instruction at `addr`, or None.

    `scenario_file` is the scenario's path as the CI checkout sees it (the
    `--source` option); without it a format-1 trace names `<scenario>.toml`.
    """
    finder: Any = getattr(meta, "source_line", None)
    if callable(finder):  # trace format 2
        found = finder(addr)
        if found is None:
            return None
        file, line = found
        scenario = scenario_file or _recorded_scenario_path(meta)
        if scenario and not os.path.isabs(file):
            file = os.path.normpath(os.path.join(os.path.dirname(scenario), file))
        return str(file), int(line)
    if not meta.lines or not meta.code_base <= addr < meta.code_base + len(meta.code):
        return None
    addresses = sorted(meta.lines)
    index = bisect.bisect_right(addresses, addr) - 1
    if index < 0:
        return None
    return scenario_file or f"{meta.scenario.name}.toml", meta.lines[addresses[index]]


def _recorded_scenario_path(meta: TraceMetadata) -> str | None:
    program: Any = getattr(meta, "program", None)
    path = getattr(program, "path", None) if program is not None else None
    return str(path) if path else None

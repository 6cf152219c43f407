"""Source lines of code addresses: the one place the analysis asks "which file:line is this?".

Trace format 2 names the file and line of every code address
(`TraceMetadata.source_line`, which also serves format 1 traces, upgraded on
read); this wraps it for the analysis and the reports.
"""

from __future__ import annotations

from ..trace.format import TraceMetadata


class SourceLines:
    """Looks up `file:line` for code addresses of one trace."""

    def __init__(self, meta: TraceMetadata) -> None:
        self._meta = meta

    def line(self, addr: int) -> tuple[str, int] | None:
        """(file, line) of the instruction at `addr`: its own line, else the nearest line
        starting at or below it inside the code; None outside the code or without lines."""
        return self._meta.source_line(addr)

    def text(self, addr: int) -> str | None:
        """`file:line` for `addr`, or None."""
        found = self.line(addr)
        return f"{found[0]}:{found[1]}" if found is not None else None

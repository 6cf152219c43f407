"""Source lines of code addresses: the one place the analysis asks "which file:line is this?".

The trace's metadata answers (`TraceMetadata.source_line`, format 2: the
file of the assembly, relative to the scenario, or the scenario's `.toml` for
an inline `[program] source`; version 1 traces are upgraded on read).
"""

from __future__ import annotations

from ..trace.format import TraceMetadata


class SourceLines:
    """Looks up `file:line` for code addresses of one trace."""

    def __init__(self, meta: TraceMetadata) -> None:
        self._meta = meta

    def line(self, addr: int) -> tuple[str, int] | None:
        """(file, line) of the instruction at `addr` (its own line, else the nearest
        line starting below it in the code); None outside the code or without lines."""
        return self._meta.source_line(addr)

    def text(self, addr: int) -> str | None:
        """`file:line` for `addr`, or None."""
        found = self.line(addr)
        return f"{found[0]}:{found[1]}" if found is not None else None

"""Source lines of code addresses: the one place the analysis asks "which file:line is this?".

Format 1 traces map each source line's first instruction to its line number in
the scenario file (`TraceMetadata.lines`); the file is the scenario's `.toml`
(its inline `[program] source`). Format 2 adds `TraceMetadata.source_line(addr)`
with the file named; when the metadata has it, it is used instead.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

from ..trace.format import TraceMetadata


class SourceLines:
    """Looks up `file:line` for code addresses of one trace."""

    def __init__(self, meta: TraceMetadata) -> None:
        self._meta = meta
        self._newer: Callable[[int], Any] | None = getattr(meta, "source_line", None)
        self._starts = sorted(meta.lines)
        self._file = f"{meta.scenario.name}.toml"

    def line(self, addr: int) -> tuple[str, int] | None:
        """(file, line) of the instruction at `addr`: its own line, else the nearest line
        starting at or below it inside the code; None outside the code or without lines."""
        if self._newer is not None:
            found = self._newer(addr)
            return (str(found[0]), int(found[1])) if found is not None else None
        meta = self._meta
        if not self._starts or not meta.code_base <= addr < meta.code_base + len(meta.code):
            return None
        k = bisect.bisect_right(self._starts, addr) - 1
        if k < 0:
            return None
        return self._file, meta.lines[self._starts[k]]

    def text(self, addr: int) -> str | None:
        """`file:line` for `addr`, or None."""
        found = self.line(addr)
        return f"{found[0]}:{found[1]}" if found is not None else None

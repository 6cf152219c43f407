"""The threads line of `check` and the report, from the metadata alone.

A module of its own so that `check` prints it without importing the report's
content (which loads matplotlib: about 0.75 CPU s of every `check`).
"""

from __future__ import annotations

from ..trace.format import TraceMetadata


def threads_summary(meta: TraceMetadata, switches: int | None = None) -> str:
    """The threads line from the metadata (and the number of thread switches, if known)."""
    threads = meta.threads
    if meta.thread_slice is None:
        return ""
    parts = []
    for t in threads:
        # The stack it started on: a thread may start on a stack an earlier thread
        # left (glibc caches the stacks of joined threads).
        top = int(t.get("stack_top") or 0)
        stack = next((s.shown_name for s in meta.stacks if s.base < top <= s.top), None)
        where = f" on {stack}" if stack else ""
        parts.append(f"{t['number']} (tid {t['tid']}){where}")
    counted = f"{switches:,} thread switches, " if switches is not None else ""
    return (
        f"{len(threads)} threads: {', '.join(parts)}; {counted}"
        f"a slice of {meta.thread_slice:,} instructions, each thread judged on its own"
    )

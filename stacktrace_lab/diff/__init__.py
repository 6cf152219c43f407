"""Comparing two traces: where behaviour changed, for humans and for CI.

    diff = diff_traces("traces/first-switch.parquet", "new.parquet", ignore=["rflags"])
    diff.same                      # the verdict
    print(render(diff, "markdown"))

Steps mode pairs row N with row N; `align=True` pairs rows by label and
instruction so an inserted instruction is one inserted step. See
`docs/ci.md` for the conventions and `core.py` for the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable

from .core import diff_traces, resolve_ignore
from .model import CONVENTION, TraceDiff
from .render_json import render_json
from .render_markdown import render_markdown
from .render_text import render_text

RENDERERS: dict[str, Callable[[TraceDiff], str]] = {
    "text": render_text,
    "json": render_json,
    "markdown": render_markdown,
}


def render(diff: TraceDiff, fmt: str = "text") -> str:
    return RENDERERS[fmt](diff)


__all__ = [
    "CONVENTION",
    "RENDERERS",
    "TraceDiff",
    "diff_traces",
    "render",
    "render_json",
    "render_markdown",
    "render_text",
    "resolve_ignore",
]

"""The interactive HTML stepper: move through a trace's steps in the browser.

`stepper_fragment(trace)` returns a self-contained HTML section (data as
JSON, its own small CSS and JavaScript, an inline SVG rsp chart) that the
HTML report includes; `standalone_page(trace)` wraps it in a page of its own.
Reads only the trace.
"""

from .data import EMBED_LIMIT, Switch, stepper_data
from .render import json_for_script, standalone_page, stepper_fragment

__all__ = [
    "EMBED_LIMIT",
    "Switch",
    "json_for_script",
    "standalone_page",
    "stepper_data",
    "stepper_fragment",
]

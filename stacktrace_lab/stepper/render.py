"""The stepper as an HTML fragment: data as JSON in a script tag, its own CSS, JS and rsp chart.

The fragment is self-contained (no network, no server) and scoped under
`#stl-stepper`, so the report page includes it as it is; `standalone_page`
wraps it into a page of its own.

The data goes into `<script type="application/json">`. JSON text may hold
`</script>` (a scenario's description is free text), which would end the
script element early, so `<`, `>` and `&` are written as JSON `\\u` escapes:
the same value for `JSON.parse`, and nothing the HTML parser can see.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

from jinja2 import Environment
from markupsafe import Markup, escape

from ..analysis.events import TraceFacts
from ..trace.reader import Trace
from .data import EMBED_LIMIT, Switch, stepper_data

# Chart geometry in SVG units (the SVG scales to the page's width).
VIEW_WIDTH = 960
CHART_X0 = 120
CHART_WIDTH = VIEW_WIDTH - CHART_X0 - 12
LANE_HEIGHT = 44
CHART_TOP = 6
AXIS_HEIGHT = 20

_JSON_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def json_for_script(data: Any) -> str:
    """JSON that is safe inside `<script type="application/json">`, deterministic (sorted keys)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "".join(_JSON_ESCAPES.get(ch, ch) for ch in text)


@cache
def _static(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def _lane_y(value: float, lanes: int) -> float:
    """SVG y of a chart value in lane units (lane k spans [k, k + 1), higher rsp higher up)."""
    lane = min(max(int(value), 0), max(lanes - 1, 0))
    return CHART_TOP + lane * LANE_HEIGHT + (1 - (value - lane)) * LANE_HEIGHT


def chart_svg(data: dict[str, Any]) -> Markup:
    """The rsp chart: a lane per stack, the path of rsp, the switches, the embedded windows."""
    chart = data["chart"]
    if chart is None:
        # A served page: the server sends the chart once it has read every step.
        return Markup('<p class="stl-muted">reading every step for the rsp chart\u2026</p>')
    n = max(int(chart["steps"]), 1)
    lanes = chart["lanes"]
    height = CHART_TOP + LANE_HEIGHT * max(len(lanes), 1) + AXIS_HEIGHT

    def x(step: float) -> float:
        return CHART_X0 + (step + 0.5) / n * CHART_WIDTH

    parts = [
        f'<svg viewBox="0 0 {VIEW_WIDTH} {height}" role="img" '
        f'aria-label="rsp over the steps, one lane per stack" xmlns="http://www.w3.org/2000/svg">'
    ]
    for k, lane in enumerate(lanes):
        top = CHART_TOP + k * LANE_HEIGHT
        fill = "#f3f6fa" if k % 2 == 0 else "#ffffff"
        parts.append(
            f'<rect x="{CHART_X0}" y="{top}" width="{CHART_WIDTH}" height="{LANE_HEIGHT}" '
            f'fill="{fill}" stroke="#d8dde6" stroke-width="0.5"/>'
        )
        parts.append(
            f'<text x="{CHART_X0 - 6}" y="{top + LANE_HEIGHT / 2 + 4:.1f}" text-anchor="end" '
            f'font-size="12" fill="#1d2330">{escape(lane["name"])}</text>'
        )
        parts.append(
            f'<text x="{CHART_X0 - 6}" y="{top + 10}" text-anchor="end" font-size="8" '
            f'fill="#5d6677">{escape(lane["hi"])}</text>'
        )
    if not data["complete"]:
        for start, stop in chart["embedded"]:
            parts.append(
                f'<rect x="{x(start - 0.5):.2f}" y="{CHART_TOP}" '
                f'width="{max(x(stop - 0.5) - x(start - 0.5), 1.5):.2f}" '
                f'height="{LANE_HEIGHT * len(lanes)}" fill="#2457c5" fill-opacity="0.10">'
                f"<title>embedded steps {start}-{stop - 1}</title></rect>"
            )
    for switch in data["switches"]:
        sx = x(switch["ret_step"])
        parts.append(
            f'<line x1="{sx:.2f}" x2="{sx:.2f}" y1="{CHART_TOP}" '
            f'y2="{CHART_TOP + LANE_HEIGHT * len(lanes)}" stroke="#b35c00" '
            f'stroke-dasharray="3 3" stroke-width="1.5">'
            f"<title>{_switch_title(switch)}</title></line>"
        )
    path = []
    for step, low, high in chart["points"]:
        px = x(step)
        path.append(f"{px:.2f},{_lane_y(high, len(lanes)):.2f}")
        if high != low:
            path.append(f"{px:.2f},{_lane_y(low, len(lanes)):.2f}")
    if path:
        parts.append(
            f'<polyline points="{" ".join(path)}" fill="none" stroke="#2457c5" '
            f'stroke-width="1.5" stroke-linejoin="round"/>'
        )
    axis_y = CHART_TOP + LANE_HEIGHT * len(lanes) + 14
    parts.append(
        f'<text x="{CHART_X0}" y="{axis_y}" font-size="11" fill="#5d6677">step 0</text>'
        f'<text x="{CHART_X0 + CHART_WIDTH}" y="{axis_y}" font-size="11" fill="#5d6677" '
        f'text-anchor="end">step {n - 1}</text>'
        f'<text x="{CHART_X0 + CHART_WIDTH / 2}" y="{axis_y}" font-size="11" fill="#5d6677" '
        f'text-anchor="middle">rsp by stack (dashed: rets that pop a planted address)</text>'
    )
    parts.append(
        f'<line class="stl-cursor" x1="{x(0):.2f}" x2="{x(0):.2f}" y1="0" '
        f'y2="{CHART_TOP + LANE_HEIGHT * len(lanes) + 4}" stroke="#d62728" stroke-width="2" '
        f'stroke-opacity="0.75"/>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))


def _environment() -> Environment:
    return Environment(autoescape=True, keep_trailing_newline=True)


def _switch_title(switch: dict[str, Any]) -> str:
    if switch.get("note"):
        return f"step {switch['ret_step']}: {escape(str(switch['note']))}"
    return f"planted return: ret at step {switch['ret_step']} pops {escape(switch['target'])}"


def stepper_fragment(
    trace: Trace,
    limit: int = EMBED_LIMIT,
    heading: bool = True,
    switches: Sequence[Switch] | None = None,
    serve: dict[str, str] | None = None,
    facts: TraceFacts | None = None,
) -> str:
    """The stepper for `trace`, one `<div id="stl-stepper">` to include in a page as it is.

    `heading=False` leaves out its `<h2>`, for a page whose section has its own;
    `switches` are the planted returns and `facts` the analysis pass, if the
    caller has them already (the report has).
    """
    data = stepper_data(trace, limit, switches, serve, facts)
    data["chart_geometry"] = {"x0": CHART_X0, "width": CHART_WIDTH, "viewWidth": VIEW_WIDTH}
    js = _static("stepper.js")
    if "</script" in js.lower():  # our own file: a slip here would break every report
        raise AssertionError("stepper.js must not contain '</script'")
    template = _environment().from_string(_static("stepper.html.j2"))
    return template.render(
        scenario=data["scenario"],
        heading=heading,
        note=data["note"],
        css=Markup(_static("stepper.css")),
        chart_svg=chart_svg(data),
        data_json=Markup(json_for_script(data)),
        js=Markup(js),
    )


def standalone_page(
    trace: Trace,
    limit: int = EMBED_LIMIT,
    serve: dict[str, str] | None = None,
    switches: Sequence[Switch] | None = None,
) -> str:
    """A whole HTML page holding only the stepper (for viewing or testing without a report);
    with `serve`, the page of `stacktrace-lab serve`, which fetches its steps."""
    title = escape(f"{trace.metadata.scenario.name}: step through the trace")
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '</head>\n<body style="margin: 1em 2em">\n'
        f"{stepper_fragment(trace, limit, switches=switches, serve=serve)}</body>\n</html>\n"
    )

"""`index.html`: the report as one self-contained page, rendered with Jinja.

Autoescaping is on for every template, so whatever comes from the scenario
(its name, description, source, the program's output) is escaped. The PNGs
are embedded as base64 data URIs and the styles are inline: the page loads
nothing from anywhere. The page is a sequence of `SECTIONS`, each one
template; a later feature (an interactive stepper) adds itself as a section
(and its script in the `scripts` block of base.html.j2).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import jinja2
from markupsafe import Markup

from ..analysis.model import kind_title
from .content import FOLD_ROWS, ReportContent


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    template: str


SECTIONS: tuple[Section, ...] = (
    # Only for programs with many stacks or switches (`ReportContent.leads_with_switches`).
    Section("switches", "Which stack ran when", "section_switches.html.j2"),
    Section("run", "Scenario and run", "section_run.html.j2"),
    Section("invariants", "Invariants", "section_invariants.html.j2"),
    Section("planted", "Planted returns", "section_planted.html.j2"),
    Section("plots", "rsp and the stacks", "section_plots.html.j2"),
    Section("listing", "Around each switch", "section_listing.html.j2"),
    Section("stepper", "Step through the trace", "section_stepper.html.j2"),
    Section("source", "Source", "section_source.html.j2"),
)


def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("stacktrace_lab.report", "templates"),
        autoescape=True,  # every template, whatever its file name
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(
    content: ReportContent,
    images: dict[str, bytes],
    sections: tuple[Section, ...] = SECTIONS,
    stepper: str = "",
) -> str:
    template = environment().get_template("report.html.j2")
    if not (content.leads_with_switches and "switches" in images):
        sections = tuple(s for s in sections if s.id != "switches")
    return template.render(
        r=content,
        fold=FOLD_ROWS,
        sections=sections,
        stepper=Markup(stepper),  # stepper/render.py escapes what it embeds
        images={name: data_uri(png) for name, png in images.items()},
        kind_title=kind_title,
    )

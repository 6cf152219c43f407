"""`report.md`: the same content as the HTML page, as Markdown next to the PNGs.

Scenario-derived text goes into code spans and fenced blocks whose fences are
longer than any run of backticks in it, and table cells have `|` escaped, so
a scenario cannot break the document's structure.
"""

from __future__ import annotations

import re

from ..analysis.model import Violation, kind_title
from .content import FOLD_ROWS, ListingWindow, ReportContent


def render_markdown(
    content: ReportContent,
    rsp_png: str = "rsp.png",
    heatmap_png: str = "heatmap.png",
    switches_png: str = "switches.png",
) -> str:
    r = content
    out: list[str] = [f"# {_text(r.scenario)}", ""]
    if r.description:
        out += [_text(r.description), ""]
    out += [f"**{r.verdict}**", ""]

    if r.leads_with_switches:
        out += _switches(r, switches_png)

    out += ["## Scenario and run", ""]
    if r.program is not None:
        prog = r.program
        built = _code(prog.producer) if prog.producer else "no compiler named (no DWARF producer)"
        if prog.linkage:
            built += f", {prog.linkage}"
        if prog.unread:
            built += f" ({_text(prog.unread)})"
        out += [
            f"- program: {_code(prog.name)} ({_code(prog.path)})",
            f"- built: {built}",
            f"- recorded: {_text(prog.recorded)}",
        ]
    else:
        out.append(f"- entry: {_code(r.entry)} ({r.syntax} syntax)")
    out += [
        f"- steps: {r.steps:,}",
        f"- stopped: **{r.stop_reason}** at step {r.stop_step}: {_text(r.stop_detail)}",
        *([f"- {_text(r.threads)}"] if r.threads else []),
        f"- trace: {_code(r.trace)}",
        "",
        "| region | kind | base | top | size |",
        "|---|---|---|---|---|",
    ]
    for region in r.regions:
        out.append(
            f"| {_cell(region.display)} | {region.kind} | `{region.base:#x}` | `{region.top:#x}` "
            f"| {region.size:,} bytes |"
        )
    out += ["", "### Output", ""]
    if r.stdout:
        out += ["stdout:", "", *_fenced(r.stdout, "text"), ""]
    else:
        out += ["The program wrote nothing to stdout.", ""]
    if r.stderr:
        out += ["stderr:", "", *_fenced(r.stderr, "text"), ""]

    out += ["## Invariants", ""]
    if r.check.causes:
        out += [f"**{r.check.headline}**", ""]
        for n, c in enumerate(r.check.causes, start=1):
            times = (
                f"{c.count} times, steps {c.first_step}-{c.last_step}"
                if c.count > 1
                else f"step {c.first_step}"
            )
            site = _code(c.site_symbol) + (f" ({_code(c.site_source)})" if c.site_source else "")
            out += [
                f"{n}. **`{c.invariant}`: {_text(kind_title(c.kind))}**, {times}, at {site}",
                f"   - {_violation(c.first)}",
            ]
            for q in c.consequences:
                out.append(f"   - then {_text(q.summary)}, the first: {_violation(q.example)}")
        out.append("")
    out += ["| invariant | status | causes | violations | rule |", "|---|---|---|---|---|"]
    for result in r.check.results:
        notes = "".join(f"<br>*{_cell(note)}*" for note in result.notes)
        out.append(
            f"| `{result.id}` | {result.status} | {len(result.causes)} | {result.total} "
            f"| {_cell(result.summary)}{notes} |"
        )
    out.append("")
    for result in r.check.results:
        if result.holds:
            continue
        out += [f"### `{result.id}` violations", "", "| step | where | what |", "|---|---|---|"]
        for v in result.violations[:FOLD_ROWS]:
            src = f"<br>{_code(v.source)}" if v.source else ""
            where = f"{_code(v.symbol)} `{v.rip:#x}`{src}"
            out.append(f"| {v.step}{v.in_thread} | {where} | {_cell(v.message)} |")
        if result.total > FOLD_ROWS:
            more = result.total - min(len(result.violations), FOLD_ROWS)
            out.append(f"| | | ... and {more} more (index.html lists them) |")
        out.append("")

    out += ["## Planted returns", ""]
    if r.check.planted:
        out += [
            "| ret step | stack | index | planted at | by | lands on | as | rsp there |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in r.check.planted[:FOLD_ROWS]:
            ret_src = f" {_code(p.source)}" if p.source else ""
            store_src = f" {_code(p.planted_source)}" if p.planted_source else ""
            out.append(
                f"| {p.ret_step} {_code(p.ret_symbol)}{ret_src} | {_cell(p.region or '-')} "
                f"| {p.index} | {p.planted_when} {_code(p.planted_symbol)}{store_src} "
                f"| {_code(p.planted_insn)} | {_code(p.target)} | {p.landing} "
                f"| `{p.entry_rsp:#x}` (rsp % 16 == {p.entry_rsp % 16}) |"
            )
        if r.check.planted_total > FOLD_ROWS:
            more = r.check.planted_total - min(len(r.check.planted), FOLD_ROWS)
            out.append(f"| ... and {more} more (index.html lists them) | | | | | | | |")
        out.append("")
    else:
        out += ["No planted returns: every `ret` popped what its `call` pushed.", ""]

    out += [
        "## rsp and the stacks",
        "",
        f"![rsp over time, one panel per stack region]({rsp_png})",
        "",
        "rsp over time, as the byte index within each stack region. A stack switch is where "
        "the line leaves one panel for another; ▼ marks a call, ▲ a return, ★ a planted return.",
        "",
        f"![stack heatmap: what each 8-byte slot held at each step]({heatmap_png})",
        "",
        "What each 8-byte slot held before each step: zero, a code address, an address into a "
        "stack, or other data. An x marks a write, the black line is rsp, and a red frame follows "
        "a planted return from its store to the `ret` that popped it.",
        "",
    ]

    out += ["## Around each switch", ""]
    if r.windows:
        for window in r.windows:
            out += _listing(window)
        if r.windows_left_out:
            out += [f"{r.windows_left_out} more switch windows are left out.", ""]
    else:
        out += ["rsp never moved to another stack and no `ret` popped a planted address.", ""]

    out += ["## Source", "", *_fenced(r.source, "asm"), ""]
    return "\n".join(out)


def _switches(r: ReportContent, png: str) -> list[str]:
    out = [
        "## Which stack ran when",
        "",
        f"![which stack ran when: one lane per stack, the switches as arrows]({png})",
        "",
        "One lane per stack: a bar wherever rsp was in that stack, an arrow at each switch, "
        "each cause a red line with its number.",
        "",
        f"{r.switches:,} switches between {len(r.switch_pairs)} pairs of stacks.",
        "",
        "| from | to | switches | first at step | last at step |",
        "|---|---|---|---|---|",
    ]
    for p in r.switch_pairs[:FOLD_ROWS]:
        out.append(
            f"| {_cell(p.source)} | {_cell(p.target)} | {p.count:,} | {p.first_step} "
            f"| {p.last_step} |"
        )
    if len(r.switch_pairs) > FOLD_ROWS:
        more = len(r.switch_pairs) - FOLD_ROWS
        out.append(f"| ... and {more} more pairs (index.html lists them) | | | | |")
    return [*out, ""]


def _violation(v: Violation) -> str:
    src = f" {_code(v.source)}" if v.source else ""
    return f"step {v.step}{v.in_thread} {_code(v.symbol)}{src}: {_text(v.message)}"


def _listing(window: ListingWindow) -> list[str]:
    out = [
        f"### {_text(window.title)}",
        "",
        "| step | rip | symbol | instruction | rsp | slot touched |",
        "|---|---|---|---|---|---|",
    ]
    for row in window.rows:
        notes = "".join(f"<br>**{_cell(note)}**" for note in row.notes)
        touched = "<br>".join(_code(t) for t in row.touched)
        source = f"<br>{_cell(row.source)}" if row.source else ""
        out.append(
            f"| {row.step} | `{row.rip:#x}` | {_code(row.symbol)}{source} "
            f"| {_code(row.insn)}{notes} "
            f"| `{row.rsp:#x}` {_code(row.rsp_where)} | {touched} |"
        )
    out.append("")
    return out


def _code(text: str) -> str:
    """An inline code span that holds `text` whatever backticks it contains."""
    text = text.replace("|", "\\|").replace("\n", " ")
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _fenced(text: str, info: str) -> list[str]:
    longest = max((len(m) for m in re.findall(r"`{3,}", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{info}", text.rstrip("\n"), fence]


def _cell(text: str) -> str:
    """Text for a table cell: no line breaks, `|` and HTML-looking `<` escaped."""
    return _text(text).replace("|", "\\|")


def _text(text: str) -> str:
    return " ".join(text.split()).replace("<", "&lt;")

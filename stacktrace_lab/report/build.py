"""`build_report()`: analyse a trace once and write every output of the report.

Everything is rendered in memory first and each file is then written to a
temporary name and renamed into place, so a failed report never leaves a
half-written file behind.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import safe_output
from ..analysis import CheckResult, TraceFacts, check, derive_facts
from ..analysis.memory import release_freed_memory
from ..errors import BadInput
from ..stepper import Switch, stepper_fragment
from ..trace.reader import Trace
from .content import gather
from .heatmap import heatmap_png
from .html import render_html
from .invariants_json import render_json
from .markdown import render_markdown
from .rsp_plot import rsp_png
from .switch_picture import switches_png

FILES = ("index.html", "report.md", "rsp.png", "heatmap.png", "invariants.json")
#: Written only for programs with many stacks or switches (report/switch_picture.py).
SWITCHES_PNG = "switches.png"


@dataclass(frozen=True)
class Report:
    directory: Path
    files: tuple[Path, ...]
    check: CheckResult


def default_report_dir(trace_path: Path, reports_dir: Path = Path("reports")) -> Path:
    """`<reports_dir>/<stem>/`; a stem that would leave the reports directory
    (`..` from `...parquet`, `.`, empty) is refused: the user names the
    directory with -o."""
    stem = trace_path.stem
    if stem in ("", ".", "..") or "/" in stem or "\\" in stem:
        raise BadInput(
            f"{trace_path}: the name {stem!r} cannot name a directory under {reports_dir}/; "
            "give one with -o DIR"
        )
    return reports_dir / stem


def build_report(
    trace: Trace, directory: str | Path, progress: Callable[[str], None] | None = None
) -> Report:
    """Write every file of the report; `progress` is told each stage as it starts."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise BadInput(f"{directory}: exists and is not a directory")
    safe_output.check_parent(directory, directory)
    # Before the work: a FIFO or device among the outputs is refused.
    for name in (*FILES, SWITCHES_PNG):
        safe_output.check_target(directory / name)
    told = progress or (lambda _: None)

    def stage(name: str) -> None:
        # Each stage frees its temporaries (figures, arrays a block at a time) between
        # the arrays the report keeps: their heap pages go back before the next one.
        # A figure drawn is freed only by the cycle collector (matplotlib's artists
        # point at each other): 5-8 MiB per figure, under the stepper's peak.
        gc.collect()
        release_freed_memory()
        told(name)

    stage("reading the trace")
    facts = derive_facts(trace)
    stage("checking the invariants")
    result = check(trace, facts)
    content = gather(facts, result)
    stage("drawing rsp.png")
    rsp = rsp_png(facts, result.causes)
    stage("drawing heatmap.png")
    images = {"rsp": rsp, "heatmap": heatmap_png(facts)}
    if content.leads_with_switches:
        stage("drawing switches.png")
        images["switches"] = switches_png(facts, result.causes)
    stage("writing the HTML stepper")
    # The stepper's switch buttons visit every stack switch rsp.png draws: the
    # planted returns the analysis found (scanning the trace for them again cost
    # more than the rest of a report) and every other step that moved rsp to
    # another stack.
    switches = stepper_switches(facts)
    outputs = {
        **({SWITCHES_PNG: images["switches"]} if "switches" in images else {}),
        "rsp.png": images["rsp"],
        "heatmap.png": images["heatmap"],
        "index.html": render_html(
            content,
            images,
            stepper=stepper_fragment(trace, heading=False, switches=switches, facts=facts),
        ).encode("utf-8"),
        "report.md": render_markdown(content).encode("utf-8"),
        "invariants.json": render_json(result).encode("utf-8"),
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"{directory}: cannot write the report: {exc.strerror or exc}") from None
    paths = []
    stale = directory / SWITCHES_PNG
    if SWITCHES_PNG not in outputs and stale.is_file() and not stale.is_symlink():
        stale.unlink()  # from an earlier report of this directory: it would describe another run
    for name in (*FILES, *([SWITCHES_PNG] if SWITCHES_PNG in outputs else [])):
        try:
            paths.append(safe_output.write_file(directory / name, outputs[name]))
        except OSError as exc:
            raise safe_output.write_error(directory / name, exc) from None
    return Report(directory=directory, files=tuple(paths), check=result)


def stepper_switches(facts: TraceFacts) -> list[Switch]:
    """The planted returns and the other stack switches, in step order."""
    switches = [
        Switch(p.ret_step, p.region, p.index, p.target, p.planted_step)
        for p in facts.planted_returns
    ]
    planted = {s.ret_step for s in switches}
    names = {i: s.shown_name for i, s in enumerate(facts.stacks)}
    owner = facts.owners
    for step in facts.switch_steps().tolist():
        if step in planted:
            continue
        src = names.get(int(owner[step]), "outside the stacks")
        dst = names.get(int(owner[step + 1]), "outside the stacks")
        note = f"stack switch: rsp moves from {src} to {dst}"
        switches.append(Switch(step, None, None, "", -1, note=note))
    return sorted(switches, key=lambda s: s.ret_step)

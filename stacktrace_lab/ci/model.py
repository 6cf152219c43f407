"""A result as CI sees it: test cases, each passing or failing with findings at file:line."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .location import frame_locations, source_location

if TYPE_CHECKING:
    from ..analysis import CheckResult
    from ..diff import TraceDiff
    from ..trace.format import TraceMetadata

TOOL = "stacktrace-lab"


@dataclass(frozen=True)
class Finding:
    """One problem: a rule broken at a place of the program."""

    rule: str  # invariant id, or `trace-differs`
    title: str  # one line, e.g. "alignment at step 13 (hello+0)"
    message: str
    file: str | None = None
    line: int | None = None
    step: int | None = None
    rip: int | None = None
    #: (file, line) of the finding's instruction, then of each caller's call site,
    #: innermost first: SARIF points at the first one inside the repository.
    places: tuple[tuple[str, int], ...] = ()


#: The return addresses of the frames active at a step, innermost first (from the
#: trace's backtrace; the commands build it, as this package reads no trace).
Callers = Callable[[int], Sequence[int]]


def _places(
    meta: TraceMetadata, rip: int, step: int, callers: Callers | None, scenario_file: str | None
) -> tuple[tuple[str, int], ...]:
    return frame_locations(meta, rip, callers(step) if callers else (), scenario_file)


@dataclass(frozen=True)
class Case:
    """One thing checked (an invariant, a comparison) and what it found."""

    name: str
    description: str
    findings: tuple[Finding, ...] = ()
    #: Findings beyond those listed (the analysis keeps the first 100 per invariant).
    more: int = 0

    @property
    def failed(self) -> bool:
        return bool(self.findings) or self.more > 0


@dataclass(frozen=True)
class CiReport:
    suite: str  # e.g. "stacktrace-lab check first-switch"
    subject: str  # the trace (or traces) the report is about
    #: the trace file a finding with no source line points at (B for a diff)
    subject_file: str = ""
    #: what the run analysed, for SARIF's automationDetails.id: `check/<scenario>`
    category: str = ""
    cases: tuple[Case, ...] = field(default_factory=tuple)
    version: str = ""

    @property
    def failures(self) -> int:
        return sum(case.failed for case in self.cases)


def from_check(
    result: CheckResult,
    meta: TraceMetadata,
    scenario_file: str | None,
    callers: Callers | None = None,
) -> CiReport:
    """Each invariant is a case. Its findings are its causes, each at the line of the
    code site the mistake is at (a hundred misaligned landings from one bad store are
    one finding, on the store), else its violations, each at its step's rip."""
    from .. import __version__
    from ..analysis.model import kind_title

    cases = []
    for invariant in result.results:
        findings = []
        for cause in invariant.causes:
            where = source_location(meta, cause.site, scenario_file)
            times = f"{cause.count} times, steps {cause.first_step}-{cause.last_step}"
            first = cause.first
            findings.append(
                Finding(
                    rule=invariant.id,
                    title=f"{invariant.id}: {kind_title(cause.kind)} at {cause.site_symbol} "
                    f"({times if cause.count > 1 else f'step {cause.first_step}'})",
                    message=f"step {first.step}{first.in_thread} {first.symbol}: {first.message}",
                    file=where[0] if where else None,
                    line=where[1] if where else None,
                    step=first.step,
                    rip=cause.site,
                    places=_places(meta, cause.site, first.step, callers, scenario_file),
                )
            )
        if findings:
            more = invariant.total - sum(c.count for c in invariant.causes)
            cases.append(Case(invariant.id, invariant.summary, tuple(findings), max(more, 0)))
            continue
        for v in invariant.violations:
            where = source_location(meta, v.rip, scenario_file)
            findings.append(
                Finding(
                    rule=invariant.id,
                    title=f"{invariant.id} at step {v.step}{v.in_thread} ({v.symbol})",
                    message=v.message,
                    file=where[0] if where else None,
                    line=where[1] if where else None,
                    step=v.step,
                    rip=v.rip,
                    places=_places(meta, v.rip, v.step, callers, scenario_file),
                )
            )
        more = invariant.total - len(invariant.violations)
        cases.append(Case(invariant.id, invariant.summary, tuple(findings), more))
    return CiReport(
        suite=f"{TOOL} check {result.scenario}",
        subject=result.trace,
        cases=tuple(cases),
        version=__version__,
        subject_file=result.trace,
        category=f"check/{result.scenario}",
    )


def from_diff(
    diff: TraceDiff,
    meta_b: TraceMetadata,
    scenario_file: str | None,
    callers: Callers | None = None,
) -> CiReport:
    """One case, `trace-differs`: failing at the first divergent step of B (the new trace)."""
    from .. import __version__
    from ..diff.render_text import headline, summary

    findings: tuple[Finding, ...] = ()
    if not diff.same:
        d = diff.first_divergence
        view = (d.b or d.a) if d is not None else None
        where = None
        places: tuple[tuple[str, int], ...] = ()
        if d is not None and d.b is not None:
            where = source_location(meta_b, d.b.rip, scenario_file)
            places = _places(meta_b, d.b.rip, d.b.step, callers, scenario_file)
        title = headline(d) if d is not None else "metadata differs"
        findings = (
            Finding(
                rule="trace-differs",
                title=f"{diff.b.scenario}: {title}",
                message=f"{diff.b.path} differs from {diff.a.path}: {summary(diff)}",
                file=where[0] if where else None,
                line=where[1] if where else None,
                step=view.step if view else None,
                rip=view.rip if view else None,
                places=places,
            ),
        )
    case = Case(
        "trace-differs",
        "the new trace B behaves as the reference trace A",
        findings,
    )
    return CiReport(
        suite=f"{TOOL} diff {diff.b.scenario}",
        subject=f"{diff.a.path} {diff.b.path}",
        cases=(case,),
        version=__version__,
        subject_file=str(diff.b.path),
        category=f"diff/{diff.b.scenario}",
    )

"""`check()`: run every invariant of the registry over one trace."""

from __future__ import annotations

from dataclasses import replace

from ..trace.reader import Trace
from .events import TraceFacts, derive_facts
from .invariants import INVARIANTS
from .kinds import ThreadRuns
from .model import Cause, CheckResult, InvariantResult, Violation


def check(trace: Trace, facts: TraceFacts | None = None) -> CheckResult:
    """Check `trace` against every invariant; pass `facts` to reuse a shared pass."""
    facts = facts if facts is not None else derive_facts(trace)
    results = []
    # A program that made threads: each violation names the OS thread of its step.
    threads = facts.threads if trace.metadata.threads else None
    for invariant in INVARIANTS:
        findings = invariant.check(facts)
        results.append(
            InvariantResult(
                id=invariant.id,
                summary=invariant.summary,
                violations=tuple(_in_thread(v, threads) for v in findings.violations),
                total=findings.total,
                causes=tuple(_cause_in_thread(c, threads) for c in findings.causes),
                notes=findings.notes,
            )
        )
    return CheckResult(
        trace=str(trace.path),
        scenario=trace.metadata.scenario.name,
        results=tuple(results),
        planted=facts.planted_returns,
        planted_total=int(facts.planted_steps.size),
    )


def _in_thread(violation: Violation, threads: ThreadRuns | None) -> Violation:
    if threads is None:
        return violation
    return replace(violation, thread=threads.thread_of(violation.step))


def _cause_in_thread(cause: Cause, threads: ThreadRuns | None) -> Cause:
    if threads is None:
        return cause
    return replace(
        cause,
        first=_in_thread(cause.first, threads),
        consequences=tuple(
            replace(c, example=_in_thread(c.example, threads)) for c in cause.consequences
        ),
    )

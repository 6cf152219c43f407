"""`check()`: run every invariant of the registry over one trace."""

from __future__ import annotations

from ..trace.reader import Trace
from .events import TraceFacts, derive_facts
from .invariants import INVARIANTS
from .model import CheckResult, InvariantResult


def check(trace: Trace, facts: TraceFacts | None = None) -> CheckResult:
    """Check `trace` against every invariant; pass `facts` to reuse a shared pass."""
    facts = facts if facts is not None else derive_facts(trace)
    results = []
    for invariant in INVARIANTS:
        findings = invariant.check(facts)
        results.append(
            InvariantResult(
                id=invariant.id,
                summary=invariant.summary,
                violations=findings.violations,
                total=findings.total,
                causes=findings.causes,
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

"""Choosing a step the way a user names it: a number, a symbol, or the first stack switch."""

from __future__ import annotations

from ..errors import BadInput
from ..trace.reader import Trace
from .provenance import planted_returns
from .rows import check_step, first_step_at


def choose_step(
    trace: Trace,
    step: int | None = None,
    at: str | None = None,
    first_planted_ret: bool = False,
    default: int = 0,
) -> int:
    """The step named by one of `step` (negative: from the end), `at`, `first_planted_ret`."""
    chosen = [
        name
        for name, given in (
            ("--step", step is not None),
            ("--at", at is not None),
            ("--first-planted-ret", first_planted_ret),
        )
        if given
    ]
    if len(chosen) > 1:
        raise BadInput(f"give only one of {', '.join(chosen)}")
    if step is not None:
        if -trace.num_rows <= step < 0:
            return step + trace.num_rows
        return check_step(trace, step)
    if at is not None:
        return first_step_at(trace, at)
    if first_planted_ret:
        found = [p.ret_step for p in planted_returns(trace, limit=1)]
        if trace.metadata.start is not None:
            # A `--from` trace: a return planted before it began has no store in the
            # trace (the scan above needs one); the analysis lists it (Origin.PLANTED_BEFORE).
            from ..analysis.events import derive_facts

            facts = derive_facts(trace)
            found += [p.ret_step for p in facts.planted_returns if p.planted_step is None][:1]
        if not found:
            raise BadInput(f"{trace.path}: no ret in the trace pops a planted return address")
        return min(found)
    return default

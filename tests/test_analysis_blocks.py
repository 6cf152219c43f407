"""The analysis pass works on long traces a block of steps at a time; the blocks must
not show: a pass with tiny blocks gives the same facts as one block for the trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stacktrace_lab.analysis import events
from stacktrace_lab.trace import load_trace

GOLDENS = Path(__file__).resolve().parent.parent / "traces"


@pytest.mark.parametrize("name", ["green-threads", "green-threads-clobber", "first-switch"])
def test_last_writers_found_in_small_blocks_are_those_of_one_block(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = load_trace(GOLDENS / f"{name}.parquet")
    whole = events.derive_facts(trace)
    assert trace.num_rows < events._WRITER_BLOCK
    # Blocks of 7 steps: a ret's slot is mostly written in an earlier block (carried).
    monkeypatch.setattr(events, "_WRITER_BLOCK", 7)
    blocks = events.derive_facts(trace)
    assert (whole.returns.writer >= 0).any()
    for field in ("writer", "origin", "slot", "value", "entry_rsp"):
        assert np.array_equal(getattr(whole.returns, field), getattr(blocks.returns, field))
    assert whole.planted_steps.tolist() == blocks.planted_steps.tolist()


def test_rsp_stack_is_a_view_of_owners_only_while_rsp_stays_in_the_stacks() -> None:
    facts = events.derive_facts(load_trace(GOLDENS / "green-threads.parquet"))
    assert (facts.rsp_stack >= 0).all() and np.shares_memory(facts.rsp_stack, facts.owners)
    assert not facts.owners.flags.writeable
    overflow = events.derive_facts(load_trace(GOLDENS / "first-switch-overflow.parquet"))
    below = overflow.rsp_stack < 0
    # rsp runs under the green stack's base: those steps are the stack's own (owners),
    # in no stack for rsp_stack, so the two are separate arrays here.
    assert below.sum() == 207 and (overflow.owners[:-1][below] >= 0).all()
    assert not np.shares_memory(overflow.rsp_stack, overflow.owners)
    assert np.array_equal(overflow.rsp_owner[~below], overflow.rsp_stack[~below])

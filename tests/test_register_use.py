"""Which registers each executed instruction reads and writes (capstone's detail mode on
its bytes), for the stepper's and `serve`'s previous/next access of a register."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stacktrace_lab.analysis.events import derive_facts
from stacktrace_lab.explore.registers import register_use
from stacktrace_lab.explore.rows import instruction_listing
from stacktrace_lab.explore.search import StepSearch
from stacktrace_lab.trace import load_trace

TRACES = Path(__file__).parent.parent / "traces"


@pytest.mark.parametrize("name", ["green-threads", "first-switch-rust"])
def test_every_executed_instruction_has_its_register_use(name: str) -> None:
    """Scenario traces and compiled programs alike: an ELF trace holds no code bytes
    in its metadata, so the use is read from the `insn_bytes` column."""
    trace = load_trace(TRACES / f"{name}.parquet")
    listing = instruction_listing(trace)
    use = register_use((i.addr, i.data) for i in listing)
    assert set(use) == {i.addr for i in listing}
    by_text = {i.text: use[i.addr] for i in listing}
    push = by_text["pushq %rbp"]
    assert (push.reads, push.writes) == ({"rbp", "rsp"}, {"rsp"})
    if name == "first-switch-rust":
        syscall = by_text["syscall"]
        assert {"rcx", "r11"} <= syscall.writes and "rax" in syscall.reads


def test_next_access_finds_a_read_that_leaves_the_register_unchanged() -> None:
    """In the Rust program: the next step that reads rdi, where rdi keeps its value."""
    trace = load_trace(TRACES / "first-switch-rust.parquet")
    search = StepSearch(derive_facts(trace))
    rdi = trace.column("rdi")
    rip = trace.column("rip")
    use = register_use((i.addr, i.data) for i in instruction_listing(trace))
    readers = {addr for addr, u in use.items() if "rdi" in u.reads and "rdi" not in u.writes}
    unchanged = np.append(rdi[1:] == rdi[:-1], True)
    steps = np.flatnonzero(np.isin(rip, list(readers)) & unchanged)
    assert steps.size, "the program reads rdi somewhere without changing it"
    step = int(steps[len(steps) // 2])
    # Nothing touches rdi between the previous access and this read, so searching
    # forward from just before it lands exactly on it, and back from after it too.
    previous = search.register_access("rdi", step, -1)
    assert previous is not None and previous < step
    assert search.register_access("rdi", previous, 1) == step
    assert search.register_access("rdi", step + 1, -1) == step

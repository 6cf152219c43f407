"""Which registers each executed instruction reads and writes (capstone's detail mode on
its bytes), for the stepper's and `serve`'s previous/next access of a register."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stacktrace_lab.analysis.events import derive_facts
from stacktrace_lab.examples import build_example, compiler_missing
from stacktrace_lab.explore.registers import register_use
from stacktrace_lab.explore.rows import instruction_listing
from stacktrace_lab.explore.search import StepSearch
from stacktrace_lab.record.linux.elf_front import record_elf
from stacktrace_lab.trace import load_trace

TRACES = Path(__file__).parent.parent / "traces"


@pytest.fixture(scope="module")
def c_program_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tutorial's C program (examples/first_switch.c), built and recorded here."""
    why = compiler_missing("c-static")
    if why is not None:
        pytest.skip(f"cannot build the C example: {why}")
    out = tmp_path_factory.mktemp("register-use")
    return record_elf(build_example("c-static", out), out / "c.parquet").path


@pytest.mark.parametrize("name", ["green-threads", "c-static"])
def test_every_executed_instruction_has_its_register_use(
    name: str, request: pytest.FixtureRequest
) -> None:
    """Scenario traces and compiled programs alike: an ELF trace holds no code bytes
    in its metadata, so the use is read from the `insn_bytes` column."""
    built = name == "c-static"  # only then is the (skippable) build needed
    trace = load_trace(
        request.getfixturevalue("c_program_trace") if built else TRACES / f"{name}.parquet"
    )
    listing = instruction_listing(trace)
    use = register_use((i.addr, i.data) for i in listing)
    assert set(use) == {i.addr for i in listing}
    by_text = {i.text: use[i.addr] for i in listing}
    push = by_text["pushq %rbp"]
    assert (push.reads, push.writes) == ({"rbp", "rsp"}, {"rsp"})
    if name == "c-static":
        syscall = by_text["syscall"]
        assert {"rcx", "r11"} <= syscall.writes and "rax" in syscall.reads


def test_next_access_finds_a_read_that_leaves_the_register_unchanged(
    c_program_trace: Path,
) -> None:
    """In the compiled C program: the next step that reads rdi, where rdi keeps its value."""
    trace = load_trace(c_program_trace)
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

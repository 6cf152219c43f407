"""Verdicts on switch routines written in the techniques real runtimes use.

tests/switches/ holds one scenario per technique, each written for this
project (not copied from the runtimes): libco's re-pushed return address and
`ret`, Boost.Context's `pop %r8; jmp *%r8` with a realigning trampoline,
libaco's and marl's `jmp` to a saved continuation, musl's setjmp/longjmp,
and the own-`ret` switch of the green-threads tutorial and of minicoro. Each
correct one holds every invariant. Each variant changes one line (the line
count stays, so source lines stay put) and must fail exactly its invariant,
with the first cause at the right function and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from stacktrace_lab.analysis import CheckResult, check, derive_facts
from stacktrace_lab.analysis.transfers import Landing
from stacktrace_lab.record.recorder import record
from stacktrace_lab.scenario import load_scenario
from stacktrace_lab.trace.reader import load_trace

SWITCHES = Path(__file__).resolve().parent / "switches"
TECHNIQUES = sorted(p.stem for p in SWITCHES.glob("*.toml"))


def run(path: Path, out: Path) -> CheckResult:
    record(load_scenario(path), out)
    return check(load_trace(out))


def test_every_technique_has_a_scenario() -> None:
    assert TECHNIQUES == [
        "boost-style",
        "libaco-style",
        "libco-style",
        "minicoro-style",
        "musl-style",
        "own-ret-style",
    ]


@pytest.mark.parametrize("name", TECHNIQUES)
def test_each_correct_switch_holds_every_invariant(name: str, tmp_path: Path) -> None:
    result = run(SWITCHES / f"{name}.toml", tmp_path / f"{name}.parquet")
    assert result.holds, [(c.invariant, c.first.message) for c in result.causes]
    # main's switches come back: the resumes were checked, not skipped
    callee = result.result("callee-saved")
    assert all("never returned" in note for note in callee.notes)


#: For each technique, how its switches land, in step order.
LANDINGS = {
    # the first swap enters coro_fn; every other re-pushed ret resumes a call
    "libco-style": ["entry", "resume", "resume", "resume"],
    # jump lands in the trampoline, which enters coro_fn; coro_fn returns to finish
    "boost-style": ["trampoline", "entry", "resume", "resume", "return", "resume"],
    # the protector is coro_fn's return address
    "libaco-style": ["entry", "resume", "resume", "return", "resume"],
    # every longjmp lands on the resume of a setjmp call
    "musl-style": ["resume", "resume", "resume"],
    # thread_fn is entered, returns to skip, and skip passes on to guard
    "own-ret-style": ["entry", "return", "other"],
    # wrap_main and the switch's own ret are trampolines
    "minicoro-style": ["trampoline", "entry", "trampoline", "trampoline", "trampoline"],
}


@pytest.mark.parametrize("name", TECHNIQUES)
def test_switches_land_as_the_technique_says(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.parquet"
    record(load_scenario(SWITCHES / f"{name}.toml"), out)
    facts = derive_facts(load_trace(out))
    t = facts.transfers
    assert [t.kind(i).label for i in range(len(t))] == LANDINGS[name]
    entries = [i for i in range(len(t)) if t.kind(i) == Landing.ENTRY]
    # the coroutine function starts as the first code on its stack, rsp % 16 == 8
    assert all(bool(t.first_code[i]) and int(t.rsp[i]) % 16 == 8 for i in entries)
    resumes = [i for i in range(len(t)) if t.kind(i) == Landing.RESUME]
    for i in resumes:  # a resume lands on the call's return address with the call's rsp
        call = int(facts.calls[int(t.call[i])])
        assert int(t.rsp[i]) == int(facts.rsp[call])


@dataclass(frozen=True)
class Variant:
    technique: str
    name: str
    #: The line as written in the correct routine, and what the variant has instead.
    old: str
    new: str
    fails: str
    #: The first cause: a prefix of its site's symbol, a text on its site's line,
    #: and a word its first violation's message must contain.
    site: str
    site_line: str
    says: str
    stop: str = "returned"


VARIANTS = [
    Variant(
        "own-ret-style",
        "no-skip: the thread function entered at rsp % 16 == 0",
        "    mov %rsi, -32(%rdx)\n    lea -32(%rdx), %rax",
        "    mov %rsi, -24(%rdx)\n    lea -24(%rdx), %rax",
        "alignment",
        "spawn",
        "mov %rsi, -24(%rdx)",
        "thread_fn entered with rsp % 16 == 0",
    ),
    Variant(
        "own-ret-style",
        "forgets rbx",
        "    mov CTX_RBX(%rsi), %rbx",
        "    nop",
        "callee-saved",
        "switch",
        "    ret\n\nskip:",
        "rbx changed across the call to switch",
    ),
    Variant(
        "own-ret-style",
        "returns from the wrong slot",
        "    lea -32(%rdx), %rax",
        "    lea -40(%rdx), %rax",
        "ret-source",
        "spawn",
        "    mov %rax, CTX_RSP(%rdi)\n    ret\n\n# switch",
        "a slot nothing in the program wrote",
        stop="fault",
    ),
    Variant(
        "libco-style",
        "forgets r12",
        "    mov CTX_R12(%rsi), %r12",
        "    nop",
        "callee-saved",
        "swap",
        "    ret\n\n# coro_fn",
        "r12 changed across the call to swap",
    ),
    Variant(
        "libco-style",
        "the coroutine function entered at rsp % 16 == 0",
        "    lea -8(%rdx), %rax",
        "    lea -16(%rdx), %rax",
        "alignment",
        "make_ctx",
        "    mov %rax, CTX_RSP(%rdi)\n    mov %rsi, CTX_RET(%rdi)",
        "coro_fn entered with rsp % 16 == 0",
    ),
    Variant(
        "boost-style",
        "a trampoline that drops the realignment",
        "    push %rbp                     # finish as fn's return address: rsp % 16 == 8",
        "    mov %rbp, (%rsp)",
        "alignment",
        "trampoline",
        "jmp *%rbx",
        "coro_fn entered with rsp % 16 == 0",
    ),
    Variant(
        "boost-style",
        "forgets r12",
        "    pop %r12\n    pop %r13",
        "    pop %rcx\n    pop %r13",
        "callee-saved",
        "jump",
        "    jmp *%r8\n",
        "r12 changed across the call to jump",
    ),
    Variant(
        "libaco-style",
        "the coroutine function entered at rsp % 16 == 0",
        "    lea -8(%rdx), %rax",
        "    lea -16(%rdx), %rax",
        "alignment",
        "make_ctx",
        "    mov %rax, CTX_RSP(%rdi)\n    mov %rsi, CTX_RIP(%rdi)",
        "coro_fn entered with rsp % 16 == 0",
    ),
    Variant(
        "libaco-style",
        "forgets rbx",
        "    mov CTX_RBX(%rsi), %rbx",
        "    nop",
        "callee-saved",
        "swap",
        "jmp *CTX_RIP(%rsi)",
        "rbx changed across the call to swap",
    ),
    Variant(
        "musl-style",
        "longjmp forgets rbx",
        "    mov JB_RBX(%rdi), %rbx",
        "    nop",
        "callee-saved",
        "longjmp",
        "jmp *JB_RIP(%rdi)",
        "rbx changed across the call to setjmp",
    ),
    Variant(
        "minicoro-style",
        "forgets rbx",
        "    mov CTX_RBX(%rsi), %rbx",
        "    nop",
        "callee-saved",
        "switch",
        "    ret\n\ncoro_fn:",
        "rbx changed across the call to switch",
    ),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v.technique}: {v.name}")
def test_a_broken_variant_fails_exactly_its_invariant(variant: Variant, tmp_path: Path) -> None:
    text = (SWITCHES / f"{variant.technique}.toml").read_text()
    assert text.count(variant.old) == 1
    broken = text.replace(variant.old, variant.new)
    broken = broken.replace('stop = "returned"', f'stop = "{variant.stop}"')
    assert broken.count("\n") == text.count("\n")
    path = tmp_path / f"{variant.technique}.toml"
    path.write_text(broken)
    result = run(path, tmp_path / "trace.parquet")
    assert result.failed == (variant.fails,), [
        (c.invariant, c.first.message) for c in result.causes
    ]
    first = result.causes[0]
    assert first.invariant == variant.fails
    assert first.site_symbol.startswith(variant.site), first.site_symbol
    # the site's line: the first line of `site_line`, a text found once in the routine
    assert broken.count(variant.site_line) == 1, variant.site_line
    needle_line = broken[: broken.index(variant.site_line)].count("\n") + 1
    assert first.site_source == f"{load_scenario(path).name}.toml:{needle_line}"
    assert variant.says in first.first.message
    assert first.first.source is not None
    if variant.technique == "libco-style" and variant.fails == "alignment":
        # swap re-pushes the address itself: the fix is the saved stack pointer, not a slot
        assert "save one 8 bytes lower or higher" in first.first.message
        assert "plant it at" not in first.first.message

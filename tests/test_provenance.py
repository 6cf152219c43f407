"""Provenance: who wrote a slot, the chain back to where the value came from, planted returns."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stacktrace_lab.analysis.events import derive_facts
from stacktrace_lab.cli import main
from stacktrace_lab.explore import parse_slot, planted_returns, provenance
from stacktrace_lab.explore.provenance import last_register_change
from stacktrace_lab.record.recorder import Recording, RecordOptions, record
from stacktrace_lab.scenario import builtin_names, load_scenario
from stacktrace_lab.trace import load_trace

RET_STEP = 12


def _who_wrote(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["who-wrote", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_green_32_was_planted_at_step_6_from_the_movabs_into_rcx(
    first_switch_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hello = load_trace(first_switch_trace).metadata.symbols["hello"]
    answer = _who_wrote(capsys, str(first_switch_trace), "green:32", "--step", str(RET_STEP))
    assert answer["value"] == hello and answer["points_to"] == "hello+0"
    store, origin = answer["chain"]
    assert (store["kind"], store["step"], store["insn"]) == ("store", 6, "movq %rcx, 0x20(%rax)")
    assert (origin["kind"], origin["step"], origin["what"]) == ("immediate", 5, "rcx")
    assert origin["insn"] == f"movabsq ${hello:#x}, %rcx"
    assert origin["value"] == hello


def test_text_answer_names_both_steps(
    first_switch_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["who-wrote", str(first_switch_trace), "green:32", "--first-planted-ret"]) == 0
    out = capsys.readouterr().out
    assert "green[32]" in out and "before step 12" in out and "hello+0" in out
    lines = out.splitlines()
    assert any(line.split()[:1] == ["6"] and "movq %rcx, 0x20(%rax)" in line for line in lines)
    assert any(line.split()[:1] == ["5"] and "movabsq $0x40003e, %rcx" in line for line in lines)


def test_address_and_region_index_name_the_same_slot(first_switch_trace: Path) -> None:
    trace = load_trace(first_switch_trace)
    green = trace.metadata.region("green")
    by_name = parse_slot(trace, "green:32")
    by_address = parse_slot(trace, hex(green.base + 32))
    assert by_name == by_address and by_address.name == "green[32]"
    assert provenance(trace, by_name, RET_STEP) == provenance(trace, by_address, RET_STEP)


def test_before_the_store_the_slot_was_never_written(first_switch_trace: Path) -> None:
    trace = load_trace(first_switch_trace)
    answer = provenance(trace, parse_slot(trace, "green:32"), 6)  # before the store runs
    assert answer.value == 0
    assert [link.kind for link in answer.chain] == ["initial"]


def test_a_call_pushed_slot_and_the_sentinel(first_switch_trace: Path) -> None:
    trace = load_trace(first_switch_trace)
    main_stack = trace.metadata.region("main")
    pushed = provenance(trace, parse_slot(trace, f"main:{main_stack.size - 40}"), RET_STEP)
    assert [(link.kind, link.step) for link in pushed.chain] == [("push-return", 10)]
    sentinel = provenance(trace, parse_slot(trace, f"main:{main_stack.size - 8}"), RET_STEP)
    assert sentinel.pointer == "sentinel return"
    assert sentinel.chain[0].kind == "initial" and "sentinel" in sentinel.chain[0].note


def test_follows_lea_back_to_the_stack_base(first_switch_trace: Path) -> None:
    """ctx.rsp = green+32 came from `lea 0x20(%rax), %rdx`, and rax from `movabs $green_base`."""
    trace = load_trace(first_switch_trace)
    main_stack = trace.metadata.region("main")
    answer = provenance(trace, parse_slot(trace, f"main:{main_stack.size - 32}"), RET_STEP)
    assert answer.pointer == "green[32]"
    kinds = [(link.kind, link.step, link.what) for link in answer.chain]
    assert kinds == [("store", 8, "main[65504]"), ("computed", 7, "rdx"), ("immediate", 4, "rax")]


CHAIN = """
main:
    movabs $target, %rbx
    push %rbx                   # step 1: main stack slot
    xor %ebx, %ebx
    pop %rcx                    # step 3: a load from that slot
    mov %rcx, %rdx              # step 4: a register move
    movabs $green_base, %rax
    mov %rdx, 8(%rax)           # step 6: the store asked about
    movl $1, 16(%rax)           # steps 7, 8: two half writes of one slot
    movl $2, 20(%rax)
    hlt
target:
    nop
"""


def test_chain_through_move_pop_and_push(
    record_source: Callable[..., Recording],
) -> None:
    trace = load_trace(record_source(CHAIN, stacks=(("main", 4096), ("green", 64))).path)
    answer = provenance(trace, parse_slot(trace, "green:8"), trace.num_rows)
    assert answer.pointer == "target+0"
    steps = [(link.kind, link.step, link.what) for link in answer.chain]
    assert steps == [
        ("store", 6, "green[8]"),
        ("register", 4, "rdx"),
        ("load", 3, "rcx"),
        ("store", 1, "main[4080]"),
        ("immediate", 0, "rbx"),
    ]
    shallow = provenance(trace, parse_slot(trace, "green:8"), trace.num_rows, depth=2)
    assert len(shallow.chain) == 2


def test_partial_writes_name_every_writer(record_source: Callable[..., Recording]) -> None:
    trace = load_trace(record_source(CHAIN, stacks=(("main", 4096), ("green", 64))).path)
    answer = provenance(trace, parse_slot(trace, "green:16"), trace.num_rows)
    assert answer.value == 1 | 2 << 32
    assert answer.chain[0].step == 8 and answer.partial_writers == (7,)


@pytest.mark.parametrize(
    ("slot", "message"),
    [
        ("green:44", "outside green"),
        ("blue:0", "no region 'blue'"),
        ("green:x", "bad slot"),
        ("somewhere", "bad slot"),
    ],
)
def test_bad_slots_exit_2(
    first_switch_trace: Path, capsys: pytest.CaptureFixture[str], slot: str, message: str
) -> None:
    assert main(["who-wrote", str(first_switch_trace), slot]) == 2
    assert message in capsys.readouterr().err


def test_first_switch_has_one_planted_return(first_switch_trace: Path) -> None:
    trace = load_trace(first_switch_trace)
    (planted,) = planted_returns(trace)
    assert (planted.ret_step, planted.stack, planted.index) == (RET_STEP, "green", 32)
    assert planted.target == trace.metadata.symbols["hello"]
    assert planted.target_symbol == "hello+0"
    assert planted.planted_step == 6
    assert planted.planted_by is not None and planted.planted_by.text == "movq %rcx, 0x20(%rax)"


OVERWRITE = """
main:
    call f                      # f overwrites its own return address
    hlt
f:
    movabs $g, %rax
    mov %rax, (%rsp)
    ret                         # planted: pops g
g:
    call h                      # an ordinary call and ret: not planted
    hlt
h:
    ret
"""


def test_planted_versus_pushed_returns_across_row_groups(
    record_source: Callable[..., Recording],
) -> None:
    for rows_per_group in (65536, 2, 1):
        trace = load_trace(
            record_source(OVERWRITE, RecordOptions(row_group_size=rows_per_group)).path
        )
        found = planted_returns(trace)
        assert [(p.ret_step, p.planted_step, p.target_symbol) for p in found] == [(3, 2, "g+0")]


def test_green_threads_switches_are_planted_returns(tmp_path: Path) -> None:
    """Every [[expect.ret]] of the green-threads built-in shows up as a planted return."""
    scenario = load_scenario("green-threads")
    trace = load_trace(record(scenario, tmp_path / "gt.parquet").path)
    found = planted_returns(trace)
    symbols = trace.metadata.symbols
    assert scenario.expect.rets
    for expected in scenario.expect.rets:
        assert any(
            p.stack == expected.stack
            and p.index == expected.index
            and p.target == symbols[expected.target]
            for p in found
        ), expected


def test_last_register_change(first_switch_trace: Path) -> None:
    trace = load_trace(first_switch_trace)
    assert last_register_change(trace, "rcx", 6) == 5
    assert last_register_change(trace, "rcx", 5) is None
    assert last_register_change(trace, "rsp", RET_STEP) == 11  # `movq (%rdi), %rsp`
    assert last_register_change(trace, "rsp", trace.num_rows) == RET_STEP


@pytest.mark.parametrize("name", builtin_names())
def test_explore_and_the_invariants_find_the_same_planted_returns(
    name: str, tmp_path: Path
) -> None:
    # Two scans find planted returns: the streaming one here (it can stop at the
    # first, for `show --first-planted-ret`) and the invariants' shared pass.
    # They must never drift apart.
    trace = load_trace(record(load_scenario(name), tmp_path / f"{name}.parquet").path)
    explored = [(p.ret_step, p.slot_addr, p.target, p.planted_step) for p in planted_returns(trace)]
    analysed = [
        (p.ret_step, p.slot, p.value, p.planted_step) for p in derive_facts(trace).planted_returns
    ]
    assert explored == analysed


TRICKY_RETURNS = {
    "overwritten-return-address": """
        main:
            call f
            ret
        f:
            movabs $g, %rax
            movq %rax, (%rsp)      # replace the pushed return address: planted
            ret
        g:
            hlt
    """,
    "one-byte-patch": """
        main:
            call f
            hlt
        f:
            movb $0x12, (%rsp)     # patch the low byte of the pushed address
            ret
    """,
    "push-then-ret": """
        main:
            movabs $g, %rax
            push %rax              # a push is an ordinary store, not a call
            ret
        g:
            hlt
    """,
    "sse-planted": """
        main:
            movabs $g, %rax
            movq %rax, %xmm0
            sub $24, %rsp
            movdqu %xmm0, (%rsp)   # one 16-byte store plants g
            ret
        g:
            hlt
    """,
}


@pytest.mark.parametrize("name", sorted(TRICKY_RETURNS))
def test_both_scans_agree_on_tricky_returns(
    name: str, record_source: Callable[..., Recording]
) -> None:
    trace = load_trace(record_source(TRICKY_RETURNS[name]).path)
    explored = [(p.ret_step, p.slot_addr, p.target, p.planted_step) for p in planted_returns(trace)]
    analysed = [
        (p.ret_step, p.slot, p.value, p.planted_step) for p in derive_facts(trace).planted_returns
    ]
    assert explored == analysed
    assert len(explored) == 1, explored


# --- what each instruction does is decoded from its bytes --------------------------------

INTEL_CHAIN = """
main:
    lea rax, [rip + target]
    mov ecx, eax
    movabs rdi, offset d_base
    mov qword ptr [rdi + 8], rcx
    mov qword ptr [rdi + 16], 0x2a
    hlt
target:
    nop
"""


def test_chain_in_an_intel_source_follows_sub_registers_and_lea(
    record_source: Callable[..., Recording],
) -> None:
    trace = load_trace(record_source(INTEL_CHAIN, syntax="intel", data=(("d", 64),)).path)
    answer = provenance(trace, parse_slot(trace, "d:8"), trace.num_rows)
    assert [(link.kind, link.step, link.what) for link in answer.chain] == [
        ("store", 3, "d[8]"),
        ("register", 1, "rcx"),  # `mov ecx, eax`: a move from rax into rcx
        ("computed", 0, "rax"),  # rip-relative: nothing further to follow
    ]
    lea = answer.chain[-1]
    assert lea.note.endswith("as the address 0x19(%rip)")  # target, 0x19 past the lea
    assert lea.value == answer.value == trace.metadata.symbols["target"]
    # the text shown is the trace's AT&T, whatever the source was written in
    immediate = provenance(trace, parse_slot(trace, "d:16"), trace.num_rows)
    assert [(link.kind, link.what) for link in immediate.chain] == [
        ("store", "d[16]"),
        ("immediate", "$0x2a"),
    ]


POP_MOVES_RSP = """
main:
    push %rax
    pop %rbx
    movabs $d_base, %rdi
    mov %rsp, (%rdi)
    hlt
"""


def test_a_pop_into_another_register_did_not_load_rsp(
    record_source: Callable[..., Recording],
) -> None:
    # `pop %rbx` is the last change of rsp, but rsp was not popped: rbx was. Reading
    # the mnemonic alone said "rsp was popped" and followed the popped slot.
    trace = load_trace(record_source(POP_MOVES_RSP, data=(("d", 64),)).path)
    answer = provenance(trace, parse_slot(trace, "d:0"), trace.num_rows)
    assert [(link.kind, link.step, link.what) for link in answer.chain] == [
        ("store", 3, "d[0]"),
        ("computed", 1, "rsp"),
    ]
    assert answer.chain[-1].note == "rsp was last changed at step 1"


def test_a_slot_is_named_region_bracket_index_and_the_old_colon_form_still_parses(
    first_switch_trace: Path,
) -> None:
    trace = load_trace(first_switch_trace)
    assert parse_slot(trace, "green[32]") == parse_slot(trace, "green:32")
    assert parse_slot(trace, "green[0x20]").name == "green[32]"

"""Inputs a demanding user gives by accident or on purpose: each bug found this way.

Every tool error must be one line naming the file and exit status 2, never a
traceback and never a hang; faults of the emulated program are not tool errors.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from stacktrace_lab.cli import main
from stacktrace_lab.errors import BadInput
from stacktrace_lab.record import recorder
from stacktrace_lab.record.asm.assembler import labels_of_line
from stacktrace_lab.record.machine.cpu import RANDOM_VALUE, TSC_START
from stacktrace_lab.record.recorder import Recording, RecordOptions, record
from stacktrace_lab.replay import replay
from stacktrace_lab.scenario import load_scenario
from stacktrace_lab.trace import load_trace


def _tampered(source: Path, target: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of a trace whose metadata JSON `edit` changed in place."""
    parquet = pq.ParquetFile(source)
    doc = json.loads(parquet.metadata.metadata[b"stacktrace_lab"])
    edit(doc)
    table = parquet.read().replace_schema_metadata({b"stacktrace_lab": json.dumps(doc).encode()})
    pq.write_table(table, target)
    return target


def _with_table(source: Path, target: Path, change: Callable[[Any], Any]) -> Path:
    """A copy of a trace with its rows changed and its metadata kept."""
    parquet = pq.ParquetFile(source)
    raw = parquet.metadata.metadata[b"stacktrace_lab"]
    table = change(parquet.read()).replace_schema_metadata({b"stacktrace_lab": raw})
    pq.write_table(table, target)
    return target


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            doc = doc[key]
        doc[last] = value

    return edit


METADATA_EDITS = {
    "expect not a table": _set("scenario.expect", 5),
    "expect.stop not a string": _set("scenario.expect.stop", 3),
    "source null": _set("scenario.source", None),
    "stop not a table": _set("stop", None),
    "stop reason not a string": _set("stop.reason", 7),
    "stdout not a string": _set("output.stdout", ["x"]),
    "region of negative size": lambda doc: doc["layout"]["regions"][2].update(size=-5),
    "snapshot of a column not in the file": _set(
        "snapshots.green", {"column": "stack__nope", "base": 1, "size": 48}
    ),
    "snapshot wider than its column": lambda doc: doc["snapshots"]["green"].update(size=64),
}

TABLE_EDITS = {
    "a register column missing": lambda table: table.drop(["rax"]),
    "a stack column missing": lambda table: table.drop(["stack__green"]),
    "no rows": lambda table: table.slice(0, 0),
}


def _commands(trace: Path, good: Path, out: Path) -> list[list[str]]:
    return [
        ["check", str(trace)],
        ["report", str(trace), "-o", str(out)],
        ["diff", str(good), str(trace)],
        ["show", str(trace), "--step", "5"],
        ["who-wrote", str(trace), "green:32"],
        ["replay", str(trace)],
    ]


def _assert_bad_input(argv: list[str], capsys: pytest.CaptureFixture[str], name: str) -> None:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stacktrace-lab: error: "), (argv, err)
    assert name in err


@pytest.mark.parametrize("edit", list(METADATA_EDITS), ids=list(METADATA_EDITS))
def test_a_trace_with_edited_metadata_is_bad_input_for_every_command(
    edit: str, first_switch_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = _tampered(first_switch_trace, tmp_path / "edited.parquet", METADATA_EDITS[edit])
    with pytest.raises(BadInput, match=r"edited\.parquet"):
        load_trace(trace)
    for argv in _commands(trace, first_switch_trace, tmp_path / "report"):
        _assert_bad_input(argv, capsys, "edited.parquet")
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("edit", list(TABLE_EDITS), ids=list(TABLE_EDITS))
def test_a_trace_with_edited_rows_is_bad_input_for_every_command(
    edit: str, first_switch_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = _with_table(first_switch_trace, tmp_path / "edited.parquet", TABLE_EDITS[edit])
    for argv in _commands(trace, first_switch_trace, tmp_path / "report"):
        _assert_bad_input(argv, capsys, "edited.parquet")


def _overlap_green_with_main(doc: dict[str, Any]) -> None:
    main_base = doc["layout"]["regions"][1]["base"]
    doc["layout"]["regions"][2]["base"] = main_base
    doc["snapshots"]["green"]["base"] = main_base


def test_replay_of_a_trace_whose_regions_overlap_is_bad_input(
    first_switch_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = _tampered(first_switch_trace, tmp_path / "edited.parquet", _overlap_green_with_main)
    _assert_bad_input(["replay", str(trace)], capsys, "edited.parquet")


def _record_in_subprocess(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Record in a child process with a timeout, so that a hang fails the test."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "stacktrace_lab",
            "record",
            str(path),
            "-o",
            str(tmp_path / "o.parquet"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize(
    "line",
    # (in TOML source: r'\\\"' is an escaped quote in the assembly)
    ['.ascii "abc', r'.asciz "a\\\"b', '.string "abc # no end'],
)
def test_an_unterminated_string_is_an_error_not_a_hang(
    line: str, write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    # Keystone loops forever on a string literal without its closing quote.
    path = write_scenario(f"main:\n    hlt\n    {line}\n    nop\n")
    result = _record_in_subprocess(path, tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"stacktrace-lab: error: {path}:12: ")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o.parquet").exists()


def test_a_comment_character_inside_a_string_with_an_escaped_quote(
    record_source: Callable[..., Recording],
) -> None:
    # TOML's own escapes halve the backslashes: the program reads `.ascii "a\\"#;b"`.
    recording = record_source("main:\n    hlt\n" + r'    .ascii "a\\\"#;b"   # the data')
    assert recording.metadata.code == b'\xf4a"#;b'


def test_a_semicolon_separates_att_instructions(record_source: Callable[..., Recording]) -> None:
    # GNU as (and keystone) read `;` as a statement separator in AT&T source,
    # the seed's own `mov 0x00(%rdi), %rsp; ret`; it used to drop the `ret`.
    recording = record_source(
        "main:\n    movabs $target, %rax\n    push %rax; ret\ntarget: hlt  # ; is not a comment\n"
    )
    trace = load_trace(recording.path)
    assert list(trace.rows(["insn"])["insn"]) == [
        "movabsq $0x40000c, %rax",
        "pushq %rax",
        "retq",
        "hlt",
    ]
    assert recording.metadata.stop.reason == "halted"
    assert labels_of_line("nop; later: nop  # not: this") == ["later"]


def test_a_semicolon_still_starts_a_comment_in_intel_source(
    record_source: Callable[..., Recording],
) -> None:
    recording = record_source("main:\n    mov eax, 1 ; load one\n    hlt\n", syntax="intel")
    assert recording.metadata.code == b"\xb8\x01\x00\x00\x00\xf4"


@pytest.mark.parametrize(
    ("syntax", "line"),
    [("intel", "mov rax, [rbx+"), ("intel", "mov rax, [rbx"), ("att", "movq (%rbx, %rax")],
)
def test_an_unclosed_bracket_is_an_error(
    syntax: str, line: str, write_scenario: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # Keystone assembles `mov rax, [rbx` as a load from address 0, silently.
    path = write_scenario(f"main:\n    nop\n    {line}\n    hlt\n", syntax=syntax)
    assert main(["record", str(path), "-o", str(path.with_suffix(".parquet"))]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"stacktrace-lab: error: {path}:12: ") and err.count("\n") == 1
    assert not path.with_suffix(".parquet").exists()


def test_a_program_file_that_is_not_utf8_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "prog.s").write_bytes(b"main:\n    hlt  # \xff\xfe\n")
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        'name = "s"\n[[stacks]]\nname = "main"\nsize = 64\n[program]\nfile = "prog.s"\n'
    )
    _assert_bad_input(
        ["record", str(scenario), "-o", str(tmp_path / "s.parquet")], capsys, "prog.s"
    )


def test_a_write_of_a_huge_count_returns_efault(record_source: Callable[..., Recording]) -> None:
    # write(1, heap, 2**63 - 1): the buffer runs far past the mapped memory.
    recording = record_source(
        """
        main:
            movq $1, %rax
            movq $1, %rdi
            movabs $heap_base, %rsi
            movabs $0x7fffffffffffffff, %rdx
            syscall
            hlt
        """,
        data=(("heap", 64),),
    )
    assert recording.metadata.stop.reason == "halted"
    assert recording.metadata.final["rax"] == 2**64 - 14  # -EFAULT
    assert recording.metadata.stdout == ""


@pytest.mark.parametrize(
    ("syntax", "line", "register", "value"),
    [
        ("att", "rdtsc", "rax", TSC_START & 0xFFFFFFFF),
        ("att", "nop; rdtscp", "rdx", TSC_START >> 32),
        ("intel", "rdrand rax", "rax", RANDOM_VALUE),
        ("intel", "rdseed eax", "rax", RANDOM_VALUE & 0xFFFFFFFF),
        ("att", ".byte 0x0f, 0x31", "rax", TSC_START & 0xFFFFFFFF),  # rdtsc as bytes
        ("att", "xor %ecx, %ecx; xgetbv", "rax", 3),
        ("att", "mov $7, %eax; xor %ecx, %ecx; cpuid", "rbx", 0),  # no AVX2 in leaf 7
    ],
)
def test_host_dependent_instructions_give_fixed_values(
    syntax: str, line: str, register: str, value: int, write_scenario: Callable[..., Path]
) -> None:
    # Unicorn answers these from the host; the CPU model (record/machine/cpu.py) gives
    # documented fixed values instead, so a trace is the same on every recording.
    path = write_scenario(f"main:\n    {line}\n    hlt\n", syntax=syntax)
    first = record(load_scenario(str(path)), path.with_suffix(".parquet"))
    assert first.metadata.stop.reason == "halted"
    assert first.metadata.final[register] == value
    again = record(load_scenario(str(path)), path.with_suffix(".again.parquet"))
    assert again.path.read_bytes() == first.path.read_bytes()


def test_a_terminated_record_leaves_no_temporary_file(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    # SIGTERM is what `timeout` and a cancelled CI job send: the recording
    # must clean up its hidden temporary file as it does on Ctrl-C.
    path = write_scenario("main:\n    inc %rax\n    jmp main\n")
    out = tmp_path / "out"
    out.mkdir()
    argv = ["record", str(path), "--max-steps", "100000000", "-o", str(out / "t.parquet")]
    child = subprocess.Popen(
        [sys.executable, "-m", "stacktrace_lab", *argv],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # A temporary file with rows in it: the emulation is running.
        deadline = time.monotonic() + 30
        while not any(f.stat().st_size for f in out.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(out.iterdir()), "the recording never started writing"
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=30)
    finally:
        child.kill()
    # Stopped inside the emulation, it exits as a process killed by SIGTERM
    # would be reported by a shell: 128 + 15, saying which signal.
    assert child.returncode == 128 + signal.SIGTERM, err
    assert err == "stacktrace-lab: interrupted (SIGTERM)\n"
    assert list(out.iterdir()) == []


def test_large_snapshots_make_smaller_row_groups(
    record_source: Callable[..., Recording], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 65536 rows of a 1 MiB snapshot were buffered as 64 GiB before the first
    # row group was written. A group holds at most MAX_GROUP_SNAPSHOT_BYTES of
    # snapshots (made small here so that the test is cheap).
    assert recorder.MAX_GROUP_SNAPSHOT_BYTES // (8 * 512) >= recorder.DEFAULT_ROW_GROUP
    monkeypatch.setattr(recorder, "MAX_GROUP_SNAPSHOT_BYTES", 64 * 1024)
    recording = record_source(
        "main:\n    inc %rax\n    push %rax\n    pop %rbx\n    jmp main\n",
        RecordOptions(max_steps=40, snapshot_limit=4096),
        stacks=(("main", 4096),),
    )
    trace = load_trace(recording.path)
    assert trace.metadata.options["row_group_size"] == 16
    assert trace.num_row_groups == 3
    assert replay(trace).difference is None

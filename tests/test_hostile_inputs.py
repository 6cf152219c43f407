"""Hostile scenarios (issue 16): every resource bounded and named, files kept inside.

Each test is a case found by trying hostile inputs against `record`: before,
it grew memory or disk without bound, never returned, printed a traceback, or
copied a host file into the trace. Now: exit 2 with one line naming the file
and the limit, or a trace that says what was cut.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from markdown_it import MarkdownIt

from stacktrace_lab.cli import main
from stacktrace_lab.limits import MiB
from stacktrace_lab.replay import replay
from stacktrace_lab.trace import load_trace

from .conftest import scenario_toml

WRITE_LOOP = """
main:
    movl $1, %eax
    movl $1, %edi
    leaq buf_base, %rsi
    movl $65536, %edx
    syscall
    jmp main
"""


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in tmp_path: a record without -o writes stacktrace-lab-traces/<name>.parquet here."""
    monkeypatch.chdir(tmp_path)


def _record(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = main(["record", *argv])
    err = capsys.readouterr().err
    assert err.count("\n") <= 1, err
    return status, err.removeprefix("stacktrace-lab: error: ").rstrip("\n")


def _scenario(tmp_path: Path, source: str, name: str = "s.toml", **kwargs: object) -> Path:
    path = tmp_path / name
    path.write_text(scenario_toml(source, **kwargs))  # type: ignore[arg-type]
    return path


def _metadata(path: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads(pq.ParquetFile(path).metadata.metadata[b"stacktrace_lab"])
    return doc


def test_output_written_in_a_loop_is_capped_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """64 KiB per write, 2000 writes (125 MiB): 1 MiB kept, the rest counted."""
    path = _scenario(tmp_path, WRITE_LOOP, data=(("buf", 65536),))
    trace = tmp_path / "t.parquet"
    status, _ = _record([str(path), "-o", str(trace), "--max-steps", "12000"], capsys)
    assert status == 0
    loaded = load_trace(trace)
    assert len(loaded.metadata.stdout) == MiB  # zeros decode one byte to one character
    assert _metadata(trace)["output_cut"] == {"stdout": 2000 * 65536 - MiB, "stderr": 0}
    assert replay(loaded).matches


def test_the_output_cap_can_be_raised_or_lowered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _scenario(tmp_path, WRITE_LOOP, data=(("buf", 65536),))
    trace = tmp_path / "t.parquet"
    argv = [str(path), "-o", str(trace), "--max-steps", "60", "--max-output", "4K"]
    assert _record(argv, capsys)[0] == 0
    assert len(load_trace(trace).metadata.stdout) == 4096
    assert _metadata(trace)["output_cut"] == {"stdout": 10 * 65536 - 4096, "stderr": 0}
    assert replay(load_trace(trace)).matches  # the cap is in the trace's options
    assert _record([str(path), "--max-output", "5M"], capsys) == (
        2,
        "--max-output must be between 0 and 4194304, got 5242880",
    )


def test_24_mib_of_zeros_written_once_gives_a_readable_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = """
    main:
        movl $1, %eax
        movl $1, %edi
        leaq buf_base, %rsi
        movl $25165824, %edx
        syscall
        hlt
    """
    path = _scenario(tmp_path, source, data=(("buf", 24 * MiB),))
    trace = tmp_path / "t.parquet"
    assert _record([str(path), "-o", str(trace)], capsys)[0] == 0
    assert main(["check", str(trace)]) == 0
    capsys.readouterr()
    assert _metadata(trace)["output_cut"] == {"stdout": 23 * MiB, "stderr": 0}


def test_a_large_source_is_refused_before_it_is_read_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The 50 MB source of `nop` lines: refused at 1 MiB (option to raise it)."""
    path = _scenario(tmp_path, "main:\n" + "    nop\n" * 300_000 + "    hlt\n")
    assert _record([str(path)], capsys) == (
        2,
        f"{path}: larger than the scenario file limit of 1048576 bytes (--max-source-size)",
    )
    (tmp_path / "prog.s").write_text("main:\n" + "    nop\n" * 300_000 + "    hlt\n")
    linked = tmp_path / "linked.toml"
    linked.write_text(
        'name = "l"\n[[stacks]]\nname = "main"\nsize = 64\n[program]\nfile = "prog.s"\n'
    )
    assert _record([str(linked)], capsys) == (
        2,
        f"{tmp_path / 'prog.s'}: larger than the program file limit of 1048576 bytes "
        "(--max-source-size)",
    )


@pytest.mark.parametrize(
    "line",
    [
        ".skip 0x10000000000",
        ".space 1 << 40",
        ".fill 0x1000000, 8, 0",
        ".p2align 40",
        ".zero main_size * 1024",
        ".rept 100000000\n    nop\n    .endr",
    ],
)
def test_a_huge_directive_is_refused_before_assembling(
    line: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _scenario(tmp_path, f"main:\n    {line}\n    hlt\n", stacks=(("main", 65536),))
    status, err = _record([str(path)], capsys)
    assert status == 2
    assert err.startswith(f"{path}:")
    assert "the program would be larger than the limit of 1048576 bytes (--max-program-size)" in err


def test_a_directive_whose_size_is_unknown_before_assembling_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _scenario(tmp_path, "main:\n    .skip later - main\nlater:\n    hlt\n")
    assert _record([str(path)], capsys) == (
        2,
        f"{path}:11: cannot work out the size of .skip later - main before assembling: "
        ".skip later - main",
    )


def test_a_program_under_the_limit_still_assembles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = "main:\n    jmp end\n    .skip 4096\n    .fill 16, 4, 0x90909090\nend:\n    hlt\n"
    path = _scenario(tmp_path, source)
    trace = tmp_path / "t.parquet"
    assert _record([str(path), "-o", str(trace)], capsys)[0] == 0
    assert len(load_trace(trace).metadata.code) == 5 + 4096 + 64 + 1


def test_a_million_regions_are_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    many = tuple((f"s{i}", 64) for i in range(65))
    path = _scenario(tmp_path, "main:\n    hlt\n", stacks=many)
    assert _record([str(path)], capsys) == (
        2,
        f"{path}: field 'stacks': 65 regions declared, more than 64",
    )
    million = tmp_path / "million.toml"
    million.write_text("".join(f'[[stacks]]\nname = "s{i}"\nsize = 64\n' for i in range(10**6)))
    status, err = _record([str(million)], capsys)
    assert status == 2 and "larger than the scenario file limit" in err


def test_toml_nested_100000_deep_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert _record([str(path)], capsys) == (2, f"{path}: TOML nested more than 16 levels deep")
    path.write_text("x = " + "[" * 20 + "]" * 20 + "\n")
    assert _record([str(path)], capsys) == (2, f"{path}: TOML nested more than 16 levels deep")


def test_program_file_dev_zero_returns_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        'name = "s"\n[[stacks]]\nname = "main"\nsize = 64\n[program]\nfile = "/dev/zero"\n'
    )
    assert _record([str(path)], capsys) == (
        2,
        f"{path}: field 'program.file': '/dev/zero' is outside the scenario's directory "
        f"{tmp_path}; give --allow-outside to read it",
    )
    assert _record([str(path), "--allow-outside"], capsys) == (
        2,
        "/dev/zero: is not a regular file; a program file must be a regular file",
    )


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.s", "sub/../../outside.s"])
def test_program_file_outside_the_scenario_directory_needs_allow_outside(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "outside.s").write_text("main:\n    hlt\n")
    inner = tmp_path / "inner"
    (inner / "sub").mkdir(parents=True)
    path = inner / "s.toml"
    path.write_text(
        f'name = "s"\n[[stacks]]\nname = "main"\nsize = 64\n[program]\nfile = "{name}"\n'
    )
    status, err = _record([str(path), "-o", str(tmp_path / "t.parquet")], capsys)
    assert (status, err) == (
        2,
        f"{path}: field 'program.file': {name!r} is outside the scenario's directory "
        f"{inner}; give --allow-outside to read it",
    )
    if name != "/etc/passwd":
        assert (
            _record([str(path), "-o", str(tmp_path / "t.parquet"), "--allow-outside"], capsys)[0]
            == 0
        )


def test_a_symlink_out_of_the_directory_is_outside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "prog.s").symlink_to("/etc/passwd")
    path = tmp_path / "inner" / "s.toml"
    path.write_text(
        'name = "s"\n[[stacks]]\nname = "main"\nsize = 64\n[program]\nfile = "prog.s"\n'
    )
    status, err = _record([str(path)], capsys)
    assert status == 2 and "'prog.s' is outside the scenario's directory" in err


def test_incbin_is_resolved_inside_the_scenario_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "blob.bin").write_bytes(b"\x90\x90\xf4")
    path = _scenario(tmp_path, 'main:\n    .incbin "blob.bin"\n')
    monkeypatch.chdir("/")  # the file is found beside the scenario, not in the cwd
    trace = tmp_path / "t.parquet"
    assert _record([str(path), "-o", str(trace)], capsys)[0] == 0
    loaded = load_trace(trace)
    assert loaded.metadata.code == b"\x90\x90\xf4"
    assert 'incbin "blob.bin"' in loaded.metadata.scenario.source  # as written

    for name in ("/etc/passwd", "../x.bin"):
        leak = _scenario(tmp_path, f'main:\n    .incbin "{name}"\n    hlt\n', name="leak.toml")
        assert _record([str(leak)], capsys) == (
            2,
            f"{leak}:11: .incbin: {name!r} is outside the scenario's directory {tmp_path}; "
            "give --allow-outside to read it",
        )
    zero = _scenario(tmp_path, 'main:\n    .incbin "/dev/zero", 0, 8\n    hlt\n', name="z.toml")
    assert _record([str(zero), "--allow-outside"], capsys) == (
        2,
        f"{zero}:11: '/dev/zero' is not a regular file: .incbin \"/dev/zero\", 0, 8",
    )


def test_recording_a_fifo_scenario_does_not_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    assert _record([str(fifo)], capsys) == (
        2,
        f"{fifo}: is not a regular file; a scenario file must be a regular file",
    )


def test_a_large_snapshot_limit_stops_at_the_trace_size_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """1 MiB snapshots of changing pseudo-random bytes: the run stops (reason limit)
    under --max-trace-size, the trace is kept and replays."""
    source = """
    main:
        movabsq $88172645463325252, %rax
    again:
        movq %rax, %rbx
        shlq $13, %rbx
        xorq %rbx, %rax
        movq %rax, %rbx
        shrq $7, %rbx
        xorq %rbx, %rax
        movq %rax, %rcx
        andq $0xffff8, %rcx
        leaq main_base, %rdx
        movq %rax, (%rdx,%rcx)
        jmp again
    """
    path = _scenario(tmp_path, source, stacks=(("main", MiB),))
    trace = tmp_path / "t.parquet"
    argv = [str(path), "-o", str(trace), "--snapshot-limit", str(MiB), "--max-trace-size", "1M"]
    assert _record(argv, capsys)[0] == 0
    loaded = load_trace(trace)
    assert loaded.metadata.stop.reason == "limit"
    assert loaded.metadata.stop.detail == (
        "the trace reached the size limit of 1048576 bytes (--max-trace-size)"
    )
    assert trace.stat().st_size <= MiB
    assert replay(loaded).matches


@pytest.mark.parametrize("syntax", ["att", "intel"])
def test_a_label_named_like_a_register_is_named_on_its_own_line(
    syntax: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _scenario(tmp_path, "main:\n    nop\nrax:\n    nop\n    hlt\n", syntax=syntax)
    assert _record([str(path)], capsys) == (
        2,
        f"{path}:12: label 'rax' is named like a register; rename it: rax:",
    )


def test_program_output_cannot_leave_its_fence_in_report_md(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile = "```\n<script>alert(1)</script>\n````` x\n~~~\n<img src=x onerror=alert(2)>\n"
    source = (
        "main:\n    movl $1, %eax\n    movl $1, %edi\n    leaq text(%rip), %rsi\n"
        f"    movl ${len(hostile)}, %edx\n    syscall\n    hlt\ntext:\n"
        # Backslashes doubled: the source sits in a TOML basic string.
        f"    .ascii {json.dumps(hostile).replace(chr(92), chr(92) * 2)}\n"
    )
    path = _scenario(tmp_path, source)
    trace = tmp_path / "t.parquet"
    assert _record([str(path), "-o", str(trace)], capsys)[0] == 0
    assert load_trace(trace).metadata.stdout == hostile
    main(["report", str(trace), "-o", str(tmp_path / "r")])
    capsys.readouterr()
    rendered = MarkdownIt("commonmark").render((tmp_path / "r" / "report.md").read_text())
    assert "<script>alert" not in rendered and "<img src=x" not in rendered
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered
    html = (tmp_path / "r" / "index.html").read_text()
    assert "<script>alert(1)" not in html and "<img src=x" not in html


@pytest.mark.parametrize("line", ["\x7f", "\x01", "é", "    nop \x1b[31m"])
def test_characters_keystone_never_returns_from_are_refused_on_their_line(
    line: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the property suite: keystone loops forever on these lines."""
    path = tmp_path / "s.toml"
    source = json.dumps(f"main:\n    nop\n{line}\n    hlt\n")
    path.write_text(
        f'name = "s"\n[[stacks]]\nname = "main"\nsize = 64\n[program]\nsource = {source}\n'
    )
    status, err = _record([str(path)], capsys)
    assert status == 2 and err.startswith(f"{path}:8: ")
    assert ("control character U+" in err) or ("outside a string or comment" in err)


def test_include_in_a_dot_S_file_stays_inside_the_scenario_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`#include` puts a file's text into the trace: the same rule as `[program] file`."""
    (tmp_path / "outside.h").write_text("#define SECRET 7\n")
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "ok.h").write_text("#define VALUE 5\n")
    (inner / "prog.S").write_text(
        '#include "ok.h"\n#include "../outside.h"\nmain:\n    mov $VALUE + SECRET, %eax\n    hlt\n'
    )
    path = inner / "s.toml"
    path.write_text(
        'name = "inc"\n[[stacks]]\nname = "main"\nsize = 4096\n[program]\nfile = "prog.S"\n'
    )
    trace = tmp_path / "t.parquet"
    status, err = _record([str(path), "-o", str(trace)], capsys)
    assert status == 2
    assert err.startswith(f"{inner / 'prog.S'}:2: #include ") and "--allow-outside" in err
    assert not trace.exists()
    assert _record([str(path), "-o", str(trace), "--allow-outside"], capsys)[0] == 0
    assert load_trace(trace).metadata.final["rax"] == 12

"""Hostile scenario files and queries, round 2 (issue 26): one line each, never a traceback.

Before: a `.S` including itself died of RecursionError; one including a
300 MiB file inside the scenario folder read it whole (killed at 180 s,
699 MB); a scenario `file` that is a symbolic link loop was a RuntimeError,
one with a NUL byte a ValueError; `.incbin` beside a `file = "../m.s"` was
refused though --allow-outside was given; `query t.parquet ""` was an
AttributeError and `query` of a version-1 trace alone a BinderException.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stacktrace_lab.cli import main
from stacktrace_lab.limits import MiB
from stacktrace_lab.trace import load_trace

HEADER = 'name = "t"\nsyntax = "att"\nentry = "main"\n[[stacks]]\nname = "main"\nsize = 4096\n'
V1_FIXTURE = Path(__file__).parent / "fixtures" / "first-switch-v1.parquet"


def _scenario(directory: Path, program_line: str) -> Path:
    path = directory / "s.toml"
    # An ELF scenario takes no syntax/entry (its program says where it starts).
    header = 'name = "t"\n' if program_line.startswith("elf") else HEADER
    path.write_text(header + "[program]\n" + program_line + "\n")
    return path


def _one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_dot_S_including_itself_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "self.S").write_text('main:\n    hlt\n#include "self.S"\n')
    path = _scenario(tmp_path, 'file = "self.S"')
    err = _one_line(["record", str(path), "-o", str(tmp_path / "t.parquet")], capsys)
    assert "self.S:3: #include nested more than 32 deep" in err


def test_an_included_file_obeys_the_source_size_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 300 MiB header (sparse: no disk used) is refused before it is read."""
    with (tmp_path / "big.h").open("wb") as f:
        f.truncate(300 * MiB)
    (tmp_path / "big.S").write_text('main:\n    hlt\n#include "big.h"\n')
    path = _scenario(tmp_path, 'file = "big.S"')
    err = _one_line(["record", str(path), "-o", str(tmp_path / "t.parquet")], capsys)
    assert "big.S:3: #include" in err and "larger than the #include file limit" in err
    assert "--max-source-size" in err


def test_a_small_include_still_works(tmp_path: Path) -> None:
    (tmp_path / "value.h").write_text("#define VALUE 0x2a\n")
    (tmp_path / "ok.S").write_text('#include "value.h"\nmain:\n    mov $VALUE, %eax\n    hlt\n')
    path = _scenario(tmp_path, 'file = "ok.S"')
    assert main(["record", str(path), "-o", str(tmp_path / "t.parquet")]) == 0
    assert load_trace(tmp_path / "t.parquet").metadata.final["rax"] == 42


def test_incbin_beside_a_program_file_outside_needs_and_takes_allow_outside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`.incbin "blob"` is read beside the file it is written in, by the size
    check before assembling as by the assembler (before, the check looked
    beside the scenario and said the file did not exist)."""
    (tmp_path / "m.s").write_text('main:\n    hlt\n    .incbin "blob"\n')
    (tmp_path / "blob").write_bytes(b"ABCD")
    sub = tmp_path / "sub"
    sub.mkdir()
    path = _scenario(sub, 'file = "../m.s"')
    trace = tmp_path / "t.parquet"
    err = _one_line(["record", str(path), "-o", str(trace)], capsys)
    assert "--allow-outside" in err
    assert main(["record", str(path), "-o", str(trace), "--allow-outside"]) == 0
    assert load_trace(trace).metadata.code.endswith(b"ABCD")


def test_a_symlink_loop_named_as_the_program_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.symlink("loop2", tmp_path / "loop1")
    os.symlink("loop1", tmp_path / "loop2")
    for line in ('file = "loop1"', 'elf = "loop1"'):
        path = _scenario(tmp_path, line)
        err = _one_line(["record", str(path), "-o", str(tmp_path / "t.parquet")], capsys)
        assert "loop1" in err and "symbolic link" in err


@pytest.mark.parametrize("key", ["file", "elf"])
def test_a_nul_byte_in_a_file_name_is_one_line(
    key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _scenario(tmp_path, f'{key} = "m\\u0000.s"')
    for extra in ([], ["--allow-outside"]):
        argv = ["record", str(path), "-o", str(tmp_path / "t.parquet"), *extra]
        assert "cannot hold a NUL byte" in _one_line(argv, capsys)


@pytest.mark.parametrize("sql", ["", "   ", ";"])
def test_an_empty_query_is_one_line(sql: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = _one_line(["query", str(V1_FIXTURE), sql], capsys)
    assert "query: the SQL" in err


def test_a_version_1_trace_alone_can_be_queried(capsys: pytest.CaptureFixture[str]) -> None:
    """The views read the Parquet files: their columns, not the reader's
    (which supplies `kind` for a version-1 trace), decide how `kind` is made."""
    status = main(
        [
            "query",
            str(V1_FIXTURE),
            "SELECT kind, count(*) AS n FROM steps GROUP BY kind",
            "--format",
            "json",
        ]
    )
    assert status == 0
    rows = {row["kind"]: row["n"] for row in json.loads(capsys.readouterr().out)}
    assert rows["call"] >= 1 and rows["ret"] >= 1

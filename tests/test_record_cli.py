"""`stacktrace-lab record` and `scenarios` end to end, and the reader's refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stacktrace_lab.cli import main
from stacktrace_lab.errors import BadInput
from stacktrace_lab.trace import FORMAT_VERSION, load_trace


def test_record_default_writes_outside_the_golden_folder(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """The CLI's default output is not the plugin's golden folder (traces/): a trace
    recorded by hand is never taken for a golden (issue 24)."""
    monkeypatch.chdir(tmp_path)
    assert main(["record"]) == 0
    assert (tmp_path / "stacktrace-lab-traces" / "first-switch.parquet").is_file()
    assert not (tmp_path / "traces").exists()
    out = capsys.readouterr().out
    assert "stacktrace-lab-traces/first-switch.parquet: 19 steps, stopped: spin" in out


def test_record_options(tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.parquet"
    assert (
        main(
            ["record", "first-switch", "-o", str(out), "--max-steps", "5", "--snapshot-limit", "64"]
        )
        == 0
    )
    trace = load_trace(out)
    assert trace.metadata.stop.reason == "max_steps"
    assert trace.num_rows == 5
    assert trace.metadata.snapshots["main"].size == 64


def test_python_dash_m_and_a_user_scenario(tmp_path: Path, write_scenario) -> None:
    path = write_scenario(
        "main:\n movabs $extra_top, %rsp\n push %rax\n hlt",
        stacks=(("main", 4096), ("extra", 256), ("third", 64)),
        data=(("heap", 128),),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stacktrace_lab",
            "record",
            str(path),
            "-o",
            str(tmp_path / "u.parquet"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    trace = load_trace(tmp_path / "u.parquet")
    assert [r.name for r in trace.metadata.regions] == ["code", "main", "extra", "third", "heap"]
    assert {c for c in trace.column_names if c.startswith("stack__")} == {
        "stack__main",
        "stack__extra",
        "stack__third",
    }
    assert trace.metadata.stop.reason == "halted"


BAD_SOURCES = {
    "assembly-syntax": ("main:\n nop\n mov %rax,, %rbx\n ret", {}, "mov %rax,, %rbx"),
    "missing-entry": ("start:\n ret", {}, "entry label 'main' is not defined"),
}


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_bad_programs_exit_2_with_one_line(
    tmp_path: Path, write_scenario, capsys, case: str
) -> None:
    source, kwargs, expected = BAD_SOURCES[case]
    path = write_scenario(source, **kwargs)
    out = tmp_path / "never.parquet"
    assert main(["record", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and expected in err
    if case == "assembly-syntax":  # the TOML line of the bad source line
        line = path.read_text().splitlines().index(" mov %rax,, %rbx") + 1
        assert f"{path}:{line}: " in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.suffix != ".toml"] == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name = "s"\n[[stacks]\n', "malformed TOML"),
        (
            'name = "s"\n[[stacks]]\nname = "main"\nsize = 0\n[program]\nsource = "main: ret"\n',
            "stacks[0].size",
        ),
        (
            'name = "s"\n[[stacks]]\nname = "main"\nsize = -1\n[program]\nsource = "main: ret"\n',
            "stacks[0].size",
        ),
        (
            'name = "s"\n[[stacks]]\nname = "main"\nsize = 1000000000000\n'
            '[program]\nsource = "main: ret"\n',
            "stacks[0].size",
        ),
    ],
)
def test_bad_scenario_files_exit_2(tmp_path: Path, capsys, text: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["record", str(path), "-o", str(tmp_path / "o.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and expected in err
    assert not (tmp_path / "o.parquet").exists()


def test_missing_file_and_unknown_builtin_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["record", str(tmp_path / "missing.toml")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["record", "no-such-builtin"]) == 2
    assert "no such built-in scenario" in capsys.readouterr().err


def test_no_traceback_end_to_end(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("this is not toml = = =")
    result = subprocess.run(
        [sys.executable, "-m", "stacktrace_lab", "record", str(bad)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "traces").exists()


def test_scenarios_lists_the_builtins(capsys) -> None:
    assert main(["scenarios"]) == 0
    out = capsys.readouterr().out
    assert "first-switch" in out and "48-byte" in out


# The reader refuses what is not a trace it can read.


def test_reader_refuses_a_parquet_file_that_is_not_a_trace(tmp_path: Path) -> None:
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), path)
    with pytest.raises(BadInput, match="not a stacktrace-lab trace"):
        load_trace(path)


def test_reader_refuses_a_truncated_trace(tmp_path: Path, first_switch_trace: Path) -> None:
    data = first_switch_trace.read_bytes()
    path = tmp_path / "cut.parquet"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInput, match=r"cut\.parquet: not a stacktrace-lab trace"):
        load_trace(path)


def test_reader_refuses_a_newer_version(tmp_path: Path, first_switch_trace: Path) -> None:
    table = pq.read_table(first_switch_trace)
    meta = json.loads(pq.read_metadata(first_switch_trace).metadata[b"stacktrace_lab"])
    meta["version"] = FORMAT_VERSION + 1
    path = tmp_path / "future.parquet"
    writer = pq.ParquetWriter(path, table.schema)
    writer.write_table(table)
    writer.add_key_value_metadata({"stacktrace_lab": json.dumps(meta)})
    writer.close()
    with pytest.raises(BadInput, match=f"version {FORMAT_VERSION + 1} is newer"):
        load_trace(path)


def test_reader_refuses_a_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(BadInput) as info:
        load_trace(path)
    assert "\n" not in str(info.value)


def test_an_unwritable_output_is_bad_input(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["record", "-o", str(blocker / "sub" / "t.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write" in err
    assert main(["record", "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_recording_from_a_thread(tmp_path: Path) -> None:
    # The Ctrl-C handler can only be set from the main thread; elsewhere it is skipped.
    import threading

    from stacktrace_lab.record.recorder import record
    from stacktrace_lab.scenario import load_scenario

    results: list[int] = []
    worker = threading.Thread(
        target=lambda: results.append(
            record(load_scenario("first-switch"), tmp_path / "t.parquet").metadata.steps
        )
    )
    worker.start()
    worker.join()
    assert results == [19]


# --- issue 24 item 7 and issue 26's weak ones: each message names the file and what to do


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.removeprefix("stacktrace-lab: error: ").rstrip("\n")


def test_max_steps_zero_is_refused_like_a_negative_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for steps in ("0", "-5"):
        assert main(["record", "--max-steps", steps, "-o", str(tmp_path / "t.parquet")]) == 2
        message = _error(capsys)
        assert "'--max-steps'" in message and "x>=1" in message
    assert not (tmp_path / "t.parquet").exists()


def test_a_missing_program_says_no_such_file_first(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["record", "./nosuch", "--from", "main"]) == 2
    assert _error(capsys) == "./nosuch: no such file"
    assert main(["record", "./nosuch", "--", "arg"]) == 2
    assert _error(capsys) == "./nosuch: no such file"


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("switch.s", 'name it in a scenario, [program] file = "switch.s"'),
        ("switch.S", 'name it in a scenario, [program] file = "switch.S"'),
        ("switch.c", "compile it into a static x86-64 program first (e.g. gcc -static -g switch.c"),
        ("switch.rs", "compile it into a static x86-64 program first"),
        ("old.parquet", "a trace, already recorded: look at it with `stacktrace-lab report"),
    ],
)
def test_a_file_that_is_no_program_says_what_to_do_instead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, says: str
) -> None:
    path = tmp_path / name
    path.write_text("main:\n    ret\n")
    assert main(["record", str(path), "-o", str(tmp_path / "t.parquet")]) == 2
    message = _error(capsys)
    assert message.startswith(f"{path}: not a program but ") and says in message


def test_record_of_a_directory_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It said `error: 4: Is a directory`: a file descriptor's number, not the name."""
    folder = tmp_path / "adir.toml"
    folder.mkdir()
    for argument in (str(tmp_path), str(folder)):
        assert main(["record", argument, "-o", str(tmp_path / "t.parquet")]) == 2
        assert (
            _error(capsys) == f"{argument}: is a directory; a scenario file must be a regular file"
        )


def test_report_of_a_name_suggests_the_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["report", "first-switch"]) == 2
    assert _error(capsys) == (
        "first-switch: no such file (record it first: stacktrace-lab record first-switch, "
        "then report stacktrace-lab-traces/first-switch.parquet)"
    )
    assert main(["record", "first-switch"]) == 0
    capsys.readouterr()
    assert main(["report", "first-switch"]) == 2
    assert _error(capsys) == (
        "first-switch: no such file (did you mean stacktrace-lab-traces/first-switch.parquet?)"
    )


@pytest.mark.parametrize(
    "command", [["check", "T"], ["query", "T", "SELECT 1"], ["show", "T"], ["serve", "T"]]
)
def test_a_fifo_given_as_a_trace_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """docs/machine.md: FIFOs are refused at once; reading one blocked forever."""
    if command[0] == "query":
        pytest.importorskip("duckdb")
    fifo = tmp_path / "t.parquet"
    os.mkfifo(fifo)
    assert main([str(fifo) if a == "T" else a for a in command]) == 2
    assert (
        _error(capsys) == f"{fifo}: not a regular file (a FIFO, socket or device); not a trace file"
    )


def test_diff_and_query_take_json(
    first_switch_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["diff", str(first_switch_trace), str(first_switch_trace), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["same"] is True
    pytest.importorskip("duckdb")
    assert (
        main(["query", str(first_switch_trace), "SELECT count(*) AS n FROM steps", "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out) == [{"n": 19}]


def test_rows_without_pandas_says_how_to_get_it(
    first_switch_trace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'stacktrace-lab\[pandas\]'"):
        load_trace(first_switch_trace).rows(["rip"])
    assert load_trace(first_switch_trace).table(["rip"]).num_rows == 19  # Arrow needs no pandas


def test_the_record_process_ends_at_once_with_its_output_whole(tmp_path: Path) -> None:
    """`record` ends its process without tearing the interpreter down (cli._end_process):
    the summary printed in full (flushed), the exit status kept, the trace in place
    and equal to one recorded in process; an error is one line and status 2."""
    out = tmp_path / "t.parquet"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stacktrace_lab",
            "record",
            "first-switch",
            "-o",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["trace"] == str(out) and summary["stop"]["reason"] == "spin"
    assert main(["record", "first-switch", "-o", str(tmp_path / "in.parquet")]) == 0
    assert out.read_bytes() == (tmp_path / "in.parquet").read_bytes()
    failed = subprocess.run(
        [
            sys.executable,
            "-m",
            "stacktrace_lab",
            "record",
            str(tmp_path / "none"),
            "--from",
            "main",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines() == [
        f"stacktrace-lab: error: {tmp_path / 'none'}: no such file"
    ]

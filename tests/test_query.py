"""`stacktrace-lab query`: SQL over traces, agreeing with `check` and `who-wrote`."""

from __future__ import annotations

import builtins
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from stacktrace_lab.analysis.check import check
from stacktrace_lab.analysis.events import derive_facts
from stacktrace_lab.cli import main
from stacktrace_lab.record.recorder import record
from stacktrace_lab.scenario import builtin_names, load_scenario
from stacktrace_lab.trace import load_trace

pytest.importorskip("duckdb")


@pytest.fixture(scope="module")
def builtins_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every built-in scenario recorded into one directory."""
    out = tmp_path_factory.mktemp("builtins")
    for name in builtin_names():
        record(load_scenario(name), out / f"{name}.parquet")
    return out


def _query(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    assert main(["query", *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_misaligned_calls_are_the_ones_check_reports(
    builtins_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = builtins_dir / "green-threads-no-skip.parquet"
    rows = _query(
        capsys,
        str(trace),
        "SELECT step, target_symbol, rsp_mod_16 FROM calls WHERE NOT aligned ORDER BY step",
    )
    result = check(load_trace(trace))
    alignment = result.result("alignment")
    reported = [v.step for v in alignment.violations if v.message.startswith("call to ")]
    assert len(rows) == 80
    assert [r["step"] for r in rows] == reported
    assert {r["rsp_mod_16"] for r in rows} == {8}
    # The others are the three misaligned thread entries: 80 calls + 3 = check's total.
    assert alignment.total == len(rows) + 3


def test_last_writer_of_green_32_is_who_wrotes(
    builtins_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = str(builtins_dir / "first-switch.parquet")
    rows = _query(
        capsys,
        trace,
        "SELECT step, insn, value FROM accesses WHERE access = 'write' AND region = 'green' "
        "AND region_index <= 32 AND region_index + size > 32 AND step < 12 "
        "ORDER BY step DESC LIMIT 1",
    )
    assert main(["who-wrote", trace, "green:32", "--step", "12", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert rows == [
        {"step": answer["chain"][0]["step"], "insn": answer["chain"][0]["insn"], "value": 0x40003E}
    ]
    assert rows[0]["step"] == 6 and answer["value"] == rows[0]["value"]


def test_planted_view_lists_checks_planted_returns_on_every_builtin(
    builtins_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _query(
        capsys,
        str(builtins_dir / "*.parquet"),
        "SELECT trace, ret_step, stack, region_index, planted_step, target FROM planted "
        "ORDER BY trace, ret_step",
    )
    expected = []
    for path in sorted(builtins_dir.glob("*.parquet")):
        result = check(load_trace(path))
        for p in result.planted:
            expected.append(
                {
                    "trace": path.stem,
                    "ret_step": p.ret_step,
                    "stack": p.region,
                    "region_index": p.index,
                    "planted_step": p.planted_step,
                    "target": p.target,
                }
            )
    assert len(expected) > 10
    assert rows == sorted(expected, key=lambda r: (r["trace"], r["ret_step"]))


def test_switches_are_the_analysis_switch_steps(
    builtins_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = builtins_dir / "green-threads.parquet"
    rows = _query(capsys, str(trace), "SELECT step, from_stack, to_stack FROM switches ORDER BY 1")
    facts = derive_facts(load_trace(trace))
    assert [r["step"] for r in rows] == facts.switch_steps().tolist()
    assert rows[0]["from_stack"] == "main" and rows[0]["to_stack"] == "worker1"


def test_several_traces_one_table_with_the_trace_column(
    builtins_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _query(
        capsys,
        str(builtins_dir / "first-switch*.parquet"),
        str(builtins_dir / "green-threads.parquet"),
        "SELECT trace, count(*) AS n FROM steps GROUP BY trace ORDER BY trace",
    )
    names = [r["trace"] for r in rows]
    first_switches = sorted(p.stem for p in builtins_dir.glob("first-switch*.parquet"))
    assert names == [*first_switches, "green-threads"]
    for row in rows:
        assert row["n"] == load_trace(builtins_dir / f"{row['trace']}.parquet").num_rows


def test_syscalls_and_csv(builtins_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = builtins_dir / "first-switch.parquet"
    assert (
        main(
            [
                "query",
                str(trace),
                "SELECT nr, result, args[3] AS len FROM syscalls",
                "--format",
                "csv",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    stdout = load_trace(trace).metadata.stdout
    assert rows == [{"nr": "1", "result": str(len(stdout)), "len": str(len(stdout))}]
    names = _query(capsys, str(trace), "SELECT name FROM syscalls")
    assert names == [{"name": "write"}]


def test_format_1_and_2_traces_in_one_query(
    builtins_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A version 1 trace gets its kinds from the instruction text; version 2 has them."""
    v1 = Path(__file__).parent / "fixtures" / "first-switch-v1.parquet"
    rows = _query(
        capsys,
        str(v1),
        str(builtins_dir / "first-switch.parquet"),
        "SELECT trace, step, kind, label, source FROM steps WHERE kind IN ('call', 'ret') "
        "ORDER BY trace, step",
    )
    assert [(r["trace"], r["step"], r["kind"]) for r in rows] == [
        ("first-switch", 10, "call"),
        ("first-switch", 12, "ret"),
        ("first-switch-v1", 10, "call"),
        ("first-switch-v1", 12, "ret"),
    ]
    assert rows[0]["label"] == "main" and rows[0]["source"].startswith("first-switch.toml:")
    assert rows[2]["label"] is None  # format 1 has no label column


def test_table_output_counts_rows(builtins_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = builtins_dir / "first-switch.parquet"
    assert main(["query", str(trace), "SELECT step, kind FROM steps WHERE kind <> 'other'"]) == 0
    out = capsys.readouterr().out
    # Format 2 records each instruction's kind: the call, the ret, the write
    # syscall and the final `jmp .` (the spin).
    assert "(4 rows)" in out and all(k in out for k in ("call", "ret", "syscall", "jmp"))


def test_bad_sql_and_missing_files_are_bad_input(
    builtins_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = str(builtins_dir / "first-switch.parquet")
    assert main(["query", trace, "SELECT nope FROM steps"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err
    assert main(["query", str(builtins_dir / "nothing*.parquet"), "SELECT 1"]) == 2
    assert "no trace matches" in capsys.readouterr().err


def test_without_duckdb_it_says_how_to_install_it(
    builtins_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_duckdb(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "duckdb":
            raise ImportError("No module named 'duckdb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_duckdb)
    assert main(["query", str(builtins_dir / "first-switch.parquet"), "SELECT 1"]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == "stacktrace-lab: error: DuckDB is not installed: pip install 'stacktrace-lab[duckdb]'\n"
    )


def test_the_planted_view_lists_returns_planted_before_a_from_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--from gt_switch` begins after main planted `hello` on the 48-byte stack: the
    view lists that ret as check does, with origin "before the trace" and no store;
    gt_switch's own return address, pushed by main's call before row 0, is not planted."""
    from stacktrace_lab.examples import build_example, compiler_missing
    from stacktrace_lab.record.linux.elf_front import record_elf

    why = compiler_missing("c-static")
    if why is not None:
        pytest.skip(f"cannot build the C example: {why}")
    program = build_example("c-static", tmp_path / "bin")
    columns = "ret_step, stack, region_index, planted_step, target, origin"
    rows = {}
    for start in ("gt_switch", None):
        path = record_elf(program, tmp_path / f"{start}.parquet", from_symbol=start).path
        rows[start] = _query(capsys, str(path), f"SELECT {columns} FROM planted ORDER BY 1")
        planted = check(load_trace(path)).planted
        assert [(r["ret_step"], r["planted_step"], r["target"]) for r in rows[start]] == [
            (p.ret_step, p.planted_step, p.target) for p in planted
        ]
    assert rows["gt_switch"] == [
        {
            "ret_step": rows["gt_switch"][0]["ret_step"],
            "stack": "calloc_48",
            "region_index": 32,
            "planted_step": None,
            "target": "hello",
            "origin": "before the trace",
        }
    ]
    # The whole recording has the store: the same slot, planted in the trace.
    (whole,) = rows[None]
    assert (whole["stack"], whole["region_index"], whole["target"]) == ("calloc_48", 32, "hello")
    assert whole["origin"] == "in the trace" and whole["planted_step"] is not None

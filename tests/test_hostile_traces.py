"""Forged or damaged traces (issue 16): every command refuses them in one line, exit 2.

Each case is one found by trying hostile inputs against the commands; before
`trace/validate.py` each gave a traceback, a hang, or exit 0/1 where 2 is due.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from stacktrace_lab.cli import main
from stacktrace_lab.record.recorder import Recording, RecordOptions

Doc = dict[str, Any]


def forge(
    source: Path,
    target: Path,
    edit_doc: Callable[[Doc], None] | None = None,
    edit_table: Callable[[pa.Table], pa.Table] | None = None,
) -> Path:
    """A copy of a trace with its metadata and/or rows changed, written by pyarrow."""
    parquet = pq.ParquetFile(source)
    doc = json.loads(parquet.metadata.metadata[b"stacktrace_lab"])
    if edit_doc is not None:
        edit_doc(doc)
    table = parquet.read()
    if edit_table is not None:
        table = edit_table(table)
    table = table.replace_schema_metadata({b"stacktrace_lab": json.dumps(doc).encode()})
    pq.write_table(table, target)
    return target


def replace_column(
    name: str, make: Callable[[pa.Table], pa.Array]
) -> Callable[[pa.Table], pa.Table]:
    def edit(table: pa.Table) -> pa.Table:
        index = table.schema.get_field_index(name)
        array = make(table)
        return table.set_column(index, pa.field(name, array.type), array)

    return edit


def _cast(name: str, to: pa.DataType) -> Callable[[pa.Table], pa.Table]:
    return replace_column(name, lambda t: pc.cast(t.column(name), to, safe=False))


def _with_null(name: str) -> Callable[[pa.Table], pa.Table]:
    def make(table: pa.Table) -> pa.Array:
        values = table.column(name).to_pylist()
        values[3] = None
        return pa.array(values, table.schema.field(name).type)

    return replace_column(name, make)


def _reads_as_int_lists(table: pa.Table) -> pa.Array:
    return pa.array(
        [[a["addr"] for a in row] for row in table.column("reads").to_pylist()],
        pa.list_(pa.int64()),
    )


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    def edit(doc: Doc) -> None:
        *parents, last = path.split(".")
        for key in parents:
            doc = doc[key[:-3]][int(key[-2])] if key.endswith("]") else doc[key]
        doc[last] = value

    return edit


def _delete(path: str) -> Callable[[Doc], None]:
    def edit(doc: Doc) -> None:
        *parents, last = path.split(".")
        for key in parents:
            doc = doc[key]
        del doc[last]

    return edit


def _duplicate_green(doc: Doc) -> None:
    doc["layout"]["regions"][1]["name"] = "green"


#: (metadata edit, table edit, what the one line must say)
CASES: dict[
    str, tuple[Callable[[Doc], None] | None, Callable[[pa.Table], pa.Table] | None, str]
] = {
    "rsp as strings": (
        None,
        _cast("rsp", pa.string()),
        "column rsp is string, the format says uint64",
    ),
    "rsp as floats": (
        None,
        _cast("rsp", pa.float64()),
        "column rsp is double, the format says uint64",
    ),
    "rsp with a null": (None, _with_null("rsp"), "column rsp holds nulls"),
    "rip as int32": (None, _cast("rip", pa.int32()), "column rip is int32, the format says uint64"),
    "reads as list<int64>": (
        None,
        replace_column("reads", _reads_as_int_lists),
        "column reads is list<element: int64>",
    ),
    "insn as int64": (
        None,
        replace_column("insn", lambda t: pa.array(range(t.num_rows), pa.int64())),
        "column insn is int64",
    ),
    "steps = 10**30": (_set("steps", 10**30), None, "steps must be in [1, 1000000001)"),
    "a region past 2^64": (
        _set("layout.regions[2].base", 2**64 - 16),
        None,
        "layout.regions[2] ends past 2^64",
    ),
    "a negative symbol": (
        _set("layout.symbols.hello", -1),
        None,
        "layout.symbols.hello must be in [0, 18446744073709551616), got -1",
    ),
    "no initial rip": (_delete("initial.rip"), None, "initial.rip is missing"),
    "a 71-bit register": (
        _set("initial.rax", 2**70 + 5),
        None,
        "initial.rax must be in [0, 18446744073709551616)",
    ),
    "duplicate region names": (_duplicate_green, None, "layout.regions names 'green' twice"),
    "max_steps = -1": (_set("options.max_steps", -1), None, "options.max_steps must be in [1,"),
    "steps differ from the rows": (
        _set("steps", 20),
        None,
        "19 rows, but the metadata says steps = 20",
    ),
    "a symbol outside the code": (
        _set("layout.symbols.hello", 0x10000000),
        None,
        "symbol 'hello' at 0x10000000 is outside the program",
    ),
    "a step number as a string": (_set("stop.step", "18"), None, "stop.step must be an integer"),
    "a float size": (_set("layout.regions[2].size", 48.0), None, "size must be an integer"),
}


def _commands(trace: Path, good: Path, out: Path) -> list[list[str]]:
    return [
        ["check", str(trace)],
        ["report", str(trace), "-o", str(out)],
        ["diff", str(good), str(trace)],
        ["show", str(trace), "--step", "-1"],
        ["who-wrote", str(trace), "green:32"],
        ["replay", str(trace)],
    ]


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_a_forged_trace_is_refused_by_every_command_in_one_line(
    case: str, first_switch_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit_doc, edit_table, expected = CASES[case]
    trace = forge(first_switch_trace, tmp_path / "forged.parquet", edit_doc, edit_table)
    for argv in _commands(trace, first_switch_trace, tmp_path / "report"):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"stacktrace-lab: error: {trace}: corrupt trace"), (argv, err)
        assert err.count("\n") == 1 and expected in err, (argv, err)
    assert not (tmp_path / "report").exists()


def test_show_step_minus_one_counts_from_the_end_of_a_valid_trace(
    first_switch_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--step -1` is the documented last step; on a forged trace it is exit 2 (above)."""
    assert main(["show", str(first_switch_trace), "--step", "-1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 18


def test_a_pyarrow_round_trip_of_a_trace_is_still_a_trace(
    first_switch_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Validation is exact about types, not about how a foreign writer spells nullability."""
    copy = forge(first_switch_trace, tmp_path / "copy.parquet")
    assert main(["check", str(copy)]) == 0
    capsys.readouterr()


def test_replay_is_bounded_by_the_trace_not_by_a_forged_max_steps(
    record_source: Callable[..., Recording], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loop = "main:\n    inc %rax\n    jmp main\n"
    cut = record_source(loop, RecordOptions(max_steps=19))
    forged = forge(cut.path, tmp_path / "forged.parquet", _set("options.max_steps", 10**9))
    assert main(["replay", str(forged), "--json"]) == 1
    # Stopped where the trace ends (step 19), not after the forged 10**9 steps.
    difference = json.loads(capsys.readouterr().out)["difference"]
    assert difference["step"] == 19 and "runs on" in difference["detail"]

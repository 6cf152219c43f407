"""Inputs a demanding user gives by accident or on purpose: each bug found this way.

Every tool error must be one line naming the file and exit status 2, never a
traceback and never a hang; faults of the emulated program are not tool errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from stacktrace_lab.cli import main
from stacktrace_lab.errors import BadInput
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

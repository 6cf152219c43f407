"""The real-assembly example in docs/scenarios.md records as the page says."""

from __future__ import annotations

import re
from pathlib import Path

from stacktrace_lab.analysis import check
from stacktrace_lab.record.recorder import record
from stacktrace_lab.scenario import load_scenario
from stacktrace_lab.trace import load_trace

DOC = Path(__file__).parent.parent / "docs" / "scenarios.md"


def test_the_documented_s_and_S_files_record_unmodified(tmp_path: Path) -> None:
    files = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", DOC.read_text(), flags=re.S)
    assert [name for name, _ in files] == ["example.toml", "switch.S", "start.s"]
    for name, body in files:
        (tmp_path / name).write_text(body)
    recording = record(load_scenario(tmp_path / "example.toml"), tmp_path / "e.parquet")
    assert recording.metadata.stop.reason == "returned"
    trace = load_trace(recording.path)
    symbols = set(trace.rows(["symbol"])["symbol"].astype(str).str.split("+").str[0])
    assert symbols == {"main", "switch_to", "task"}
    assert check(trace).failed == ()

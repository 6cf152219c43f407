"""Every built-in scenario against its golden trace in traces/, through the pytest plugin.

The list comes from `builtin_names()`, so a scenario added later is covered:
its first run fails and writes `traces/<name>.parquet`, to be reviewed and
committed. After an intended change, `pytest --stacktrace-lab-update` rewrites
the goldens that differ (see docs/ci.md).
"""

from __future__ import annotations

import pytest

from stacktrace_lab.pytest_plugin import GoldenTrace
from stacktrace_lab.scenario import builtin_names


@pytest.mark.parametrize("name", builtin_names())
def test_builtin_matches_its_golden_trace(golden_trace: GoldenTrace, name: str) -> None:
    diff = golden_trace.check(name)
    assert diff is not None and diff.same

"""Every built-in scenario against its golden trace in traces/, through the pytest plugin.

The list comes from `builtin_names()`, so a scenario added later is covered:
its first run fails and writes `traces/<name>.parquet`, to be reviewed and
committed. Each golden is named after its scenario (`name=`), and the check
expects exactly the invariant the scenario is built to break to fail. After
an intended change, `pytest --stacktrace-lab-update` rewrites the goldens that
differ (see docs/ci.md).
"""

from __future__ import annotations

import pytest

from stacktrace_lab.pytest_plugin import GoldenTrace
from stacktrace_lab.scenario import builtin_names, load_scenario


@pytest.mark.parametrize("name", builtin_names())
def test_builtin_matches_its_golden_trace(golden_trace: GoldenTrace, name: str) -> None:
    breaks = load_scenario(name).breaks
    diff = golden_trace.check(name, name=name, expect_failures=[breaks] if breaks else [])
    assert diff is not None and diff.same

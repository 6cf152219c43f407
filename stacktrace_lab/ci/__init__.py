"""CI output for `check` and `diff`: GitHub annotations, JUnit XML and SARIF 2.1.0.

    check TRACE --format github    ::error file=...,line=...,title=...::message
    check TRACE --format junit     one <testcase> per invariant
    diff A B --format sarif        a SARIF log (code scanning, IDE viewers)

The pipeline: a command's result (`CheckResult`, `TraceDiff`) becomes a
`CiReport` (`from_check`, `from_diff` in `model.py`): cases, each passing or
with findings pointing at a file and line of the program (`location.py` maps
a step's rip to the scenario or `.S` file and line). Each format is one
module with `render(report) -> str`. Nothing here imports the analysis, the
diff engine, pyarrow or rich: it works on results already computed.
"""

from __future__ import annotations

from collections.abc import Callable

from . import github, junit, sarif
from .model import CiReport

RENDERERS: dict[str, Callable[[CiReport], str]] = {
    "github": github.render,
    "junit": junit.render,
    "sarif": sarif.render,
}

FORMATS = tuple(RENDERERS)


def render(report: CiReport, fmt: str) -> str:
    return RENDERERS[fmt](report)

"""SARIF 2.1.0 (OASIS): a log with one run, a rule per case, a result per finding.

What GitHub code scanning and the SARIF viewers read, and what code scanning
requires of an upload:

- one run per invocation, with `automationDetails.id` (`stacktrace-lab/check/
  <scenario>/`): its category, so several uploads for one commit (a check and
  a diff, or several scenarios) stay apart instead of being refused as runs of
  one tool with no category;
- `runs[].tool.driver` (name, version, rules with ids and descriptions) and
  `runs[].results[]` with `ruleId`, `ruleIndex`, `level` and `message.text`;
- each result's location is a file *of the repository*, as a percent-encoded
  URI relative to `%SRCROOT%` (the repository root, also given absolutely in
  `originalUriBaseIds`), with `region.startLine`: the finding's own source
  line when that file is in the repository, else the nearest caller's (a
  fault inside Rust's `library/std/src/io/stdio.rs` is shown at the user's
  line that called into it), else the trace file with no region.

The step and rip go in the result's `properties`. tests/test_ci_output.py
validates the output against the OASIS schema and GitHub's upload rules.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .location import in_repository, repository_root
from .model import TOOL, CiReport, Finding

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SRCROOT = "%SRCROOT%"


def _artifact(relative: str) -> dict[str, Any]:
    # A URI reference: a space, `%` or `#` in a file name must be percent-encoded.
    return {"uri": quote(relative, safe="/"), "uriBaseId": SRCROOT}


def _location(finding: Finding, subject_file: str, root: Path) -> dict[str, Any]:
    for file, line in finding.places or (
        ((finding.file, finding.line or 0),) if finding.file else ()
    ):
        relative = in_repository(file, root)
        if relative is not None:
            physical: dict[str, Any] = {"artifactLocation": _artifact(relative)}
            if line >= 1:
                physical["region"] = {"startLine": line}
            return {"physicalLocation": physical}
    # No line of the repository: the trace itself, with no region.
    relative = in_repository(subject_file, root) if subject_file else None
    if relative is not None:
        return {"physicalLocation": {"artifactLocation": _artifact(relative)}}
    absolute = Path(subject_file or ".").resolve()
    return {"physicalLocation": {"artifactLocation": {"uri": absolute.as_uri()}}}


def automation_id(category: str) -> str:
    """`stacktrace-lab/<category>/`: GitHub takes what precedes the last `/` as the
    category; a scenario name's other characters become `-`."""
    safe = re.sub(r"[^A-Za-z0-9._/-]+", "-", category).strip("/") or "run"
    return f"{TOOL}/{safe}/"


def render(report: CiReport, root: Path | None = None) -> str:
    root = root if root is not None else repository_root()
    rules = [
        {"id": case.name, "shortDescription": {"text": case.description}} for case in report.cases
    ]
    results = []
    for index, case in enumerate(report.cases):
        for finding in case.findings:
            properties: dict[str, Any] = {}
            if finding.step is not None:
                properties["step"] = finding.step
            if finding.rip is not None:
                properties["rip"] = f"{finding.rip:#x}"
            result: dict[str, Any] = {
                "ruleId": case.name,
                "ruleIndex": index,
                "level": "error",
                "message": {"text": f"{finding.title}: {finding.message}"},
                "locations": [_location(finding, report.subject_file, root)],
            }
            if properties:
                result["properties"] = properties
            results.append(result)
    log = {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": {"name": TOOL, "version": report.version, "rules": rules}},
                "automationDetails": {"id": automation_id(report.category or report.suite)},
                "originalUriBaseIds": {SRCROOT: {"uri": root.as_uri() + "/"}},
                "results": results,
            }
        ],
    }
    return json.dumps(log, indent=2, sort_keys=True) + "\n"

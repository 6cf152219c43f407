"""SARIF 2.1.0 (OASIS): a log with one run, a rule per case, a result per finding.

What GitHub code scanning and the SARIF viewers read: `runs[].tool.driver`
(name, version, rules with ids and descriptions) and `runs[].results[]` with
`ruleId`, `level`, `message.text` and a physical location (`artifactLocation
.uri` + `region.startLine`) when the finding has a source line. A finding
without one points at the subject (the trace). The step and rip go in the
result's `properties`. tests/test_ci_output.py validates the output against
the OASIS schema.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

from .model import TOOL, CiReport, Finding

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def _location(finding: Finding, subject: str) -> dict[str, Any]:
    if finding.file is None:
        return {"physicalLocation": {"artifactLocation": {"uri": _uri(subject.split()[-1])}}}
    physical: dict[str, Any] = {"artifactLocation": {"uri": _uri(finding.file)}}
    if finding.line is not None:
        physical["region"] = {"startLine": finding.line}
    return {"physicalLocation": physical}


def _uri(path: str) -> str:
    """A relative path stays relative (resolved against the checkout); SARIF uses `/`."""
    return PurePosixPath(path.replace("\\", "/")).as_posix()


def render(report: CiReport) -> str:
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
                "locations": [_location(finding, report.subject)],
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
                "results": results,
            }
        ],
    }
    return json.dumps(log, indent=2, sort_keys=True) + "\n"

"""GitHub Actions workflow commands: one `::error` annotation per finding.

Syntax (GitHub's "Workflow commands" page, and `@actions/core`'s command.ts):

    ::error file={name},line={line},title={title}::{message}

A property value escapes `%`, CR, LF, `:` and `,` as `%25`, `%0D`, `%0A`,
`%3A`, `%2C`; the message escapes `%`, CR and LF. A finding without a source
line is still an annotation (without `file`/`line`), so nothing is lost.
"""

from __future__ import annotations

from .model import CiReport, Finding


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(finding: Finding, level: str = "error") -> str:
    properties = []
    if finding.file is not None:
        properties.append(f"file={escape_property(finding.file)}")
        if finding.line is not None:
            properties.append(f"line={finding.line}")
    properties.append(f"title={escape_property(finding.title)}")
    return f"::{level} {','.join(properties)}::{escape_data(finding.message)}"


def render(report: CiReport) -> str:
    lines = [annotation(f) for case in report.cases for f in case.findings]
    for case in report.cases:
        if case.more:
            lines.append(
                annotation(
                    Finding(case.name, f"{case.name}: {case.more} more", "not listed: see check")
                )
            )
    return "".join(line + "\n" for line in lines)

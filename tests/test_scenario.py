"""Scenario files: validation names the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from stacktrace_lab.errors import BadInput
from stacktrace_lab.scenario import builtin_names, load_scenario

GOOD = """
name = "s"
description = "d"
[[stacks]]
name = "main"
size = 4096
[[stacks]]
name = "green"
size = 48
[[data]]
name = "heap"
size = 100
[expect]
stdout = "x"
stop = "spin"
[[expect.ret]]
stack = "green"
index = 32
target = "hello"
[program]
source = \"\"\"
main: ret
\"\"\"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def test_a_full_scenario_loads(tmp_path: Path) -> None:
    s = load_scenario(_write(tmp_path, GOOD))
    assert [(r.name, r.size) for r in s.stacks] == [("main", 4096), ("green", 48)]
    assert [(r.name, r.size) for r in s.data] == [("heap", 100)]
    assert s.syntax == "att" and s.entry == "main" and s.max_steps == 100_000
    assert s.expect.rets[0].index == 32
    assert s.source.strip() == "main: ret"
    assert s.source_first_line == GOOD.splitlines().index('source = """') + 2


def test_builtins_include_the_seed() -> None:
    assert "first-switch" in builtin_names()
    seed = load_scenario("first-switch")
    assert [(r.name, r.size) for r in seed.stacks] == [("main", 65536), ("green", 48)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("size = 48", "size = 0"), "field 'stacks[1].size': must be between 1 and"),
        (("size = 48", "size = -16"), "field 'stacks[1].size': must be between 1 and"),
        (("size = 48", "size = 99999999999"), "field 'stacks[1].size': must be between 1 and"),
        (("size = 48", 'size = "48"'), "field 'stacks[1].size': must be an integer"),
        (('name = "green"', 'name = "main"'), "declared twice"),
        (('name = "green"', 'name = "my stack"'), "field 'stacks[1].name'"),
        (("index = 32", "index = 44"), "field 'expect.ret[0].index'"),
        (('stop = "spin"', 'stop = "done"'), "field 'expect.stop'"),
        (('stack = "green"', 'stack = "blue"'), "field 'expect.ret[0].stack'"),
        (('description = "d"', 'descripton = "d"'), "field 'descripton': unknown field"),
        (('name = "s"', 'name = "s"\nsyntax = "masm"'), "field 'syntax'"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    old, new = change
    path = _write(
        tmp_path, GOOD.replace(old, new, 1) if old != "size = 48" else GOOD.replace(old, new)
    )
    with pytest.raises(BadInput) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_no_stacks(tmp_path: Path) -> None:
    path = _write(tmp_path, 'name = "s"\n[program]\nsource = "main: ret"\n')
    with pytest.raises(BadInput, match="at least one"):
        load_scenario(path)


def test_missing_program(tmp_path: Path) -> None:
    path = _write(tmp_path, 'name = "s"\n[[stacks]]\nname = "main"\nsize = 64\n')
    with pytest.raises(BadInput, match="program"):
        load_scenario(path)


def test_malformed_toml_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, 'name = "s"\n[[stacks]\n')
    with pytest.raises(BadInput, match=r"malformed TOML: .*line 2"):
        load_scenario(path)


def test_missing_file_and_unknown_builtin(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such file"):
        load_scenario(tmp_path / "nope.toml")
    with pytest.raises(BadInput, match=r"no such built-in scenario .*first-switch"):
        load_scenario("no-such-scenario")


def test_a_one_line_source_counts_lines_from_its_own_toml_line(tmp_path: Path) -> None:
    text = 'name = "s"\n[[stacks]]\nname = "main"\nsize = 64\n[program]\nsource = "main: ret"\n'
    assert load_scenario(_write(tmp_path, text)).source_first_line == 6

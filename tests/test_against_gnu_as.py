"""Every built-in and every test program, assembled by keystone and by GNU as, means the same.

Skipped where binutils (`as`, `ld`, `nm`, `objcopy`) is missing; `.ci/run`
installs it. See tests/gnu_as_check.py for how instructions are compared.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from stacktrace_lab.layout import region_symbols
from stacktrace_lab.record.asm.assembler import keystone_input
from stacktrace_lab.record.recorder import lay_out
from stacktrace_lab.scenario import Scenario, builtin_names, load_scenario

from . import programs
from .conftest import scenario_toml
from .gnu_as_check import MISSING, differences, with_gnu_as, with_keystone

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"GNU binutils missing: {MISSING}")

HERE = Path(__file__).parent
#: Every scenario file of the test suite and the benchmarks.
TEST_SCENARIOS = sorted([*HERE.glob("**/*.toml"), *(HERE.parent / "benchmarks").glob("*.toml")])
TEST_PROGRAMS = {
    name: value
    for name, value in vars(programs).items()
    if name.isupper() and isinstance(value, str)
}


def _compare(scenario: Scenario, workdir: Path) -> tuple[int, int]:
    """(instructions, of which byte-identical); fails naming each differing line."""
    given = keystone_input(scenario, region_symbols(lay_out(scenario)))
    ks = with_keystone(given)
    gas = with_gnu_as(given, workdir)
    assert differences(given, ks, gas) == []
    indexes = [
        i
        for i, item in enumerate(given.items)
        if item.statement is not None and item.statement.kind == "insn"
    ]
    same = sum(1 for i in indexes if ks.item(i) == gas.item(i))
    return len(indexes), same


@pytest.mark.parametrize("name", builtin_names())
def test_builtins_match_gnu_as(name: str, tmp_path: Path) -> None:
    instructions, _ = _compare(load_scenario(name), tmp_path)
    assert instructions > 0


@pytest.mark.parametrize("path", TEST_SCENARIOS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_test_scenarios_match_gnu_as(path: Path, tmp_path: Path) -> None:
    instructions, _ = _compare(load_scenario(path), tmp_path)
    assert instructions > 0


@pytest.mark.parametrize("name", sorted(TEST_PROGRAMS))
def test_test_programs_match_gnu_as(name: str, tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(scenario_toml(TEST_PROGRAMS[name]))
    instructions, _ = _compare(load_scenario(path), tmp_path)
    assert instructions > 0


def test_a_different_instruction_is_named_by_its_line(tmp_path: Path) -> None:
    # The comparison itself can fail: GNU as is given `add $2` for `add $1`.
    path = tmp_path / "p.toml"
    path.write_text(scenario_toml("main:\n    add $1, %rax\n    ret"))
    scenario = load_scenario(path)
    given = keystone_input(scenario, {})
    ks = with_keystone(given)
    changed = replace(given, lines=[line.replace("add $0x1", "add $0x2") for line in given.lines])
    gas = with_gnu_as(changed, tmp_path)
    found = differences(given, ks, gas)
    assert len(found) == 1, found
    line = path.read_text().splitlines().index('source = """') + 3  # `add` is the 2nd line
    assert found[0].startswith(f"{path}:{line}: keystone 4883c001"), found
    assert found[0].endswith("GNU as 4883c002 ['add rax, 2']")


def test_different_encodings_of_one_instruction_compare_equal(tmp_path: Path) -> None:
    # keystone: 10-byte movabs; GNU as: 7-byte mov. The jump after it moves too.
    path = tmp_path / "p.toml"
    path.write_text(scenario_toml("main:\n    mov $5, %rax\n    jmp done\n    nop\ndone:\n    ret"))
    scenario = load_scenario(path)
    given = keystone_input(scenario, {})
    ks, gas = with_keystone(given), with_gnu_as(given, tmp_path)
    assert ks.item(0 + 1) != gas.item(0 + 1)  # item 0 is the label `main`
    assert differences(given, ks, gas) == []

"""Shared fixtures: small scenarios built in tmp_path, and recorded traces."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from stacktrace_lab.record.recorder import Recording, RecordOptions, record
from stacktrace_lab.scenario import Scenario, load_scenario


def scenario_toml(
    source: str,
    *,
    name: str = "t",
    stacks: tuple[tuple[str, int], ...] = (("main", 4096),),
    data: tuple[tuple[str, int], ...] = (),
    syntax: str = "att",
    entry: str = "main",
    extra: str = "",
) -> str:
    parts = [f'name = "{name}"', f'syntax = "{syntax}"', f'entry = "{entry}"', extra]
    for stack_name, size in stacks:
        parts.append(f'[[stacks]]\nname = "{stack_name}"\nsize = {size}')
    for data_name, size in data:
        parts.append(f'[[data]]\nname = "{data_name}"\nsize = {size}')
    parts.append('[program]\nsource = """\n' + textwrap.dedent(source).strip("\n") + '\n"""')
    return "\n".join(parts) + "\n"


@pytest.fixture
def write_scenario(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1_000_000))

    def write(source: str, **kwargs: object) -> Path:
        path = tmp_path / f"scenario{next(counter)}.toml"
        path.write_text(scenario_toml(source, **kwargs))  # type: ignore[arg-type]
        return path

    return write


@pytest.fixture
def record_source(tmp_path: Path, write_scenario: Callable[..., Path]) -> Callable[..., Recording]:
    """Record a small program given as assembly; returns the Recording."""

    def run(source: str, options: RecordOptions | None = None, **kwargs: object) -> Recording:
        path = write_scenario(source, **kwargs)
        scenario: Scenario = load_scenario(path)
        return record(scenario, path.with_suffix(".parquet"), options)

    return run


@pytest.fixture(scope="session")
def first_switch_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("first-switch") / "first-switch.parquet"
    record(load_scenario("first-switch"), out)
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the `silicon` tests, saying why, where programs cannot be single-stepped natively."""
    silicon = [item for item in items if item.get_closest_marker("silicon")]
    if not silicon:
        return
    from stacktrace_lab.silicon.ptrace import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        for item in silicon:
            item.add_marker(pytest.mark.skip(reason=f"silicon: {reason}"))

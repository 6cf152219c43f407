"""`silicon_check()`: run a target natively and emulated, and compare every step.

target -> (a scenario: write its static ELF) -> single-step it natively,
logging the outside world -> emulate it with that log replayed -> normalise
-> compare -> the first divergence, explained.
"""

from __future__ import annotations

import bisect
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInput
from ..record.recorder import build_program, machine_spec
from ..scenario import load_scenario
from ..symbols import LabelTable
from .compare import Comparison, compare
from .emulated import EmulatedRun, emulate
from .native import NativeError, NativeRun, run_native
from .normalise import RIP
from .ptrace import unavailable_reason
from .scenario_elf import write_scenario_elf

ELF_MAGIC = b"\x7fELF"


@dataclass
class Target:
    """What to run natively and how to emulate it; built from a scenario or an ELF."""

    name: str
    executable: Path
    entry: int  # where rows begin (the scenario's entry label, the ELF's entry)
    sentinel: int | None  # the return address that means `returned`
    max_steps: int
    symbols: dict[str, int]
    #: address -> "file:line" of the source line that starts there
    lines: dict[int, str]
    emulate: Callable[[NativeRun | None, int], EmulatedRun]

    def __post_init__(self) -> None:
        self._labels = LabelTable(self.symbols)
        self._line_addrs = sorted(self.lines)

    def name_address(self, addr: int) -> str:
        found = self._labels.nearest(addr)
        if found is None:
            return f"{addr:#x}"
        label, offset = found
        return f"{label}+{offset}" if offset else label

    def source_line(self, addr: int) -> str | None:
        i = bisect.bisect_right(self._line_addrs, addr) - 1
        return self.lines[self._line_addrs[i]] if i >= 0 else None

    def address_of(self, symbol: str) -> int:
        if symbol not in self.symbols:
            raise BadInput(f"{self.name}: no symbol named '{symbol}'")
        return self.symbols[symbol]


def scenario_target(name_or_path: str, workdir: Path) -> Target:
    scenario = load_scenario(name_or_path)
    program, regions = build_program(scenario)
    spec = machine_spec(program, regions, scenario.entry)
    executable = write_scenario_elf(
        workdir / f"{scenario.name}.elf",
        spec.code,
        spec.code_region,
        spec.regions,
        spec.entry,
        spec.registers,
        spec.memory,
    )
    source = Path(scenario.path).name
    return Target(
        name=scenario.name,
        executable=executable,
        entry=spec.entry,
        sentinel=spec.sentinel,
        max_steps=scenario.max_steps,
        symbols=program.symbols,
        lines={addr: f"{source}:{line}" for addr, line in program.lines.items()},
        emulate=lambda native, max_steps: emulate(spec, native, max_steps),
    )


def resolve_target(target: str, workdir: Path) -> Target:
    path = Path(target)
    if path.is_file() and path.read_bytes()[:4] == ELF_MAGIC:
        raise BadInput(
            f"{target}: an ELF target needs the ELF recorder (real binaries, branch issue-12), "
            "which this build does not have yet; scenarios work"
        )
    return scenario_target(target, workdir)


@dataclass
class SiliconResult:
    target: Target
    native: NativeRun
    emulated: EmulatedRun
    comparison: Comparison


def _window(rows: np.ndarray, start: int, end: int | None) -> tuple[int, int]:
    """Row range [first, last) from the first row at `start` to the first later one at `end`."""
    at_start = np.flatnonzero(rows[:, RIP] == start)
    first = int(at_start[0]) if len(at_start) else len(rows)
    last = len(rows)
    if end is not None:
        at_end = np.flatnonzero(rows[first + 1 :, RIP] == end)
        if len(at_end):
            last = first + 1 + int(at_end[0])
    return first, last


def silicon_check(
    target_name: str,
    *,
    from_symbol: str | None = None,
    to_symbol: str | None = None,
    replay: bool = True,
    max_steps: int | None = None,
) -> SiliconResult:
    """Check `target_name` (a scenario name or .toml, or a static ELF) against this CPU."""
    reason = unavailable_reason()
    if reason is not None:
        raise BadInput(f"cannot run natively: {reason}")
    with tempfile.TemporaryDirectory(prefix="stacktrace-lab-silicon-") as workdir:
        target = resolve_target(target_name, Path(workdir))
        start = target.address_of(from_symbol) if from_symbol else target.entry
        end = target.address_of(to_symbol) if to_symbol else None
        steps = max_steps or target.max_steps
        try:
            native = run_native(
                target.executable, start=start, end=end, sentinel=target.sentinel, max_steps=steps
            )
        except NativeError as exc:
            raise BadInput(str(exc)) from exc
    emulated = target.emulate(native if replay else None, steps + native.skipped)
    first, last = _window(emulated.registers, start, end)
    if (first, last) != (0, emulated.steps):
        emulated.registers = emulated.registers[first:last]
        if end is not None and last < emulated.steps + first:
            emulated.stop_reason, emulated.stop_detail = "to", f"reached {end:#x}"
    comparison = compare(
        native,
        emulated,
        name_address=target.name_address,
        source_line=target.source_line,
        replayed=replay,
    )
    return SiliconResult(target, native, emulated, comparison)

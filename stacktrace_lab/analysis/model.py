"""What a check finds: violations, planted returns and the result of each invariant.

Small frozen dataclasses with a `to_json()` each, so `check --json`,
`invariants.json` and the reports all say the same thing in the same words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: At most this many violations are kept per invariant, and this many planted
#: returns listed: a broken loop in a ten-million-step trace would otherwise
#: repeat one mistake a million times. The totals are still counted.
MAX_VIOLATIONS = 100
MAX_PLANTED = 1000


@dataclass(frozen=True)
class Violation:
    """One broken rule at one step, explained in the program's terms."""

    invariant: str
    step: int
    rip: int
    symbol: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "invariant": self.invariant,
            "step": self.step,
            "rip": self.rip,
            "symbol": self.symbol,
            "message": self.message,
        }


@dataclass(frozen=True)
class PlantedReturn:
    """A `ret` that popped an address written by an ordinary store, not by a `call`.

    `region` and `index` say where the slot is: the region's name and the byte
    index from its base (None and the raw address if it is in no region).
    """

    ret_step: int
    ret_symbol: str
    region: str | None
    index: int
    slot: int
    planted_step: int
    planted_insn: str
    planted_symbol: str
    value: int
    target: str
    #: rsp right after the `ret`, i.e. at the target's first instruction.
    entry_rsp: int
    #: The target is itself a `ret` (like the runtime's `skip`): no alignment rule of its own.
    trampoline: bool = False

    @property
    def where(self) -> str:
        return f"{self.region}+{self.index}" if self.region else f"{self.slot:#x}"

    def to_json(self) -> dict[str, Any]:
        return {
            "ret_step": self.ret_step,
            "ret_symbol": self.ret_symbol,
            "stack": self.region,
            "index": self.index,
            "slot": self.slot,
            "planted_step": self.planted_step,
            "planted_insn": self.planted_insn,
            "planted_symbol": self.planted_symbol,
            "value": self.value,
            "target": self.target,
            "entry_rsp": self.entry_rsp,
            "trampoline": self.trampoline,
        }


@dataclass(frozen=True)
class Findings:
    """The violations an invariant found: the first `MAX_VIOLATIONS`, and how many in all."""

    violations: tuple[Violation, ...] = ()
    total: int = 0


@dataclass(frozen=True)
class InvariantResult:
    id: str
    summary: str
    violations: tuple[Violation, ...]
    total: int

    @property
    def holds(self) -> bool:
        return self.total == 0

    @property
    def status(self) -> str:
        return "holds" if self.holds else "fails"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "summary": self.summary,
            "status": self.status,
            "total": self.total,
            "violations": [v.to_json() for v in self.violations],
        }


@dataclass(frozen=True)
class CheckResult:
    trace: str
    scenario: str
    results: tuple[InvariantResult, ...]
    planted: tuple[PlantedReturn, ...]
    planted_total: int

    @property
    def holds(self) -> bool:
        return all(r.holds for r in self.results)

    @property
    def exit_status(self) -> int:
        """0 when every invariant holds, 1 when one fails (2 is bad input, raised earlier)."""
        return 0 if self.holds else 1

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.results if not r.holds)

    def result(self, invariant: str) -> InvariantResult:
        for r in self.results:
            if r.id == invariant:
                return r
        raise KeyError(invariant)

    def to_json(self) -> dict[str, Any]:
        return {
            "trace": self.trace,
            "scenario": self.scenario,
            "status": "holds" if self.holds else "fails",
            "failed": list(self.failed),
            "invariants": [r.to_json() for r in self.results],
            "planted_returns": [p.to_json() for p in self.planted],
            "planted_total": self.planted_total,
        }

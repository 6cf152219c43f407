"""What a check finds: causes, violations, planted returns and the result of each invariant.

Small frozen dataclasses with a `to_json()` each, so `check --json`,
`invariants.json` and the reports all say the same thing in the same words.

Violations that share a cause are one `Cause`: the same invariant, the same
code site and the same kind of mistake, with a count and the first and last
step. Violations that follow from another cause (misaligned calls inside a
function that was entered misaligned) are `Consequence`s listed under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..layout import slot_name

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
    #: `file:line` of the instruction at `rip`, when the trace knows it.
    source: str | None = None
    #: The OS thread that ran the step (1 = the first), in a program that made
    #: threads; None in any other (its output says nothing of threads).
    thread: int | None = None

    @property
    def in_thread(self) -> str:
        """` in thread 2` after the step, or nothing for a program without threads."""
        return "" if self.thread is None else f" in thread {self.thread}"

    def to_json(self) -> dict[str, Any]:
        return {
            "invariant": self.invariant,
            "step": self.step,
            "rip": self.rip,
            "symbol": self.symbol,
            "message": self.message,
            "source": self.source,
            **({} if self.thread is None else {"thread": self.thread}),
        }


@dataclass(frozen=True)
class Consequence:
    """Violations that follow from a cause: `count` of one kind, first to last step."""

    invariant: str
    kind: str
    count: int
    first_step: int
    last_step: int
    #: The first of them, as an example.
    example: Violation

    @property
    def summary(self) -> str:
        """`80 misaligned-call violations follow from it (steps 126-3188)`."""
        if self.count == 1:
            return f"1 {self.kind} violation follows from it (step {self.first_step})"
        return (
            f"{self.count} {self.kind} violations follow from it "
            f"(steps {self.first_step}-{self.last_step})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "invariant": self.invariant,
            "kind": self.kind,
            "count": self.count,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "example": self.example.to_json(),
        }


@dataclass(frozen=True)
class Cause:
    """One mistake: every violation of one invariant at one code site of one kind.

    `site` is the code address the mistake is at (the instruction whose landing,
    store or frame is wrong), `first` the first violation it caused.
    """

    invariant: str
    kind: str
    site: int
    site_symbol: str
    site_source: str | None
    count: int
    first_step: int
    last_step: int
    first: Violation
    consequences: tuple[Consequence, ...] = ()

    @property
    def total(self) -> int:
        """Its own violations and every consequence."""
        return self.count + sum(c.count for c in self.consequences)

    @property
    def title(self) -> str:
        """A short label (for a plot): `alignment: entered misaligned at hello+0`."""
        return f"{self.invariant}: {kind_title(self.kind)} at {self.first.symbol}"

    def to_json(self) -> dict[str, Any]:
        return {
            "invariant": self.invariant,
            "kind": self.kind,
            "site": self.site,
            "site_symbol": self.site_symbol,
            "site_source": self.site_source,
            "count": self.count,
            "total": self.total,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "first": self.first.to_json(),
            "consequences": [c.to_json() for c in self.consequences],
        }


def kind_title(kind: str) -> str:
    """A kind of mistake in words: `clobbered rbx r12` is `rbx, r12 not restored`."""
    if kind.startswith("clobbered "):
        return f"{', '.join(kind.split()[1:])} not restored"
    return KIND_TITLES.get(kind, kind)


#: Short names for the kinds of mistake, for labels.
KIND_TITLES = {
    "misaligned-entry": "entered misaligned",
    "misaligned-call": "misaligned call",
    "landing-misaligns-calls": "landing misaligns calls",
    "unwritten-slot": "ret pops an unwritten slot",
    "planted-data": "ret pops planted data",
    "saved-stack-pointer": "stack pointer saved off its return address",
    "overflow": "stack overflow",
    "outside": "outside the stacks",
    "clobbered": "callee-saved register lost",
    "stdout": "stdout differs",
    "stop": "stop reason differs",
    "ret": "expected return missing",
    "fault": "the run faulted",
    "max_steps": "the run hit max_steps",
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
    #: The store that wrote the address; None when it was planted before a `--from`
    #: trace began (the store is not in the trace; `planted_insn`/`planted_symbol` are "").
    planted_step: int | None
    planted_insn: str
    planted_symbol: str
    value: int
    target: str
    #: rsp right after the `ret`, i.e. at the target's first instruction.
    entry_rsp: int
    #: The target is a trampoline (like the runtime's `skip`): no alignment rule of its own.
    trampoline: bool = False
    #: Where it landed: resume, return, entry, trampoline or other (analysis.transfers).
    landing: str = "other"
    #: `file:line` of the `ret`, and of the store that planted the address.
    source: str | None = None
    planted_source: str | None = None

    @property
    def where(self) -> str:
        return slot_name(self.region, self.index) if self.region else f"{self.slot:#x}"

    @property
    def planted_when(self) -> str:
        """`step N`, or `before the trace began`."""
        return (
            "before the trace began" if self.planted_step is None else f"step {self.planted_step}"
        )

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
            "landing": self.landing,
            "source": self.source,
            "planted_source": self.planted_source,
        }


@dataclass(frozen=True)
class Findings:
    """The violations an invariant found: the first `MAX_VIOLATIONS`, how many in all,
    their causes, and notes (what was not checked, what passed on purpose)."""

    violations: tuple[Violation, ...] = ()
    total: int = 0
    causes: tuple[Cause, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class InvariantResult:
    id: str
    summary: str
    violations: tuple[Violation, ...]
    total: int
    causes: tuple[Cause, ...] = ()
    notes: tuple[str, ...] = ()

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
            "causes": [c.to_json() for c in self.causes],
            "notes": list(self.notes),
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
    def causes(self) -> tuple[Cause, ...]:
        """Every cause of every invariant, by the step it first shows."""
        found = [c for r in self.results for c in r.causes]
        return tuple(sorted(found, key=lambda c: (c.first_step, c.invariant)))

    @property
    def total(self) -> int:
        return sum(r.total for r in self.results)

    @property
    def headline(self) -> str:
        """`1 cause, 83 violations` (or `every invariant holds`)."""
        if self.holds:
            return "every invariant holds"
        causes = len(self.causes)
        return (
            f"{causes} cause{'' if causes == 1 else 's'}, "
            f"{self.total} violation{'' if self.total == 1 else 's'}"
        )

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
            "headline": self.headline,
            "causes": [c.to_json() for c in self.causes],
            "invariants": [r.to_json() for r in self.results],
            "planted_returns": [p.to_json() for p in self.planted],
            "planted_total": self.planted_total,
        }

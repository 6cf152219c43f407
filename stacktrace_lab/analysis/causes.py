"""Causes: grouping the violations an invariant finds, and describing the ones shown.

An invariant hands `grouped` its violations as `Items` (per violation: its
step, its kind of mistake, its code site and the violation it follows from,
if any) and a function that says what is wrong at one of them. `grouped`
makes one `Cause` per invariant, site and kind, with a count and the first
and last step, lists the violations that follow from a cause as its
`Consequence`s, and describes at most `MAX_VIOLATIONS` violations, each with
its source line. Messages are built only for what is shown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from .events import TraceFacts
from .kinds import I64, U64
from .model import MAX_VIOLATIONS, Cause, Consequence, Findings, Violation

#: At most this many causes are described per invariant (all are counted).
MAX_CAUSES = 100


class Items:
    """The violations an invariant found, before they are grouped and described.

    Per item: its step, its kind of mistake (a name), its code site (the grouping
    key with the kind) and the item it follows from (its root, -1 for none).
    Items are added one at a time or as arrays (a million misaligned calls).
    """

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self._parts: list[tuple[I64, npt.NDArray[np.int16], U64, I64]] = []
        self._count = 0
        self._relabel: list[tuple[I64, int]] = []

    def relabel(self, indices: I64, kind: str) -> None:
        """Give the items at `indices` another kind."""
        if indices.size:
            self._relabel.append((indices, self.kind_code(kind)))

    def __len__(self) -> int:
        return self._count

    def kind_code(self, kind: str) -> int:
        if kind not in self.kinds:
            self.kinds.append(kind)
        return self.kinds.index(kind)

    def add(self, step: int, kind: str, site: int, root: int = -1) -> int:
        return self.add_many(
            np.array([step], dtype=np.int64),
            kind,
            np.array([site], dtype=np.uint64),
            np.array([root], dtype=np.int64),
        )

    def add_many(self, steps: I64, kind: str, sites: U64, roots: I64 | None = None) -> int:
        """Add one item per step; returns the index of the first."""
        first = self._count
        code = np.full(steps.shape, self.kind_code(kind), dtype=np.int16)
        root = roots if roots is not None else np.full(steps.shape, -1, dtype=np.int64)
        self._parts.append(
            (steps.astype(np.int64), code, sites.astype(np.uint64), root.astype(np.int64))
        )
        self._count += int(steps.size)
        return first

    def arrays(self) -> tuple[I64, npt.NDArray[np.int16], U64, I64]:
        if not self._parts:
            empty = np.zeros(0, dtype=np.int64)
            return empty, np.zeros(0, dtype=np.int16), np.zeros(0, dtype=np.uint64), empty
        kind = np.concatenate([p[1] for p in self._parts])
        for indices, code in self._relabel:
            kind[indices] = code
        return (
            np.concatenate([p[0] for p in self._parts]),
            kind,
            np.concatenate([p[2] for p in self._parts]),
            np.concatenate([p[3] for p in self._parts]),
        )


def grouped(
    facts: TraceFacts,
    invariant: str,
    items: Items,
    message: Callable[[int], str],
    notes: Sequence[str] = (),
) -> Findings:
    """Causes, consequences and the first violations from `items`; `message(i)` says
    what is wrong at item `i` (asked only for the items shown)."""
    count = len(items)
    if not count:
        return Findings(notes=tuple(notes))
    step, kind, site, root = items.arrays()
    order = np.argsort(step, kind="stable")  # items in step order
    # One key per (site, kind); a consequence is keyed by its root's key, then its kind.
    key = site * np.uint64(1024) + kind.astype(np.uint64)
    is_root = root < 0
    roots_o = order[is_root[order]]
    cause_keys, cause_first = np.unique(key[roots_o], return_index=True)
    cause_inverse = np.searchsorted(cause_keys, key[roots_o])
    cause_count = np.bincount(cause_inverse, minlength=cause_keys.size)
    cause_last = np.zeros(cause_keys.size, dtype=np.int64)
    np.maximum.at(cause_last, cause_inverse, np.arange(roots_o.size))
    # Causes by the step they first show.
    by_step = np.argsort(cause_first, kind="stable")[:MAX_CAUSES]

    follows_o = order[~is_root[order]]
    cons_cause = np.searchsorted(cause_keys, key[root[follows_o]])
    cons_key = cons_cause.astype(np.int64) * 1024 + kind[follows_o].astype(np.int64)
    cons_keys, cons_first = np.unique(cons_key, return_index=True)
    cons_inverse = np.searchsorted(cons_keys, cons_key)
    cons_count = np.bincount(cons_inverse, minlength=cons_keys.size)
    cons_last = np.zeros(cons_keys.size, dtype=np.int64)
    np.maximum.at(cons_last, cons_inverse, np.arange(follows_o.size))

    shown = order[:MAX_VIOLATIONS].tolist()
    described = set(shown)
    described |= {int(roots_o[cause_first[g]]) for g in by_step.tolist()}
    described |= {int(follows_o[i]) for i in cons_first.tolist()}
    info = facts.describe(int(step[i]) for i in described)
    violations: dict[int, Violation] = {}
    for i in sorted(described):
        where = info.get(int(step[i]))
        violations[i] = Violation(
            invariant=invariant,
            step=int(step[i]),
            rip=where.rip if where else 0,
            symbol=where.symbol if where else "",
            message=message(i),
            source=facts.source(where.rip) if where else None,
        )
    causes = []
    for g in by_step.tolist():
        first = int(roots_o[cause_first[g]])
        last = int(roots_o[cause_last[g]])
        mine = np.flatnonzero(cons_keys // 1024 == g).tolist()
        consequences = tuple(
            Consequence(
                invariant=invariant,
                kind=items.kinds[int(cons_keys[c] % 1024)],
                count=int(cons_count[c]),
                first_step=int(step[follows_o[cons_first[c]]]),
                last_step=int(step[follows_o[cons_last[c]]]),
                example=violations[int(follows_o[cons_first[c]])],
            )
            for c in mine
        )
        site_addr = int(site[first])
        causes.append(
            Cause(
                invariant=invariant,
                kind=items.kinds[int(kind[first])],
                site=site_addr,
                site_symbol=facts.symbolize(site_addr),
                site_source=facts.source(site_addr),
                count=int(cause_count[g]),
                first_step=int(step[first]),
                last_step=int(step[last]),
                first=violations[first],
                consequences=consequences,
            )
        )
    return Findings(
        violations=tuple(violations[i] for i in shown),
        total=count,
        causes=tuple(causes),
        notes=tuple(notes),
    )


def simple(facts: TraceFacts, invariant: str, found: Sequence[tuple[int, str, str]]) -> Findings:
    """Findings from (step, kind, message) triples; the site is the instruction at the step."""
    items = Items()
    rips = facts.rips_at(np.array([step for step, _, _ in found], dtype=np.int64))
    for (step, kind, _), rip in zip(found, rips.tolist(), strict=True):
        items.add(step, kind, int(rip))
    return grouped(facts, invariant, items, lambda i: found[i][2])


def code_at(facts: TraceFacts, rip: int) -> str:
    """` in gt_switch (first-switch.toml:31)` for a code address."""
    src = facts.source(rip)
    return f" in {facts.symbolize(rip)}" + (f" ({src})" if src else "")

"""The fixed memory layout of the emulated machine.

Code starts at `CODE_BASE`. Declared regions follow from `REGIONS_START`, in
declaration order, each on pages of its own with one unmapped guard page
before it. A stack region ends at the end of its last page (its top is page
aligned and its base is `top - size`); a data region starts at the start of
its first page. Region addresses do not depend on the code's size, so editing
the program does not move its stacks.

The recorder and the analysis side both use this module; it is pure data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .arch import PAGE

CODE_BASE = 0x400000
#: Largest program accepted (15 MiB): the code must end well before the regions.
CODE_LIMIT = 0xF00000
#: First byte of the first declared region's pages; round, so addresses read well.
REGIONS_START = 0x10000000
#: Return address planted under the entry function's frame. Nothing is mapped
#: there: the run stops when rip reaches it, with stop reason `returned`.
SENTINEL_RETURN = 0xDEAD0000

#: What a region holds. Scenarios declare stacks and data; `heap` and
#: `mapped` (an anonymous or file mapping) come from real programs' layouts.
RegionKind = Literal["code", "stack", "heap", "data", "mapped"]
REGION_KINDS: tuple[RegionKind, ...] = ("code", "stack", "heap", "data", "mapped")


def page_ceil(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


@dataclass(frozen=True)
class Region:
    name: str
    kind: RegionKind
    base: int
    size: int
    perms: str  # "r-x", "rw-"
    #: What a person reads for a region found in a program, where its name (an
    #: identifier kept stable for SQL, diffs and goldens) says less: the allocation
    #: and its caller, `calloc(48) in main`; the thread it belongs to, `thread 2 stack`;
    #: the function that first ran on it, `stack of worker`; "" for a declared region
    #: (the name says it).
    label: str = ""

    @property
    def shown_name(self) -> str:
        """What a person calls the region where there is room for one name (a picture's
        axis, a switch note): the label when the name only spells it as an identifier
        (`thread 2 stack` for `thread_2_stack`), else the name."""
        return self.label if self.label and _spelled(self.label) == self.name else self.name

    @property
    def display(self) -> str:
        """The name with the label where the label says more: `calloc_48 (calloc(48) in
        main)`; just `thread 2 stack` for `thread_2_stack`."""
        if not self.label or self.shown_name == self.label:
            return self.shown_name
        return f"{self.name} ({self.label})"

    @property
    def top(self) -> int:
        return self.base + self.size

    @property
    def map_start(self) -> int:
        """First byte of the pages the region occupies."""
        return self.base // PAGE * PAGE

    @property
    def map_size(self) -> int:
        return page_ceil(self.top) - self.map_start

    def contains(self, addr: int) -> bool:
        return self.base <= addr < self.top

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.name,
            "kind": self.kind,
            "base": self.base,
            "size": self.size,
            "perms": self.perms,
        }
        if self.label:  # only found regions have one: scenario traces stay as they were
            out["label"] = self.label
        return out

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Region:
        kind = str(d["kind"])
        if kind not in REGION_KINDS:
            raise ValueError(f"unknown region kind {kind!r}")
        return cls(
            name=str(d["name"]),
            kind=kind,
            base=int(str(d["base"])),
            size=int(str(d["size"])),
            perms=str(d["perms"]),
            label=str(d.get("label", "")),
        )


def _spelled(label: str) -> str:
    """A label spelled as a region name: spaces as underscores (`thread 2 stack`)."""
    return label.replace(" ", "_")


def place_regions(declared: list[tuple[str, RegionKind, int]]) -> list[Region]:
    """Lay out declared (name, kind, size) regions after the code region."""
    regions: list[Region] = []
    cursor = REGIONS_START
    for name, kind, size in declared:
        pages = page_ceil(size)
        # A stack grows down from the end of its last page; data starts at its first.
        base = cursor + pages - size if kind == "stack" else cursor
        regions.append(Region(name=name, kind=kind, base=base, size=size, perms="rw-"))
        cursor += pages + PAGE  # one unmapped guard page between regions
    return regions


def code_region(size: int) -> Region:
    return Region(name="code", kind="code", base=CODE_BASE, size=max(size, 1), perms="r-x")


def region_symbols(regions: list[Region]) -> dict[str, int]:
    """The `R_base`, `R_size` and `R_top` symbols the assembler sees."""
    symbols: dict[str, int] = {}
    for region in regions:
        symbols[f"{region.name}_base"] = region.base
        symbols[f"{region.name}_size"] = region.size
        symbols[f"{region.name}_top"] = region.top
    return symbols


def slot_name(region: str, index: int) -> str:
    """The one spelling of a place in a region everywhere a person reads it: `green[32]`
    (the byte index from the region's base; negative below it, as an overflow)."""
    return f"{region}[{index}]"

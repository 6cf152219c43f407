"""Looking up the region of many addresses at once: the first region listed that holds
each address, as a loop over the regions would say, with touching and nested regions."""

from __future__ import annotations

import numpy as np

from stacktrace_lab.analysis.lookup import RegionLookup
from stacktrace_lab.layout import Region


def _first_holding(regions: list[Region], addr: int, with_top: bool) -> int:
    for i, r in enumerate(regions):
        if r.base <= addr and (addr <= r.top if with_top else addr < r.top):
            return i
    return -1


def test_lookup_is_the_first_region_listed_that_holds_each_address() -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        regions = []
        for k in range(int(rng.integers(0, 12))):
            base = int(rng.integers(0, 400)) * 8
            regions.append(Region(f"r{k}", "stack", base, int(rng.integers(1, 40)) * 8, "rw-"))
        addrs = np.concatenate(
            [
                rng.integers(0, 3600, 500).astype(np.uint64),
                np.array([r.top for r in regions] + [r.base for r in regions], dtype=np.uint64),
            ]
        )
        for with_top in (True, False):
            found = RegionLookup(regions, with_top=with_top).index(addrs)
            expected = [_first_holding(regions, int(a), with_top) for a in addrs]
            assert found.tolist() == expected


def test_lookup_of_high_addresses_and_of_no_regions() -> None:
    top = 0x7FFF_FFFF_F000
    regions = [Region("stack", "stack", top - 4096, 4096, "rw-")]
    addrs = np.array([0, top - 4097, top - 4096, top, top + 1, (1 << 64) - 1], dtype=np.uint64)
    assert RegionLookup(regions, with_top=True).index(addrs).tolist() == [-1, -1, 0, 0, -1, -1]
    assert RegionLookup(regions, with_top=False).index(addrs).tolist() == [-1, -1, 0, -1, -1, -1]
    assert RegionLookup([], with_top=True).index(addrs).tolist() == [-1] * 6

"""record/core/windows.py: each stack's snapshot window where rsp went, and the overflow window."""

from __future__ import annotations

import pytest

from stacktrace_lab.layout import Region
from stacktrace_lab.record.core.windows import (
    RED_ZONE,
    Extent,
    choose_windows,
    overflow_key,
    overflow_stack,
    window_fits,
)
from stacktrace_lab.trace.format import SnapshotWindow

MAIN = Region("main", "stack", 0x7FFF_FFFD_E000, 0x21000, "rw-")
GREEN = Region("green", "stack", 0x4C_1230, 48, "rw-")
HEAP = Region("heap", "heap", 0x4C_0000, 0x21000, "rw-")
TEXT = Region("text", "code", 0x40_1000, 0x1000, "r-x")


def test_a_process_stack_window_covers_the_deepest_rsp_not_argv() -> None:
    # rsp went from top-0x1F00 down to top-0x2100: the frames, far below the top 512 bytes.
    extent = Extent(lowest=MAIN.top - 0x2100, highest=MAIN.top - 0x1F00)
    window = choose_windows([MAIN], 512, {"main": extent})["main"]
    assert window.size == 512
    assert window.base == extent.lowest - RED_ZONE
    assert window.base <= extent.lowest < window.top
    assert window.top < MAIN.top - 512  # not the argv/environment block any more
    assert window.base % 8 == 0
    assert window_fits("main", window, [MAIN])


def test_rsp_near_the_top_keeps_the_top_window() -> None:
    extent = Extent(lowest=MAIN.top - 200, highest=MAIN.top - 8)
    window = choose_windows([MAIN], 512, {"main": extent})["main"]
    assert (window.base, window.top) == (MAIN.top - 512, MAIN.top)


def test_a_stack_rsp_never_entered_keeps_its_top() -> None:
    windows = choose_windows([MAIN, TEXT, HEAP], 512, {})
    assert set(windows) == {"main"}  # only stacks get windows
    assert (windows["main"].base, windows["main"].size) == (MAIN.top - 512, 512)
    assert windows["main"].column == "stack__main"


def test_a_small_stack_is_stored_whole_and_its_overflow_below_it() -> None:
    # The 48-byte stack's rsp reached 392 bytes under its base (the heap chunks in front).
    extent = Extent(lowest=GREEN.base - 392 + RED_ZONE, highest=GREEN.top)
    windows = choose_windows([HEAP, GREEN], 512, {"green": extent})
    assert (windows["green"].base, windows["green"].size) == (GREEN.base, 48)
    below = windows[overflow_key("green")]
    assert below.top == GREEN.base
    assert below.size == 392
    assert below.column == "stack__green__below"
    assert window_fits("green__below", below, [HEAP, GREEN])
    # Not inside any region: the ordinary rule would refuse it; the overflow rule takes it.
    assert not window_fits("green", below, [HEAP, GREEN])


def test_an_overflow_window_is_capped_at_the_limit_next_to_the_base() -> None:
    extent = Extent(lowest=GREEN.base - 10_000, highest=GREEN.top)
    below = choose_windows([GREEN], 256, {"green": extent})["green__below"]
    assert (below.base, below.top) == (GREEN.base - 256, GREEN.base)


def test_no_overflow_window_without_an_overflow() -> None:
    windows = choose_windows([GREEN], 512, {"green": Extent(GREEN.base, GREEN.top)})
    assert set(windows) == {"green"}


def test_windows_never_leave_their_region_whatever_the_extent() -> None:
    odd = Region("odd", "stack", 0x1003, 5000, "rw-")
    for lowest in range(odd.base - 300, odd.top + 300, 37):
        for highest in (lowest, lowest + 64, odd.top):
            windows = choose_windows([odd], 512, {"odd": Extent(lowest, highest)})
            for key, window in windows.items():
                assert window_fits(key, window, [odd]), (key, window, lowest)
                assert window.size <= 512


def test_keys_and_bad_limits() -> None:
    assert overflow_stack("green__below") == "green"
    assert overflow_stack("green") is None
    assert overflow_stack("__below") is None
    assert not window_fits("blue__below", SnapshotWindow("c", 0, 8), [GREEN])
    with pytest.raises(ValueError, match="at least 8"):
        choose_windows([GREEN], 4, {})

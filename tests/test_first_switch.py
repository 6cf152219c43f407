"""The seed program's trace, read with plain pyarrow and pandas (not the project's reader)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

HELLO_MESSAGE = "I LOVE WAKING UP ON A NEW STACK!\n"


def _meta(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(pq.read_metadata(path).metadata[b"stacktrace_lab"])


def test_stop_output_and_metadata(first_switch_trace: Path) -> None:
    meta = _meta(first_switch_trace)
    assert meta["format"] == "stacktrace-lab-trace"
    assert meta["version"] == 5
    assert meta["stop"]["reason"] == "spin"
    assert meta["output"]["stdout"] == HELLO_MESSAGE
    assert set(meta["layout"]["symbols"]) == {"main", "gt_switch", "hello"}
    assert [r["name"] for r in meta["layout"]["regions"]] == ["code", "main", "green"]
    assert "gt_switch:" in meta["scenario"]["source"]
    green = next(r for r in meta["layout"]["regions"] if r["name"] == "green")
    assert green["size"] == 48
    assert (green["base"] + green["size"]) % 4096 == 0  # the stack's top is page aligned


def test_ret_pops_hello_from_index_32(first_switch_trace: Path) -> None:
    meta = _meta(first_switch_trace)
    green_base = next(r["base"] for r in meta["layout"]["regions"] if r["name"] == "green")
    hello = meta["layout"]["symbols"]["hello"]
    df = pd.read_parquet(first_switch_trace)

    ret = df[
        df["symbol"].astype(str).str.startswith("gt_switch")
        & df["insn"].astype(str).str.startswith("ret")
    ]
    assert len(ret) == 1
    reads = list(ret.iloc[0]["reads"])
    assert len(reads) == 1
    assert reads[0]["addr"] == green_base + 32
    assert reads[0]["size"] == 8
    assert int.from_bytes(reads[0]["data"], "little") == hello

    after = df.iloc[ret.index[0] + 1]
    assert after["rip"] == hello
    assert after["rsp"] == green_base + 40
    assert after["rsp"] % 16 == 8  # hello is entered as if called


def test_the_switch_is_mov_then_ret(first_switch_trace: Path) -> None:
    df = pd.read_parquet(first_switch_trace)
    switch = df[df["symbol"].astype(str).str.startswith("gt_switch")]
    assert list(switch["insn"].astype(str)) == ["movq (%rdi), %rsp", "retq"]


def test_green_snapshot_shows_hello_only_after_the_store(first_switch_trace: Path) -> None:
    meta = _meta(first_switch_trace)
    hello = meta["layout"]["symbols"]["hello"].to_bytes(8, "little")
    df = pd.read_parquet(first_switch_trace)
    store = df[df["insn"].astype(str) == "movq %rcx, 0x20(%rax)"]
    assert len(store) == 1
    store_step = int(store.iloc[0]["step"])
    for step, snapshot in zip(df["step"], df["stack__green"], strict=True):
        assert len(snapshot) == 48
        if step <= store_step:
            assert snapshot[32:40] == bytes(8), step
        else:
            assert snapshot[32:40] == hello, step

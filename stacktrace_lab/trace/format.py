"""The trace format's one home: schema, version and metadata (docs/trace-format.md).

One row per executed instruction. Register columns hold the state before the
instruction; `reads` and `writes` what the instruction itself accessed;
`stack__<name>` the bytes of each stack region (or its top bytes) before it.
Trace-level facts are one JSON object in the Parquet key-value metadata under
`METADATA_KEY`, with sorted keys so that files are byte-identical run to run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ..arch import REGISTERS
from ..layout import Region
from ..scenario import Expectations

FORMAT_NAME = "stacktrace-lab-trace"
FORMAT_VERSION = 1
METADATA_KEY = "stacktrace_lab"
STACK_PREFIX = "stack__"
DEFAULT_SNAPSHOT_LIMIT = 512

ACCESS_TYPE = pa.list_(
    pa.struct(
        [
            pa.field("addr", pa.uint64(), nullable=False),
            pa.field("size", pa.uint16(), nullable=False),
            pa.field("data", pa.binary(), nullable=False),
        ]
    )
)
TEXT_TYPE = pa.dictionary(pa.int32(), pa.string())


def stack_column(name: str) -> str:
    return f"{STACK_PREFIX}{name}"


def schema(snapshots: dict[str, SnapshotWindow]) -> pa.Schema:
    fields = [pa.field("step", pa.int64(), nullable=False)]
    fields += [pa.field(name, pa.uint64(), nullable=False) for name in REGISTERS]
    fields += [
        pa.field("insn", TEXT_TYPE, nullable=False),
        pa.field("symbol", TEXT_TYPE, nullable=False),
        pa.field("reads", ACCESS_TYPE, nullable=False),
        pa.field("writes", ACCESS_TYPE, nullable=False),
    ]
    fields += [
        pa.field(window.column, pa.binary(window.size), nullable=False)
        for window in snapshots.values()
    ]
    return pa.schema(fields)


@dataclass(frozen=True)
class SnapshotWindow:
    """The bytes of a stack region that its `stack__` column holds."""

    column: str
    base: int
    size: int

    @property
    def top(self) -> int:
        return self.base + self.size


@dataclass(frozen=True)
class StopInfo:
    reason: str
    step: int
    detail: str


@dataclass(frozen=True)
class ScenarioInfo:
    name: str
    description: str
    syntax: str
    entry: str
    source: str
    expect: Expectations
    breaks: str | None = None


@dataclass(frozen=True)
class TraceMetadata:
    scenario: ScenarioInfo
    regions: tuple[Region, ...]
    symbols: dict[str, int]
    code_base: int
    code: bytes
    snapshots: dict[str, SnapshotWindow]
    initial: dict[str, int]
    final: dict[str, int]
    stop: StopInfo
    stdout: str
    stderr: str
    options: dict[str, Any]
    tool: dict[str, str]
    steps: int
    #: Address of each source line's first instruction -> its line number in
    #: the scenario file (for listings that show the source beside the code).
    lines: dict[int, int] = field(default_factory=dict)
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def region(self, name: str) -> Region:
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(name)

    @property
    def stacks(self) -> tuple[Region, ...]:
        return tuple(r for r in self.regions if r.kind == "stack")

    def region_of(self, addr: int) -> Region | None:
        for region in self.regions:
            if region.contains(addr):
                return region
        return None

    def to_json(self) -> str:
        doc = {
            "format": self.format,
            "version": self.version,
            "tool": self.tool,
            "scenario": {
                "name": self.scenario.name,
                "description": self.scenario.description,
                "syntax": self.scenario.syntax,
                "entry": self.scenario.entry,
                "source": self.scenario.source,
                "expect": self.scenario.expect.to_json(),
                "breaks": self.scenario.breaks,
            },
            "layout": {
                "regions": [r.to_json() for r in self.regions],
                "symbols": self.symbols,
            },
            "code": {
                "base": self.code_base,
                "bytes": self.code.hex(),
                "lines": [[addr, line] for addr, line in sorted(self.lines.items())],
            },
            "snapshots": {
                name: {"column": w.column, "base": w.base, "size": w.size}
                for name, w in self.snapshots.items()
            },
            "initial": self.initial,
            "final": self.final,
            "steps": self.steps,
            "stop": {
                "reason": self.stop.reason,
                "step": self.stop.step,
                "detail": self.stop.detail,
            },
            "output": {"stdout": self.stdout, "stderr": self.stderr},
            "options": self.options,
            **self.extra,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> TraceMetadata:
        doc = json.loads(text)
        known = {
            "format",
            "version",
            "tool",
            "scenario",
            "layout",
            "code",
            "snapshots",
            "initial",
            "final",
            "steps",
            "stop",
            "output",
            "options",
        }
        s = doc["scenario"]
        if not isinstance(s.get("expect") or {}, dict):
            raise TypeError("scenario.expect must be an object")
        metadata = cls(
            format=doc["format"],
            version=int(doc["version"]),
            tool=dict(doc.get("tool", {})),
            scenario=ScenarioInfo(
                name=s["name"],
                description=s.get("description", ""),
                syntax=s.get("syntax", "att"),
                entry=s["entry"],
                source=s["source"],
                expect=Expectations.from_json(s.get("expect") or {}),
                breaks=s.get("breaks"),
            ),
            regions=tuple(Region.from_json(r) for r in doc["layout"]["regions"]),
            symbols={k: int(v) for k, v in doc["layout"]["symbols"].items()},
            code_base=int(doc["code"]["base"]),
            code=bytes.fromhex(doc["code"]["bytes"]),
            lines={int(addr): int(line) for addr, line in doc["code"].get("lines", [])},
            snapshots={
                name: SnapshotWindow(w["column"], int(w["base"]), int(w["size"]))
                for name, w in doc["snapshots"].items()
            },
            initial={k: int(v) for k, v in doc["initial"].items()},
            final={k: int(v) for k, v in doc["final"].items()},
            steps=int(doc["steps"]),
            stop=StopInfo(doc["stop"]["reason"], int(doc["stop"]["step"]), doc["stop"]["detail"]),
            stdout=doc["output"]["stdout"],
            stderr=doc["output"]["stderr"],
            options=dict(doc.get("options", {})),
            extra={k: v for k, v in doc.items() if k not in known},
        )
        _check_types(metadata)
        return metadata


def _check_types(metadata: TraceMetadata) -> None:
    """Refuse hand-edited metadata whose values the rest of the code cannot use.

    `from_json` converts numbers with `int()`, but a string field holding a
    number or null, or a region of negative size, would only fail deep inside
    a command, with a traceback.
    """
    texts = {
        "scenario.name": metadata.scenario.name,
        "scenario.description": metadata.scenario.description,
        "scenario.syntax": metadata.scenario.syntax,
        "scenario.entry": metadata.scenario.entry,
        "scenario.source": metadata.scenario.source,
        "stop.reason": metadata.stop.reason,
        "stop.detail": metadata.stop.detail,
        "output.stdout": metadata.stdout,
        "output.stderr": metadata.stderr,
        **{f"snapshots.{name}.column": w.column for name, w in metadata.snapshots.items()},
    }
    optional_texts = {
        "scenario.breaks": metadata.scenario.breaks,
        "scenario.expect.stdout": metadata.scenario.expect.stdout,
        "scenario.expect.stop": metadata.scenario.expect.stop,
    }
    for where, value in [*texts.items(), *optional_texts.items()]:
        if not isinstance(value, str) and not (value is None and where in optional_texts):
            raise TypeError(f"{where} must be a string, got {value!r}")
    for region in metadata.regions:
        if region.base < 0 or region.size < 1:
            raise ValueError(f"region {region.name!r} has base {region.base}, size {region.size}")
    for name, window in metadata.snapshots.items():
        stack = next((r for r in metadata.regions if r.name == name), None)
        if stack is None or not (stack.base <= window.base and window.top <= stack.top):
            raise ValueError(f"snapshot {name!r} is not inside a region of that name")

"""Trace format version 2: fact columns, typed metadata, schema metadata, round trips, v1.

What other Parquet tools see is checked with those tools (pyarrow, polars),
not with the project's reader.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from stacktrace_lab.errors import BadInput
from stacktrace_lab.record.recorder import Recording, record
from stacktrace_lab.scenario import BUILTIN_DIR, load_scenario
from stacktrace_lab.trace import FORMAT_VERSION, load_trace
from stacktrace_lab.trace.format import FACT_COLUMNS, METADATA_KEY

V1_FIXTURE = Path(__file__).parent / "fixtures" / "first-switch-v1.parquet"

#: Every kind, and the tricky cases: `loop` is only a relative branch to
#: capstone, a conditional jump is a jmp, an indirect call is a call, a
#: prefixed ret and a ret that pops more are rets.
KINDS = """
main:
    mov $3, %rcx
again:
    loop again
    call f
    call g
    push $0
    call h
    mov $f, %rax
    call *%rax
    mov $there, %rax
    jmp *%rax
there:
    mov $done, %rax
    push %rax
    jmp *(%rsp)
done:
    pop %rax
    cmp $0, %rax
    je done
    jmp out
out:
    mov $0x0a6968, %rax
    push %rax
    mov %rsp, %rsi
    mov $1, %eax
    mov $1, %edi
    mov $3, %edx
    syscall
    mov $60, %eax
    mov $7, %edi
    syscall
f:
    ret
g:
    .byte 0xf3, 0xc3  # rep ret, as older gcc emitted for AMD's branch predictor
h:
    ret $8
"""


@pytest.fixture
def kinds(record_source: Callable[..., Recording]) -> Recording:
    return record_source(KINDS)


def _by_text(path: Path) -> dict[str, set[str]]:
    table = pq.read_table(path, columns=["insn", "kind"]).to_pylist()
    kinds: dict[str, set[str]] = {}
    for row in table:
        kinds.setdefault(row["insn"], set()).add(row["kind"])
    return kinds


def test_kind_comes_from_capstone_groups_and_operands(kinds: Recording) -> None:
    by_text = _by_text(kinds.path)
    assert by_text["loop 0x40000a"] == {"jmp"}
    assert by_text["callq 0x400077"] == {"call"}
    assert by_text["callq *%rax"] == {"call"}
    assert by_text["jmpq *%rax"] == {"indirect-jmp"}
    assert by_text["jmpq *(%rsp)"] == {"indirect-jmp"}
    assert by_text["je 0x400043"] == {"jmp"}
    assert by_text["jmp 0x40004c"] == {"jmp"}
    assert by_text["retq"] == {"ret"}
    assert by_text["repz retq"] == {"ret"}
    assert by_text["retq $8"] == {"ret"}
    assert by_text["syscall"] == {"syscall"}
    assert by_text["pushq %rax"] == {"other"}
    # The dictionary is all six kinds, in the documented order, in every file.
    kind = pq.read_table(kinds.path, columns=["kind"]).column("kind").chunk(0)
    assert kind.dictionary.to_pylist() == ["call", "ret", "jmp", "indirect-jmp", "syscall", "other"]


def test_label_offset_bytes_and_source_agree_with_symbol_code_and_lines(
    kinds: Recording,
) -> None:
    trace = load_trace(kinds.path)
    meta = trace.metadata
    rows = trace.table(["rip", "symbol", *FACT_COLUMNS]).to_pylist()
    for row in rows:
        assert f"{row['label']}+{row['offset']}" == row["symbol"]
        assert meta.symbols[row["label"]] + row["offset"] == row["rip"]
        start = row["rip"] - meta.code_base
        assert row["insn_bytes"] == meta.code[start : start + len(row["insn_bytes"])]
        file, line = meta.source_line(row["rip"])  # type: ignore[misc]
        assert row["source"] == f"{file}:{line}"
    assert rows[0]["insn_bytes"] == bytes.fromhex("48b90300000000000000")  # movabs $3, %rcx
    # `mov $3, %rcx` stands on line 11 of the generated scenario file.
    assert rows[0]["source"] == f"{kinds.path.with_suffix('.toml').name}:11"


def test_source_line_exact_nearest_below_and_outside_the_code(kinds: Recording) -> None:
    meta = load_trace(kinds.path).metadata
    first, second = meta.lines[0], meta.lines[1]
    assert meta.source_line(first.addr) == (first.file, first.line)
    assert second.addr > first.addr + 1  # mov $3, %rcx is 10 bytes long
    assert meta.source_line(first.addr + 1) == (first.file, first.line)
    assert meta.source_line(first.addr - 1) is None  # below the code
    assert meta.source_line(meta.region("main").base) is None  # a stack


def test_syscalls_are_logged_with_step_args_and_result(kinds: Recording) -> None:
    trace = load_trace(kinds.path)
    write, exit_ = trace.syscalls()
    kind = trace.table(["kind"]).column("kind").to_pylist()
    assert [write.step, exit_.step] == [i for i, k in enumerate(kind) if k == "syscall"]
    assert (write.nr, write.name, write.args[0], write.args[2], write.result) == (
        1,
        "write",
        1,
        3,
        3,
    )
    assert write.args[1] == trace.table(["rsi"]).column("rsi")[write.step].as_py()
    assert (exit_.nr, exit_.name, exit_.args[0], exit_.result) == (60, "exit", 7, None)
    # Version 3: on the `syscall` instruction's row, in a column; the metadata
    # only counts them, so it does not grow with the run.
    column = pq.read_table(kinds.path, columns=["syscall"]).column("syscall").to_pylist()
    assert column[exit_.step] == {
        "nr": 60,
        "name": "exit",
        "args": list(exit_.args),
        "result": None,
    }
    assert sum(call is not None for call in column) == 2
    doc = json.loads(pq.read_metadata(kinds.path).metadata[METADATA_KEY.encode()])
    assert "syscalls" not in doc
    assert doc["syscall_counts"] == {"exit": [1, 0], "write": [1, 0]}


def test_a_version_2_trace_keeps_its_syscall_list_and_presents_it_as_the_column(
    kinds: Recording, tmp_path: Path
) -> None:
    """A version 2 file (system calls in the metadata) reads as a version 3 one."""
    table = pq.read_table(kinds.path)
    doc = json.loads(table.schema.metadata[METADATA_KEY.encode()])
    calls = load_trace(kinds.path).syscalls()
    doc["version"] = 2
    del doc["syscall_counts"]
    doc["syscalls"] = [
        {"step": c.step, "nr": c.nr, "name": c.name, "args": list(c.args), "result": c.result}
        for c in calls
    ]
    old = table.drop_columns(["syscall"]).replace_schema_metadata({METADATA_KEY: json.dumps(doc)})
    pq.write_table(old, tmp_path / "v2.parquet")
    v2 = load_trace(tmp_path / "v2.parquet")
    assert v2.metadata.version == 2 and v2.syscalls() == calls
    assert v2.table(["syscall"]).equals(load_trace(kinds.path).table(["syscall"]))


def test_a_version_3_trace_reads_as_one_thread(kinds: Recording, tmp_path: Path) -> None:
    """Before version 4 there was no `thread` column: every row is thread 1."""
    table = pq.read_table(kinds.path)
    doc = json.loads(table.schema.metadata[METADATA_KEY.encode()])
    doc["version"] = 3
    old = table.drop_columns(["thread"]).replace_schema_metadata({METADATA_KEY: json.dumps(doc)})
    pq.write_table(old, tmp_path / "v3.parquet")
    v3 = load_trace(tmp_path / "v3.parquet")
    assert v3.metadata.version == 3 and "thread" in v3.column_names
    assert v3.table(["thread"]).equals(load_trace(kinds.path).table(["thread"]))
    assert set(v3.table(["thread"]).column(0).to_pylist()) == {1}
    assert v3.slice(1, 3, ["rip", "thread"]).column("thread").to_pylist() == [1, 1]


def test_a_long_run_of_system_calls_keeps_the_metadata_small(
    record_source: Callable[..., Recording],
) -> None:
    """Thousands of calls: the metadata holds a count, the rows hold the calls."""
    rec = record_source(
        "main:\n    mov $2000, %ebx\nagain:\n    mov $39, %eax\n    syscall\n"
        "    dec %ebx\n    jnz again\n    ret\n",
        extra="max_steps = 10000",
    )
    trace = load_trace(rec.path)
    assert len(trace.syscalls()) == 2000
    assert trace.metadata.syscall_counts == {"unknown": (2000, 2000)}
    assert len(pq.read_metadata(rec.path).metadata[METADATA_KEY.encode()]) < 8000


def test_an_unknown_syscall_is_logged_with_its_error(
    record_source: Callable[..., Recording],
) -> None:
    rec = record_source("main:\n    mov $39, %eax\n    syscall\n    ret\n")
    (call,) = load_trace(rec.path).syscalls()
    assert (call.step, call.nr, call.name, call.result) == (1, 39, "unknown", -38)


def test_program_names_a_builtin_by_name_and_a_file_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builtin = record(load_scenario("first-switch"), tmp_path / "a.parquet").metadata.program
    toml = BUILTIN_DIR / "first-switch.toml"
    assert builtin is not None
    assert (builtin.kind, builtin.path) == ("scenario", "first-switch")
    assert builtin.sha256 == hashlib.sha256(toml.read_bytes()).hexdigest()

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    shutil.copy(toml, tmp_path / "sub" / "mine.toml")
    given = record(load_scenario("sub/mine.toml"), tmp_path / "b.parquet").metadata
    assert given.program is not None and given.program.path == "sub/mine.toml"
    assert given.program.sha256 == builtin.sha256
    assert {e.file for e in given.lines} == {"mine.toml"}


def test_lines_name_an_assembly_file_relative_to_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "asm").mkdir()
    (tmp_path / "asm" / "prog.s").write_text("main:\n    nop\n    ret\n")
    (tmp_path / "s.toml").write_text(
        'name = "s"\n[[stacks]]\nname = "main"\nsize = 4096\n[program]\nfile = "asm/prog.s"\n'
    )
    meta = record(load_scenario(tmp_path / "s.toml"), tmp_path / "s.parquet").metadata
    assert [(e.file, e.line) for e in meta.lines] == [("asm/prog.s", 2), ("asm/prog.s", 3)]
    doc = json.loads(pq.read_metadata(tmp_path / "s.parquet").metadata[METADATA_KEY.encode()])
    assert doc["code"]["lines"] == [[0x400000, "asm/prog.s", 2], [0x400001, "asm/prog.s", 3]]


def test_table_level_readers_see_the_metadata(first_switch_trace: Path) -> None:
    expected = pq.read_metadata(first_switch_trace).metadata[METADATA_KEY.encode()]
    key = METADATA_KEY.encode()
    assert pq.read_table(first_switch_trace).schema.metadata[key] == expected
    assert pq.read_schema(first_switch_trace).metadata[key] == expected
    assert ds.dataset(first_switch_trace).schema.metadata[key] == expected
    # The Arrow types survive too (the stored Arrow schema is the full one).
    schema = pq.read_schema(first_switch_trace)
    assert pa.types.is_dictionary(schema.field("kind").type)
    # Format 5 stores a snapshot column as a dictionary of its versions; the
    # trace reader hands it out with its fixed width.
    assert schema.field("stack__green").type == pa.dictionary(pa.int32(), pa.binary())
    assert load_trace(first_switch_trace).schema.field("stack__green").type == pa.binary(48)


def _same_rows(a: Path, b: Path) -> None:
    original, copy = load_trace(a), load_trace(b)
    assert copy.metadata == original.metadata
    assert copy.column_names == original.column_names
    assert copy.table().schema.equals(original.table().schema)
    # Equal values; a dictionary column's dictionary may differ (polars drops unused values).
    assert copy.table().to_pylist() == original.table().to_pylist()


def test_a_pyarrow_round_trip_is_still_a_trace(tmp_path: Path, first_switch_trace: Path) -> None:
    copy = tmp_path / "copy.parquet"
    pq.write_table(pq.read_table(first_switch_trace), copy)
    _same_rows(first_switch_trace, copy)


def test_a_polars_round_trip_that_keeps_the_metadata_is_still_a_trace(
    tmp_path: Path, first_switch_trace: Path
) -> None:
    pl = pytest.importorskip("polars")
    copy = tmp_path / "copy.parquet"
    frame = pl.read_parquet(first_switch_trace)
    # polars keeps no schema metadata of its own: pass the key on, as docs/trace-format.md says.
    metadata = pl.read_parquet_metadata(first_switch_trace)
    frame.write_parquet(copy, metadata={METADATA_KEY: metadata[METADATA_KEY]})
    # polars wrote large lists, large binaries and variable-width snapshots ...
    stored = pq.read_schema(copy)
    assert not pa.types.is_fixed_size_binary(stored.field("stack__green").type)
    # ... which the reader casts back.
    _same_rows(first_switch_trace, copy)


def test_a_duckdb_round_trip_that_keeps_the_metadata_is_still_a_trace(
    tmp_path: Path, first_switch_trace: Path
) -> None:
    duckdb = pytest.importorskip("duckdb")
    copy = tmp_path / "copy.parquet"
    key = pq.read_metadata(first_switch_trace).metadata[METADATA_KEY.encode()].decode()
    duckdb.connect().execute(
        f"COPY (SELECT * FROM read_parquet(?) ORDER BY step) TO '{copy}' "
        "(FORMAT parquet, KV_METADATA {stacktrace_lab: ?})",
        [str(first_switch_trace), key],
    )
    # DuckDB wrote plain strings, nullable registers and variable-width snapshots ...
    stored = pq.read_schema(copy)
    assert stored.field("insn").type == pa.string()
    # ... which the reader casts back.
    _same_rows(first_switch_trace, copy)


def test_a_polars_round_trip_without_the_metadata_is_refused(
    tmp_path: Path, first_switch_trace: Path
) -> None:
    pl = pytest.importorskip("polars")
    copy = tmp_path / "copy.parquet"
    pl.read_parquet(first_switch_trace).write_parquet(copy)
    with pytest.raises(BadInput, match=r"copy\.parquet: not a stacktrace-lab trace \(no "):
        load_trace(copy)


def test_a_snapshot_of_the_wrong_width_is_a_corrupt_trace(
    tmp_path: Path, first_switch_trace: Path
) -> None:
    table = pq.read_table(first_switch_trace)
    i = table.schema.get_field_index("stack__green")
    cut = pa.array([v[:40] for v in table.column(i).to_pylist()], pa.binary())
    copy = tmp_path / "cut.parquet"
    pq.write_table(table.set_column(i, pa.field("stack__green", pa.binary()), cut), copy)
    trace = load_trace(copy)  # the width of a variable-width column shows on reading
    with pytest.raises(BadInput, match=r"cut\.parquet: corrupt trace \(column stack__green"):
        trace.table(["stack__green"])


def test_a_version_1_trace_loads_with_its_fact_columns_derived() -> None:
    trace = load_trace(V1_FIXTURE)
    meta = trace.metadata
    assert meta.version == 1 and FORMAT_VERSION == 5
    assert not set(FACT_COLUMNS) & set(pq.read_schema(V1_FIXTURE).names)
    assert set(FACT_COLUMNS) <= set(trace.column_names)
    assert meta.program is not None and meta.program.path == "first-switch"
    assert meta.program.sha256 is None and trace.syscalls() == []
    assert meta.lines[0].file == "first-switch.toml"
    rows = trace.table(["step", "rip", "insn", "symbol", *FACT_COLUMNS]).to_pylist()
    ret = rows[12]
    assert (ret["insn"], ret["kind"], ret["label"], ret["offset"]) == (
        "retq",
        "ret",
        "gt_switch",
        3,
    )
    assert ret["insn_bytes"] == b"\xc3"
    assert meta.source_line(ret["rip"]) == ("first-switch.toml", 49)
    assert ret["source"] == "first-switch.toml:49"
    # Row groups and slices derive them too, with the same values.
    group = trace.row_group(0, ["kind", "label"]).to_pylist()
    assert [r["kind"] for r in group] == [r["kind"] for r in rows]
    assert trace.slice(12, 13, ["kind"]).to_pylist() == [{"kind": "ret"}]


def test_a_version_1_trace_and_its_re_recording_agree_on_the_facts(
    first_switch_trace: Path,
) -> None:
    old = load_trace(V1_FIXTURE).table(["step", "rip", *FACT_COLUMNS])
    new = load_trace(first_switch_trace).table(["step", "rip", *FACT_COLUMNS])
    assert old.to_pylist() == new.to_pylist()


def test_metadata_of_a_real_program_round_trips(first_switch_trace: Path) -> None:
    """What the ELF recorder will fill in: program kind elf, start, heap and mapped regions."""
    from dataclasses import replace

    from stacktrace_lab.layout import Region
    from stacktrace_lab.trace.format import ProgramInfo, StartInfo, TraceMetadata

    meta = load_trace(first_switch_trace).metadata
    real = replace(
        meta,
        program=ProgramInfo("elf", "examples/switch", "ab" * 32),
        start=StartInfo("main", 7300),
        regions=(
            *meta.regions,
            Region("heap", "heap", 0x20000000, 0x1000, "rw-"),
            Region("mmap0", "mapped", 0x30000000, 0x2000, "rw-"),
        ),
    )
    again = TraceMetadata.from_json(real.to_json())
    assert again == real
    assert json.loads(real.to_json())["start"] == {"symbol": "main", "step": 7300}
    assert "start" not in json.loads(meta.to_json())  # only when recording began late


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["layout"]["regions"].append({**d["layout"]["regions"][0], "kind": "rom"}),
            "layout.regions[3].kind must be one of code, stack, data, heap, mapped, got 'rom'",
        ),
        (lambda d: d["program"].update(kind="wasm"), "program.kind must be scenario or elf"),
        (lambda d: d["program"].update(path=3), "program.path must be a string"),
        (
            lambda d: d.update(syscalls=[{"step": 0, "nr": 1, "name": "write", "args": "rdi"}]),
            "syscalls[0].args must be a list",
        ),
        (lambda d: d["syscall_counts"].update(write=[1, 2]), "syscall_counts.write[1] must be"),
        (lambda d: d["syscall_counts"].update(write=3), "syscall_counts.write must be a list"),
        (
            lambda d: d["code"]["lines"][0].pop(),
            "code.lines[0] must be [address, file, line], got [4194304, 'first-switch.toml']",
        ),
        (lambda d: d.pop("program"), "program is missing"),
    ],
)
def test_hand_edited_metadata_is_refused_in_one_line(
    tmp_path: Path,
    first_switch_trace: Path,
    edit: Callable[[dict[str, object]], None],
    message: str,
) -> None:
    doc = json.loads(pq.read_metadata(first_switch_trace).metadata[METADATA_KEY.encode()])
    edit(doc)
    table = pq.read_table(first_switch_trace)
    edited = tmp_path / "edited.parquet"
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(doc)}), edited)
    with pytest.raises(BadInput, match=r"edited\.parquet: corrupt trace metadata") as caught:
        load_trace(edited)
    assert message in str(caught.value)


def test_code_below_every_label_has_null_label_and_offset(
    record_source: Callable[..., Recording],
) -> None:
    rec = record_source(
        """
            nop
            ret
        main:
            mov $0x400000, %rax
            call *%rax
            ret
        """
    )
    rows = load_trace(rec.path).table(["symbol", "label", "offset", "kind", "source"]).to_pylist()
    below = [r for r in rows if r["symbol"].startswith("0x")]
    assert [r["symbol"] for r in below] == ["0x400000", "0x400001"]
    assert all(r["label"] is None and r["offset"] is None for r in below)
    assert [r["kind"] for r in below] == ["other", "ret"]
    assert all(r["source"] is not None for r in below)  # lines need no label
    assert [r["label"] for r in rows if r not in below] == ["main"] * 3


V4_FIXTURE = Path(__file__).parent / "fixtures" / "first-switch-v4.parquet"


def test_a_version_4_trace_reads_as_the_same_rows_as_version_5(first_switch_trace: Path) -> None:
    """Format 4 stored each snapshot row's bytes, format 5 a dictionary of the versions
    (docs/trace-format.md): both are handed out as the same fixed-width rows."""
    old, new = load_trace(V4_FIXTURE), load_trace(first_switch_trace)
    assert (old.metadata.version, new.metadata.version) == (4, 5)
    assert pq.read_schema(V4_FIXTURE).field("stack__green").type == pa.binary(48)
    assert old.schema.equals(new.schema)
    assert new.schema.field("stack__green").type == pa.binary(48)
    assert old.table().to_pylist() == new.table().to_pylist()
    for index in range(new.num_row_groups):
        assert old.row_group(index).equals(new.row_group(index))


def test_a_snapshot_version_of_the_wrong_width_is_a_corrupt_trace(
    tmp_path: Path, first_switch_trace: Path
) -> None:
    """A format-5 snapshot dictionary holding a value that is not the window's width."""
    table = pq.read_table(first_switch_trace)
    column = table.column("stack__green").combine_chunks()
    versions = column.dictionary.to_pylist()
    versions[0] = versions[0][:-1]
    bad = pa.DictionaryArray.from_arrays(column.indices, pa.array(versions, pa.binary()))
    table = table.set_column(table.schema.get_field_index("stack__green"), "stack__green", bad)
    copy = tmp_path / "bad.parquet"
    pq.write_table(table, copy)
    with pytest.raises(BadInput, match="stack__green"):
        load_trace(copy).table()

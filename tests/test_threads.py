"""Threads, deterministically: pthread programs record as they run natively.

Each program is built here with gcc (skipped, saying why, without it), run
natively for the output it must print, and recorded. The recording runs one
thread at a time under a fixed schedule (record/machine/threads.py): the same program
gives the same bytes every time (tests/test_native_core.py: in the C core and in
the pure-Python hooks alike).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from stacktrace_lab.analysis.check import check
from stacktrace_lab.examples import compiler_missing
from stacktrace_lab.record.linux.elf_front import record_elf
from stacktrace_lab.record.recorder import RecordOptions
from stacktrace_lab.trace import load_trace

#: The issue's program: the thread prints `t`, main prints `m` after joining it.
JOIN_C = r"""
#include <pthread.h>
#include <stdio.h>
static void *body(void *arg) { fputs("t", stdout); fflush(stdout); return arg; }
int main(void) {
    pthread_t t;
    if (pthread_create(&t, NULL, body, NULL) != 0) return 1;
    pthread_join(t, NULL);
    puts("m");
    return 0;
}
"""

#: A mutex and a condition variable handing a turn back and forth 300 times:
#: every round blocks one thread in futex and wakes it from the other.
PING_PONG_C = r"""
#include <pthread.h>
#include <stdio.h>
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int turn;
static long sum;
enum { ROUNDS = 300 };
static void *worker(void *arg) {
    for (int i = 0; i < ROUNDS; i++) {
        pthread_mutex_lock(&lock);
        while (turn != 1) pthread_cond_wait(&cond, &lock);
        sum += i;
        turn = 0;
        pthread_cond_signal(&cond);
        pthread_mutex_unlock(&lock);
    }
    return arg;
}
int main(void) {
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    for (int i = 0; i < ROUNDS; i++) {
        pthread_mutex_lock(&lock);
        while (turn != 0) pthread_cond_wait(&cond, &lock);
        sum += 1000;
        turn = 1;
        pthread_cond_signal(&cond);
        pthread_mutex_unlock(&lock);
    }
    pthread_join(t, NULL);
    printf("rounds %d sum %ld\n", ROUNDS, sum);
    return 0;
}
"""

#: Two threads that never block while they count (a call per round): only the
#: slices switch them.
BUSY_C = r"""
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
static atomic_long total;
__attribute__((noinline)) long times(long i, long n) { return i * n; }
static void *work(void *arg) {
    long n = (long)arg, s = 0;
    for (long i = 0; i < 3000; i++) { s += times(i, n); atomic_fetch_add(&total, 1); }
    return (void *)s;
}
int main(void) {
    pthread_t a, b;
    void *ra, *rb;
    pthread_create(&a, NULL, work, (void *)1);
    pthread_create(&b, NULL, work, (void *)2);
    pthread_join(a, &ra);
    pthread_join(b, &rb);
    printf("%ld %ld %ld\n", (long)ra, (long)rb, (long)total);
    return 0;
}
"""

#: Main polls a flag without ever blocking until its thread sets it: the thread
#: gets the CPU only when main's slice ends.
SPIN_C = r"""
#include <pthread.h>
#include <stdio.h>
static volatile int done;
static void *worker(void *arg) { for (volatile int i = 0; i < 3000; i++) {} done = 1; return arg; }
int main(void) {
    pthread_t t;
    long polls = 0;
    if (pthread_create(&t, NULL, worker, NULL) != 0) return 1;
    while (!done) polls++;
    pthread_join(t, NULL);
    puts(polls > 0 ? "polled" : "never polled");
    return 0;
}
"""

#: Main holds the mutex and waits for a thread that waits for the mutex.
DEADLOCK_C = r"""
#include <pthread.h>
#include <stdio.h>
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void *body(void *arg) { pthread_mutex_lock(&lock); return arg; }
int main(void) {
    pthread_t t;
    pthread_mutex_lock(&lock);
    pthread_create(&t, NULL, body, NULL);
    pthread_join(t, NULL);
    puts("never");
    return 0;
}
"""

#: A wait with a timeout that nobody ends: it expires when nothing else can run.
TIMED_C = r"""
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
int main(void) {
    struct timespec when;
    clock_gettime(CLOCK_REALTIME, &when);
    when.tv_sec += 5;
    pthread_mutex_lock(&lock);
    int r = pthread_cond_timedwait(&cond, &lock, &when);
    printf("%s\n", r == ETIMEDOUT ? "timed out" : "woken");
    return 0;
}
"""


def _build(directory: Path, name: str, source: str, static: bool = True) -> Path:
    why = compiler_missing("c-static" if static else "c-dynamic")
    if why is not None:
        pytest.skip(f"cannot build a C program: {why}")
    (directory / f"{name}.c").write_text(source)
    program = directory / name
    flags = ["-static"] if static else []
    subprocess.run(
        ["gcc", *flags, "-g", "-O1", "-pthread", "-o", program, directory / f"{name}.c"],
        check=True,
    )
    return program


def _native(program: Path) -> str:
    return subprocess.run([program], capture_output=True, text=True, check=True, timeout=60).stdout


def _threads(path: Path) -> np.ndarray:
    return load_trace(path).table(["thread"]).column(0).to_numpy()


@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
def test_a_pthread_program_prints_what_the_real_run_prints(tmp_path: Path, static: bool) -> None:
    program = _build(tmp_path, "join", JOIN_C, static)
    meta = record_elf(program, tmp_path / "join.parquet").metadata
    assert meta.stdout == _native(program) == "tm\n"
    assert (meta.stop.reason, meta.stop.detail) == ("exit", "exit_group(0)")
    threads = _threads(tmp_path / "join.parquet")
    assert sorted(set(threads.tolist())) == [1, 2]
    assert threads[0] == 1 and threads[-1] == 1  # main starts and ends the run
    listed = meta.extra["threads"]
    assert listed["slice"] == 10_000
    assert [(t["number"], t["tid"], t["exit_status"]) for t in listed["list"]] == [
        (1, 1000, None),
        (2, 1001, 0),
    ]
    stacks = {r.name for r in meta.stacks}
    assert {"stack", "thread_2_stack"} <= stacks
    # The thread's rows run on its own stack, main's on the process stack.
    trace = load_trace(tmp_path / "join.parquet")
    rsp = trace.column("rsp")
    own = meta.region("thread_2_stack")
    on_it = (rsp >= own.base) & (rsp <= own.top)
    assert on_it[threads == 2].all()
    assert not on_it[threads == 1].any()


def test_check_passes_on_a_correct_threaded_program(tmp_path: Path) -> None:
    """No thread switch is taken for a stack switch or a planted return."""
    program = _build(tmp_path, "join", JOIN_C)
    trace = load_trace(record_elf(program, tmp_path / "join.parquet").path)
    result = check(trace)
    failed = [r.id for r in result.results if not r.holds]
    assert failed == []


def test_a_mutex_and_condvar_ping_pong_prints_what_the_real_run_prints(tmp_path: Path) -> None:
    program = _build(tmp_path, "ping", PING_PONG_C)
    path = tmp_path / "ping.parquet"
    meta = record_elf(program, path, RecordOptions(max_steps=3_000_000)).metadata
    assert meta.stdout == _native(program) == "rounds 300 sum 344850\n"
    assert meta.stop.reason == "exit"
    threads = _threads(path)
    # Every round hands the turn over: at least one switch each way per round.
    assert int((threads[1:] != threads[:-1]).sum()) >= 2 * 300
    waits = [c for c in load_trace(path).syscalls() if c.name == "futex"]
    assert len(waits) >= 600


def test_recording_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    program = _build(tmp_path, "busy", BUSY_C)
    options = RecordOptions(thread_slice=500)
    first = record_elf(program, tmp_path / "a.parquet", options)
    second = record_elf(program, tmp_path / "b.parquet", options)
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.metadata.stdout == _native(program)
    threads = _threads(first.path)
    assert sorted(set(threads.tolist())) == [1, 2, 3]
    # Both workers were preempted by the slice, not only at blocking calls.
    runs = np.flatnonzero(threads[1:] != threads[:-1])
    assert len(runs) > 20
    assert first.metadata.extra["threads"]["slice"] == 500


def test_the_slice_changes_the_schedule_not_the_output(tmp_path: Path) -> None:
    program = _build(tmp_path, "busy", BUSY_C)
    short = record_elf(program, tmp_path / "short.parquet", RecordOptions(thread_slice=300))
    long = record_elf(program, tmp_path / "long.parquet", RecordOptions(thread_slice=20_000))
    assert short.metadata.stdout == long.metadata.stdout == _native(program)
    switches = [int((t[1:] != t[:-1]).sum()) for t in map(_threads, (short.path, long.path))]
    assert switches[0] > switches[1]


def test_a_deadlock_ends_the_run_saying_who_waits(tmp_path: Path) -> None:
    program = _build(tmp_path, "deadlock", DEADLOCK_C)
    meta = record_elf(program, tmp_path / "dead.parquet").metadata
    assert meta.stop.reason == "deadlock"
    assert "thread 1 (tid 1000) waits on futex" in meta.stop.detail
    assert "thread 2 (tid 1001) waits on futex" in meta.stop.detail
    assert meta.stdout == ""
    stop = next(r for r in check(load_trace(tmp_path / "dead.parquet")).results if r.id == "stop")
    assert not stop.holds


def test_a_timed_wait_expires_when_nothing_else_can_run(tmp_path: Path) -> None:
    program = _build(tmp_path, "timed", TIMED_C)
    meta = record_elf(program, tmp_path / "timed.parquet").metadata
    assert meta.stdout == "timed out\n"
    assert meta.stop.reason == "exit"


#: A thread sleeps while main polls the clock for its flag; then main sleeps a
#: second alone. On a clock that stood still the poll never ended, and sleeping
#: was -ENOSYS.
SLEEP_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
static volatile int done;
static void *sleeper(void *arg) { usleep(2000); done = 1; return arg; }
int main(void) {
    pthread_t t;
    struct timespec a, b;
    long polls = 0;
    clock_gettime(CLOCK_MONOTONIC, &a);
    if (pthread_create(&t, NULL, sleeper, NULL) != 0) return 1;
    while (!done) { clock_gettime(CLOCK_MONOTONIC, &b); polls++; }
    pthread_join(t, NULL);
    long waited = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
    printf("woke after %s\n", waited >= 2000000 ? "2 ms" : "less than 2 ms");
    fprintf(stderr, "%ld polls\n", polls);
    sleep(1);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("slept %ld s\n", (long)(b.tv_sec - a.tv_sec));
    return 0;
}
"""


def test_a_sleeping_thread_wakes_when_the_clock_passes_its_deadline(tmp_path: Path) -> None:
    """The machine's clock moves a microsecond at each read: a 2 ms usleep ends
    after main's 2,000 reads (at the next switch), and a lone sleep(1) jumps
    the clock a second. The same output natively (real time), and the same
    bytes at each recording."""
    program = _build(tmp_path, "sleep", SLEEP_C)
    expected = "woke after 2 ms\nslept 1 s\n"
    assert _native(program) == expected
    first = record_elf(program, tmp_path / "a.parquet")
    assert first.metadata.stdout == expected
    assert first.metadata.stop.reason == "exit"
    # A microsecond a read: 2,000 reads after the sleep began, and what main
    # polls in the slices (10,000 steps, a poll is 5 or more) around it.
    polls = int(first.metadata.stderr.split()[0])
    assert 2000 <= polls < 2000 + 2 * 10_000 // 5, polls
    counts = first.metadata.syscall_counts
    assert counts["clock_nanosleep"][0] >= 2 and counts["clock_gettime"][0] > 2000
    second = record_elf(program, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert second.metadata.steps == first.metadata.steps


def test_a_thread_switch_is_no_stack_switch_even_after_a_call_or_ret(tmp_path: Path) -> None:
    """Slices of 97 instructions end on calls and rets too: the row after such a row
    is another thread's, and the call's landing and the ret's rsp are where its own
    thread runs next. Before this was so, the analysis found 688 stack switches in
    this trace and callee-saved failed 64 times (registers compared across threads)."""
    from stacktrace_lab.analysis.events import derive_facts
    from stacktrace_lab.analysis.kinds import Kind

    program = _build(tmp_path, "busy", BUSY_C)
    path = record_elf(program, tmp_path / "busy.parquet", RecordOptions(thread_slice=97)).path
    trace = load_trace(path)
    facts = derive_facts(trace)
    transfers = np.flatnonzero(np.isin(facts.kind, [Kind.CALL, Kind.RET]))
    assert np.isin(facts.threads.ends, transfers).sum() > 10  # the case is exercised
    assert len(facts.threads.ends) > 100
    assert facts.switch_steps().size == 0
    assert len(facts.planted_returns) == 0
    failed = [r.id for r in check(trace).results if not r.holds]
    assert failed == []


@pytest.mark.silicon
def test_the_silicon_check_refuses_threads_in_one_line(tmp_path: Path) -> None:
    """The native side stops at clone (silicon/sandbox.py): a threaded program or
    trace is refused, naming it, until the comparison knows threads."""
    from stacktrace_lab.errors import BadInput
    from stacktrace_lab.silicon.check import silicon_check

    program = _build(tmp_path, "join", JOIN_C)
    path = record_elf(program, tmp_path / "join.parquet").path
    with pytest.raises(BadInput, match=r"join: threads are not compared yet") as caught:
        silicon_check(str(program))
    assert "\n" not in str(caught.value)
    with pytest.raises(BadInput, match=r"join\.parquet: threads are not compared yet"):
        silicon_check(str(path))


def test_replay_runs_the_recorded_schedule(tmp_path: Path) -> None:
    """Replay uses the trace's slice: it matches every step, thread column included;
    the same trace claiming another slice diverges where the schedules part."""
    import json

    import pyarrow.parquet as pq

    from stacktrace_lab.replay import replay
    from stacktrace_lab.trace.format import METADATA_KEY

    program = _build(tmp_path, "busy", BUSY_C)
    path = record_elf(program, tmp_path / "busy.parquet", RecordOptions(thread_slice=500)).path
    result = replay(load_trace(path))
    assert result.matches and result.steps_compared == load_trace(path).num_rows
    table = pq.read_table(path)
    doc = json.loads(table.schema.metadata[METADATA_KEY.encode()])
    doc["threads"]["slice"] = 600
    forged = tmp_path / "forged.parquet"
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(doc)}), forged)
    different = replay(load_trace(forged))
    assert different.difference is not None
    assert different.difference.step > 0 and "thread" in different.difference.columns


RUST_THREADS = r"""
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
fn main() {
    let total = Arc::new(Mutex::new(0u64));
    let (tx, rx) = mpsc::channel();
    let mut handles = vec![];
    for id in 0..3u64 {
        let total = Arc::clone(&total);
        let tx = tx.clone();
        handles.push(thread::spawn(move || {
            for i in 0..100 { *total.lock().unwrap() += i * (id + 1); }
            tx.send(id).unwrap();
        }));
    }
    drop(tx);
    let mut got: Vec<u64> = rx.iter().collect();
    got.sort();
    for h in handles { h.join().unwrap(); }
    println!("{:?} {}", got, *total.lock().unwrap());
}
"""


def test_rust_std_threads_with_a_mutex_and_a_channel(tmp_path: Path) -> None:
    """`thread::spawn`, `Mutex` and `mpsc` as plain `rustc -g` builds them."""
    why = compiler_missing("rust-dynamic")
    if why is not None:
        pytest.skip(f"cannot build a Rust program: {why}")
    (tmp_path / "threads.rs").write_text(RUST_THREADS)
    program = tmp_path / "threads"
    subprocess.run(["rustc", "-g", "-o", program, tmp_path / "threads.rs"], check=True)
    rec = record_elf(program, tmp_path / "rust.parquet", RecordOptions(max_steps=5_000_000))
    assert rec.metadata.stdout == _native(program) == "[0, 1, 2] 29700\n"
    assert rec.metadata.stop.reason == "exit"
    assert {"stack", "thread_2_stack", "thread_3_stack", "thread_4_stack"} <= {
        s.name for s in rec.metadata.stacks
    }
    assert [r.id for r in check(load_trace(rec.path)).results if not r.holds] == []


def test_gdb_sees_the_threads_of_a_trace(tmp_path: Path) -> None:
    """qfThreadInfo lists the threads alive at the current step, `Hg` reads a waiting
    thread's registers (where the scheduler left it), stop replies name the thread."""
    import shutil

    from tests.test_gdbserver import run_gdb, served

    if shutil.which("gdb") is None:
        pytest.skip("gdb is not installed (.ci/run installs it)")
    program = _build(tmp_path, "join", JOIN_C)
    rec = record_elf(program, tmp_path / "join.parquet")
    with served(rec.path, cwd=tmp_path) as port:
        out = run_gdb(
            port,
            ["break body", "continue", "info threads", "thread 1", "bt",
             "thread 2", "info registers fs_base"],
            tmp_path,
        )  # fmt: skip
    assert "Thread 2 hit Breakpoint 1, body" in out
    assert "1    Thread 1000" in out and "* 2    Thread 1001       body (" in out
    # Thread 1 waits in pthread_join, called from main (join.c's line 8).
    assert re.search(r"#2  0x[0-9a-f]+ in main \(\) at \S*join\.c:8", out)
    tls = rec.metadata.extra["threads"]["list"][1]["tls"]
    assert f"fs_base        {tls:#x}" in out


def test_check_show_the_report_and_perfetto_say_which_thread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from stacktrace_lab.analysis.events import derive_facts
    from stacktrace_lab.cli import main
    from stacktrace_lab.export.perfetto import chrome_trace_events
    from stacktrace_lab.report.content import threads_line

    program = _build(tmp_path, "join", JOIN_C)
    path = record_elf(program, tmp_path / "join.parquet").path
    trace = load_trace(path)
    threads = _threads(path)
    on_2 = int(np.flatnonzero(threads == 2)[0])

    again = tmp_path / "again.parquet"
    assert main(["record", str(program), "-o", str(again), "--thread-slice", "5000"]) == 0
    assert "2 threads (a slice of 5,000 instructions), stopped: exit" in capsys.readouterr().out
    assert main(["check", str(path)]) == 0
    said = "2 threads: 1 (tid 1000) on stack, 2 (tid 1001) on thread 2 stack"
    assert said in capsys.readouterr().out
    assert main(["show", str(path), "--step", str(on_2), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["thread"] == 2
    assert main(["show", str(path), "--step", str(on_2)]) == 0
    out = capsys.readouterr().out
    assert f"step {on_2} of 0..{len(threads) - 1}  thread 2" in out
    # Main's stack is not a green thread switched away: thread 1 waits for the scheduler.
    # (the capture is 80 columns wide: the label is cut there)
    assert "stack (thread 1, waiting since s" in out

    switches = int((threads[1:] != threads[:-1]).sum())
    assert f"{said}; {switches} thread switches" in threads_line(derive_facts(trace))

    events = chrome_trace_events(trace)["traceEvents"]
    tracks = {e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    assert {"thread 1 (tid 1000)", "thread 2 (tid 1001)", "stack thread 2 stack"} <= tracks
    turns = [e for e in events if e.get("cat") == "thread"]
    assert len(turns) == switches + 1
    assert sum(e["dur"] for e in turns) == len(threads)
    assert not [e for e in events if e.get("cat") == "switch"]  # no stack switch


#: A ucontext coroutine inside each of two threads, one after the other: green
#: switches inside OS threads, and the second thread reuses the first one's stack.
GREEN_IN_THREADS_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>
static __thread ucontext_t main_ctx, co_ctx;
static __thread int counter;
static void co(void) { for (;;) { counter++; swapcontext(&co_ctx, &main_ctx); } }
static void *body(void *arg) {
    char *stack = malloc(64 * 1024);
    getcontext(&co_ctx);
    co_ctx.uc_stack.ss_sp = stack;
    co_ctx.uc_stack.ss_size = 64 * 1024;
    co_ctx.uc_link = NULL;
    makecontext(&co_ctx, co, 0);
    for (int i = 0; i < 5; i++) swapcontext(&main_ctx, &co_ctx);
    printf("thread %ld counter %d\n", (long)arg, counter);
    return NULL;
}
int main(void) {
    pthread_t a, b;
    pthread_create(&a, NULL, body, (void *)1);
    pthread_join(a, NULL);
    pthread_create(&b, NULL, body, (void *)2);
    pthread_join(b, NULL);
    return 0;
}
"""


def test_green_switches_inside_threads_are_still_stack_switches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from stacktrace_lab.analysis.events import derive_facts
    from stacktrace_lab.cli import main
    from stacktrace_lab.report.content import threads_line

    program = _build(tmp_path, "green", GREEN_IN_THREADS_C)
    path = record_elf(program, tmp_path / "green.parquet").path
    trace = load_trace(path)
    assert trace.metadata.stdout == _native(program)
    facts = derive_facts(trace)
    # 5 swaps there and 5 back in each thread; none at a thread switch.
    assert facts.switch_steps().size == 20
    assert not np.isin(facts.switch_steps(), facts.threads.ends).any()
    assert [r.id for r in check(trace).results if not r.holds] == []
    assert "3 (tid 1002) on thread 2 stack" in threads_line(facts)  # a reused stack
    # SQL's `switches` view agrees: its windows follow each thread.
    pytest.importorskip("duckdb", reason="DuckDB is an optional extra")
    sql = "SELECT step FROM switches ORDER BY step"
    assert main(["query", str(path), sql, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["step"] for row in rows] == facts.switch_steps().tolist()


#: A function that clobbers rbx, called in a thread while main runs: with slices of
#: a few instructions the call, its body and its ret interleave with main's rows.
CLOBBER_C = r"""
#include <pthread.h>
#include <stdio.h>
void clobber(void);
__asm__(".globl clobber\n.type clobber, @function\nclobber:\n"
        "  nop\n  nop\n  nop\n  nop\n  nop\n  nop\n  movq $7, %rbx\n  ret\n");
__attribute__((noinline)) long work(long n) {
    long s = 0;
    for (long i = 0; i < n; i++) s += i;
    return s;
}
static void *body(void *arg) {
    __asm__ volatile("movq $1, %%rbx\n call clobber" ::: "rbx", "memory");
    return (void *)work(2000);
}
int main(void) {
    pthread_t t;
    pthread_create(&t, NULL, body, NULL);
    long s = work(3000);
    pthread_join(t, NULL);
    printf("%ld\n", s);
    return 0;
}
"""


def test_a_clobbered_register_in_a_thread_is_that_functions_fault_not_a_switch(
    tmp_path: Path,
) -> None:
    """Main's rows between the call and the ret are another thread's: the message
    blames the function (save and restore rbx), not "a stack switch"."""
    program = _build(tmp_path, "clobber", CLOBBER_C)
    path = record_elf(program, tmp_path / "c.parquet", RecordOptions(thread_slice=3)).path
    result = check(load_trace(path))
    saved = next(r for r in result.results if r.id == "callee-saved")
    assert not saved.holds and saved.total == 1
    message = saved.violations[0].message
    assert "rbx changed across the call to clobber" in message
    assert "(rbx 0x1 before, 0x7 after)" in message
    assert "stack switch" not in message
    assert "clobber must save rbx (push on entry) and restore it (pop before ret)" in message
    threads = _threads(path)
    call = int(message.split("at step ")[1].split(",")[0])
    assert len(set(threads[call : call + 12].tolist())) == 2  # main ran in between
    assert [r.id for r in result.results if not r.holds] == ["callee-saved"]


def test_check_names_the_thread_of_each_violation_in_every_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The clobbered rbx is thread 2's (the call is in the thread's body): every
    format check writes says so, and the markdown and HTML report too."""
    import json

    from stacktrace_lab.analysis.events import derive_facts
    from stacktrace_lab.cli import main
    from stacktrace_lab.report.content import gather
    from stacktrace_lab.report.html import render_html
    from stacktrace_lab.report.markdown import render_markdown

    program = _build(tmp_path, "clobber", CLOBBER_C)
    path = record_elf(program, tmp_path / "c.parquet", RecordOptions(thread_slice=3)).path
    trace = load_trace(path)
    result = check(trace)
    saved = next(r for r in result.results if r.id == "callee-saved")
    step = saved.violations[0].step
    assert int(_threads(path)[step]) == 2 and saved.violations[0].thread == 2
    assert saved.causes[0].first.thread == 2
    # The other violations of the run (none here) and every row of thread 1 say 1.
    said = f"step {step} in thread 2"

    assert main(["check", str(path)]) == 1
    assert said in capsys.readouterr().out
    assert main(["check", str(path), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    found = next(i for i in doc["invariants"] if i["id"] == "callee-saved")
    assert [v["thread"] for v in found["violations"]] == [2]
    assert found["causes"][0]["first"]["thread"] == 2
    for fmt in ("github", "junit", "sarif"):
        assert main(["check", str(path), "--format", fmt]) == 1
        assert said in capsys.readouterr().out, fmt
    content = gather(derive_facts(trace), result)
    assert said in render_markdown(content)
    assert f"{step} in thread 2" in render_html(content, {"rsp": b"", "heatmap": b""})


def test_check_of_a_program_without_threads_names_no_thread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same broken function called from main in a program without threads:
    its output is what it was before threads were named (no `thread` anywhere)."""
    import json

    from stacktrace_lab.cli import main

    source = CLOBBER_C.replace("pthread_create(&t, NULL, body, NULL);", "body(NULL);")
    source = source.replace("pthread_join(t, NULL);", "")
    program = _build(tmp_path, "alone", source)
    path = record_elf(program, tmp_path / "a.parquet").path
    assert not load_trace(path).metadata.threads
    assert main(["check", str(path), "--json"]) == 1
    text = capsys.readouterr().out
    found = next(i for i in json.loads(text)["invariants"] if i["id"] == "callee-saved")
    assert found["violations"] and "thread" not in found["violations"][0]
    assert main(["check", str(path)]) == 1
    assert "in thread" not in capsys.readouterr().out


@pytest.fixture(scope="module")
def join_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("join")
    return record_elf(_build(out, "join", JOIN_C), out / "join.parquet").path


@pytest.mark.parametrize(
    ("threads", "message"),
    [
        ({"slice": 0, "list": []}, r"threads\.slice must be in \[1, "),
        ({"slice": 10, "list": "x"}, r"threads\.list must be a list"),
        ({"slice": 10, "list": [{"number": 1}]}, r"threads\.list\[0\]\.tid is missing"),
        ({"slice": 10, "list": [{"number": 0, "tid": 1}]}, r"threads\.list\[0\]\.number must"),
    ],
)
def test_a_forged_threads_entry_is_one_line(
    tmp_path: Path, join_trace: Path, threads: dict[str, object], message: str
) -> None:
    import json

    import pyarrow.parquet as pq

    from stacktrace_lab.errors import BadInput
    from stacktrace_lab.trace.format import METADATA_KEY

    table = pq.read_table(join_trace)
    doc = json.loads(table.schema.metadata[METADATA_KEY.encode()])
    doc["threads"] = threads
    forged = tmp_path / "forged.parquet"
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(doc)}), forged)
    with pytest.raises(BadInput, match=r"forged\.parquet: .*" + message):
        load_trace(forged)


def test_tenet_exports_one_thread_at_a_time(
    tmp_path: Path, join_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tenet follows one thread: each thread's export holds its own rows in order (its
    rips, its register changes), the final line only for the thread that ran last."""
    from stacktrace_lab.cli import main

    trace = load_trace(join_trace)
    table = trace.table(["rip", "thread", "rsp"])
    rips = np.asarray(table.column("rip").to_numpy())
    threads = np.asarray(table.column("thread").to_numpy())
    assert set(threads.tolist()) == {1, 2}
    for number in (1, 2):
        out = tmp_path / f"t{number}.tenet.log"
        args = ["export", str(join_trace), "--to", "tenet", "--thread", str(number)]
        assert main([*args, "-o", str(out)]) == 0
        assert f"of thread {number} (2 threads" in capsys.readouterr().out
        lines = out.read_text().splitlines()
        mine = rips[threads == number]
        final = int(threads[-1]) == number
        assert len(lines) == mine.size + final
        line_rips = [int(re.search(r"rip=(0x[0-9a-f]+)", line).group(1), 16) for line in lines]  # type: ignore[union-attr]
        assert line_rips[: mine.size] == mine.tolist()
        # The first line states every register; the thread's own rsp, not the other's.
        first_rsp = int(table.column("rsp").to_numpy()[threads == number][0])
        assert f"rsp={first_rsp:#x}" in lines[0] and "rax=" in lines[0]
    assert main(["export", str(join_trace), "--to", "tenet", "--thread", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no thread 3 (its threads: 1, 2)" in err
    assert main(["export", str(join_trace), "--to", "perfetto", "--thread", "2"]) == 2
    assert "--thread is for --to tenet" in capsys.readouterr().err


def test_the_stepper_page_names_the_thread_of_each_step(tmp_path: Path, join_trace: Path) -> None:
    """The report's stepper embeds, per window, the runs of one thread's rows, and
    the page shows "thread N" beside the step; a program without threads has none."""
    from stacktrace_lab.stepper.data import FrameContext, Window, embedded_window

    trace = load_trace(join_trace)
    threads = np.asarray(trace.table(["thread"]).column("thread").to_numpy())
    window = Window(0, trace.num_rows)
    runs = embedded_window(trace, window, FrameContext.of(trace))["threads"]
    # Expanding the runs gives the thread column back, row for row.
    starts = [first for first, _ in runs] + [trace.num_rows]
    expanded = np.concatenate(
        [np.full(b - a, number) for (a, number), b in zip(runs, starts[1:], strict=True)]
    )
    assert expanded.tolist() == threads.tolist() and len(runs) >= 3

    from stacktrace_lab.report.build import build_report

    report = build_report(trace, tmp_path / "report")
    page = (report.directory / "index.html").read_text()
    assert 'class="stl-thread"' in page and '"threads":[[0,1]' in page


def test_a_thread_stack_reads_thread_2_stack_and_keeps_its_key(
    tmp_path: Path, join_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue #21's `thread 2 stack` wherever a person reads the name (check, show, the
    report, the stepper, Perfetto); `thread_2_stack` stays the key in SQL and in
    `stack[index]`."""
    import json

    from stacktrace_lab.cli import main
    from stacktrace_lab.report.build import build_report
    from stacktrace_lab.stepper.data import stepper_data

    trace = load_trace(join_trace)
    own = trace.metadata.region("thread_2_stack")
    assert (own.label, own.shown_name, own.display) == ("thread 2 stack",) * 3

    threads = _threads(join_trace)
    on_2 = int(np.flatnonzero(threads == 2)[-1])
    assert main(["show", str(join_trace), "--step", str(on_2)]) == 0
    out = capsys.readouterr().out
    assert "thread 2 stack (running)" in out and "thread_2_stack (running)" not in out
    assert re.search(r"rsp = thread_2_stack\[\d+\]", out)  # the slot's one spelling

    query = "select name, label from regions where kind = 'stack' order by name"
    assert main(["query", str(join_trace), query, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"name": "thread_2_stack", "label": "thread 2 stack"} in rows
    # The key names the region in SQL's slot spelling, as for any other stack.
    slot = "select slot_name(trace, rsp) as s from steps where thread = 2 limit 1"
    assert main(["query", str(join_trace), slot, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["s"].startswith("thread_2_stack[")

    data = stepper_data(trace)
    shown = {r["name"]: r.get("shown") for r in data["regions"]}
    assert shown["thread_2_stack"] == "thread 2 stack" and shown["stack"] is None
    assert "thread 2 stack" in {lane["name"] for lane in data["chart"]["lanes"]}

    report = build_report(trace, tmp_path / "report")
    markdown = (report.directory / "report.md").read_text()
    assert "| thread 2 stack | stack |" in markdown


# --- futex operations beyond wait and wake ---------------------------------------------

#: Three threads count under a priority-inheritance mutex (glibc locks it with
#: FUTEX_LOCK_PI when it is taken, and unlocks with FUTEX_UNLOCK_PI when others
#: wait); a trylock that finds it taken answers EBUSY.
PI_MUTEX_C = r"""
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
static pthread_mutex_t lock;
static long total;
static int busy;
static void *count(void *arg) {
    for (int i = 0; i < 200; i++) {
        if (pthread_mutex_trylock(&lock) == EBUSY) {
            busy = 1;
            pthread_mutex_lock(&lock);
        }
        long seen = total;
        for (volatile int k = 0; k < 20; k++) {}
        total = seen + (long)arg;
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}
int main(void) {
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    if (pthread_mutexattr_setprotocol(&attr, PTHREAD_PRIO_INHERIT) != 0) return 1;
    pthread_mutex_init(&lock, &attr);
    pthread_t t[3];
    for (long i = 0; i < 3; i++) pthread_create(&t[i], NULL, count, (void *)(i + 1));
    for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
    printf("total %ld\n", total);
    return 0;
}
"""

#: The pattern glibc's condition variables were built on before 2.25 (and
#: other runtimes still use): signal and unlock in one FUTEX_WAKE_OP, which
#: sets the lock word to 0 and wakes its waiter when the old value said one
#: waits (> 1). Two threads hand a turn back and forth; then each operation and
#: comparison encoding, and the PI calls, one by one with their errors.
WAKE_OP_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
static atomic_int lock_word; /* 0 free, 1 locked, 2 locked and waited for */
static atomic_int seq;       /* the condition: moves at each signal */
static int turn;
static long sum;
enum { ROUNDS = 200 };
static long futex(atomic_int *uaddr, int op, int val, long val2, atomic_int *uaddr2, int val3) {
    return syscall(SYS_futex, uaddr, op, val, val2, uaddr2, val3);
}
static void lock(void) {
    int c = 0;
    if (atomic_compare_exchange_strong(&lock_word, &c, 1)) return;
    if (c != 2) c = atomic_exchange(&lock_word, 2);
    while (c != 0) {
        futex(&lock_word, FUTEX_WAIT_PRIVATE, 2, 0, NULL, 0);
        c = atomic_exchange(&lock_word, 2);
    }
}
static void unlock(void) {
    if (atomic_exchange(&lock_word, 0) == 2) futex(&lock_word, FUTEX_WAKE_PRIVATE, 1, 0, NULL, 0);
}
static void wait_turn(void) {
    int s = atomic_load(&seq);
    unlock();
    futex(&seq, FUTEX_WAIT_PRIVATE, s, 0, NULL, 0);
    lock();
}
static void signal_and_unlock(void) {
    atomic_fetch_add(&seq, 1);
    futex(&seq, FUTEX_WAKE_OP_PRIVATE, 1, 1, &lock_word,
          FUTEX_OP(FUTEX_OP_SET, 0, FUTEX_OP_CMP_GT, 1));
}
static void *player(void *arg) {
    int me = (int)(long)arg;
    for (int i = 0; i < ROUNDS; i++) {
        lock();
        while (turn != me) wait_turn();
        sum += me ? i : 1000;
        turn = !me;
        signal_and_unlock();
    }
    return NULL;
}
static void show(const char *what, long rc, atomic_int *word) {
    printf("%s %ld %s %d\n", what, rc,
           rc >= 0 ? "ok" : errno == ENOSYS ? "ENOSYS" : errno == EDEADLK ? "EDEADLK"
           : errno == EPERM ? "EPERM" : errno == ESRCH ? "ESRCH" : errno == EAGAIN ? "EAGAIN"
           : errno == EINVAL ? "EINVAL" : errno == EFAULT ? "EFAULT" : "other",
           word ? (int)*word : 0);
}
int main(void) {
    pthread_t t;
    pthread_create(&t, NULL, player, (void *)1);
    player((void *)0);
    pthread_join(t, NULL);
    printf("rounds %d sum %ld\n", ROUNDS, sum);

    static atomic_int a, w = 5;
#define WAKE_OP(encoded) futex(&a, FUTEX_WAKE_OP_PRIVATE, 1, 1, &w, (encoded))
    show("set", WAKE_OP(FUTEX_OP(FUTEX_OP_SET, 9, 0, 0)), &w);
    show("add", WAKE_OP(FUTEX_OP(FUTEX_OP_ADD, -3, 0, 0)), &w);
    show("or", WAKE_OP(FUTEX_OP(FUTEX_OP_OR, 0x30, 0, 0)), &w);
    show("andn", WAKE_OP(FUTEX_OP(FUTEX_OP_ANDN, 0x10, 0, 0)), &w);
    show("xor", WAKE_OP(FUTEX_OP(FUTEX_OP_XOR, 0xff, 0, 0)), &w);
    show("shift", WAKE_OP(FUTEX_OP(FUTEX_OP_SET | FUTEX_OP_OPARG_SHIFT, 20, 0, 0)), &w);
    show("bad-op", WAKE_OP(6 << 28), &w);
    show("bad-cmp", WAKE_OP(9 << 24), &w);
    show("fault", futex(&a, FUTEX_WAKE_OP_PRIVATE, 1, 1, (atomic_int *)16, 0), NULL);

    static atomic_int pi;
    long rc = futex(&pi, FUTEX_TRYLOCK_PI_PRIVATE, 0, 0, NULL, 0);
    printf("trylock %ld mine %d\n", rc, (int)pi == (int)syscall(SYS_gettid));
    show("trylock-again", futex(&pi, FUTEX_TRYLOCK_PI_PRIVATE, 0, 0, NULL, 0), NULL);
    show("lock-again", futex(&pi, FUTEX_LOCK_PI_PRIVATE, 0, 0, NULL, 0), NULL);
    show("unlock", futex(&pi, FUTEX_UNLOCK_PI_PRIVATE, 0, 0, NULL, 0), &pi);
    show("unlock-again", futex(&pi, FUTEX_UNLOCK_PI_PRIVATE, 0, 0, NULL, 0), &pi);
    static atomic_int gone = (1 << 30) - 2; /* no thread has this id */
    show("lock-gone", futex(&gone, FUTEX_LOCK_PI_PRIVATE, 0, 0, NULL, 0), NULL);
    show("trylock-gone", futex(&gone, FUTEX_TRYLOCK_PI_PRIVATE, 0, 0, NULL, 0), NULL);
    return 0;
}
"""


def _futex_ops(path: Path) -> set[int]:
    """The futex operations (without the private flag) the recorded program asked for."""
    calls = load_trace(path).syscalls()
    return {c.args[1] & 0x7F for c in calls if c.name == "futex"}


def test_a_priority_inheritance_mutex_counts_as_the_real_run(tmp_path: Path) -> None:
    program = _build(tmp_path, "pi", PI_MUTEX_C, static=False)
    native = _native(program)
    assert native == "total 1200\n"
    path = record_elf(program, tmp_path / "pi.parquet", RecordOptions(thread_slice=40)).path
    meta = load_trace(path).metadata
    assert meta.stop.detail == "exit_group(0)"
    assert meta.stdout == native
    ops = _futex_ops(path)
    assert ops & {6, 13} and 7 in ops  # FUTEX_LOCK_PI (or LOCK_PI2) and FUTEX_UNLOCK_PI ran
    assert "futex" not in {n for n, (_, enosys) in meta.syscall_counts.items() if enosys}
    again = record_elf(program, tmp_path / "again.parquet", RecordOptions(thread_slice=40)).path
    assert path.read_bytes() == again.read_bytes()


def test_futex_wake_op_and_the_pi_calls_answer_as_linux_does(tmp_path: Path) -> None:
    program = _build(tmp_path, "wakeop", WAKE_OP_C)
    native = _native(program)
    assert native.startswith("rounds 200 sum 219900\n")
    assert "bad-op -1 ENOSYS" in native and "lock-gone -1 ESRCH" in native
    path = record_elf(program, tmp_path / "w.parquet", RecordOptions(thread_slice=25)).path
    meta = load_trace(path).metadata
    assert meta.stop.detail == "exit_group(0)"
    assert meta.stdout == native
    assert {5, 6, 7, 8} <= _futex_ops(path)
    # The hand-over woke threads through FUTEX_WAKE_OP, at the condition and at the lock.
    woken = [
        c.result for c in load_trace(path).syscalls() if c.name == "futex" and c.args[1] & 0x7F == 5
    ]
    assert max(r or 0 for r in woken) >= 1


#: A thread dies holding robust mutexes (plain and priority-inheriting): the
#: kernel's walk of its robust list marks them FUTEX_OWNER_DIED and wakes a
#: waiter, so the next lock answers EOWNERDEAD instead of waiting for ever.
ROBUST_C = r"""
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
static pthread_mutex_t plain, pi;
static pthread_barrier_t held;
static void *die_holding(void *arg) {
    pthread_mutex_lock(&plain);
    pthread_mutex_lock(&pi);
    pthread_barrier_wait(&held);
    for (volatile int i = 0; i < 20000; i++) {}
    return arg; /* returns without unlocking either */
}
static const char *said(int r) {
    return r == 0 ? "0" : r == EOWNERDEAD ? "EOWNERDEAD" : "other";
}
static void init(pthread_mutex_t *m, int protocol) {
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    pthread_mutexattr_setprotocol(&attr, protocol);
    pthread_mutex_init(m, &attr);
}
int main(void) {
    init(&plain, PTHREAD_PRIO_NONE);
    init(&pi, PTHREAD_PRIO_INHERIT);
    pthread_barrier_init(&held, NULL, 2);
    pthread_t t;
    pthread_create(&t, NULL, die_holding, NULL);
    pthread_barrier_wait(&held);
    int r = pthread_mutex_lock(&plain); /* waits while the owner lives */
    printf("plain %s\n", said(r));
    if (r == EOWNERDEAD) pthread_mutex_consistent(&plain);
    pthread_mutex_unlock(&plain);
    printf("plain again %s\n", said(pthread_mutex_lock(&plain)));
    r = pthread_mutex_lock(&pi);
    printf("pi %s\n", said(r));
    if (r == EOWNERDEAD) pthread_mutex_consistent(&pi);
    pthread_mutex_unlock(&pi);
    printf("pi again %s\n", said(pthread_mutex_lock(&pi)));
    pthread_join(t, NULL);
    return 0;
}
"""


def test_a_thread_dying_with_robust_mutexes_leaves_them_owner_dead(tmp_path: Path) -> None:
    program = _build(tmp_path, "robust", ROBUST_C, static=False)
    native = _native(program)
    assert native == "plain EOWNERDEAD\nplain again 0\npi EOWNERDEAD\npi again 0\n"
    for slice_steps in (50, 10_000):  # the owner dies while main waits, or before it asks
        options = RecordOptions(thread_slice=slice_steps)
        path = record_elf(program, tmp_path / f"r{slice_steps}.parquet", options).path
        meta = load_trace(path).metadata
        assert meta.stop.detail == "exit_group(0)", meta.stop
        assert meta.stdout == native


REQUEUE_PI_C = r"""
#define _GNU_SOURCE
#include <linux/futex.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
static int cond, pi;
int main(void) {
    long rc = syscall(SYS_futex, &cond, FUTEX_CMP_REQUEUE_PI_PRIVATE, 1, 0, &pi, 0);
    printf("%ld\n", rc);
    return 0;
}
"""


def test_a_futex_operation_not_emulated_is_named_in_records_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stacktrace_lab.cli import main

    program = _build(tmp_path, "requeue", REQUEUE_PI_C)
    assert main(["record", str(program), "-o", str(tmp_path / "q.parquet")]) == 0
    err = capsys.readouterr().err
    assert "answered -ENOSYS: futex x1 (an operation other than" in err
    assert "FUTEX_CMP_REQUEUE_PI" in err
    assert load_trace(tmp_path / "q.parquet").metadata.stdout == "-1\n"

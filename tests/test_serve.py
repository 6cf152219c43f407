"""`stacktrace-lab serve`: the stepper of a long trace, its steps read from the file on demand.

The server is started in this process on a free port of 127.0.0.1. The browser
test records a two-million-step loop (about 5 s of recording on an idle
machine), steps to 1,500,000 and back in headless Chromium.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stacktrace_lab.analysis.events import derive_facts
from stacktrace_lab.analysis.kinds import Kind
from stacktrace_lab.record.recorder import Recording, RecordOptions, record
from stacktrace_lab.scenario import load_scenario
from stacktrace_lab.stepper.serve import make_server
from stacktrace_lab.trace import Trace, load_trace
from tests.test_stepper_browser import _errors, _text, browser

__all__ = ["browser"]  # the fixture, imported for the browser test below

LOOP = """
main:
    push %rbp
    movabs $counts_base, %rbx
again:
    call work
    inc %r12                  # r12 counts the iterations: it names the step range
    movq %r12, 8(%rbx)
    jmp again
work:
    push %r12
    mov (%rbx), %rax
    add $1, %rax
    mov %rax, (%rbx)
    pop %r12
    ret
"""
LONG_STEPS = 2_000_000
TARGET = 1_500_000


def _serve(trace: Trace) -> Iterator[str]:
    server = make_server(trace, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def green_threads_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Trace, str]]:
    path = tmp_path_factory.mktemp("serve") / "green-threads.parquet"
    record(load_scenario("green-threads"), path)
    trace = load_trace(path)
    for url in _serve(trace):
        yield trace, url


def test_the_server_listens_on_localhost_only(green_threads_served: tuple[Trace, str]) -> None:
    _, url = green_threads_served
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=30) as response:
        page = response.read().decode()
    assert 'id="stl-stepper"' in page and '"serve"' in page


def test_windows_and_searches_agree_with_the_trace(
    green_threads_served: tuple[Trace, str],
) -> None:
    trace, url = green_threads_served
    facts = derive_facts(trace)
    window = _get(url + "api/window?step=900")
    assert window["start"] <= 900 < window["stop"]
    rows = trace.slice(window["start"], window["start"] + 1, ["rip", "rsp"]).to_pylist()
    assert int(window["regs0"][0], 16) == rows[0]["rip"]
    calls = facts.calls.tolist()
    after = _get(url + "api/find?what=call&dir=1&from=900")["step"]
    before = _get(url + "api/find?what=call&dir=-1&from=900")["step"]
    assert after == min(c for c in calls if c > 900)
    assert before == max(c for c in calls if c < 900)
    rets = [s for s in range(facts.steps) if facts.kind[s] == Kind.RET]
    assert _get(url + "api/find?what=ret&dir=1&from=0")["step"] == rets[0]
    changes = facts.switch_steps().tolist()
    assert _get(url + f"api/find?what=stack&dir=-1&from={changes[2]}")["step"] == changes[1]
    assert _get(url + f"api/find?what=stack&dir=1&from={changes[-1]}")["step"] is None
    # The last read or write of worker1's thread1 slot before the end.
    slot = trace.metadata.region("worker1").base + 992
    found = _get(url + f"api/find?what=access&dir=-1&from={facts.steps}&addr={slot:#x}&size=8")
    table = trace.table(["step", "reads", "writes"]).to_pylist()
    touching = [
        r["step"]
        for r in table
        if any(
            a["addr"] < slot + 8 and a["addr"] + a["size"] > slot for a in r["reads"] + r["writes"]
        )
    ]
    assert found["step"] == touching[-1]
    # A register's accesses: the steps whose instruction names it, or that change it.
    r12 = trace.column("r12")
    insns = trace.table(["insn"]).column("insn").to_pylist()
    uses = [s for s in range(len(r12) - 1) if "%r12" in insns[s] or r12[s] != r12[s + 1]]
    assert _get(url + "api/find?what=access&dir=1&from=0&reg=r12")["step"] == uses[0]
    middle = uses[len(uses) // 2]
    assert (
        _get(url + f"api/find?what=access&dir=-1&from={middle}&reg=r12")["step"]
        == (uses[len(uses) // 2 - 1])
    )


def test_bad_requests_get_an_error_status(green_threads_served: tuple[Trace, str]) -> None:
    _, url = green_threads_served
    for path, status in (
        ("api/window?step=99999999", 400),
        ("api/window", 400),
        ("api/find?what=nothing", 400),
        # Past 64 bits: an OverflowError closed the connection without an answer (issue 26).
        ("api/find?what=access&addr=-1", 400),
        (f"api/find?what=access&addr={2**70}", 400),
        ("api/find?what=access&addr=0x10&size=99999999999999999999", 400),
        (f"api/find?what=call&from={2**70}", 400),
        ("elsewhere", 404),
    ):
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(url + path, timeout=30)
        assert raised.value.code == status, path
    # The highest address is a valid question, with the size clipped to the address space.
    assert _get(url + "api/find?what=access&addr=0xfffffffffffffff8&size=64") == {"step": None}


@pytest.fixture(scope="module")
def long_trace(tmp_path_factory: pytest.TempPathFactory) -> Trace:
    out = tmp_path_factory.mktemp("long")
    scenario = out / "loop.toml"
    scenario.write_text(
        'name = "loop"\nentry = "main"\n[[stacks]]\nname = "main"\nsize = 4096\n'
        '[[data]]\nname = "counts"\nsize = 64\n[program]\nsource = """\n' + LOOP + '"""\n'
    )
    recording: Recording = record(
        load_scenario(scenario), out / "loop.parquet", RecordOptions(max_steps=LONG_STEPS)
    )
    trace = load_trace(recording.path)
    assert trace.num_rows == LONG_STEPS
    return trace


def test_step_a_two_million_step_trace_to_1_500_000_and_back(
    browser: Any, long_trace: Trace
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def wait_step(step: int) -> None:
        WebDriverWait(browser, 30).until(lambda d: _text(d, ".stl-step") == str(step))

    def register(name: str) -> int:
        row = browser.find_element(By.CSS_SELECTOR, f'.stl-registers tr[data-reg="{name}"]')
        return int(row.find_element(By.CSS_SELECTOR, ".stl-value").text, 16)

    expected = long_trace.slice(TARGET, TARGET + 2, ["rip", "rsp", "r12"]).to_pylist()
    for url in _serve(long_trace):
        browser.get(url)
        WebDriverWait(browser, 60).until(
            lambda d: "stl-ready" in d.find_element(By.ID, "stl-stepper").get_attribute("class")
        )
        assert _text(browser, ".stl-last") == str(LONG_STEPS - 1)
        box = browser.find_element(By.CSS_SELECTOR, ".stl-goto")
        box.send_keys(str(TARGET), Keys.ENTER)
        wait_step(TARGET)
        # The registers are the trace's at that step (r12 counts the loop's iterations).
        assert (register("rip"), register("rsp"), register("r12")) == (
            expected[0]["rip"], expected[0]["rsp"], expected[0]["r12"]
        )  # fmt: skip
        assert browser.execute_script("return window.location.hash") == f"#step={TARGET}"
        # The backtrace: main, and work when the loop is inside it.
        symbols = long_trace.metadata.symbols
        in_work = symbols["work"] <= expected[0]["rip"]
        frames = browser.find_elements(By.CSS_SELECTOR, '.stl-frames[data-stack="main"] tr')
        assert [f.get_attribute("data-function") for f in frames] == (
            ["work", "main"] if in_work else ["main"]
        )
        browser.find_element(By.CSS_SELECTOR, "body").send_keys(Keys.ARROW_RIGHT)
        wait_step(TARGET + 1)
        assert register("rip") == expected[1]["rip"]
        # Searches run over the whole file: the next call after 1,500,001.
        browser.find_element(By.CSS_SELECTOR, '[data-find="call"][data-dir="1"]').click()
        facts_kind = long_trace.slice(TARGET + 1, TARGET + 40, ["insn"]).column("insn")
        next_call = (
            TARGET
            + 2
            + next(
                i for i, text in enumerate(facts_kind.to_pylist()[1:]) if text.startswith("call")
            )
        )
        wait_step(next_call)
        # Click-through: a slot's last writer, fetched from the server, with its chain.
        link = browser.find_elements(By.CSS_SELECTOR, ".stl-telescope .stl-written a")[0]
        writer = int(link.get_attribute("data-step"))
        assert TARGET - 100 < writer < next_call
        link.click()
        wait_step(writer)
        assert browser.find_element(By.CSS_SELECTOR, ".stl-provenance-box").is_displayed()
        first = browser.find_element(By.CSS_SELECTOR, ".stl-provenance li[data-step]")
        assert int(first.get_attribute("data-step")) == writer
        # ... and back to the start.
        browser.find_element(By.CSS_SELECTOR, "body").send_keys(Keys.HOME)
        wait_step(0)
        assert register("r12") == 0 and register("rip") == long_trace.metadata.symbols["main"]
        assert _errors(browser) == []


def test_a_port_in_use_is_one_line_and_status_2(
    green_threads_served: tuple[Trace, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from stacktrace_lab.cli import main

    trace, url = green_threads_served
    port = url.rsplit(":", 1)[1].strip("/")
    assert main(["serve", str(trace.path), "--port", port]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"127.0.0.1:{port}" in err


def test_served_windows_from_checkpoints_are_the_embedded_ones(
    tmp_path: Path,
) -> None:
    """Deep in a trace of many row groups, a served window starts from the stack memory
    checkpointed at a row group's start; it must be the window replayed from step 0."""
    from stacktrace_lab.stepper.data import FrameContext, Window, embedded_window
    from stacktrace_lab.stepper.serve import RADIUS, ServedTrace

    path = tmp_path / "green-threads.parquet"
    record(load_scenario("green-threads"), path, RecordOptions(row_group_size=128))
    trace = load_trace(path)
    assert trace.num_row_groups > 20
    served = ServedTrace(trace)
    served.analysis()
    frames = FrameContext.of(trace)
    for step in (300, 1500, 2222, trace.num_rows - 1):
        window = Window(max(0, step - RADIUS), min(trace.num_rows, step + RADIUS))
        assert json.loads(served.window(step)) == json.loads(
            json.dumps(embedded_window(trace, window, frames))
        )
    assert served._checkpoints is not None and served._checkpoints.ranges


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1", 200),
        ("localhost:8765", 200),
        ("LOCALHOST", 200),
        ("evil.example", 403),
        ("127.0.0.1.evil.example:8765", 403),
        ("localhost.evil.example", 403),
    ],
)
def test_a_host_other_than_this_machine_is_refused(
    first_switch_trace: Path, host: str, status: int
) -> None:
    """DNS rebinding: a page from evil.example whose name now resolves to 127.0.0.1
    reaches the server with `Host: evil.example`; only this machine's names pass."""
    import http.client

    for base in _serve(load_trace(first_switch_trace)):
        port = int(base.rsplit(":", 1)[1].strip("/"))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.putrequest("GET", "/", skip_host=True)
        connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert response.status == status
        if status == 403:
            assert b"Host must be 127.0.0.1 or localhost" in body


def test_the_page_and_windows_come_before_the_analysis_pass(first_switch_trace: Path) -> None:
    """The served page holds no switches and no chart, and its windows no backtraces,
    until the analysis pass is made: then `overview` has the chart and switches the
    report's page embeds, and the same window comes with its backtraces."""
    from stacktrace_lab.stepper.data import (
        FrameContext,
        Switch,
        Window,
        embedded_window,
        rsp_chart,
        switch_data,
    )
    from stacktrace_lab.stepper.render import chart_svg
    from stacktrace_lab.stepper.serve import RADIUS, ServedTrace

    trace = load_trace(first_switch_trace)
    served = ServedTrace(trace)
    assert not served.analysed
    assert b'"switches":[]' in served.page and b'"chart":null' in served.page
    early = json.loads(served.window(10))
    assert early["bt"] is None and not served.analysed
    window = Window(0, min(trace.num_rows, 10 + RADIUS))
    assert early == json.loads(json.dumps(embedded_window(trace, window, None)))

    for base in _serve(trace):
        overview = _get(base + "api/overview")
        late = _get(base + "api/window?step=10")
    # What the page embedded when it was made after the pass: the first planted returns.
    planted = derive_facts(trace).planted_returns
    switches = switch_data([Switch(p.ret_step, p.region, p.index, p.target, p.planted_step)
                            for p in planted])  # fmt: skip
    assert overview["switches"] == switches and [s["ret_step"] for s in switches] == [12]
    chart = {"chart": rsp_chart(trace, []), "complete": True, "switches": switches}
    assert overview["chart"] == str(chart_svg(chart)) and 'stroke-dasharray="3 3"' in chart_svg(
        chart
    )
    assert late == json.loads(json.dumps(embedded_window(trace, window, FrameContext.of(trace))))
    assert {k: v for k, v in late.items() if k != "bt"} == {
        k: v for k, v in early.items() if k != "bt"
    }

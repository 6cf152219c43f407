/* stacktrace-lab stepper: move through a trace's steps in the page.
 *
 * Reads the JSON embedded next to it (see stepper/data.py for its shape),
 * rebuilds registers and stack memory at any loaded step, and shows the
 * registers, the instruction listing with the current line highlighted, the
 * stack telescope, every stack's backtrace and a cursor on the rsp chart.
 * No libraries. 64-bit values are BigInt, parsed from the hex strings.
 *
 * Steps come in windows (runs of consecutive steps). An embedded page holds
 * all its windows; a served page (`stacktrace-lab serve`, `data.serve`) asks
 * the server for the window around a step when it needs one, and asks it to
 * search the whole trace for the previous/next call, ret, stack change or
 * access. What needs every step read (the rsp chart, the switches, the
 * backtraces) comes to a served page after its first step (`overview`): until
 * then its windows carry no backtraces (`bt` null) and are fetched again.
 * The current position is a step number, kept in the URL (#step=N).
 */
(function () {
  "use strict";

  var root = document.getElementById("stl-stepper");
  if (!root) {
    return;
  }
  var data = JSON.parse(document.getElementById("stl-stepper-data").textContent);
  var $ = function (selector) {
    return root.querySelector(selector);
  };
  var served = !!data.serve;

  // ---- values ---------------------------------------------------------------
  function big(hex) {
    return BigInt(hex);
  }
  function hex16(value) {
    return "0x" + value.toString(16).padStart(16, "0");
  }
  function hexShort(value) {
    return "0x" + value.toString(16);
  }

  var regions = data.regions.map(function (r) {
    var base = big(r.base);
    return {
      name: r.name, shown: r.shown || r.name, kind: r.kind, base: base,
      top: base + BigInt(r.size), size: r.size
    };
  });
  var stacks = regions.filter(function (r) {
    return r.kind === "stack";
  });
  var symbols = data.symbols.map(function (s) {
    return { addr: big(s[0]), name: s[1] };
  });
  // Line 0 is DWARF's "no source line from here": it ends the line before it and
  // shows nothing (never `file:0` or `:0`).
  var lines = (data.lines || []).map(function (l) {
    return { addr: big(l[0]), where: /:0$/.test(l[1]) ? "" : l[1] };
  });
  var sentinel = big(data.sentinel);

  function inCode(value) {
    return regions.some(function (r) {
      return r.kind === "code" && value >= r.base && value < r.top;
    });
  }

  /* What a value points to: `label+off` in code, `stack[index]` in a region. */
  function describe(value) {
    if (value === sentinel) {
      return "sentinel return";
    }
    for (var i = 0; i < regions.length; i++) {
      var r = regions[i];
      var inside = (value >= r.base && value < r.top) || (r.kind === "stack" && value === r.top);
      if (!inside) {
        continue;
      }
      if (r.kind !== "code") {
        return r.name + "[" + (value - r.base).toString() + "]";
      }
      var best = null;
      for (var j = 0; j < symbols.length && symbols[j].addr <= value; j++) {
        best = symbols[j];
      }
      return best ? best.name + "+" + (value - best.addr).toString() : "code+" + (value - r.base);
    }
    return "";
  }

  /* `file:line` of a code address: its line or the nearest one below it. */
  function sourceOf(addr) {
    if (!inCode(addr)) {
      return "";
    }
    var best = "";
    for (var i = 0; i < lines.length && lines[i].addr <= addr; i++) {
      best = lines[i].where;
    }
    return best;
  }

  function stackIndex(rsp) {
    for (var i = 0; i < stacks.length; i++) {
      if (stacks[i].base <= rsp && rsp <= stacks[i].top) {
        return i;
      }
    }
    return -1;
  }
  function activeStack(rsp) {
    var i = stackIndex(rsp);
    return i >= 0 ? stacks[i] : null;
  }

  // ---- the loaded windows of steps ------------------------------------------
  var names = data.registers;
  var RIP = names.indexOf("rip");
  var RSP = names.indexOf("rsp");
  var RBP = names.indexOf("rbp");
  var windows = []; // sorted by start; each with .regs[k] (BigInt[]) and .afterLast
  var frames = {}; // frame id -> [caller, stack, function, how, entered step, return address]
  var writers = data.writers || {}; // step -> its instruction's address, for steps not loaded
  var MAX_WINDOWS = 40;

  function addWindow(w) {
    var regs = w.regs0.map(big);
    w.regs = [regs];
    for (var k = 1; k < w.stop - w.start; k++) {
      regs = regs.slice();
      var delta = w.deltas[k - 1];
      for (var d = 0; d < delta.length; d += 2) {
        regs[delta[d]] = big(delta[d + 1]);
      }
      w.regs.push(regs);
    }
    w.afterLast = w.after_last.map(big);
    Object.keys(w.bt ? w.bt.frames : {}).forEach(function (id) {
      frames[id] = w.bt.frames[id];
    });
    Object.keys(w.writers || {}).forEach(function (step) {
      writers[step] = w.writers[step];
    });
    windows = windows.filter(function (o) {
      return o.stop <= w.start || o.start >= w.stop;
    });
    windows.push(w);
    windows.sort(function (a, b) {
      return a.start - b.start;
    });
  }
  data.windows.forEach(addWindow);

  function windowOf(step) {
    var lo = 0;
    var hi = windows.length - 1;
    while (lo <= hi) {
      var mid = (lo + hi) >> 1;
      var w = windows[mid];
      if (step < w.start) {
        hi = mid - 1;
      } else if (step >= w.stop) {
        lo = mid + 1;
      } else {
        return w;
      }
    }
    return null;
  }
  function regsAt(step) {
    var w = windowOf(step);
    return w ? w.regs[step - w.start] : null;
  }
  function registersAfter(step) {
    var w = windowOf(step);
    return step + 1 < w.stop ? w.regs[step + 1 - w.start] : w.afterLast;
  }

  /* The loaded step nearest to `step`, looking in `direction` (+1, -1) first. */
  function nearestLoaded(step, direction) {
    if (windowOf(step)) {
      return step;
    }
    var after = null;
    var before = null;
    windows.forEach(function (w) {
      if (w.start > step && after === null) {
        after = w.start;
      }
      if (w.stop - 1 < step) {
        before = w.stop - 1;
      }
    });
    if (direction > 0) {
      return after !== null ? after : before;
    }
    if (direction < 0) {
      return before !== null ? before : after;
    }
    if (after === null) {
      return before;
    }
    if (before === null) {
      return after;
    }
    return after - step < step - before ? after : before;
  }

  var pending = null;
  /* Fetch the window around `step` from the server (served pages only). */
  function fetchWindow(step) {
    var url = data.serve.window + "?step=" + step;
    $(".stl-status").textContent = "loading step " + step + "\u2026";
    return fetch(url)
      .then(function (response) {
        if (!response.ok) {
          throw new Error("the server answered " + response.status);
        }
        return response.json();
      })
      .then(function (w) {
        addWindow(w);
        while (windows.length > MAX_WINDOWS) {
          // Forget the window farthest from where the user is.
          var far = 0;
          windows.forEach(function (o, i) {
            if (Math.abs(o.start - step) > Math.abs(windows[far].start - step)) {
              far = i;
            }
          });
          windows.splice(far, 1);
        }
        $(".stl-status").textContent = "";
      });
  }

  // ---- memory at a step: the window's start state plus its writes before the step ----------
  function memoryAt(step) {
    var w = windowOf(step);
    var out = {};
    Object.keys(w.stacks).forEach(function (name) {
      var m = w.stacks[name];
      var lo = big(m.lo);
      var hi = big(m.hi);
      var bytes = new Uint8Array(m.bytes.length / 2);
      for (var b = 0; b < bytes.length; b++) {
        bytes[b] = parseInt(m.bytes.substr(2 * b, 2), 16);
      }
      var slotStart = lo - (lo % 8n);
      var slotWriters = Int32Array.from(m.writers);
      w.writes.forEach(function (entry) {
        if (entry[0] >= step) {
          return;
        }
        var addr = big(entry[1]);
        var n = entry[2].length / 2;
        for (var k = 0; k < n; k++) {
          var at = addr + BigInt(k);
          if (at < lo || at >= hi) {
            continue;
          }
          bytes[Number(at - lo)] = parseInt(entry[2].substr(2 * k, 2), 16);
          slotWriters[Number((at - slotStart) / 8n)] = entry[0];
        }
      });
      out[name] = { lo: lo, hi: hi, bytes: bytes, writers: slotWriters, slotStart: slotStart };
    });
    return out;
  }

  /* The step that last wrote the 8-byte slot at `addr` before `step`, if tracked. */
  function writerOf(addr, step) {
    var region = activeStack(addr) || stacks.find(function (r) {
      return addr >= r.base && addr < r.top;
    });
    if (!region || !windowOf(step)) {
      return null;
    }
    var m = memoryAt(step)[region.name];
    if (!m || addr < m.lo || addr >= m.hi) {
      return null;
    }
    return m.writers[Number((addr - m.slotStart) / 8n)];
  }

  // ---- rendering ----------------------------------------------------------------
  var listingBody = $(".stl-listing tbody");
  var listingRows = {};
  var registerUse = {}; // rip -> [registers read, registers written], where known
  // rip -> what the instruction does, decoded from its bytes in Python (who-wrote's rules):
  // kind (call, ret, ...), source ("imm", "mem" or a register), dest and how ("move",
  // "address"), each absent when empty.
  var flows = {};
  data.listing.forEach(function (insn) {
    if (insn.regs) {
      registerUse[big(insn.addr).toString()] = insn.regs;
    }
    flows[big(insn.addr).toString()] = insn.flow || {};
    var tr = document.createElement("tr");
    tr.dataset.addr = insn.addr;
    [insn.addr, insn.symbol, insn.insn, insn.source].forEach(function (text) {
      var td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    });
    listingBody.appendChild(tr);
    listingRows[big(insn.addr).toString()] = tr;
  });

  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) {
      td.className = cls;
    }
    tr.appendChild(td);
    return td;
  }

  function insnAt(addr) {
    var row = listingRows[addr.toString()];
    return row ? row.children[2].textContent : "";
  }
  /* The address of the instruction at `step`, or null if neither loaded nor a known writer. */
  function ripOfStep(step) {
    var regs = regsAt(step);
    if (regs) {
      return regs[RIP];
    }
    var addr = writers[String(step)];
    return addr ? big(addr) : null;
  }
  function insnOfStep(step) {
    var rip = ripOfStep(step);
    return rip === null ? "" : insnAt(rip);
  }
  function flowOfStep(step) {
    var rip = ripOfStep(step);
    return (rip !== null && flows[rip.toString()]) || {};
  }
  function flowAt(addr) {
    return flows[addr.toString()] || {};
  }

  function renderRegisters(step) {
    var regs = regsAt(step);
    var prev = step > 0 && windowOf(step - 1) === windowOf(step) ? regsAt(step - 1) : null;
    var after = registersAfter(step);
    var body = $(".stl-registers tbody");
    body.textContent = "";
    names.forEach(function (name, r) {
      var tr = document.createElement("tr");
      tr.dataset.reg = name;
      var changed = prev !== null && prev[r] !== regs[r];
      if (changed) {
        tr.className = "stl-changed";
      }
      if (selected && selected.reg === name) {
        tr.classList.add("stl-selected");
      }
      cell(tr, name, "stl-name");
      cell(tr, hex16(regs[r]), "stl-value");
      cell(tr, after[r] !== regs[r] ? "\u2192 " + hexShort(after[r]) : "", "stl-after");
      cell(tr, name === "rflags" ? "" : describe(regs[r]), "stl-points-to");
      body.appendChild(tr);
    });
  }

  var currentRow = null;
  function renderListing(step) {
    var rip = regsAt(step)[RIP];
    if (currentRow) {
      currentRow.classList.remove("stl-current");
    }
    currentRow = listingRows[rip.toString()] || null;
    if (currentRow) {
      currentRow.classList.add("stl-current");
      // Scroll the listing box only, never the page.
      var box = $(".stl-listing");
      var top = currentRow.offsetTop;
      if (top < box.scrollTop + 24 || top > box.scrollTop + box.clientHeight - 48) {
        box.scrollTop = Math.max(top - box.clientHeight / 2, 0);
      }
    }
  }

  function renderCurrent(step) {
    var w = windowOf(step);
    var regs = regsAt(step);
    var row = listingRows[regs[RIP].toString()];
    $(".stl-symbol").textContent = row ? row.children[1].textContent : hexShort(regs[RIP]);
    $(".stl-insn").textContent = row ? row.children[2].textContent : "?";
    var parts = w.access[step - w.start].map(function (a) {
      var addr = big(a[1]);
      var value = big("0x" + (a[3] || "0"));
      var where = describe(addr) || hexShort(addr);
      var what = a[2] === 8 ? describe(value) : "";
      return (a[0] === "r" ? "reads " : "writes ") + a[2] + " bytes at " + where + ": " +
        hexShort(value) + (what ? " \u2192 " + what : "");
    });
    $(".stl-access").textContent = parts.join("; ");
    var planted = data.switches.filter(function (sw) {
      return sw.ret_step === step;
    });
    var text = "";
    if (planted.length && planted[0].note) {
      text = planted[0].note;
    } else if (planted.length) {
      text = "stack switch: pops " + planted[0].target + " from " + planted[0].stack + "[" +
        planted[0].index + "], planted " + (planted[0].planted_step === null ?
        "before the trace began" : "at step " + planted[0].planted_step);
    }
    $(".stl-switch").textContent = text;
  }

  function telescopeSpan(region, rsp, tracked) {
    var t = data.telescope;
    var first = region.base - (region.base % 8n);
    var last = region.top + ((8n - (region.top % 8n)) % 8n);
    var lo;
    var hi;
    if ((last - first) / 8n <= BigInt(t.whole_region_slots)) {
      lo = region.base;
      hi = region.top;
    } else {
      var at = rsp - (rsp % 8n);
      lo = at - BigInt(8 * t.below_rsp);
      hi = at + BigInt(8 * t.from_rsp);
      lo = lo < first ? first : lo;
      hi = hi > last ? last : hi;
      lo = lo < region.base ? region.base : lo;
      hi = hi > region.top ? region.top : hi;
    }
    // Only what the page has: the tracked bytes of this window.
    lo = lo < tracked.lo ? tracked.lo : lo;
    hi = hi > tracked.hi ? tracked.hi : hi;
    return [lo, hi];
  }

  function renderTelescope(step) {
    var regs = regsAt(step);
    var rsp = regs[RSP];
    var rbp = regs[RBP];
    var body = $(".stl-telescope tbody");
    var title = $(".stl-telescope-title");
    body.textContent = "";
    var region = activeStack(rsp);
    if (!region) {
      title.textContent = "rsp = " + hexShort(rsp) + " is in no stack region";
      return;
    }
    var memory = memoryAt(step)[region.name];
    if (!memory) {
      title.textContent = region.shown + ": not embedded for this step";
      return;
    }
    var span = telescopeSpan(region, rsp, memory);
    var whole = span[0] === region.base && span[1] === region.top;
    title.textContent = region.shown + ": " + hexShort(region.base) + ".." +
      hexShort(region.top) + ", " + region.size + " bytes, rsp = " + region.name + "[" +
      (rsp - region.base).toString() + "]" + (whole ? "" : ", slots around rsp");
    var addr = span[0];
    while (addr < span[1]) {
      var end = addr - (addr % 8n) + 8n;
      if (end > span[1]) {
        end = span[1];
      }
      var value = 0n;
      for (var b = end - 1n; b >= addr; b--) {
        value = (value << 8n) | BigInt(memory.bytes[Number(b - memory.lo)]);
      }
      var writer = memory.writers[Number((addr - memory.slotStart) / 8n)];
      var tr = document.createElement("tr");
      var index = (addr - region.base).toString();
      tr.dataset.index = index;
      tr.dataset.addr = hexShort(addr);
      var marks = [];
      if (rsp >= addr && rsp < end) {
        marks.push("rsp");
        tr.className = "stl-rsp";
      }
      if (selected && selected.addr === addr) {
        tr.classList.add("stl-selected");
      }
      if (rbp >= addr && rbp < end) {
        marks.push("rbp");
      }
      cell(tr, marks.length ? marks.join(",") + " \u2192" : "", "stl-mark");
      cell(tr, index, "stl-index");
      cell(tr, hexShort(addr), "stl-addr");
      cell(tr, hex16(value), "stl-value");
      cell(tr, describe(value), "stl-points-to");
      var writtenCell = cell(tr, "", "stl-written");
      writtenCell.dataset.step = String(writer);
      if (writer >= 0) {
        // A link to the step that wrote the slot (who-wrote, one click).
        var link = document.createElement("a");
        var text = insnOfStep(writer);
        link.textContent = "step " + writer + (text ? " " + text : "");
        link.title = "go to step " + writer + " and follow the value back";
        link.dataset.step = String(writer);
        writtenCell.appendChild(link);
      } else {
        writtenCell.textContent = "-";
      }
      body.appendChild(tr);
      addr = end;
    }
  }

  // ---- backtraces -------------------------------------------------------------------
  /* Every stack's innermost frame and where a suspended stack left, before `step`. */
  /* The stack whose frames run at `step`: the one rsp is on, but while rsp is below a
     stack's base (an overflow) or outside every stack, the one the analysis keeps the
     frames on (`bt.owner`: [first step, stack] wherever that differs). */
  function frameOwner(w, step) {
    var owner = stackIndex(w.regs[step - w.start][RSP]);
    ((w.bt && w.bt.owner) || []).forEach(function (run) {
      if (run[0] <= step && step < run[1]) {
        owner = run[2];
      }
    });
    return owner;
  }

  function frameState(step) {
    var w = windowOf(step);
    var tops = w.bt.tops0.slice();
    w.bt.events.forEach(function (e) {
      if (e[0] < step) {
        tops[e[1]] = e[2];
      }
    });
    var left = w.bt.left0.map(function (x) {
      return x ? { step: x[0], rip: big(x[1]) } : null;
    });
    for (var s = w.start; s < step; s++) {
      var regs = w.regs[s - w.start];
      var k = frameOwner(w, s);
      if (k >= 0) {
        left[k] = { step: s, rip: regs[RIP] };
      }
    }
    return { tops: tops, left: left };
  }

  function renderBacktrace(step) {
    var box = $(".stl-backtrace");
    box.textContent = "";
    if (!windowOf(step).bt) {
      box.textContent = "reading every step for the backtraces\u2026";
      return;
    }
    var state = frameState(step);
    var regs = regsAt(step);
    var running = frameOwner(windowOf(step), step);
    var order = [running];
    for (var s = 0; s < stacks.length; s++) {
      if (s !== running) {
        order.push(s);
      }
    }
    order.forEach(function (s) {
      if (s < 0 || (s !== running && (state.tops[s] < 0 || !state.left[s]))) {
        return;
      }
      var head = document.createElement("div");
      head.className = "stl-bt-stack" + (s === running ? " stl-running" : "");
      head.dataset.stack = stacks[s].name;
      head.textContent = stacks[s].shown + (s === running ? " (running)" :
        " (suspended at step " + state.left[s].step + ")");
      box.appendChild(head);
      var table = document.createElement("table");
      table.className = "stl-frames";
      table.dataset.stack = stacks[s].name;
      var addr = s === running ? regs[RIP] : state.left[s].rip;
      var id = state.tops[s];
      var depth = 0;
      while (id >= 0 && frames[String(id)]) {
        var f = frames[String(id)];
        var tr = document.createElement("tr");
        tr.className = "stl-frame";
        tr.dataset.function = f[2];
        cell(tr, "#" + depth);
        cell(tr, f[2], "stl-function");
        // Named as the analysis names code: `label` at its first byte, else `label+offset`.
        cell(tr, addr === null ? "?" : hexShort(addr) + " " + describe(addr).replace(/\+0$/, ""));
        cell(tr, addr === null ? "" : sourceOf(addr), "stl-points-to");
        cell(tr, f[4] < 0 ? "at the start" : "step " + f[4] + " by " + f[3], "stl-points-to");
        table.appendChild(tr);
        addr = f[5] === null ? null : big(f[5]);
        if (addr === sentinel) {
          break;
        }
        id = f[0];
        depth++;
      }
      if (id < 0 && addr !== null && addr !== sentinel && inCode(addr)) {
        // The outermost callee returns into code no frame accounts for (the
        // runtime's guard, reached by a ret): named by its label, entry not seen.
        var outer = document.createElement("tr");
        outer.className = "stl-frame";
        outer.dataset.function = describe(addr).split("+")[0];
        cell(outer, "#" + depth);
        cell(outer, outer.dataset.function, "stl-function");
        cell(outer, hexShort(addr) + " " + describe(addr).replace(/\+0$/, ""));
        cell(outer, sourceOf(addr), "stl-points-to");
        cell(outer, "not seen: a ret returned to it", "stl-points-to");
        table.appendChild(outer);
      }
      box.appendChild(table);
    });
  }

  // ---- where a value came from (the stepper's who-wrote) --------------------------------
  /* The last step before `step` whose instruction changed register `reg`, within the
     loaded window of `step`; -1 if it kept its value since step 0; null if unknown. */
  function lastChange(reg, step) {
    var r = names.indexOf(reg);
    var w = windowOf(step);
    if (r < 0 || !w) {
      return null;
    }
    for (var s = step - 1; s >= w.start; s--) {
      var after = s + 1 < w.stop ? w.regs[s + 1 - w.start] : w.afterLast;
      if (w.regs[s - w.start][r] !== after[r]) {
        return s;
      }
    }
    return w.start === 0 ? -1 : null;
  }

  /* The address of the first memory read of `step`'s instruction, or null. */
  function firstRead(step) {
    var w = windowOf(step);
    if (!w) {
      return null;
    }
    var reads = w.access[step - w.start].filter(function (a) {
      return a[0] === "r";
    });
    return reads.length ? big(reads[0][1]) : null;
  }

  // who-wrote's default depth (DEFAULT_DEPTH in explore/provenance.py).
  var CHAIN_DEPTH = 6;

  /* The chain of who-wrote (explore/provenance.py), link by link, as far as the loaded
     steps go: what each instruction does comes from the listing's `flow`, decided in
     Python from the instruction's bytes by the rules who-wrote follows. */
  function provenance(addr, before) {
    var chain = [];
    function stop(note) {
      chain.push({ step: null, text: "", note: note });
    }
    function memoryLinks(at, step, depth) {
      var what = describe(at) || hexShort(at);
      var writer = writerOf(at, step);
      if (writer === null || writer === undefined) {
        stop(what + ": not tracked here");
        return;
      }
      if (writer < 0) {
        stop(what + " was never written: its initial value");
        return;
      }
      var text = insnOfStep(writer);
      var flow = flowOfStep(writer);
      if (flow.kind === "call") {
        chain.push({ step: writer, text: text, note: what + ": the return address this call pushed" });
        return;
      }
      chain.push({ step: writer, text: text, note: "wrote " + what });
      if (depth > 1) {
        operandLinks(writer, flow.source, depth - 1);
      }
    }
    function operandLinks(step, source, depth) {
      if (!source) {
        stop("cannot follow the source of " + insnOfStep(step));
      } else if (source === "imm") {
        chain.push({ step: step, text: insnOfStep(step), note: "an immediate in the instruction itself" });
      } else if (source === "mem") {
        // A load: follow the memory it read (the step's first read).
        var loaded = firstRead(step);
        if (loaded === null) {
          stop("the memory step " + step + " read is not loaded here");
        } else {
          memoryLinks(loaded, step, depth);
        }
      } else {
        registerLinks(source, step, depth);
      }
    }
    function registerLinks(reg, before, depth) {
      var changed = lastChange(reg, before);
      if (changed === null) {
        stop(reg + " was set before the loaded steps");
        return;
      }
      if (changed < 0) {
        stop(reg + " holds its value from the start");
        return;
      }
      var text = insnOfStep(changed);
      var flow = flowOfStep(changed);
      var into = flow.dest === reg;
      if (into && flow.how === "move" && flow.source === "imm") {
        chain.push({ step: changed, text: text, note: reg + " was set here from an immediate" });
      } else if (into && flow.how === "move") {
        var how = flow.source === "mem" ? "loaded from memory" : "by a move";
        chain.push({ step: changed, text: text, note: reg + " was set here, " + how });
        if (depth > 1) {
          operandLinks(changed, flow.source, depth - 1);
        }
      } else if (into && flow.how === "address" && depth > 1) {
        chain.push({ step: changed, text: text, note: reg + " was computed here as an address" });
        if (flow.source) {
          registerLinks(flow.source, changed, depth - 1);
        }
      } else {
        chain.push({ step: changed, text: text, note: reg + " was set here (computed)" });
      }
    }
    memoryLinks(addr, before, CHAIN_DEPTH);
    return chain;
  }

  var chainShown = null;
  function renderProvenance(step) {
    var box = $(".stl-provenance-box");
    var list = $(".stl-provenance");
    if (!chainShown) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    list.textContent = "";
    chainShown.forEach(function (link) {
      var li = document.createElement("li");
      if (link.step !== null) {
        li.dataset.step = String(link.step);
        var a = document.createElement("a");
        a.textContent = "step " + link.step;
        a.dataset.step = String(link.step);
        li.appendChild(a);
        li.appendChild(document.createTextNode(" " + link.text + " \u2014 " + link.note));
        if (link.step === step) {
          li.className = "stl-here";
        }
      } else {
        li.textContent = link.note;
      }
      list.appendChild(li);
    });
  }

  var chart = data.chart_geometry;
  function renderCursor(step) {
    var cursor = $(".stl-cursor"); // none until a served page has its chart
    if (!cursor) {
      return;
    }
    var x = chart.x0 + ((step + 0.5) / Math.max(data.total_steps, 1)) * chart.width;
    cursor.setAttribute("x1", x.toFixed(2));
    cursor.setAttribute("x2", x.toFixed(2));
  }

  // ---- moving -----------------------------------------------------------------
  var slider = $(".stl-slider");
  slider.max = String(Math.max(data.total_steps - 1, 0));
  var position = 0;
  var selected = null; // {addr: BigInt, name} or {reg: name}

  // A threaded program: which OS thread ran the step (the window's runs of one
  // thread's rows, [first step, number]); nothing for a program without threads.
  function threadText(w, step) {
    var runs = w.threads || [];
    var number = null;
    for (var i = 0; i < runs.length && runs[i][0] <= step; i++) number = runs[i][1];
    return number === null ? "" : "thread " + number;
  }

  function render(step) {
    position = step;
    var w = windowOf(step);
    slider.value = String(step);
    $(".stl-step").textContent = String(step);
    $(".stl-last").textContent = String(data.total_steps - 1);
    $(".stl-thread").textContent = threadText(w, step);
    $(".stl-gap").textContent = data.complete || served ? "" :
      "window " + (windows.indexOf(w) + 1) + " of " + windows.length + ": steps " + w.start +
      "\u2013" + (w.stop - 1) + " (the steps between windows are not embedded)";
    root.dataset.step = String(step);
    renderCurrent(step);
    renderRegisters(step);
    renderListing(step);
    renderTelescope(step);
    renderBacktrace(step);
    renderProvenance(step);
    renderCursor(step);
    var hash = "#step=" + step;
    if (window.location.hash !== hash) {
      try {
        history.replaceState(null, "", hash);
      } catch (e) {
        window.location.hash = hash;
      }
    }
  }

  /* Go to `step` (clamped): load it first on a served page; on an embedded one, the
     nearest embedded step (looking in `direction` first). Returns a promise. */
  function show(step, direction) {
    var last = Math.max(data.total_steps - 1, 0);
    step = Math.max(0, Math.min(last, Math.round(step)));
    if (windowOf(step)) {
      render(step);
      return Promise.resolve(step);
    }
    if (served) {
      pending = step;
      return fetchWindow(step).then(function () {
        if (pending === step && windowOf(step)) {
          render(step);
        }
        return step;
      }, function (error) {
        $(".stl-status").textContent = "could not load step " + step + ": " + error.message;
      });
    }
    var near = nearestLoaded(step, direction || 0);
    if (near !== null) {
      render(near);
    }
    return Promise.resolve(near);
  }

  function move(delta) {
    return show(position + delta, delta);
  }

  /* Does the step match what the find buttons look for? (embedded pages) */
  function matches(what, step) {
    var regs = regsAt(step);
    if (what === "call" || what === "ret") {
      return flowAt(regs[RIP]).kind === what;
    }
    if (what === "stack") {
      var w = windowOf(step);
      var after = step + 1 < w.stop ? w.regs[step + 1 - w.start] : w.afterLast;
      return stackIndex(regs[RSP]) !== stackIndex(after[RSP]);
    }
    if (what === "access" && selected && selected.reg) {
      // An instruction that reads or writes the register, or any step that changes it.
      var r = names.indexOf(selected.reg);
      var use = registerUse[regs[RIP].toString()];
      var touches = use && (use[0].indexOf(selected.reg) >= 0 || use[1].indexOf(selected.reg) >= 0);
      return touches || registersAfter(step)[r] !== regs[r];
    }
    if (what === "access" && selected) {
      var w2 = windowOf(step);
      var lo = selected.addr;
      var hi = selected.addr + 8n;
      return w2.access[step - w2.start].some(function (a) {
        var addr = big(a[1]);
        return addr < hi && addr + BigInt(a[2]) > lo;
      });
    }
    return false;
  }

  function find(what, direction) {
    if (what === "access" && !selected) {
      $(".stl-status").textContent = "select a stack slot or a register first";
      return Promise.resolve(null);
    }
    $(".stl-status").textContent = "";
    if (served) {
      var query = data.serve.find + "?what=" + what + "&dir=" + direction + "&from=" + position;
      if (what === "access") {
        query += selected.reg ? "&reg=" + selected.reg : "&addr=" + hexShort(selected.addr) + "&size=8";
      }
      $(".stl-status").textContent = "searching\u2026";
      return fetch(query).then(function (response) {
        return response.json();
      }).then(function (answer) {
        $(".stl-status").textContent = answer.step === null ? "none " +
          (direction > 0 ? "after" : "before") + " step " + position : "";
        return answer.step === null ? null : show(answer.step);
      });
    }
    // Embedded: walk the loaded steps.
    var step = position + direction;
    while (step >= 0 && step < data.total_steps) {
      if (!windowOf(step)) {
        var next = nearestLoaded(step, direction);
        if (next === null || (direction > 0 ? next < step : next > step)) {
          break;
        }
        step = next;
        continue;
      }
      if (matches(what, step)) {
        return show(step);
      }
      step += direction;
    }
    $(".stl-status").textContent = "none " + (direction > 0 ? "after" : "before") +
      " step " + position + (data.complete ? "" : " in the embedded steps");
    return Promise.resolve(null);
  }

  function select(choice) {
    selected = choice;
    $(".stl-selection").textContent = choice ? "selected: " + (choice.reg || choice.name) :
      "click a stack slot or a register to select it";
    render(position);
  }

  /* Click on a slot's "last written": go to the writer and show where the value came from. */
  function followWriter(addr, writer) {
    select({ addr: addr, name: describe(addr) || hexShort(addr) });
    if (!served && !windowOf(writer)) {
      $(".stl-status").textContent = "step " + writer + " is not embedded in this page " +
        "(stacktrace-lab serve reaches every step)";
      return Promise.resolve(null);
    }
    return show(writer).then(function () {
      chainShown = provenance(addr, writer + 1);
      render(position);
    });
  }

  slider.addEventListener("input", function () {
    show(Number(slider.value), Number(slider.value) - position);
  });
  root.querySelectorAll("[data-move]").forEach(function (button) {
    button.addEventListener("click", function () {
      var moveTo = button.dataset.move;
      if (moveTo === "first") {
        show(0, 1);
      } else if (moveTo === "last") {
        show(data.total_steps - 1, -1);
      } else if (moveTo === "next-switch") {
        jumpSwitch(1);
      } else if (moveTo === "prev-switch") {
        jumpSwitch(-1);
      } else {
        move(Number(moveTo));
      }
    });
  });
  root.querySelectorAll("[data-find]").forEach(function (button) {
    button.addEventListener("click", function () {
      find(button.dataset.find, Number(button.dataset.dir));
    });
  });
  $(".stl-goto").addEventListener("keydown", function (event) {
    if (event.key === "Enter" && event.target.value !== "") {
      show(Number(event.target.value));
    }
  });
  $(".stl-telescope tbody").addEventListener("click", function (event) {
    var link = event.target.closest("a[data-step]");
    var tr = event.target.closest("tr");
    if (!tr) {
      return;
    }
    var addr = big(tr.dataset.addr);
    if (link) {
      followWriter(addr, Number(link.dataset.step));
    } else {
      chainShown = null;
      select({ addr: addr, name: describe(addr) || hexShort(addr) });
    }
  });
  $(".stl-registers tbody").addEventListener("click", function (event) {
    var tr = event.target.closest("tr");
    if (tr) {
      chainShown = null;
      select({ reg: tr.dataset.reg });
    }
  });
  $(".stl-provenance").addEventListener("click", function (event) {
    var link = event.target.closest("a[data-step]");
    if (link) {
      show(Number(link.dataset.step));
    }
  });

  function jumpSwitch(direction) {
    var candidates = data.switches.map(function (s) {
      return s.ret_step;
    }).filter(function (s) {
      return direction > 0 ? s > position : s < position;
    });
    if (!candidates.length) {
      if (served && (!overviewLoaded || data.switches.length >= data.max_switches)) {
        // The page lists only the first switches of a long trace: search the rest.
        find("stack", direction);
      }
      return;
    }
    var target = direction > 0 ? candidates[0] : candidates[candidates.length - 1];
    if (windowOf(target) || served) {
      show(target);
    }
  }

  var KEYS = { ArrowLeft: -1, ArrowRight: 1, PageUp: -10, PageDown: 10 };
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    var typing = target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" ||
      target.tagName === "SELECT" || target.isContentEditable);
    if ((typing && target !== slider) || event.altKey || event.ctrlKey || event.metaKey) {
      return;
    }
    if (event.key in KEYS) {
      move(KEYS[event.key]);
    } else if (event.key === "Home") {
      show(0, 1);
    } else if (event.key === "End") {
      show(data.total_steps - 1, -1);
    } else {
      return;
    }
    event.preventDefault(); // the slider's own key handling would step a second time
  });

  $(".stl-chart").addEventListener("click", function (event) {
    var svg = $(".stl-chart svg");
    if (!svg) {
      return;
    }
    var box = svg.getBoundingClientRect();
    var scale = chart.viewWidth / box.width;
    var x = (event.clientX - box.left) * scale;
    show(Math.floor(((x - chart.x0) / chart.width) * data.total_steps));
  });

  function hashStep() {
    var hash = /#step=(\d+)/.exec(window.location.hash);
    return hash ? Number(hash[1]) : null;
  }
  window.addEventListener("hashchange", function () {
    var step = hashStep();
    if (step !== null && step !== position) {
      show(step);
    }
  });

  // A served page: the chart, the switches and the backtraces, once the server has
  // read every step (the page and its first step come before that).
  var overviewLoaded = !served || !data.serve.overview;
  function loadOverview() {
    return fetch(data.serve.overview)
      .then(function (response) {
        if (!response.ok) {
          throw new Error("the server answered " + response.status);
        }
        return response.json();
      })
      .then(function (o) {
        data.switches = o.switches;
        $(".stl-chart").innerHTML = o.chart;
        overviewLoaded = true;
        // Windows fetched before carry no backtraces: fetch the one shown again.
        windows = windows.filter(function (w) {
          return w.bt;
        });
        return show(position);
      });
  }

  var first = hashStep();
  show(first !== null ? first : 0, 1)
    .then(function () {
      return overviewLoaded ? null : loadOverview();
    })
    .then(function () {
      root.classList.add("stl-ready");
    }, function (error) {
      $(".stl-status").textContent = "could not read the whole trace: " + error.message;
    });
})();

/* stacktrace-lab stepper: move through a trace's steps in the page.
 *
 * Reads the JSON embedded next to it (see stepper/data.py for its shape),
 * rebuilds registers and stack memory at any embedded step, and shows the
 * registers, the instruction listing with the current line highlighted, the
 * stack telescope and a cursor on the rsp chart. No network, no libraries.
 * 64-bit values are BigInt, parsed from the hex strings of the data.
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
    return { name: r.name, kind: r.kind, base: base, top: base + BigInt(r.size), size: r.size };
  });
  var stacks = regions.filter(function (r) {
    return r.kind === "stack";
  });
  var symbols = data.symbols.map(function (s) {
    return { addr: big(s[0]), name: s[1] };
  });
  var sentinel = big(data.sentinel);

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

  function activeStack(rsp) {
    for (var i = 0; i < stacks.length; i++) {
      if (stacks[i].base <= rsp && rsp <= stacks[i].top) {
        return stacks[i];
      }
    }
    return null;
  }

  // ---- the steps ----------------------------------------------------------------
  var names = data.registers;
  var RIP = names.indexOf("rip");
  var RSP = names.indexOf("rsp");
  var RBP = names.indexOf("rbp");
  var steps = []; // {step, win, k, regs: BigInt[]}
  data.windows.forEach(function (w, wi) {
    var regs = w.regs0.map(big);
    for (var k = 0; k < w.stop - w.start; k++) {
      if (k > 0) {
        regs = regs.slice();
        var delta = w.deltas[k - 1];
        for (var d = 0; d < delta.length; d += 2) {
          regs[delta[d]] = big(delta[d + 1]);
        }
      }
      steps.push({ step: w.start + k, win: wi, k: k, regs: regs });
    }
    w.afterLast = w.after_last.map(big);
  });
  var switchSteps = data.switches.map(function (s) {
    return s.ret_step;
  });

  function registersAfter(i) {
    var s = steps[i];
    var next = steps[i + 1];
    if (next && next.win === s.win) {
      return next.regs;
    }
    return data.windows[s.win].afterLast;
  }

  // ---- memory at a step: the window's start state plus its writes before the step ----------
  function memoryAt(i) {
    var s = steps[i];
    var w = data.windows[s.win];
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
      var writers = Int32Array.from(m.writers);
      w.writes.forEach(function (entry) {
        if (entry[0] >= s.step) {
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
          writers[Number((at - slotStart) / 8n)] = entry[0];
        }
      });
      out[name] = { lo: lo, hi: hi, bytes: bytes, writers: writers, slotStart: slotStart };
    });
    return out;
  }

  // ---- rendering ----------------------------------------------------------------
  var listingBody = $(".stl-listing tbody");
  var listingRows = {};
  data.listing.forEach(function (insn) {
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

  function renderRegisters(i) {
    var s = steps[i];
    var prev = i > 0 && steps[i - 1].win === s.win ? steps[i - 1].regs : null;
    var after = registersAfter(i);
    var body = $(".stl-registers tbody");
    body.textContent = "";
    names.forEach(function (name, r) {
      var tr = document.createElement("tr");
      tr.dataset.reg = name;
      var changed = prev !== null && prev[r] !== s.regs[r];
      if (changed) {
        tr.className = "stl-changed";
      }
      cell(tr, name, "stl-name");
      cell(tr, hex16(s.regs[r]), "stl-value");
      cell(tr, after[r] !== s.regs[r] ? "\u2192 " + hexShort(after[r]) : "", "stl-after");
      cell(tr, name === "rflags" ? "" : describe(s.regs[r]), "stl-points-to");
      body.appendChild(tr);
    });
  }

  var currentRow = null;
  function renderListing(i) {
    var rip = steps[i].regs[RIP];
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

  function insnAt(addr) {
    var row = listingRows[addr.toString()];
    return row ? row.children[2].textContent : "";
  }

  function renderCurrent(i) {
    var s = steps[i];
    var w = data.windows[s.win];
    var row = listingRows[s.regs[RIP].toString()];
    $(".stl-symbol").textContent = row ? row.children[1].textContent : hexShort(s.regs[RIP]);
    $(".stl-insn").textContent = row ? row.children[2].textContent : "?";
    var parts = w.access[s.k].map(function (a) {
      var addr = big(a[1]);
      var value = big("0x" + (a[3] || "0"));
      var where = describe(addr) || hexShort(addr);
      var what = a[2] === 8 ? describe(value) : "";
      return (a[0] === "r" ? "reads " : "writes ") + a[2] + " bytes at " + where + ": " +
        hexShort(value) + (what ? " \u2192 " + what : "");
    });
    $(".stl-access").textContent = parts.join("; ");
    var planted = data.switches.filter(function (sw) {
      return sw.ret_step === s.step;
    });
    var text = "";
    if (planted.length && planted[0].note) {
      text = planted[0].note;
    } else if (planted.length) {
      text = "stack switch: pops " + planted[0].target + " from " + planted[0].stack + "[" +
        planted[0].index + "], planted at step " + planted[0].planted_step;
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

  function renderTelescope(i) {
    var s = steps[i];
    var rsp = s.regs[RSP];
    var rbp = s.regs[RBP];
    var body = $(".stl-telescope tbody");
    var title = $(".stl-telescope-title");
    body.textContent = "";
    var region = activeStack(rsp);
    if (!region) {
      title.textContent = "rsp = " + hexShort(rsp) + " is in no stack region";
      return;
    }
    var memory = memoryAt(i)[region.name];
    if (!memory) {
      title.textContent = region.name + ": not embedded for this step";
      return;
    }
    var span = telescopeSpan(region, rsp, memory);
    var whole = span[0] === region.base && span[1] === region.top;
    title.textContent = region.name + ": " + hexShort(region.base) + ".." +
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
      var marks = [];
      if (rsp >= addr && rsp < end) {
        marks.push("rsp");
        tr.className = "stl-rsp";
      }
      if (rbp >= addr && rbp < end) {
        marks.push("rbp");
      }
      cell(tr, marks.length ? marks.join(",") + " \u2192" : "", "stl-mark");
      cell(tr, index, "stl-index");
      cell(tr, hexShort(addr), "stl-addr");
      cell(tr, hex16(value), "stl-value");
      cell(tr, describe(value), "stl-points-to");
      var written = writer >= 0 ? "step " + writer : "-";
      var writtenCell = cell(tr, written, "stl-written");
      writtenCell.dataset.step = String(writer);
      body.appendChild(tr);
      addr = end;
    }
    // Writers' instruction text, when the writer is an embedded step.
    body.querySelectorAll(".stl-written").forEach(function (td) {
      var w = Number(td.dataset.step);
      var at = indexOfStep(w);
      if (w >= 0 && at >= 0) {
        td.textContent = "step " + w + " " + insnAt(steps[at].regs[RIP]);
      } else if (w >= 0 && data.writers[String(w)]) {
        td.textContent = "step " + w + " " + data.writers[String(w)];
      }
    });
  }

  function indexOfStep(step) {
    var lo = 0;
    var hi = steps.length - 1;
    while (lo <= hi) {
      var mid = (lo + hi) >> 1;
      if (steps[mid].step === step) {
        return mid;
      }
      if (steps[mid].step < step) {
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    return -1;
  }

  var chart = data.chart_geometry;
  var cursor = $(".stl-cursor");
  function renderCursor(i) {
    var x = chart.x0 + ((steps[i].step + 0.5) / Math.max(data.total_steps, 1)) * chart.width;
    cursor.setAttribute("x1", x.toFixed(2));
    cursor.setAttribute("x2", x.toFixed(2));
  }

  // ---- moving -----------------------------------------------------------------
  var slider = $(".stl-slider");
  slider.max = String(steps.length - 1);
  var position = 0;

  function show(i) {
    position = Math.max(0, Math.min(steps.length - 1, i));
    var s = steps[position];
    slider.value = String(position);
    $(".stl-step").textContent = String(s.step);
    $(".stl-last").textContent = String(data.total_steps - 1);
    var w = data.windows[s.win];
    $(".stl-gap").textContent = data.complete ? "" :
      "window " + (s.win + 1) + " of " + data.windows.length + ": steps " + w.start + "\u2013" +
      (w.stop - 1) + " (the steps between windows are not embedded)";
    root.dataset.step = String(s.step);
    renderCurrent(position);
    renderRegisters(position);
    renderListing(position);
    renderTelescope(position);
    renderCursor(position);
  }

  function jumpSwitch(direction) {
    var here = steps[position].step;
    var candidates = switchSteps.filter(function (s) {
      return direction > 0 ? s > here : s < here;
    });
    if (!candidates.length) {
      return;
    }
    var target = direction > 0 ? candidates[0] : candidates[candidates.length - 1];
    var at = indexOfStep(target);
    if (at >= 0) {
      show(at);
    }
  }

  slider.addEventListener("input", function () {
    show(Number(slider.value));
  });
  root.querySelectorAll("[data-move]").forEach(function (button) {
    button.addEventListener("click", function () {
      var move = button.dataset.move;
      if (move === "first") {
        show(0);
      } else if (move === "last") {
        show(steps.length - 1);
      } else if (move === "next-switch") {
        jumpSwitch(1);
      } else if (move === "prev-switch") {
        jumpSwitch(-1);
      } else {
        show(position + Number(move));
      }
    });
  });

  var KEYS = { ArrowLeft: -1, ArrowRight: 1, PageUp: -10, PageDown: 10 };
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    var typing = target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" ||
      target.tagName === "SELECT" || target.isContentEditable);
    if ((typing && target !== slider) || event.altKey || event.ctrlKey || event.metaKey) {
      return;
    }
    if (event.key in KEYS) {
      show(position + KEYS[event.key]);
    } else if (event.key === "Home") {
      show(0);
    } else if (event.key === "End") {
      show(steps.length - 1);
    } else {
      return;
    }
    event.preventDefault(); // the slider's own key handling would step a second time
  });

  $(".stl-chart svg").addEventListener("click", function (event) {
    var box = event.currentTarget.getBoundingClientRect();
    var scale = chart.viewWidth / box.width;
    var x = (event.clientX - box.left) * scale;
    var step = Math.floor(((x - chart.x0) / chart.width) * data.total_steps);
    var best = 0;
    for (var i = 0; i < steps.length; i++) {
      if (Math.abs(steps[i].step - step) < Math.abs(steps[best].step - step)) {
        best = i;
      }
    }
    show(best);
  });

  var hash = /#step=(\d+)/.exec(window.location.hash);
  show(hash ? Math.max(indexOfStep(Number(hash[1])), 0) : 0);
  root.classList.add("stl-ready");
})();

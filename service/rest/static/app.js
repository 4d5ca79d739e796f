/* rankboard dashboard: experiments list, A/B comparison table and metric charts.
 *
 * State lives in the URL query string (?experiment=&task=&phase=&baseline=&alpha=&sequential=),
 * so every view is a deep link. Data comes from the REST API with the read token
 * (token.js); the page refreshes every 5 s unless paused. Fields the service does not
 * send yet (intervals, p-values, verdicts) show as "–": the page degrades to point values.
 */
"use strict";

(function () {
  var REFRESH_MS = 5000;
  var POINT_BUDGET = 40000;  // history points per page load, over all series
  var STEP_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2500, 5e3, 1e4, 2e4,
    25e3, 5e4, 1e5, 2e5, 25e4, 5e5, 1e6, 2e6, 5e6, 1e7, 1e8, 1e9];  // steps are integers
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

  var state = {
    paused: false,
    timer: null,
    busy: false,
    again: false,
    charts: {},       // metric -> {plot, signature}
    refreshes: 0,     // completed refreshes (tests wait on it)
    lastCompare: null,
    lastHistories: null,
    lastError: null,
  };
  window.rankboard = state;

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (attrs[k] === null || attrs[k] === undefined) { return; }
        if (k === "class") { e.className = attrs[k]; } else { e.setAttribute(k, attrs[k]); }
      });
    }
    if (text !== undefined && text !== null) { e.textContent = text; }
    return e;
  }

  function params() { return new URLSearchParams(window.location.search); }

  function setParams(changes, push) {
    var p = params();
    Object.keys(changes).forEach(function (k) {
      if (changes[k] === null || changes[k] === undefined || changes[k] === "") { p.delete(k); }
      else { p.set(k, changes[k]); }
    });
    var url = window.location.pathname + (p.toString() ? "?" + p.toString() : "");
    if (push) { window.history.pushState(null, "", url); }
    else { window.history.replaceState(null, "", url); }
  }

  function color(i) {
    if (i < PALETTE.length) { return PALETTE[i]; }
    return "hsl(" + ((i * 137.508) % 360).toFixed(0) + ", 65%, 45%)";
  }

  function alphaColor(c, a) {
    if (c[0] === "#") {
      var n = parseInt(c.slice(1), 16);
      return "rgba(" + (n >> 16) + "," + ((n >> 8) & 255) + "," + (n & 255) + "," + a + ")";
    }
    return c.replace("hsl(", "hsla(").replace(")", ", " + a + ")");
  }

  function fmt(v) {
    if (v === null || v === undefined || typeof v !== "number" || !isFinite(v)) { return "–"; }
    var a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) { return v.toExponential(3); }
    if (Number.isInteger(v) && a >= 1000) { return String(v); }
    return v.toFixed(4);
  }

  function fmtInterval(iv) {
    if (!iv || iv.length !== 2) { return "–"; }
    return "[" + fmt(iv[0]) + ", " + fmt(iv[1]) + "]";
  }

  function fmtP(p) {
    if (p === null || p === undefined) { return "–"; }
    return p < 1e-4 ? "<0.0001" : p.toFixed(4);
  }

  function fmtCount(n) {
    return (n === null || n === undefined) ? "–" : Number(n).toLocaleString("en-US");
  }

  function pick(obj, key) { return obj && obj[key] !== undefined ? obj[key] : null; }

  async function getJSON(url) {
    var resp = await rankboardFetch(url);
    var body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (!resp.ok) {
      var detail = body && body.detail ? body.detail : "";
      if (typeof detail !== "string") { detail = JSON.stringify(detail); }
      var err = new Error(url.split("?")[0] + ": HTTP " + resp.status + (detail ? " — " + detail : ""));
      err.status = resp.status;
      throw err;
    }
    return body;
  }

  function showError(msg) {
    var e = $("error");
    if (msg) { e.textContent = msg; e.hidden = false; } else { e.hidden = true; e.textContent = ""; }
  }

  function setDataTime(extra) {
    var now = new Date();
    $("data-time").textContent = "data read " + now.toLocaleTimeString("en-GB") + (extra || "");
  }

  // --- experiments list ----------------------------------------------------------------
  async function renderList() {
    $("experiment-view").hidden = true;
    $("list-view").hidden = false;
    $("crumbs").textContent = "";
    document.title = "rankboard";
    var data = await getJSON("/v1/experiments");
    var body = $("experiments").tBodies[0];
    body.textContent = "";
    data.experiments.forEach(function (x) {
      var tr = el("tr", { "data-experiment": x.name });
      var td = el("td");
      var a = el("a", { href: "?experiment=" + encodeURIComponent(x.name), class: "exp-link" }, x.name);
      a.addEventListener("click", function (ev) {
        ev.preventDefault();
        setParams({ experiment: x.name, task: null, phase: null, baseline: null }, true);
        destroyCharts();
        refresh();
      });
      td.appendChild(a);
      tr.appendChild(td);
      tr.appendChild(el("td", null, x.arms.join(", ")));
      tr.appendChild(el("td", null, x.tasks.join(", ")));
      tr.appendChild(el("td", null, x.phases.join(", ")));
      tr.appendChild(el("td", { class: "num" }, fmtCount(x.samples)));
      tr.appendChild(el("td", null, x.updated_at ? new Date(x.updated_at * 1000).toLocaleString("en-GB") : "–"));
      body.appendChild(tr);
    });
    $("list-empty").hidden = data.experiments.length > 0;
    setDataTime("");
  }

  // --- experiment page -----------------------------------------------------------------
  function fillSelect(sel, values, chosen) {
    var same = sel.options.length === values.length &&
      values.every(function (v, i) { return sel.options[i].value === v; });
    if (!same) {
      sel.textContent = "";
      values.forEach(function (v) { sel.appendChild(el("option", { value: v }, v)); });
    }
    sel.value = chosen;
  }

  function choose(p, detail) {
    var runs = detail.runs;
    var tasks = Array.from(new Set(runs.map(function (r) { return r.task; }))).sort();
    var task = tasks.indexOf(p.get("task")) >= 0 ? p.get("task") : tasks[0];
    var phases = Array.from(new Set(runs.filter(function (r) { return r.task === task; })
      .map(function (r) { return r.phase; }))).sort();
    var phase = phases.indexOf(p.get("phase")) >= 0 ? p.get("phase")
      : (phases.indexOf("eval") >= 0 ? "eval" : phases[0]);
    var chosenRuns = runs.filter(function (r) { return r.task === task && r.phase === phase; });
    var arms = chosenRuns.map(function (r) { return r.arm; }).sort();
    var baseline = arms.indexOf(p.get("baseline")) >= 0 ? p.get("baseline")
      : (arms.indexOf("control") >= 0 ? "control" : arms[0]);
    var metrics = [];
    chosenRuns.forEach(function (r) {
      (r.metrics || []).forEach(function (m) { if (metrics.indexOf(m) < 0) { metrics.push(m); } });
    });
    return { tasks: tasks, task: task, phases: phases, phase: phase, arms: arms,
      baseline: baseline, metrics: metrics, runs: chosenRuns };
  }

  async function renderExperiment(name) {
    $("list-view").hidden = true;
    $("experiment-view").hidden = false;
    $("exp-title").textContent = name;
    document.title = name + " · rankboard";
    var crumbs = $("crumbs");
    crumbs.textContent = "";
    var back = el("a", { href: "/" }, "experiments");
    back.addEventListener("click", function (ev) {
      ev.preventDefault();
      window.history.pushState(null, "", "/");
      destroyCharts();
      refresh();
    });
    crumbs.appendChild(back);
    crumbs.appendChild(document.createTextNode(" / " + name));

    var p = params();
    var detail = await getJSON("/v1/experiments/" + encodeURIComponent(name));
    var c = choose(p, detail);
    fillSelect($("task"), c.tasks, c.task);
    fillSelect($("phase"), c.phases, c.phase);
    fillSelect($("baseline"), c.arms, c.baseline);
    var alpha = p.get("alpha") || "0.05";
    if (!Array.from($("alpha").options).some(function (o) { return o.value === alpha; })) {
      $("alpha").appendChild(el("option", { value: alpha }, alpha));
    }
    $("alpha").value = alpha;
    $("sequential").checked = p.get("sequential") === "true";

    var q = "task=" + encodeURIComponent(c.task) + "&phase=" + encodeURIComponent(c.phase);
    var cmpUrl = "/v1/experiments/" + encodeURIComponent(name) + "/compare?" + q +
      "&baseline=" + encodeURIComponent(c.baseline);
    if (p.get("alpha")) { cmpUrl += "&alpha=" + encodeURIComponent(alpha); }
    if (p.get("sequential") === "true") { cmpUrl += "&sequential=true"; }
    var nSeries = Math.max(1, c.arms.length * Math.max(1, c.metrics.length));
    var maxPoints = Math.max(20, Math.min(1000, Math.floor(POINT_BUDGET / nSeries)));
    var histUrl = "/v1/experiments/" + encodeURIComponent(name) + "/histories?" + q +
      "&max_points=" + maxPoints;

    // the table and the charts each draw as soon as their own data is there
    var cmpDone = getJSON(cmpUrl).then(function (cmp) {
      state.lastCompare = cmp;
      renderComparison(cmp, c);
      return null;
    }, function (err) {
      renderArmsOnly(c);
      return err.message;
    });
    var histDone = getJSON(histUrl).then(function (hist) {
      state.lastHistories = hist;
      renderCharts(hist, c);
      // navigation start -> first charts drawn (benchmarks/bench_dashboard.py reads it)
      if (state.firstDrawMs === undefined) { state.firstDrawMs = performance.now(); }
      return null;
    }, function (err) { return err.message; });
    var problems = (await Promise.all([cmpDone, histDone])).filter(Boolean);
    showError(problems.length ? problems.join("\n") : null);
    var last = detail.updated_at ? " · last batch " +
      new Date(detail.updated_at * 1000).toLocaleTimeString("en-GB") : "";
    setDataTime(last);
  }

  function renderArmsOnly(c) {
    var body = $("arms").tBodies[0];
    body.textContent = "";
    c.runs.forEach(function (r) {
      var tr = el("tr", { "data-arm": r.arm });
      tr.appendChild(el("td", null, r.arm));
      tr.appendChild(el("td", { class: "num" }, fmtCount(r.last_step)));
      tr.appendChild(el("td", { class: "num", "data-field": "samples" }, fmtCount(r.samples)));
      tr.appendChild(el("td", { class: "num" }, "–"));
      tr.appendChild(el("td", { class: "num" }, "–"));
      tr.appendChild(el("td", null, "–"));
      body.appendChild(tr);
    });
    $("comparison").tBodies[0].textContent = "";
  }

  function renderComparison(cmp, c) {
    var arms = Object.keys(cmp.arms).sort(function (a, b) {
      if (a === cmp.baseline) { return -1; }
      if (b === cmp.baseline) { return 1; }
      return a < b ? -1 : a > b ? 1 : 0;
    });
    var info = [];
    if (cmp.step !== undefined && cmp.step !== null && cmp.phase === "eval") { info.push("step " + cmp.step); }
    if (cmp.alpha !== undefined && cmp.alpha !== null) {
      info.push((100 * (1 - cmp.alpha)).toFixed(1).replace(/\.0$/, "") + " % intervals");
    }
    if (cmp.sequential) { info.push("sequential (always valid)"); }
    if (cmp.cluster !== undefined) { info.push("cluster: " + (cmp.cluster || "none (independent samples)")); }
    $("cmp-info").textContent = info.length ? "· " + info.join(" · ") : "";
    var note = $("note");
    if (cmp.note) { note.textContent = cmp.note; note.hidden = false; } else { note.hidden = true; }

    var ab = $("arms").tBodies[0];
    ab.textContent = "";
    arms.forEach(function (arm) {
      var a = cmp.arms[arm];
      var tr = el("tr", { "data-arm": arm, class: arm === cmp.baseline ? "baseline" : null });
      tr.appendChild(el("td", null, arm + (arm === cmp.baseline ? " (baseline)" : "")));
      tr.appendChild(el("td", { class: "num" }, fmtCount(a.step)));
      tr.appendChild(el("td", { class: "num", "data-field": "samples", "data-raw": a.samples }, fmtCount(a.samples)));
      tr.appendChild(el("td", { class: "num" }, fmtCount(pick(a, "positives"))));
      tr.appendChild(el("td", { class: "num" }, fmtCount(pick(a, "negatives"))));
      var pairing = "–";
      if (arm === cmp.baseline) { pairing = "baseline"; }
      else if (a.paired === true) {
        pairing = "paired" + (a.paired_samples ? " on " + fmtCount(a.paired_samples) + " samples" : "") +
          (a.pairing ? " (" + a.pairing + ")" : "");
      } else if (a.paired === false) {
        pairing = "independent" + (a.pairing ? " (" + a.pairing + ")" : "");
      }
      tr.appendChild(el("td", { "data-field": "pairing" }, pairing));
      ab.appendChild(tr);
    });

    var metrics = c.metrics.slice();
    arms.forEach(function (arm) {
      Object.keys(cmp.arms[arm].metrics || {}).forEach(function (m) {
        if (metrics.indexOf(m) < 0) { metrics.push(m); }
      });
    });
    var body = $("comparison").tBodies[0];
    body.textContent = "";
    metrics.forEach(function (m) {
      arms.forEach(function (arm, i) {
        var a = cmp.arms[arm];
        var isBase = arm === cmp.baseline;
        var tr = el("tr", { "data-metric": m, "data-arm": arm,
          class: (i === 0 ? "metric-first " : "") + (isBase ? "baseline" : "") });
        tr.appendChild(el("td", null, i === 0 ? m : ""));
        tr.appendChild(el("td", null, arm));
        var v = pick(a.metrics, m);
        tr.appendChild(el("td", { class: "num", "data-field": "value", "data-raw": JSON.stringify(v) }, fmt(v)));
        var iv = pick(a.intervals, m);
        tr.appendChild(el("td", { class: "iv", "data-field": "interval" }, fmtInterval(iv)));
        var d = isBase ? null : pick(a.delta, m);
        var rel = isBase ? null : pick(a.relative_delta, m);
        var dText = isBase ? "" : fmt(d);
        if (!isBase && d !== null && d > 0) { dText = "+" + dText; }
        if (!isBase && rel !== null && rel !== undefined && isFinite(rel)) {
          dText += " (" + (rel >= 0 ? "+" : "") + (100 * rel).toFixed(2) + " %)";
        }
        tr.appendChild(el("td", { class: "num", "data-field": "delta", "data-raw": JSON.stringify(d) }, dText));
        tr.appendChild(el("td", { class: "iv", "data-field": "delta_interval" },
          isBase ? "" : fmtInterval(pick(a.delta_intervals, m))));
        var pv = isBase ? null : pick(a.p_values, m);
        tr.appendChild(el("td", { class: "num", "data-field": "p", "data-raw": JSON.stringify(pv) }, isBase ? "" : fmtP(pv)));
        var td = el("td", { "data-field": "verdict" });
        var verdict = isBase ? null : pick(a.verdicts, m);
        if (verdict) { td.appendChild(el("span", { class: "verdict " + verdict }, verdict)); }
        else if (!isBase) { td.textContent = "–"; }
        tr.appendChild(td);
        tr.appendChild(el("td", { class: "muted", "data-field": "method" }, pick(a.methods, m) || ""));
        body.appendChild(tr);
      });
    });
  }

  // --- charts --------------------------------------------------------------------------
  function destroyCharts() {
    Object.keys(state.charts).forEach(function (m) { state.charts[m].plot.destroy(); });
    state.charts = {};
    $("charts").textContent = "";
  }

  function chartWidth() {
    var box = $("charts");
    var w = box.clientWidth || 900;
    var cols = Math.max(1, Math.floor((w + 18) / (460 + 18)));
    return Math.max(300, Math.floor((w - 18 * (cols - 1)) / cols) - 18);
  }

  function renderCharts(hist, c) {
    var byMetric = {};
    hist.series.forEach(function (s) {
      (byMetric[s.metric] = byMetric[s.metric] || []).push(s);
    });
    var metrics = c.metrics.filter(function (m) { return byMetric[m]; });
    Object.keys(byMetric).forEach(function (m) { if (metrics.indexOf(m) < 0) { metrics.push(m); } });
    var armIndex = {};
    c.arms.forEach(function (a, i) { armIndex[a] = i; });
    Object.keys(state.charts).forEach(function (m) {
      if (metrics.indexOf(m) < 0) {
        state.charts[m].plot.destroy();
        var box = document.querySelector('.chart[data-metric="' + CSS.escape(m) + '"]');
        if (box) { box.remove(); }
        delete state.charts[m];
      }
    });
    var container = $("charts");
    var width = chartWidth();  // once: reading layout per chart would force a reflow each
    metrics.forEach(function (m) {
      var list = byMetric[m].slice().sort(function (a, b) { return a.arm < b.arm ? -1 : a.arm > b.arm ? 1 : 0; });
      var tables = [];
      var series = [{ label: "step" }];
      var bands = [];
      var signature = [];
      list.forEach(function (s) {
        var col = color(armIndex[s.arm] !== undefined ? armIndex[s.arm] : tables.length);
        var hasBand = !!(s.low && s.high);
        signature.push(s.arm + (hasBand ? "+" : ""));
        var base = series.length;
        series.push({ label: s.arm, stroke: col, width: 2, spanGaps: true,
          value: hasBand ? bandFmt : valueFmt });
        if (hasBand) {
          var edge = { stroke: alphaColor(col, 0.35), width: 1, spanGaps: true, value: valueFmt,
            points: { show: false } };
          series.push(Object.assign({ label: s.arm + " low" }, edge));
          series.push(Object.assign({ label: s.arm + " high" }, edge));
          bands.push({ series: [base + 2, base + 1], fill: alphaColor(col, 0.15) });
          tables.push([s.steps, s.values, s.low, s.high]);
        } else {
          tables.push([s.steps, s.values]);
        }
      });
      var data = tables.length === 1 ? tables[0] : uPlot.join(tables);
      var key = signature.join("|");
      var entry = state.charts[m];
      if (entry && entry.signature === key) {
        entry.plot.setData(data);
        entry.arms = list.map(function (s) { return s.arm; });
        return;
      }
      if (entry) { entry.plot.destroy(); }
      var box = document.querySelector('.chart[data-metric="' + CSS.escape(m) + '"]');
      if (!box) {
        box = el("div", { class: "chart", "data-metric": m });
        box.appendChild(el("h3", null, m));
        container.appendChild(box);
      } else {
        Array.from(box.querySelectorAll(".uplot")).forEach(function (n) { n.remove(); });
      }
      var opts = {
        width: width,
        height: 240,
        scales: { x: { time: false } },
        axes: [{ label: c.phase === "train" ? "step (decayed)" : "eval step", incrs: STEP_INCRS }, { size: 60 }],
        series: series,
        bands: bands,
        legend: { live: true },
        cursor: { drag: { x: true, y: false } },
      };
      var plot = new uPlot(opts, data, box);
      // the band edges stay out of the legend: an arm's row shows "value [low, high]"
      var rows = plot.root.querySelectorAll(".u-legend .u-series");
      series.forEach(function (sr, i) {
        if (i > 0 && / (low|high)$/.test(sr.label) && rows[i]) { rows[i].style.display = "none"; }
      });
      state.charts[m] = { plot: plot, signature: key, arms: list.map(function (s) { return s.arm; }) };
    });
  }

  function valueFmt(u, v) { return v === null || v === undefined ? "–" : fmt(v); }

  function bandFmt(u, v, si, di) {
    if (v === null || v === undefined) { return "–"; }
    var lo = di === null || di === undefined ? null : u.data[si + 1][di];
    var hi = di === null || di === undefined ? null : u.data[si + 2][di];
    return fmt(v) + (lo !== null && lo !== undefined && hi !== null && hi !== undefined
      ? " [" + fmt(lo) + ", " + fmt(hi) + "]" : "");
  }

  // --- refresh loop --------------------------------------------------------------------
  async function refresh() {
    if (state.busy) { state.again = true; return; }
    state.busy = true;
    try {
      var name = params().get("experiment");
      if (name) { await renderExperiment(name); } else { await renderList(); }
      state.lastError = null;
    } catch (err) {
      state.lastError = String(err && err.message ? err.message : err);
      showError(state.lastError);
    } finally {
      state.busy = false;
      state.refreshes += 1;
    }
    if (state.again) { state.again = false; refresh(); }
  }

  function schedule() {
    if (state.timer) { clearInterval(state.timer); }
    state.timer = setInterval(function () { if (!state.paused) { refresh(); } }, REFRESH_MS);
  }

  function wire() {
    $("pause").addEventListener("click", function () {
      state.paused = !state.paused;
      $("pause").textContent = state.paused ? "Resume" : "Pause";
      $("pause").classList.toggle("paused", state.paused);
      if (!state.paused) { refresh(); }
    });
    ["task", "phase", "baseline", "alpha"].forEach(function (id) {
      $(id).addEventListener("change", function () {
        var ch = {};
        ch[id] = $(id).value;
        if (id === "task") { ch.phase = null; ch.baseline = null; }
        if (id === "phase") { ch.baseline = null; }
        setParams(ch, false);
        if (id === "task" || id === "phase") { destroyCharts(); }
        refresh();
      });
    });
    $("sequential").addEventListener("change", function () {
      setParams({ sequential: $("sequential").checked ? "true" : null }, false);
      refresh();
    });
    window.addEventListener("popstate", function () { destroyCharts(); refresh(); });
    window.addEventListener("resize", function () {
      var w = chartWidth();
      Object.keys(state.charts).forEach(function (m) {
        state.charts[m].plot.setSize({ width: w, height: 240 });
      });
    });
  }

  wire();
  refresh();
  schedule();
})();

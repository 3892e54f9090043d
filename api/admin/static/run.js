/* Run detail: live stage timeline and progress from the SSE event stream, event log, metric charts,
   checkpoints, configuration, cancel / resume. Everything user-supplied is set as text. */
(function () {
  "use strict";
  var M = window.MBPO, el = M.el, C = window.MBPOCharts;
  var runId = document.body.dataset.runId;
  var base = "/v1/runs/" + encodeURIComponent(runId);
  var $ = function (id) { return document.getElementById(id); };
  var bar = $("run-progress");
  var log = $("event-log");
  var seen = {};  // event seq -> true (no duplicates across reconnects)
  var lastSeq = 0;
  var run = null;
  var source = null;
  var metricsTimer = null, runTimer = null;
  // The stream names each event by its type; EventSource needs a listener per name.
  var KNOWN_EVENTS = ["message", "run_queued", "run_started", "run_resumed", "run_requeued", "stage_started",
    "stage_progress", "stage_completed", "train_step", "checkpoint_saved", "cancel_requested", "run_succeeded",
    "run_failed", "run_cancelled", "run_finished", "mining_summary", "eval_report", "metrics", "progress"];
  var TERMINAL = ["succeeded", "failed", "cancelled"];

  function renderTimeline(r) {
    var list = M.clear($("run-timeline"));
    var stages = M.STAGES;
    var current = stages.indexOf(r.stage);
    var sp = r.stage_progress || {};
    stages.forEach(function (stage, i) {
      var frac = M.isNum(sp[stage]) ? sp[stage] : (r.status === "succeeded" || i < current ? 1 : 0);
      var state = "pending";
      if (r.status === "succeeded" || i < current || frac >= 1) state = "done";
      if (i === current && r.status !== "succeeded") state = (r.status === "failed" ? "failed" : (M.isActive(r.status) ? "active" : "stopped"));
      var fill = el("div");
      fill.style.width = (Math.max(0, Math.min(1, frac)) * 100).toFixed(1) + "%";
      list.appendChild(el("li", { class: state, dataset: { stage: stage } },
        el("span", { class: "stage-name", text: stage }),
        el("span", { class: "stage-pct", text: state === "pending" ? "waiting" : M.pct(frac) }),
        el("div", { class: "stage-bar" }, fill)));
    });
    var lastFill = el("div");
    if (TERMINAL.indexOf(r.status) >= 0) lastFill.style.width = "100%";
    var last = el("li", { class: r.status === "succeeded" ? "done" : "pending", dataset: { stage: "done" } },
      el("span", { class: "stage-name", text: TERMINAL.indexOf(r.status) >= 0 ? r.status : "succeeded" }),
      el("span", { class: "stage-pct", text: r.finished_at ? M.when(r.finished_at) : "" }),
      el("div", { class: "stage-bar" }, lastFill));
    if (r.status === "failed") last.className = "failed";
    list.appendChild(last);
  }

  function renderRun(r) {
    run = r;
    document.title = (r.name || r.id) + " · MBPO admin";
    $("run-name").textContent = r.name || r.id;
    var status = $("run-status");
    status.textContent = r.status;
    status.className = "badge badge-" + String(r.status).replace(/[^a-z_]/g, "");
    $("run-stage").textContent = r.stage || "–";
    $("run-attempt").textContent = M.isNum(r.attempt) ? String(r.attempt) + (M.isNum(r.max_attempts) ? " of " + r.max_attempts : "") : "–";
    $("run-eta").textContent = M.isActive(r.status) ? M.duration(r.eta_seconds) : "–";
    if ($("run-model").dataset.id !== r.base_model_id) {
      $("run-model").dataset.id = r.base_model_id;
      $("run-model").textContent = r.base_model_id || "–";
      M.api("/v1/models/" + encodeURIComponent(r.base_model_id)).then(function (m) {
        $("run-model").textContent = m.name + " (" + m.family + ")";
        $("run-model").title = r.base_model_id;
      }).catch(function () {});
    }
    M.setProgress(bar, r.progress, r.status);
    renderTimeline(r);
    var error = r.error || (r.error_code ? { code: r.error_code, message: r.error_message } : null);
    var box = $("run-error");
    if (error && (error.message || error.code)) {
      box.textContent = (error.code ? error.code + ": " : "") + (error.message || "");
      box.hidden = false;
    } else {
      box.hidden = true;
    }
    $("btn-cancel").hidden = !(M.isActive(r.status) && r.status !== "cancelling");
    $("btn-resume").hidden = !(r.status === "failed" || r.status === "cancelled");
    if (r.config && $("run-config").dataset.filled !== "1") {
      $("run-config").textContent = JSON.stringify(r.config, null, 2);
      $("run-config").dataset.filled = "1";
    }
    if (!M.isActive(r.status)) {
      $("run-live").textContent = "finished";
      if (source) {
        // The run ended before the stream delivered its last events: read them instead.
        source.close();
        source = null;
        catchUp();
      }
    }
  }

  function catchUp() {
    return M.api(base + "/events?after=" + lastSeq).then(function (body) {
      (Array.isArray(body) ? body : (body.data || [])).forEach(addEvent);
    }).catch(function () {});
  }

  function loadRun() {
    return M.api(base).then(renderRun).catch(function (err) {
      var box = $("run-error");
      box.textContent = err.status === 404 ? "No such run (or not yours)." : err.message;
      box.hidden = false;
    });
  }
  var refreshRun = M.debounce(loadRun, 250);

  function addEvent(ev) {
    if (!ev || !M.isNum(ev.seq) || seen[ev.seq]) return;
    seen[ev.seq] = true;
    lastSeq = Math.max(lastSeq, ev.seq);
    var item = el("li", { class: "level-" + String(ev.level || "info").replace(/[^a-z]/g, ""), dataset: { seq: String(ev.seq) } },
      el("span", { class: "ev-time", text: M.clock(ev.created_at) }),
      el("span", { class: "ev-type", text: ev.type || "" }),
      el("span", { class: "ev-msg", text: ev.message || (ev.stage ? ev.stage : "") }));
    var stick = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    log.appendChild(item);
    while (log.children.length > 500) log.removeChild(log.firstChild);
    if (stick) log.scrollTop = log.scrollHeight;
    applyEvent(ev);
  }

  /* Fast path: progress events move the bar at once; the run is re-read for the full picture. */
  function applyEvent(ev) {
    var data = ev.data || {};
    if (run && M.isNum(data.progress)) M.setProgress(bar, data.progress, run.status);
    refreshRun();
    if (ev.type && /metric|progress|step|checkpoint/.test(ev.type)) scheduleMetrics();
    if (ev.type && /succeeded|failed|cancelled/.test(ev.type)) {
      loadRun();
      loadMetrics();
      loadCheckpoints();
    }
  }

  function onMessage(msg) {
    if (!msg.data) return;
    var ev;
    try { ev = JSON.parse(msg.data); } catch (e) { return; }
    if (ev && !M.isNum(ev.seq) && msg.lastEventId) ev.seq = Number(msg.lastEventId);
    addEvent(ev);
  }

  function connect() {
    if (!window.EventSource) { $("run-live").textContent = "polling"; return; }
    source = new EventSource(base + "/events/stream");
    KNOWN_EVENTS.forEach(function (name) { source.addEventListener(name, onMessage); });
    source.onopen = function () { $("run-live").textContent = "live"; };
    source.onerror = function () {
      if (run && !M.isActive(run.status)) {
        source.close();
        source = null;
        $("run-live").textContent = "finished";
      } else {
        $("run-live").textContent = "reconnecting…";
      }
    };
  }

  // --- metrics ----------------------------------------------------------------------------------

  /* Accepts {series: {name: [{step, value}]}} / {name: [{step, value}]} / {name: {steps, values}}. */
  function normaliseMetrics(body) {
    var src = body && (body.series || body.metrics || body.data || body);
    var out = {};
    if (Array.isArray(src)) {
      src.forEach(function (p) {
        if (p && p.name !== undefined) (out[p.name] = out[p.name] || []).push([p.step, p.value]);
      });
      return out;
    }
    Object.keys(src || {}).forEach(function (name) {
      var v = src[name];
      if (Array.isArray(v)) {
        out[name] = v.map(function (p) { return Array.isArray(p) ? p : [p.step, p.value]; });
      } else if (v && Array.isArray(v.steps) && Array.isArray(v.values)) {
        out[name] = v.steps.map(function (s, i) { return [s, v.values[i]]; });
      } else if (v && Array.isArray(v.points)) {
        out[name] = v.points.map(function (p) { return Array.isArray(p) ? p : [p.step, p.value]; });
      }
    });
    Object.keys(out).forEach(function (k) {
      out[k] = out[k].filter(function (p) { return M.isNum(p[0]) && M.isNum(p[1]); });
      if (!out[k].length) delete out[k];
    });
    return out;
  }

  var GROUPS = [
    { title: "Reward per source", test: function (n) { return /reward/.test(n) && !/std/.test(n); } },
    { title: "Loss", test: function (n) { return n === "loss" || /(^|_)loss$/.test(n); } },
    { title: "KL to reference", test: function (n) { return /(^|_)kl($|_)/.test(n); } },
    { title: "Clip ratio", test: function (n) { return /clip/.test(n); } },
    { title: "IIG", test: function (n) { return /iig/.test(n); } }
  ];

  function renderCharts(series) {
    var box = M.clear($("run-charts"));
    var names = Object.keys(series).sort();
    if (!names.length) { box.appendChild(el("p", { class: "muted", text: "No metrics yet." })); return; }
    var used = {};
    GROUPS.forEach(function (g) {
      var members = names.filter(function (n) { return !used[n] && g.test(n); });
      if (!members.length) return;
      members.forEach(function (n) { used[n] = true; });
      box.appendChild(C.lineChart(g.title, members.map(function (n) { return { name: n, points: series[n] }; }), { legend: members.length > 1 }));
    });
    names.filter(function (n) { return !used[n] && !/std$/.test(n); }).forEach(function (n) {
      box.appendChild(C.lineChart(n, [{ name: n, points: series[n] }]));
    });
  }

  function loadMetrics() {
    return M.api(base + "/metrics").then(function (body) { renderCharts(normaliseMetrics(body)); }).catch(function () {});
  }
  function scheduleMetrics() {
    if (metricsTimer) return;
    metricsTimer = setTimeout(function () { metricsTimer = null; loadMetrics(); }, 1500);
  }

  // --- checkpoints ------------------------------------------------------------------------------

  function scoreSummary(scores) {
    if (!scores || typeof scores !== "object") return "–";
    var parts = [];
    Object.keys(scores).forEach(function (split) {
      var s = scores[split];
      if (s && typeof s === "object") {
        var main = M.isNum(s.f1) ? ["F1", s.f1] : (M.isNum(s.accuracy) ? ["acc", s.accuracy] : null);
        if (main) parts.push(split + " " + main[0] + " " + M.num(main[1], 3));
      } else if (M.isNum(s)) {
        parts.push(split + " " + M.num(s, 3));
      }
    });
    return parts.length ? parts.join(" · ") : "–";
  }

  function loadCheckpoints() {
    return M.api(base + "/checkpoints").then(function (body) {
      var list = Array.isArray(body) ? body : (body.data || body.checkpoints || []);
      var tbody = M.clear($("ckpt-body"));
      if (!list.length) {
        tbody.appendChild(el("tr", {}, el("td", { colspan: "4", class: "muted", text: "No checkpoints yet." })));
        return;
      }
      list.forEach(function (c) {
        var metrics = c.metrics || {};
        var metricText = Object.keys(metrics).filter(function (k) { return /^(loss|reward_mean|kl)$/.test(k); })
          .map(function (k) { return k + " " + M.num(metrics[k]); }).join(" · ");
        var href = c.download_url || (base + "/checkpoints/" + encodeURIComponent(c.step) + "/download");
        tbody.appendChild(el("tr", {},
          el("td", { class: "mono", text: String(c.step) }),
          el("td", { text: M.when(c.created_at) }),
          el("td", {}, c.eval_scores || c.scores ? el("div", { text: scoreSummary(c.eval_scores || c.scores) }) : null,
            metricText ? el("div", { class: "muted small", text: metricText }) : null),
          el("td", {}, c.complete === false ? el("span", { class: "muted small", text: "writing…" }) :
            el("a", { class: "btn btn-small", href: href, download: "", text: "Download" }))));
      });
    }).catch(function () {});
  }

  // --- actions ----------------------------------------------------------------------------------

  function action(name, button) {
    button.disabled = true;
    M.api(base + "/" + name, { method: "POST" }).then(function (r) {
      if (r && r.id) renderRun(r); else loadRun();
      if (name === "resume" && !source) connect();
    }).catch(function (err) {
      var box = $("run-error");
      box.textContent = err.message;
      box.hidden = false;
    }).then(function () { button.disabled = false; });
  }
  $("btn-cancel").addEventListener("click", function () {
    if (window.confirm("Cancel this run? It stops within two steps and can be resumed later.")) action("cancel", this);
  });
  $("btn-resume").addEventListener("click", function () { action("resume", this); });

  loadRun().then(function () {
    if (run && M.isActive(run.status)) connect();
    else {
      $("run-live").textContent = run ? "finished" : "–";
      catchUp();
    }
  });
  loadMetrics();
  loadCheckpoints();
  // While the run is active, re-read it now and then even if an event was missed.
  runTimer = setInterval(function () {
    if (run && M.isActive(run.status)) { loadRun(); loadCheckpoints(); }
    else if (run) clearInterval(runTimer);
  }, 5000);
})();

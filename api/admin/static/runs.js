/* Runs list: newest first, filters, live progress bars (polls /v1/runs while any run is active). */
(function () {
  "use strict";
  var M = window.MBPO, el = M.el;
  var body = document.getElementById("runs-body");
  var statusSel = document.getElementById("filter-status");
  var query = document.getElementById("filter-q");
  var updated = document.getElementById("runs-updated");
  var more = document.getElementById("runs-more");
  var rows = {};  // run id -> {tr, bar, ...}
  var runs = [];
  var cursor = null;
  var pages = 1;
  var timer = null;

  var params = new URLSearchParams(window.location.search);
  if (params.get("status")) statusSel.value = params.get("status");
  if (params.get("q")) query.value = params.get("q");

  function listUrl(after) {
    var q = new URLSearchParams({ limit: "50" });
    var status = statusSel.value;
    if (status === "active") M.ACTIVE.forEach(function (st) { q.append("status", st); });
    else if (status) q.set("status", status);
    if (after) q.set("cursor", after);
    return "/v1/runs?" + q.toString();
  }

  function visible(run) {
    if (statusSel.value === "active" && !M.isActive(run.status)) return false;
    var text = query.value.trim().toLowerCase();
    return !text || String(run.name || "").toLowerCase().indexOf(text) >= 0 || run.id.toLowerCase().indexOf(text) >= 0;
  }

  function makeRow(run) {
    var bar = M.progressBar();
    var pctText = el("span", { class: "pct" });
    var tr = el("tr", { dataset: { runId: run.id } },
      el("td", {}, el("a", { class: "run-name", href: "/admin/runs/" + encodeURIComponent(run.id) }), el("div", { class: "mono muted small", text: run.id })),
      el("td", { class: "status-cell" }),
      el("td", { class: "stage-cell" }),
      el("td", {}, el("div", { class: "progress-row" }, bar, pctText)),
      el("td", { class: "created-cell" }));
    return { tr: tr, bar: bar, pct: pctText };
  }

  function fill(row, run) {
    row.tr.querySelector(".run-name").textContent = run.name || run.id;
    M.clear(row.tr.querySelector(".status-cell")).appendChild(M.badge(run.status));
    row.tr.querySelector(".stage-cell").textContent = run.stage || "–";
    var progress = run.status === "succeeded" ? 1 : run.progress;
    M.setProgress(row.bar, progress, run.status);
    row.pct.textContent = M.pct(M.isNum(progress) ? progress : 0);
    row.tr.querySelector(".created-cell").textContent = M.when(run.created_at);
    row.tr.dataset.status = run.status;
  }

  function render() {
    var shown = runs.filter(visible);
    M.clear(body);
    if (!shown.length) {
      body.appendChild(el("tr", {}, el("td", { colspan: "5", class: "muted" },
        runs.length ? "No run matches the filters." : "No runs yet. ", runs.length ? null : el("a", { href: "/admin/runs/new", text: "Launch one." }))));
      return;
    }
    shown.forEach(function (run) {
      var row = rows[run.id] || (rows[run.id] = makeRow(run));
      fill(row, run);
      body.appendChild(row.tr);
    });
  }

  function load() {
    var collected = [];
    var fetchPage = function (after, left) {
      return M.api(listUrl(after)).then(function (page) {
        collected = collected.concat(page.data || []);
        cursor = page.next_cursor || null;
        if (cursor && left > 1) return fetchPage(cursor, left - 1);
        return null;
      });
    };
    return fetchPage(null, pages).then(function () {
      runs = collected;
      more.hidden = !cursor;
      render();
      updated.textContent = "Updated " + new Date().toTimeString().slice(0, 8);
      schedule(runs.some(function (r) { return M.isActive(r.status); }) ? 1500 : 8000);
    }).catch(function (err) {
      updated.textContent = "Could not refresh: " + err.message;
      schedule(5000);
    });
  }

  function schedule(ms) {
    clearTimeout(timer);
    timer = setTimeout(load, ms);
  }

  function syncUrl() {
    var q = new URLSearchParams();
    if (statusSel.value) q.set("status", statusSel.value);
    if (query.value.trim()) q.set("q", query.value.trim());
    var s = q.toString();
    window.history.replaceState(null, "", window.location.pathname + (s ? "?" + s : ""));
  }

  statusSel.addEventListener("change", function () { syncUrl(); pages = 1; load(); });
  query.addEventListener("input", M.debounce(function () { syncUrl(); render(); }, 150));
  document.getElementById("run-filters").addEventListener("submit", function (e) { e.preventDefault(); });
  more.addEventListener("click", function () { pages += 1; load(); });
  load();
})();

/* Scorecard: base vs aligned on every evaluation split, as a table and as bar charts; then each
   benchmark split's own metric tables (scores.benchmarks, docs/benchmarks.md). */
(function () {
  "use strict";
  var M = window.MBPO, el = M.el, C = window.MBPOCharts;
  var runId = document.body.dataset.runId;
  var METRICS = [
    ["accuracy", "Accuracy", true], ["f1", "F1", true], ["precision", "Precision", true], ["recall", "Recall", true],
    ["yes_ratio", "Yes ratio", null], ["iig_mean", "IIG (mean)", true], ["unparsable_rate", "Unparsable", false],
    ["attack_success_rate", "Attack success", false]
  ];
  var SPLIT_ORDER = ["pope_random", "pope_popular", "pope_adversarial"];

  function splitOrder(a, b) {
    var ia = SPLIT_ORDER.indexOf(a), ib = SPLIT_ORDER.indexOf(b);
    if (ia < 0) ia = 99;
    if (ib < 0) ib = 99;
    return ia - ib || (a < b ? -1 : a > b ? 1 : 0);
  }

  function signed(v) { return (v > 0 ? "+" : "") + M.num(v, 3); }

  /* aligned - base with its paired 95% interval (significance, mbpo_core/evaluation/stats.py).
     Coloured only when the interval excludes 0; otherwise "no significant change". */
  function deltaCell(b, a, higherIsBetter, interval) {
    if (!M.isNum(b) || !M.isNum(a)) return el("td", { class: "num muted", text: "–" });
    var d = a - b;
    if (!interval) {
      return el("td", { class: "num muted", title: "no interval recorded for this run", text: signed(d) });
    }
    var range = "[" + signed(interval.low) + ", " + signed(interval.high) + "]";
    var cls = "num";
    var verdict;
    if (!interval.significant) {
      cls += " muted";
      verdict = el("div", { class: "small", text: "no significant change" });
    } else if (higherIsBetter !== null) {
      cls += (d > 0) === higherIsBetter ? " delta-up" : " delta-down";
    }
    return el("td", { class: cls, title: Math.round((interval.level || 0.95) * 100) + "% paired bootstrap interval " + range },
      signed(d), el("div", { class: "small muted mono", text: range }), verdict || null);
  }

  /* One table per benchmark split: a row per (table row, metric) with base, aligned and Δ. The
     metrics are the benchmark's reference script's; no interval is computed for them. */
  function renderBenchmarks(wrap, benchmarks) {
    Object.keys(benchmarks).sort().forEach(function (split) {
      var entry = benchmarks[split] || {}, base = entry.base || {}, aligned = entry.aligned || {};
      var rows = entry.rows || Object.keys(base).concat(Object.keys(aligned).filter(function (r) { return !(r in base); }));
      var tbody = el("tbody");
      rows.forEach(function (row) {
        var b = base[row] || {}, a = aligned[row] || {};
        var metrics = (entry.metrics || Object.keys(b).concat(Object.keys(a).filter(function (m) { return !(m in b); })))
          .filter(function (m) { return m !== "n" && (m in b || m in a); });
        metrics.forEach(function (metric, i) {
          var d = M.isNum(b[metric]) && M.isNum(a[metric]) ? a[metric] - b[metric] : null;
          tbody.appendChild(el("tr", { "data-benchmark-split": split, "data-row": row, "data-metric": metric },
            i === 0 ? el("td", { rowspan: String(metrics.length), class: "mono" }, row,
              M.isNum(b.n) ? el("div", { class: "muted small", text: "n = " + b.n }) : null) : null,
            el("td", { class: "mono", text: metric }),
            el("td", { class: "num", text: M.num(b[metric], 3) }),
            el("td", { class: "num", text: M.num(a[metric], 3) }),
            el("td", { class: "num muted", title: "the benchmark's own metric: no interval computed", text: d === null ? "–" : signed(d) })));
        });
      });
      var head = el("tr", {}, el("th", { text: "Row" }), el("th", { text: "Metric" }), el("th", { class: "num", text: "Base" }),
        el("th", { class: "num", text: "Aligned" }), el("th", { class: "num", text: "Δ" }));
      wrap.appendChild(el("h2", { text: split + " · " + (entry.benchmark || "benchmark") + (M.isNum(entry.items) ? " (" + entry.items + " items)" : "") }));
      wrap.appendChild(el("table", { class: "table compact benchmark-table", "data-benchmark": entry.benchmark || "" }, el("thead", {}, head), tbody));
    });
    if (Object.keys(benchmarks).length) {
      wrap.appendChild(el("p", { class: "muted small", text: "Benchmark splits are scored by the benchmark's own scorer, as mbpo eval benchmark scores them (docs/benchmarks.md); Δ = aligned − base, without an interval." }));
    }
  }

  function render(scores) {
    var base = scores.base || {}, aligned = scores.aligned || {}, significance = scores.significance || {};
    var benchmarks = scores.benchmarks || {};
    var splits = Object.keys(base).concat(Object.keys(aligned).filter(function (s) { return !(s in base); })).sort(splitOrder);
    var wrap = M.clear(document.getElementById("score-table-wrap"));
    var chart = M.clear(document.getElementById("score-chart"));
    if (!splits.length) {
      if (Object.keys(benchmarks).length) {
        renderBenchmarks(wrap, benchmarks);
      } else {
        wrap.appendChild(el("p", { class: "muted", text: "No evaluation scores yet: they appear when the run has finished its evaluation stage." }));
      }
      return;
    }
    var used = METRICS.filter(function (m) {
      return splits.some(function (s) { return M.isNum((base[s] || {})[m[0]]) || M.isNum((aligned[s] || {})[m[0]]); });
    });
    var head = el("tr", {}, el("th", { text: "Split" }), el("th", { text: "Metric" }), el("th", { class: "num", text: "Base" }),
      el("th", { class: "num", text: "Aligned" }), el("th", { class: "num", text: "Δ" }));
    var tbody = el("tbody");
    splits.forEach(function (split) {
      var b = base[split] || {}, a = aligned[split] || {}, sig = significance[split] || {};
      var intervals = sig.intervals || {};
      var test = sig.mcnemar;
      var rows = used.filter(function (m) { return M.isNum(b[m[0]]) || M.isNum(a[m[0]]); });
      rows.forEach(function (m, i) {
        tbody.appendChild(el("tr", { "data-split": split, "data-metric": m[0] },
          i === 0 ? el("td", { rowspan: String(rows.length), class: "mono" }, split,
            M.isNum(b.n) ? el("div", { class: "muted small", text: "n = " + b.n }) : null,
            test ? el("div", { class: "muted small", title: "McNemar's exact test on accuracy: questions only base / only aligned got right",
              text: "McNemar p = " + M.num(test.p_value, 3) + " (" + test.base_only + " / " + test.aligned_only + ")" }) : null) : null,
          el("td", { text: m[1] }),
          el("td", { class: "num", text: M.num(b[m[0]], 3) }),
          el("td", { class: "num", text: M.num(a[m[0]], 3) }),
          deltaCell(b[m[0]], a[m[0]], m[2], intervals[m[0]])));
      });
    });
    wrap.appendChild(el("table", { class: "table compact", id: "score-table" }, el("thead", {}, head), tbody));
    wrap.appendChild(el("p", { class: "muted small", text: Object.keys(significance).length
      ? "Δ = aligned − base on the same questions, with its 95% paired bootstrap interval (questions resampled; F1 and the other rates recomputed on each resample). A change is coloured only when its interval excludes 0."
      : "This run recorded no intervals (it predates them): the changes are shown without a verdict." }));
    renderBenchmarks(wrap, benchmarks);

    var main = used.some(function (m) { return m[0] === "f1"; }) ? "f1" : "accuracy";
    var label = main === "f1" ? "F1" : "Accuracy";
    var groups = splits.map(function (s) {
      return { label: s.replace(/^pope_/, "POPE "), values: [(base[s] || {})[main], (aligned[s] || {})[main]] };
    });
    chart.appendChild(C.barChart(label + " per split (higher is better)", groups, ["base", "aligned"], { max: 1 }));
    if (used.some(function (m) { return m[0] === "iig_mean"; })) {
      var iig = splits.map(function (s) {
        return { label: s.replace(/^pope_/, "POPE "), values: [(base[s] || {}).iig_mean, (aligned[s] || {}).iig_mean] };
      });
      chart.appendChild(C.barChart("Mean IIG per split (modality balance: higher = looks more)", iig, ["base", "aligned"]));
    }
  }

  M.api("/v1/runs/" + encodeURIComponent(runId)).then(function (r) {
    document.querySelector("h1").textContent = "Scorecard: " + (r.name || r.id);
    var scores = r.scores || (r.results && r.results.evaluating) || {};
    render(scores);
  }).catch(function (err) {
    M.clear(document.getElementById("score-table-wrap")).appendChild(el("p", { class: "alert alert-error", text: err.message }));
  });
})();

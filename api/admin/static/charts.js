/* Inline-SVG charts drawn by our own code: line charts over training steps and grouped bar charts
   for the scorecard. Exposed as window.MBPOCharts. */
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var PALETTE = ["#3b4ccc", "#e0663a", "#1f8a4c", "#a23bcc", "#c9a400", "#1b8fb5", "#c23060", "#6b7280"];

  function svg(tag, attrs, text) {
    var node = document.createElementNS(NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function niceTicks(min, max, count) {
    if (min === max) { min -= 1; max += 1; }
    var span = max - min;
    var step = Math.pow(10, Math.floor(Math.log10(span / count)));
    var err = (count * step) / span;
    if (err <= 0.15) step *= 10; else if (err <= 0.35) step *= 5; else if (err <= 0.75) step *= 2;
    var ticks = [];
    for (var v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) ticks.push(+v.toFixed(12));
    return ticks;
  }

  function fmt(v) {
    var a = Math.abs(v);
    if (a === 0) return "0";
    if (a >= 1e4 || a < 1e-3) return v.toExponential(1);
    if (a >= 100) return v.toFixed(0);
    if (a >= 1) return v.toFixed(2).replace(/\.?0+$/, "");
    return v.toPrecision(2);
  }

  function legend(series) {
    var box = document.createElement("div");
    box.className = "legend";
    series.forEach(function (s, i) {
      var item = document.createElement("span");
      var sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = s.color || PALETTE[i % PALETTE.length];
      item.appendChild(sw);
      item.appendChild(document.createTextNode(s.name));
      box.appendChild(item);
    });
    return box;
  }

  /* series: [{name, points: [[step, value], ...]}] */
  function lineChart(title, series, opts) {
    opts = opts || {};
    var W = opts.width || 420, H = opts.height || 220, L = 46, R = 12, T = 10, B = 26;
    var xs = [], ys = [];
    series.forEach(function (s) { s.points.forEach(function (p) { xs.push(p[0]); ys.push(p[1]); }); });
    var wrap = document.createElement("figure");
    wrap.className = "chart";
    wrap.style.margin = "0";
    var h = document.createElement("h3");
    h.textContent = title;
    wrap.appendChild(h);
    var root = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": title });
    wrap.appendChild(root);
    if (!xs.length) return wrap;
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { var pad = Math.abs(y0) * 0.1 || 1; y0 -= pad; y1 += pad; }
    var yt = niceTicks(y0, y1, 4);
    y0 = Math.min(y0, yt[0]); y1 = Math.max(y1, yt[yt.length - 1]);
    if (y0 === y1) { y0 -= 1; y1 += 1; }
    var sx = function (v) { return L + ((v - x0) / (x1 - x0)) * (W - L - R); };
    var sy = function (v) { return T + (1 - (v - y0) / (y1 - y0)) * (H - T - B); };
    yt.forEach(function (t) {
      root.appendChild(svg("line", { class: "grid", x1: L, x2: W - R, y1: sy(t), y2: sy(t) }));
      root.appendChild(svg("text", { class: "tick", x: L - 6, y: sy(t) + 3, "text-anchor": "end" }, fmt(t)));
    });
    niceTicks(x0, x1, 5).forEach(function (t) {
      if (t < x0 || t > x1) return;
      root.appendChild(svg("text", { class: "tick", x: sx(t), y: H - 8, "text-anchor": "middle" }, fmt(t)));
    });
    root.appendChild(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
    series.forEach(function (s, i) {
      var color = s.color || PALETTE[i % PALETTE.length];
      var pts = s.points.slice().sort(function (a, b) { return a[0] - b[0]; });
      if (pts.length === 1) {
        root.appendChild(svg("circle", { cx: sx(pts[0][0]), cy: sy(pts[0][1]), r: 3, fill: color }));
      } else {
        var d = pts.map(function (p, j) { return (j ? "L" : "M") + sx(p[0]).toFixed(1) + " " + sy(p[1]).toFixed(1); }).join(" ");
        root.appendChild(svg("path", { class: "series", d: d, stroke: color }));
      }
      var last = pts[pts.length - 1];
      var tip = svg("circle", { cx: sx(last[0]), cy: sy(last[1]), r: 2.5, fill: color });
      tip.appendChild(svg("title", {}, s.name + " @ " + last[0] + ": " + fmt(last[1])));
      root.appendChild(tip);
    });
    if (series.length > 1 || opts.legend) wrap.appendChild(legend(series));
    return wrap;
  }

  /* groups: [{label, values: [v_series0, v_series1, ...]}], names: series names */
  function barChart(title, groups, names, opts) {
    opts = opts || {};
    var per = names.length;
    var W = Math.max(opts.width || 760, groups.length * (per * 22 + 26) + 60), H = opts.height || 280;
    var L = 44, R = 10, T = 18, B = 58;
    var wrap = document.createElement("figure");
    wrap.className = "chart";
    wrap.style.margin = "0";
    if (title) {
      var h = document.createElement("h3");
      h.textContent = title;
      wrap.appendChild(h);
    }
    var root = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": title || "bar chart" });
    wrap.appendChild(root);
    var vals = [];
    groups.forEach(function (g) { g.values.forEach(function (v) { if (typeof v === "number" && isFinite(v)) vals.push(v); }); });
    var lo = Math.min(0, Math.min.apply(null, vals.length ? vals : [0]));
    var hi = Math.max(opts.max || 0, Math.max.apply(null, vals.length ? vals : [1]));
    var ticks = niceTicks(lo, hi, 4);
    lo = Math.min(lo, ticks[0]); hi = Math.max(hi, ticks[ticks.length - 1]);
    var sy = function (v) { return T + (1 - (v - lo) / (hi - lo)) * (H - T - B); };
    ticks.forEach(function (t) {
      root.appendChild(svg("line", { class: "grid", x1: L, x2: W - R, y1: sy(t), y2: sy(t) }));
      root.appendChild(svg("text", { class: "tick", x: L - 6, y: sy(t) + 3, "text-anchor": "end" }, fmt(t)));
    });
    var slot = (W - L - R) / Math.max(groups.length, 1);
    var bw = Math.min(26, (slot - 14) / per);
    groups.forEach(function (g, gi) {
      var start = L + gi * slot + (slot - bw * per) / 2;
      g.values.forEach(function (v, si) {
        if (typeof v !== "number" || !isFinite(v)) return;
        var y = sy(Math.max(v, 0)), y0 = sy(Math.min(v, 0));
        var rect = svg("rect", { x: start + si * bw, y: y, width: bw - 2, height: Math.max(1, y0 - y), rx: 2,
          fill: PALETTE[si % PALETTE.length] });
        rect.appendChild(svg("title", {}, g.label + " · " + names[si] + ": " + fmt(v)));
        root.appendChild(rect);
        if (per <= 3) root.appendChild(svg("text", { class: "bar-label", x: start + si * bw + (bw - 2) / 2, y: y - 3, "text-anchor": "middle" }, fmt(v)));
      });
      var label = svg("text", { class: "tick", x: L + gi * slot + slot / 2, y: H - B + 14, "text-anchor": "middle" }, g.label);
      root.appendChild(label);
      if (g.sublabel) root.appendChild(svg("text", { class: "tick", x: L + gi * slot + slot / 2, y: H - B + 27, "text-anchor": "middle" }, g.sublabel));
    });
    root.appendChild(svg("line", { class: "axis", x1: L, x2: W - R, y1: sy(0), y2: sy(0) }));
    wrap.appendChild(legend(names.map(function (n) { return { name: n }; })));
    return wrap;
  }

  window.MBPOCharts = { lineChart: lineChart, barChart: barChart, PALETTE: PALETTE };
})();

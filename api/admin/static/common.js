/* Shared helpers of the admin UI: REST calls with the session's CSRF token, safe DOM building
   (text only, never HTML strings), formatting, progress bars. Exposed as window.MBPO. */
(function () {
  "use strict";

  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrfToken = meta ? meta.getAttribute("content") : "";
  var ACTIVE = ["queued", "validating", "scoring", "mining", "training", "evaluating", "cancelling"];
  var STAGES = ["validating", "scoring", "mining", "training", "evaluating"];

  function ApiError(status, body) {
    var err = (body && body.error) || {};
    this.name = "ApiError";
    this.status = status;
    this.code = err.code || "http_" + status;
    this.message = err.message || "request failed (HTTP " + status + ")";
    this.field = err.field || null;
    this.details = err.details || [];
  }
  ApiError.prototype = Object.create(Error.prototype);

  function api(path, opts) {
    opts = opts || {};
    var method = (opts.method || "GET").toUpperCase();
    var headers = { Accept: "application/json" };
    var body = opts.body;
    if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrfToken;
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.json);
    }
    Object.keys(opts.headers || {}).forEach(function (k) { headers[k] = opts.headers[k]; });
    return fetch(path, { method: method, headers: headers, body: body, credentials: "same-origin" })
      .then(function (resp) {
        return resp.text().then(function (text) {
          var data = null;
          if (text) {
            try { data = JSON.parse(text); } catch (e) { data = null; }
          }
          if (resp.status === 401) {
            window.location.assign("/admin/login?next=" + encodeURIComponent(window.location.pathname));
          }
          if (!resp.ok) throw new ApiError(resp.status, data);
          return data;
        });
      });
  }

  /* el("div", {class: "x", dataset: {a: 1}}, "text", childNode, [more]) — strings become text nodes. */
  function el(tag, attrs) {
    var node = tag === "svg" || (attrs && attrs.svg)
      ? document.createElementNS("http://www.w3.org/2000/svg", tag)
      : document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      var value = attrs[key];
      if (value === null || value === undefined || value === false || key === "svg") return;
      if (key === "dataset") {
        Object.keys(value).forEach(function (d) { node.dataset[d] = value[d]; });
      } else if (key === "text") {
        node.textContent = value;
      } else if (key.indexOf("on") === 0 && typeof value === "function") {
        node.addEventListener(key.slice(2), value);
      } else {
        node.setAttribute(key, value === true ? "" : String(value));
      }
    });
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }

  function append(node, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { child.forEach(function (c) { append(node, c); }); return; }
    node.appendChild(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

  function isNum(v) { return typeof v === "number" && isFinite(v); }
  function pct(f, digits) { return isNum(f) ? (f * 100).toFixed(digits === undefined ? 0 : digits) + "%" : "–"; }
  function num(v, digits) {
    if (!isNum(v)) return "–";
    if (Number.isInteger(v)) return v.toLocaleString("en-US");
    var abs = Math.abs(v);
    if (abs !== 0 && (abs < 0.001 || abs >= 1e5)) return v.toExponential(2);
    return v.toFixed(digits === undefined ? 3 : digits);
  }
  function duration(seconds) {
    if (!isNum(seconds)) return "–";
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return seconds + " s";
    var m = Math.floor(seconds / 60), s = seconds % 60;
    if (m < 60) return m + " min " + (s ? s + " s" : "");
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }
  function when(iso) {
    if (!iso) return "–";
    var d = new Date(iso);
    if (isNaN(d.getTime())) return String(iso);
    var ago = (Date.now() - d.getTime()) / 1000;
    if (ago < 45) return "just now";
    if (ago < 3600) return Math.round(ago / 60) + " min ago";
    if (ago < 86400) return Math.round(ago / 3600) + " h ago";
    return d.toISOString().slice(0, 16).replace("T", " ");
  }
  function clock(iso) {
    var d = new Date(iso);
    return isNaN(d.getTime()) ? "" : d.toTimeString().slice(0, 8);
  }

  function badge(status) {
    return el("span", { class: "badge badge-" + String(status || "unknown").replace(/[^a-z_]/g, ""), text: status || "unknown" });
  }

  /* A div.progress with a fill; set() moves it (style set from script: allowed by our CSP). */
  function progressBar(extraClass) {
    var fill = el("div", { class: "progress-fill" });
    var text = el("span", { class: "progress-text" });
    var bar = el("div", { class: "progress " + (extraClass || ""), role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" }, fill, text);
    return bar;
  }
  function setProgress(bar, fraction, status) {
    var f = isNum(fraction) ? Math.max(0, Math.min(1, fraction)) : 0;
    if (status === "succeeded") f = 1;
    var fill = bar.querySelector(".progress-fill");
    var text = bar.querySelector(".progress-text");
    fill.style.width = (f * 100).toFixed(1) + "%";
    if (text) text.textContent = pct(f);
    bar.setAttribute("aria-valuenow", String(Math.round(f * 100)));
    bar.dataset.progress = f.toFixed(4);
    if (status) bar.dataset.status = status;
  }

  function isActive(status) { return ACTIVE.indexOf(status) >= 0; }

  /* Show an API error next to a form: inline under the named field when there is one. */
  function showFieldErrors(form, err, summary) {
    form.querySelectorAll(".field.has-error").forEach(function (f) { f.classList.remove("has-error"); });
    form.querySelectorAll(".field-error").forEach(function (p) { p.hidden = true; p.textContent = ""; });
    var items = err.details && err.details.length ? err.details : [{ field: err.field, message: err.message }];
    var unplaced = [];
    items.forEach(function (item) {
      var target = item.field ? findField(form, item.field) : null;
      if (target) {
        target.classList.add("has-error");
        var p = target.querySelector(".field-error");
        p.textContent = (p.textContent ? p.textContent + " " : "") + item.message;
        p.hidden = false;
      } else {
        unplaced.push(item.field ? item.field + ": " + item.message : item.message);
      }
    });
    if (summary) {
      summary.textContent = unplaced.length ? unplaced.join(" · ") : "Please fix the highlighted fields.";
      summary.hidden = false;
    }
    var first = form.querySelector(".field.has-error");
    if (first) first.scrollIntoView({ block: "center", behavior: "smooth" });
    else if (summary) summary.scrollIntoView({ block: "center", behavior: "smooth" });
  }
  function findField(form, name) {
    var parts = String(name).split(".");
    while (parts.length) {
      var found = form.querySelector('.field[data-field="' + CSS.escape(parts.join(".")) + '"]');
      if (found) return found;
      parts.pop();
    }
    return null;
  }

  function debounce(fn, ms) {
    var t = null;
    return function () {
      var args = arguments, self = this;
      clearTimeout(t);
      t = setTimeout(function () { fn.apply(self, args); }, ms);
    };
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });

  window.MBPO = {
    api: api, ApiError: ApiError, el: el, clear: clear, pct: pct, num: num, duration: duration, when: when,
    clock: clock, badge: badge, progressBar: progressBar, setProgress: setProgress, isActive: isActive,
    isNum: isNum, showFieldErrors: showFieldErrors, debounce: debounce, csrfToken: csrfToken,
    ACTIVE: ACTIVE, STAGES: STAGES
  };
})();

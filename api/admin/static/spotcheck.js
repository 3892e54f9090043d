/* Spot-check: one image and question put to several models; each model's answer beside its
   null-image answer (the language prior) and IIG; history of earlier checks. */
(function () {
  "use strict";
  var M = window.MBPO, el = M.el;
  var $ = function (id) { return document.getElementById(id); };
  var form = $("spot-form");
  var preview = $("spot-preview");
  var hint = $("spot-drop-hint");
  var errorBox = $("spot-error");
  var submit = $("spot-submit");
  var imageData = null;  // data: URL of the chosen image
  var labels = {};  // model name (model:<id>, run:<id>[@step]) -> readable label
  function labelOf(name) { return labels[name] || name; }

  function showError(message) { errorBox.textContent = message; errorBox.hidden = !message; }

  function useBlob(blob) {
    return new Promise(function (resolve, reject) {
      var reader = new FileReader();
      reader.onload = function () {
        imageData = String(reader.result);
        preview.src = imageData;
        preview.hidden = false;
        hint.hidden = true;
        resolve();
      };
      reader.onerror = function () { reject(new Error("could not read the image")); };
      reader.readAsDataURL(blob);
    });
  }

  $("spot-file").addEventListener("change", function () {
    var file = this.files && this.files[0];
    if (!file) return;
    showError("");
    document.querySelectorAll("#spot-thumbs button.selected").forEach(function (b) { b.classList.remove("selected"); });
    useBlob(file).catch(function (err) { showError(err.message); });
  });

  // --- models -------------------------------------------------------------------------------------

  function modelName(m) {
    // OpenAI-shaped listing ids are usable as they are; a plain registry row needs its prefix.
    return m.object === "model" || /^(model|run):/.test(String(m.id)) ? String(m.id) : "model:" + m.id;
  }
  function modelLabel(m) {
    var label = m.name || m.display_name || m.id;
    return label === m.id ? String(m.id) : label + " (" + m.id + ")";
  }

  function loadModels() {
    // Base models from the model listing, and every finished run's published checkpoint.
    var models = M.api("/v1/models").then(function (b) { return (b && b.data) || []; });
    var runs = M.api("/v1/runs?status=succeeded&limit=50").then(function (b) { return (b && b.data) || []; }).catch(function () { return []; });
    return Promise.all([models, runs]).then(function (res) {
      var entries = [], seen = {};
      res[0].forEach(function (m) { entries.push({ name: modelName(m), label: modelLabel(m) }); });
      res[1].forEach(function (r) { entries.push({ name: "run:" + r.id, label: (r.name || r.id) + " (aligned, latest checkpoint)" }); });
      var box = M.clear($("spot-models"));
      entries = entries.filter(function (e) { if (seen[e.name]) return false; seen[e.name] = true; return true; });
      entries.forEach(function (e) {
        var label = e.label.replace(/ \((model|run):[^)]*\)$/, "");
        if (/^run:[^@]+$/.test(e.name) && label.indexOf("latest") < 0) label += " (latest checkpoint)";
        labels[e.name] = label;
      });
      if (!entries.length) { box.appendChild(el("p", { class: "muted", text: "No models available." })); return; }
      entries.forEach(function (e, i) {
        box.appendChild(el("label", { class: "check" },
          el("input", { type: "checkbox", name: "models", value: e.name, checked: i < 2 }), " ", e.label));
      });
    }).catch(function (err) { M.clear($("spot-models")).appendChild(el("p", { class: "alert alert-error", text: err.message })); });
  }

  // --- dataset picker -----------------------------------------------------------------------------

  function loadDatasets() {
    return M.api("/v1/datasets?limit=100").then(function (body) {
      var select = $("spot-dataset");
      (body.data || []).filter(function (d) { return d.status === "ready"; }).forEach(function (d) {
        select.appendChild(el("option", { value: d.id, text: d.name + " (" + d.num_samples + ")" }));
      });
    }).catch(function () {});
  }

  $("spot-dataset").addEventListener("change", function () {
    var strip = M.clear($("spot-thumbs"));
    if (!this.value) return;
    M.api("/admin/datasets/" + encodeURIComponent(this.value) + "/samples.json").then(function (body) {
      (body.samples || []).forEach(function (s) {
        var button = el("button", { type: "button", title: s.question, "aria-label": "Use sample " + s.id },
          el("img", { src: s.thumbnail_url || s.image_url, alt: "" }));
        button.addEventListener("click", function () {
          strip.querySelectorAll("button.selected").forEach(function (b) { b.classList.remove("selected"); });
          button.classList.add("selected");
          $("spot-question").value = s.question;
          showError("");
          fetch(s.image_url, { credentials: "same-origin" })
            .then(function (r) { if (!r.ok) throw new Error("could not load the image"); return r.blob(); })
            .then(useBlob)
            .catch(function (err) { showError(err.message); });
        });
        strip.appendChild(button);
      });
    }).catch(function (err) { showError(err.message); });
  });

  // --- results ------------------------------------------------------------------------------------

  function same(a, b) {
    var norm = function (s) { return String(s || "").trim().toLowerCase().replace(/[.!?]+$/, ""); };
    return norm(a) === norm(b);
  }

  function resultCard(r) {
    var followsPrior = typeof r.same_as_prior === "boolean" ? r.same_as_prior : (r.answer !== undefined && same(r.answer, r.null_answer));
    return el("div", { class: "answer-card" + (followsPrior ? " prior" : "") },
      el("h3", { text: labelOf(r.model || "?"), title: r.model || "" }),
      r.error ? el("p", { class: "alert alert-error", text: (r.error.message || r.error) }) : [
        el("span", { class: "label", text: "answer" }),
        el("p", { class: "big", text: String(r.answer) }),
        el("p", { class: "small", text: "IIG " + M.num(r.answer_iig, 3) }),
        el("span", { class: "label", text: "null-image answer (prior)" }),
        el("p", { text: String(r.null_answer) }),
        el("p", { class: "small muted", text: "IIG " + M.num(r.null_answer_iig, 3) }),
        followsPrior ? el("p", { class: "small", text: "Same as the null-image answer: may come from the language prior." }) : null
      ]);
  }

  function resultsOf(check) {
    var results = check.results || check.answers || [];
    return results.map(function (r, i) { return Object.assign({ model: (check.models || [])[i] }, r); });
  }

  function renderResult(check) {
    var box = M.clear($("spot-answers"));
    resultsOf(check).forEach(function (r) { box.appendChild(resultCard(r)); });
    $("spot-result").hidden = false;
  }

  function thumbOf(c) {
    var t = (c.image && c.image.thumbnail) || c.thumbnail;
    return typeof t === "string" && t.indexOf("data:image/") === 0 ? t : null;
  }

  function loadHistory() {
    return M.api("/v1/spot-checks?limit=20").then(function (body) {
      var list = Array.isArray(body) ? body : (body.data || []);
      var box = M.clear($("spot-history"));
      if (!list.length) { box.appendChild(el("p", { class: "muted", text: "No spot-checks yet." })); return; }
      list.forEach(function (c) {
        var answers = resultsOf(c).map(function (r) {
          return el("span", { class: "tag", text: labelOf(r.model || "?") + ": " + (r.error ? "error" : r.answer) + (r.error ? "" : " (prior: " + r.null_answer + ")") });
        });
        var item = el("div", { class: "history-item" },
          thumbOf(c) ? el("img", { src: thumbOf(c), alt: "" }) : el("div"),
          el("div", {}, el("p", { class: "q", text: c.question }), el("div", { class: "pair-meta" }, answers),
            el("p", { class: "muted small", text: M.when(c.created_at) })));
        item.addEventListener("click", function () { renderResult(c); $("spot-result").scrollIntoView({ behavior: "smooth" }); });
        box.appendChild(item);
      });
    }).catch(function (err) {
      M.clear($("spot-history")).appendChild(el("p", { class: "muted", text: err.status === 404 ? "Spot-checks are not available on this server yet." : err.message }));
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    showError("");
    var models = Array.prototype.map.call(form.querySelectorAll("input[name=models]:checked"), function (c) { return c.value; });
    var question = $("spot-question").value.trim();
    if (!imageData) return showError("Choose an image first.");
    if (!question) return showError("Ask a question.");
    if (models.length < 2) return showError("Pick at least two models to compare.");
    submit.disabled = true;
    submit.textContent = "Asking…";
    M.api("/v1/spot-checks", { method: "POST", json: { image: imageData, question: question, models: models } })
      .then(function (check) { renderResult(check); loadHistory(); })
      .catch(function (err) { showError((err.field ? err.field + ": " : "") + err.message); })
      .then(function () { submit.disabled = false; submit.textContent = "Ask"; });
  });

  loadModels().then(loadHistory);
  loadDatasets();
})();

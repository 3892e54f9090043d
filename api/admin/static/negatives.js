/* Mined negatives gallery: clean and perturbed image side by side with an amplified difference
   computed here on a canvas, question, chosen vs rejected, IIG, prior agreement; filters; the
   attack-success vs random-noise summary. */
(function () {
  "use strict";
  var M = window.MBPO, el = M.el;
  var runId = document.body.dataset.runId;
  var base = "/v1/runs/" + encodeURIComponent(runId);
  var gallery = document.getElementById("gallery");
  var taskSel = document.getElementById("filter-task");
  var priorSel = document.getElementById("filter-prior");
  var amplify = document.getElementById("amplify");
  var amplifyValue = document.getElementById("amplify-value");
  var countText = document.getElementById("neg-count");
  var more = document.getElementById("neg-more");
  var pairs = [];
  var cursor = null;
  var tasks = {};
  var cards = [];  // {pair, node, redraw}

  function pick(obj, names) {
    for (var i = 0; i < names.length; i++) {
      var path = names[i].split("."), v = obj;
      for (var j = 0; j < path.length && v !== undefined && v !== null; j++) v = v[path[j]];
      if (v !== undefined && v !== null) return v;
    }
    return undefined;
  }
  function cleanUrl(p) { return pick(p, ["clean_image_url", "clean_url", "image_url", "links.clean", "links.clean_image", "urls.clean", "images.clean"]); }
  function perturbedUrl(p) { return pick(p, ["perturbed_image_url", "perturbed_url", "links.perturbed", "links.perturbed_image", "urls.perturbed", "images.perturbed"]); }

  function loadImage(src) {
    return new Promise(function (resolve, reject) {
      var img = new Image();
      img.onload = function () { resolve(img); };
      img.onerror = function () { reject(new Error("image failed: " + src)); };
      img.src = src;
    });
  }

  function pixels(img) {
    var c = document.createElement("canvas");
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    var ctx = c.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(img, 0, 0);
    return ctx.getImageData(0, 0, c.width, c.height);
  }

  /* |perturbed - clean| per channel, times the amplification, on a dark background. */
  function drawDiff(canvas, clean, perturbed, factor) {
    var w = Math.min(clean.width, perturbed.width), h = Math.min(clean.height, perturbed.height);
    canvas.width = w; canvas.height = h;
    var ctx = canvas.getContext("2d");
    var out = ctx.createImageData(w, h);
    var maxAbs = 0;
    for (var y = 0; y < h; y++) {
      for (var x = 0; x < w; x++) {
        var a = (y * clean.width + x) * 4, b = (y * perturbed.width + x) * 4, o = (y * w + x) * 4;
        for (var ch = 0; ch < 3; ch++) {
          var d = Math.abs(perturbed.data[b + ch] - clean.data[a + ch]);
          if (d > maxAbs) maxAbs = d;
          out.data[o + ch] = Math.min(255, d * factor);
        }
        out.data[o + 3] = 255;
      }
    }
    ctx.putImageData(out, 0, 0);
    return maxAbs;
  }

  function fmtBool(v) { return v === true ? "yes" : v === false ? "no" : "–"; }

  function card(p) {
    var clean = el("img", { alt: "clean image", loading: "lazy" });
    var pert = el("img", { alt: "perturbed image", loading: "lazy" });
    var diff = el("canvas", { "aria-label": "amplified difference", role: "img" });
    var diffCaption = el("figcaption", { text: "difference" });
    var prior = p.prior_agreement;
    var node = el("article", { class: "pair", dataset: { task: p.task || "", prior: prior === true ? "yes" : prior === false ? "no" : "" } },
      el("div", { class: "pair-images" },
        el("figure", {}, clean, el("figcaption", { text: "clean" })),
        el("figure", {}, pert, el("figcaption", { text: "perturbed (PGD)" })),
        el("figure", {}, diff, diffCaption)),
      el("p", { class: "q", text: p.question || "" }),
      p.choices && p.choices.length ? el("p", { class: "small muted", text: p.choices.map(function (c, i) { return String.fromCharCode(65 + i) + ". " + c; }).join(" · ") }) : null,
      el("div", { class: "answers-row" },
        el("div", { class: "answer chosen" }, el("span", { class: "label", text: "chosen (ground truth)" }), el("span", { text: String(p.chosen) })),
        el("div", { class: "answer rejected" }, el("span", { class: "label", text: "rejected (on perturbed image)" }), el("span", { text: String(p.rejected) }))),
      el("div", { class: "pair-meta" },
        el("span", { class: "tag", text: p.task || "?" }),
        el("span", { class: "tag", text: "IIG " + M.num(p.iig, 3) }),
        el("span", { class: "tag " + (prior ? "tag-error" : "tag-ok"), text: "prior agreement: " + fmtBool(prior) }),
        M.isNum(p.logp_clean) && M.isNum(p.logp_adv) ? el("span", { class: "tag", text: "log p(gt) " + M.num(p.logp_clean, 2) + " → " + M.num(p.logp_adv, 2) }) : null,
        el("span", { class: "tag mono", text: String(p.id) })));
    var state = { clean: null, pert: null };
    var entry = {
      pair: p,
      node: node,
      amp: null,
      redraw: function () {
        if (!state.clean || !state.pert) return;
        entry.amp = amplify.value;
        var maxAbs = drawDiff(diff, state.clean, state.pert, Number(amplify.value));
        diffCaption.textContent = "difference ×" + amplify.value + " (max " + maxAbs + "/255)";
      }
    };
    var cu = cleanUrl(p), pu = perturbedUrl(p);
    if (cu) clean.src = cu;
    if (pu) pert.src = pu;
    if (cu && pu) {
      Promise.all([loadImage(cu), loadImage(pu)]).then(function (imgs) {
        state.clean = pixels(imgs[0]);
        state.pert = pixels(imgs[1]);
        entry.redraw();
      }).catch(function () { diffCaption.textContent = "difference unavailable"; });
    }
    return entry;
  }

  function visible(p) {
    if (taskSel.value && p.task !== taskSel.value) return false;
    if (priorSel.value === "yes" && p.prior_agreement !== true) return false;
    if (priorSel.value === "no" && p.prior_agreement !== false) return false;
    return true;
  }

  function render() {
    var shown = 0;
    cards.forEach(function (c) {
      var show = visible(c.pair);
      c.node.hidden = !show;
      if (show) {
        shown += 1;
        if (c.amp !== null && c.amp !== amplify.value) c.redraw();
      }
    });
    countText.textContent = shown + " of " + pairs.length + " loaded pair(s) shown" + (cursor ? " · more available" : "");
    if (!pairs.length) {
      M.clear(gallery).appendChild(el("p", { class: "card muted", text: "No mined pairs yet. They appear once the mining stage has run." }));
    }
  }

  function addPairs(list) {
    if (!pairs.length && list.length) M.clear(gallery);
    list.forEach(function (p) {
      pairs.push(p);
      if (p.task && !tasks[p.task]) {
        tasks[p.task] = true;
        taskSel.appendChild(el("option", { value: p.task, text: p.task }));
      }
      var c = card(p);
      cards.push(c);
      gallery.appendChild(c.node);
    });
    render();
  }

  function loadPage() {
    var q = new URLSearchParams({ limit: "24" });
    if (cursor) q.set("cursor", cursor);
    more.disabled = true;
    return M.api(base + "/negatives?" + q.toString()).then(function (body) {
      var list = Array.isArray(body) ? body : (body.data || body.pairs || []);
      cursor = (body && body.next_cursor) || null;
      more.hidden = !cursor;
      more.disabled = false;
      if (body && body.summary) renderSummary(body.summary);
      addPairs(list);
    }).catch(function (err) {
      M.clear(gallery).appendChild(el("p", { class: "alert alert-error", text: err.message }));
    });
  }

  // --- summary ----------------------------------------------------------------------------------

  function stat(label, value, sub) {
    return el("div", { class: "stat" }, el("span", { class: "label", text: label }), el("span", { class: "value", text: value }), sub ? el("span", { class: "sub", text: sub }) : null);
  }

  function renderSummary(s) {
    if (!s || typeof s !== "object") return;
    var box = M.clear(document.getElementById("mining-summary"));
    var noise = s.baseline_random_noise || s.random_noise || {};
    box.appendChild(stat("Pairs mined", M.num(s.n_pairs), M.isNum(s.n_input) ? "from " + M.num(s.n_input) + " pool samples" : null));
    box.appendChild(stat("PGD attack success", M.pct(s.attack_success_rate, 1), "answers flipped by the adversarial image"));
    box.appendChild(stat("Random-noise success", M.pct(noise.attack_success_rate, 1), "same budget, uniform sign noise"));
    box.appendChild(stat("Prior agreement", M.pct(s.prior_agreement_rate, 1), "flips equal to the null-image answer"));
    if (M.isNum(noise.prior_agreement_rate)) box.appendChild(stat("Noise prior agreement", M.pct(noise.prior_agreement_rate, 1)));
    if (M.isNum(s.attack_success_rate) && M.isNum(noise.attack_success_rate)) {
      var ratio = noise.attack_success_rate > 0 ? (s.attack_success_rate / noise.attack_success_rate).toFixed(1) + "×" : "∞";
      box.appendChild(stat("PGD vs noise", ratio, "attack success ratio"));
    }
  }

  function loadSummary() {
    return M.api(base).then(function (r) {
      var s = pick(r, ["mining_summary", "mining", "summary.mining", "stages.mining", "results.mining"]);
      if (s) renderSummary(s);
      else if (!document.querySelector("#mining-summary .stat")) {
        M.clear(document.getElementById("mining-summary")).appendChild(el("p", { class: "muted", text: "The mining summary appears once the mining stage has finished." }));
      }
    }).catch(function () {});
  }

  taskSel.addEventListener("change", render);
  priorSel.addEventListener("change", render);
  amplify.addEventListener("input", function () {
    amplifyValue.textContent = amplify.value;
    cards.forEach(function (c) { if (!c.node.hidden) c.redraw(); });
  });
  document.getElementById("neg-filters").addEventListener("submit", function (e) { e.preventDefault(); });
  more.addEventListener("click", loadPage);
  loadPage().then(loadSummary);
})();

/* Launch form: builds {name, base_model_id, datasets, config} with only the changed config fields
   and posts it to /v1/runs; the API's validation errors are shown under the fields they name. */
(function () {
  "use strict";
  var M = window.MBPO;
  var form = document.getElementById("launch-form");
  var summary = document.getElementById("launch-error");
  var submit = document.getElementById("launch-submit");
  // One key per filled-in form: a double click or a retry after a timeout creates one run.
  var idempotencyKey = "ui-" + (window.crypto && crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random());

  function setPath(obj, path, value) {
    var parts = path.split(".");
    for (var i = 0; i < parts.length - 1; i++) obj = obj[parts[i]] = obj[parts[i]] || {};
    obj[parts[parts.length - 1]] = value;
  }

  function localError(input, message) {
    return { field: "config." + input.dataset.path, message: message };
  }

  function readConfig(errors) {
    var config = {};
    form.querySelectorAll(".cfg").forEach(function (input) {
      var kind = input.dataset.kind, def = input.dataset.default;
      if (kind === "bool") {
        if ((input.checked ? "true" : "false") !== def) setPath(config, input.dataset.path, input.checked);
        return;
      }
      var raw = input.value.trim();
      if (raw === def) return;
      if (raw === "") { setPath(config, input.dataset.path, null); return; }
      if (kind === "int") {
        if (!/^-?\d+$/.test(raw)) { errors.push(localError(input, "must be a whole number")); return; }
        setPath(config, input.dataset.path, parseInt(raw, 10));
      } else if (kind === "float") {
        var v = Number(raw);
        if (!isFinite(v)) { errors.push(localError(input, "must be a number")); return; }
        setPath(config, input.dataset.path, v);
      } else if (kind === "list") {
        setPath(config, input.dataset.path, raw.split(",").map(function (s) { return s.trim(); }).filter(Boolean));
      } else {
        setPath(config, input.dataset.path, raw);
      }
    });
    return config;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    summary.hidden = true;
    var errors = [];
    var name = form.elements.name.value.trim();
    if (!name) errors.push({ field: "name", message: "give the run a name" });
    var model = form.elements.base_model_id.value;
    if (!model) errors.push({ field: "base_model_id", message: "register a base model first" });
    var body = {
      name: name,
      base_model_id: model,
      offline_dataset_id: form.elements.offline_dataset_id.value || null,
      online_dataset_id: form.elements.online_dataset_id.value || null,
      eval_dataset_ids: Array.prototype.map.call(form.querySelectorAll("input[name=eval_dataset_ids]:checked"), function (c) { return c.value; }),
      config: readConfig(errors)
    };
    if (errors.length) {
      M.showFieldErrors(form, { details: errors, message: errors[0].message }, summary);
      return;
    }
    submit.disabled = true;
    submit.textContent = "Launching…";
    M.api("/v1/runs", { method: "POST", json: body, headers: { "Idempotency-Key": idempotencyKey } })
      .then(function (run) { window.location.assign("/admin/runs/" + encodeURIComponent(run.id)); })
      .catch(function (err) {
        M.showFieldErrors(form, err, summary);
        submit.disabled = false;
        submit.textContent = "Launch run";
        if (err.status === 409 || err.status === 422 || err.status === 400) {
          // The body changes with the fix; a new key keeps the API from treating it as a replay.
          idempotencyKey = "ui-" + (window.crypto && crypto.randomUUID ? crypto.randomUUID() : String(Date.now()));
        }
      });
  });

  form.addEventListener("input", function (event) {
    var field = event.target.closest(".field");
    if (field && field.classList.contains("has-error")) {
      field.classList.remove("has-error");
      var p = field.querySelector(".field-error");
      p.hidden = true;
      p.textContent = "";
    }
  });

  document.getElementById("reset-config").addEventListener("click", function () {
    form.querySelectorAll(".cfg").forEach(function (input) {
      if (input.dataset.kind === "bool") input.checked = input.dataset.default === "true";
      else input.value = input.dataset.default;
    });
  });
})();

/* Datasets: upload (multipart) and server-path registration through /v1/datasets; the detail page
   refreshes itself while the worker validates. */
(function () {
  "use strict";
  var M = window.MBPO;

  function bind(formId, errorId, build) {
    var form = document.getElementById(formId);
    if (!form) return;
    var error = document.getElementById(errorId);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      error.hidden = true;
      var button = form.querySelector("button[type=submit]");
      button.disabled = true;
      M.api("/v1/datasets", build(form))
        .then(function (ds) { window.location.assign("/admin/datasets/" + encodeURIComponent(ds.id)); })
        .catch(function (err) {
          error.textContent = (err.field ? err.field + ": " : "") + err.message;
          error.hidden = false;
          button.disabled = false;
        });
    });
  }

  bind("upload-form", "upload-error", function (form) {
    return { method: "POST", body: new FormData(form) };
  });
  bind("path-form", "path-error", function (form) {
    var body = { name: form.elements.name.value, path: form.elements.path.value };
    var benchmark = form.elements.benchmark ? form.elements.benchmark.value : "";
    if (benchmark) body.benchmark = benchmark;
    if (form.elements.images && form.elements.images.value) body.images = form.elements.images.value;
    return { method: "POST", json: body };
  });

  var id = document.body.dataset.datasetId;
  if (id && document.body.dataset.datasetStatus === "validating") {
    var timer = setInterval(function () {
      M.api("/v1/datasets/" + encodeURIComponent(id)).then(function (ds) {
        if (ds.status !== "validating") {
          clearInterval(timer);
          window.location.reload();
        }
      }).catch(function () { /* transient: try again on the next tick */ });
    }, 1500);
  }
})();

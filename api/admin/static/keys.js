/* API keys: copy the freshly created key to the clipboard. */
(function () {
  "use strict";
  var button = document.getElementById("copy-key");
  var input = document.getElementById("new-key");
  if (!button || !input) return;
  button.addEventListener("click", function () {
    input.select();
    var done = function () { button.textContent = "Copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(done, function () { document.execCommand("copy"); done(); });
    } else {
      document.execCommand("copy");
      done();
    }
  });
})();

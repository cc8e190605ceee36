// The page at /: send each non-empty line of the text box to /render and show the returned
// markup (drawn by gpner.render, the same code as `gpner render`). No build step, no CDN.
"use strict";
(function () {
  const form = document.getElementById("form");
  const input = document.getElementById("input");
  const threshold = document.getElementById("threshold");
  const flat = document.getElementById("flat");
  const run = document.getElementById("run");
  const status = document.getElementById("status");
  const output = document.getElementById("output");
  const json = document.getElementById("json");

  function say(message, isError) {
    status.textContent = message;
    status.className = isError ? "error" : "";
  }

  async function analyse() {
    const texts = input.value.split(/\r?\n/).filter((line) => line.trim() !== "");
    if (texts.length === 0) {
      say("Type a text first.", true);
      return;
    }
    const body = { texts: texts };
    if (threshold.value !== "") body.threshold = Number(threshold.value);
    if (flat.checked) body.flat = true;
    run.disabled = true;
    output.dataset.state = "busy";
    say("Working…", false);
    try {
      const response = await fetch("render", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      const data = await response.json();
      if (!response.ok) {
        say("Error " + response.status + ": " + data.detail, true);
        output.dataset.state = "error";
        return;
      }
      output.innerHTML = data.html; // escaped by the server's renderer
      json.textContent = JSON.stringify(data.results, null, 2);
      const count = data.results.reduce((n, r) => n + r.spans.length, 0);
      say(count + " entities in " + texts.length + (texts.length === 1 ? " text" : " texts"), false);
      output.dataset.state = "done";
    } catch (error) {
      say("Request failed: " + error, true);
      output.dataset.state = "error";
    } finally {
      run.disabled = false;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    analyse();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      analyse();
    }
  });
})();

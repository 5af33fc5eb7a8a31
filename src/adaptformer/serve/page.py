"""The page served at ``/``: upload an image, see every task's top labels (plain HTML + fetch, no build step)."""

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>adaptformer</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 48rem; margin: 2rem auto; padding: 0 1rem; }
table { border-collapse: collapse; width: 100%; margin-top: 1rem; }
td, th { border-bottom: 1px solid #ddd; padding: .3rem .5rem; text-align: left; }
#error { color: #b00; }
</style></head>
<body>
<h1>adaptformer</h1>
<p>One frozen backbone, <span id="count">…</span> tasks. Choose an image to see every task's answer.</p>
<input id="file" type="file" accept="image/*">
<p id="error"></p>
<table id="results"><thead><tr><th>task</th><th>top labels</th></tr></thead><tbody></tbody></table>
<script>
fetch("/tasks").then(r => r.json()).then(tasks => { document.getElementById("count").textContent = tasks.length; });
document.getElementById("file").addEventListener("change", async (event) => {
  const body = new FormData();
  body.append("file", event.target.files[0]);
  const response = await fetch("/predict?top_k=3", { method: "POST", body });
  const data = await response.json();
  const rows = document.querySelector("#results tbody");
  rows.innerHTML = "";
  document.getElementById("error").textContent = response.ok ? "" : data.detail;
  for (const result of data.results || []) {
    const row = document.createElement("tr");
    for (const text of [result.task, result.top_k.map(t => `${t.label} ${(100 * t.prob).toFixed(1)} %`).join(", ")]) {
      const cell = document.createElement("td");
      cell.textContent = text;  // labels come from task files: text, never markup
      row.appendChild(cell);
    }
    rows.appendChild(row);
  }
});
</script>
</body></html>
"""

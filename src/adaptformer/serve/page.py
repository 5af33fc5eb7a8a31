"""The page served at ``/``: upload an image or a clip, see the top labels of every task (plain HTML + fetch).

What it guarantees (tested in a real headless Chromium, ``tests/serve/test_page.py``):

* the chosen image is shown beside the answers, and a busy line is visible while the request runs;
* answers are cleared the moment a new file is chosen, so a failed request never leaves the previous file's
  answers on screen; every error is shown as its one-line ``detail`` (or the HTTP status when the body is not
  JSON), never ``[object Object]``;
* any number of tasks: a search box filters them and the answers come a page of 50 tasks at a time (the page
  sends ``tasks=`` for the tasks on screen), so a backbone with thousands of tasks stays usable;
* with ``--auth-everything`` the server answers 401 and the page asks for the key (kept for the tab's session).
"""

PAGE_SIZE = 50

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>adaptformer</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font-family: system-ui, sans-serif; max-width: 56rem; margin: 2rem auto; padding: 0 1rem; }
table { border-collapse: collapse; width: 100%; margin-top: 1rem; }
td, th { border-bottom: 1px solid #ddd; padding: .3rem .5rem; text-align: left; vertical-align: top; }
#error { color: #b00; white-space: pre-wrap; }
#busy { color: #555; }
#preview { max-width: 16rem; max-height: 16rem; display: none; margin-top: 1rem; }
#controls > * { margin-right: .5rem; }
</style></head>
<body>
<h1>adaptformer</h1>
<p>One frozen backbone, <span id="count">…</span> tasks. Choose an image (or a clip, for video tasks).</p>
<div id="controls">
  <input id="file" type="file" accept="image/*,video/*">
  <input id="search" type="search" placeholder="filter tasks">
  <button id="prev" type="button">previous</button><span id="pageinfo"></span>
  <button id="next" type="button">next</button>
</div>
<p id="keyrow" hidden><label>API key <input id="key" type="password" autocomplete="off"></label>
  <button id="usekey" type="button">use</button></p>
<p id="busy" hidden>working…</p>
<p id="error" role="alert"></p>
<img id="preview" alt="the chosen image">
<table id="results"><thead><tr><th>task</th><th>top labels</th></tr></thead><tbody></tbody></table>
<script>
const PAGE_SIZE = __PAGE_SIZE__;
const $ = (id) => document.getElementById(id);
let tasks = [], shown = [], page = 0, file = null, generation = 0;

function headers() {
  const key = sessionStorage.getItem("adaptformer-key");
  return key ? { Authorization: "Bearer " + key } : {};
}

async function call(url, options) {
  // the answer's JSON, or an Error holding the server's one-line detail (or the status when not JSON)
  const response = await fetch(url, { ...options, headers: headers() });
  const text = await response.text();
  let data = null;
  try { data = JSON.parse(text); } catch (e) { data = null; }
  if (response.status === 401) { $("keyrow").hidden = false; }
  if (!response.ok) {
    let detail = data && data.detail !== undefined ? data.detail : text.slice(0, 200);
    if (typeof detail !== "string") { detail = JSON.stringify(detail); }
    throw new Error(`${response.status}: ${detail || response.statusText}`);
  }
  if (data === null) { throw new Error(`${response.status}: the answer is not JSON`); }
  return data;
}

function clearResults() { document.querySelector("#results tbody").innerHTML = ""; $("error").textContent = ""; }

function filtered() {
  const term = $("search").value.trim().toLowerCase();
  return tasks.filter((t) => !term || t.name.toLowerCase().includes(term));
}

function renderPaging() {
  const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
  page = Math.min(page, pages - 1);
  $("pageinfo").textContent = `tasks ${shown.length ? page * PAGE_SIZE + 1 : 0}-` +
    `${Math.min(shown.length, (page + 1) * PAGE_SIZE)} of ${shown.length}`;
  $("prev").disabled = page === 0;
  $("next").disabled = page >= pages - 1;
}

async function loadTasks() {
  try {
    const rows = await call("/tasks");
    $("error").textContent = "";  // an earlier failure (a missing key) is over
    tasks = rows.filter((t) => t.usable);
    $("count").textContent = tasks.length;
    shown = filtered();
    renderPaging();
  } catch (error) { $("error").textContent = error.message; }
}

let answers = new Map();  // task -> its answer for the current file: paging and search re-use them

function render(names) {
  const rows = document.querySelector("#results tbody");
  rows.innerHTML = "";
  for (const name of names) {
    const result = answers.get(name);
    if (!result) { continue; }
    const row = document.createElement("tr");
    const shownLabels = result.labels || result.top_k;  // a multi-label task: the labels above its threshold
    const labels = shownLabels.map((t) => `${t.label} ${(100 * t.prob).toFixed(1)} %`).join(", ")
      || `no label >= ${result.threshold}`;
    for (const text of [result.task, labels]) {
      const cell = document.createElement("td");
      cell.textContent = text;  // labels come from task files: text, never markup
      row.appendChild(cell);
    }
    rows.appendChild(row);
  }
}

async function predict() {
  $("error").textContent = "";
  if (!file) { clearResults(); return; }
  const isVideo = file.type.startsWith("video/");
  const names = shown.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE)
    .filter((t) => (t.modality === "video") === isVideo).map((t) => t.name);
  if (!names.length) {
    clearResults();
    $("error").textContent = `no ${isVideo ? "video" : "image"} task on this page`;
    return;
  }
  render(names);  // what is known already shows at once
  const missing = names.filter((name) => !answers.has(name));
  if (!missing.length) { return; }  // nothing to run: a search or a page already answered
  const mine = ++generation;  // answers to an older choice are dropped, never shown under the new file
  const body = new FormData();
  body.append("file", file);
  $("busy").hidden = false;
  try {
    const data = await call(`/predict?top_k=3&tasks=${encodeURIComponent(missing.join(","))}`,
                            { method: "POST", body });
    if (mine !== generation) { return; }
    for (const result of data.results) { answers.set(result.task, result); }
    render(names);
  } catch (error) {
    if (mine === generation) { clearResults(); $("error").textContent = error.message; }
  } finally {
    if (mine === generation) { $("busy").hidden = true; }
  }
}

let searchTimer = null;
$("file").addEventListener("change", (event) => {
  file = event.target.files[0] || null;
  answers = new Map();
  generation += 1;  // a request for the previous file is answered into nothing
  clearResults();
  const preview = $("preview");
  if (preview.src) { URL.revokeObjectURL(preview.src); }
  if (file && file.type.startsWith("image/")) {
    preview.src = URL.createObjectURL(file);
    preview.style.display = "block";
  } else {
    preview.removeAttribute("src");
    preview.style.display = "none";
  }
  predict();
});
$("search").addEventListener("input", () => {  // filters at once; runs the model only for tasks not yet answered
  shown = filtered(); page = 0; renderPaging();
  clearTimeout(searchTimer);
  searchTimer = setTimeout(predict, 250);
});
$("prev").addEventListener("click", () => { page -= 1; renderPaging(); predict(); });
$("next").addEventListener("click", () => { page += 1; renderPaging(); predict(); });
$("usekey").addEventListener("click", () => {
  sessionStorage.setItem("adaptformer-key", $("key").value);
  $("keyrow").hidden = true;
  loadTasks().then(predict);
});
loadTasks();
</script>
</body></html>
""".replace("__PAGE_SIZE__", str(PAGE_SIZE))

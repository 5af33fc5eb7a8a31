"""The page served at ``/``: drop or choose an image or a clip, see every task's answer (one static file: HTML,
CSS and plain JavaScript, no build step, nothing fetched from elsewhere).

What it guarantees (tested in a real headless Chromium, ``tests/serve/test_page.py``):

* a file is dropped on the drop zone or chosen with its button; an image is previewed at a readable size (a
  small one scaled up without blur), a clip as a strip of frames taken from it in the browser;
* each task's answer is a row: its name, and its top labels with confidence bars; a multi-label task shows the
  labels above its threshold, and says the threshold (and "none above" when none is);
* a busy line is visible while the request runs; answers are cleared the moment a new file is chosen, so a
  failed request never leaves the previous file's answers on screen; every error is shown as its one-line
  ``detail`` (or the HTTP status when the body is not JSON), never ``[object Object]``;
* any number of tasks: the search box filters the answers it has at once and runs the model only for tasks not
  yet answered (after a pause in typing); answers come a page of 50 tasks at a time (the page sends ``tasks=``
  for the tasks on screen), so a backbone with thousands of tasks stays usable;
* with ``--auth-everything`` the server answers 401 and the page asks for the key (kept for the tab's session);
* it fits a phone-sized window (one column below 40 rem).
"""

PAGE_SIZE = 50

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>adaptformer</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
:root { --ink: #1d2330; --muted: #5b6475; --line: #e3e6ec; --accent: #2f6fdf; --bad: #b3261e; --soft: #f4f6fa; }
* { box-sizing: border-box; }
body { font: 16px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); margin: 0;
       background: #fff; }
header { padding: 1rem 1.25rem; border-bottom: 1px solid var(--line); display: flex; align-items: baseline;
         gap: .75rem; flex-wrap: wrap; }
header h1 { font-size: 1.25rem; margin: 0; }
header p { margin: 0; color: var(--muted); }
main { max-width: 64rem; margin: 0 auto; padding: 1.25rem; display: grid; gap: 1.25rem;
       grid-template-columns: minmax(14rem, 20rem) 1fr; align-items: start; }
#drop { border: 2px dashed #b8c0cf; border-radius: .75rem; padding: 1rem; text-align: center; background: var(--soft);
        cursor: pointer; display: block; }
#drop.over { border-color: var(--accent); background: #e8f0fe; }
#drop strong { display: block; margin-bottom: .25rem; }
#drop span { color: var(--muted); font-size: .9rem; }
#file { position: absolute; width: 1px; height: 1px; opacity: 0; }
#preview { display: none; width: 100%; max-height: 22rem; object-fit: contain; margin-top: .75rem;
           border-radius: .5rem; background: var(--soft); }
#preview.small { image-rendering: pixelated; }
#frames { display: none; grid-template-columns: repeat(4, 1fr); gap: .25rem; margin-top: .75rem; }
#frames canvas { width: 100%; border-radius: .25rem; background: var(--soft); }
#filename { color: var(--muted); font-size: .9rem; margin-top: .5rem; word-break: break-all; }
#controls { display: flex; gap: .5rem; flex-wrap: wrap; align-items: center; }
#search { flex: 1 1 12rem; padding: .45rem .6rem; border: 1px solid #c7cdd8; border-radius: .4rem; font: inherit; }
button { font: inherit; padding: .4rem .8rem; border: 1px solid #c7cdd8; border-radius: .4rem; background: #fff;
         cursor: pointer; }
button:disabled { opacity: .45; cursor: default; }
#pageinfo { color: var(--muted); font-size: .9rem; }
#keyrow { background: #fff6e5; border: 1px solid #f1d08a; border-radius: .5rem; padding: .6rem .8rem; }
#keyrow input { font: inherit; padding: .3rem .5rem; }
#busy { color: var(--muted); }
#error { color: var(--bad); white-space: pre-wrap; }
#error:empty { display: none; }
table { border-collapse: collapse; width: 100%; }
td { border-bottom: 1px solid var(--line); padding: .55rem .4rem; vertical-align: top; }
td.task { font-weight: 600; width: 30%; word-break: break-word; }
td.task small { display: block; font-weight: 400; color: var(--muted); }
.label { display: grid; grid-template-columns: minmax(5rem, 10rem) 1fr 3.5rem; gap: .5rem; align-items: center;
         font-size: .92rem; }
.label + .label { margin-top: .2rem; }
.bar { height: .55rem; border-radius: 1rem; background: var(--line); overflow: hidden; }
.bar i { display: block; height: 100%; background: var(--accent); border-radius: 1rem; }
.pct { text-align: right; font-variant-numeric: tabular-nums; color: var(--muted); }
.none { color: var(--muted); font-size: .92rem; }
@media (max-width: 40rem) {
  main { grid-template-columns: 1fr; padding: .75rem; }
  #preview { max-height: 11rem; }
  td { display: block; }
  td.task { width: auto; border-bottom: none; padding-bottom: .1rem; }
  .label { grid-template-columns: 6.5rem 1fr 3.5rem; }
}
</style></head>
<body>
<header><h1>adaptformer</h1><p>One frozen backbone, <span id="count">…</span> tasks.</p></header>
<main>
<section aria-label="input">
  <label id="drop" for="file"><strong>Drop an image or a clip here</strong><span>or click to choose one</span>
    <input id="file" type="file" accept="image/*,video/*"></label>
  <img id="preview" alt="the chosen image">
  <div id="frames" aria-label="frames of the chosen clip"></div>
  <div id="filename"></div>
</section>
<section aria-label="answers">
  <div id="controls">
    <input id="search" type="search" placeholder="filter tasks" aria-label="filter tasks">
    <button id="prev" type="button">previous</button><span id="pageinfo"></span>
    <button id="next" type="button">next</button>
  </div>
  <p id="keyrow" hidden><label>API key <input id="key" type="password" autocomplete="off"></label>
    <button id="usekey" type="button">use</button></p>
  <p id="busy" hidden>working…</p>
  <p id="error" role="alert"></p>
  <table id="results"><tbody></tbody></table>
</section>
</main>
<script>
const PAGE_SIZE = __PAGE_SIZE__;
const $ = (id) => document.getElementById(id);
let tasks = [], shown = [], page = 0, file = null, generation = 0;
let answers = new Map();  // task -> its answer for the current file: paging and search re-use them
let searchTimer = null;

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

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) { node.className = className; }
  if (text !== undefined) { node.textContent = text; }  // labels come from task files: text, never markup
  return node;
}

function labelRow(label, prob) {
  const row = element("div", "label");
  const bar = element("div", "bar");
  const fill = element("i");
  fill.style.width = `${Math.max(0, Math.min(100, 100 * prob)).toFixed(1)}%`;
  bar.appendChild(fill);
  row.append(element("span", "name", label), bar, element("span", "pct", `${(100 * prob).toFixed(1)} %`));
  return row;
}

function render(names) {
  const rows = document.querySelector("#results tbody");
  rows.innerHTML = "";
  for (const name of names) {
    const result = answers.get(name);
    if (!result) { continue; }
    const row = element("tr");
    const task = element("td", "task", result.task);
    const labels = element("td", "labels");
    if (result.labels) {  // a multi-label task: every label at least its threshold probable
      task.appendChild(element("small", "", `multi-label, threshold ${result.threshold}`));
      if (!result.labels.length) { labels.appendChild(element("span", "none", `none above ${result.threshold}`)); }
      for (const t of result.labels) { labels.appendChild(labelRow(t.label, t.prob)); }
    } else {
      for (const t of result.top_k) { labels.appendChild(labelRow(t.label, t.prob)); }
    }
    row.append(task, labels);
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

function showFrames(chosen) {
  // a strip of four frames taken from the clip by the browser (nothing is sent for it)
  const strip = $("frames");
  strip.innerHTML = "";
  const video = document.createElement("video");
  video.muted = true;
  video.preload = "auto";
  video.src = URL.createObjectURL(chosen);
  const spots = [0.1, 0.35, 0.6, 0.85];
  let k = 0;
  video.addEventListener("loadedmetadata", () => { video.currentTime = spots[0] * (video.duration || 0); });
  video.addEventListener("seeked", () => {
    const canvas = document.createElement("canvas");
    canvas.width = 160;
    canvas.height = Math.round(160 * (video.videoHeight || 9) / (video.videoWidth || 16));
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    strip.appendChild(canvas);
    strip.style.display = "grid";
    k += 1;
    if (k < spots.length) { video.currentTime = spots[k] * video.duration; } else { URL.revokeObjectURL(video.src); }
  });
}

function choose(chosen) {
  file = chosen || null;
  answers = new Map();
  generation += 1;  // a request for the previous file is answered into nothing
  clearResults();
  const preview = $("preview");
  if (preview.src) { URL.revokeObjectURL(preview.src); }
  preview.removeAttribute("src");
  preview.style.display = "none";
  $("frames").style.display = "none";
  $("frames").innerHTML = "";
  $("filename").textContent = file ? file.name : "";
  if (file && file.type.startsWith("image/")) {
    preview.onload = () => { preview.classList.toggle("small", preview.naturalWidth < 128); };
    preview.src = URL.createObjectURL(file);
    preview.style.display = "block";
  } else if (file && file.type.startsWith("video/")) {
    showFrames(file);
  }
  predict();
}

$("file").addEventListener("change", (event) => choose(event.target.files[0]));
const drop = $("drop");
for (const kind of ["dragenter", "dragover"]) {
  drop.addEventListener(kind, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
for (const kind of ["dragleave", "drop"]) {
  drop.addEventListener(kind, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  if (event.dataTransfer.files.length) { choose(event.dataTransfer.files[0]); }
});
$("search").addEventListener("input", () => {  // filters at once; runs the model only for tasks not yet answered
  shown = filtered(); page = 0; renderPaging();
  render(shown.slice(0, PAGE_SIZE).map((t) => t.name));
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

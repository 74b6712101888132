// The gallery's behaviour: it talks only to the JSON API under /api/.
"use strict";
const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const PAGE = 24;
let state = { kind: null, k: PAGE, image: null, results: [], current: -1, busy: false };

function api(path, opts = {}) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  return fetch(path, Object.assign({ headers }, opts)).then(async (r) => {
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  });
}
const withToken = (url) => (token ? url + "&token=" + encodeURIComponent(token) : url);
function filters() {
  let s = "";
  if ($("after").value) s += "&after=" + $("after").value;
  if ($("before").value) s += "&before=" + $("before").value;
  if ($("folder").value.trim()) s += "&folder=" + encodeURIComponent($("folder").value.trim());
  return s;
}

// 83.4 -> "1:23" (h:mm:ss from an hour on)
function moment(t) {
  const s = Math.floor(t), h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60;
  const ss = String(s % 60).padStart(2, "0");
  return h ? h + ":" + String(m).padStart(2, "0") + ":" + ss : m + ":" + ss;
}

// The viewer shows a photo in <img>, a video in <video> playing from its moment t.
function showLarge(hit) {
  const isVideo = hit.t !== null && hit.t !== undefined;
  const clip = $("clip");
  $("large").hidden = isVideo;
  clip.hidden = !isVideo;
  if (!isVideo) {
    clip.pause();
    clip.removeAttribute("src");
    $("large").src = withToken("/api/image?id=" + hit.id);
    $("large").alt = hit.path;
    return;
  }
  clip.src = withToken("/api/video?id=" + hit.id) + "#t=" + hit.t;
  clip.onloadedmetadata = () => { if (Math.abs(clip.currentTime - hit.t) > 0.5) clip.currentTime = hit.t; };
  clip.play().catch(() => {}); // autoplay may be refused: the controls remain
}

function cell(hit, index, onclick) {
  const d = document.createElement("div");
  d.className = "cell";
  d.dataset.id = hit.id;
  d.title = hit.path + "\nscore " + hit.score.toFixed(3);
  const img = document.createElement("img");
  img.loading = "lazy";
  img.alt = hit.path.split("/").pop();
  img.src = withToken("/api/thumb?id=" + hit.id);
  const s = document.createElement("span");
  s.className = "score";
  s.textContent = hit.score.toFixed(3);
  d.append(img, s);
  if (hit.t !== null && hit.t !== undefined) { // a video: the frame at t, and the time
    const at = document.createElement("span");
    at.className = "moment";
    at.textContent = "▶ " + moment(hit.t);
    d.append(at);
  }
  d.onclick = () => onclick(index);
  return d;
}

function render(results) {
  state.results = results;
  const grid = $("grid");
  grid.replaceChildren(...results.map((h, i) => cell(h, i, openViewer)));
  $("message").textContent = results.length ? "" : "No photos match.";
}

async function run() {
  if (!state.kind) return;
  const k = "k=" + state.k + filters();
  try {
    let r;
    if (state.kind === "text") {
      r = await api("/api/search?q=" + encodeURIComponent($("q").value) + "&" + k);
    } else {
      r = await api("/api/search_image?" + k, { method: "POST", body: state.image });
    }
    render(r.results);
  } catch (e) {
    $("message").textContent = e.message;
  }
}

let timer = null;
$("q").addEventListener("input", () => {
  clearTimeout(timer);
  timer = setTimeout(() => {
    state.kind = $("q").value.trim() ? "text" : null;
    state.k = PAGE;
    if (state.kind) run(); else render([]);
  }, 200);
});
for (const id of ["after", "before", "folder"]) $(id).addEventListener("change", () => { state.k = PAGE; run(); });

function searchImage(blob) {
  state.kind = "image";
  state.image = blob;
  state.k = PAGE;
  $("q").value = "";
  run();
}
$("file").addEventListener("change", (e) => e.target.files[0] && searchImage(e.target.files[0]));
document.addEventListener("paste", (e) => {
  const f = [...e.clipboardData.files].find((x) => x.type.startsWith("image/"));
  if (f) searchImage(f);
});
document.addEventListener("dragover", (e) => { e.preventDefault(); $("drop").hidden = false; });
document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) $("drop").hidden = true; });
document.addEventListener("drop", (e) => {
  e.preventDefault();
  $("drop").hidden = true;
  const f = e.dataTransfer.files[0];
  if (f) searchImage(f);
});

window.addEventListener("scroll", () => {
  const nearEnd = innerHeight + scrollY >= document.body.scrollHeight - 200;
  if (nearEnd && state.kind && state.results.length === state.k && state.k < 1000) {
    state.k = Math.min(1000, state.k + PAGE);
    run();
  }
});

async function openViewer(index) {
  state.current = index;
  const hit = state.results[index];
  document.querySelectorAll(".cell.current").forEach((c) => c.classList.remove("current"));
  document.querySelectorAll("#grid .cell")[index]?.classList.add("current");
  $("classes").replaceChildren();
  $("viewer").hidden = false;
  showLarge(hit);
  const meta = await api("/api/photo?id=" + hit.id);
  const rows = [["path", meta.path], ["date", meta.date], ["size", meta.width + " × " + meta.height +
    ", " + (meta.size / 1024).toFixed(0) + " KiB"], ["format", meta.format], ["score", hit.score.toFixed(3)]];
  if (meta.t !== null && meta.t !== undefined) rows.push(["moment", moment(meta.t)]);
  $("meta").replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k;
    dd.textContent = v ?? "";
    return [dt, dd];
  }));
  const sim = await api("/api/similar?k=12&id=" + hit.id);
  $("similar").replaceChildren(...sim.results.map((h, i) => cell(h, i, () => {
    state.results = sim.results;
    render(sim.results);
    openViewer(i);
  })));
}
$("classify").addEventListener("submit", async (e) => {
  e.preventDefault();
  const hit = state.results[state.current];
  try {
    const r = await api("/api/classify?id=" + hit.id + "&labels=" + encodeURIComponent($("labels").value));
    $("classes").replaceChildren(...r.labels.map((x) => {
      const li = document.createElement("li");
      li.textContent = (x.probability * 100).toFixed(1) + "%  " + x.label;
      return li;
    }));
  } catch (err) {
    $("classes").textContent = err.message;
  }
});

// The duplicates view: each group of near-duplicates as a row of the grid.
$("dedup").addEventListener("click", async () => {
  state.kind = null;
  $("message").textContent = "Looking for duplicates…";
  const r = await api("/api/dedup");
  const results = [];
  const grid = $("grid");
  grid.replaceChildren();
  for (const g of r.groups) {
    const head = document.createElement("h3");
    head.className = "group";
    head.textContent = g.paths.length + " photos, similarity " + g.similarity.toFixed(3);
    grid.append(head);
    g.ids.forEach((id, i) => {
      if (id === null) return;
      const hit = { id, path: g.paths[i], score: g.similarity };
      results.push(hit);
      grid.append(cell(hit, results.length - 1, openViewer));
    });
  }
  state.results = results;
  $("message").textContent = r.groups.length ? r.groups.length + " groups of duplicates" : "No duplicates.";
});

function closeViewer() { $("viewer").hidden = true; $("clip").pause(); }
$("close").onclick = closeViewer;

document.addEventListener("keydown", (e) => {
  const viewing = !$("viewer").hidden;
  if (e.key === "Escape" && viewing) closeViewer();
  else if (e.key === "/" && document.activeElement !== $("q")) { e.preventDefault(); closeViewer(); $("q").focus(); }
  else if (viewing && e.key === "ArrowRight" && state.current + 1 < state.results.length) openViewer(state.current + 1);
  else if (viewing && e.key === "ArrowLeft" && state.current > 0) openViewer(state.current - 1);
});

api("/api/status").then((s) => {
  $("status").textContent = s.photos + " photos · " + s.model.split("/").pop();
}).catch((e) => { $("status").textContent = e.message; });

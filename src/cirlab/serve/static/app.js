// cirlab's page: pick or upload a reference, type a modification, click a result to refine.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { reference: null, history: [], busy: false };
const MAX_HISTORY = 19; // earlier turns the server reads (cirlab.session.MAX_TURNS - 1)

function card(item, onPick, withScore) {
  const el = document.createElement("button");
  el.type = "button";
  el.className = "card";
  el.dataset.id = item.id;
  el.title = item.name;
  const img = document.createElement("img");
  img.src = item.thumbnail_url;
  img.alt = item.name;
  img.loading = "lazy";
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = item.name;
  el.append(img, name);
  if (withScore) {
    const s = document.createElement("div");
    s.className = "score";
    s.textContent = item.score.toFixed(3);
    el.append(s);
  }
  el.addEventListener("click", () => onPick(item));
  return el;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

function setReference(ref) {
  state.reference = ref;
  const box = $("reference");
  box.replaceChildren();
  if (!ref) {
    box.className = "empty";
    const s = document.createElement("span");
    s.className = "muted";
    s.textContent = "No reference: the text alone searches the gallery.";
    box.append(s);
  } else {
    box.className = "";
    const fig = document.createElement("figure");
    fig.style.margin = "0";
    const img = document.createElement("img");
    img.id = "reference-image";
    img.src = ref.url;
    img.alt = ref.name;
    const cap = document.createElement("figcaption");
    cap.className = "muted";
    cap.textContent = (ref.kind === "upload" ? "uploaded: " : "") + ref.name;
    fig.append(img, cap);
    box.append(fig);
  }
  $("clear-reference").disabled = !ref;
}

function pickFromGallery(item) {
  setReference({ kind: "gallery", id: item.id, name: item.name, url: item.thumbnail_url });
  $("text").value = "";
  $("text").focus();
}

function renderResults(results) {
  const grid = $("results");
  grid.replaceChildren(...results.map((r) => card(r, refineFrom, true)));
}

function refineFrom(item) {
  pickFromGallery(item);
  setStatus(`"${item.name}" is the new reference: say what to change next.`);
}

function renderHistory() {
  const list = $("history");
  list.replaceChildren(...state.history.map((turn, i) => {
    const li = document.createElement("li");
    li.dataset.turn = String(i + 1);
    if (turn.reference) {
      const img = document.createElement("img");
      img.src = turn.reference.url;
      img.alt = turn.reference.name;
      li.append(img);
    }
    const text = document.createElement("span");
    text.textContent = `${turn.reference ? "+ " : ""}"${turn.text || "(no text)"}" →`;
    li.append(text);
    if (turn.results.length) {
      const top = document.createElement("img");
      top.src = turn.results[0].thumbnail_url;
      top.alt = turn.results[0].name;
      li.append(top);
      const name = document.createElement("span");
      name.className = "muted";
      name.textContent = turn.results[0].name;
      li.append(name);
    }
    li.addEventListener("click", () => {
      setReference(turn.reference);
      $("text").value = turn.text;
      renderResults(turn.results);
      setStatus(`turn ${i + 1} restored`);
    });
    return li;
  }));
}

async function search(event) {
  event.preventDefault();
  if (state.busy) return;
  const text = $("text").value.trim();
  const ref = state.reference;
  if (!text && !ref) {
    setStatus("Type a modification, pick a reference, or both.", true);
    return;
  }
  const form = new FormData();
  if (ref && ref.kind === "upload") form.append("image", ref.file, ref.file.name);
  if (ref && ref.kind === "gallery") form.append("image_id", ref.id);
  if (text) form.append("text", text);
  form.append("k", $("k").value);
  const mode = $("history-mode").value;
  const earlier = state.history.map((turn) => ({
    ...(turn.reference && turn.reference.kind === "gallery" ? { image_id: turn.reference.id } : {}),
    ...(turn.text ? { text: turn.text } : {}),
  })).filter((turn) => Object.keys(turn).length).slice(-MAX_HISTORY);
  if (mode !== "last" && earlier.length) {
    form.append("history", JSON.stringify(earlier));
    form.append("history_mode", mode);
  }
  state.busy = true;
  $("search").disabled = true;
  setStatus("searching…");
  try {
    const response = await fetch("/search", { method: "POST", body: form });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    renderResults(body.results);
    state.history.push({ reference: ref, text, results: body.results });
    renderHistory();
    const read = body.query.history ? `, reading ${body.query.history} earlier turns (${body.query.history_mode})` : "";
    const fixed = (body.query.corrections || []).map((c) => `${c.from} → ${c.to}`);
    const spelled = fixed.length ? ` Searched for: “${body.query.searched.at(-1).text}” (${fixed.join(", ")}).` : "";
    setStatus(`${body.results.length} results (${body.query.mode} search${read}).${spelled} Click one to refine from it.`);
  } catch (err) {
    setStatus(String(err.message || err), true);
  } finally {
    state.busy = false;
    $("search").disabled = false;
  }
}

async function loadGallery(params) {
  try {
    const response = await fetch("/gallery?" + new URLSearchParams(params));
    const body = await response.json();
    if (!response.ok) throw new Error(body.error);
    $("gallery").replaceChildren(...body.items.map((item) => card(item, pickFromGallery, false)));
  } catch (err) {
    setStatus(String(err.message || err), true);
  }
}

async function loadInfo() {
  try {
    const info = await (await fetch("/info")).json();
    $("info").textContent = `${info.model.method} over ${info.index.size.toLocaleString()} images ` +
      `(${info.index.backend})` + (info.model.text_search ? "" : " · text-only search is off for this model");
  } catch (err) {
    $("info").textContent = "";
  }
}

$("upload").addEventListener("change", () => {
  const file = $("upload").files[0];
  if (!file) return;
  setReference({ kind: "upload", file, name: file.name, url: URL.createObjectURL(file) });
  $("text").focus();
});
$("clear-reference").addEventListener("click", () => setReference(null));
$("new-session").addEventListener("click", () => {
  state.history = [];
  renderHistory();
  setStatus("A new session: earlier turns are forgotten.");
});
$("search-form").addEventListener("submit", search);
let debounce = null;
$("gallery-q").addEventListener("input", () => {
  clearTimeout(debounce);
  debounce = setTimeout(() => loadGallery({ q: $("gallery-q").value, limit: 24 }), 200);
});
$("gallery-random").addEventListener("click", () => loadGallery({ random: 1, limit: 24 }));
loadInfo();
loadGallery({ random: 1, limit: 24 });

// genreg model gallery: plain JavaScript over the public API (GET /models, POST /sample,
// POST /score, and /sample's task paths for image grids). A bearer token, when the service wants one, is read from localStorage
// ("genreg-token") and sent with every call.
"use strict";

const state = { models: [], sortKey: "name", sortAsc: true, current: null };

const COLUMNS = [
  ["name", "name"],
  ["version", "version"],
  ["family", "family"],
  ["capabilities", "capabilities"],
  ["data", "data"],
  ["bits_per_dim", "test bits/dim"],
  ["kl", "KL"],
  ["c2st", "C2ST acc."],
  ["mmd_p", "MMD p"],
  ["jsd", "JSD >="],
];

function headers(json) {
  const h = json ? { "content-type": "application/json" } : {};
  const token = window.localStorage.getItem("genreg-token");
  if (token) h["authorization"] = "Bearer " + token;
  return h;
}

async function api(path, body) {
  const resp = await fetch(path, body === undefined
    ? { headers: headers(false) }
    : { method: "POST", headers: headers(true), body: JSON.stringify(body) });
  let data = null;
  try { data = await resp.json(); } catch (e) { data = { error: `HTTP ${resp.status}` }; }
  if (!resp.ok) {
    const err = new Error(data && data.error ? data.error : `HTTP ${resp.status}`);
    err.status = resp.status;
    throw err;
  }
  return data;
}

// Runs an API call as a task (POST /NAME/submit, then its status until it ends), showing its
// progress in the <progress> element given; resolves to the call's answer, or throws its error.
async function runTask(name, body, bar) {
  const owner = String(Math.random());  // the bar shows the latest task's progress only
  bar.dataset.owner = owner;
  bar.hidden = false;
  bar.removeAttribute("value");
  try {
    let submitted = null;
    for (let tries = 0; submitted === null; tries++) {
      try {
        submitted = await api(`/${name}/submit`, body);
      } catch (e) {
        if (e.status !== 429 || tries >= 30) throw e;  // the queue is full: wait for a place
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
    }
    const query = `?task_id=${encodeURIComponent(submitted.task_id)}`;
    if (bar.dataset.owner === owner) bar.dataset.polls = "0";
    for (;;) {
      if (bar.dataset.owner !== owner) {
        // A newer draw took over: this one's answer will not be drawn, so free its place.
        fetch(`/${name}/cancel${query}`, { method: "PUT", headers: headers(false) }).catch(() => {});
        return null;
      }
      const status = await api(`/${name}/status${query}`);
      if (bar.dataset.owner === owner) {
        bar.dataset.polls = String(Number(bar.dataset.polls || "0") + 1);
        if (status.progress.total > 0) {
          bar.max = status.progress.total;
          bar.value = status.progress.done;
          bar.title = `${status.progress.done} of ${status.progress.total} ${status.progress.unit}`;
        }
      }
      if (status.status === "completed" || status.status === "failed") return await api(`/${name}/get${query}`);
      if (status.status === "canceled") throw new Error("the task was canceled");
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  } finally {
    if (bar.dataset.owner === owner) bar.hidden = true;
  }
}

function row(m) {
  const t = (m.metrics && m.metrics.test) || {};
  const two = t.two_sample || {};
  const critic = (m.metrics && m.metrics.critic) || {};
  const jsd = critic.jsd_lower_bound !== undefined ? critic.jsd_lower_bound : (two.jsd || {}).jsd_lower_bound;
  return {
    model: m,
    name: m.name,
    version: m.version,
    family: m.family,
    capabilities: m.capabilities.join(", "),
    data: m.data.name,
    bits_per_dim: t.bits_per_dim,
    kl: t.kl,
    c2st: (two.c2st || {}).accuracy,
    mmd_p: (two.mmd || {}).p_value,
    jsd: jsd,
  };
}

function fmt(v) {
  if (v === undefined || v === null) return "–";
  if (typeof v === "number") return Math.abs(v) >= 1000 ? v.toExponential(2) : v.toFixed(3);
  return String(v);
}

function renderTable() {
  const table = document.getElementById("models");
  const headRow = table.querySelector("thead tr");
  headRow.innerHTML = "";
  for (const [key, label] of COLUMNS) {
    const th = document.createElement("th");
    th.scope = "col";
    const sorted = state.sortKey === key;
    th.setAttribute("aria-sort", sorted ? (state.sortAsc ? "ascending" : "descending") : "none");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label + (sorted ? (state.sortAsc ? " ▲" : " ▼") : "");
    button.addEventListener("click", () => {
      state.sortAsc = state.sortKey === key ? !state.sortAsc : true;
      state.sortKey = key;
      renderTable();
    });
    th.appendChild(button);
    headRow.appendChild(th);
  }
  const actions = document.createElement("th");
  actions.scope = "col";
  actions.textContent = "open";
  headRow.appendChild(actions);

  const rows = state.models.map(row);
  rows.sort((a, b) => {
    const x = a[state.sortKey], y = b[state.sortKey];
    if (x === y) return 0;
    if (x === undefined || x === null) return 1;
    if (y === undefined || y === null) return -1;
    const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return state.sortAsc ? order : -order;
  });
  const body = table.querySelector("tbody");
  body.innerHTML = "";
  for (const r of rows) {
    const tr = document.createElement("tr");
    tr.dataset.model = r.name;
    if (state.current && state.current.name === r.name) tr.className = "selected";
    for (const [key] of COLUMNS) {
      const td = document.createElement("td");
      td.textContent = fmt(r[key]);
      tr.appendChild(td);
    }
    const td = document.createElement("td");
    const open = document.createElement("button");
    open.type = "button";
    open.textContent = "Open";
    open.setAttribute("aria-label", "Open " + r.name);
    open.addEventListener("click", () => select(r.model));
    td.appendChild(open);
    tr.appendChild(td);
    body.appendChild(tr);
  }
}

function select(model) {
  state.current = model;
  renderTable();
  const detail = document.getElementById("detail");
  detail.hidden = false;
  document.getElementById("detail-heading").textContent = model.tag;
  document.getElementById("detail-summary").textContent =
    `${model.family} on ${model.data.name} (${model.data.dim} dimensions` +
    (model.data.levels ? `, ${model.data.levels} levels` : "") + `); scores: ${model.kinds.join(", ") || "none"}`;
  const canSample = model.capabilities.includes("sample");
  document.getElementById("sample-panel").hidden = !canSample;
  // A sampler whose step count may be chosen (max_steps in /models): its count, sent with /sample.
  const variable = canSample && model.max_steps !== null && model.max_steps !== undefined;
  document.getElementById("steps-label").hidden = !variable;
  const steps = document.getElementById("steps");
  if (variable) {
    steps.max = String(model.max_steps);
    steps.value = String(model.steps);
  }
  document.getElementById("density-panel").hidden = !(model.data.dim === 2);
  const kind = document.getElementById("score-kind");
  kind.innerHTML = "";
  for (const k of model.kinds) {
    const o = document.createElement("option");
    o.value = k;
    o.textContent = k;
    kind.appendChild(o);
  }
  document.getElementById("score-error").textContent = "";
  document.getElementById("score-output").innerHTML = "";
  document.getElementById("sample-output").innerHTML = "";
  if (canSample) drawSamples();
  if (model.data.dim === 2) drawDensity();
  detail.scrollIntoView({ block: "start" });
}

// The sampling fields of a /sample body: seed, temperature, and steps where the model's
// sampler takes a chosen count (the steps input is shown only then).
function sampling() {
  const fields = {
    seed: parseInt(document.getElementById("seed").value || "0", 10),
    temperature: parseFloat(document.getElementById("temperature").value),
  };
  if (!document.getElementById("steps-label").hidden) {
    const steps = parseInt(document.getElementById("steps").value, 10);
    if (Number.isFinite(steps)) fields.steps = steps;
  }
  return fields;
}

async function drawSamples() {
  const m = state.current;
  const out = document.getElementById("sample-output");
  const { seed, temperature, steps } = sampling();
  // Draws can overlap (a field changed twice, a task finishing after a later one): only the
  // latest request's grid is drawn.
  const drawing = (state.drawing = (state.drawing || 0) + 1);
  try {
    if (m.data.image_shape) {
      // A grid can take a step sampler seconds: drawn from a task, with its progress meanwhile.
      const body = { model: m.tag, n: 16, ...sampling(), format: "png" };
      const res = await runTask("sample", body, document.getElementById("sample-progress"));
      if (drawing !== state.drawing) return;
      out.innerHTML = "";
      const img = document.createElement("img");
      img.id = "sample-grid";
      img.alt = `16 samples from ${m.tag}, seed ${seed}, temperature ${temperature}` +
        (steps === undefined ? "" : `, ${steps} steps`);
      img.src = "data:image/png;base64," + res.png;
      out.appendChild(img);
    } else if (m.data.dim === 2) {
      await drawDensity();
    } else {
      const res = await api("/sample", { model: m.tag, n: 5, ...sampling() });
      if (drawing !== state.drawing) return;
      out.textContent = res.samples.map((r) => r.map((v) => v.toFixed(3)).join(", ")).join("\n");
    }
  } catch (e) {
    if (drawing === state.drawing) out.textContent = "Error: " + e.message;
  }
}

async function drawDensity() {
  const m = state.current;
  const density = document.getElementById("density");
  const scatter = document.getElementById("scatter");
  density.dataset.drawn = "";
  const samples = (await api("/sample", { model: m.tag, n: 500, ...sampling() })).samples;
  let lim = 1;
  for (const [a, b] of samples) lim = Math.max(lim, Math.abs(a), Math.abs(b));
  lim = Math.min(lim * 1.1, 50);
  const grid = 64;
  const pts = [];
  for (let j = 0; j < grid; j++) for (let i = 0; i < grid; i++) {
    pts.push([-lim + (2 * lim * (i + 0.5)) / grid, lim - (2 * lim * (j + 0.5)) / grid]);
  }
  const kind = m.kinds.includes("log_prob") ? "log_prob" : m.kinds.includes("bound") ? "bound" : m.kinds[0];
  const ctx = density.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, density.width, density.height);
  if (kind && kind !== "discriminator") {
    const scores = (await api("/score", { model: m.tag, x: pts, kind })).scores;
    const finite = scores.filter((s) => Number.isFinite(s));
    const hi = Math.max(...finite);
    const lo = Math.max(Math.min(...finite), hi - 12);
    const cell = density.width / grid;
    scores.forEach((s, idx) => {
      const v = Number.isFinite(s) ? Math.max(0, (s - lo) / (hi - lo || 1)) : 0;
      ctx.fillStyle = `rgb(${Math.round(255 * Math.min(1, 1.5 * v))},${Math.round(255 * v * v)},${Math.round(80 * (1 - v))})`;
      ctx.fillRect((idx % grid) * cell, Math.floor(idx / grid) * cell, cell + 1, cell + 1);
    });
    density.dataset.drawn = "yes";
  }
  const sctx = scatter.getContext("2d");
  sctx.fillStyle = "#fff";
  sctx.fillRect(0, 0, scatter.width, scatter.height);
  sctx.fillStyle = "#1f5fbf";
  for (const [a, b] of samples) {
    sctx.fillRect(((a + lim) / (2 * lim)) * scatter.width - 1, ((lim - b) / (2 * lim)) * scatter.height - 1, 2, 2);
  }
  scatter.dataset.drawn = "yes";
}

function parseCsv(text) {
  const lines = text.split(/\r?\n/).filter((l) => l.trim() !== "");
  const rows = lines.map((l) => l.split(",").map((c) => c.trim()));
  if (rows.length && rows[0].some((c) => c !== "" && isNaN(Number(c)))) rows.shift(); // header
  return rows.map((r) => r.map((c) => (c === "" || isNaN(Number(c)) ? c : Number(c))));
}

function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  const magic = String.fromCharCode(...bytes.slice(1, 6));
  if (bytes[0] !== 0x93 || magic !== "NUMPY") throw new Error("not a .npy file");
  const major = bytes[6];
  const view = new DataView(buffer);
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const offset = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.slice(offset, offset + headerLen));
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  if (/'fortran_order':\s*True/.test(header)) throw new Error(".npy in Fortran order is not supported here");
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const start = offset + headerLen;
  const readers = {
    "<f8": [8, (o) => view.getFloat64(o, true)], "<f4": [4, (o) => view.getFloat32(o, true)],
    "<i8": [8, (o) => Number(view.getBigInt64(o, true))], "<i4": [4, (o) => view.getInt32(o, true)],
    "<i2": [2, (o) => view.getInt16(o, true)], "|u1": [1, (o) => view.getUint8(o)], "|i1": [1, (o) => view.getInt8(o)],
  };
  if (!readers[descr]) throw new Error(`unsupported .npy dtype ${descr}`);
  const [size, read] = readers[descr];
  const n = shape[0] || 0;
  const width = shape.slice(1).reduce((a, b) => a * b, 1);
  const rows = [];
  for (let i = 0; i < n; i++) {
    const r = [];
    for (let j = 0; j < width; j++) r.push(read(start + (i * width + j) * size));
    rows.push(r);
  }
  return rows;
}

async function scoreFile(event) {
  event.preventDefault();
  const error = document.getElementById("score-error");
  const output = document.getElementById("score-output");
  error.textContent = "";
  output.innerHTML = "";
  const file = document.getElementById("score-file").files[0];
  if (!file) { error.textContent = "Choose a .npy or .csv file first."; return; }
  let rows;
  try {
    rows = file.name.toLowerCase().endsWith(".npy") ? parseNpy(await file.arrayBuffer()) : parseCsv(await file.text());
  } catch (e) {
    error.textContent = "Could not read the file: " + e.message;
    return;
  }
  const kind = document.getElementById("score-kind").value || undefined;
  try {
    const res = await api("/score", { model: state.current.tag, x: rows, kind });
    const table = document.createElement("table");
    table.id = "score-table";
    const isProb = res.kind === "discriminator";
    table.innerHTML = `<caption>${res.kind} scores from ${res.model}</caption><thead><tr><th scope="col">row</th>` +
      `<th scope="col">${isProb ? "P(real)" : "nats"}</th>${res.bits_per_dim ? '<th scope="col">bits/dim</th>' : ""}</tr></thead>`;
    const body = document.createElement("tbody");
    res.scores.forEach((s, i) => {
      const tr = document.createElement("tr");
      tr.innerHTML = `<td>${i}</td><td>${fmt(s)}</td>` + (res.bits_per_dim ? `<td>${fmt(res.bits_per_dim[i])}</td>` : "");
      body.appendChild(tr);
    });
    table.appendChild(body);
    output.appendChild(table);
  } catch (e) {
    error.textContent = e.message;
  }
}

async function init() {
  const status = document.getElementById("models-status");
  try {
    state.models = (await api("/models")).models;
    status.textContent = `${state.models.length} model${state.models.length === 1 ? "" : "s"} served.`;
    renderTable();
  } catch (e) {
    status.textContent = "Could not list models: " + e.message;
    // The service wants a bearer token (GENREG_API_TOKEN): ask for it, keep it for later visits.
    if (e.status === 401) document.getElementById("token-form").hidden = false;
  }
  document.getElementById("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    window.localStorage.setItem("genreg-token", document.getElementById("token").value.trim());
    window.location.reload();
  });
  const temp = document.getElementById("temperature");
  temp.addEventListener("input", () => { document.getElementById("temperature-value").textContent = Number(temp.value).toFixed(2); });
  temp.addEventListener("change", drawSamples);
  document.getElementById("seed").addEventListener("change", drawSamples);
  document.getElementById("steps").addEventListener("change", drawSamples);
  document.getElementById("sample-form").addEventListener("submit", (e) => { e.preventDefault(); drawSamples(); });
  document.getElementById("score-form").addEventListener("submit", scoreFile);
}

init();

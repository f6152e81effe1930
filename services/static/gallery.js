// genreg model gallery: plain JavaScript over the public API (GET /models, POST /sample,
// POST /score, POST /encode and /decode, and /sample's task paths for image grids). A bearer token, when the service wants one, is read from localStorage
// ("genreg-token") and sent with every call. A conditional model (GET /models `classes`) is
// sampled per class (label, labels, guidance) and scored as a classifier (kind classify).
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
  resetClasses(model, canSample);
  resetLatent(model);
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
// sampler takes a chosen count (the steps input is shown only then); for a conditional model
// the picked class as label (none: each sample's class is drawn from p(y)), and guidance where
// its sampler takes a scale (those inputs are shown only then).
function sampling() {
  const fields = {
    seed: parseInt(document.getElementById("seed").value || "0", 10),
    temperature: parseFloat(document.getElementById("temperature").value),
  };
  if (!document.getElementById("steps-label").hidden) {
    const steps = parseInt(document.getElementById("steps").value, 10);
    if (Number.isFinite(steps)) fields.steps = steps;
  }
  if (!document.getElementById("class-label").hidden) {
    const label = parseInt(document.getElementById("class-picker").value, 10);
    if (Number.isFinite(label)) fields.label = label;
  }
  if (!document.getElementById("guidance-label").hidden) {
    const guidance = parseFloat(document.getElementById("guidance").value);
    if (Number.isFinite(guidance)) fields.guidance = guidance;
  }
  return fields;
}

// --- Conditional models (GET /models `classes`, `class_names`, `guidance`) ---------------------
const CLASS_GRID_PER = 8;  // samples per class in the class grid (its columns)

function isConditional(m) {
  return Number.isInteger(m.classes) && m.classes > 0;
}

function className(m, y) {
  return Array.isArray(m.class_names) && m.class_names[y] !== undefined ? String(m.class_names[y]) : String(y);
}

// The class picker, the guidance scale and the class grid's button for `model`: shown for a
// conditional model that can sample (guidance only where its sampler takes a scale), reset to
// "any class" and guidance 1 (the conditional model itself).
function resetClasses(model, canSample) {
  const conditional = canSample && isConditional(model);
  const picker = document.getElementById("class-picker");
  picker.innerHTML = "";
  const any = document.createElement("option");
  any.value = "";
  any.textContent = "any class (drawn from p(y))";
  picker.appendChild(any);
  if (conditional) {
    for (let y = 0; y < model.classes; y++) {
      const o = document.createElement("option");
      o.value = String(y);
      o.textContent = className(model, y);
      if (Array.isArray(model.class_prior)) o.title = `p(y) = ${fmt(model.class_prior[y])}`;
      picker.appendChild(o);
    }
  }
  picker.value = "";
  document.getElementById("class-label").hidden = !conditional;
  document.getElementById("guidance-label").hidden = !(conditional && model.guidance);
  document.getElementById("guidance").value = "1";
  // The grid draws rows as images: a conditional image model's.
  document.getElementById("class-grid").hidden = !(conditional && Array.isArray(model.image_shape));
  state.classGrid = (state.classGrid || 0) + 1;  // an earlier model's grid is not drawn
  document.getElementById("class-grid-figure").hidden = true;
  document.getElementById("class-grid-error").textContent = "";
  delete document.getElementById("class-grid-canvas").dataset.drawn;
}

// The class grid: CLASS_GRID_PER samples of every class from one /sample request (labels
// [0]*m + [1]*m + ...), with the sampling fields but the picked class, drawn one line per class
// with its name. /sample's png grid is near-square, so the rows (format json) are drawn here.
async function drawClassGrid() {
  const m = state.current;
  const error = document.getElementById("class-grid-error");
  const canvas = document.getElementById("class-grid-canvas");
  error.textContent = "";
  const drawing = (state.classGrid = (state.classGrid || 0) + 1);  // the latest grid only
  const { label, ...fields } = sampling();
  const labels = [];
  for (let y = 0; y < m.classes; y++) for (let i = 0; i < CLASS_GRID_PER; i++) labels.push(y);
  const body = { model: m.tag, n: labels.length, ...fields, labels };
  try {
    const res = await runTask("sample", body, document.getElementById("class-grid-progress"));
    if (res === null || drawing !== state.classGrid || state.current !== m) return;
    const names = Array.from({ length: m.classes }, (_, y) => className(m, y));
    drawImages(canvas, res.samples, CLASS_GRID_PER, names);
    const text = `${CLASS_GRID_PER} samples of each of the ${m.classes} classes of ${m.tag}, one row per class ` +
      `(${names.join(", ")}); seed ${fields.seed}, temperature ${fields.temperature}` +
      (fields.steps === undefined ? "" : `, ${fields.steps} steps`) +
      (fields.guidance === undefined ? "" : `, guidance ${fields.guidance}`) + ".";
    canvas.setAttribute("aria-label", text);
    document.getElementById("class-grid-caption").textContent = text;
    document.getElementById("class-grid-figure").hidden = false;
  } catch (e) {
    if (drawing === state.classGrid && state.current === m) error.textContent = e.message;
  }
}

async function drawSamples() {
  const m = state.current;
  const out = document.getElementById("sample-output");
  const { seed, temperature, steps, label, guidance } = sampling();
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
        (steps === undefined ? "" : `, ${steps} steps`) +
        (label === undefined ? (isConditional(m) ? ", classes drawn from p(y)" : "") : `, class ${className(m, label)}`) +
        (guidance === undefined ? "" : `, guidance ${guidance}`);
      img.src = "data:image/png;base64," + res.png;
      // The grid's request without its format answers the same rows (the seed fixes them):
      // the latent panel asks for them when one of the grid's images is clicked.
      const rowsBody = { ...body };
      delete rowsBody.format;
      state.grid = { tag: m.tag, body: rowsBody, n: body.n, rows: null };
      if (hasLatent(m)) {
        img.classList.add("pickable");
        img.title = "Click an image to put it in the latent space panel's slot";
        img.addEventListener("click", pickFromGrid);
      }
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
    const m = state.current;
    const res = await api("/score", { model: m.tag, x: rows, kind });
    if (res.kind === "classify") {
      output.appendChild(classifyTable(m, res));
      return;
    }
    const table = document.createElement("table");
    table.id = "score-table";
    const isProb = res.kind === "discriminator";
    const given = res.given === "marginal" ? " (the marginal over p(y): no labels sent)" : "";
    table.innerHTML = `<caption>${res.kind} scores from ${res.model}${given}</caption><thead><tr><th scope="col">row</th>` +
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

// /score kind classify's answer: each row's most probable class by name and its posterior
// p(y|x), with what the posterior comes from (exact likelihoods, or bounds: of the bounds).
function classifyTable(m, res) {
  const table = document.createElement("table");
  table.id = "score-table";
  table.dataset.source = res.source;
  const source = res.source === "bound"
    ? "from lower bounds on log p(x|y): the posterior of the bounds, not of exact likelihoods"
    : "from exact likelihoods log p(x|y)";
  const caption = document.createElement("caption");
  caption.textContent = `classify: each row's most probable class under ${res.model}, its posterior p(y|x) ${source}`;
  table.appendChild(caption);
  const head = document.createElement("thead");
  head.innerHTML = '<tr><th scope="col">row</th><th scope="col">class</th><th scope="col">p(class | x)</th></tr>';
  table.appendChild(head);
  const body = document.createElement("tbody");
  res.labels.forEach((y, i) => {
    const tr = document.createElement("tr");
    tr.dataset.label = String(y);
    for (const text of [String(i), className(m, y), fmt(res.scores[i])]) {
      const td = document.createElement("td");
      td.textContent = text;  // class names come from the model's data: text, never markup
      tr.appendChild(td);
    }
    body.appendChild(tr);
  });
  table.appendChild(body);
  return table;
}

// --- The latent space (POST /encode, POST /decode): image models with a latent_dim ------------
// Slots A and B each hold a row and its latent z. A gives a reconstruction and a traversal; A
// and B an interpolation. Each drawing shows the latest request's answer only.
const TRAVERSE_SPAN = 3;  // each dimension from -3 to 3 prior standard deviations
const TRAVERSE_STEPS = 9;
const TRAVERSE_DIMS = 10;  // at most this many dimensions (grid rows)
const INTERP_STEPS = 10;

function hasLatent(m) {
  return m.latent_dim !== null && m.latent_dim !== undefined && Array.isArray(m.image_shape);
}

function resetLatent(model) {
  state.latent = { a: null, b: null, tokens: {} };
  document.getElementById("latent-panel").hidden = !hasLatent(model);
  document.getElementById("latent-error").textContent = "";
  document.getElementById("latent-slot-a").checked = true;
  for (const id of ["latent-a", "latent-b", "latent-recon-figure", "latent-traverse-figure", "latent-interp-figure"]) {
    document.getElementById(id).hidden = true;
  }
  for (const id of ["latent-a-image", "latent-b-image", "latent-recon", "latent-traverse", "latent-interp"]) {
    delete document.getElementById(id).dataset.drawn;
  }
}

// A function telling whether the request started now is still the latest of its kind (`key`)
// for the model shown: a newer pick, or another model, makes an older answer stale.
function latest(key) {
  const L = state.latent;
  const token = (L.tokens[key] = (L.tokens[key] || 0) + 1);
  return () => state.latent === L && L.tokens[key] === token;
}

// The data's top level: values are drawn as 255 * v / high, after clamping to [0, high].
function dataHigh(m, rows) {
  if (typeof m.data.high === "number" && m.data.high > 0) return m.data.high;
  if (m.data.levels) return m.data.levels - 1;
  let hi = 0;
  for (const r of rows) for (const v of r) if (Number.isFinite(v) && v > hi) hi = v;
  return hi || 1;
}

// Draws rows as images (the model's image_shape, channels last) on `canvas`, `cols` to a line,
// with a label per line in a left margin when `labels` is given. A flow's decoded discrete row
// is x + u: floored to its level, as /decode's answer says.
function drawImages(canvas, rows, cols, labels) {
  const m = state.current;
  const [h, w, c] = m.image_shape;
  const floor = m.latent === "exact" && !!m.data.levels;
  const high = dataHigh(m, rows);
  const scale = Math.max(1, Math.floor(48 / Math.max(h, w)));
  const pad = 2;
  const cell = h * scale + pad;  // a line's height: one image and its gap, in canvas pixels
  const margin = labels ? 80 : 0;
  const lines = Math.ceil(rows.length / cols);
  canvas.width = margin + pad + cols * (w * scale + pad);
  canvas.height = pad + lines * cell;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#404040";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const tile = document.createElement("canvas");
  tile.width = w;
  tile.height = h;
  const tctx = tile.getContext("2d");
  const pixels = tctx.createImageData(w, h);
  ctx.imageSmoothingEnabled = false;
  rows.forEach((r, i) => {
    for (let p = 0; p < h * w; p++) {
      for (let k = 0; k < 3; k++) {
        let v = r[p * c + (c >= 3 ? k : 0)];
        if (floor) v = Math.floor(v);
        v = Number.isFinite(v) ? Math.min(high, Math.max(0, v)) : 0;
        pixels.data[4 * p + k] = Math.round((255 * v) / high);
      }
      pixels.data[4 * p + 3] = 255;
    }
    tctx.putImageData(pixels, 0, 0);
    const line = Math.floor(i / cols), col = i % cols;
    ctx.drawImage(tile, margin + pad + col * (w * scale + pad), pad + line * cell, w * scale, h * scale);
  });
  if (labels) {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, margin, canvas.height);
    ctx.fillStyle = "#111";
    ctx.font = "12px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    labels.forEach((label, line) => {
      const middle = pad + line * cell + (h * scale) / 2;
      const parts = label.split("\n");
      parts.forEach((part, j) => ctx.fillText(part, 4, middle + (j - (parts.length - 1) / 2) * 14));
    });
  }
  canvas.dataset.rows = String(lines);
  canvas.dataset.cols = String(cols);
  canvas.dataset.cell = String(cell);
  canvas.dataset.drawn = "yes";
}

function latentSeed() {
  return parseInt(document.getElementById("seed").value || "0", 10);
}

// Puts `row` in slot "a" or "b": encodes it, then redraws what depends on that slot.
async function setSlot(slot, row, source) {
  const m = state.current;
  const L = state.latent;
  const error = document.getElementById("latent-error");
  const live = latest("slot-" + slot);
  error.textContent = "";
  try {
    const res = await api("/encode", { model: m.tag, x: [row], seed: latentSeed() });
    if (!live()) return;
    L[slot] = { row, z: res.z[0], source };
    const canvas = document.getElementById(`latent-${slot}-image`);
    drawImages(canvas, [row], 1);
    canvas.setAttribute("aria-label", `row ${slot.toUpperCase()}: ${source}`);
    document.getElementById(`latent-${slot}-caption`).textContent = `${slot.toUpperCase()}: ${source}`;
    document.getElementById(`latent-${slot}`).hidden = false;
    if (slot === "a") document.getElementById("latent-slot-b").checked = true;  // the next pick is B
    await Promise.all(slot === "a" ? [reconstruct(), traverse(), interpolate()] : [interpolate()]);
  } catch (e) {
    if (live()) error.textContent = e.message;
  }
}

async function reconstruct() {
  const m = state.current;
  const a = state.latent.a;
  const live = latest("recon");
  const res = await api("/decode", { model: m.tag, z: [a.z], seed: latentSeed() });
  if (!live()) return;
  drawImages(document.getElementById("latent-recon"), [a.row, res.x[0]], 2);
  document.getElementById("latent-recon-figure").hidden = false;
}

// The traversal's dimensions, most informative first: a VAE's by its stored per-dimension KL
// (metrics.test.latent.kl_per_dim), largest first; otherwise in index order.
function traversalDims(m) {
  const kl = (((m.metrics || {}).test || {}).latent || {}).kl_per_dim;
  const known = Array.isArray(kl) && kl.length === m.latent_dim ? kl : null;
  const dims = Array.from({ length: m.latent_dim }, (_, i) => i);
  if (known) dims.sort((i, j) => known[j] - known[i] || i - j);
  return { dims: dims.slice(0, TRAVERSE_DIMS), kl: known };
}

async function traverse() {
  const m = state.current;
  const a = state.latent.a;
  const live = latest("traverse");
  const { dims, kl } = traversalDims(m);
  const values = Array.from({ length: TRAVERSE_STEPS }, (_, i) => -TRAVERSE_SPAN + (2 * TRAVERSE_SPAN * i) / (TRAVERSE_STEPS - 1));
  const z = [];
  for (const d of dims) for (const v of values) {
    const row = a.z.slice();
    row[d] = v;
    z.push(row);
  }
  const res = await api("/decode", { model: m.tag, z, seed: latentSeed() });  // one call for the grid
  if (!live()) return;
  const labels = dims.map((d) => `z${d}` + (kl ? `\nKL ${kl[d].toFixed(2)}` : ""));
  const canvas = document.getElementById("latent-traverse");
  drawImages(canvas, res.x, TRAVERSE_STEPS, labels);
  const text = `Traversal of A's z: one row per dimension (${dims.map((d) => "z" + d).join(", ")}` +
    (kl ? ", by KL in nats, largest first" : "") + `), ${TRAVERSE_STEPS} values from −${TRAVERSE_SPAN} to ${TRAVERSE_SPAN}.`;
  canvas.setAttribute("aria-label", text);
  document.getElementById("latent-traverse-caption").textContent = text;
  document.getElementById("latent-traverse-figure").hidden = false;
}

// `steps` points from a to b on the great circle (slerp), or on the line where the two are
// (nearly) parallel, as registry.runtime.latent.slerp.
function slerp(a, b, steps) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  const omega = Math.acos(Math.min(1, Math.max(-1, dot / Math.max(Math.sqrt(na * nb), 1e-12))));
  const out = [];
  for (let s = 0; s < steps; s++) {
    const t = s / (steps - 1);
    const [wa, wb] = Math.sin(omega) < 1e-6
      ? [1 - t, t]
      : [Math.sin((1 - t) * omega) / Math.sin(omega), Math.sin(t * omega) / Math.sin(omega)];
    out.push(a.map((v, i) => wa * v + wb * b[i]));
  }
  return out;
}

async function interpolate() {
  const m = state.current;
  const { a, b } = state.latent;
  const live = latest("interp");
  if (!a || !b) return;
  const res = await api("/decode", { model: m.tag, z: slerp(a.z, b.z, INTERP_STEPS), seed: latentSeed() });
  if (!live()) return;
  const canvas = document.getElementById("latent-interp");
  drawImages(canvas, res.x, INTERP_STEPS);
  const text = `Interpolation from A (${a.source}) to B (${b.source}): ${INTERP_STEPS} points, spherical, decoded.`;
  canvas.setAttribute("aria-label", text);
  document.getElementById("latent-interp-caption").textContent = text;
  document.getElementById("latent-interp-figure").hidden = false;
}

function chosenSlot() {
  return document.getElementById("latent-slot-b").checked ? "b" : "a";
}

// A click on the sample grid (png_grid's layout: near-square, a 1-pixel gap around each image)
// picks the image under it: its row comes from /sample with the grid's own fields.
async function pickFromGrid(event) {
  const m = state.current;
  const grid = state.grid;
  if (!hasLatent(m) || !grid || grid.tag !== m.tag) return;
  const img = event.currentTarget;
  const [h, w] = m.image_shape;
  const gap = 1;
  const cols = Math.ceil(Math.sqrt(grid.n)), lines = Math.ceil(grid.n / cols);
  const x = (event.offsetX / img.clientWidth) * (cols * (w + gap) + gap);
  const y = (event.offsetY / img.clientHeight) * (lines * (h + gap) + gap);
  const col = Math.min(cols - 1, Math.max(0, Math.floor((x - gap) / (w + gap))));
  const line = Math.min(lines - 1, Math.max(0, Math.floor((y - gap) / (h + gap))));
  const index = line * cols + col;
  if (index >= grid.n) return;
  const slot = chosenSlot();
  try {
    if (!grid.rows) grid.rows = (await api("/sample", grid.body)).samples;
  } catch (e) {
    document.getElementById("latent-error").textContent = e.message;
    return;
  }
  if (state.grid !== grid || state.current !== m) return;  // another grid or model since
  // A discrete model's samples are its levels; /encode takes nothing else.
  const levels = m.data.levels;
  const row = levels ? grid.rows[index].map((v) => Math.min(levels - 1, Math.max(0, Math.round(v)))) : grid.rows[index];
  await setSlot(slot, row, `sample ${index + 1} of the grid (seed ${grid.body.seed})`);
}

async function latentFile(event) {
  event.preventDefault();
  const error = document.getElementById("latent-error");
  error.textContent = "";
  const file = document.getElementById("latent-file").files[0];
  if (!file) { error.textContent = "Choose a .npy, .csv or .json file first."; return; }
  let rows;
  try {
    const name = file.name.toLowerCase();
    if (name.endsWith(".npy")) rows = parseNpy(await file.arrayBuffer());
    else if (name.endsWith(".json")) {
      const data = JSON.parse(await file.text());
      rows = Array.isArray(data) && !Array.isArray(data[0]) ? [data] : data;  // one row, or rows
    } else rows = parseCsv(await file.text());
    if (!Array.isArray(rows) || !rows.length) throw new Error("it holds no rows");
  } catch (e) {
    error.textContent = "Could not read the file: " + e.message;
    return;
  }
  await setSlot(chosenSlot(), rows[0], `row 1 of ${file.name}`);
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
  document.getElementById("class-picker").addEventListener("change", drawSamples);
  document.getElementById("guidance").addEventListener("change", drawSamples);
  document.getElementById("class-grid").addEventListener("click", drawClassGrid);
  document.getElementById("sample-form").addEventListener("submit", (e) => { e.preventDefault(); drawSamples(); });
  document.getElementById("score-form").addEventListener("submit", scoreFile);
  document.getElementById("latent-form").addEventListener("submit", latentFile);
}

init();

/* Crucible dashboard: fills the server-rendered shells with data from the API.
 *
 * Auth: the token is entered once per browser tab session and kept in
 * sessionStorage; every request sends it as `Authorization: Bearer` (never in
 * a URL). A 401 opens the token prompt. Events come from the SSE endpoint read
 * with fetch (EventSource cannot send headers); after a dropped connection the
 * stream resumes with `Last-Event-ID`, so no event is lost or drawn twice.
 * Everything from the API is put in the page as text (textContent), never as
 * HTML.
 */
"use strict";

const TOKEN_KEY = "crucible.token";
const TERMINAL = new Set(["succeeded", "failed", "cancelled", "dead", "budget_exhausted"]);
const RETRYABLE = new Set(["failed", "cancelled", "dead", "budget_exhausted"]);
const COLORS = ["#0b5cad", "#c2410c", "#1b6e20", "#7b2cbf", "#a4161a", "#00707a", "#6b4f00", "#333333"];

/* Test and benchmark hooks: what the page received and when it drew it. */
const debug = (window.crucibleDebug = { eventIds: [], rendered: [], drops: 0, dropStream: null });

class AuthNeeded extends Error {}

function $(id) { return document.getElementById(id); }
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = String(v);
    else if (k === "className") node.className = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }
function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(4);
  return typeof v === "string" ? v : JSON.stringify(v);
}
const compact = new Intl.NumberFormat("en", { notation: "compact", maximumSignificantDigits: 3 });
function axisNumber(v) {
  if (v === null || v === undefined) return "";
  return Math.abs(v) >= 1000 ? compact.format(v) : String(+v.toPrecision(3));
}
function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}

/* -- auth ----------------------------------------------------------------- */

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  if (token()) h.Authorization = `Bearer ${token()}`;
  return h;
}
function askToken(reason) {
  const panel = $("token-panel");
  $("token-reason").textContent = reason;
  panel.hidden = false;
  $("token-input").focus();
}
function setupTokenForm() {
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const v = $("token-input").value.trim();
    if (!v) return;
    sessionStorage.setItem(TOKEN_KEY, v);
    $("token-input").value = "";
    location.reload();
  });
  $("token-forget").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); });
  $("token-change").addEventListener("click", () => askToken(token() ? "Enter another token." : "Enter a token."));
}

async function problemOf(r) {
  try { return await r.json(); } catch (_) { return { detail: `HTTP ${r.status}` }; }
}

/* fetch JSON through the API with the session's token; 401 opens the prompt. */
async function api(path, opts) {
  const o = opts || {};
  const headers = authHeaders(o.body !== undefined ? { "Content-Type": "application/json" } : {});
  const r = await fetch(path, {
    method: o.method || "GET", headers, cache: "no-store",
    body: o.body !== undefined ? JSON.stringify(o.body) : undefined,
  });
  if (r.status === 401) {
    askToken(token()
      ? "The token was refused (expired, revoked or wrong). Enter another token."
      : "This server needs a token. Enter one to continue.");
    throw new AuthNeeded();
  }
  if (!r.ok) {
    const p = await problemOf(r);
    const err = new Error(p.detail || `HTTP ${r.status}`);
    err.status = r.status; err.problem = p;
    throw err;
  }
  return r.json();
}

let who = { scopes: [], tenant: "" };
function can(scope) { return who.scopes.includes(scope) || who.scopes.includes("admin"); }
async function loadWho() {
  who = await api("/ui/api/whoami");
  $("whoami").textContent = who.open
    ? "open server (no token needed)"
    : `tenant ${who.tenant} · ${who.scopes.join(", ")}`;
}

/* -- events --------------------------------------------------------------- */

/* Read a job's SSE stream with fetch; resume with Last-Event-ID after a drop.
 * h.event(id, kind, data), h.end(data), h.state("live"|"reconnecting"|"ended"),
 * h.missing(). Returns when the stream ended or auth failed. */
async function followEvents(jobId, h) {
  let last = 0;
  let delay = 250;
  for (;;) {
    const ctl = new AbortController();
    debug.dropStream = () => { debug.drops++; ctl.abort(); };
    let ended = false;
    try {
      const headers = authHeaders({ Accept: "text/event-stream" });
      if (last) headers["Last-Event-ID"] = String(last);
      const r = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events`, { headers, signal: ctl.signal, cache: "no-store" });
      if (r.status === 401) { askToken("The token was refused (expired, revoked or wrong). Enter another token."); return; }
      if (r.status === 404) { h.missing(); return; }
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      h.state("live");
      delay = 250;
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      let ev = { data: [] };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          let line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (line.endsWith("\r")) line = line.slice(0, -1);
          if (line === "") {
            if (ev.data.length) {
              const data = JSON.parse(ev.data.join("\n"));
              if (ev.event === "end") { ended = true; h.end(data); }
              else if (ev.id !== undefined) {
                const id = Number(ev.id);
                if (id > last) { last = id; debug.eventIds.push(id); h.event(id, ev.event || "message", data); }
              }
            }
            ev = { data: [] };
            continue;
          }
          if (line.startsWith(":")) continue;
          const c = line.indexOf(":");
          const field = c < 0 ? line : line.slice(0, c);
          let val = c < 0 ? "" : line.slice(c + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (field === "id") ev.id = val;
          else if (field === "event") ev.event = val;
          else if (field === "data") ev.data.push(val);
        }
      }
    } catch (_) {
      /* a dropped connection: reconnect below */
    }
    if (ended) { h.state("ended"); return; }
    h.state("reconnecting");
    await sleep(delay);
    delay = Math.min(delay * 2, 5000);
  }
}

/* -- charts --------------------------------------------------------------- */

class Curves {
  constructor(node, label, height) {
    this.node = node; this.label = label; this.height = height || 240;
    this.series = new Map(); /* name -> Map(step -> value) */
    this.plot = null; this.pending = false; this.count = 0;
    if (window.ResizeObserver) new ResizeObserver(() => this.plot && this.plot.setSize(this.size())).observe(node);
  }
  size() { return { width: Math.max(200, this.node.clientWidth), height: this.height }; }
  add(name, step, value) {
    if (typeof value !== "number" || !Number.isFinite(value) || typeof step !== "number") return;
    let m = this.series.get(name);
    if (!m) { m = new Map(); this.series.set(name, m); }
    if (!m.has(step)) this.count++;
    m.set(step, value);
    this.schedule(step);
  }
  schedule(step) {
    this.lastStep = step;
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.render(); });
  }
  render() {
    if (!window.uPlot || !this.series.size) return;
    const names = [...this.series.keys()];
    const xs = [...new Set(names.flatMap((n) => [...this.series.get(n).keys()]))].sort((a, b) => a - b);
    const data = [xs, ...names.map((n) => { const m = this.series.get(n); return xs.map((x) => (m.has(x) ? m.get(x) : null)); })];
    if (!this.plot || this.plot.series.length - 1 !== names.length) {
      if (this.plot) this.plot.destroy();
      this.node.textContent = "";
      this.plot = new uPlot({
        ...this.size(),
        scales: { x: { time: false } },
        axes: this.height < 200
          ? [{}, { size: 56, values: (u, vals) => vals.map(axisNumber) }]
          : [{ label: "step" }, { label: this.label, size: 60, values: (u, vals) => vals.map(axisNumber) }],
        legend: { show: this.height >= 200 },
        series: [{ label: "step" }, ...names.map((n, i) => ({ label: n, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true, points: { show: (u) => u.data[0].length < 60 } }))],
      }, data, this.node);
    } else {
      this.plot.setData(data);
    }
    this.node.dataset.points = String(this.count);
    debug.rendered.push({ step: this.lastStep, at: Date.now(), points: this.count });
    if (debug.rendered.length > 5000) debug.rendered.splice(0, 1000);
  }
}

/* One small chart per metric (their scales differ: tokens in thousands, lr in 1e-4). */
class MetricCharts {
  constructor(box) { this.box = box; this.charts = new Map(); }
  get count() { let n = 0; for (const c of this.charts.values()) n += c.count; return n; }
  add(name, step, value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return;
    let c = this.charts.get(name);
    if (!c) {
      const empty = this.box.querySelector(".state");
      if (empty) empty.remove();
      const node = el("div", { className: "chart", role: "img", "aria-label": `${name} by step` });
      this.box.append(el("figure", {}, node, el("figcaption", { text: name })));
      c = new Curves(node, name, 150);
      this.charts.set(name, c);
    }
    c.add(name, step, value);
  }
}

/* Turn an event into chart points; returns true if it drew something. */
function plotEvent(kind, ev, loss, metrics, prefix) {
  const p = prefix ? `${prefix} ` : "";
  const d = ev.data || {};
  if (kind === "train.step" && typeof ev.step === "number") {
    loss.add(`${p}train loss`, ev.step, d.loss);
    for (const [k, v] of Object.entries(d.metrics || {})) if (metrics) metrics.add(`${p}${k}`, ev.step, v);
    return true;
  }
  if (kind === "eval.metric" && typeof ev.step === "number") {
    const split = d.split || "eval";
    loss.add(`${p}${split} loss`, ev.step, d.loss);
    for (const [k, v] of Object.entries(d.metrics || {})) {
      if (k.endsWith("loss")) loss.add(`${p}${split} ${k}`, ev.step, v); /* val_loss beside the train loss */
      else if (metrics) metrics.add(`${p}${split} ${k}`, ev.step, v);
    }
    return true;
  }
  return false;
}

/* -- jobs page ------------------------------------------------------------ */

async function jobsPage() {
  const selected = new Set();
  const rows = new Map();
  const tbody = document.querySelector("#jobs tbody");
  const compare = $("compare");
  const kind = $("f-kind"), status = $("f-status"), text = $("f-text");
  compare.addEventListener("click", () => { location.href = `/compare?runs=${[...selected].map(encodeURIComponent).join(",")}`; });
  const refreshCompare = () => {
    compare.disabled = selected.size < 2 || selected.size > 5;
    compare.textContent = `Compare selected (${selected.size})`;
  };
  refreshCompare();

  function row(job) {
    let r = rows.get(job.id);
    if (!r) {
      const box = el("input", { type: "checkbox", "aria-label": `Select ${job.id} to compare` });
      box.addEventListener("change", () => { if (box.checked) selected.add(job.id); else selected.delete(job.id); refreshCompare(); });
      const cells = {};
      r = el("tr", { "data-job": job.id });
      r.append(el("td", { "data-label": "Compare" }, box));
      r.append(el("td", { "data-label": "Job" }, el("a", { href: `/runs/${encodeURIComponent(job.id)}`, text: job.id })));
      for (const k of ["name", "kind", "backend", "status", "progress", "loss", "created"]) {
        cells[k] = el("td", { "data-label": k[0].toUpperCase() + k.slice(1) });
        r.append(cells[k]);
      }
      r.cells_ = cells;
      rows.set(job.id, r);
    }
    const c = r.cells_;
    const p = job.progress || {};
    c.name.textContent = job.name || "–";
    c.kind.textContent = job.kind;
    c.backend.textContent = job.backend || "–";
    c.status.textContent = job.status;
    c.status.className = `status status-${job.status}`;
    if (typeof p.step === "number") {
      const total = p.total_steps;
      c.progress.textContent = total ? `${p.step}/${total}` : `step ${p.step}`;
    } else c.progress.textContent = "–";
    c.loss.textContent = fmt(p.loss);
    c.created.textContent = job.created_at ? new Date(job.created_at).toLocaleString() : "–";
    return r;
  }

  async function refresh() {
    const q = new URLSearchParams();
    if (status.value) q.set("status", status.value);
    if (kind.value) q.set("kind", kind.value);
    const data = await api(`/ui/api/jobs?${q}`);
    const needle = text.value.trim().toLowerCase();
    const items = data.items.filter((j) => !needle || j.id.toLowerCase().includes(needle) || (j.name || "").toLowerCase().includes(needle));
    const wanted = items.map(row);
    /* Reorder in place (keeps focus and checkboxes), drop rows filtered out. */
    wanted.forEach((r, i) => { if (tbody.children[i] !== r) tbody.insertBefore(r, tbody.children[i] || null); });
    while (tbody.children.length > wanted.length) tbody.lastChild.remove();
    $("jobs-state").textContent = items.length ? `${items.length} job(s), updated ${new Date().toLocaleTimeString()}` : "No jobs match.";
  }
  for (const f of [status, kind]) f.addEventListener("change", () => refresh().catch(() => {}));
  text.addEventListener("input", () => refresh().catch(() => {}));
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  for (;;) {
    try { await refresh(); } catch (e) {
      if (e instanceof AuthNeeded) return;
      $("jobs-state").textContent = `Could not load the jobs: ${e.message}`;
    }
    await sleep(2000);
  }
}

/* -- run page ------------------------------------------------------------- */

async function runPage() {
  const jobId = document.body.dataset.jobId;
  const loss = new Curves($("chart-loss"), "loss");
  const metrics = new MetricCharts($("metric-charts"));
  let total = null;
  let job = null;
  const missing = () => { $("run").hidden = true; $("run-missing").hidden = false; document.title = "Not found · Crucible"; };

  async function loadJob() {
    const view = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
    job = view.job;
    const payload = job.payload || {};
    const name = (job.metadata || {}).name || (payload.metadata || {}).name || job.kind;
    $("run-name").textContent = name;
    const st = $("run-status");
    st.textContent = job.status;
    st.className = `status status-${job.status}`;
    const backend = typeof payload.backend === "string" ? payload.backend : (payload.backend || {}).name;
    $("run-backend").textContent = backend || "–";
    const p = view.progress || {};
    if (p.total_steps) total = p.total_steps;
    if (typeof p.step === "number") setStep(p.step);
    $("cancel").hidden = !(can("jobs:write") && !TERMINAL.has(job.status));
    $("retry").hidden = !(can("jobs:write") && RETRYABLE.has(job.status));
    if (job.error) { $("error-section").hidden = false; $("error").textContent = JSON.stringify(job.error, null, 2); }
    return view;
  }
  function setStep(step) {
    $("run-step").textContent = total ? `${step} / ${total}` : String(step);
    const bar = $("run-progress");
    if (total) { bar.max = total; bar.value = step; } else bar.removeAttribute("value");
  }
  async function loadArtifacts() {
    if (!can("artifacts:read")) { $("artifacts-state").textContent = "This token lacks the artifacts:read scope."; return; }
    const data = await api(`/ui/api/jobs/${encodeURIComponent(jobId)}/artifacts`);
    const body = document.querySelector("#artifacts tbody");
    body.textContent = "";
    for (const a of data.items) {
      const link = el("a", { href: a.url, "data-download": a.path.split("/").pop(), text: a.path });
      body.append(el("tr", {}, el("td", {}, link), el("td", { text: bytes(a.size) }), el("td", { className: "hash", text: a.sha256 })));
    }
    $("artifacts-state").textContent = data.items.length ? "" : "No files yet.";
  }
  const ckpts = document.querySelector("#checkpoints tbody");
  function onEvent(id, kind, ev) {
    if (kind === "train.start" && typeof (ev.data || {}).total_steps === "number") total = ev.data.total_steps;
    if (plotEvent(kind, ev, loss, metrics, "")) {
      $("points").textContent = String(loss.count + metrics.count);
      if (typeof ev.step === "number" && kind === "train.step") setStep(ev.step);
    } else if (kind === "train.checkpoint") {
      const d = ev.data || {};
      ckpts.append(el("tr", {}, el("td", { text: fmt(ev.step) }), el("td", { text: d.checkpoint_kind || d.kind || "–" }), el("td", { className: "hash", text: d.uri || "–" })));
    }
  }

  $("cancel").addEventListener("click", async () => {
    if (!window.confirm(`Cancel job ${jobId}? A running job stops at its next step.`)) return;
    try {
      const j = await api(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" });
      $("action-result").textContent = `Cancel requested: the job is ${j.status}.`;
      await loadJob();
    } catch (e) { if (!(e instanceof AuthNeeded)) $("action-result").textContent = `Cancel refused: ${e.message}`; }
  });
  $("retry").addEventListener("click", async () => {
    if (!window.confirm(`Retry job ${jobId}? It is queued again.`)) return;
    try {
      const j = await api(`/v1/jobs/${encodeURIComponent(jobId)}/retry`, { method: "POST" });
      $("action-result").textContent = `Requeued: the job is ${j.status}.`;
      location.reload();
    } catch (e) { if (!(e instanceof AuthNeeded)) $("action-result").textContent = `Retry refused: ${e.message}`; }
  });
  document.addEventListener("click", downloadWithToken);

  try { await loadJob(); } catch (e) {
    if (e.status === 404) return missing();
    throw e;
  }
  $("config").textContent = JSON.stringify(job.payload, null, 2);
  if (job.kind === "training_run") {
    api("/v1/plan", { method: "POST", body: job.payload })
      .then((plan) => { $("plan").textContent = JSON.stringify(plan, null, 2); })
      .catch((e) => { $("plan").textContent = `No plan: ${e.message}`; });
  } else $("plan").textContent = `A ${job.kind} job has no training plan.`;
  if (job.kind === "experiment_step") showExperiment(job);
  loadArtifacts().catch((e) => { $("artifacts-state").textContent = `Could not list the files: ${e.message}`; });

  /* Status changes (cancel from elsewhere, requeue) show without reload. */
  (async () => {
    while (job && !TERMINAL.has(job.status)) {
      await sleep(1500);
      try { await loadJob(); } catch (_) { /* shown by the stream state */ }
    }
  })();

  const state = $("stream-state");
  await followEvents(jobId, {
    event: onEvent,
    missing,
    end: () => {},
    state: (s) => {
      state.textContent = { live: "live", reconnecting: "reconnecting…", ended: "ended (job finished)" }[s];
      state.className = `stream ${s}`;
    },
  });
  await loadJob().catch(() => {});
  loadArtifacts().catch(() => {});
}

function showExperiment(job) {
  $("experiment").hidden = false;
  const body = $("experiment-body");
  body.textContent = "";
  const exp = job.payload || {};
  body.append(el("h3", { text: "Grid" }), el("pre", { className: "json", tabindex: "0", text: JSON.stringify(exp.grid || exp.cells || exp, null, 2) }));
  if (job.result !== null && job.result !== undefined) {
    body.append(el("h3", { text: "Report" }), el("pre", { className: "json", tabindex: "0", text: JSON.stringify(job.result, null, 2) }));
  }
}

/* Artifact links need the token, which a plain link cannot send: fetch, then save the blob. */
async function downloadWithToken(e) {
  const a = e.target.closest && e.target.closest("a[data-download]");
  if (!a || !token()) return; /* an open server serves the plain link */
  e.preventDefault();
  const r = await fetch(a.getAttribute("href"), { headers: authHeaders(), cache: "no-store" });
  if (!r.ok) { $("action-result").textContent = `Download refused: HTTP ${r.status}`; return; }
  const url = URL.createObjectURL(await r.blob());
  const tmp = el("a", { href: url, download: a.dataset.download });
  document.body.append(tmp); tmp.click(); tmp.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/* -- compare page ----------------------------------------------------------- */

async function comparePage() {
  const ids = (document.body.dataset.runs || "").split(",").filter(Boolean);
  const stateEl = $("compare-state");
  if (ids.length < 2) { stateEl.textContent = "Pick 2 to 5 runs (on the jobs page, or type their ids)."; return; }
  const loss = new Curves($("chart-compare-loss"), "loss");
  for (const id of ids) {
    followEvents(id, {
      event: (_, kind, ev) => plotEvent(kind, ev, loss, null, id),
      end: () => {}, state: () => {},
      missing: () => { stateEl.textContent = `No run ${id} that this token can see.`; },
    });
  }
  try {
    const d = await api(`/ui/api/diff?runs=${ids.map(encodeURIComponent).join(",")}`);
    const box = $("diff");
    box.textContent = "";
    for (const part of d.diffs) {
      box.append(el("h3", {}, `${d.base} vs ${part.run}`));
      if (!part.changes.length) { box.append(el("p", { text: "Same record." })); continue; }
      const t = el("table", {}, el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "key" }), el("th", { scope: "col", text: d.base }), el("th", { scope: "col", text: part.run }))));
      const tb = el("tbody");
      for (const c of part.changes) tb.append(el("tr", {}, el("td", { text: c.key }), el("td", { className: "hash", text: fmt(c.a) }), el("td", { className: "hash", text: fmt(c.b) })));
      t.append(tb);
      box.append(el("div", { className: "scroll" }, t));
    }
  } catch (e) { if (!(e instanceof AuthNeeded)) stateEl.textContent = `No diff: ${e.message}`; }
}

/* -- lineage page ----------------------------------------------------------- */

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, String(v));
  if (text !== undefined) n.textContent = text;
  return n;
}

/* Columns by distance: ancestors left, the node in the middle, descendants right. */
function lineageSvg(root, up, down) {
  const cols = new Map();
  const edges = [];
  const place = (node, depth, parent, dir) => {
    if (!cols.has(depth)) cols.set(depth, []);
    const key = `${depth}:${node.id}`;
    if (!cols.get(depth).some((n) => n.key === key)) cols.get(depth).push({ key, node });
    if (parent) edges.push(dir < 0 ? [key, parent] : [parent, key]);
    for (const c of node.children || []) place(c, depth + dir, key, dir);
  };
  cols.set(0, [{ key: `0:${root}`, node: (up || down || { id: root, label: root, type: "run" }) }]);
  for (const c of (up && up.children) || []) place(c, -1, `0:${root}`, -1);
  for (const c of (down && down.children) || []) place(c, 1, `0:${root}`, 1);
  const depths = [...cols.keys()].sort((a, b) => a - b);
  const W = 220, H = 56, GX = 60, GY = 16;
  const pos = new Map();
  depths.forEach((d, ci) => cols.get(d).forEach((n, ri) => pos.set(n.key, { x: 10 + ci * (W + GX), y: 10 + ri * (H + GY), n })));
  const width = 20 + depths.length * (W + GX) - GX;
  const height = 20 + Math.max(...depths.map((d) => cols.get(d).length)) * (H + GY) - GY;
  const s = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-labelledby": "lineage-title" });
  s.append(svg("title", { id: "lineage-title" }, `Lineage of ${root}: ${pos.size} nodes`));
  for (const [a, b] of edges) {
    const p = pos.get(a), q = pos.get(b);
    if (p && q) s.append(svg("line", { x1: p.x + W, y1: p.y + H / 2, x2: q.x, y2: q.y + H / 2, stroke: "#4a4a4a", "stroke-width": 1.5 }));
  }
  for (const { x, y, n } of pos.values()) {
    const g = svg("g", {});
    g.append(svg("title", {}, `${n.node.type || "node"} ${n.node.id}`));
    g.append(svg("rect", { x, y, width: W, height: H, rx: 6, fill: n.key.startsWith("0:") ? "#e8f1fb" : "#ffffff", stroke: "#0b5cad" }));
    g.append(svg("text", { x: x + 8, y: y + 20, "font-weight": 700 }, n.node.type || "node"));
    const label = String(n.node.label || n.node.id);
    g.append(svg("text", { x: x + 8, y: y + 40 }, label.length > 30 ? `${label.slice(0, 29)}…` : label));
    const id = String(n.node.id);
    let href = null;
    if (id.startsWith("models:/")) {
      const [name, version] = id.slice("models:/".length).split("/");
      href = `/models/${encodeURIComponent(name)}/${encodeURIComponent(version)}/lineage`;
    } else if (/^job[-_:]/.test(id) || n.node.type === "run") href = `/runs/${encodeURIComponent(id)}`;
    else if (!n.key.startsWith("0:")) href = `/lineage?node=${encodeURIComponent(id)}`; /* a dataset, an artifact... */
    if (href) {
      const a = svg("a", { href });
      a.append(g); s.append(a);
    } else s.append(g);
  }
  return s;
}

async function lineagePage() {
  const id = document.body.dataset.node;
  const model = document.body.dataset.source === "model";
  const source = document.body.dataset.source;
  const url = model
    ? `/ui/api/models/${id.split("/").map(encodeURIComponent).join("/versions/")}/lineage`
    : source === "node"
      ? `/ui/api/lineage?node=${encodeURIComponent(id)}`
      : `/v1/runs/${encodeURIComponent(id)}/lineage`;
  try {
    const d = await api(url);
    if (!d.ancestors && !d.descendants) { $("lineage-state").textContent = "This run has no lineage recorded yet."; return; }
    $("lineage").append(lineageSvg(id, d.ancestors, d.descendants));
    $("lineage-state").textContent = "";
  } catch (e) {
    if (!(e instanceof AuthNeeded)) $("lineage-state").textContent = e.status === 404 ? "Not found." : `No lineage: ${e.message}`;
  }
}

/* -- models page ------------------------------------------------------------ */

async function modelsPage() {
  if (document.body.dataset.registry !== "yes") return;
  const box = $("models");
  const render = async () => {
    const data = await api("/ui/api/models");
    box.textContent = "";
    if (!data.models.length) { $("models-state").textContent = "No model is registered yet (crucible models register)."; return; }
    for (const m of data.models) {
      const sec = el("section", { className: "model", "aria-label": `Model ${m.name}` }, el("h2", { text: m.name }));
      const vt = el("table", {}, el("thead", {}, el("tr", {}, ...["version", "run", "metrics", "created", "archived"].map((h) => el("th", { scope: "col", text: h })))));
      const vb = el("tbody");
      for (const v of m.versions) {
        vb.append(el("tr", {},
          el("td", {}, `v${v.version} `, el("a", { href: `/models/${encodeURIComponent(m.name)}/${v.version}/lineage`, text: "lineage", "aria-label": `Lineage of ${m.name} v${v.version}` })),
          el("td", {}, v.run_id ? el("a", { href: `/runs/${encodeURIComponent(v.run_id)}`, text: v.run_id }) : "–"),
          el("td", { className: "hash", text: JSON.stringify(v.metrics || {}) }),
          el("td", { text: v.created_at || "–" }),
          el("td", { text: v.archived ? "yes" : "no" })));
      }
      vt.append(vb);
      sec.append(el("h3", { text: "Versions" }), el("div", { className: "scroll" }, vt), el("h3", { text: "Aliases" }));
      for (const a of m.aliases) {
        const head = el("p", { "data-alias": a.alias }, el("strong", { text: a.alias }), ` → v${a.version}`);
        if (can("admin")) {
          const b = el("button", { type: "button", className: "secondary", text: `Roll back ${a.alias}` });
          b.addEventListener("click", async () => {
            if (!window.confirm(`Roll ${m.name}@${a.alias} back to its previous version?`)) return;
            try { await api(`/ui/api/models/${encodeURIComponent(m.name)}/aliases/${encodeURIComponent(a.alias)}/rollback`, { method: "POST" }); await render(); }
            catch (e) { if (!(e instanceof AuthNeeded)) $("models-state").textContent = `Rollback refused: ${e.message}`; }
          });
          head.append(" ", b);
        }
        const hist = el("ol", { reversed: true });
        for (const h of a.history) {
          const li = el("li", { text: `${h.at || ""} ${h.action || "move"}: ${h.previous === null || h.previous === undefined ? "–" : `v${h.previous}`} → ${h.version === null || h.version === undefined ? "–" : `v${h.version}`} by ${h.actor || "?"}${h.reason ? ` (${h.reason})` : ""}` });
          if (h.evidence && h.evidence.length) li.append(el("pre", { className: "json", text: JSON.stringify(h.evidence, null, 2) }));
          hist.append(li);
        }
        sec.append(head, hist);
      }
      if (m.gates && m.gates.length) sec.append(el("h3", { text: "Gates" }), el("ul", {}, ...m.gates.map((g) => el("li", { text: `${g.alias}: ${g.rule}` }))));
      box.append(sec);
    }
    $("models-state").textContent = "";
  };
  try { await render(); } catch (e) { if (!(e instanceof AuthNeeded)) $("models-state").textContent = `Could not load the models: ${e.message}`; }
}

/* -- experiments -------------------------------------------------------------- */

async function experimentsPage() {
  const body = document.querySelector("#experiments tbody");
  try {
    const data = await api("/ui/api/experiments");
    for (const x of data.items) {
      const statuses = Object.entries(x.statuses).map(([k, n]) => `${n} ${k}`).join(", ");
      body.append(el("tr", {},
        el("td", {}, el("a", { href: `/experiments/${encodeURIComponent(x.id)}`, text: x.id })),
        el("td", { text: x.cells }), el("td", { text: statuses }),
        el("td", { text: x.created_at ? new Date(x.created_at).toLocaleString() : "–" })));
    }
    $("experiments-state").textContent = data.items.length ? "" : "No grid experiment yet (crucible experiment run FILE).";
  } catch (e) { if (!(e instanceof AuthNeeded)) $("experiments-state").textContent = `Could not load: ${e.message}`; }
}

async function experimentPage() {
  const id = document.body.dataset.experiment;
  const state = $("experiment-state");
  try {
    const x = await api(`/ui/api/experiments/${encodeURIComponent(id)}`);
    const metricKeys = [...new Set(x.cells.flatMap((c) => Object.keys(c.metrics)))].sort();
    const shown = metricKeys.filter((k) => !k.includes(".") || k.startsWith("evaluation.")).slice(0, 6);
    const head = document.querySelector("#cells thead tr");
    for (const h of ["cell", ...x.keys, "seed", "status", ...shown]) head.append(el("th", { scope: "col", text: h }));
    const body = document.querySelector("#cells tbody");
    for (const c of x.cells) {
      body.append(el("tr", {},
        el("td", {}, el("a", { href: `/runs/${encodeURIComponent(c.id)}`, text: c.id })),
        ...x.keys.map((k) => el("td", { text: c.overrides[k] ?? "–" })),
        el("td", { text: c.seed ?? "–" }),
        el("td", { className: `status status-${c.status}`, text: c.status }),
        ...shown.map((k) => el("td", { text: fmt(c.metrics[k]) }))));
    }
    const done = x.cells.filter((c) => c.status === "succeeded").length;
    state.textContent = `${x.cells.length} cell(s), ${done} succeeded.`;
    if (x.cells.length >= 2) {
      const link = $("experiment-compare");
      link.href = `/compare?runs=${x.cells.slice(0, 5).map((c) => encodeURIComponent(c.id)).join(",")}`;
      link.hidden = false;
    }
  } catch (e) {
    if (!(e instanceof AuthNeeded)) state.textContent = e.status === 404 ? `No experiment ${id}.` : `Could not load: ${e.message}`;
  }
  await experimentReport(id);
}

/* The harness report: its tables (quality targets...) from JSON, then the HTML report
 * fetched with the token, offered as a download and its figures shown here. The figures
 * are taken out of the inert parsed document as PNG data URIs only: nothing of the
 * report's markup enters this page, whose CSP stays as strict as elsewhere. */
async function experimentReport(id) {
  const state = $("report-state");
  const base = `/ui/api/experiments/${encodeURIComponent(id)}/report`;
  let rep;
  try { rep = await api(base); } catch (e) {
    if (!(e instanceof AuthNeeded)) state.textContent = `No report: ${e.message}`;
    return;
  }
  for (const line of rep.intro) $("report-intro").append(el("p", { text: line }));
  for (const t of rep.tables) {
    if (t.title === "Cells") continue; /* the grid above, with links */
    const slug = t.title.toLowerCase().replace(/[^a-z0-9]+/g, "-");
    const table = el("table", { id: `report-${slug}` },
      el("caption", { text: t.title }),
      el("thead", {}, el("tr", {}, ...t.headers.map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, ...t.rows.map((r) => el("tr", {}, ...r.map((x) => el("td", { text: x }))))));
    $("report-tables").append(el("div", { className: "scroll" }, table));
  }
  state.textContent = "Rendering the figures…";
  const r = await fetch(`${base}.html`, { headers: authHeaders(), cache: "no-store" });
  if (!r.ok) { state.textContent = `No HTML report: HTTP ${r.status}`; return; }
  const text = await r.text();
  const link = $("report-download");
  link.href = URL.createObjectURL(new Blob([text], { type: "text/html" }));
  link.setAttribute("download", link.dataset.filename);
  link.hidden = false;
  /* Its <style> goes before parsing: even an inert document's inline style counts
   * against this page's CSP (and the figures need none of it). */
  const doc = new DOMParser().parseFromString(text.replace(/<style>[^<]*<\/style>/g, ""), "text/html");
  for (const fig of doc.querySelectorAll("figure")) {
    const src = fig.querySelector("img")?.getAttribute("src") || "";
    if (!src.startsWith("data:image/png;base64,")) continue;
    const caption = fig.querySelector("figcaption")?.textContent || "";
    $("report-figures").append(el("figure", {},
      el("img", { src, alt: caption, className: "report-figure" }), el("figcaption", { text: caption })));
  }
  state.textContent = "";
}

/* -- start ------------------------------------------------------------------ */

const PAGES = {
  jobs: jobsPage, run: runPage, compare: comparePage, lineage: lineagePage, models: modelsPage,
  experiments: experimentsPage, experiment: experimentPage,
};

document.addEventListener("DOMContentLoaded", async () => {
  setupTokenForm();
  const run = PAGES[document.body.dataset.page];
  if (!run) return;
  try {
    await loadWho();
    await run();
  } catch (e) {
    if (e instanceof AuthNeeded) {
      for (const n of document.querySelectorAll(".state")) if (n.textContent === "Loading…") n.textContent = "Waiting for a token (above).";
      return;
    }
    const main = $("main");
    main.prepend(el("p", { role: "alert", text: `Something went wrong: ${e.message}` }));
  }
});

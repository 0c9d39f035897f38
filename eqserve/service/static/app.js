// The live convergence page: pick a model, solve over WS /v1/solve/stream, draw the residual curve
// and, for a model whose state is 2-D (an image, a field), the state itself as it settles. A looped
// LM completes its prompt over WS /v1/completions/stream instead, each token shaded by its iterations.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";
const EXTENDABLE = new Set(["max_iters", "deadline"]);
const MARGIN = { left: 64, right: 18, top: 14, bottom: 40 };
const DOT_LIMIT = 150; // draw a dot per iterate up to this many points

// One solve (with its extensions) at a time.
const run = {
  ws: null,
  running: false,
  mode: "abs",
  tol: null,
  points: [], // {t, r}: r is the residual the stop rule uses; null when it was not finite
  legs: [], // iteration after which each extension started
  results: 0,
  outputText: "",
  frame: 0,
  fieldModel: false, // the model's state is 2-D or more: stream it (base64) and draw it
  field: null, // the newest streamed state, {encoding, dtype, shape, data}
  looped: false, // the model is a looped LM: a prompt, completed token by token
  maxIters: 1, // a looped LM's per-token cap: the darkest shade
};

// ---- fetches, with the API key as a bearer token ----

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path) {
  const resp = await fetch(path, { headers: authHeaders() });
  if (resp.status === 401) {
    $("api-key").classList.add("wanted");
    $("api-key").focus();
    throw new Error("this server needs an API key: enter it at the top right");
  }
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error ? body.error.message : `HTTP ${resp.status}`);
  $("api-key").classList.remove("wanted");
  return body;
}

async function loadModels() {
  showError(null);
  try {
    const { models } = await api("/v1/models");
    const select = $("model");
    const previous = select.value;
    select.replaceChildren(...models.map((m) => new Option(m.name, m.name)));
    if (models.some((m) => m.name === previous)) select.value = previous;
    $("solve").disabled = models.length === 0;
    if (models.length) await loadModel();
  } catch (err) {
    showError(err.message);
  }
}

async function loadModel() {
  showError(null);
  try {
    const m = await api(`/v1/models/${encodeURIComponent($("model").value)}`);
    $("model-desc").textContent = m.description;
    showKind(m.kind === "looped-lm");
    if (run.looped) {
      const { budget } = m.defaults;
      $("input").value = m.example_input ? m.example_input.prompt : "";
      $("max-iters").value = budget.max_iters;
      $("criterion").value = budget.exit.criterion;
      $("threshold").value = budget.exit.threshold;
      $("check-every").value = budget.exit.check_every;
      $("field-box").hidden = true;
      return;
    }
    const { budget, solver } = m.defaults;
    $("input").value = prettyJson(m.example_input);
    $("max-iters").value = budget.max_iters;
    $("tol").value = budget.tol;
    $("stop-mode").value = budget.stop_mode;
    $("method").value = solver.method;
    $("damping").value = solver.damping;
    $("m").value = solver.m;
    run.fieldModel = Array.isArray(m.state_shape) && m.state_shape.length >= 2;
    $("field-box").hidden = !run.fieldModel;
  } catch (err) {
    showError(err.message);
  }
}

// The form and results of the model's kind: a fixed point (solve) or a looped LM (complete).
function showKind(looped) {
  run.looped = looped;
  for (const node of document.querySelectorAll(".fp-only")) node.style.display = looped ? "none" : ""; // the chart is SVG: no `hidden`
  for (const node of document.querySelectorAll(".lm-only")) node.hidden = !looped;
  $("input-label").textContent = looped ? "Prompt" : "Input (JSON)";
  $("solve").textContent = looped ? "Complete" : "Solve";
}

// ---- the request and the socket ----

function numberField(id, integer) {
  const text = $(id).value.trim();
  if (text === "") return undefined;
  const v = integer ? parseInt(text, 10) : parseFloat(text);
  if (!Number.isFinite(v)) throw new Error(`${id} is not a number`);
  return v;
}

function buildRequest() {
  let input;
  try {
    input = JSON.parse($("input").value);
  } catch (err) {
    throw new Error(`input is not valid JSON: ${err.message}`);
  }
  return {
    model: $("model").value,
    input,
    budget: {
      max_iters: numberField("max-iters", true),
      tol: numberField("tol", false),
      stop_mode: $("stop-mode").value,
      timeout_s: numberField("timeout", false),
    },
    solver: {
      method: $("method").value,
      damping: numberField("damping", false),
      m: numberField("m", true),
    },
    return: {
      every: numberField("every", true) ?? 1,
      output: $("want-output").checked,
      ...(run.fieldModel ? { state: true, encoding: "base64" } : {}),
    },
  };
}

function buildCompletion() {
  const criterion = $("criterion").value;
  return {
    model: $("model").value,
    prompt: $("input").value,
    max_tokens: numberField("max-tokens", true),
    budget: {
      max_iters: numberField("max-iters", true),
      timeout_s: numberField("timeout", false),
      exit: { criterion, threshold: numberField("threshold", false), check_every: numberField("check-every", true) },
    },
    return: { per_token: true },
  };
}

function streamUrl(path) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const key = $("api-key").value.trim();
  const query = key ? `?token=${encodeURIComponent(key)}` : "";
  return `${scheme}://${location.host}${path}${query}`;
}

function solve(event) {
  event.preventDefault();
  showError(null);
  let request;
  try {
    request = run.looped ? buildCompletion() : buildRequest();
  } catch (err) {
    showError(err.message);
    return;
  }
  if (run.looped) {
    complete(request);
    return;
  }
  Object.assign(run, {
    mode: request.budget.stop_mode,
    tol: request.budget.tol ?? null,
    points: [],
    legs: [],
    results: 0,
    outputText: "",
    field: null,
  });
  clearSummary();
  $("output").textContent = "–";
  openStream("/v1/solve/stream", request, handle);
  draw();
}

// One request over a WebSocket, its events handed to `onEvent` while it is the page's current one.
function openStream(path, request, onEvent) {
  if (run.ws) run.ws.close();
  const ws = new WebSocket(streamUrl(path));
  run.ws = ws;
  ws.onopen = () => ws.send(JSON.stringify(request));
  ws.onmessage = (msg) => {
    if (run.ws === ws) onEvent(JSON.parse(msg.data));
  };
  ws.onclose = () => {
    if (run.ws !== ws) return;
    if (run.running) {
      setStatus("error");
      showError("the connection closed before the result");
    }
    run.ws = null;
    setRunning(false);
    $("more").disabled = true;
  };
  setRunning(true);
}

// A completion: each token appended as it is decided, shaded by its recurrence steps.
function complete(request) {
  run.results = 0;
  run.maxIters = request.budget.max_iters || 1;
  clearSummary();
  const tokens = $("tokens");
  tokens.replaceChildren();
  tokens.dataset.tokens = "0";
  openStream("/v1/completions/stream", request, handleToken);
}

function handleToken(event) {
  if (event.type === "token") {
    const span = document.createElement("span");
    span.textContent = event.text;
    const share = Math.min(event.iterations / run.maxIters, 1);
    span.style.background = `hsl(220, 70%, ${Math.round(95 - 55 * share)}%)`;
    span.style.color = share > 0.6 ? "#fff" : "#111";
    span.title = `${event.iterations} iterations, exit value ${event.exit_value ?? "–"}`;
    span.dataset.iterations = event.iterations;
    const tokens = $("tokens");
    tokens.append(span);
    tokens.dataset.tokens = tokens.children.length;
    $("streamed").textContent = tokens.children.length;
  } else if (event.type === "result") {
    run.results += 1;
    const rec = event.usage.recurrence;
    setStatus(event.status === "ok" ? event.choices[0].finish_reason : event.status);
    $("iterations").textContent = rec.total;
    $("queue-ms").textContent = event.timing.queue_ms.toFixed(2);
    $("solve-ms").textContent = event.timing.solve_ms.toFixed(2);
    $("per-iter-us").textContent = rec.total ? ((event.timing.solve_ms * 1e3) / rec.total).toFixed(1) : "–";
    $("output").textContent = event.choices[0].text;
    setRunning(false);
  } else if (event.type === "error") {
    const e = event.error;
    showError(`${e.type}: ${e.message}${e.field ? ` (${e.field})` : ""}`);
    setStatus("error");
    setRunning(false);
  }
}

function handle(event) {
  if (event.type === "iterate") {
    run.points.push({ t: event.t, r: run.mode === "rel" ? event.rel_residual : event.residual });
    $("streamed").textContent = run.points.length;
    if (event.output !== undefined) run.outputText = formatValue(event.output, "");
    if (event.y && event.y.encoding === "base64") run.field = event.y;
    scheduleDraw();
  } else if (event.type === "result") {
    if (event.output != null) run.outputText = formatValue(event.output, "");
    draw();
    run.results += 1;
    showResult(event);
    setRunning(false);
    $("more").disabled = !EXTENDABLE.has(event.status);
  } else if (event.type === "error") {
    const e = event.error;
    if (e.type === "unauthorized") $("api-key").classList.add("wanted");
    showError(`${e.type}: ${e.message}${e.field ? ` (${e.field})` : ""}`);
    setStatus("error");
    setRunning(false);
  }
}

function cancel() {
  if (run.ws && run.ws.readyState === WebSocket.OPEN) run.ws.send(JSON.stringify({ type: "cancel" }));
}

function more() {
  let n;
  try {
    n = numberField("more-iters", true);
  } catch (err) {
    showError(err.message);
    return;
  }
  if (!run.ws || run.ws.readyState !== WebSocket.OPEN || !n) return;
  showError(null);
  run.legs.push(run.points.length ? run.points[run.points.length - 1].t : 0);
  run.ws.send(JSON.stringify({ type: "extend", max_iters: n }));
  $("more").disabled = true;
  setRunning(true);
}

// ---- the summary ----

function setRunning(on) {
  run.running = on;
  $("cancel").disabled = !on;
  if (on) setStatus("running");
}

function setStatus(text) {
  const el = $("status");
  el.textContent = text;
  el.dataset.status = text;
  el.dataset.results = run.results;
}

function clearSummary() {
  for (const id of ["iterations", "residual", "rel-residual", "queue-ms", "solve-ms", "per-iter-us", "dropped"]) {
    $(id).textContent = "–";
  }
  $("streamed").textContent = "0";
}

function showResult(r) {
  setStatus(r.status);
  $("iterations").textContent = r.iterations;
  $("residual").textContent = formatExp(r.residual);
  $("rel-residual").textContent = formatExp(r.rel_residual);
  $("queue-ms").textContent = r.timing.queue_ms.toFixed(2);
  $("solve-ms").textContent = r.timing.solve_ms.toFixed(2);
  $("per-iter-us").textContent = r.timing.per_iter_us.toFixed(1);
  $("dropped").textContent = r.dropped;
}

function showError(message) {
  const el = $("error");
  el.hidden = !message;
  el.textContent = message || "";
}

function formatExp(v) {
  return v == null ? "non-finite" : v.toExponential(3);
}

// JSON indented by object, with lists of numbers kept on one line.
function prettyJson(v) {
  return JSON.stringify(v, null, 2).replace(/\[\s+([-+\d.eE,\s]*?)\s+\]/g, (_, nums) => `[${nums.split(/,\s+/).join(", ")}]`);
}

function formatNumber(v) {
  return Number.isInteger(v) && Math.abs(v) < 1e9 ? String(v) : String(Number(v.toPrecision(6)));
}

// A compact, readable rendering of a decoded output: short number lists, long arrays cut.
function formatValue(v, indent) {
  const LIMIT = 16;
  if (typeof v === "number") return formatNumber(v);
  if (Array.isArray(v)) {
    const flat = v.every((x) => x === null || typeof x !== "object");
    const shown = v.slice(0, LIMIT).map((x) => formatValue(x, `${indent}  `));
    const rest = v.length > LIMIT ? `… ${v.length - LIMIT} more` : null;
    if (rest) shown.push(rest);
    if (flat) return `[${shown.join(", ")}]`;
    return `[\n${shown.map((s) => `${indent}  ${s}`).join(",\n")}\n${indent}]`;
  }
  if (v !== null && typeof v === "object") {
    const lines = Object.entries(v).map(([k, x]) => `${indent}${k}: ${formatValue(x, `${indent}  `)}`);
    return lines.join("\n");
  }
  return JSON.stringify(v);
}

// ---- the chart: residual on a log scale against the iteration ----

function scheduleDraw() {
  if (!run.frame) run.frame = requestAnimationFrame(draw);
}

function el(name, attrs, text) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Tick step 1, 2 or 5 × 10^k giving about `count` ticks over [0, span].
function niceStep(span, count) {
  const raw = span / count;
  const p = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw);
}

function decadeLabel(k) {
  const text = el("text", {});
  text.append("10", el("tspan", { dy: "-0.5em", "font-size": "0.75em" }, String(k).replace("-", "−")));
  return text;
}

function draw() {
  cancelAnimationFrame(run.frame);
  run.frame = 0;
  const svg = $("chart");
  const W = svg.clientWidth || 640;
  const H = svg.clientHeight || 320;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const pw = W - MARGIN.left - MARGIN.right;
  const ph = H - MARGIN.top - MARGIN.bottom;
  const pts = run.points;

  let min = run.tol > 0 && pts.length ? run.tol : Infinity;
  let max = run.tol > 0 && pts.length ? run.tol : -Infinity;
  for (const { r } of pts) {
    if (r !== null && r > 0) [min, max] = [Math.min(min, r), Math.max(max, r)];
  }
  let lo = Number.isFinite(min) ? Math.floor(Math.log10(min)) : -8;
  let hi = Number.isFinite(max) ? Math.ceil(Math.log10(max)) : 0;
  if (hi <= lo) [lo, hi] = [lo - 1, hi + 1];
  const tMax = pts.length ? Math.max(1, pts[pts.length - 1].t) : 10;
  const X = (t) => MARGIN.left + (t / tMax) * pw;
  const Y = (r) => {
    if (r === null) return MARGIN.top; // non-finite: pinned to the top
    if (r <= 0) return MARGIN.top + ph; // exactly zero: pinned to the bottom
    return MARGIN.top + ((hi - Math.log10(r)) / (hi - lo)) * ph;
  };

  const grid = el("g", { class: "grid" });
  const labels = el("g", { class: "labels" });
  const decadeEvery = Math.ceil((hi - lo) / 8);
  for (let k = lo; k <= hi; k += 1) {
    const y = Y(10 ** k);
    grid.append(el("line", { x1: MARGIN.left, x2: MARGIN.left + pw, y1: y, y2: y }));
    if ((hi - k) % decadeEvery === 0) {
      const label = decadeLabel(k);
      for (const [a, v] of Object.entries({ x: MARGIN.left - 8, y: y + 4, "text-anchor": "end" })) {
        label.setAttribute(a, v);
      }
      labels.append(label);
    }
  }
  const step = Math.max(1, niceStep(tMax, 8));
  for (let t = 0; t <= tMax; t += step) {
    const x = X(t);
    grid.append(el("line", { x1: x, x2: x, y1: MARGIN.top, y2: MARGIN.top + ph }));
    labels.append(el("text", { x, y: MARGIN.top + ph + 18, "text-anchor": "middle" }, formatNumber(t)));
  }
  labels.append(
    el("text", { x: MARGIN.left + pw / 2, y: H - 4, "text-anchor": "middle", class: "axis-title" }, "iteration"),
    el("text", { x: 14, y: MARGIN.top + ph / 2, transform: `rotate(-90 14 ${MARGIN.top + ph / 2})`,
      "text-anchor": "middle", class: "axis-title" }, run.mode === "rel" ? "rel_residual" : "residual"),
  );

  const marks = el("g", { class: "marks" });
  if (run.tol > 0 && pts.length) {
    const y = Y(run.tol);
    marks.append(
      el("line", { class: "tol", x1: MARGIN.left, x2: MARGIN.left + pw, y1: y, y2: y }),
      el("text", { class: "tol-label", x: MARGIN.left + 6, y: y - 5 }, `tol ${run.tol}`),
    );
  }
  for (const t of run.legs) {
    marks.append(el("line", { class: "leg", x1: X(t), x2: X(t), y1: MARGIN.top, y2: MARGIN.top + ph }));
  }

  // The path skips points that would land on the previous one's pixel; every point is still plotted.
  let d = "";
  let last = null;
  pts.forEach((p, i) => {
    const x = X(p.t);
    const y = Y(p.r);
    const end = i === pts.length - 1;
    if (last && !end && Math.abs(x - last[0]) < 0.5 && Math.abs(y - last[1]) < 0.5) return;
    d += `${last ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`;
    last = [x, y];
  });
  const curve = el("g", { class: "curve" });
  if (d) curve.append(el("path", { d }));
  if (pts.length <= DOT_LIMIT) {
    for (const p of pts) curve.append(el("circle", { cx: X(p.t), cy: Y(p.r), r: 2.5 }));
  }

  const frame = el("rect", { class: "frame", x: MARGIN.left, y: MARGIN.top, width: pw, height: ph });
  svg.replaceChildren(grid, frame, marks, curve, labels);
  if (!pts.length) {
    svg.append(el("text", { class: "empty", x: MARGIN.left + pw / 2, y: MARGIN.top + ph / 2,
      "text-anchor": "middle" }, "press Solve to watch the residual fall"));
  }
  svg.dataset.points = pts.length;

  const out = $("output");
  if (run.outputText && out.textContent !== run.outputText) out.textContent = run.outputText;
  if (run.field) drawField(run.field);
}

// ---- the state as an image: the last two axes, the first channel, grey from its min to its max ----

function decodeState(y) {
  const bytes = Uint8Array.from(atob(y.data), (c) => c.charCodeAt(0));
  const view = new DataView(bytes.buffer);
  const width = y.dtype === "float64" ? 8 : 4;
  const out = new Float64Array(bytes.length / width);
  for (let i = 0; i < out.length; i++) {
    out[i] = width === 8 ? view.getFloat64(i * 8, true) : view.getFloat32(i * 4, true);
  }
  return out;
}

function drawField(y) {
  const values = decodeState(y);
  const [h, w] = y.shape.slice(-2);
  const canvas = $("field");
  if (canvas.width !== w || canvas.height !== h) Object.assign(canvas, { width: w, height: h });
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < h * w; i++) {
    if (Number.isFinite(values[i])) {
      lo = Math.min(lo, values[i]);
      hi = Math.max(hi, values[i]);
    }
  }
  const span = hi > lo ? hi - lo : 1;
  const image = canvas.getContext("2d").createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    const v = Number.isFinite(values[i]) ? Math.round((255 * (values[i] - lo)) / span) : 0;
    image.data.set([v, v, v, 255], 4 * i);
  }
  canvas.getContext("2d").putImageData(image, 0, 0);
  canvas.dataset.frames = Number(canvas.dataset.frames || 0) + 1;
  canvas.dataset.shape = y.shape.join("x");
  $("field-range").textContent = `${y.shape.join(" × ")}, ${formatNumber(lo)} … ${formatNumber(hi)}`;
}

// ---- wiring ----

document.addEventListener("DOMContentLoaded", () => {
  $("form").addEventListener("submit", solve);
  $("cancel").addEventListener("click", cancel);
  $("more").addEventListener("click", more);
  $("model").addEventListener("change", loadModel);
  $("api-key").addEventListener("change", loadModels);
  window.addEventListener("resize", draw);
  draw();
  loadModels();
});

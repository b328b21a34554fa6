// The page at /: upload a clip to /v1/predict or stream the microphone to /v1/stream, and draw the
// per-frame arousal and valence over time and on the arousal-valence plane. Plain JavaScript on the
// service's own API (no build step, no third-party code); the same calls a client would make.
"use strict";

const COLORS = { arousal: "#d62728", valence: "#1f77b4", grid: "#e3e3e3", axis: "#999", ink: "#333" };
const QUADRANT_NAMES = { Q1: "Q1 happy, excited", Q2: "Q2 angry, tense", Q3: "Q3 sad, bored", Q4: "Q4 calm, relaxed" };
// Audio the browser may queue unsent on a stream before the page gives up (a stalled network).
const MAX_UNSENT_BYTES = 8 * 1024 * 1024;

const $ = (id) => document.getElementById(id);
const state = { frames: [], summary: null, duration: 0, hop: 0.5, live: null };
window.merState = state; // read by the browser test

// --- API key: asked for only when the server answers 401; kept in sessionStorage (this tab) ------------

function apiKey() {
  return $("api-key").value.trim() || sessionStorage.getItem("mer.apiKey") || "";
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function askForKey(message) {
  $("key-row").hidden = false;
  $("api-key").focus();
  setStatus("error", message);
}

$("api-key").addEventListener("change", () => {
  sessionStorage.setItem("mer.apiKey", $("api-key").value.trim());
  loadModel();
});

// --- status and summary -------------------------------------------------------------------------------

function setStatus(kind, text) {
  const el = $("status");
  el.dataset.state = kind;
  el.textContent = text;
}

async function errorText(response) {
  // The service's one error shape: {"error": {"code", "message"}}.
  try {
    const body = await response.json();
    if (body && body.error) return `${body.error.code}: ${body.error.message}`;
  } catch (_) { /* not JSON: fall through */ }
  return response.statusText || "request failed";
}

function showSummary() {
  const n = state.frames.length;
  $("summary").hidden = n === 0;
  if (n === 0) return;
  const mean = (key) => state.frames.reduce((s, f) => s + f[key], 0) / n;
  const a = state.summary ? state.summary.mean.arousal : mean("arousal");
  const v = state.summary ? state.summary.mean.valence : mean("valence");
  $("s-frames").textContent = String(n);
  $("s-duration").textContent = `${state.duration.toFixed(1)} s`;
  $("s-arousal").textContent = a.toFixed(3);
  $("s-valence").textContent = v.toFixed(3);
  const q = state.summary ? state.summary.quadrant : quadrantOf(a, v);
  $("s-quadrant").textContent = state.summary ? `${q}: ${state.summary.quadrant_label}` : QUADRANT_NAMES[q];
}

function quadrantOf(a, v) {
  if (a >= 0) return v >= 0 ? "Q1" : "Q2";
  return v >= 0 ? "Q4" : "Q3";
}

// --- drawing ----------------------------------------------------------------------------------------

let drawQueued = false;
function redraw() {
  // Live frames arrive twice a second, uploads all at once: draw at most once per animation frame.
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(() => {
    drawQueued = false;
    drawTimeline();
    drawPlane();
    showSummary();
    document.body.dataset.frames = String(state.frames.length);
  });
}

function niceStep(span, target) {
  const raw = span / target;
  const p = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw) || raw;
}

function drawTimeline() {
  const c = $("timeline");
  const g = c.getContext("2d");
  const left = 44, right = 24, top = 12, bottom = 30;
  const w = c.width - left - right, h = c.height - top - bottom;
  const end = Math.max(state.duration, state.frames.length * state.hop, 10);
  const x = (t) => left + (t / end) * w;
  const y = (value) => top + ((1 - value) / 2) * h;
  g.clearRect(0, 0, c.width, c.height);
  g.font = "12px system-ui, sans-serif";
  g.lineWidth = 1;
  for (const value of [-1, -0.5, 0, 0.5, 1]) {
    g.strokeStyle = value === 0 ? COLORS.axis : COLORS.grid;
    g.beginPath(); g.moveTo(left, y(value)); g.lineTo(left + w, y(value)); g.stroke();
    g.fillStyle = COLORS.ink; g.textAlign = "right"; g.textBaseline = "middle";
    g.fillText(value.toFixed(1), left - 6, y(value));
  }
  const step = niceStep(end, 10);
  g.textAlign = "center"; g.textBaseline = "top";
  for (let t = 0; t <= end + 1e-9; t += step) {
    g.strokeStyle = COLORS.grid;
    g.beginPath(); g.moveTo(x(t), top); g.lineTo(x(t), top + h); g.stroke();
    g.fillText(`${+t.toFixed(2)} s`, x(t), top + h + 6);
  }
  for (const key of ["arousal", "valence"]) {
    g.strokeStyle = COLORS[key];
    g.lineWidth = 2;
    g.beginPath();
    state.frames.forEach((f, i) => {
      const t = (f.start_s + f.end_s) / 2;
      if (i === 0) g.moveTo(x(t), y(f[key])); else g.lineTo(x(t), y(f[key]));
    });
    if (state.frames.length === 1) g.arc(x(state.frames[0].end_s), y(state.frames[0][key]), 2, 0, 2 * Math.PI);
    g.stroke();
  }
}

function drawPlane() {
  const c = $("plane");
  const g = c.getContext("2d");
  const pad = 26, size = c.width - 2 * pad, mid = c.width / 2;
  const px = (v) => mid + (v * size) / 2; // valence to the right
  const py = (a) => mid - (a * size) / 2; // arousal up
  g.clearRect(0, 0, c.width, c.height);
  g.strokeStyle = COLORS.axis; g.lineWidth = 1;
  g.strokeRect(pad, pad, size, size);
  g.beginPath(); g.moveTo(mid, pad); g.lineTo(mid, pad + size); g.moveTo(pad, mid); g.lineTo(pad + size, mid); g.stroke();
  g.font = "11px system-ui, sans-serif"; g.fillStyle = "#888";
  g.textAlign = "right"; g.textBaseline = "top"; g.fillText(QUADRANT_NAMES.Q1, pad + size - 4, pad + 4);
  g.textAlign = "left"; g.fillText(QUADRANT_NAMES.Q2, pad + 4, pad + 4);
  g.textBaseline = "bottom"; g.fillText(QUADRANT_NAMES.Q3, pad + 4, pad + size - 4);
  g.textAlign = "right"; g.fillText(QUADRANT_NAMES.Q4, pad + size - 4, pad + size - 4);
  g.fillStyle = COLORS.ink; g.textAlign = "center"; g.textBaseline = "top";
  g.fillText("valence →", mid, pad + size + 6);
  g.save(); g.translate(12, mid); g.rotate(-Math.PI / 2); g.textBaseline = "middle"; g.fillText("arousal →", 0, 0); g.restore();
  const n = state.frames.length;
  // The trajectory: consecutive frames joined, under the dots.
  g.strokeStyle = "rgba(90, 40, 140, 0.25)"; g.lineWidth = 1;
  g.beginPath();
  state.frames.forEach((f, i) => (i === 0 ? g.moveTo(px(f.valence), py(f.arousal)) : g.lineTo(px(f.valence), py(f.arousal))));
  g.stroke();
  state.frames.forEach((f, i) => {
    // Early frames light, late frames dark: the path of the piece through the plane.
    const shade = n > 1 ? i / (n - 1) : 1;
    g.fillStyle = `rgba(90, 40, 140, ${0.15 + 0.75 * shade})`;
    g.beginPath(); g.arc(px(f.valence), py(f.arousal), 3, 0, 2 * Math.PI); g.fill();
  });
  if (n > 0) {
    const a = state.frames.reduce((s, f) => s + f.arousal, 0) / n;
    const v = state.frames.reduce((s, f) => s + f.valence, 0) / n;
    g.strokeStyle = "#000"; g.lineWidth = 2;
    g.beginPath(); g.arc(px(v), py(a), 7, 0, 2 * Math.PI); g.stroke();
  }
}

function reset() {
  state.frames = []; state.summary = null; state.duration = 0;
  redraw();
}

// --- the model card -----------------------------------------------------------------------------------

async function loadModel() {
  let response;
  try {
    response = await fetch("/v1/models/default", { headers: authHeaders() });
  } catch (err) {
    setStatus("error", `The service does not answer: ${err.message}`);
    return;
  }
  if (response.status === 401) { askForKey("This server needs an API key."); return; }
  if (!response.ok) { setStatus("error", `Model not available (HTTP ${response.status}): ${await errorText(response)}`); return; }
  const card = await response.json();
  state.hop = card.features.hop_s;
  $("model").textContent = `Model ${card.name} ${card.version}: ${card.outputs.join(" and ")} every ${card.features.hop_s * 1000} ms.`;
  const mic = $("mic");
  mic.disabled = !card.step_model;
  mic.title = card.step_model ? "" : (card.step_model_problem || "this model has no step graph: live streams are unavailable");
  if ($("status").dataset.state === "error") setStatus("idle", "Waiting for audio.");
}

// --- upload -------------------------------------------------------------------------------------------

async function analyse(file) {
  if (state.live) await stopListening();
  reset();
  setStatus("working", `Analysing ${file.name} (${(file.size / 1e6).toFixed(1)} MB)…`);
  const form = new FormData();
  form.append("file", file, file.name);
  const started = performance.now();
  let response;
  try {
    response = await fetch("/v1/predict", { method: "POST", body: form, headers: authHeaders() });
  } catch (err) {
    setStatus("error", `Upload failed: ${err.message}`);
    return;
  }
  if (response.status === 401) { askForKey(`HTTP 401 ${await errorText(response)}`); return; }
  if (!response.ok) { setStatus("error", `HTTP ${response.status} ${await errorText(response)}`); return; }
  const body = await response.json();
  state.frames = body.frames;
  state.summary = body.summary;
  state.hop = body.hop_s;
  state.duration = body.frames.length ? body.frames[body.frames.length - 1].end_s : 0;
  redraw();
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  setStatus("done", `${body.num_frames} frames from ${file.name} in ${seconds} s (model ${body.model.name} ${body.model.version}).`);
}

$("file").addEventListener("change", (e) => { if (e.target.files.length) analyse(e.target.files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) analyse(e.dataTransfer.files[0]);
});

// --- microphone -> /v1/stream -------------------------------------------------------------------------

async function startListening() {
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    // Browsers give the microphone to secure pages only: https, or http on localhost.
    setStatus("error", "This browser gives the microphone only to https pages or http://localhost.");
    return;
  }
  reset();
  let media;
  try {
    // The raw signal: the browser's voice processing would change what the model hears.
    media = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
    });
  } catch (err) {
    setStatus("error", `No microphone: ${err.message}`);
    return;
  }
  const context = new AudioContext();
  let tap;
  try {
    await context.audioWorklet.addModule("/ui/pcm-worklet.js");
    tap = new AudioWorkletNode(context, "pcm-tap");
    const mute = context.createGain();
    mute.gain.value = 0; // pulled by the graph, but nothing is played back
    context.createMediaStreamSource(media).connect(tap).connect(mute).connect(context.destination);
  } catch (err) {
    media.getTracks().forEach((t) => t.stop());
    context.close();
    setStatus("error", `Cannot capture audio: ${err.message}`);
    return;
  }

  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/v1/stream`);
  const live = { media, context, tap, ws, ready: false, ended: false };
  state.live = live;
  $("mic").setAttribute("aria-pressed", "true");
  $("mic").textContent = "Stop listening";
  setStatus("working", "Connecting…");

  ws.onopen = () => {
    // Browsers cannot set headers on a WebSocket: the key goes in the header message.
    const header = { sample_rate: context.sampleRate, channels: 1, format: "f32le" };
    if (apiKey()) header.api_key = apiKey();
    ws.send(JSON.stringify(header));
  };
  tap.port.onmessage = (e) => {
    if (!live.ready || live.ended || ws.readyState !== WebSocket.OPEN) return;
    if (ws.bufferedAmount > MAX_UNSENT_BYTES) {
      setStatus("error", "The network does not keep up with the microphone; stopped.");
      stopListening();
      return;
    }
    ws.send(e.data.buffer);
  };
  ws.onmessage = (e) => {
    const message = JSON.parse(e.data);
    if (message.type === "ready") {
      live.ready = true;
      setStatus("working", `Listening at ${context.sampleRate} Hz: a frame every ${message.hop_s} s.`);
    } else if (message.type === "frame") {
      state.frames.push(message);
      state.duration = message.end_s;
      redraw();
    } else if (message.type === "summary") {
      state.summary = message.summary || null;
      state.duration = message.duration_s;
      redraw();
    }
  };
  ws.onclose = (e) => {
    releaseAudio(live);
    if (state.live === live) state.live = null;
    $("mic").setAttribute("aria-pressed", "false");
    $("mic").textContent = "Listen to the microphone";
    if (e.code === 1000) setStatus("done", `${state.frames.length} frames from ${state.duration.toFixed(1)} s of microphone audio.`);
    else if (e.code === 1008 && /api key/i.test(e.reason)) askForKey(`Stream refused: ${e.reason}`);
    else if ($("status").dataset.state !== "error") setStatus("error", `Stream closed (${e.code}): ${e.reason || "connection lost"}`);
  };
}

function releaseAudio(live) {
  live.media.getTracks().forEach((t) => t.stop());
  live.tap.port.onmessage = null;
  if (live.context.state !== "closed") live.context.close();
}

async function stopListening() {
  const live = state.live;
  if (!live || live.ended) return;
  live.ended = true;
  releaseAudio(live);
  if (live.ws.readyState === WebSocket.OPEN) {
    setStatus("working", "Finishing the last frames…");
    live.ws.send(JSON.stringify({ type: "end" })); // the server sends what is left, the summary, then closes
  } else {
    live.ws.close();
  }
}

let starting = false;
$("mic").addEventListener("click", async () => {
  if (state.live) { stopListening(); return; }
  if (starting) return; // a second click while the microphone permission prompt is open
  starting = true;
  try { await startListening(); } finally { starting = false; }
});

// --- start --------------------------------------------------------------------------------------------

$("api-key").value = sessionStorage.getItem("mer.apiKey") || "";
redraw();
loadModel();

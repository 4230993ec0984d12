// bgsvc web page: plain JavaScript, no build step, no dependencies.
// Each image is a "card" with its own options; changing an option re-runs only that card.
"use strict";

const MAX_TRIES = 5;          // attempts per image when the server answers 429/503
const MAX_PARALLEL = 2;       // requests in flight at once from this page
const MAX_RETRY_WAIT_S = 60;  // never wait longer than this between tries

const state = {
  cards: [],                  // every Card, in page order
  batches: [],                // every Batch (batch.js), newest first
  models: null,               // {default, models:[{name, description}]} or null
  lastOptions: null,          // options of the last card the user changed: new images start with them
  running: 0,
  pasteCount: 0,
};

const $ = (sel, root = document) => root.querySelector(sel);

// ---------- API key (servers with BGSVC_AUTH=required) ----------

// The tab's session storage, not localStorage: a key kept for good would be there for any
// script the origin ever runs, and for whoever uses the browser next.
const KEY_STORAGE = "bgsvc.apiKey";

function apiKey() {
  try { return sessionStorage.getItem(KEY_STORAGE) || ""; } catch { return ""; }
}

// Headers for every API request: the saved key as X-Api-Key, or nothing.
function authHeaders() {
  const key = apiKey();
  return key ? { "X-Api-Key": key } : {};
}

// A 401 from the server: show the key field and say why.
function askForKey(message) {
  const field = $("#api-key");
  $("#api-key-note").textContent = message || "This server needs an API key.";
  field.closest("form").classList.add("needed");
  field.focus();
}

function initApiKey() {
  // Where earlier versions kept the key for good.
  try { localStorage.removeItem(KEY_STORAGE); } catch { /* storage blocked */ }
  const form = $("#api-key-form");
  const field = $("#api-key");
  field.value = apiKey();
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const key = field.value.trim();
    try {
      if (key) sessionStorage.setItem(KEY_STORAGE, key); else sessionStorage.removeItem(KEY_STORAGE);
    } catch { /* storage blocked: the key lasts until the page is closed */ }
    form.classList.remove("needed");
    $("#api-key-note").textContent = key ? "Kept until this tab closes." : "Removed.";
    // Images refused for want of a key run again with it.
    for (const card of state.cards) if (card.needsKey) { card.needsKey = false; card.start(); }
  });
}

// ---------- small helpers ----------

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(2)} MB`;
}

function formatMs(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

// "decode;dur=12.1, inference;desc="x";dur=1800.4" -> [{name, dur}]
function parseServerTiming(header) {
  if (!header) return [];
  return header.split(",").map((entry) => {
    const parts = entry.trim().split(";");
    const dur = parts.map((p) => p.trim()).find((p) => p.startsWith("dur="));
    return { name: parts[0].trim(), dur: dur ? Number(dur.slice(4)) : NaN };
  }).filter((t) => t.name);
}

const EXTENSIONS = {
  "image/png": "png", "image/webp": "webp", "image/jpeg": "jpg", "image/gif": "gif",
  "video/webm": "webm", "video/quicktime": "mov", "video/mp4": "mp4", "application/zip": "zip",
};
const VIDEO_EXTENSIONS = /\.(mp4|m4v|mov|webm|mkv)$/i;
const JOB_POLL_MS = 1000;     // between two looks at a job's progress
const JOB_MAX_POLL_MS = 5000; // the wait grows to this while a job stays queued

// Videos go through the job queue (POST /jobs): they take longer than one request may.
function isVideo(file) {
  return (file.type || "").startsWith("video/") || VIDEO_EXTENSIONS.test(file.name);
}

function outputName(sourceName, contentType, mask) {
  const dot = sourceName.lastIndexOf(".");
  const stem = dot > 0 ? sourceName.slice(0, dot) : sourceName;
  const type = (contentType || "").split(";")[0].trim();
  return `${stem}-${mask ? "mask" : "nobg"}.${EXTENSIONS[type] || "png"}`;
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(t); reject(signal.reason); }, { once: true });
  });
}

// Only options that differ from the server's defaults go into the query string.
function queryFor(o) {
  const q = new URLSearchParams();
  if (!o) return q;
  if (o.format !== "png") {
    q.set("format", o.format);
    if (o.quality) q.set("quality", o.quality);
  }
  if (o.fill) q.set("bg_color", o.bg_color);
  if (o.crop) {
    q.set("crop", "true");
    if (o.crop_margin && o.crop_margin !== "0" && o.crop_margin !== "0px") {
      q.set("crop_margin", o.crop_margin);
    }
  }
  if (o.mask) q.set("channels", "alpha");
  if (o.model && state.models && o.model !== state.models.default) q.set("model", o.model);
  return q;
}

// ---------- zip (STORE only, no compression: images are already compressed) ----------

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// files: [{name, bytes: Uint8Array}] -> Blob (application/zip)
function makeZip(files) {
  const enc = new TextEncoder();
  const now = new Date();
  const dosTime = (now.getHours() << 11) | (now.getMinutes() << 5) | (now.getSeconds() >> 1);
  const dosDate = ((now.getFullYear() - 1980) << 9) | ((now.getMonth() + 1) << 5) | now.getDate();
  const parts = [];
  const central = [];
  let offset = 0;
  for (const f of files) {
    const name = enc.encode(f.name);
    const crc = crc32(f.bytes);
    // Fields shared by the local header (from "version needed") and the central entry.
    const common = (v) => {
      v.setUint16(0, 20, true);          // version needed
      v.setUint16(2, 0x0800, true);      // flags: UTF-8 names
      v.setUint16(4, 0, true);           // method: store
      v.setUint16(6, dosTime, true);
      v.setUint16(8, dosDate, true);
      v.setUint32(10, crc, true);
      v.setUint32(14, f.bytes.length, true);  // compressed size
      v.setUint32(18, f.bytes.length, true);  // uncompressed size
      v.setUint16(22, name.length, true);
    };
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    common(new DataView(local.buffer, 4));
    parts.push(local, name, f.bytes);
    const entry = new DataView(new ArrayBuffer(46));
    entry.setUint32(0, 0x02014b50, true);
    entry.setUint16(4, 20, true);        // version made by
    common(new DataView(entry.buffer, 6));
    entry.setUint32(42, offset, true);   // local header offset
    central.push(entry, name);
    offset += 30 + name.length + f.bytes.length;
  }
  const centralSize = central.reduce((n, p) => n + p.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, files.length, true);
  end.setUint16(10, files.length, true);
  end.setUint32(12, centralSize, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, end], { type: "application/zip" });
}

// ---------- one image ----------

class Card {
  constructor(file) {
    this.file = file;
    this.result = null;       // {blob, url, name, ...}
    this.controller = null;   // AbortController of the request in flight
    this.pending = false;     // waiting for a free slot
    this.sourceUrl = URL.createObjectURL(file);

    this.el = $("#card-template").content.firstElementChild.cloneNode(true);
    this.el.card = this;
    this.video = isVideo(file);
    $(".card-title", this.el).textContent = file.name;
    if (this.video) {
      // The original and the result play side by side, looped and muted, split by the slider.
      for (const name of ["before", "after"]) {
        const img = $(`.${name}`, this.el);
        const video = document.createElement("video");
        video.className = name;
        video.muted = video.loop = video.autoplay = video.playsInline = true;
        video.hidden = img.hidden;
        img.replaceWith(video);
      }
      this.el.classList.add("video-card");
    }
    this.before = $(".before", this.el);
    this.after = $(".after", this.el);
    this.slider = $(".slider", this.el);
    this.form = $(".options", this.el);
    this.before.src = this.sourceUrl;
    this.before.alt = `Original: ${file.name}`;
    this.before.addEventListener("error", () => {
      this.before.hidden = true;
      this.el.classList.toggle("no-preview", !this.result);
    });
    this.before.addEventListener(this.video ? "loadedmetadata" : "load", () => {
      if (!this.result) this.setAspect(...naturalSize(this.before));
      else this.compareFrames();  // an answer came before the original was shown
    });

    this.fillModels();
    if (state.lastOptions) this.setOptions(state.lastOptions);
    this.syncOptionFields();
    this.form.addEventListener("change", () => {
      this.syncOptionFields();
      state.lastOptions = this.options();
      this.start();
    });
    this.form.addEventListener("submit", (e) => e.preventDefault());
    this.slider.addEventListener("input", () => this.setSlider());
    this.setSlider();
    $(".remove", this.el).setAttribute("aria-label", `Remove ${file.name}`);
    $(".remove", this.el).addEventListener("click", () => removeCard(this));
    $(".retry", this.el).addEventListener("click", () => this.start());
  }

  fillModels() {
    const select = this.form.elements.model;
    if (!state.models || state.models.models.length < 2) return;
    select.replaceChildren(...state.models.models.map((m) => {
      const opt = new Option(m.name, m.name, false, m.name === state.models.default);
      if (m.description) opt.title = m.description;
      return opt;
    }));
    $(".model-field", this.el).hidden = false;
  }

  // Enable/disable the fields that depend on others.
  syncOptionFields() {
    const f = this.form.elements;
    f.bg_color.disabled = !f.fill.checked;
    f.crop_margin.disabled = !f.crop.checked;
    $(".quality-field", this.el).hidden = f.format.value === "png" || this.video;
    // A video comes back as a video (WebM with alpha, or on the fill colour); each frame's
    // subject has its own box, so there is nothing to crop to.
    $(".format-field", this.el).hidden = this.video;
    $(".crop-row", this.el).hidden = this.video;
  }

  options() {
    const f = this.form.elements;
    return {
      format: f.format.value, quality: f.quality.value, model: f.model.value,
      fill: f.fill.checked, bg_color: f.bg_color.value,
      crop: f.crop.checked, crop_margin: f.crop_margin.value.trim(), mask: f.mask.checked,
    };
  }

  setOptions(o) {
    const f = this.form.elements;
    f.format.value = o.format; f.quality.value = o.quality;
    if ([...f.model.options].some((opt) => opt.value === o.model)) f.model.value = o.model;
    f.fill.checked = o.fill; f.bg_color.value = o.bg_color;
    f.crop.checked = o.crop; f.crop_margin.value = o.crop_margin; f.mask.checked = o.mask;
  }

  query() {
    const o = this.options();
    return queryFor(this.video ? { ...o, format: "png", crop: false } : o);
  }

  setState(name, message) {
    this.el.dataset.state = name;
    $(".status", this.el).textContent = message;
    $(".retry", this.el).hidden = name !== "error";
  }

  setAspect(w, h) {
    if (!w || !h) return;
    const box = $(".compare", this.el);
    box.style.aspectRatio = `${w} / ${h}`;
    box.style.setProperty("--ratio", String(w / h));
  }

  setSlider() {
    const v = this.slider.value;
    this.el.style.setProperty("--split", `${v}%`);
    this.slider.setAttribute("aria-valuetext", `${v}% original, ${100 - v}% result`);
  }

  // (Re)run this image: cancel what is in flight, then wait for a free slot.
  start() {
    if (this.controller) this.controller.abort();
    this.controller = null;
    if (!this.form.reportValidity()) {
      this.setState("error", "Check the highlighted option.");
      return;
    }
    this.pending = true;
    this.setState("queued", "Waiting…");
    pump();
  }

  async run() {
    const controller = new AbortController();
    this.controller = controller;
    const { signal } = controller;
    const url = `/remove-background?${this.query()}`;
    try {
      if (this.video) {
        await this.runJob(signal);
        return;
      }
      for (let attempt = 1; ; attempt++) {
        this.setState("working", attempt === 1 ? "Removing background…" : `Removing background… (try ${attempt} of ${MAX_TRIES})`);
        const body = new FormData();
        body.append("file", this.file, this.file.name);
        const t0 = performance.now();
        const resp = await fetch(url, { method: "POST", body, signal, headers: authHeaders() });
        if (resp.status === 401) this.needsKey = true;
        if ((resp.status === 429 || resp.status === 503) && attempt < MAX_TRIES) {
          const wait = Math.min(Math.max(Number(resp.headers.get("Retry-After")) || 1, 1), MAX_RETRY_WAIT_S);
          await resp.body?.cancel();
          for (let left = Math.ceil(wait); left > 0; left--) {
            this.setState("busy", `Server busy, retrying in ${left} s (try ${attempt + 1} of ${MAX_TRIES})…`);
            await sleep(1000, signal);
          }
          continue;
        }
        if (resp.status === 413 && (await errorCode(resp.clone())) === "too_many_frames") {
          // Too many frames to answer within one request: the job queue takes it.
          await resp.body?.cancel();
          await this.runJob(signal);
          return;
        }
        if (!resp.ok) {
          this.setState("error", await errorMessage(resp));
          return;
        }
        const blob = await resp.blob();
        this.showResult(resp, blob, performance.now() - t0);
        return;
      }
    } catch (err) {
      if (signal.aborted) return;   // replaced by a newer run or removed
      this.setState("error", `Could not reach the server (${err.message || err}).`);
    } finally {
      if (this.controller === controller) this.controller = null;
    }
  }

  // Submit this file as a job, follow its progress, then fetch and show the result. A card
  // removed or re-run meanwhile (signal aborted) cancels the job on the server.
  async runJob(signal) {
    const t0 = performance.now();
    let submitted = null;
    for (let attempt = 1; !submitted; attempt++) {
      this.setState("working", attempt === 1 ? "Sending…" : `Sending… (try ${attempt} of ${MAX_TRIES})`);
      const body = new FormData();
      body.append("file", this.file, this.file.name);
      const resp = await fetch(`/jobs?${this.query()}`, { method: "POST", body, signal, headers: authHeaders() });
      if (resp.status === 401) this.needsKey = true;
      if ((resp.status === 429 || resp.status === 503) && attempt < MAX_TRIES) {
        const wait = Math.min(Math.max(Number(resp.headers.get("Retry-After")) || 1, 1), MAX_RETRY_WAIT_S);
        await resp.body?.cancel();
        this.setState("busy", `Server busy, retrying in ${Math.ceil(wait)} s…`);
        await sleep(wait * 1000, signal);
        continue;
      }
      if (!resp.ok) {
        this.setState("error", await errorMessage(resp));
        return;
      }
      submitted = await resp.json();
    }
    const cancel = () => fetch(submitted.status_url, { method: "DELETE", headers: authHeaders() }).catch(() => {});
    signal.addEventListener("abort", cancel, { once: true });
    let wait = JOB_POLL_MS;
    for (;;) {
      const resp = await fetch(submitted.status_url, { signal, headers: authHeaders() });
      if (!resp.ok) {
        this.setState("error", await errorMessage(resp));
        return;
      }
      const job = await resp.json();
      if (job.status === "succeeded") break;
      if (job.status === "failed" || job.status === "canceled") {
        const why = job.error ? job.error.message : job.status;
        this.setState("error", `The job ${job.status}: ${why}`);
        return;
      }
      this.showProgress(job);
      await sleep(wait, signal);
      wait = job.status === "queued" ? Math.min(wait * 1.5, JOB_MAX_POLL_MS) : JOB_POLL_MS;
    }
    signal.removeEventListener("abort", cancel);
    const resp = await fetch(submitted.result_url, { signal, headers: authHeaders() });
    if (!resp.ok) {
      this.setState("error", await errorMessage(resp));
      return;
    }
    this.showResult(resp, await resp.blob(), performance.now() - t0);
  }

  showProgress(job) {
    const total = Number(job.frames_total) || 0, done = Number(job.frames_done) || 0;
    if (job.status === "queued") {
      this.setState("queued", "Queued…");
    } else if (total) {
      this.setState("working", `Working… frame ${done} of ${total}`);
    } else {
      this.setState("working", "Working…");
    }
    const bar = $(".progress", this.el);
    bar.classList.toggle("measured", total > 0);
    bar.firstElementChild.style.width = total ? `${Math.round((100 * done) / total)}%` : "";
  }

  showResult(resp, blob, elapsedMs) {
    const h = (name) => resp.headers.get(name);
    if (this.result) URL.revokeObjectURL(this.result.url);
    const mask = this.options().mask;
    if (!h("X-Width") && (blob.type || "").startsWith("video/")) {
      // A job's result carries no size headers: the video says its own once it loads.
      this.after.addEventListener("loadedmetadata", () => {
        const [w, hgt] = naturalSize(this.after);
        this.setAspect(w, hgt);
        $(".out-size", this.el).textContent = `${w} × ${hgt} px · ${formatBytes(blob.size)} · ${typeName(blob.type)}`;
      }, { once: true });
    }
    const width = Number(h("X-Width")) || naturalSize(this.before)[0];
    const height = Number(h("X-Height")) || naturalSize(this.before)[1];
    this.result = {
      blob, url: URL.createObjectURL(blob), name: outputName(this.file.name, blob.type, mask),
      width, height, model: h("X-Model"), requestId: h("X-Request-ID"),
    };
    this.after.src = this.result.url;
    this.after.alt = `${mask ? "Mask" : "Result"}: ${this.file.name}`;
    this.after.hidden = false;
    this.el.classList.remove("no-preview");

    this.compareFrames();
    this.setAspect(width, height);

    const type = typeName(blob.type);
    $(".out-size", this.el).textContent =
      `${width} × ${height} px · ${formatBytes(blob.size)} · ${type}` +
      (this.result.model ? ` · model ${this.result.model}` : "");
    const timings = parseServerTiming(h("Server-Timing"))
      .map((t) => `${t.name} ${Number.isFinite(t.dur) ? formatMs(t.dur) : ""}`.trim());
    timings.push(`round trip ${formatMs(elapsedMs)}`);
    $(".timing", this.el).textContent = timings.join(" · ");
    $(".info", this.el).hidden = false;

    const link = $(".download", this.el);
    link.href = this.result.url;
    link.download = this.result.name;
    link.textContent = `Download ${this.result.name}`;
    link.hidden = false;
    this.setState("done", "Done.");
    updateToolbar();
  }

  // Comparing needs both images in the same frame: not so once the result is cropped. A
  // fast answer can come before the original is decoded: its load decides then.
  compareFrames() {
    const [bw, bh] = naturalSize(this.before);
    const r = this.result;
    const sameFrame = r && bw && !this.before.hidden && Math.abs(bw / bh - r.width / r.height) < 0.01;
    this.el.classList.toggle("compare-on", Boolean(sameFrame));
  }

  destroy() {
    if (this.controller) this.controller.abort();
    this.pending = false;
    URL.revokeObjectURL(this.sourceUrl);
    if (this.result) URL.revokeObjectURL(this.result.url);
    this.el.remove();
  }
}

const TYPE_NAMES = {
  "image/png": "PNG", "image/webp": "WebP", "image/jpeg": "JPEG", "image/gif": "GIF",
  "video/webm": "WebM", "video/mp4": "MP4", "video/quicktime": "QuickTime", "application/zip": "ZIP",
};

function typeName(type) {
  return TYPE_NAMES[type] || type;
}

// An image's or a video's pixel size: [width, height], zeros until it has loaded.
function naturalSize(el) {
  return el.tagName === "VIDEO" ? [el.videoWidth, el.videoHeight] : [el.naturalWidth, el.naturalHeight];
}

// The stable error code of a JSON error answer, or "".
async function errorCode(resp) {
  try { return (await resp.json()).code || ""; } catch { return ""; }
}

async function errorMessage(resp) {
  let text = "";
  try {
    const data = await resp.json();
    text = data.message || data.detail || "";
    if (typeof text !== "string") text = JSON.stringify(text);
  } catch { /* not JSON */ }
  if (resp.status === 401 || resp.status === 403) askForKey(text);
  if (resp.status === 429 || resp.status === 503) {
    return `Server busy: gave up after ${MAX_TRIES} tries. ${text}`.trim();
  }
  return `Error ${resp.status}: ${text || resp.statusText || "request failed"}`;
}

// Start pending cards while there is a free slot, oldest first.
function pump() {
  while (state.running < MAX_PARALLEL) {
    const card = state.cards.find((c) => c.pending);
    if (!card) return;
    card.pending = false;
    state.running++;
    card.run().finally(() => { state.running--; pump(); });
  }
}

// ---------- page ----------

function addFiles(files) {
  // Many images at once go to the server as one batch (batch.js) instead of a request each.
  if (files.length > BATCH_THRESHOLD) {
    startBatch(files);
    return;
  }
  for (const file of files) {
    const card = new Card(file);
    state.cards.push(card);
    $("#cards").append(card.el);
    card.start();
  }
  updateToolbar();
}

function removeCard(card) {
  const i = state.cards.indexOf(card);
  card.destroy();
  state.cards.splice(i, 1);
  // Keep keyboard focus somewhere sensible.
  const next = state.cards[i] || state.cards[i - 1];
  (next ? $(".remove", next.el) : $("#file-input")).focus();
  updateToolbar();
}

function updateToolbar() {
  const done = state.cards.filter((c) => c.result);
  $("#download-all").disabled = done.length === 0;
  $("#download-all").textContent = done.length > 1 ? `Download all ${done.length} (.zip)` : "Download all (.zip)";
  const any = state.cards.length > 0 || state.batches.length > 0;
  $("#clear-all").disabled = !any;
  $("#empty").hidden = any;
}

async function downloadAll() {
  const used = new Set();
  const files = [];
  for (const card of state.cards.filter((c) => c.result)) {
    let name = card.result.name;
    for (let n = 2; used.has(name); n++) name = card.result.name.replace(/(\.[^.]+)$/, `-${n}$1`);
    used.add(name);
    files.push({ name, bytes: new Uint8Array(await card.result.blob.arrayBuffer()) });
  }
  const url = URL.createObjectURL(makeZip(files));
  const a = document.createElement("a");
  a.href = url;
  a.download = "backgrounds-removed.zip";
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function setPreviewBackground() {
  const choice = $("input[name=preview-bg]:checked").value;
  document.body.dataset.previewBg = choice;
  document.body.style.setProperty("--preview-color", $("#preview-color").value);
}

// The default model's licence, as the server reports it: the AGPL of IMG.LY's weights binds
// whoever serves them, so the page says which terms the results come under.
function showLicence(models) {
  const spec = models.models.find((m) => m.name === models.default);
  if (!spec) return;
  const note = $("#model-licence");
  note.textContent = `Cut out with ${spec.name}, licensed ${spec.license}.`;
  note.hidden = false;
}

async function loadModels() {
  try {
    const resp = await fetch("/models");
    if (!resp.ok) return;
    state.models = await resp.json();
    showLicence(state.models);
    for (const card of state.cards) {
      const chosen = card.form.elements.model.value;
      card.fillModels();
      if (chosen) card.form.elements.model.value = chosen;
    }
  } catch { /* the model picker stays hidden: the server's default is used */ }
}

function init() {
  const input = $("#file-input");
  input.addEventListener("change", () => { addFiles([...input.files]); input.value = ""; });

  const zone = $("#dropzone");
  const over = (on) => (e) => { e.preventDefault(); zone.classList.toggle("dragover", on); };
  zone.addEventListener("dragenter", over(true));
  zone.addEventListener("dragover", over(true));
  zone.addEventListener("dragleave", over(false));
  // Dropping anywhere on the page works; the zone only shows where.
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragover");
    if (e.dataTransfer?.files.length) addFiles([...e.dataTransfer.files]);
  });

  document.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData?.files || [])];
    if (!files.length) return;
    e.preventDefault();
    addFiles(files.map((f) => {
      state.pasteCount++;
      const ext = EXTENSIONS[f.type] || "png";
      return new File([f], `pasted-${state.pasteCount}.${ext}`, { type: f.type });
    }));
  });

  for (const radio of document.querySelectorAll("input[name=preview-bg]")) {
    radio.addEventListener("change", setPreviewBackground);
  }
  $("#preview-color").addEventListener("input", () => {
    $("input[name=preview-bg][value=custom]").checked = true;
    setPreviewBackground();
  });
  setPreviewBackground();

  $("#download-all").addEventListener("click", downloadAll);
  $("#clear-all").addEventListener("click", () => {
    for (const card of state.cards.splice(0)) card.destroy();
    for (const batch of state.batches.splice(0)) batch.destroy();
    updateToolbar();
    input.focus();
  });
  updateToolbar();
  initApiKey();
  loadModels();
}

init();

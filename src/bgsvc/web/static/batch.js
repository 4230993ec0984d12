// bgsvc web page, batch mode: more than BATCH_THRESHOLD images at once go to POST /batches
// as one request; the page polls GET /batches/{id} and links the server's result.zip.
// Loaded after app.js, whose helpers ($, state, sleep, queryFor, errorMessage...) it uses.
"use strict";

const BATCH_THRESHOLD = 5;        // more images than this at once are sent as one batch
const POLL_FIRST_MS = 500;        // first wait before asking for the batch's status
const POLL_MAX_MS = 5000;         // polling slows down to this while nothing changes
const POLL_MAX_ERRORS = 5;        // consecutive failed polls before giving up (and offering a retry)

const ITEM_STATUS = {
  queued: "waiting", running: "working…", succeeded: "done",
  failed: "failed", canceled: "canceled", expired: "expired",
};
const FINAL = new Set(["succeeded", "failed", "canceled", "expired"]);

// "WebP, quality 90, crop 5px" from the query string the batch is sent with.
function describeOptions(q) {
  const parts = [];
  const format = q.get("format") || "png";
  parts.push({ png: "PNG", webp: "WebP", jpg: "JPEG" }[format] || format);
  if (q.has("quality")) parts.push(`quality ${q.get("quality")}`);
  if (q.has("bg_color")) parts.push(`background ${q.get("bg_color")}`);
  if (q.has("crop")) parts.push(`crop${q.has("crop_margin") ? ` ${q.get("crop_margin")}` : ""}`);
  if (q.has("channels")) parts.push("mask only");
  if (q.has("model")) parts.push(`model ${q.get("model")}`);
  return `Options: ${parts.join(", ")}`;
}

class Batch {
  constructor(files) {
    this.files = files;
    this.query = queryFor(state.lastOptions);   // the options new images would start with
    this.controller = null;
    this.info = null;        // the 202 body of POST /batches once accepted
    this.el = $("#batch-template").content.firstElementChild.cloneNode(true);
    this.el.batch = this;
    $(".card-title", this.el).textContent = `Batch of ${files.length} images`;
    $(".batch-options", this.el).textContent = describeOptions(this.query);
    this.bar = $("progress", this.el);
    this.bar.max = files.length;
    this.list = $(".batch-items", this.el);
    this.list.replaceChildren(...files.map((f) => this.itemRow(f.name, "queued", null)));
    this.showCounts({ succeeded: 0, failed: 0, canceled: 0, expired: 0 }, files.length);
    $(".remove", this.el).addEventListener("click", () => removeBatch(this));
    $(".retry", this.el).addEventListener("click", () => (this.info ? this.follow() : this.submit()));
  }

  itemRow(name, status, error) {
    const li = document.createElement("li");
    li.dataset.status = status;
    const label = ITEM_STATUS[status] || status;
    li.textContent = `${name}: ${error ? `${label} (${error.message})` : label}`;
    return li;
  }

  setState(name, message) {
    this.el.dataset.state = name;
    $(".status", this.el).textContent = message;
    $(".retry", this.el).hidden = name !== "error";
  }

  showCounts(counts, total) {
    const failed = counts.failed + counts.canceled + counts.expired;
    $(".batch-count", this.el).textContent =
      `${counts.succeeded}/${total} done` + (failed ? `, ${failed} failed` : "");
    this.bar.value = counts.succeeded + failed;
  }

  fresh() {
    if (this.controller) this.controller.abort();
    this.controller = new AbortController();
    return this.controller.signal;
  }

  // POST /batches: every file as a repeated "file" field, the options in the query string.
  async submit() {
    const signal = this.fresh();
    try {
      for (let attempt = 1; ; attempt++) {
        this.setState("sending", `Sending ${this.files.length} images…`);
        const body = new FormData();
        for (const f of this.files) body.append("file", f, f.name);
        const resp = await fetch(`/batches?${this.query}`, { method: "POST", body, signal, headers: authHeaders() });
        if ((resp.status === 429 || resp.status === 503) && attempt < MAX_TRIES) {
          const wait = Math.min(Math.max(Number(resp.headers.get("Retry-After")) || 1, 1), MAX_RETRY_WAIT_S);
          await resp.body?.cancel();
          for (let left = Math.ceil(wait); left > 0; left--) {
            this.setState("busy", `Server busy, sending again in ${left} s (try ${attempt + 1} of ${MAX_TRIES})…`);
            await sleep(1000, signal);
          }
          continue;
        }
        if (resp.status !== 202) {
          this.setState("error", await errorMessage(resp));
          return;
        }
        this.info = await resp.json();
        break;
      }
    } catch (err) {
      if (!signal.aborted) this.setState("error", `Could not reach the server (${err.message || err}).`);
      return;
    }
    this.files = null;    // the server has them now; let the browser free them
    this.follow();
  }

  // Poll GET /batches/{id}: quickly at first, slower while nothing changes, until it completes.
  async follow() {
    const signal = this.fresh();
    let wait = POLL_FIRST_MS;
    let errors = 0;
    let seen = "";
    this.setState("working", "Queued on the server…");
    try {
      for (;;) {
        await sleep(wait, signal);
        let resp;
        try {
          resp = await fetch(this.info.status_url, { signal, cache: "no-store", headers: authHeaders() });
        } catch (err) {
          if (signal.aborted) throw err;
          resp = null;
        }
        if (!resp || resp.status === 429 || resp.status >= 500) {
          if (++errors >= POLL_MAX_ERRORS) {
            this.setState("error", resp ? await errorMessage(resp) : "Lost contact with the server.");
            return;
          }
          const after = Number(resp?.headers.get("Retry-After")) || 0;
          await resp?.body?.cancel();
          wait = Math.min(Math.max(after * 1000, wait * 2), MAX_RETRY_WAIT_S * 1000);
          continue;
        }
        if (!resp.ok) {   // 404: the batch expired or is unknown to this server
          this.setState("error", await errorMessage(resp));
          return;
        }
        errors = 0;
        const status = await resp.json();
        const key = JSON.stringify(status.counts);
        wait = key === seen ? Math.min(wait * 1.5, POLL_MAX_MS) : POLL_FIRST_MS;
        seen = key;
        this.show(status);
        if (status.status === "completed") return;
      }
    } catch (err) {
      if (!signal.aborted) this.setState("error", `Could not reach the server (${err.message || err}).`);
    }
  }

  show(status) {
    const total = status.items.length;
    this.bar.max = total;
    this.showCounts(status.counts, total);
    this.list.replaceChildren(...status.items.map((i) => this.itemRow(i.name, i.status, i.error)));
    const finished = status.items.filter((i) => FINAL.has(i.status)).length;
    if (status.status !== "completed") {
      this.setState("working", status.status === "queued" ? "Queued on the server…" : `Working… ${finished} of ${total} finished.`);
      return;
    }
    if (status.counts.succeeded === 0) {
      this.setState("error-final", "Finished: no image could be processed.");
      return;
    }
    // A plain same-origin link: the server's Content-Disposition names the file.
    const link = $(".download", this.el);
    link.href = status.result_url;
    link.download = `${status.id}.zip`;
    link.textContent = `Download zip (${status.counts.succeeded} images)`;
    // A link cannot send X-Api-Key: with a key, fetch the zip and hand the browser a blob.
    link.onclick = async (e) => {
      if (!apiKey()) return;
      e.preventDefault();
      const resp = await fetch(status.result_url, { headers: authHeaders() });
      if (!resp.ok) { this.setState("error-final", await errorMessage(resp)); return; }
      const url = URL.createObjectURL(await resp.blob());
      const temp = Object.assign(document.createElement("a"), { href: url, download: link.download });
      temp.click();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    };
    link.hidden = false;
    this.setState("done", "Finished.");
  }

  destroy() {
    if (this.controller) this.controller.abort();
    this.el.remove();
  }
}

function startBatch(files) {
  const batch = new Batch(files);
  state.batches.unshift(batch);
  $("#batches").prepend(batch.el);
  updateToolbar();
  batch.submit();
}

function removeBatch(batch) {
  state.batches.splice(state.batches.indexOf(batch), 1);
  batch.destroy();
  $("#file-input").focus();
  updateToolbar();
}

// skiplock dashboard: counts, recent jobs with live progress, cancel / retry, and
// flow control (admin keys): limits with usage, keys at their limit, queue switches.
"use strict";

const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const REFRESH_MS = 3000;
const KEY_ITEM = "skiplock.key";
// Browsers allow about six connections per host: leave room for the polling.
const MAX_STREAMS = 4;

const docs = new Map(); // job id -> newest job document seen
const streams = new Map(); // job id -> AbortController of its event stream

function apiKey() {
  const match = /(?:^|&)key=([^&]+)/.exec(location.hash.slice(1));
  if (match) {
    sessionStorage.setItem(KEY_ITEM, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  let key = sessionStorage.getItem(KEY_ITEM);
  if (!key) {
    key = (window.prompt("skiplock API key") || "").trim();
    if (key) sessionStorage.setItem(KEY_ITEM, key);
  }
  return key;
}

const KEY = apiKey();

function headers() {
  return { Authorization: "Bearer " + KEY };
}

async function api(path, options = {}) {
  const extra = options.body ? { "Content-Type": "application/json" } : {};
  const response = await fetch(path, { ...options, headers: { ...headers(), ...extra } });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const err = new Error((body && body.detail) || response.status + " " + response.statusText);
    err.status = response.status;
    throw err;
  }
  return body;
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children);
  return node;
}

function newer(a, b) {
  return !a || (b.updated_at || "") >= (a.updated_at || "");
}

// -- counts -------------------------------------------------------------------

function renderCounts(stats) {
  const byQueue = new Map();
  for (const c of stats.counts) {
    const row = byQueue.get(c.queue) || Object.fromEntries(STATES.map((s) => [s, 0]));
    row[c.state] = (row[c.state] || 0) + c.count;
    byQueue.set(c.queue, row);
  }
  const rows = [...byQueue.keys()].sort().map((queue) => {
    const row = byQueue.get(queue);
    return el("tr", {}, el("td", { textContent: queue }),
      ...STATES.map((s) => el("td", { className: "num " + s, textContent: row[s] })));
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 6, textContent: "No jobs." })));
  document.querySelector("#counts tbody").replaceChildren(...rows);
}

// -- jobs ---------------------------------------------------------------------

function jobRow(id) {
  let row = document.getElementById("job-" + id);
  if (row) return row;
  const bar = el("div", { className: "bar" }, el("div", { className: "fill" }));
  const cancel = el("button", { type: "button", className: "cancel", textContent: "Cancel" });
  const retry = el("button", { type: "button", className: "retry", textContent: "Retry" });
  cancel.addEventListener("click", () => act(id, "cancel"));
  retry.addEventListener("click", () => act(id, "retry"));
  row = el("tr", { id: "job-" + id },
    el("td", { className: "id", title: id, textContent: id.slice(0, 8) }),
    el("td", { className: "task" }),
    el("td", { className: "state" }),
    el("td", { className: "progress" }, bar, el("span", { className: "pct" })),
    el("td", { className: "error" }),
    el("td", { className: "actions" }, cancel, retry));
  row.dataset.id = id;
  return row;
}

function paint(doc) {
  const row = jobRow(doc.id);
  const pct = doc.state === "succeeded" ? 100 : Math.max(0, Math.min(100, doc.progress || 0));
  row.dataset.state = doc.state;
  row.querySelector(".task").textContent = doc.task;
  row.querySelector(".state").textContent =
    doc.state + (doc.cancel_requested && !TERMINAL.has(doc.state) ? " (cancelling)" : "");
  row.querySelector(".state").className = "state " + doc.state;
  row.querySelector(".fill").style.width = pct + "%";
  row.querySelector(".pct").textContent =
    Math.round(pct) + "%" + (doc.message ? " " + doc.message : "");
  // The last failed attempt: the reason a failed job failed, or why a live one is retrying.
  // A job that succeeded or was cancelled afterwards shows none.
  // (`error` is set only on a failed job; `errors` is the whole history.)
  const error = row.querySelector(".error");
  const last = doc.error || (doc.errors && doc.errors[doc.errors.length - 1]);
  const shown = last && (doc.state === "failed" || !TERMINAL.has(doc.state));
  error.textContent = shown
    ? (doc.state === "failed" ? "" : "retrying after ") + last.type + ": " + last.message
    : "";
  error.className = "error" + (shown && doc.state !== "failed" ? " retrying" : "");
  row.querySelector(".cancel").hidden = TERMINAL.has(doc.state);
  row.querySelector(".retry").hidden = !(doc.state === "failed" || doc.state === "cancelled");
  return row;
}

function update(doc) {
  if (!newer(docs.get(doc.id), doc)) return;
  docs.set(doc.id, doc);
  if (document.getElementById("job-" + doc.id)) paint(doc);
}

async function act(id, action) {
  try {
    update(await api("/v1/jobs/" + id + "/" + action, { method: "POST" }));
    showError("");
    if (action === "retry") follow(id);
  } catch (err) {
    showError(action + " failed: " + err.message);
  }
}

// fetch() instead of EventSource, which cannot send an Authorization header.
async function follow(id) {
  if (streams.has(id) || streams.size >= MAX_STREAMS) return;
  const abort = new AbortController();
  streams.set(id, abort);
  try {
    const response = await fetch("/v1/jobs/" + id + "/events", {
      headers: { ...headers(), Accept: "text/event-stream" },
      signal: abort.signal,
    });
    if (!response.ok || !response.body) return;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let event = "message";
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          // Only "job" events carry a job; "expired" (share links) carries none.
          if (event === "job" && data.length) update(JSON.parse(data.join("\n")));
          event = "message";
          data = [];
        } else if (line.startsWith("event:")) {
          event = line.slice(6).trim();
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        }
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") console.warn("stream of job", id, "failed:", err);
  } finally {
    if (streams.get(id) === abort) streams.delete(id);
  }
}

function renderJobs(page) {
  const seen = new Set();
  const rows = page.jobs.map((doc) => {
    seen.add(doc.id);
    update(doc);
    const row = paint(docs.get(doc.id));
    if (!TERMINAL.has(docs.get(doc.id).state)) follow(doc.id);
    return row;
  });
  for (const [id, abort] of streams) {
    if (!seen.has(id)) abort.abort();
  }
  for (const id of docs.keys()) {
    if (!seen.has(id)) docs.delete(id);
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 6, textContent: "No jobs yet." })));
  document.querySelector("#jobs tbody").replaceChildren(...rows);
}

// -- flow control (the /v1/admin routes: admin keys only) -----------------------

let flowAllowed = true; // false once the key is refused (403): stop asking
let flowRefreshing = false;
// The last answers rendered: an unchanged answer leaves the rows (and a button being
// clicked) in place.
const flowShown = { limits: "", queues: "" };

function changed(part, doc) {
  const text = JSON.stringify(doc);
  if (flowShown[part] === text) return false;
  flowShown[part] = text;
  return true;
}

function num(value) {
  return value === null || value === undefined ? "-" : String(value);
}

function renderLimits(doc) {
  const rows = doc.limits.map((limit) => {
    const usage = limit.usage || {};
    const remove = el("button", { type: "button", className: "remove", textContent: "Remove" });
    remove.addEventListener("click", () => removeLimit(limit.pattern));
    const row = el("tr", { className: usage.keys_at_limit ? "at-limit" : "" },
      el("td", { className: "pattern", textContent: limit.pattern }),
      el("td", { className: "num", textContent: num(limit.max_running) }),
      el("td", { textContent: limit.max_starts === null ? "-"
        : limit.max_starts + " per " + limit.per_seconds + " s" }),
      el("td", { className: "num", textContent: num(usage.keys) }),
      el("td", { className: "num at", textContent: num(usage.keys_at_limit) }),
      el("td", { className: "num", textContent: num(usage.running) }),
      el("td", { className: "num throttled", textContent: num(usage.throttled) }),
      el("td", { className: "actions" }, remove));
    row.dataset.pattern = limit.pattern;
    return row;
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 8, textContent: "No limits." })));
  document.querySelector("#limits tbody").replaceChildren(...rows);

  const keys = doc.at_limit.map((k) => el("tr", {},
    el("td", { textContent: k.pattern }), el("td", { textContent: k.key }),
    el("td", { className: "num", textContent: k.running }),
    el("td", { className: "num", textContent: num(k.starts) }),
    el("td", { className: "num", textContent: k.queued })));
  if (doc.at_limit_truncated) {
    keys.push(el("tr", {}, el("td", { colSpan: 5, textContent: "… more (skiplock limits usage)" })));
  }
  if (!keys.length) keys.push(el("tr", {}, el("td", { colSpan: 5, textContent: "None." })));
  document.querySelector("#limit-keys tbody").replaceChildren(...keys);
}

function renderFlowQueues(doc) {
  const rows = doc.queues.map((q) => {
    const toggle = el("button", { type: "button", className: q.paused ? "resume" : "pause",
      textContent: q.paused ? "Resume" : "Pause" });
    toggle.addEventListener("click", () => switchQueue(q.queue, q.paused ? "resume" : "pause"));
    const row = el("tr", {},
      el("td", { textContent: q.queue }),
      el("td", { className: q.paused ? "paused" : "", textContent: q.paused ? "paused" : "running" }),
      el("td", { textContent: q.fair ? "fair" : "claim order" }),
      el("td", { className: "num", textContent: q.queued }),
      el("td", { className: "num", textContent: q.running }),
      el("td", { className: "num", textContent: q.throttled }),
      el("td", { className: "actions" }, toggle));
    row.dataset.queue = q.queue;
    row.dataset.paused = q.paused;
    return row;
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 7, textContent: "No queues." })));
  document.querySelector("#flow-queues tbody").replaceChildren(...rows);
}

function renderSchedules(doc) {
  const rows = doc.schedules.map((s) => {
    const toggle = el("button", { type: "button", className: s.paused ? "resume" : "pause",
      textContent: s.paused ? "Resume" : "Pause" });
    toggle.addEventListener("click", () => scheduleAction(s.name, s.paused ? "resume" : "pause"));
    const trigger = el("button", { type: "button", className: "trigger", textContent: "Run now" });
    trigger.addEventListener("click", () => scheduleAction(s.name, "trigger"));
    const when = s.cron !== null ? s.cron + " (" + s.timezone + ")" : "every " + s.every_seconds + " s";
    const row = el("tr", {},
      el("td", { textContent: s.name }),
      el("td", { textContent: when }),
      el("td", { textContent: s.task }),
      el("td", { className: s.paused ? "paused" : "", textContent: s.paused ? "paused" : "running" }),
      el("td", { textContent: s.last_tick || "-" }),
      el("td", { textContent: s.next_tick || "-" }),
      el("td", { className: "actions" }, toggle, trigger));
    row.dataset.schedule = s.name;
    row.dataset.paused = s.paused;
    return row;
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 7, textContent: "No schedules." })));
  document.querySelector("#schedules tbody").replaceChildren(...rows);
}

async function refreshFlow() {
  if (!flowAllowed || flowRefreshing) return;
  flowRefreshing = true;
  try {
    const [limits, queues, schedules] = await Promise.all([
      api("/v1/admin/limits"), api("/v1/admin/queues"), api("/v1/admin/schedules")]);
    if (changed("limits", limits)) renderLimits(limits);
    if (changed("queues", queues)) renderFlowQueues(queues);
    if (changed("schedules", schedules)) renderSchedules(schedules);
    document.getElementById("flow-body").hidden = false;
    document.getElementById("flow-note").hidden = true;
  } catch (err) {
    const note = document.getElementById("flow-note");
    if (err.status === 403) {
      flowAllowed = false;
      note.textContent = "Flow control needs an API key with the admin scope.";
    } else {
      note.textContent = "Could not load flow control: " + err.message;
    }
    note.hidden = false;
    document.getElementById("flow-body").hidden = true;
  } finally {
    flowRefreshing = false;
  }
}

async function flowAction(what, call) {
  try {
    await call();
    showError("");
  } catch (err) {
    showError(what + " failed: " + err.message);
  }
  refreshFlow();
}

function removeLimit(pattern) {
  flowAction("remove limit", () =>
    api("/v1/admin/limits/" + encodeURIComponent(pattern), { method: "DELETE" }));
}

function switchQueue(queue, action) {
  flowAction(action, () =>
    api("/v1/admin/queues/" + encodeURIComponent(queue) + "/" + action, { method: "POST" }));
}

function scheduleAction(name, action) {
  flowAction(action + " schedule", () =>
    api("/v1/admin/schedules/" + encodeURIComponent(name) + "/" + action, { method: "POST" }));
}

function optionalNumber(id) {
  const text = document.getElementById(id).value.trim();
  return text === "" ? null : Number(text);
}

document.getElementById("limit-set").addEventListener("click", () => {
  const pattern = document.getElementById("limit-pattern").value.trim();
  if (!pattern) {
    showError("set limit failed: a pattern is needed");
    return;
  }
  const body = {
    max_running: optionalNumber("limit-running"),
    max_starts: optionalNumber("limit-starts"),
    per_seconds: optionalNumber("limit-per"),
  };
  flowAction("set limit", () => api("/v1/admin/limits/" + encodeURIComponent(pattern),
    { method: "PUT", body: JSON.stringify(body) }));
});

let refreshing = false;

async function refresh() {
  if (refreshing) return; // a slow answer: skip this tick rather than pile requests up
  refreshing = true;
  try {
    const [stats, page] = await Promise.all([api("/v1/stats"), api("/v1/jobs?limit=25")]);
    renderCounts(stats);
    renderJobs(page);
    refreshFlow();
    document.getElementById("status").textContent =
      "updated " + new Date().toLocaleTimeString();
    showError("");
  } catch (err) {
    showError("Could not load: " + err.message);
  } finally {
    refreshing = false;
  }
}

document.getElementById("forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_ITEM);
  location.reload();
});

if (KEY) {
  refresh();
  setInterval(refresh, REFRESH_MS);
} else {
  showError("An API key is needed: open /dashboard#key=<your key>.");
}

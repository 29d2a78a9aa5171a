// The incidents page: reads the responder's JSON API with the bearer token and renders it
// with textContent only (label values and outputs are untrusted).
"use strict";

const REFRESH_MS = 2000;
let timer = null;

function token() { return sessionStorage.getItem("runbook-token") || ""; }

class Refused extends Error {
  constructor() { super("token refused (401)"); }
}

async function api(method, path) {
  const response = await fetch(path, {
    method,
    headers: { "Authorization": "Bearer " + token(), "Content-Type": "application/json" },
    body: method === "POST" ? "{}" : undefined,
    cache: "no-store",
  });
  if (response.status === 401) { throw new Refused(); }
  if (!response.ok) { throw new Error(method + " " + path + ": " + response.status); }
  return response.json();
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) { node.textContent = String(text); }
  if (cls) { node.className = cls; }
  return node;
}

function field(obj, ...names) {
  for (const name of names) { if (obj && obj[name] !== undefined) { return obj[name]; } }
  return undefined;
}

// Names are untrusted too: one that is no plain identifier (Prometheus 3 allows any UTF-8) is
// quoted, so it cannot pass for more key="value" pairs on the card an approver reads.
const PLAIN_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

function labelText(labels) {
  return Object.keys(labels || {}).sort()
    .map((k) => (PLAIN_NAME.test(k) ? k : JSON.stringify(k)) + "=" + JSON.stringify(labels[k]))
    .join(" ");
}

function renderIncident(incident, withButtons) {
  const box = el("article", null, "incident");
  const id = field(incident, "id");
  box.dataset.id = id;
  const labels = field(incident, "labels") || {};
  const state = field(incident, "state") || "?";
  const title = el("h3");
  title.append(el("span", labels.alertname || "(no alertname)"), " ",
               el("span", state, "state state-" + state), " ", el("small", "#" + id));
  box.append(title);
  box.append(el("div", labelText(labels), "labels"));
  const started = field(incident, "starts_at", "startsAt");
  if (started) { box.append(el("div", "started " + started)); }
  const steps = field(incident, "steps") || [];
  if (steps.length) {
    const list = el("ol", null, "steps");
    for (const step of steps) {
      const item = el("li");
      const kind = field(step, "kind", "step", "type") || "?";
      const at = field(step, "at", "time", "created_at") || "";
      item.append(el("strong", kind), " ", el("small", at));
      const detail = field(step, "detail", "data");
      if (detail && Object.keys(detail).length) {
        item.append(el("pre", JSON.stringify(detail, null, 2)));
      }
      list.append(item);
    }
    box.append(list);
  }
  if (withButtons) {
    const approve = el("button", "Approve", "approve");
    const reject = el("button", "Reject", "reject");
    approve.addEventListener("click", () => decide(id, "approve"));
    reject.addEventListener("click", () => decide(id, "reject"));
    box.append(approve, " ", reject);
  }
  return box;
}

async function decide(id, verdict) {
  try {
    await api("POST", "/incidents/" + encodeURIComponent(id) + "/" + verdict);
    await refresh();
  } catch (err) {
    if (err instanceof Refused) { signOut(err.message); return; }
    setStatus(String(err.message || err));
  }
}

function setStatus(text) { document.getElementById("status").textContent = text; }

function isPending(incident) {
  return (field(incident, "state") || "") === "awaiting_approval";
}

async function refresh() {
  const activeOnly = document.getElementById("active-only").checked;
  const body = await api("GET", "/incidents" + (activeOnly ? "?active=1" : ""));
  const incidents = Array.isArray(body) ? body : (body.incidents || []);
  const pending = document.getElementById("pending");
  const list = document.getElementById("list");
  pending.replaceChildren();
  list.replaceChildren();
  for (const incident of incidents) {
    if (isPending(incident)) { pending.append(renderIncident(incident, true)); }
    list.append(renderIncident(incident, false));
  }
  if (!pending.children.length) { pending.append(el("p", "none", "empty")); }
  if (!list.children.length) { list.append(el("p", "none", "empty")); }
  setStatus("updated " + new Date().toLocaleTimeString());
}

// A refused token is forgotten and asked for again: polling on with it would only be refused.
function signOut(message) {
  sessionStorage.removeItem("runbook-token");
  if (timer) { clearTimeout(timer); timer = null; }
  document.getElementById("incidents").hidden = true;
  document.getElementById("login").hidden = false;
  setStatus(message);
}

async function loop() {
  try { await refresh(); } catch (err) {
    if (err instanceof Refused) { signOut(err.message); return; }
    setStatus(String(err.message || err));
  }
  timer = setTimeout(loop, REFRESH_MS);
}

function connect() {
  document.getElementById("login").hidden = true;
  document.getElementById("incidents").hidden = false;
  if (timer) { clearTimeout(timer); }
  loop();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("runbook-token", document.getElementById("token").value);
    connect();
  });
  document.getElementById("active-only").addEventListener("change", () => refresh().catch(() => {}));
  if (token()) { connect(); }
});

// Shoal's web view: renders the page from the JSON it polls every 2 s.
// Plain JavaScript, no framework, no build step.
"use strict";

const page = document.body.dataset.page;
const poll = document.body.dataset.poll;
const main = document.getElementById("main");

// h builds an element: h("td", {class: "x"}, "text", child, ...). Text is
// always set as text, never as HTML.
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === undefined || kid === null || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

const short = (s) => (s || "").slice(0, 7) || "—";
const cores = (c) => (Math.round(c * 100) / 100) + " cpu";
function bytes(b) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (Math.round(b * 10) / 10) + " " + u[i];
}
function when(t) {
  if (!t || t.startsWith("0001")) return "—";
  const d = new Date(t);
  const s = Math.round((d - Date.now()) / 1000);
  const a = Math.abs(s);
  const span = a < 60 ? a + "s" : a < 3600 ? Math.round(a / 60) + "m" : a < 86400 ? Math.round(a / 3600) + "h" : Math.round(a / 86400) + "d";
  return s >= 0 ? "in " + span : span + " ago";
}
// fill is a meter's bar, its width set through the CSSOM: the page's
// Content-Security-Policy allows no inline style attribute.
function fill(pct, cls) {
  const el = h("div", {class: "fill " + cls});
  el.style.width = pct + "%";
  return el;
}
// bar is a meter: a capacity (hot when nearly full) or a rollout (done
// when every slot runs the newest definition).
function bar(used, total, label, rollout) {
  const pct = total > 0 ? Math.min(100, Math.round(used / total * 100)) : 0;
  return h("div", {class: "meter", title: pct + "%"},
    fill(pct, rollout ? (pct >= 100 ? "done" : "") : (pct > 90 ? "hot" : "")),
    h("span", {}, label));
}
// td is a table cell labelled for the phone layout, where rows become cards.
function td(label, ...kids) {
  return h("td", {"data-label": label}, h("div", {class: "cell"}, kids));
}
function tdErr(label, ...kids) {
  const el = td(label, ...kids);
  el.className = "errs";
  return el;
}
const badge = (text, kind) => h("span", {class: "badge " + kind}, text);
function table(cls, heads, rows, empty) {
  if (!rows.length) return h("p", {class: "muted"}, empty);
  return h("div", {class: "scroll"}, h("table", {class: cls},
    h("thead", {}, h("tr", {}, heads.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows)));
}
function errors(list, id) {
  if (!list || !list.length) return null;
  return h("ul", {class: "errors", id: id}, list.map((e) => h("li", {}, e)));
}

function progress(s) {
  if (!s.spec) return h("span", {class: "muted"}, "—");
  const done = s.new_healthy >= s.desired;
  return h("div", {class: "rollout"},
    bar(s.new_healthy, s.desired, s.new_healthy + "/" + s.desired + " new", true),
    done ? null : h("small", {class: "muted"}, "rolling to " + s.spec));
}

function health(s) {
  const kind = s.desired === 0 ? "" : s.healthy >= s.desired ? "ok" : s.healthy > 0 ? "warn" : "bad";
  return badge(s.healthy + "/" + s.desired + " healthy", kind);
}

function renderFleet(d) {
  const alive = d.nodes.filter((n) => n.status === "alive").length;
  const sick = d.services.filter((s) => s.healthy < s.desired || s.errors.length).length;
  const nodes = d.nodes.map((n) => h("tr", {"data-node": n.name},
    td("Node", h("b", {}, n.name), h("br"), h("small", {class: "muted"}, n.addr)),
    td("Status", badge(n.status, n.status === "alive" ? "ok" : "bad")),
    td("Revision", h("code", {}, short(n.revision)), n.current ? null : badge("behind", "warn")),
    td("CPU", bar(n.used_cpu, n.cpu, cores(n.used_cpu) + " / " + cores(n.cpu)),
      h("small", {class: "muted"}, cores(Math.max(0, n.cpu - n.used_cpu)) + " free")),
    td("Memory", bar(n.used_memory, n.memory, bytes(n.used_memory) + " / " + bytes(n.memory)),
      h("small", {class: "muted"}, bytes(Math.max(0, n.memory - n.used_memory)) + " free")),
    td("Slots", n.slots),
    td("Labels", Object.entries(n.labels || {}).sort().map(([k, v]) => h("span", {class: "chip"}, k + "=" + v)))));
  const services = d.services.map((s) => h("tr", {"data-service": s.name},
    td("Service", h("a", {href: "/ui/services/" + encodeURIComponent(s.name)}, h("b", {}, s.name)),
      h("br"), h("small", {class: "muted"}, s.image || "")),
    td("Health", health(s)),
    td("Slots per node", (s.nodes || []).map((n) =>
      h("span", {class: "chip" + (n.healthy < n.desired ? " warn" : "")}, n.node + " " + n.healthy + "/" + n.desired))),
    td("Rollout", progress(s)),
    tdErr("Errors", errors(s.errors))));
  main.replaceChildren(...[
    h("section", {class: "cards"},
      h("div", {class: "card"}, h("small", {}, "Revision"), h("code", {id: "revision"}, short(d.revision))),
      h("div", {class: "card"}, h("small", {}, "Nodes alive"), h("b", {}, alive + "/" + d.nodes.length)),
      h("div", {class: "card"}, h("small", {}, "Services"), h("b", {}, d.services.length)),
      h("div", {class: "card" + (sick ? " warn" : "")}, h("small", {}, "Need attention"), h("b", {}, sick))),
    errors(d.errors, "fleet-errors"),
    h("h2", {}, "Nodes"),
    table("nodes", ["Node", "Status", "Revision", "CPU", "Memory", "Slots", "Labels"], nodes, "No members yet."),
    h("h2", {}, "Services"),
    table("services", ["Service", "Health", "Slots per node", "Rollout", "Errors"], services, "No services in the revision in force.")].filter(Boolean));
}

let logSlot = null;
function renderService(d) {
  const s = d.service;
  if (!d.found) {
    main.replaceChildren(h("p", {class: "error"}, "No such service in the revision in force."));
    return;
  }
  const records = d.records.map((r) => h("tr", {},
    td("Slot", r.slot), td("Node", r.node),
    td("Address", h("code", {}, r.addr)),
    td("Definition", h("code", {}, r.spec || "—"), r.new ? badge("new", "ok") : badge("old", "warn")),
    td("Health", r.healthy ? badge("healthy", "ok") : badge("unhealthy", "bad"))));
  const inst = d.instances.map((i) => h("tr", {},
    td("Slot", i.slot), td("State", badge(i.state, i.state === "healthy" ? "ok" : i.state === "starting" ? "warn" : "bad")),
    td("Image", h("code", {}, i.image)), td("Revision", h("code", {}, short(i.revision))),
    td("Started", when(i.started_at)), td("Restarts", i.restarts),
    tdErr("Last error", i.last_error || "")));
  if (logSlot === null) logSlot = d.records.length ? d.records[0].slot : 0;
  // The slot picker is kept across updates while the count holds, so an
  // open list does not close under the reader's finger.
  let select = document.getElementById("log-slot");
  if (!select || select.options.length !== Math.max(s.desired, 1)) {
    const slots = [];
    for (let i = 0; i < Math.max(s.desired, 1); i++) slots.push(h("option", {value: i, selected: i === logSlot}, "slot " + i));
    select = h("select", {id: "log-slot", "aria-label": "slot"}, slots);
    select.addEventListener("change", () => { logSlot = Number(select.value); fetchLogs(); });
  }
  const logs = document.getElementById("logs") || h("pre", {id: "logs", class: "logs"}, "…");
  main.replaceChildren(...[
    h("h1", {}, s.name, " ", health(s)),
    h("p", {class: "muted"}, h("code", {}, s.image || ""), " · definition ", h("code", {}, s.spec || "—")),
    h("section", {class: "cards"},
      h("div", {class: "card"}, h("small", {}, "Running"), h("b", {}, s.running + "/" + s.desired)),
      h("div", {class: "card"}, h("small", {}, "Rollout"), progress(s))),
    errors(s.errors, "service-errors"),
    h("h2", {}, "Slots, fleet-wide"),
    table("records", ["Slot", "Node", "Address", "Definition", "Health"], records, "No instance is published yet."),
    h("h2", {}, "Instances on this node"),
    table("instances", ["Slot", "State", "Image", "Revision", "Started", "Restarts", "Last error"], inst, "None on this node."),
    h("h2", {}, "Log tail ", select),
    logs].filter(Boolean));
  if (!logs.dataset.loaded) fetchLogs();
}

async function fetchLogs() {
  const logs = document.getElementById("logs");
  if (!logs) return;
  logs.dataset.loaded = "1";
  const name = decodeURIComponent(location.pathname.split("/").pop());
  try {
    const r = await fetch("/ui/api/logs?service=" + encodeURIComponent(name) + "&slot=" + logSlot, {credentials: "same-origin"});
    const text = await r.text();
    logs.textContent = text.split("\n").slice(-200).join("\n") || "(empty)";
    logs.scrollTop = logs.scrollHeight;
  } catch (e) {
    logs.textContent = "logs: " + e;
  }
}

function renderJobs(d) {
  const jobs = (d.jobs || []).map((j) => h("tr", {},
    td("Job", h("b", {}, j.name)), td("Schedule", h("code", {}, j.schedule)),
    td("Next tick", when(j.next)),
    td("Running", (j.running || []).map((r) => h("span", {class: "chip"}, r.node + " " + when(r.tick))))));
  const runs = (d.history || []).slice(0, 50).map((r) => h("tr", {},
    td("Job", r.job), td("Tick", when(r.tick), r.manual ? badge("manual", "") : null),
    td("Node", r.node),
    td("Result", r.state !== "ended" ? badge(r.state, "warn") : r.exit_code === 0 && r.reason === "exited" ? badge("ok", "ok") : badge((r.reason || "failed") + " " + r.exit_code, "bad")),
    tdErr("Detail", r.detail || "")));
  const unreachable = Object.entries(d.unreachable || {}).map(([n, why]) => n + ": " + why);
  main.replaceChildren(...[
    h("h2", {}, "Jobs"),
    table("jobs", ["Job", "Schedule", "Next tick", "Running"], jobs, "No jobs in the revision in force."),
    errors(unreachable, "jobs-unreachable"),
    h("h2", {}, "Last runs"),
    table("runs", ["Job", "Tick", "Node", "Result", "Detail"], runs, "No runs yet.")].filter(Boolean));
}

const render = {fleet: renderFleet, service: renderService, jobs: renderJobs}[page];
const live = document.getElementById("live");

function show(d) {
  render(d);
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

let busy = false; // one request at a time: a slow answer is not stacked on
async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const r = await fetch(poll, {credentials: "same-origin", cache: "no-store"});
    if (r.status === 401) { location.href = "/login"; return; }
    if (!r.ok) throw new Error(r.status + " " + r.statusText);
    show(await r.json());
    live.className = "live";
    if (page === "service") fetchLogs();
  } catch (e) {
    live.className = "live off";
    live.title = "update failed: " + e.message;
  } finally {
    busy = false;
  }
}

const initial = JSON.parse(document.getElementById("initial").textContent);
if (initial) show(initial);
refresh();
setInterval(refresh, page === "jobs" ? 5000 : 2000);

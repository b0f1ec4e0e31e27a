// deckhand console: a small hash-routed page over the hub's own API.
// Every action is POST /console/api/{Action} (the API's handler, with the
// session's permissions); live data comes from /console/watch (server-sent
// events). Untrusted text is only ever set as textContent.
"use strict";

const S = { csrf: "", user: "", streams: [], mode: "user" };
const PAGE = 20;

// ---------- small DOM helpers ----------
function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const k of kids.flat()) if (k !== null && k !== undefined && k !== false) e.append(k instanceof Node ? k : String(k));
  return e;
}
const $ = (id) => document.getElementById(id);
const view = () => $("view");
function svg(tag, attrs, ...kids) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const k of kids.flat()) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}

// ---------- status colours ----------
const TONE = {
  Success: "ok", Finished: "ok", Online: "ok",
  Failed: "bad", Error: "bad", Timeout: "bad", Invalid: "bad", Aborted: "bad",
  PartialFailed: "warn", Stopping: "warn",
  Running: "run", Pending: "idle", Scheduled: "idle", Offline: "idle",
  Stopped: "stop", Cancelled: "stop", Terminated: "stop",
};
const badge = (s) => h("span", { class: "badge s-" + (TONE[s] || "idle"), "data-status": s }, s || "—");
const FINAL = new Set(["Success", "Failed", "PartialFailed", "Stopped", "Finished"]);
const when = (t) => (t ? t.replace("T", " ").replace("Z", "") : "—");

// ---------- API ----------
class ApiError extends Error {
  constructor(code, msg, status) { super(msg); this.code = code; this.status = status; }
}
async function api(action, params) {
  const body = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== "" && v !== undefined && v !== null) body.append(k, String(v));
  const r = await fetch("/console/api/" + action, {
    method: "POST", credentials: "same-origin", body,
    headers: { "X-CSRF-Token": S.csrf },
  });
  return answer(r);
}
async function answer(r) {
  let j = {};
  try { j = await r.json(); } catch (_) { /* not JSON */ }
  if (r.status === 401) { showSignIn(); throw new ApiError(j.Code || "SignIn", j.Message || "sign in", 401); }
  if (!r.ok) throw new ApiError(j.Code || "Error", j.Message || r.statusText, r.status);
  return j;
}
function watch(action, params, onUpdate, onRefused) {
  const q = new URLSearchParams({ Action: action });
  for (const [k, v] of Object.entries(params || {})) if (v !== "" && v !== undefined && v !== null) q.append(k, String(v));
  const es = new EventSource("/console/watch?" + q.toString());
  es.addEventListener("update", (e) => { try { onUpdate(JSON.parse(e.data)); } catch (err) { console.error(err); } });
  es.addEventListener("refused", (e) => { es.close(); const j = JSON.parse(e.data); (onRefused || flashError)(new ApiError(j.Code, j.Message)); });
  S.streams.push(es);
  return es;
}
function closeStreams() { for (const es of S.streams) es.close(); S.streams = []; }
function flash(text, ok) {
  const f = $("flash");
  f.textContent = text; f.className = "flash" + (ok ? " ok" : ""); f.hidden = false;
  clearTimeout(flash.t); flash.t = setTimeout(() => { f.hidden = true; }, 6000);
}
function flashError(e) { flash((e.code ? e.code + ": " : "") + e.message); }

// ---------- sign-in ----------
function setMode(mode) {
  S.mode = mode;
  $("tab-user").classList.toggle("active", mode === "user");
  $("tab-key").classList.toggle("active", mode === "key");
  $("user-label").textContent = mode === "user" ? "User name" : "AccessKey ID";
  $("password-label").textContent = mode === "user" ? "Password" : "AccessKey secret";
}
function showSignIn() {
  closeStreams();
  $("shell").hidden = true; $("signin").hidden = false;
  $("user").focus();
}
async function signIn(ev) {
  ev.preventDefault();
  const err = $("signin-error"); err.hidden = true;
  const u = $("user").value, p = $("password").value;
  const body = S.mode === "user" ? { user: u, password: p } : { access_key_id: u, access_key_secret: p };
  $("signin-button").disabled = true;
  try {
    const r = await fetch("/console/sign-in", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const j = await r.json().catch(() => ({}));
    if (!r.ok) { err.textContent = j.Message || r.statusText; err.dataset.code = j.Code || ""; err.hidden = false; return; }
    $("password").value = "";
    await start();
  } finally { $("signin-button").disabled = false; }
}
async function signOut() {
  try { await fetch("/console/sign-out", { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": S.csrf } }); } catch (_) { /* offline */ }
  S.csrf = ""; location.hash = ""; showSignIn();
}
async function start() {
  const r = await fetch("/console/session", { credentials: "same-origin" });
  if (!r.ok) { showSignIn(); return; }
  const j = await r.json();
  S.csrf = j.CsrfToken; S.user = j.User;
  $("who").textContent = j.User + (j.FullAccess ? " · full access" : "");
  $("region").textContent = "region " + j.Region;
  $("signin").hidden = true; $("shell").hidden = false;
  route();
}

// ---------- router ----------
const PAGES = { overview, instances, run, invocations, invocation, schedules };
const TITLES = { overview: "Overview", instances: "Instances", run: "Run command", invocations: "Invocations", invocation: "Invocation", schedules: "Schedules" };
function route() {
  if ($("shell").hidden) return;
  closeStreams();
  $("flash").hidden = true;
  const [path, query] = (location.hash.slice(2) || "overview").split("?");
  const [name, arg] = path.split("/");
  const page = PAGES[name] ? name : "overview";
  $("title").textContent = TITLES[page];
  document.title = TITLES[page] + " · deckhand";
  for (const a of document.querySelectorAll(".side a")) a.classList.toggle("active", a.dataset.page === (page === "invocation" ? "invocations" : page));
  view().replaceChildren();
  view().dataset.page = page;
  PAGES[page](decodeURIComponent(arg || ""), new URLSearchParams(query || "")).catch(flashError);
}

function pager(total, pageNo, go) {
  const pages = Math.max(1, Math.ceil(total / PAGE));
  return h("div", { class: "pager" },
    h("span", {}, `${total} total · page ${pageNo} of ${pages}`),
    h("div", {},
      h("button", { class: "small", disabled: pageNo <= 1, onclick: () => go(pageNo - 1) }, "‹ Prev"),
      h("button", { class: "small", disabled: pageNo >= pages, onclick: () => go(pageNo + 1) }, "Next ›")));
}
function table(headers, rows, emptyText) {
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { class: "empty", colspan: headers.length }, emptyText || "Nothing here yet."))));
}

// ---------- Overview ----------
const CHART = [["Success", "#16a34a"], ["Failed", "#dc2626"], ["PartialFailed", "#ea8c00"], ["Running", "#2563eb"], ["Pending", "#94a3b8"], ["Scheduled", "#cbd5e1"], ["Stopping", "#f59e0b"], ["Stopped", "#7c3aed"]];
async function overview() {
  const stats = h("div", { class: "stats" });
  const chart = h("div", { class: "card chart" }, h("h2", {}, "Invocations in the last 24 hours (UTC)"));
  const recent = h("div", { class: "card" }, h("h2", {}, "Recent invocations", h("span", { class: "live" }, "live")));
  view().append(stats, chart, recent);
  const r = await fetch("/console/overview", { credentials: "same-origin" });
  const o = await answer(r);
  const total = o.Invocations.reduce((a, x) => a + x.Count, 0);
  const failed = o.Invocations.filter((x) => x.Status === "Failed" || x.Status === "PartialFailed").reduce((a, x) => a + x.Count, 0);
  // Colours come from classes: the page's CSP allows no inline style.
  const stat = (label, n, tone, id) => h("div", { class: "stat t-" + tone, id }, h("div", { class: "l" }, label), h("div", { class: "n" }, n));
  stats.append(
    stat("Instances online", o.Online, "ok", "stat-online"),
    stat("Instances offline", o.Offline, "idle", "stat-offline"),
    stat("Invocations (24 h)", total, "run", "stat-invocations"),
    stat("Failed (24 h)", failed, "bad", "stat-failed"));
  chart.append(drawChart(o), h("div", { class: "legend" }, CHART.map(([s]) => h("span", {}, h("i", { class: "lg-" + s }), s))));
  const body = h("div", {});
  recent.append(body);
  watch("DescribeInvocations", { PageSize: 8 }, (j) => body.replaceChildren(invocationTable(j.Invocations.Invocation)));
}
function drawChart(o) {
  // 24 hourly columns ending with the current hour (UTC), stacked by status.
  const end = new Date(o.Now + ":00:00Z");
  const hours = [];
  for (let i = 23; i >= 0; i--) hours.push(new Date(end.getTime() - i * 3600e3).toISOString().slice(0, 13));
  const by = {};
  for (const x of o.Invocations) (by[x.Hour] = by[x.Hour] || {})[x.Status] = x.Count;
  const max = Math.max(1, ...hours.map((hr) => Object.values(by[hr] || {}).reduce((a, b) => a + b, 0)));
  const W = 960, H = 220, L = 36, B = 26, bw = (W - L) / 24;
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "invocations per hour by status" });
  for (let i = 0; i <= 4; i++) {
    const y = (H - B) - (H - B - 10) * i / 4;
    g.append(svg("line", { x1: L, x2: W, y1: y, y2: y, stroke: "#eef1f5" }));
    g.append(svg("text", { x: L - 6, y: y + 4, "text-anchor": "end", "font-size": 11, fill: "#6b778c" }, Math.round(max * i / 4)));
  }
  hours.forEach((hr, i) => {
    let y = H - B;
    for (const [s, c] of CHART) {
      const n = (by[hr] || {})[s] || 0;
      if (!n) continue;
      const bh = (H - B - 10) * n / max;
      y -= bh;
      g.append(svg("rect", { x: L + i * bw + 3, y, width: bw - 6, height: bh, rx: 2, fill: c }, svg("title", {}, `${hr}:00 ${s}: ${n}`)));
    }
    if (i % 3 === 0) g.append(svg("text", { x: L + i * bw + bw / 2, y: H - 8, "text-anchor": "middle", "font-size": 11, fill: "#6b778c" }, hr.slice(11) + ":00"));
  });
  return g;
}

// ---------- Instances ----------
async function instances(_, q) {
  const pageNo = Number(q.get("page") || 1);
  const search = q.get("q") || "";
  const status = q.get("status") || "";
  const go = (p, s, st) => { location.hash = "#/instances?" + new URLSearchParams({ page: p, q: s ?? search, status: st ?? status }); };
  const box = h("input", { id: "instance-search", placeholder: "Instance ID or exact name", value: search });
  const sel = h("select", { id: "instance-status" }, ["", "Online", "Offline"].map((s) => h("option", { value: s, selected: s === status }, s || "Any status")));
  const form = h("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); go(1, box.value.trim(), sel.value); } },
    h("label", { class: "grow" }, "Search", box), h("label", {}, "Status", sel), h("button", { type: "submit" }, "Search"),
    h("button", { type: "button", class: "primary", id: "run-selected", onclick: () => {
      const ids = [...document.querySelectorAll("input.pick:checked")].map((c) => c.value);
      location.hash = "#/run?" + new URLSearchParams({ instances: ids.join(",") });
    } }, "Run on selected"));
  const card = h("div", { class: "card" });
  view().append(h("div", { class: "card" }, form), card);
  const params = { PageNumber: pageNo, PageSize: PAGE };
  if (/^(mi-|i-)/.test(search)) params["InstanceId.1"] = search; else if (search) params.InstanceName = search;
  // Filtered by the hub (deckhand's `Connected`), so pages and totals hold at any fleet size.
  if (status) params.Connected = String(status === "Online");
  watch("DescribeManagedInstances", params, (j) => {
    const list = j.Instances.Instance;
    const rows = list.map((i) => h("tr", { "data-instance": i.InstanceId },
      h("td", {}, h("input", { type: "checkbox", class: "pick", value: i.InstanceId })),
      h("td", {}, h("div", {}, h("b", {}, i.InstanceName || i.Hostname || "—")), h("div", { class: "mono muted" }, i.InstanceId)),
      h("td", {}, badge(i.Status)),
      h("td", {}, h("div", {}, i.OsType || "—"), h("div", { class: "muted" }, i.OsVersion || "")),
      h("td", { class: "mono" }, i.AgentVersion || "—"),
      h("td", { class: "mono" }, i.IntranetIp || "—"),
      h("td", { class: "nowrap" }, when(i.LastSeen)),
      h("td", {}, tagEditor(i))));
    card.replaceChildren(table(["", "Instance", "Status", "OS", "Agent", "IP", "Last seen", "Tags"], rows, "No instances match."),
      pager(j.TotalCount, pageNo, (p) => go(p)));
  });
}
function tagEditor(i) {
  const wrap = h("div", {});
  for (const t of i.Tags.Tag) {
    wrap.append(h("span", { class: "tag" }, `${t.TagKey}=${t.TagValue}`,
      h("button", { title: "remove tag", onclick: () => api("UntagResources", { ResourceType: "instance", "ResourceId.1": i.InstanceId, "TagKey.1": t.TagKey }).then(() => flash("Tag removed", true), flashError) }, "×")));
  }
  wrap.append(h("button", { class: "small ghost", onclick: () => {
    const v = prompt("New tag for " + i.InstanceId + " as key=value");
    if (!v) return;
    const at = v.indexOf("=");
    const [k, val] = at < 0 ? [v, ""] : [v.slice(0, at), v.slice(at + 1)];
    api("TagResources", { ResourceType: "instance", "ResourceId.1": i.InstanceId, "Tag.1.Key": k.trim(), "Tag.1.Value": val.trim() }).then(() => flash("Tag added", true), flashError);
  } }, "+ tag"));
  return wrap;
}

// ---------- Run ----------
async function run(_, q) {
  const preset = new Set((q.get("instances") || "").split(",").filter(Boolean));
  const f = (id, attrs) => h("input", Object.assign({ id }, attrs || {}));
  const type = h("select", { id: "run-type" }, ["RunShellScript", "RunPowerShellScript", "RunBatScript"].map((t) => h("option", { value: t }, t)));
  const script = h("textarea", { id: "run-script", class: "code", spellcheck: "false" }, "#!/bin/bash\nuname -a\nuptime\n");
  const repeat = h("select", { id: "run-repeat" }, ["Once", "Period", "NextRebootOnly", "EveryReboot"].map((t) => h("option", { value: t }, t)));
  const form = h("form", { class: "card", id: "run-form" },
    h("h2", {}, "Command"),
    h("div", { class: "form" },
      h("label", {}, "Name", f("run-name", { placeholder: "optional", maxlength: 128 })),
      h("label", {}, "Type", type),
      h("label", {}, "Timeout (s)", f("run-timeout", { type: "number", min: 10, max: 86400, value: 60 })),
      h("label", { class: "full" }, "Script", script),
      h("label", {}, "Run as user", f("run-user", { placeholder: "root / system" })),
      h("label", {}, "Working directory", f("run-dir", { placeholder: "default" })),
      h("label", {}, "Repeat", repeat),
      h("label", { class: "full" }, "Parameters (JSON, for {{name}} in the script)", f("run-params", { placeholder: '{"name": "value"}' })),
      h("label", {}, "Frequency (Period)", f("run-frequency", { placeholder: "rate(5m) or cron" })),
      h("label", {}, "Max concurrency", f("run-concurrency", { placeholder: "all, or 10 / 25%" })),
      h("label", {}, "Max errors", f("run-errors", { placeholder: "no limit, or 1 / 10%" }))));
  const byTag = h("input", { type: "radio", name: "target", value: "tag" });
  const byId = h("input", { type: "radio", name: "target", value: "ids", checked: true });
  const picker = h("div", { class: "picker", id: "run-picker" });
  const tagKey = f("run-tag-key", { placeholder: "env" }), tagValue = f("run-tag-value", { placeholder: "staging" });
  const tagBox = h("div", { class: "form", hidden: true }, h("label", {}, "Tag key", tagKey), h("label", {}, "Tag value", tagValue));
  const toggle = () => { picker.hidden = byTag.checked; tagBox.hidden = !byTag.checked; };
  byTag.addEventListener("change", toggle); byId.addEventListener("change", toggle);
  const submit = h("button", { class: "primary wide", id: "run-submit", type: "button" }, "Run");
  const targets = h("div", { class: "card" }, h("h2", {}, "Targets"),
    h("div", { class: "radio" }, h("label", {}, byId, "Selected instances"), h("label", {}, byTag, "By tag")),
    picker, tagBox, submit);
  view().append(h("div", { class: "grid2" }, form, targets));
  const j = await api("DescribeManagedInstances", { PageSize: 50 });
  for (const i of j.Instances.Instance) {
    picker.append(h("label", {}, h("input", { type: "checkbox", class: "target", value: i.InstanceId, checked: preset.has(i.InstanceId) || (preset.size === 0 && j.Instances.Instance.length === 1) }),
      h("span", { class: "who2" }, h("b", {}, i.InstanceName || i.Hostname || i.InstanceId), h("span", { class: "mono muted" }, i.InstanceId)), badge(i.Status)));
  }
  if (!j.Instances.Instance.length) picker.append(h("div", { class: "empty" }, "No instances registered."));
  if (j.TotalCount > 50) picker.append(h("div", { class: "muted note" }, `Showing 50 of ${j.TotalCount}; target the rest by tag.`));
  submit.addEventListener("click", async () => {
    const p = {
      Type: type.value, CommandContent: script.value, ContentEncoding: "PlainText",
      Name: $("run-name").value, Timeout: $("run-timeout").value, Username: $("run-user").value,
      WorkingDir: $("run-dir").value, RepeatMode: repeat.value, Frequency: $("run-frequency").value,
      MaxConcurrency: $("run-concurrency").value, MaxErrors: $("run-errors").value,
    };
    if ($("run-params").value.trim()) { p.EnableParameter = "true"; p.Parameters = $("run-params").value.trim(); }
    if (byTag.checked) { p["ResourceTag.1.Key"] = tagKey.value; p["ResourceTag.1.Value"] = tagValue.value; } else {
      [...document.querySelectorAll("input.target:checked")].forEach((c, n) => { p["InstanceId." + (n + 1)] = c.value; });
    }
    submit.disabled = true;
    try {
      const r = await api("RunCommand", p);
      location.hash = "#/invocation/" + encodeURIComponent(r.InvokeId);
    } catch (e) { flashError(e); } finally { submit.disabled = false; }
  });
}

// ---------- Invocations ----------
function invocationTable(list) {
  const rows = list.map((v) => h("tr", { "data-invoke": v.InvokeId },
    h("td", {}, h("a", { href: "#/invocation/" + encodeURIComponent(v.InvokeId), class: "mono" }, v.InvokeId)),
    h("td", {}, v.CommandName || h("span", { class: "muted" }, "—")),
    h("td", {}, v.CommandType),
    h("td", {}, badge(v.InvocationStatus)),
    h("td", {}, progress(v)),
    h("td", {}, v.RepeatMode),
    h("td", {}, when(v.CreationTime))));
  return table(["Invocation", "Command", "Type", "Status", "Targets", "Repeat", "Created"], rows, "No invocations yet.");
}
function progress(v) {
  const c = v.StatusCounts || {};
  const done = (c.Success || 0);
  const bad = (c.Failed || 0) + (c.Error || 0) + (c.Timeout || 0) + (c.Invalid || 0) + (c.Aborted || 0);
  return h("span", { class: "muted" }, `${done}/${v.TargetCount} ok` + (bad ? ` · ${bad} failed` : ""));
}
async function invocations(_, q) {
  const pageNo = Number(q.get("page") || 1);
  const st = q.get("status") || "", name = q.get("name") || "", inst = q.get("instance") || "";
  const go = (p, a, b, c) => { location.hash = "#/invocations?" + new URLSearchParams({ page: p, status: a ?? st, name: b ?? name, instance: c ?? inst }); };
  const sel = h("select", { id: "inv-status" }, ["", "Pending", "Scheduled", "Running", "Success", "Failed", "PartialFailed", "Stopping", "Stopped"].map((s) => h("option", { value: s, selected: s === st }, s || "Any status")));
  const nm = h("input", { id: "inv-name", value: name, placeholder: "exact command name" });
  const ins = h("input", { id: "inv-instance", value: inst, placeholder: "instance ID" });
  view().append(h("form", { class: "card toolbar", onsubmit: (e) => { e.preventDefault(); go(1, sel.value, nm.value.trim(), ins.value.trim()); } },
    h("label", {}, "Status", sel), h("label", {}, "Command name", nm), h("label", { class: "grow" }, "Instance", ins), h("button", { type: "submit" }, "Filter")));
  const card = h("div", { class: "card", id: "invocations" }, h("h2", {}, "Invocations", h("span", { class: "live" }, "live")));
  const body = h("div", {});
  card.append(body);
  view().append(card);
  watch("DescribeInvocations", { PageNumber: pageNo, PageSize: PAGE, InvocationStatus: st, CommandName: name, InstanceId: inst },
    (j) => body.replaceChildren(invocationTable(j.Invocations.Invocation), pager(j.TotalCount, pageNo, (p) => go(p))));
}

// ---------- Invocation ----------
async function invocation(id) {
  const head = h("div", { class: "card" }, h("h2", {}, h("span", { class: "mono", id: "invoke-id" }, id), h("span", { id: "invoke-status" })));
  const kv = h("div", { class: "kv" });
  const stop = h("button", { class: "danger", id: "stop", hidden: true, onclick: async () => {
    stop.disabled = true;
    try { await api("StopInvocation", { InvokeId: id }); flash("Stop requested", true); } catch (e) { flashError(e); stop.disabled = false; }
  } }, "Stop");
  const script = h("pre", { class: "out", id: "invoke-script" });
  head.append(kv, h("div", { class: "actions" }, stop));
  const results = h("div", { class: "card" }, h("h2", {}, "Instances", h("span", { class: "live", id: "live-mark" }, "live")));
  const table_ = h("div", {}); const outs = h("div", {});
  results.append(table_, outs);
  const historyBody = h("div", {});
  const history = h("div", { class: "card", hidden: true }, h("h2", {}, "Run history"), historyBody);
  view().append(head, results, history, h("div", { class: "card" }, h("h2", {}, "Script"), script));
  watch("DescribeInvocations", { InvokeId: id, ContentEncoding: "PlainText" }, (j) => {
    const v = j.Invocations.Invocation[0];
    if (!v) return;
    $("invoke-status").replaceChildren(badge(v.InvocationStatus));
    const item = (k, val) => h("div", {}, h("span", { class: "k" }, k), val);
    kv.replaceChildren(item("Command", v.CommandName || "—"), item("Type", v.CommandType), item("Created", when(v.CreationTime)),
      item("Repeat", v.RepeatMode + (v.Frequency ? " · " + v.Frequency : "")), item("Targets", String(v.TargetCount)),
      item("Run as", v.Username || "default"), item("Timeout", v.Timeout + " s"), item("Progress", progress(v)));
    script.textContent = v.CommandContent;
    if (v.RepeatMode !== "Once" && !history.dataset.on) {
      // Repeating invocations: every past run, newest records first.
      history.dataset.on = "1"; history.hidden = false;
      watch("DescribeInvocationResults", { InvokeId: id, ContentEncoding: "PlainText", PageSize: 20, IncludeHistory: "true" }, (hj) => {
        const list = hj.Invocation.InvocationResults.InvocationResult;
        historyBody.replaceChildren(table(["Instance", "Run", "Status", "Exit code", "Started", "Finished"], list.map((r) => h("tr", {},
          h("td", { class: "mono" }, r.InstanceId), h("td", {}, "#" + r.Repeats), h("td", {}, badge(r.InvocationStatus)),
          h("td", { class: "mono" }, r.ExitCode ?? "—"), h("td", {}, when(r.StartTime)), h("td", {}, when(r.FinishedTime)))), "No runs yet."));
      });
    }
    const final = FINAL.has(v.InvocationStatus);
    stop.hidden = final || v.InvocationStatus === "Stopping";
    $("live-mark").hidden = final;
  });
  // Each target's current run, live output included while it runs.
  watch("DescribeInvocationResults", { InvokeId: id, ContentEncoding: "PlainText", PageSize: 50 }, (j) => {
    const list = j.Invocation.InvocationResults.InvocationResult;
    table_.replaceChildren(table(["Instance", "Status", "Exit code", "Error", "Started", "Finished"], list.map((r) => h("tr", { "data-instance": r.InstanceId },
      h("td", { class: "mono" }, r.InstanceId), h("td", {}, badge(r.InvocationStatus)),
      h("td", { class: "mono exit" }, r.ExitCode ?? "—"),
      h("td", {}, r.ErrorCode ? h("span", { title: r.ErrorInfo }, r.ErrorCode) : "—"),
      h("td", {}, when(r.StartTime)), h("td", {}, when(r.FinishedTime)))), "No results yet."));
    outs.replaceChildren(...list.map((r) => h("div", { class: "outblock" },
      h("h3", {}, h("span", { class: "mono" }, r.InstanceId), badge(r.InvocationStatus), r.Dropped ? h("span", { class: "muted" }, `(${r.Dropped} bytes dropped)`) : null),
      h("pre", { class: "out output", "data-instance": r.InstanceId }, r.Output || (r.InvocationStatus === "Running" ? "(waiting for output…)" : "(no output)")))));
  });
}

// ---------- Schedules ----------
async function schedules(_, q) {
  const pageNo = Number(q.get("page") || 1);
  const card = h("div", { class: "card" }, h("h2", {}, "Periodic invocations", h("a", { href: "#/run" }, "+ New schedule")));
  const body = h("div", {});
  card.append(body);
  view().append(card);
  watch("DescribeInvocations", { RepeatMode: "Period", PageNumber: pageNo, PageSize: PAGE }, (j) => {
    const rows = j.Invocations.Invocation.map((v) => h("tr", {},
      h("td", {}, h("a", { href: "#/invocation/" + encodeURIComponent(v.InvokeId), class: "mono" }, v.InvokeId)),
      h("td", {}, v.CommandName || "—"), h("td", { class: "mono" }, v.Frequency), h("td", {}, badge(v.InvocationStatus)),
      h("td", { class: "nowrap" }, nextFire(v)), h("td", {}, progress(v)), h("td", { class: "nowrap" }, when(v.CreationTime))));
    body.replaceChildren(table(["Invocation", "Command", "Frequency", "Status", "Next fire", "Targets", "Created"], rows, "No periodic invocations."),
      pager(j.TotalCount, pageNo, (p) => { location.hash = "#/schedules?page=" + p; }));
  });
}
// Next fire, worked out on the hub with the agents' own parser. A cron
// without a zone fires in each agent's zone: shown in UTC and marked.
function nextFire(v) {
  if (v.InvocationStatus !== "Running" && v.InvocationStatus !== "Pending" && v.InvocationStatus !== "Scheduled") return h("span", { class: "muted" }, "—");
  if (!v.ConsoleNextFire) return h("span", { class: "muted" }, "none left");
  return h("span", {}, when(v.ConsoleNextFire), v.ConsoleNextFireZoneKnown ? null : h("span", { class: "muted", title: "the cron names no zone: each agent uses its own" }, " UTC*"));
}

// ---------- boot ----------
document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", signIn);
  $("tab-user").addEventListener("click", () => setMode("user"));
  $("tab-key").addEventListener("click", () => setMode("key"));
  $("signout").addEventListener("click", signOut);
  window.addEventListener("hashchange", route);
  start().catch(() => showSignIn());
});

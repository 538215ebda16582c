// Headroom's console: a page per question, each drawn from the same /v1 API a script would
// call, with the same token (kept in this tab's session storage, sent as a header, never in a
// URL). Everything shown is built with textContent: tenant names, errors and headers come
// from tenants and upstreams, and none of it is trusted as markup.
"use strict";

const TOKEN_KEY = "headroom-token";
const state = { me: null, timer: null, chartHistory: new Map() };

// ---- DOM -----------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const $ = (sel) => document.querySelector(sel);
function badge(text, cls) { return h("span", { class: `badge ${cls || text}` }, text); }
function meter(fraction, progress) {
  const f = Math.max(0, Math.min(1, fraction || 0));
  return h("span", { class: `meter${f >= 0.9 && !progress ? " hot" : ""}`, role: "meter", "aria-valuemin": 0,
    "aria-valuemax": 100, "aria-valuenow": Math.round(f * 100), title: `${Math.round(f * 100)} %` },
  bar(f));
}
function bar(f) {
  // Set through the CSSOM: the page's Content-Security-Policy allows no style attributes.
  const span = document.createElement("span");
  span.style.width = `${(f * 100).toFixed(1)}%`;
  return span;
}
function table(headers, rows, empty) {
  if (!rows.length) return h("p", { class: "muted" }, empty || "Nothing here.");
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col", class: x.num ? "num" : null }, x.label || x)))),
    h("tbody", {}, rows)));
}
function num(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return Number(v).toLocaleString(undefined, { maximumFractionDigits: digits ?? 1 });
}
function secs(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${num(s, 1)} s`;
  if (s < 7200) return `${num(s / 60, 1)} min`;
  return `${num(s / 3600, 1)} h`;
}
function when(t) { return t ? new Date(t).toLocaleString() : "–"; }
function show(...nodes) { $("#page").replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false)); }
function problem(e) { return h("p", { class: "error", role: "alert" }, e.message || String(e)); }

// ---- API -----------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}
async function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method: options.method || "GET", headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body), credentials: "omit" });
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!res.ok) {
    if (res.status === 401) signOut(token ? "That token was not accepted; check it and sign in again." : "");
    throw new ApiError(res.status, (body && (body.detail || body.title)) || `${res.status} ${res.statusText}`);
  }
  return body;
}
function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

// ---- Sign in -------------------------------------------------------------------------
function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.me = null;
  stopPolling();
  $("#page").replaceChildren();
  $("#signin").hidden = false;
  $("#signin-error").textContent = message || "";
  $("#signout").hidden = true;
  $("#who").textContent = "";
  $("#token").focus();
}
async function whoami() {
  state.me = await api("/v1/whoami");
  const me = state.me;
  $("#who").textContent = me.role === "tenant" ? `tenant ${me.tenant}` : me.role === "admin" ? "admin" : "open (no token configured)";
  $("#signout").hidden = me.role === "open";
  for (const a of document.querySelectorAll("nav a[data-admin]")) a.hidden = me.role === "tenant";
}

// ---- Router --------------------------------------------------------------------------
function stopPolling() { if (state.timer) clearInterval(state.timer); state.timer = null; }
function poll(fn, ms) { stopPolling(); state.timer = setInterval(() => { if (!document.hidden) fn(); }, ms); }
const pages = {};
async function route() {
  stopPolling();
  if (!state.me) return;
  // Only `#/page/…` is a route: other fragments (the skip link's `#main`) stay in the page.
  const hash = location.hash;
  if (hash && !hash.startsWith("#/")) return;
  const path = hash.slice(2).split("?")[0];
  const [name, ...rest] = (path || (state.me.role === "tenant" ? "jobs" : "overview")).split("/");
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.page === name) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  if (!Object.hasOwn(pages, name)) {
    show(h("h1", {}, "Not found"), h("p", {}, "There is no page ", h("code", {}, name), " here. Pick one above."));
    return;
  }
  show(h("p", { class: "muted" }, "Loading…"));
  try { await pages[name](...rest.filter(Boolean).map(decodeURIComponent)); } catch (e) { show(h("h1", {}, "Error"), problem(e)); }
}

// ---- Events, newest -----------------------------------------------------------------
// `/v1/events` pages oldest first: walk forward to the end and keep the newest `keep`.
// Stops after `maxPages` pages of 500 and says so, rather than showing a stale hour.
async function newestEvents(params, keep, maxPages = 40) {
  let events = [], cursor = null, last = null;
  for (let page = 0; page < maxPages; page++) {
    const data = await api(`/v1/events${query({ ...params, cursor, limit: 500 })}`);
    events = events.concat(data.events).slice(-keep);
    last = data.last_cursor || last;
    if (!data.next_cursor) return { events, last, cut: false };
    cursor = data.next_cursor;
  }
  return { events, last: cursor, cut: true };
}

// ---- Overview ------------------------------------------------------------------------
// A status row carries its verdict flattened in: `verdict`, `detail`, `eta_s`, `backlog`.
function verdictBadge(row) {
  const text = row.verdict === "fits" && row.eta_s != null ? `fits, done in ${secs(row.eta_s)}` : row.verdict.replace(/_/g, " ");
  return badge(text, row.verdict);
}
function chart(points) {
  // Spend (solid) against allowance (dashed) per second, and throttled calls as red ticks.
  const w = 600, ht = 110;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${ht + 10}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  if (points.length < 2) {
    return h("p", { class: "muted chart-empty" }, "Collecting samples for the chart (every 5 s while this page is open)…");
  }
  const t0 = points[0].t, t1 = points[points.length - 1].t;
  const max = Math.max(1e-9, ...points.map((p) => Math.max(p.spend || 0, p.allow || 0)));
  const x = (t) => ((t - t0) / Math.max(1, t1 - t0)) * w;
  const y = (v) => ht - (v / max) * (ht - 5);
  const line = (key, cls) => {
    const path = document.createElementNS(svg.namespaceURI, "polyline");
    path.setAttribute("points", points.filter((p) => p[key] != null).map((p) => `${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" "));
    path.setAttribute("class", cls);
    svg.append(path);
  };
  line("allow", "allow");
  line("spend", "spend");
  for (const p of points) {
    if (!p.throttled) continue;
    const r = document.createElementNS(svg.namespaceURI, "rect");
    r.setAttribute("x", x(p.t).toFixed(1)); r.setAttribute("y", ht + 2); r.setAttribute("width", 3); r.setAttribute("height", 8);
    r.setAttribute("class", "thr");
    svg.append(r);
  }
  svg.setAttribute("aria-label", `spend up to ${num(max, 2)} per second`);
  return svg;
}
pages.overview = async function overview() {
  const draw = async () => {
    const [status, throttledEvents] = await Promise.all([
      api("/v1/status?window=15m"),
      newestEvents({ kind: "throttled", since: "1h" }, 2000, 10).catch(() => ({ events: [] })),
    ]);
    const byUpstream = new Map();
    for (const row of status.rows) {
      if (!byUpstream.has(row.upstream)) byUpstream.set(row.upstream, []);
      byUpstream.get(row.upstream).push(row);
    }
    const now = Date.now();
    const cards = [];
    for (const [upstream, rows] of byUpstream) {
      const worst = rows.slice().sort((a, b) => rank(b.verdict) - rank(a.verdict) || (b.eta_s || 0) - (a.eta_s || 0))[0];
      const spend = rows.flatMap((r) => r.limits).reduce((s, l) => s + (l.spend_per_s || 0), 0);
      const allow = rows.flatMap((r) => r.limits).reduce((s, l) => s + (l.allowance_per_s || 0), 0);
      const history = state.chartHistory.get(upstream) || [];
      history.push({ t: now, spend, allow: allow || null, throttled: 0 });
      while (history.length && history[0].t < now - 3600e3) history.shift();
      state.chartHistory.set(upstream, history);
      const thr = throttledEvents.events.filter((e) => e.upstream === upstream)
        .map((e) => ({ t: Date.parse(e.time), throttled: 1 }));
      const points = [...history, ...thr].sort((a, b) => a.t - b.t);
      const throttled = rows.reduce((s, r) => s + r.throttled_per_min, 0);
      const retryRatios = rows.map((r) => r.retry_success_ratio).filter((v) => v != null);
      cards.push(h("section", { class: "card", "aria-label": `upstream ${upstream}` },
        h("h2", {}, upstream, " ", verdictBadge(worst)),
        h("p", { class: "muted" }, worst.detail),
        h("dl", { class: "kv" },
          h("dt", {}, "throttled"), h("dd", {}, `${num(throttled, 2)} / min`),
          h("dt", {}, "retry success"), h("dd", {}, retryRatios.length ? `${num(100 * retryRatios.reduce((a, b) => a + b, 0) / retryRatios.length, 0)} %` : "–"),
          h("dt", {}, "backlog"), h("dd", {}, num(rows.reduce((s, r) => s + r.queued + r.retry_pending + r.running, 0), 0)),
          h("dt", {}, "budgets"), h("dd", {}, rows.length)),
        chart(points),
        h("p", { class: "muted" }, "Spend (solid) and allowance (dashed) per second since this page opened; red ticks: throttled answers in the last hour."),
        table(["tenant", "limit", "utilisation", { label: "spend/s", num: true }, { label: "allowance/s", num: true }],
          rows.flatMap((r) => r.limits.map((l) => h("tr", {},
            h("td", {}, r.tenant), h("td", {}, l.limit), h("td", {}, meter(l.utilisation), " ", l.utilisation == null ? "–" : `${num(100 * l.utilisation, 0)} %`),
            h("td", { class: "num" }, num(l.spend_per_s, 2)), h("td", { class: "num" }, num(l.allowance_per_s, 2))))).slice(0, 20),
          "No limits known yet.")));
    }
    const firing = status.alerts || [];
    show(h("h1", {}, "Overview"),
      h("p", { class: "muted" }, `As of ${when(status.at)}, over the last ${secs(status.window_s)}.`),
      firing.length ? h("section", { class: "card", "aria-label": "firing alerts" }, h("h2", {}, "Firing alerts"),
        h("ul", {}, firing.map((a) => h("li", {}, badge("firing"), " ", a.alert || a.name || "", ": ", a.message || "")))) : null,
      cards.length ? h("div", { class: "grid" }, cards) : h("p", { class: "muted" }, "No upstream has been called yet."));
  };
  await draw();
  poll(() => draw().catch(() => {}), 5000);
};
function rank(v) { return { idle: 0, fits: 1, over_capacity: 2 }[v] ?? 1; }

// ---- Budgets -------------------------------------------------------------------------
pages.budgets = async function budgets() {
  // The server filters and caps the list: with 10k+ budgets the page asks for 200 matches,
  // not for every budget every 5 s.
  const search = h("input", { type: "search", id: "budget-search", placeholder: "tenant or key", "aria-label": "Search budgets by tenant" });
  const out = h("div", {});
  const render = (data) => {
    const shown = data.budgets;
    out.replaceChildren(
      h("p", { class: "muted" }, `${data.total} budget${data.total === 1 ? "" : "s"}${search.value.trim() ? " match" : ""}${data.total > shown.length ? ` (the first ${shown.length} shown: refine the search)` : ""}.`),
      table(["upstream", "tenant / key", "limits", { label: "pace", num: true }, { label: "in flight", num: true }, "pause", "breaker", { label: "queued rt / bulk", num: true }],
        shown.map((b) => h("tr", {},
          h("td", {}, b.upstream), h("td", {}, b.tenant || b.key, b.override ? [" ", badge("override", "warn")] : null),
          h("td", {}, b.limits.length ? b.limits.map((l) => h("div", {},
            `${l.name ? l.name + ": " : ""}${num(l.quota, 0)} ${l.unit === "points" ? "points" : "calls"}${l.window_s ? " / " + secs(l.window_s) : " at once"}`,
            " · ", l.remaining == null ? "remaining ?" : `remaining ${num(l.remaining, 0)}`,
            l.reset_in_s == null ? "" : ` · reset in ${secs(l.reset_in_s)}`, " ", badge(l.source, "muted"))) : h("span", { class: "muted" }, "none known")),
          h("td", { class: "num" }, `${num(100 * b.pace_factor, 0)} %`),
          h("td", { class: "num" }, `${b.in_flight} / ${b.max_concurrency}`),
          h("td", {}, b.held_for_s > 0 ? badge(`held ${secs(b.held_for_s)}`, "paused") : b.paused_for_s > 0 ? badge(`paused ${secs(b.paused_for_s)}`, "paused") : "–"),
          h("td", {}, badge(breakerName(b.breaker))),
          h("td", { class: "num" }, `${b.queued_realtime} / ${b.queued_bulk}`))),
        "No budget matches."));
  };
  let seq = 0;
  const load = async () => {
    const mine = ++seq;
    const data = await api(`/v1/budgets${query({ q: search.value.trim(), limit: 200 })}`);
    if (mine === seq) render(data); // an older answer never replaces a newer search's
  };
  let debounce = null;
  search.addEventListener("input", () => { clearTimeout(debounce); debounce = setTimeout(() => load().catch((e) => out.replaceChildren(problem(e))), 250); });
  await load();
  show(h("h1", {}, "Budgets"), h("div", { class: "filters" }, h("label", {}, "Search", search)), out);
  poll(() => load().catch(() => {}), 5000);
};
function breakerName(b) {
  if (!b) return "closed";
  if (typeof b === "string") return b.toLowerCase();
  const k = Object.keys(b)[0] || "closed";
  return k.replace(/([a-z])([A-Z])/g, "$1-$2").toLowerCase();
}

// ---- Lists with filters and cursor paging ---------------------------------------------
function listPage({ title, path, key, filters, columns, row }) {
  return async function list() {
    const params = new URLSearchParams(location.hash.split("?")[1] || "");
    const inputs = filters.map((f) => f.options
      ? h("select", { name: f.name, "aria-label": f.label }, h("option", { value: "" }, "any"), f.options.map((o) => h("option", { value: o, selected: params.get(f.name) === o }, o)))
      : h("input", { name: f.name, value: params.get(f.name) || "", placeholder: f.label, "aria-label": f.label }));
    const cursors = [null];
    const out = h("div", {});
    const load = async () => {
      const values = Object.fromEntries(inputs.map((i) => [i.name, i.value.trim()]));
      const cursor = cursors[cursors.length - 1];
      const data = await api(`${path}${query({ ...values, cursor, limit: 50 })}`);
      const prev = h("button", { type: "button", disabled: cursors.length === 1, onclick: () => { cursors.pop(); load().catch(fail); } }, "Previous");
      const next = h("button", { type: "button", disabled: !data.next_cursor, onclick: () => { cursors.push(data.next_cursor); load().catch(fail); } }, "Next");
      out.replaceChildren(table(columns, data[key].map(row), "Nothing matches."), h("div", { class: "pager" }, prev, next));
    };
    const fail = (e) => out.replaceChildren(problem(e));
    const form = h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); cursors.length = 1; load().catch(fail); } },
      filters.map((f, i) => h("label", {}, f.label, inputs[i])), h("button", { type: "submit", class: "primary" }, "Filter"));
    if (state.me.role === "tenant") { const t = inputs.find((i) => i.name === "tenant"); if (t) { t.value = state.me.tenant; t.disabled = true; } }
    show(h("h1", {}, title), form, out);
    await load().catch(fail);
  };
}

// ---- Jobs ----------------------------------------------------------------------------
const JOB_STATUSES = ["queued", "running", "retry_pending", "succeeded", "failed", "cancelled"];
pages.jobs = async function jobs(id) {
  if (id) return jobPage(id);
  return listPage({
    title: "Jobs", path: "/v1/jobs", key: "jobs",
    filters: [{ name: "status", label: "status", options: JOB_STATUSES }, { name: "tenant", label: "tenant" }, { name: "queue", label: "queue" }],
    columns: ["job", "status", "tenant", "upstream", "queue", { label: "attempts", num: true }, "updated", "last error"],
    row: (j) => h("tr", {},
      h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.id)), h("td", {}, badge(j.status)),
      h("td", {}, j.tenant || "–"), h("td", {}, j.upstream), h("td", {}, j.queue), h("td", { class: "num" }, `${j.attempts} / ${j.max_attempts}`),
      h("td", {}, when(j.updated_at)), h("td", {}, j.last_error || "")),
  })();
};
async function jobPage(id) {
  const j = await api(`/v1/jobs/${encodeURIComponent(id)}`);
  const live = ["queued", "running", "retry_pending"].includes(j.status);
  const attempts = j.attempts_log || [];
  show(h("h1", {}, "Job ", j.id, " ", badge(j.status)),
    h("div", { class: "actions" },
      h("a", { href: "#/jobs" }, "← all jobs"),
      live ? h("button", { type: "button", onclick: async (e) => {
        e.target.disabled = true;
        try { await api(`/v1/jobs/${encodeURIComponent(id)}`, { method: "DELETE" }); await jobPage(id); } catch (err) { e.target.after(problem(err)); }
      } }, "Cancel job") : null),
    h("dl", { class: "kv card" }, [
      ["tenant", j.tenant || "–"], ["upstream", j.upstream], ["queue", j.queue], ["lane", j.lane],
      ["request", `${j.request.method} ${j.request.path}`], ["attempts", `${j.attempts} / ${j.max_attempts}`],
      ["created", when(j.created_at)], ["next attempt", live ? when(j.next_attempt_at) : "–"], ["last error", j.last_error || "–"],
    ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    h("h2", {}, "Attempts"),
    table(["#", "status", "started", { label: "waited for the budget", num: true }, "rate-limit headers", "error"],
      attempts.map((a) => h("tr", {},
        h("td", {}, a.number), h("td", {}, a.status ?? "–"), h("td", {}, when(a.started_at)), h("td", { class: "num" }, secs(a.wait_ms / 1000)),
        h("td", {}, a.rate_limit_headers.length ? a.rate_limit_headers.map(([n, v]) => h("div", {}, h("code", {}, n), ": ", v)) : h("span", { class: "muted" }, "none")),
        h("td", {}, a.error || ""))), "No attempt yet."),
    j.response ? [h("h2", {}, "Response"), h("pre", {}, JSON.stringify(j.response, null, 2))] : null);
  if (live) poll(() => jobPage(id).catch(() => {}), 3000);
}

// ---- Batches -------------------------------------------------------------------------
const BATCH_STATUSES = ["queued", "running", "succeeded", "completed_with_failures", "cancelled"];
pages.batches = async function batches(id) {
  if (id) return batchPage(id);
  return listPage({
    title: "Batches", path: "/v1/batches", key: "batches",
    filters: [{ name: "status", label: "status", options: BATCH_STATUSES }, { name: "tenant", label: "tenant" }, { name: "upstream", label: "upstream" }],
    columns: ["batch", "status", "tenant", "upstream", "progress", { label: "failed", num: true }, "updated"],
    row: (b) => h("tr", {},
      h("td", {}, h("a", { href: `#/batches/${encodeURIComponent(b.id)}` }, b.id)), h("td", {}, badge(b.status)),
      h("td", {}, b.tenant || "–"), h("td", {}, b.upstream),
      h("td", {}, meter((b.succeeded + b.failed) / Math.max(1, b.total), true), ` ${b.succeeded + b.failed} / ${b.total}`),
      h("td", { class: "num" }, b.failed), h("td", {}, when(b.updated_at))),
  })();
};
const SHOWN_FAILURES = 1000, MAX_FAILURES = 100000;
function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h("a", { href: url, download: name });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
function csv(rows) {
  // A cell a spreadsheet would run as a formula gets a leading `'` (OWASP's CSV injection advice).
  const cell = (v) => {
    let s = String(v ?? "");
    if (/^[=+\-@\t\r]/.test(s)) s = `'${s}`;
    return /[",\n\r']/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return rows.map((r) => r.map(cell).join(",")).join("\r\n") + "\r\n";
}
async function batchPage(id) {
  const b = await api(`/v1/batches/${encodeURIComponent(id)}?failures_limit=${SHOWN_FAILURES}`);
  const live = ["queued", "running"].includes(b.status);
  const failures = b.failures || [];
  // The page shows the first failures; a download fetches them all.
  const all = async () => b.failed <= failures.length ? failures
    : ((await api(`/v1/batches/${encodeURIComponent(id)}?failures_limit=${MAX_FAILURES}`)).failures || []);
  const save = (kind) => async (e) => {
    e.target.disabled = true;
    try {
      const rows = await all();
      if (kind === "json") download(`batch-${b.id}-failures.json`, "application/json", JSON.stringify(rows, null, 2));
      else download(`batch-${b.id}-failures.csv`, "text/csv", csv([["index", "record_id", "error"], ...rows.map((f) => [f.index, f.record_id, f.error])]));
    } catch (err) { e.target.after(problem(err)); }
    e.target.disabled = false;
  };
  show(h("h1", {}, "Batch ", b.id, " ", badge(b.status)),
    h("div", { class: "actions" },
      h("a", { href: "#/batches" }, "← all batches"),
      live ? h("button", { type: "button", onclick: async (e) => {
        e.target.disabled = true;
        try { await api(`/v1/batches/${encodeURIComponent(id)}`, { method: "DELETE" }); await batchPage(id); } catch (err) { e.target.after(problem(err)); }
      } }, "Cancel batch") : null,
      failures.length ? h("button", { type: "button", onclick: save("json") }, "Download failures (JSON)") : null,
      failures.length ? h("button", { type: "button", onclick: save("csv") }, "Download failures (CSV)") : null),
    h("p", {}, meter((b.succeeded + b.failed) / Math.max(1, b.total), true), ` ${b.succeeded + b.failed} of ${b.total} records done`),
    h("dl", { class: "kv card" },
      [["tenant", b.tenant || "–"], ["upstream", b.upstream], ["succeeded", b.succeeded], ["failed", b.failed], ["pending", b.pending],
        ["possibly duplicated", b.possibly_duplicated], ["calls", b.calls], ["created", when(b.created_at)], ["updated", when(b.updated_at)]]
        .flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    h("h2", {}, `Failed records (${b.failed})`),
    b.failed > failures.length ? h("p", { class: "muted" }, `Showing the first ${failures.length} of ${b.failed}; the downloads hold all of them.`) : null,
    table([{ label: "index", num: true }, "record id", "error"],
      failures.map((f) => h("tr", {}, h("td", { class: "num" }, f.index), h("td", {}, f.record_id), h("td", {}, f.error))), "No record failed."));
  if (live) poll(() => batchPage(id).catch(() => {}), 3000);
}

// ---- Schedules -----------------------------------------------------------------------
pages.schedules = async function schedules(name) {
  if (name) return schedulePage(name);
  const data = await api("/v1/schedules");
  show(h("h1", {}, "Schedules"),
    table(["schedule", "state", "every", "source", "updated"],
      data.schedules.map((s) => h("tr", {},
        h("td", {}, h("a", { href: `#/schedules/${encodeURIComponent(s.name)}` }, s.name)),
        h("td", {}, s.paused ? badge("paused") : badge("active", "ok")),
        h("td", {}, s.cron || s.every || "–"), h("td", {}, s.source),
        h("td", {}, when(s.updated_at)))),
      "No schedule."),
    h("p", { class: "muted" }, "Open a schedule to see its next run per tenant (the stagger) and its recent runs."));
}
async function schedulePage(name) {
  const [s, runs] = await Promise.all([
    api(`/v1/schedules/${encodeURIComponent(name)}`),
    api(`/v1/schedules/${encodeURIComponent(name)}/runs?limit=50`),
  ]);
  const act = (verb) => async (e) => {
    e.target.disabled = true;
    try { await api(`/v1/schedules/${encodeURIComponent(name)}/${verb}`, { method: "POST", body: {} }); await schedulePage(name); } catch (err) { e.target.after(problem(err)); }
  };
  show(h("h1", {}, "Schedule ", s.name, " ", s.paused ? badge("paused") : badge("active", "ok")),
    h("div", { class: "actions" }, h("a", { href: "#/schedules" }, "← all schedules"),
      state.me.role !== "tenant" ? h("button", { type: "button", onclick: act(s.paused ? "resume" : "pause") }, s.paused ? "Resume" : "Pause") : null),
    h("h2", {}, "Next runs"),
    table(["tenant", "scheduled for", "due (with stagger)"],
      (s.next_runs || []).map((r) => h("tr", {}, h("td", {}, r.tenant), h("td", {}, when(r.scheduled_for)), h("td", {}, when(r.due_at)))), s.paused ? "Paused: no run is due." : "No run is due."),
    h("h2", {}, "Recent runs"),
    table(Object.keys((runs.runs || [])[0] || { run: 1 }), (runs.runs || []).map((r) => h("tr", {}, Object.values(r).map((v) => h("td", {}, typeof v === "object" && v !== null ? JSON.stringify(v) : v ?? "–")))), "No run yet."));
}

// ---- Events --------------------------------------------------------------------------
pages.events = async function events() {
  const filters = [
    { name: "level", label: "level", options: ["debug", "info", "warn", "error"] },
    { name: "kind", label: "kind" }, { name: "upstream", label: "upstream" }, { name: "tenant", label: "tenant" }, { name: "since", label: "since (e.g. 1h)" },
  ];
  const inputs = filters.map((f) => f.options
    ? h("select", { name: f.name, "aria-label": f.label }, h("option", { value: "" }, "any"), f.options.map((o) => h("option", { value: o }, o)))
    : h("input", { name: f.name, placeholder: f.label, "aria-label": f.label, value: f.name === "since" ? "1h" : "" }));
  if (state.me.role === "tenant") { const t = inputs[3]; t.value = state.me.tenant; t.disabled = true; }
  const liveBox = h("input", { type: "checkbox", id: "live", checked: true });
  const body = h("tbody", {});
  const note = h("p", { class: "muted", role: "status" });
  const out = h("div", {}, note, h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, ["time", "level", "kind", "upstream", "tenant", "status", "wait", "message"].map((x) => h("th", { scope: "col" }, x)))), body)));
  let last = null;
  const row = (e) => h("tr", {}, h("td", {}, when(e.time)), h("td", {}, badge(e.level, e.level === "error" ? "bad" : e.level === "warn" ? "warn" : "ok")),
    h("td", {}, e.kind), h("td", {}, e.upstream || ""), h("td", {}, e.tenant || ""), h("td", {}, e.status ?? ""), h("td", {}, e.wait_ms == null ? "" : secs(e.wait_ms / 1000)), h("td", {}, e.message || ""));
  const values = () => Object.fromEntries(inputs.map((i) => [i.name, i.value.trim()]));
  const load = async () => {
    const data = await newestEvents(values(), 200);
    body.replaceChildren(...data.events.slice().reverse().map(row));
    last = data.last;
    note.textContent = data.cut ? "More than 20,000 events match: the newest are not all here; narrow the filters or `since`." : "";
    if (!data.events.length) body.append(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No event matches.")));
  };
  const tail = async () => {
    if (!liveBox.checked || !last) return;
    const v = values(); delete v.since;
    const data = await api(`/v1/events${query({ ...v, cursor: last, limit: 200 })}`);
    if (data.events.length) {
      if (body.querySelector("td[colspan]")) body.replaceChildren();
      body.prepend(...data.events.slice().reverse().map(row));
      while (body.children.length > 1000) body.lastChild.remove();
    }
    last = data.last_cursor || data.next_cursor || last;
  };
  const fail = (e) => out.prepend(problem(e));
  show(h("h1", {}, "Events"),
    h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); load().catch(fail); } },
      filters.map((f, i) => h("label", {}, f.label, inputs[i])),
      h("label", {}, "live tail", liveBox), h("button", { type: "submit", class: "primary" }, "Search")),
    out);
  await load().catch(fail);
  poll(() => tail().catch(() => {}), 2000);
};

// ---- Alerts --------------------------------------------------------------------------
pages.alerts = async function alerts() {
  const draw = async () => {
    const a = await api("/v1/alerts");
    show(h("h1", {}, "Alerts"),
      table(["alert", "rule", "state", "scope", "firing"],
        a.alerts.map((r) => h("tr", {}, h("td", {}, r.name), h("td", {}, r.rule), h("td", {}, badge(r.state)),
          h("td", {}, [r.upstream, r.queue].filter(Boolean).join(" / ") || "all"),
          h("td", {}, (r.firing || []).map((f) => h("div", {}, `${f.subject || ""}: ${f.message || ""} (since ${when(f.since)})`))))),
        "No alert rule is configured."),
      h("h2", {}, "Resolved"),
      table(["alert", "subject", "message", "since", "resolved"],
        (a.resolved || []).map((f) => h("tr", {}, h("td", {}, f.alert || f.name || ""), h("td", {}, f.subject || ""), h("td", {}, f.message || ""), h("td", {}, when(f.since)), h("td", {}, when(f.resolved_at)))),
        "Nothing resolved recently."));
  };
  await draw();
  poll(() => draw().catch(() => {}), 5000);
};

// ---- Start ---------------------------------------------------------------------------
async function start() {
  $("#signin").addEventListener("submit", async (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
    $("#token").value = "";
    try { await whoami(); $("#signin").hidden = true; await route(); } catch (err) { signOut(err.message); }
  });
  $("#signout").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", () => { if (location.hash.startsWith("#/")) { route(); $("#main").focus(); } });
  try {
    await whoami();
    await route();
  } catch (e) {
    if (e.status === 401 || e.status === 403) signOut(sessionStorage.getItem(TOKEN_KEY) ? e.message : "");
    else show(problem(e));
  }
}
start();

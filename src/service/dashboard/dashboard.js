// flowcast dashboard: pages drawn from the JSON API, kept live by /api/events.
// No framework, no build step: this file is served by flowcast itself.
"use strict";

const $main = () => document.getElementById("main");

// Builds an element: el("a", {href: "/x"}, "text", child...). Text is never parsed as HTML.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function getJson(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error(`${path}: ${r.status} ${(await r.text()).trim()}`);
  return r.json();
}

function fmtP(x) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(4);
}

function fmtMs(ms) {
  if (ms === null || ms === undefined || !isFinite(ms)) return "–";
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

const enc = encodeURIComponent;
const objectHref = (flow, key) => `#/object/${enc(flow)}/${enc(key)}`;
const flowHref = (flow) => `#/flows/${enc(flow)}`;

// ---- routing: the fragment, or the same path without it --------------------------------------

function route() {
  let path = location.hash.replace(/^#/, "");
  if (!path && location.pathname !== "/") path = location.pathname;
  if (!path) path = "/";
  const [p, query] = path.split("?");
  const parts = p.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(query || "") };
}

let current = null; // { name, refresh }

async function show() {
  const { parts, params } = route();
  let page;
  if (parts[0] === "flows" && parts[1]) page = flowPage(parts[1]);
  else if (parts[0] === "objects") page = objectsPage(params);
  else if (parts[0] === "alerts") page = alertsPage();
  else if (parts[0] === "object" && parts[2]) page = objectPage(parts[1], parts[2]);
  else page = overviewPage();
  for (const a of document.querySelectorAll("header nav a")) {
    if (a.dataset.page === page.name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  current = page;
  await refresh(true);
}

let refreshing = false;
let again = false;
async function refresh(first) {
  if (!current) return;
  if (refreshing) { again = true; return; }
  refreshing = true;
  const page = current;
  try {
    const body = await page.render(first);
    // Redrawn only when something changed: a poll that finds nothing new leaves the page (its
    // focus, its scroll, a half-typed filter) alone. When it changed, the focus goes back to
    // the element with the same id (rows' links have one).
    const old = $main().firstElementChild;
    if (page === current && body && !(old && old.outerHTML === body.outerHTML)) {
      const focusId = document.activeElement && document.activeElement.id;
      $main().replaceChildren(body);
      if (focusId) { const f = document.getElementById(focusId); if (f) f.focus(); }
    }
  } catch (e) {
    if (page === current) $main().replaceChildren(el("p", { class: "bad", id: "error" }, String(e.message || e)));
  } finally {
    refreshing = false;
    if (again) { again = false; setTimeout(() => refresh(false), 0); }
  }
}

// ---- overview -------------------------------------------------------------------------------

let lastCounts = null; // { t, total, perFlow: {name: matched} }

function overviewPage() {
  return {
    name: "overview",
    events: ["alert", "resolved", "anomaly", "anomaly_resolved"],
    poll: 2000,
    async render() {
      const o = await getJson("/api/overview");
      const t = o.now_unix_ms / 1000;
      const rate = (now, before) =>
        lastCounts && t > lastCounts.t ? Math.max(0, (now - before) / (t - lastCounts.t)) : null;
      const total = rate(o.messages.total, lastCounts ? lastCounts.total : 0);
      const rows = o.flows.map((f) => {
        const r = rate(f.matched, lastCounts ? lastCounts.perFlow[f.name] || 0 : 0);
        return el("tr", { "data-flow": f.name },
          el("td", {}, el("a", { href: flowHref(f.name) }, f.name), el("div", { class: "muted" }, f.description || "")),
          el("td", { class: "num" }, f.in_flight),
          el("td", { class: "num" }, el("a", { href: `#/alerts`, class: f.firing ? "bad" : "" }, f.firing)),
          el("td", { class: "num" }, f.anomalies),
          el("td", { class: "num" }, r === null ? "–" : r.toFixed(1)),
          el("td", { class: "num" }, f.observed_transitions.toFixed(0)),
          el("td", {}, el("a", { href: `#/objects?flow=${enc(f.name)}` }, "objects")));
      });
      lastCounts = { t, total: o.messages.total, perFlow: Object.fromEntries(o.flows.map((f) => [f.name, f.matched])) };
      const reload = el("section", { id: "reload" },
        el("h2", {}, "Flow files"),
        o.reload.ok
          ? el("p", { id: "reload-status", class: "ok" }, "Loaded without errors",
              o.reload.last_unix ? ` (last reload ${new Date(o.reload.last_unix * 1000).toLocaleString()})` : "")
          : el("p", { id: "reload-status", class: "bad" }, "The last reload failed: the flows below are the last good ones."),
        o.reload.error ? el("pre", { id: "reload-error", class: "diag" }, o.reload.error) : null);
      return el("div", {},
        el("h1", {}, "Overview"),
        el("div", { class: "cards" },
          card("messages/s", total === null ? "–" : total.toFixed(1), "msg-rate"),
          card("messages", o.messages.total, "msg-total"),
          card("unmatched", o.messages.unmatched, "msg-unmatched"),
          card("malformed", o.messages.malformed, "msg-malformed"),
          card("firing alerts", o.flows.reduce((a, f) => a + f.firing, 0), "firing-total"),
          card("NATS", o.nats_connected ? "connected" : "–", "nats")),
        el("table", { id: "flows" },
          el("thead", {}, el("tr", {},
            el("th", {}, "Flow"), el("th", { class: "num" }, "In flight"), el("th", { class: "num" }, "Firing"),
            el("th", { class: "num" }, "Anomalous"), el("th", { class: "num" }, "Messages/s"),
            el("th", { class: "num" }, "Transitions learned"), el("th", {}, ""))),
          el("tbody", {}, rows)),
        reload);
    },
  };
}

function card(label, value, id) {
  return el("div", { class: "card", id }, el("div", { class: "muted" }, label), el("div", { class: "n" }, value));
}

// ---- a flow ---------------------------------------------------------------------------------

function flowPage(name) {
  return {
    name: "flow",
    events: ["outcome", "alert", "resolved"],
    poll: 5000,
    async render() {
      const [svg, model, graph] = await Promise.all([
        fetch(`/api/flows/${enc(name)}/graph?format=svg`).then((r) => {
          if (!r.ok) throw new Error(`no flow named ${name}`);
          return r.text();
        }),
        getJson(`/api/flows/${enc(name)}/model`),
        getJson(`/api/flows/${enc(name)}/graph`),
      ]);
      const g = el("div", { class: "graph", id: "flow-graph" });
      // The SVG is drawn by flowcast from names it escaped itself.
      g.innerHTML = svg;
      const artifacts = graph.states.filter((s) => s.kind === "artifact").map((s) => s.name);
      const counts = Object.fromEntries(graph.states.map((s) => [s.name, s.in_state]));
      const fig11 = el("table", { id: "fig11" },
        el("thead", {}, el("tr", {}, el("th", {}, "State"), el("th", { class: "num" }, "Objects now"),
          artifacts.map((a) => el("th", { class: "num" }, a)), el("th", { class: "num" }, "Expected remaining"))),
        el("tbody", {}, model.states.filter((s) => s.kind !== "artifact" && s.kind !== "terminal").map((s) =>
          el("tr", { "data-state": s.state },
            el("td", {}, el("a", { href: `#/objects?flow=${enc(name)}&state=${enc(s.state)}` }, s.state)),
            el("td", { class: "num" }, counts[s.state] || 0),
            artifacts.map((a) => el("td", { class: "num" }, fmtP(s.risk[a] || 0))),
            el("td", { class: "num" }, fmtMs(s.expected_remaining_ms))))));
      const fig10 = el("table", { id: "fig10" },
        el("thead", {}, el("tr", {}, el("th", {}, "From"), el("th", {}, "To"), el("th", { class: "num" }, "Prior"),
          el("th", { class: "num" }, "Observed"), el("th", { class: "num" }, "Weight"), el("th", { class: "num" }, "Probability"))),
        el("tbody", {}, model.transitions.map((t) => el("tr", {},
          el("td", {}, t.from), el("td", {}, t.to), el("td", { class: "num" }, t.prior),
          el("td", { class: "num" }, t.observed.toFixed(2)), el("td", { class: "num" }, t.weight.toFixed(2)),
          el("td", { class: "num" }, fmtP(t.probability))))));
      return el("div", {},
        el("h1", {}, `Flow ${name}`),
        el("p", { class: "muted" }, `${graph.in_flight} objects in flight · model version ${model.model_version} · ${model.observed_total.toFixed(0)} transitions observed · `,
          el("a", { href: `/api/flows/${enc(name)}/graph?format=svg` }, "SVG"), " · ",
          el("a", { href: `/api/flows/${enc(name)}/model` }, "model JSON")),
        g,
        el("h2", {}, "Risk from each state (FIG. 11)"), fig11,
        el("h2", {}, "Transitions (FIG. 10)"), fig10);
    },
  };
}

// ---- objects at risk ------------------------------------------------------------------------

function objectsPage(params) {
  const state = {
    flow: params.get("flow") || "", st: params.get("state") || "", min_risk: params.get("min_risk") || "",
    alerting: params.get("alerting") === "true", sort: params.get("sort") || "risk",
    order: null, // client-side column order: {key, dir}
  };
  let flows = null;
  return {
    name: "objects",
    events: ["alert", "resolved", "outcome"],
    poll: 5000,
    async render() {
      if (!flows) flows = (await getJson("/api/flows")).flows.map((f) => f.name);
      const q = new URLSearchParams({ sort: state.sort, limit: "100" });
      if (state.flow) q.set("flow", state.flow);
      if (state.st) q.set("state", state.st);
      if (state.min_risk) q.set("min_risk", state.min_risk);
      if (state.alerting) q.set("alerting", "true");
      const r = await getJson(`/api/objects?${q}`);
      let rows = r.objects;
      if (state.order) {
        const { key, dir } = state.order;
        rows = [...rows].sort((a, b) => (a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : 0) * dir);
      }
      const apply = (e) => {
        e.preventDefault();
        const f = e.target.closest("form");
        state.flow = f.flow.value; state.st = f.state.value.trim(); state.min_risk = f.min_risk.value.trim();
        state.alerting = f.alerting.checked; state.sort = f.sort.value;
        const p = new URLSearchParams();
        for (const [k, v] of [["flow", state.flow], ["state", state.st], ["min_risk", state.min_risk], ["sort", state.sort]]) if (v) p.set(k, v);
        if (state.alerting) p.set("alerting", "true");
        history.replaceState(null, "", `#/objects?${p}`);
        refresh(false);
      };
      const head = (label, key, num) => el("th", { class: num ? "num" : "", "aria-sort": state.order && state.order.key === key ? (state.order.dir > 0 ? "ascending" : "descending") : "none" },
        el("button", { type: "button", onclick: () => {
          state.order = { key, dir: state.order && state.order.key === key ? -state.order.dir : (num ? -1 : 1) };
          refresh(false);
        } }, label));
      const form = el("form", { class: "filters", onsubmit: apply, "aria-label": "filter objects" },
        el("label", {}, "Flow", el("select", { name: "flow", id: "f-flow" },
          el("option", { value: "" }, "all"), flows.map((f) => el("option", { value: f, selected: f === state.flow }, f)))),
        el("label", {}, "State", el("input", { name: "state", id: "f-state", value: state.st, size: 14 })),
        el("label", {}, "Risk at least", el("input", { name: "min_risk", id: "f-min-risk", value: state.min_risk, size: 6, inputmode: "decimal" })),
        el("label", {}, "Sort", el("select", { name: "sort", id: "f-sort" },
          el("option", { value: "risk", selected: state.sort === "risk" }, "risk"),
          el("option", { value: "time", selected: state.sort === "time" }, "time in state"))),
        el("label", {}, "Alerting only", el("input", { type: "checkbox", name: "alerting", id: "f-alerting", checked: state.alerting })),
        el("button", { type: "submit", id: "f-apply" }, "Apply"));
      return el("div", {},
        el("h1", {}, "Objects at risk"), form,
        el("p", { class: "muted" }, `${r.matching} objects match; the ${rows.length} riskiest are listed (ranked by the risk from their state, alerting first).`),
        el("table", { id: "objects" },
          el("thead", {}, el("tr", {}, head("Object", "object"), head("Flow", "flow"), head("State", "state"),
            head("In state", "time_in_state_ms", true), head("State risk", "state_risk", true), head("Top risk", "top_risk", true),
            head("Artifact", "top_artifact"), head("Expected remaining", "expected_remaining_ms", true), head("Alerting", "alerting"))),
          el("tbody", {}, rows.length ? [] : none(9, "No object in flight matches."), rows.map((o) => el("tr", { class: o.alerting ? "alerting" : "", "data-object": o.object },
            el("td", {}, el("a", { href: objectHref(o.flow, o.object), id: `o-${o.flow}-${o.object}` }, o.object)),
            el("td", {}, o.flow), el("td", {}, o.state),
            el("td", { class: "num" }, fmtMs(o.time_in_state_ms)),
            el("td", { class: "num" }, fmtP(o.state_risk)), el("td", { class: "num" }, fmtP(o.top_risk)),
            el("td", {}, o.top_artifact || "–"), el("td", { class: "num" }, fmtMs(o.expected_remaining_ms)),
            el("td", { class: o.alerting ? "bad" : "" }, o.alerting ? "yes" : (o.anomalous ? "anomalous" : "no")))))));
    },
  };
}

// ---- one object -----------------------------------------------------------------------------

function riskPlot(steps, thresholds) {
  const pts = steps.filter((s) => s.risk !== null && s.risk !== undefined).map((s) => ({ t: Date.parse(s.at), r: s.risk }));
  const W = 520, H = 160, L = 40, B = 24, T = 10, R = 10;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("width", W); svg.setAttribute("height", H);
  svg.setAttribute("class", "plot"); svg.setAttribute("id", "risk-plot");
  svg.setAttribute("role", "img"); svg.setAttribute("aria-label", "risk after each step");
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
  };
  const t0 = pts.length ? pts[0].t : 0, t1 = pts.length ? pts[pts.length - 1].t : 1;
  const x = (t) => L + (t1 > t0 ? ((t - t0) / (t1 - t0)) * (W - L - R) : (W - L - R) / 2);
  const y = (r) => T + (1 - r) * (H - T - B);
  add("line", { class: "axis", x1: L, y1: y(0), x2: W - R, y2: y(0) });
  add("line", { class: "axis", x1: L, y1: y(0), x2: L, y2: y(1) });
  add("text", { x: 4, y: y(1) + 4 }, "1.0");
  add("text", { x: 4, y: y(0) + 4 }, "0");
  for (const th of [...new Set(thresholds)]) {
    add("line", { class: "thr", x1: L, y1: y(th), x2: W - R, y2: y(th) });
    add("text", { x: W - R - 60, y: y(th) - 3 }, `alert ${th}`);
  }
  if (pts.length) {
    add("polyline", { class: "line", points: pts.map((p) => `${x(p.t).toFixed(1)},${y(p.r).toFixed(1)}`).join(" ") });
    for (const p of pts) add("circle", { cx: x(p.t).toFixed(1), cy: y(p.r).toFixed(1), r: 3 });
    add("text", { x: L, y: H - 6 }, new Date(t0).toLocaleTimeString());
    add("text", { x: W - R - 70, y: H - 6 }, new Date(t1).toLocaleTimeString());
  }
  return svg;
}

function objectPage(flow, key) {
  return {
    name: "object",
    events: ["alert", "resolved", "outcome", "anomaly"],
    poll: 5000,
    async render() {
      const r = await fetch(`/api/objects/${enc(key)}`);
      if (r.status === 404) {
        return el("div", { id: "object-view" }, el("h1", {}, `Object ${key}`),
          el("p", {}, "It is not in flight (it ended, or was never seen). ", el("a", { href: "#/alerts" }, "Alerts"), " keep the recently resolved."));
      }
      if (!r.ok) throw new Error(await r.text());
      const o = await r.json();
      const views = o.flows.filter((f) => !flow || f.flow === flow);
      const graph = await Promise.all(views.map((v) => getJson(`/api/flows/${enc(v.flow)}/graph`)));
      return el("div", { id: "object-view" },
        el("h1", {}, `Object ${o.object}`),
        views.map((v, i) => {
          const thresholds = graph[i].states.filter((s) => s.kind === "artifact").map((s) => s.threshold);
          const why = v.why_not_alerting;
          return el("section", { "data-flow": v.flow },
            el("h2", {}, "In ", el("a", { href: flowHref(v.flow) }, v.flow), `: ${v.state} for ${fmtMs(v.time_in_state_ms)}`),
            el("p", { class: v.alerting ? "bad" : "" }, v.alerting ? "Alerting." : "Not alerting: ", why ? why.reason : ""),
            el("div", { class: "split" },
              el("table", { id: "object-risk" },
                el("thead", {}, el("tr", {}, el("th", {}, "Artifact"), el("th", { class: "num" }, "Risk now"), el("th", { class: "num" }, "Alert at"))),
                el("tbody", {}, Object.entries(v.risk).map(([a, p]) => {
                  const th = graph[i].states.find((s) => s.name === a);
                  return el("tr", {}, el("td", {}, a), el("td", { class: "num" }, fmtP(p)), el("td", { class: "num" }, th && th.threshold !== undefined ? th.threshold : "–"));
                })),
                el("tfoot", {}, el("tr", {}, el("td", {}, "Expected remaining"), el("td", { class: "num", colspan: 2 }, fmtMs(v.expected_remaining_ms))))),
              el("div", {}, el("h2", {}, "Risk after each step"), riskPlot(v.timeline.steps, thresholds))),
            el("h2", {}, "Timeline"),
            v.timeline.cut ? el("p", { class: "muted" }, "Earlier steps are no longer in the journal.") : null,
            el("table", { id: "timeline" },
              el("thead", {}, el("tr", {}, el("th", {}, "At"), el("th", {}, "Step"), el("th", {}, "From"), el("th", {}, "State"),
                el("th", { class: "num" }, "Probability given"), el("th", { class: "num" }, "Risk after"))),
              el("tbody", {}, v.timeline.steps.map((s) => el("tr", { class: s.step === "alert" ? "alerting" : "" },
                el("td", {}, s.at), el("td", {}, el("span", { class: `tag ${s.step}` }, s.step)), el("td", {}, s.from || ""),
                el("td", {}, s.state), el("td", { class: "num" }, fmtP(s.probability)), el("td", { class: "num" }, fmtP(s.risk)))))));
        }));
    },
  };
}

// ---- alerts ---------------------------------------------------------------------------------

const none = (cols, text) => el("tr", { class: "empty" }, el("td", { colspan: cols, class: "muted" }, text));

const liveLog = []; // records seen on this page since it opened, newest first

function alertsPage() {
  return {
    name: "alerts",
    events: ["alert", "resolved", "anomaly", "anomaly_resolved"],
    poll: 10000,
    async render() {
      const a = await getJson("/api/alerts");
      const row = (f) => el("tr", { class: f.kind === "alert" ? "alerting" : "", "data-object": f.object, "data-kind": f.kind },
        el("td", {}, el("a", { href: objectHref(f.flow, f.object) }, f.object)),
        el("td", {}, el("a", { href: flowHref(f.flow) }, f.flow)), el("td", {}, f.state),
        el("td", {}, f.what), el("td", { class: "num" }, fmtP(f.probability)),
        el("td", {}, f.severity || ""), el("td", {}, f.since));
      const head = () => el("thead", {}, el("tr", {}, el("th", {}, "Object"), el("th", {}, "Flow"), el("th", {}, "State"),
        el("th", {}, "Artifact / threshold"), el("th", { class: "num" }, "Probability"), el("th", {}, "Severity"), el("th", {}, "Since")));
      return el("div", {},
        el("h1", {}, "Alerts"),
        el("h2", {}, `Firing (${a.firing.length})`),
        el("table", { id: "firing" }, head(), el("tbody", {}, a.firing.length ? a.firing.map(row) : none(7, "No alert is firing."))),
        a.not_listed ? el("p", { class: "muted" }, `${a.not_listed} more not listed.`) : null,
        el("h2", {}, `Anomalous objects (${a.anomalies.length})`),
        el("table", { id: "anomalies" }, head(), el("tbody", {}, a.anomalies.length ? a.anomalies.map(row) : none(7, "No object is anomalous."))),
        el("h2", {}, "Recently resolved"),
        el("table", { id: "resolved" },
          el("thead", {}, el("tr", {}, el("th", {}, "Object"), el("th", {}, "Flow"), el("th", {}, "Kind"), el("th", {}, "State"),
            el("th", {}, "Artifact"), el("th", {}, "Fired"), el("th", {}, "Resolved"), el("th", {}, "Why"))),
          el("tbody", {}, a.resolved.map((r) => el("tr", { "data-object": r.object, "data-kind": r.kind },
            el("td", {}, el("a", { href: objectHref(r.flow, r.object) }, r.object)), el("td", {}, r.flow),
            el("td", {}, el("span", { class: `tag ${r.kind}` }, r.kind)), el("td", {}, r.state), el("td", {}, r.what || ""),
            el("td", {}, r.since || ""), el("td", {}, r.resolved_at), el("td", {}, r.reason))))),
        el("h2", {}, "Live"),
        el("ul", { class: "log", id: "live-log" }, liveLog.map((l) => el("li", {}, el("span", { class: `tag ${l.kind}` }, l.kind), " ", l.text))));
    },
  };
}

// ---- live updates ---------------------------------------------------------------------------

let pending = null;
function soon() {
  if (pending) return;
  pending = setTimeout(() => { pending = null; refresh(false); }, 300);
}

function connect() {
  const live = document.getElementById("live");
  const es = new EventSource("/api/events");
  es.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  es.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
  for (const kind of ["alert", "resolved", "anomaly", "anomaly_resolved", "outcome", "lagged"]) {
    es.addEventListener(kind, (e) => {
      if (kind !== "outcome" && kind !== "lagged") {
        const r = JSON.parse(e.data);
        const text = kind === "alert" ? `${r.flow} ${r.object}: ${r.artifact} ${fmtP(r.probability)} in ${r.state}`
          : `${r.flow} ${r.object} ${r.reason || r.threshold || ""}`;
        liveLog.unshift({ kind, text });
        if (liveLog.length > 200) liveLog.pop();
      }
      if (current && (kind === "lagged" || current.events.includes(kind))) soon();
    });
  }
}

let poller = null;
function startPolling() {
  if (poller) clearInterval(poller);
  poller = setInterval(() => {
    document.getElementById("clock").textContent = `updated ${new Date().toLocaleTimeString()}`;
    if (current && current.poll && Date.now() - (current.last || 0) >= current.poll) {
      current.last = Date.now();
      refresh(false);
    }
  }, 1000);
}

window.addEventListener("hashchange", show);
window.addEventListener("DOMContentLoaded", () => {
  show();
  connect();
  startPolling();
});

// The national view: fetches the dashboard's JSON API, draws it with ECharts (served by
// the dashboard itself), and refreshes on each server-sent `update`.
"use strict";

const icx = {
  state: { period: "1h", window: "1h", selected: null, version: 0, updates: 0,
    allCenters: false },
  data: {},
  charts: {},
  rendered: 0,
};
window.icx = icx;
// Where a load's time goes (read by bench/dashboard_bench.py): the script running (ECharts
// loaded before it), the first figures fetched, the page drawn.
performance.mark("icx-script");

const $ = (id) => document.getElementById(id);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) =>
  ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const int = (v) => (v ?? 0).toLocaleString("en-US");
const pct = (f) => (f == null ? "–" : (100 * f).toFixed(1) + " %");
const hours = (s) => (s / 3600).toFixed(1);
const kilo = (v) => (v / 1000).toFixed(2);
const yuan = (minor) => (minor / 100).toFixed(2);
const time = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : "–");

// ECharts loads beside the first figures (async in the page; inlined in a report).
const echartsReady = new Promise((resolve, reject) => {
  if (window.echarts) { resolve(); return; }
  const tag = $("echarts-js");
  tag.addEventListener("load", () => resolve());
  tag.addEventListener("error", () => reject(new Error("the chart library did not load")));
});
echartsReady.catch(() => {});  // reported by the refresh that waits for it

async function getJSON(url, options) {
  const reply = await fetch(url, options);
  const body = await reply.json();
  if (!reply.ok) throw new Error(body.error || `${url}: ${reply.status}`);
  return body;
}

function showError(message) {
  const box = $("error");
  box.hidden = !message;
  box.textContent = message || "";
}

// A table: headers [label, key, kind], rows of objects; each cell carries its raw value
// (data-field, data-value) so that what the page shows can be checked against the API.
function table(el, headers, rows, rowAttrs) {
  const head = "<tr>" + headers.map(([label, , kind]) =>
    `<th class="${kind === "text" ? "" : "num"}">${esc(label)}</th>`).join("") + "</tr>";
  const body = rows.map((row) => {
    const attrs = rowAttrs ? rowAttrs(row) : "";
    return `<tr ${attrs}>` + headers.map(([, key, kind, show]) => {
      const value = typeof key === "function" ? key(row) : row[key];
      const shown = show ? show(value, row) : value;
      const cls = kind === "text" ? "" : "num";
      const field = typeof key === "string" ? ` data-field="${esc(key)}"` : "";
      return `<td class="${cls}"${field} data-value="${esc(value)}">${
        kind === "html" ? shown : esc(shown)}</td>`;
    }).join("") + "</tr>";
  }).join("");
  el.innerHTML = head + body;
}

const FIGURE_COLUMNS = [
  ["devices", (r) => r.figures.devices_total, "num", int],
  ["busy", (r) => r.figures.devices_busy, "num", int],
  ["queue", (r) => r.figures.queue_length, "num", int],
  ["running", (r) => r.figures.jobs_running, "num", int],
  ["done", (r) => r.figures.jobs_done, "num", int],
  ["device-h", (r) => r.figures.device_seconds, "num", hours],
  ["utilisation", (r) => r.figures.utilisation, "num", pct],
  ["kWh", (r) => r.figures.energy_wh, "num", kilo],
  ["kg CO2", (r) => r.figures.carbon_g, "num", kilo],
  ["spend ¥", (r) => r.figures.spend_minor, "num", yuan],
];

function chart(id) {
  if (!icx.charts[id]) icx.charts[id] = echarts.init($(id), null, { renderer: "canvas" });
  return icx.charts[id];
}

function renderTotals(o) {
  const t = o.totals;
  const tiles = [
    ["centers_live", "centers live", `${t.centers_live} / ${t.centers}`],
    ["devices_busy", "devices busy", `${int(t.devices_busy)} / ${int(t.devices_total)}`],
    ["queue_length", "jobs queued", int(t.queue_length)],
    ["jobs_running", "jobs running", int(t.jobs_running)],
    ["jobs_done", "jobs done", int(t.jobs_done)],
    ["utilisation", "utilisation", pct(t.utilisation)],
    ["device_seconds", "device-hours", hours(t.device_seconds)],
    ["energy_wh", "energy kWh", kilo(t.energy_wh)],
    ["carbon_g", "carbon kg CO2", kilo(t.carbon_g)],
    ["spend_minor", "spend ¥", yuan(t.spend_minor)],
  ];
  $("totals").innerHTML = tiles.map(([field, label, shown]) =>
    `<div class="tile" data-field="${field}" data-value="${esc(t[field])}"><b>${esc(shown)}</b>` +
    `<span>${esc(label)}</span></div>`).join("");
}

function renderMap(o) {
  const placed = o.centers.filter((c) => c.latitude !== 0 || c.longitude !== 0);
  const unplaced = o.centers.length - placed.length;
  $("unplaced").textContent = unplaced
    ? `${unplaced} center(s) of peer brokers have no coordinates in their summaries and are listed below only.`
    : "";
  const maxDevices = Math.max(1, ...placed.map((c) => c.figures.devices_total));
  const hubs = Object.entries(o.hub_positions);
  const flows = o.flows.filter((f) => f.from_region !== f.to_region &&
    o.hub_positions[f.from_region] && o.hub_positions[f.to_region]);
  const maxJobs = Math.max(1, ...flows.map((f) => f.jobs));
  chart("map").setOption({
    animation: false,
    grid: { left: 10, right: 10, top: 10, bottom: 10 },
    xAxis: { type: "value", min: 73, max: 135, show: false },
    yAxis: { type: "value", min: 18, max: 54, show: false },
    tooltip: { trigger: "item" },
    visualMap: { type: "continuous", min: 0, max: 1, dimension: 3, seriesIndex: 0,
      inRange: { color: ["#2da44e", "#e3b341", "#cf222e"] }, text: ["busy", "idle"],
      calculable: false, left: 10, bottom: 10 },
    series: [
      { id: "centers", name: "centers", type: "scatter",
        data: placed.map((c) => ({ name: c.center_id,
          value: [c.longitude, c.latitude, c.figures.devices_total, c.figures.utilisation] })),
        symbolSize: (v) => 8 + 32 * Math.sqrt(v[2] / maxDevices),
        tooltip: { formatter: (p) => `${esc(p.name)}: ${int(p.value[2])} devices, ${pct(p.value[3])}` } },
      { id: "hubs", name: "hubs", type: "scatter", symbol: "diamond", symbolSize: 6,
        itemStyle: { color: "#1d2733" }, silent: true,
        label: { show: true, formatter: "{b}", position: "top", fontWeight: "bold" },
        data: hubs.map(([hub, pos]) => ({ name: hub, value: pos })) },
      { id: "flows", name: "flows", type: "lines", coordinateSystem: "cartesian2d",
        polyline: false, lineStyle: { curveness: 0.25, opacity: 0.6, color: "#1f6feb" },
        symbol: ["none", "arrow"],
        data: flows.map((f) => ({ name: `${f.from_region} → ${f.to_region}`,
          coords: [o.hub_positions[f.from_region], o.hub_positions[f.to_region]],
          value: f.jobs, lineStyle: { width: 1 + 6 * f.jobs / maxJobs } })),
        tooltip: { formatter: (p) => `${esc(p.name)}: ${p.value} jobs` } },
    ],
  }, true);
}

function renderHubs(o) {
  table($("hubs"), [["hub", "region", "text"], ["centers", (r) => r.figures.centers, "num"],
    ...FIGURE_COLUMNS], o.hubs, (r) => `data-hub="${esc(r.region)}"`);
  table($("flows"), [["submitted in", "from_region", "text"], ["ran in", "to_region", "text"],
    ["jobs", "jobs", "num", int], ["device-h", "device_seconds", "num", hours]], o.flows);
}

// The centers table shows its first rows until "show all" is clicked: a thousand rows
// take the browser longer to lay out than the rest of the page together.
const CENTER_ROWS = 50;

function renderCenters(o) {
  const all = icx.state.allCenters || window.ICX_REPORT || o.centers.length <= CENTER_ROWS;
  const rows = all ? o.centers : o.centers.slice(0, CENTER_ROWS);
  const more = $("centers-more");
  more.hidden = o.centers.length <= CENTER_ROWS || Boolean(window.ICX_REPORT);
  more.dataset.shown = String(rows.length);
  $("centers-shown").textContent = `${int(rows.length)} of ${int(o.centers.length)} centers shown`;
  $("centers-all").textContent = all ? `show the first ${CENTER_ROWS}` : "show all";
  table($("centers"), [
    ["center", "center_id", "text"], ["name", "name", "text"], ["hub", "region", "text"],
    ["live", "live", "text", (v) => (v ? "yes" : "no")],
    ...FIGURE_COLUMNS,
    ["¥/device-h", "price_minor_per_device_hour", "num", yuan],
    ["PUE", "pue_milli", "num", (v) => (v / 1000).toFixed(2)],
    ["g CO2/kWh", "grid_g_co2_per_kwh", "num", int],
  ], rows, (r) => `class="clickable" data-center="${esc(r.center_id)}"`);
}

async function refreshCenter() {
  const id = icx.state.selected;
  const box = $("center-detail");
  if (!id) { box.hidden = true; return; }
  const d = await getJSON(`/api/centers/${encodeURIComponent(id)}?period=${icx.state.period}`);
  icx.data.center = d;
  box.hidden = false;
  box.innerHTML = `<h3>${esc(d.center.center_id)} ${esc(d.center.name)}: ` +
    `${d.running.length} running job(s)</h3><table id="running"></table>` +
    `<h3>Pools</h3><table id="pools"></table>`;
  table($("running"), [["job", "job_id", "text"], ["tenant", "tenant", "text"],
    ["pool", "pool_id", "text"], ["devices", "devices", "num"],
    ["started", "started_at_ms", "text", time], ["submitted in", "home_region", "text"]],
  d.running);
  table($("pools"), [["pool", "pool_id", "text"], ["accelerator", "accelerator", "text"],
    ["devices", "devices_total", "num"], ["busy", "devices_busy", "num"],
    ["¥/device-h", "price_minor_per_device_hour", "num", yuan], ["W", "power_w", "num"]],
  d.center.pools);
}

function renderSeries(s) {
  const x = s.steps.map((t) => t.start_ms);
  const perMinute = 60000 / s.step_ms;
  const line = (name, values, yAxisIndex) => ({ name, type: "line", showSymbol: false,
    yAxisIndex, data: values.map((v, i) => [x[i], v]) });
  const base = { animation: false, tooltip: { trigger: "axis" }, legend: { top: 0 },
    grid: { left: 50, right: 50, top: 30, bottom: 25 }, xAxis: { type: "time" } };
  chart("series-activity").setOption({ ...base,
    yAxis: [{ type: "value", name: "%", max: 100 }, { type: "value", name: "jobs" }],
    series: [
      line("utilisation %", s.steps.map((t) => +(100 * t.utilisation).toFixed(1)), 0),
      line("queue", s.steps.map((t) => t.queue_length), 1),
      line("started/min", s.steps.map((t) => +(t.jobs_started * perMinute).toFixed(2)), 1),
      line("finished/min", s.steps.map((t) => +(t.jobs_finished * perMinute).toFixed(2)), 1),
    ] }, true);
  chart("series-resources").setOption({ ...base,
    yAxis: [{ type: "value", name: "kWh / kg" }, { type: "value", name: "¥" }],
    series: [
      line("energy kWh", s.steps.map((t) => t.energy_wh / 1000), 0),
      line("carbon kg CO2", s.steps.map((t) => t.carbon_g / 1000), 0),
      line("spend ¥", s.steps.map((t) => t.spend_minor / 100), 1),
    ] }, true);
}

function renderMoney(m) {
  const cp = m.checkpoint;
  const party = (p) => `<a href="/api/statement?period=${esc(m.period)}&party=${
    encodeURIComponent(p)}" target="_blank">${esc(p)}</a>`;
  $("money").innerHTML =
    `<p>Period ${esc(m.period)}, ${m.records} records, amounts in ${esc(m.currency)}. ` +
    `<a id="statement-link" href="/api/statement?period=${esc(m.period)}" target="_blank">` +
    `signed statement</a> (key ${esc(m.signed_by)}), bound to ` +
    `<a id="checkpoint-link" href="/api/checkpoint" target="_blank">checkpoint</a> ` +
    `<code>${esc(cp.origin)}</code> size ${cp.size}, root <code>${esc(cp.root)}</code>.</p>` +
    `<h3>Net positions</h3><table id="positions"></table>` +
    `<h3>Transfers that settle them</h3><table id="transfers"></table>` +
    (m.regions.length ? `<h3>Between regions</h3><table id="region-flows"></table>` : "");
  table($("positions"), [["party (its statement)", "party", "html", party],
    ["paid", "paid_minor", "num", yuan], ["received", "received_minor", "num", yuan],
    ["net", "net_minor", "num", yuan], ["kWh", "energy_wh", "num", kilo],
    ["kg CO2", "carbon_g", "num", kilo]], m.parties);
  table($("transfers"), [["payer", "payer", "html", party], ["payee", "payee", "html", party],
    ["amount", "amount_minor", "num", yuan]], m.transfers);
  if (m.regions.length) {
    table($("region-flows"), [["payer", "payer", "text"], ["payee", "payee", "text"],
      ["amount", "amount_minor", "num", yuan], ["records", "records", "num"]], m.regions);
  }
}

function renderRounds(r) {
  const num = (d) => (v) => (v == null ? "–" : Number(v).toFixed(d));
  table($("rounds"), [["round", "number", "num"], ["at", "at_ms", "text", time],
    ["solver", "solver", "text"], ["objective", "objective", "num", num(1)],
    ["bound", "bound", "num", num(1)], ["gap", "gap", "num", (v) => (v == null ? "–" : pct(v))],
    ["considered", "jobs_considered", "num"], ["placed", "jobs_placed", "num"],
    ["waiting", "jobs_waiting", "num"]], r.rounds);
  const latest = r.rounds[0];
  table($("reasons"), [["reason", "reason", "text"], ["jobs", "jobs", "num"],
    ["example", "example", "text"]], latest ? latest.waiting : []);
}

function renderPolicy(p) {
  const doc = p.policy || {};
  const weights = doc.weights || {};
  const quotas = doc.quotas || {};
  const incentive = doc.incentive || {};
  const row = (k, v) => `<tr><th>${esc(k)}</th><td data-field="${esc(k)}">${esc(v)}</td></tr>`;
  $("policy").innerHTML = `<table id="policy-now">` +
    row("version", p.version) +
    row("set by", p.set_by || "–") + row("set at", time(p.set_at_ms)) +
    row("comment", p.comment || "–") +
    row("weights", Object.entries(weights).map(([k, v]) => `${k} ${v}`).join(", ") || "–") +
    row("carbon price ¥/t", doc.carbon_price_yuan_per_tonne ?? "–") +
    row("region quotas (devices)", Object.entries(quotas).map(([k, v]) => `${k} ${v}`).join(", ") || "none") +
    row("east-to-west incentive", incentive.regions && incentive.regions.length
      ? `¥${incentive.yuan_per_device_hour}/device-h in ${incentive.regions.join(", ")}` : "none") +
    row("data residency", "per job (its allowed regions), enforced in every round") +
    `</table>`;
  const a = p.allocation || {};
  const cols = [["", "when", "text"], ["device-h", "device_hours", "num"],
    ["g CO2 / device-h", "carbon_g_per_device_hour", "num", (v) => v ?? "–"],
    ["share in western hubs", "western_share", "num", pct]];
  const rows = a.now ? [{ when: "last window", ...a.now }]
    : [{ when: "before", ...a.before }, { when: "after", ...a.after }];
  table($("allocation"), cols, rows);
  table($("policy-changes"), [["version", "version", "num"], ["set by", "set_by", "text"],
    ["at", "set_at_ms", "text", time], ["comment", "comment", "text"]], p.changes);
  const area = $("policy-json");
  if (document.activeElement !== area && !area.dataset.edited) {
    area.value = JSON.stringify(doc, null, 1);
  }
}

// One refresh at a time: a call while one runs is answered by one more run after it
// (an update that arrives while the page loads, a burst of updates, a period change).
let refreshing = null;
let queued = null;

function refresh() {
  if (!refreshing) {
    refreshing = refreshOnce().finally(() => { refreshing = null; });
    return refreshing;
  }
  queued ??= refreshing.then(() => { queued = null; return refresh(); });
  return queued;
}

async function refreshOnce() {
  const s = icx.state;
  // Every call at once (money too: a missing statement is shown, not an error).
  const money = getJSON("/api/money").then((m) => ({ m }), (err) => ({ err }));
  try {
    const [overview, series, rounds, policy] = await Promise.all([
      getJSON(`/api/overview?period=${s.period}`),
      getJSON(`/api/timeseries?window=${s.window}`),
      getJSON("/api/rounds?limit=10"),
      getJSON(`/api/policy?window=${s.period}`),
      echartsReady,
    ]);
    if (!icx.rendered) performance.mark("icx-fetched");
    Object.assign(icx.data, { overview, series, rounds, policy });
    renderTotals(overview); renderMap(overview); renderHubs(overview); renderCenters(overview);
    renderSeries(series); renderRounds(rounds); renderPolicy(policy);
    await refreshCenter();
    showError("");
  } catch (err) {
    showError(`cannot read the dashboard's figures: ${err.message}`);
  }
  const { m, err } = await money;
  if (m) {
    icx.data.money = m;
    renderMoney(m);
  } else {
    $("money").textContent = `no statement: ${err.message}`;
  }
  if (!icx.rendered) performance.mark("icx-drawn");
  icx.rendered += 1;
  document.body.dataset.rendered = String(icx.rendered);
}

function listen() {
  const live = $("live");
  const events = new EventSource("/api/events");
  events.addEventListener("update", async (e) => {
    const { version } = JSON.parse(e.data);
    icx.state.version = version;
    icx.state.updates += 1;
    await refresh();
    live.className = "on";
    live.dataset.version = String(version);
    live.dataset.updates = String(icx.state.updates);
    live.textContent = `live · updated ${new Date().toLocaleTimeString()} · ${icx.state.updates} update(s)`;
  });
  events.onerror = () => { live.className = ""; live.textContent = "reconnecting…"; };
}

// A report (`icx national --html`): the data is in the file; nothing is fetched.
function renderReport(r) {
  for (const id of ["period", "window", "policy-form", "live", "session"]) {
    const el = $(id);
    (el.closest("label") || el).hidden = true;
  }
  for (const el of document.querySelectorAll("#policy-section h3")) {
    if (el.textContent.startsWith("Change")) el.hidden = true;
  }
  Object.assign(icx.data, r);
  renderTotals(r.overview); renderMap(r.overview); renderHubs(r.overview);
  renderCenters(r.overview); renderSeries(r.series); renderRounds(r.rounds);
  renderPolicy(r.policy); renderMoney(r.money);
  // The links point at a running dashboard; the report carries what they serve.
  for (const a of document.querySelectorAll("#money a")) a.removeAttribute("href");
  $("money").insertAdjacentHTML("beforeend",
    `<details><summary>The signed statement</summary><pre id="statement">${esc(r.statement)}</pre></details>` +
    `<details><summary>The checkpoint</summary><pre id="checkpoint">${esc(r.checkpoint)}</pre></details>`);
  icx.rendered += 1;
  document.body.dataset.rendered = String(icx.rendered);
}

function setUp() {
  if (window.ICX_REPORT) { renderReport(window.ICX_REPORT); return; }
  if (document.body.dataset.signedIn !== "true") {
    // Every figure needs a session: nothing is fetched without one.
    document.querySelector("main").hidden = true;
    $("live").hidden = true;
    showError("No session: open the URL with the token that `icx dashboard` printed " +
      "(the token is also in its token file).");
    return;
  }
  $("session").textContent = "signed in";
  $("period").addEventListener("change", (e) => { icx.state.period = e.target.value; refresh(); });
  $("window").addEventListener("change", (e) => { icx.state.window = e.target.value; refresh(); });
  $("centers").addEventListener("click", (e) => {  // one listener for every row
    const row = e.target.closest("tr[data-center]");
    if (row) { icx.state.selected = row.dataset.center; refreshCenter(); }
  });
  $("centers-all").addEventListener("click", () => {
    icx.state.allCenters = !icx.state.allCenters;
    if (icx.data.overview) renderCenters(icx.data.overview);
  });
  $("policy-json").addEventListener("input", (e) => { e.target.dataset.edited = "1"; });
  $("policy-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const result = $("policy-result");
    try {
      const policy = JSON.parse($("policy-json").value);
      const changed = await getJSON("/api/policy", { method: "POST",
        headers: { "Content-Type": "application/json", "X-ICX-CSRF": document.body.dataset.csrf },
        body: JSON.stringify({ policy, comment: $("policy-comment").value }) });
      delete $("policy-json").dataset.edited;
      await refresh();  // the result is shown once the page shows the new policy
      result.textContent = `version ${changed.version} set by ${changed.set_by}`;
    } catch (err) {
      result.textContent = `not changed: ${err.message}`;
    }
  });
  window.addEventListener("resize", () => Object.values(icx.charts).forEach((c) => c.resize()));
  listen();
  refresh();
}

setUp();

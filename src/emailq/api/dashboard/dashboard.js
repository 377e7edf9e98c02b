// emailq dashboard: polls /v1/stats and /v1/alerts with the API key kept in this browser
// session, draws with the vendored uPlot. No other origin is contacted.
"use strict";
(function () {
  const LANES = ["critical", "wedding_day", "pre_wedding", "standard", "bulk"];
  const COLOURS = ["#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#7f7f7f"];
  const REFRESH_MS = 5000;
  const KEY = "emailq-api-key";
  const charts = {};
  let timer = null;
  let laneChosen = false; // until someone picks a lane, latency shows the busiest one

  const $ = (id) => document.getElementById(id);
  const fmt = (v, digits) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

  function showLogin(message) {
    $("board").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
  }

  async function get(path) {
    const key = sessionStorage.getItem(KEY);
    const reply = await fetch(path, { headers: { Authorization: "Bearer " + key } });
    if (reply.status === 401) throw new Error("unauthorized");
    if (!reply.ok) return null;
    return reply.json();
  }

  function chart(id, title, names, colours) {
    const el = $(id);
    const series = [{}].concat(names.map((name, i) => ({ label: name, stroke: colours[i], width: 2 })));
    const opts = { width: Math.max(480, el.clientWidth || 560), height: 220, series: series,
                   scales: { x: { time: true } }, legend: { live: false } };
    const empty = [[]].concat(names.map(() => []));
    return new uPlot(opts, empty, el);
  }

  function setupCharts() {
    if (charts.depth) return;
    charts.depth = chart("chart-depth", "depth", LANES, COLOURS);
    charts.throughput = chart("chart-throughput", "per minute", LANES, COLOURS);
    charts.success = chart("chart-success", "success", LANES, COLOURS);
    charts.latency = chart("chart-latency", "latency", ["p50", "p95", "p99"], ["#2ca02c", "#ff7f0e", "#d62728"]);
    const select = $("latency-lane");
    LANES.forEach((lane) => select.add(new Option(lane, lane)));
    select.addEventListener("change", () => { laneChosen = true; refresh(); });
  }

  function column(points, lane, field) {
    return points.map((p) => {
      const entry = p.lanes[lane] || {};
      const value = field === "backlog" ? entry.backlog : entry[field];
      return value === undefined ? null : value;
    });
  }

  function drawCharts(points) {
    const xs = points.map((p) => p.at);
    charts.depth.setData([xs].concat(LANES.map((l) => column(points, l, "backlog"))));
    charts.throughput.setData([xs].concat(LANES.map((l) => column(points, l, "throughput_per_min"))));
    charts.success.setData([xs].concat(LANES.map((l) => column(points, l, "success_rate"))));
    const lane = $("latency-lane").value || LANES[0];
    charts.latency.setData([xs, column(points, lane, "p50"), column(points, lane, "p95"), column(points, lane, "p99")]);
  }

  function row(cells, className) {
    const tr = document.createElement("tr");
    if (className) tr.className = className;
    cells.forEach((text) => {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    });
    return tr;
  }

  function drawLanes(point) {
    const body = $("lanes").tBodies[0];
    body.replaceChildren();
    LANES.forEach((lane) => {
      const e = (point && point.lanes[lane]) || {};
      const d = e.depth || {};
      const cells = [lane, d.queued || 0, d.leased || 0, d.retrying || 0, d.dead || 0,
        e.oldest_age_s === undefined ? "–" : fmt(e.oldest_age_s, 1) + " s",
        fmt(e.throughput_per_min, 0), fmt(e.success_rate, 3),
        fmt(e.p50, 3), fmt(e.p95, 3), fmt(e.p99, 3)];
      const tr = row(cells.map(String));
      tr.dataset.lane = lane;
      body.appendChild(tr);
    });
  }

  function drawOperator(current, alerts) {
    const operator = current !== undefined;
    document.querySelectorAll(".operator").forEach((el) => { el.hidden = !operator; });
    if (!operator) return;
    const ab = $("alerts").tBodies[0];
    ab.replaceChildren();
    const active = (alerts && alerts.alerts) || current.alerts || [];
    active.forEach((a) => ab.appendChild(row([a.rule, a.state, a.severity, fmt(a.value, 3), a.summary], a.state)));
    if (!active.length) ab.appendChild(row(["none", "", "", "", ""]));
    const wb = $("workers").tBodies[0];
    wb.replaceChildren();
    current.workers.forEach((w) => wb.appendChild(row([w.name, w.alive ? "alive" : "silent",
      new Date(w.last_seen * 1000).toLocaleTimeString()], w.alive ? "" : "dead")));
    Object.entries(current.providers).forEach(([name, p]) => wb.appendChild(row(["provider " + name,
      p.healthy === false ? "FAILING" : "healthy", "error rate " + fmt(p.error_rate, 3)], p.healthy === false ? "dead" : "")));
  }

  async function refresh() {
    try {
      const stats = await get("/v1/stats?since=1h&step=60");
      const recent = await get("/v1/stats?since=5m");
      if (!stats || !recent) return;
      $("login").hidden = true;
      $("board").hidden = false;
      setupCharts();
      $("scope").textContent = stats.tenant ? "tenant " + stats.tenant : "all tenants (operator)";
      const latest = recent.points[recent.points.length - 1];
      if (!laneChosen && latest) {
        $("latency-lane").value = LANES.reduce((a, b) => ((latest.lanes[b] || {}).sent || 0) >
          ((latest.lanes[a] || {}).sent || 0) ? b : a);
      }
      drawCharts(recent.points.length > stats.points.length ? recent.points : stats.points);
      drawLanes(recent.points[recent.points.length - 1]);
      const alerts = stats.tenant ? null : await get("/v1/alerts");
      drawOperator(stats.current, alerts);
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (error) {
      if (error.message === "unauthorized") {
        sessionStorage.removeItem(KEY);
        showLogin("that key was refused");
      } else {
        $("updated").textContent = "refresh failed: " + error.message;
      }
    }
  }

  function start() {
    if (!sessionStorage.getItem(KEY)) { showLogin(); return; }
    refresh();
    if (!timer) timer = setInterval(refresh, REFRESH_MS);
  }

  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("key").value.trim());
    start();
  });
  $("forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); showLogin(); });
  start();
})();

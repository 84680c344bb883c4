// Chamberlain console. Every page works without this script; it keeps the overview live.
"use strict";

function ageText(slotMillis) {
  if (!slotMillis) return "never";
  const secs = Math.max(0, Math.floor((Date.now() - slotMillis) / 1000));
  if (secs < 60) return `${secs} s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min ago`;
  if (secs < 86400) return `${Math.floor(secs / 3600)} h ago`;
  return `${Math.floor(secs / 86400)} d ago`;
}

function followOverview(table) {
  const rows = new Map();
  for (const row of table.querySelectorAll("tr[data-chamber]")) {
    rows.set(row.dataset.chamber, row);
  }
  if (rows.size === 0) return;
  const source = new EventSource(`/console/live?chambers=${[...rows.keys()].join(",")}`);
  source.addEventListener("chamber", (message) => {
    const update = JSON.parse(message.data);
    const row = rows.get(update.id);
    if (!row) return;
    if (update.health) {
      const health = row.querySelector("[data-health]");
      health.textContent = update.health;
      health.className = `health health-${update.health}`;
    }
    if (update.slot) {
      row.querySelector("[data-slot]").dataset.slot = String(update.slot);
    }
    for (const [detector, value] of Object.entries(update.values || {})) {
      const cell = row.querySelector(`[data-detector="${detector}"] b`);
      if (cell) cell.textContent = value === null ? "corrupted" : String(value);
    }
    row.dataset.updated = String(Date.now());
  });
  // Events were missed: the page shows the current state again.
  source.addEventListener("gap", () => window.location.reload());
  // Once the stream is open (and on each reconnection), a change made between this page's
  // rendering and the stream's start would never come as an event: the rows' health is read
  // again from a fresh copy of the page, except where an event came meanwhile.
  source.addEventListener("open", () => resyncHealth(rows));
  setInterval(() => {
    for (const cell of table.querySelectorAll("[data-slot]")) {
      cell.textContent = ageText(Number(cell.dataset.slot));
    }
  }, 1000);
}

async function resyncHealth(rows) {
  const asked = Date.now();
  let fresh;
  try {
    const response = await fetch(window.location.href, { credentials: "same-origin" });
    if (!response.ok) return;
    fresh = new DOMParser().parseFromString(await response.text(), "text/html");
  } catch {
    // The server out of reach: the rows keep what they show, and the stream's next opening
    // (it reconnects on its own) reads them again.
    return;
  }
  for (const [id, row] of rows) {
    if (Number(row.dataset.updated || 0) >= asked) continue;
    const now = fresh.querySelector(`tr[data-chamber="${id}"] [data-health]`);
    const health = row.querySelector("[data-health]");
    if (now && health.textContent !== now.textContent) {
      health.textContent = now.textContent;
      health.className = now.className;
    }
  }
}

// A chamber's charts: one uPlot chart per detector from the server's aggregated series; over
// the last hour, points are appended as the live stream brings them.
async function drawCharts(container) {
  const response = await fetch(container.dataset.series, { credentials: "same-origin" });
  if (!response.ok) {
    container.textContent = "The chart could not be loaded.";
    return;
  }
  const series = await response.json();
  const charts = new Map();
  const width = Math.max(320, Math.min(container.clientWidth || 900, 1100));
  series.detectors.forEach((detector, i) => {
    const box = document.createElement("div");
    box.className = "chart";
    box.dataset.detector = detector.id;
    container.append(box);
    const title = detector.unit ? `${detector.name} (${detector.unit})` : detector.name;
    const data = [series.t.slice(), series.values[i].slice()];
    const plot = new uPlot(
      {
        title,
        width,
        height: 200,
        scales: { x: { time: true } },
        series: [{}, { label: detector.name, stroke: "#2563eb", width: 1.5, spanGaps: false }],
      },
      data,
      box,
    );
    charts.set(detector.id, { plot, data });
  });
  container.dataset.points = String(series.t.length);
  if (container.dataset.live !== "true") return;
  const source = new EventSource(`/console/live?chambers=${container.dataset.chamber}`);
  source.addEventListener("chamber", (message) => {
    const update = JSON.parse(message.data);
    if (!update.slot) return;
    const t = update.slot / 1000;
    const horizon = t - 3600;
    for (const [detector, value] of Object.entries(update.values || {})) {
      const chart = charts.get(detector);
      if (!chart) continue;
      const [times, values] = chart.data;
      if (times.length && times[times.length - 1] >= t) continue;
      times.push(t);
      values.push(value);
      while (times.length && times[0] < horizon) {
        times.shift();
        values.shift();
      }
      chart.plot.setData(chart.data);
    }
    container.dataset.livePoints = String(Number(container.dataset.livePoints || 0) + 1);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  // A chamber's page has one set of charts, a batch's page one per charted chamber.
  if (window.uPlot) {
    for (const charts of document.querySelectorAll("[data-series]")) drawCharts(charts);
  }
  // Filters apply as soon as a choice changes.
  for (const select of document.querySelectorAll("form.filters select")) {
    select.addEventListener("change", () => select.form.submit());
  }
  const overview = document.querySelector("table[data-live=overview]");
  if (overview) followOverview(overview);
  // A new token's secret: copied with one click (it is shown this once).
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const text = document.getElementById(button.dataset.copy).textContent;
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "Copied";
      } catch {
        button.textContent = "Select and copy it by hand";
      }
    });
  }
});

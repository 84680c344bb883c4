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
  setInterval(() => {
    for (const cell of table.querySelectorAll("[data-slot]")) {
      cell.textContent = ageText(Number(cell.dataset.slot));
    }
  }, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  // Filters apply as soon as a choice changes.
  for (const select of document.querySelectorAll("form.filters select")) {
    select.addEventListener("change", () => select.form.submit());
  }
  const overview = document.querySelector("table[data-live=overview]");
  if (overview) followOverview(overview);
});

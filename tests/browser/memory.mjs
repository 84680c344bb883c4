// The browser's memory under the console's live updates: one tab on the overview (its first
// page of chambers updating every second) and one on a chamber's page (its 8 charts getting
// a point a second), for MINUTES minutes. Prints, each minute, each tab's JS heap (used, and
// after a forced garbage collection), its DOM nodes and event listeners, how many updates it
// received, and the memory of every Chromium process together (PSS). Run by
// scripts/bench-console-browser.
//
// Environment: CONSOLE, ADMIN_EMAIL, ADMIN_PASSWORD, CHROMIUM, MINUTES (default 10).
import { chromium } from "playwright-core";
import { readdirSync, readFileSync } from "node:fs";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = env("CONSOLE");
const minutes = Number(process.env.MINUTES || "10");

// Memory of every descendant of this node process (the browser and its renderers): the sum of
// their proportional set sizes (PSS: shared pages counted once across them, unlike RSS).
function browserPssMiB() {
  const parents = new Map();
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      parents.set(Number(pid), ppid);
    } catch {
      // The process ended while we looked.
    }
  }
  const mine = new Set([process.pid]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const [pid, ppid] of parents) {
      if (!mine.has(pid) && mine.has(ppid)) {
        mine.add(pid);
        grew = true;
      }
    }
  }
  mine.delete(process.pid);
  let kib = 0;
  for (const pid of mine) {
    try {
      const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
      const match = rollup.match(/^Pss:\s+(\d+)/m);
      if (match) kib += Number(match[1]);
    } catch {
      // Ended.
    }
  }
  return kib / 1024;
}

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  headless: true,
  args: ["--no-sandbox", "--disable-background-networking", "--disable-gpu", "--no-first-run"],
});

async function countUpdates(page, selector) {
  await page.evaluate((selector) => {
    window.__updates = 0;
    const target = document.querySelector(selector);
    new MutationObserver((mutations) => {
      window.__updates += mutations.length;
    }).observe(target, { subtree: true, childList: true, characterData: true, attributes: true });
  }, selector);
}

async function measure(page, cdp) {
  const { metrics } = await cdp.send("Performance.getMetrics");
  const metric = (name) => metrics.find((m) => m.name === name)?.value ?? 0;
  const used = metric("JSHeapUsedSize") / 1048576;
  await cdp.send("HeapProfiler.collectGarbage");
  const after = await cdp.send("Performance.getMetrics");
  const retained = after.metrics.find((m) => m.name === "JSHeapUsedSize").value / 1048576;
  return {
    used,
    retained,
    nodes: metric("Nodes"),
    listeners: metric("JSEventListeners"),
    updates: await page.evaluate(() => window.__updates),
  };
}

try {
  const context = await browser.newContext();
  const overview = await context.newPage();
  await overview.goto(`${base}/console/sign-in`);
  await overview.fill("input[name=email]", env("ADMIN_EMAIL"));
  await overview.fill("input[name=password]", env("ADMIN_PASSWORD"));
  await Promise.all([overview.waitForURL(`${base}/console/`), overview.click("button[type=submit]")]);
  const rows = await overview.locator("tr[data-chamber]").count();
  await countUpdates(overview, "table[data-live=overview]");
  const chamber = await context.newPage();
  const href = await overview.locator("tr[data-chamber] a").first().getAttribute("href");
  await chamber.goto(`${base}${href}`);
  await chamber.waitForFunction(() => document.querySelectorAll("#charts .chart canvas").length > 0);
  await countUpdates(chamber, "#charts");
  const tabs = [
    ["overview", overview, await context.newCDPSession(overview)],
    ["chamber", chamber, await context.newCDPSession(chamber)],
  ];
  for (const [, , cdp] of tabs) {
    await cdp.send("Performance.enable");
    await cdp.send("HeapProfiler.enable");
  }
  console.log(`overview: ${rows} chambers on its first page; chamber page: ${href}`);
  console.log("| minute | tab | JS heap used (MiB) | after GC (MiB) | DOM nodes | listeners | updates | browser PSS (MiB) |");
  console.log("|---|---|---|---|---|---|---|---|");
  for (let minute = 0; ; minute++) {
    const pss = browserPssMiB();
    for (const [name, page, cdp] of tabs) {
      const m = await measure(page, cdp);
      console.log(
        `| ${minute} | ${name} | ${m.used.toFixed(1)} | ${m.retained.toFixed(1)} | ${m.nodes} | ${m.listeners} | ${m.updates} | ${pss.toFixed(0)} |`,
      );
    }
    if (minute >= minutes) break;
    await new Promise((resolve) => setTimeout(resolve, Math.min(60000, minutes * 60000)));
  }
  const live = await chamber.locator("#charts").getAttribute("data-live-points");
  console.log(`live points drawn on the chamber page: ${live}`);
} finally {
  await browser.close();
}

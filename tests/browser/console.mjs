// The console in Debian's Chromium, as a lab technician uses it. Run by
// tests/tests/e2e/browser.rs against `chamberlain standalone --simulate 3`; every step
// throws on a failure, and each page is saved as a screenshot in SCREENSHOTS.
//
// Environment: CONSOLE (e.g. http://127.0.0.1:8080), ADMIN_EMAIL, ADMIN_PASSWORD,
// VIEWER_EMAIL, VIEWER_PASSWORD, CHROMIUM (the executable), SCREENSHOTS (a directory),
// FAILING_CHAMBER (the id of a chamber with a "down" alert rule, made to fail here).
import { base, check, env, launch, shots, signIn, submit, waitFor } from "./harness.mjs";

const browser = await launch();

try {
  // Nothing but the sign-in page without a session.
  const anonymous = await browser.newContext();
  const probe = await anonymous.newPage();
  for (const path of ["/console/", "/console/chambers/00000000-0000-0000-0000-000000000000", "/console/anything"]) {
    await probe.goto(`${base}${path}`);
    check(probe.url().endsWith("/console/sign-in"), `${path} answered without a session: ${probe.url()}`);
  }
  await probe.screenshot({ path: `${shots}/sign-in.png`, fullPage: true });

  // The administrator: three chambers, up, with values that change without a reload.
  const admin = await browser.newContext();
  const { page, violations } = await signIn(admin, env("ADMIN_EMAIL"), env("ADMIN_PASSWORD"));
  const rows = page.locator("tr[data-chamber]");
  check((await rows.count()) === 3, `3 chambers expected, saw ${await rows.count()}`);
  await waitFor("every chamber up", async () =>
    (await page.locator("[data-health]").allTextContents()).every((h) => h === "up"),
  );
  const firstValue = page.locator("tr[data-chamber] .value b").first();
  const before = await firstValue.textContent();
  await waitFor("a value changed without a reload", async () => (await firstValue.textContent()) !== before);
  check(
    await page.evaluate(() => performance.getEntriesByType("navigation").length === 1),
    "the page was reloaded",
  );
  await page.screenshot({ path: `${shots}/overview.png`, fullPage: true });

  // A chamber: its interval set to 5 s shows in the ledger.
  await Promise.all([page.waitForURL(/\/console\/chambers\//), page.locator("tr[data-chamber] a").first().click()]);
  const chamberUrl = page.url();
  // Its charts: one per detector, with points, and live points arriving.
  await waitFor("charts drawn", async () => (await page.locator("#charts .chart canvas").count()) === 8);
  check(Number(await page.locator("#charts").getAttribute("data-points")) > 0, "the chart has no points");
  await waitFor("a live point on the chart", async () => Number((await page.locator("#charts").getAttribute("data-live-points")) || 0) > 0);
  await page.screenshot({ path: `${shots}/chamber-charts.png`, fullPage: true });
  await page.fill("input[name=seconds]", "5");
  await submit(page, "text=Change interval");
  check((await page.locator("dl.config").textContent()).includes("5 s"), "the interval shows 5 s");
  await waitFor(
    "two ledger slots 5 s apart",
    async () => {
      await page.reload();
      const slots = (await page.locator("table.ledger tbody td:first-child").allTextContents()).slice(0, 2);
      return slots.length === 2 && Math.abs(Date.parse(slots[0]) - Date.parse(slots[1])) === 5000;
    },
    40000,
  );
  await page.screenshot({ path: `${shots}/chamber.png`, fullPage: true });

  // A cross-site form post (from another origin) changes nothing.
  const chamberPath = new URL(chamberUrl).pathname;
  const attacker = await admin.newPage();
  await attacker.setContent(
    `<form method="post" action="${base}${chamberPath}/pause"><input name="csrf" value="x"></form>`,
  );
  await Promise.all([attacker.waitForLoadState("load"), attacker.evaluate(() => document.forms[0].submit())]);
  await attacker.waitForLoadState("domcontentloaded");
  await page.reload();
  check(!(await page.locator("h1 .tag").count()), "a cross-site post paused the chamber");

  // A viewer sees no edit controls, and a forged edit is refused by the server.
  const viewer = await browser.newContext();
  const { page: viewerPage } = await signIn(viewer, env("VIEWER_EMAIL"), env("VIEWER_PASSWORD"));
  await viewerPage.goto(chamberUrl);
  check((await viewerPage.locator("text=Change interval").count()) === 0, "a viewer sees the interval form");
  check((await viewerPage.locator("form[action$='/pause']").count()) === 0, "a viewer sees the pause button");
  const csrf = await viewerPage.locator("input[name=csrf]").first().inputValue();
  const forged = await viewerPage.evaluate(
    async ({ path, csrf }) => {
      const response = await fetch(`${path}/interval`, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: `csrf=${csrf}&seconds=1`,
      });
      return response.status;
    },
    { path: chamberPath, csrf },
  );
  check(forged === 403, `a viewer's forged edit answered ${forged}`);
  await viewerPage.screenshot({ path: `${shots}/chamber-as-viewer.png`, fullPage: true });

  // A chamber made to fail, with a short health policy, turns down on the overview (live),
  // and its alert appears and is acknowledged.
  const failing = `${base}/console/chambers/${env("FAILING_CHAMBER")}`;
  await page.goto(failing);
  await page.fill("input[name=degraded_after]", "1");
  await page.fill("input[name=down_after_failures]", "1");
  await page.fill("input[name=down_after_seconds]", "0");
  await submit(page, "text=Save health policy");
  check((await page.locator("dl.config").textContent()).includes("down after 1 failures"), "the policy was saved");
  // Nothing listens on port 9 of the simulator's address: every poll fails to connect.
  const url = new URL(await page.locator("input[name=url]").inputValue());
  url.port = "9";
  await page.fill("input[name=url]", url.toString());
  await submit(page, "text=Save URL and timeout");
  // The overview's live stream is held back until the chamber is down: the change falls
  // between the page's rendering and the stream's start, and still reaches the page.
  let release;
  const held = new Promise((resolve) => (release = resolve));
  const live = (url) => url.pathname === "/console/live";
  await page.route(live, async (route) => {
    await held;
    await route.continue();
  });
  await page.goto(`${base}/console/`);
  const failingRow = page.locator(`tr[data-chamber="${env("FAILING_CHAMBER")}"] [data-health]`);
  await waitFor("the failing chamber down in the store", async () =>
    (await (await page.request.get(failing)).text()).includes('class="health health-down"'),
  );
  release();
  await waitFor("the failing chamber down on the overview", async () => (await failingRow.textContent()) === "down");
  await page.unroute(live);
  await page.screenshot({ path: `${shots}/overview-down.png`, fullPage: true });
  await waitFor("its alert open", async () => {
    await page.goto(`${base}/console/alerts`);
    return (await page.locator("tr[data-alert]").count()) > 0;
  });
  await page.fill("tr[data-alert] input[name=comment]", "Door left open; closed it");
  await submit(page, "button:has-text(\"Acknowledge\")");
  check(
    (await page.locator("tr[data-alert]").first().textContent()).includes("Door left open; closed it"),
    "the acknowledgement shows",
  );
  await page.screenshot({ path: `${shots}/alerts.png`, fullPage: true });

  // Signing out ends the session.
  await Promise.all([page.waitForURL(`${base}/console/sign-in`), page.click("text=Sign out")]);
  await page.goto(`${base}/console/`);
  check(page.url().endsWith("/console/sign-in"), "signed out, yet the overview opened");

  check(violations.length === 0, `console errors (CSP or script): ${violations.join("; ")}`);
  console.log("console browser test passed");
} finally {
  await browser.close();
}

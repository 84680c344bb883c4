// Running an organization from the console in Debian's Chromium, as an administrator does.
// Run by tests/tests/e2e/browser.rs against `chamberlain standalone --simulate 3`; every step
// throws on a failure, and each page is saved as a screenshot in SCREENSHOTS.
//
// An admin creates a section, imports a 50-row CSV with one bad row (the line is named, nothing
// is created), fixes it and imports; starts and ends a batch; creates a token, sees it once,
// revokes it and the token is refused at once; adds a viewer who sees no admin pages and whose
// forged admin request is refused; creates a webhook transmitter to a receiver started here,
// which gets a reading; downloads an export whose CSV matches the API's readings.
//
// Environment: CONSOLE (e.g. http://127.0.0.1:8080; the JSON API answers there too),
// ADMIN_EMAIL, ADMIN_PASSWORD, CHROMIUM, SCREENSHOTS, CHAMBER_URL (a simulated chamber's URL,
// for the imported chambers), RECEIVER_HOST (an address the egress policy lets webhooks reach),
// CHARTED_CHAMBER (the id of a chamber that has been polled for a while).
import { readFileSync } from "node:fs";
import { createServer } from "node:http";

import { base, check, env, launch, shots, signIn, submit, waitFor } from "./harness.mjs";

// A webhook receiver on the address the egress policy allows: records every POST.
const received = [];
const receiver = createServer((request, response) => {
  let body = "";
  request.on("data", (chunk) => (body += chunk));
  request.on("end", () => {
    received.push({ path: request.url, headers: request.headers, body });
    response.writeHead(204).end();
  });
});
await new Promise((resolve) => receiver.listen(0, env("RECEIVER_HOST"), resolve));
const receiverUrl = `http://${env("RECEIVER_HOST")}:${receiver.address().port}/hook`;

const browser = await launch();

// The JSON API, as a script outside the browser calls it.
async function api(path, token) {
  const response = await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${token}` } });
  return { status: response.status, body: await response.text() };
}

// 50 chambers in `section`; row `bad` (1-based) has an interval that does not parse.
function chambersCsv(section, bad) {
  const lines = ["section,name,url,interval,detectors"];
  for (let i = 1; i <= 50; i++) {
    const interval = i === bad ? "every now and then" : "5s";
    lines.push(`${section},imported-${String(i).padStart(2, "0")},${env("CHAMBER_URL")},${interval},/detectors/0/value=Temperature:°C;/detectors/1/value=Humidity:%`);
  }
  return lines.join("\n") + "\n";
}

async function importCsv(page, csv) {
  await page.goto(`${base}/console/import`);
  await page.setInputFiles("input[name=file]", {
    name: "chambers.csv",
    mimeType: "text/csv",
    buffer: Buffer.from(csv),
  });
  await submit(page, "button:has-text(\"Import\")");
  await page.locator(".import-result").waitFor();
  return (await page.locator(".import-result").textContent()).replace(/\s+/g, " ");
}

async function chambersIn(page, sectionId) {
  await page.goto(`${base}/console/?section=${sectionId}`);
  return page.locator("tr[data-chamber]").count();
}

try {
  const admin = await browser.newContext({ acceptDownloads: true });
  const { page, violations } = await signIn(admin, env("ADMIN_EMAIL"), env("ADMIN_PASSWORD"));

  // A section.
  await page.goto(`${base}/console/sections`);
  await page.fill("form.create-section input[name=name]", "Imported room");
  await submit(page, "text=Create section");
  const sectionRow = page.locator("tr[data-section]", { hasText: "Imported room" });
  check((await sectionRow.count()) === 1, "the new section is listed");
  const sectionId = await sectionRow.getAttribute("data-section");

  // An import with one bad row: its line is named (the header is line 1), nothing is created.
  let outcome = await importCsv(page, chambersCsv("Imported room", 27));
  check(outcome.includes("1 of 50 rows refused; nothing was imported"), `refused import: ${outcome}`);
  const refusedRow = page.locator(".import-result tr[data-line]");
  check((await refusedRow.count()) === 1, "one refused row");
  check((await refusedRow.getAttribute("data-line")) === "28", "the refused row is line 28");
  check((await refusedRow.textContent()).includes("interval"), "the refused column is interval");
  await page.screenshot({ path: `${shots}/import-refused.png`, fullPage: true });
  check((await chambersIn(page, sectionId)) === 0, "a refused import created chambers");
  // Fixed, and imported.
  outcome = await importCsv(page, chambersCsv("Imported room", null));
  check(outcome.includes("Imported 50 chambers of 50 rows"), `import: ${outcome}`);
  await page.screenshot({ path: `${shots}/import-done.png`, fullPage: true });
  check((await chambersIn(page, sectionId)) === 50, "50 chambers in the section");

  // A batch, started and ended.
  await page.goto(`${base}/console/sections`);
  await page.selectOption("form.start-batch select[name=section]", sectionId);
  await page.fill("form.start-batch input[name=name]", "Trial 1");
  await submit(page, "text=Start batch");
  await Promise.all([page.waitForURL(/\/console\/batches\//), page.click("text=Trial 1")]);
  check((await page.locator("h1").textContent()).includes("open"), "the batch is open");
  await submit(page, "text=End batch");
  check(!(await page.locator("h1").textContent()).includes("open"), "the batch ended");
  check((await page.locator("dl.config").textContent()).includes("slots read") ||
        (await page.locator("dl.config").textContent()).includes("no slots yet"), "the batch shows its coverage");
  // Charts of its first chamber over the batch's time: one per detector.
  await waitFor("the batch's charts", async () => (await page.locator(".charts .chart canvas").count()) === 2);
  await page.screenshot({ path: `${shots}/batch.png`, fullPage: true });

  // A token: shown once, works, revoked, refused at once.
  await page.goto(`${base}/console/users`);
  await page.fill("form.create-token input[name=name]", "browser check");
  await page.selectOption("form.create-token select[name=role]", "viewer");
  await submit(page, "text=Create token");
  const secret = (await page.locator("#token-secret").textContent()).trim();
  check(secret.startsWith("chm_"), `a token secret is shown: ${secret}`);
  await page.screenshot({ path: `${shots}/token-created.png`, fullPage: true });
  check((await api("/v1/chambers", secret)).status === 200, "the new token is accepted");
  // (Opened again, not reloaded: a reload would post the form again, creating another token.)
  await page.goto(`${base}/console/users`);
  check(!(await page.content()).includes(secret), "the secret is shown once only");
  const tokenRow = page.locator("tr[data-token]", { hasText: "browser check" });
  await submit(page, `tr[data-token="${await tokenRow.getAttribute("data-token")}"] button:has-text("Revoke")`);
  const refused = await api("/v1/chambers", secret);
  check(refused.status === 401, `the revoked token answered ${refused.status}`);

  // A viewer: no admin pages, and a forged admin request refused.
  await page.goto(`${base}/console/users`);
  await page.fill("form.add-user input[name=email]", "bench-viewer@lab.example");
  await page.fill("form.add-user input[name=name]", "Bench viewer");
  await page.selectOption("form.add-user select[name=role]", "viewer");
  await page.fill("form.add-user input[name=password]", "a viewer's own password");
  await submit(page, "text=Add user");
  check((await page.locator("tr[data-user]", { hasText: "bench-viewer@lab.example" }).count()) === 1, "the viewer is listed");
  const viewer = await browser.newContext();
  const { page: viewerPage, violations: viewerViolations } = await signIn(viewer, "bench-viewer@lab.example", "a viewer's own password");
  check((await viewerPage.locator("nav a[href='/console/transmitters']").count()) === 0, "a viewer sees the transmitters link");
  check((await viewerPage.locator("a[href='/console/import']").count()) === 0, "a viewer sees the import link");
  for (const path of ["/console/transmitters", "/console/import"]) {
    const response = await viewerPage.goto(`${base}${path}`);
    check(response.status() === 403, `a viewer opened ${path}: ${response.status()}`);
  }
  await viewerPage.goto(`${base}/console/users`);
  check((await viewerPage.locator("form.add-user").count()) === 0, "a viewer sees the add-user form");
  check((await viewerPage.locator("tr[data-user]").count()) === 0, "a viewer sees the users");
  await viewerPage.screenshot({ path: `${shots}/account-as-viewer.png`, fullPage: true });
  const viewerCsrf = await viewerPage.locator("input[name=csrf]").first().inputValue();
  const forged = await viewerPage.evaluate(async (csrf) => {
    const response = await fetch("/console/users", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: `csrf=${csrf}&email=intruder%40lab.example&name=Intruder&role=admin&password=intruder+password`,
    });
    return response.status;
  }, viewerCsrf);
  check(forged === 403, `a viewer's forged add-user answered ${forged}`);
  await page.goto(`${base}/console/users`);
  check(!(await page.content()).includes("intruder@lab.example"), "the forged user was added");

  // A webhook transmitter to the receiver: it gets a reading, and the page says it delivers.
  await page.goto(`${base}/console/transmitters`);
  await page.fill("form.create-transmitter input[name=name]", "lab receiver");
  await page.check("form.create-transmitter input[value=webhook]");
  await page.fill("form.create-transmitter input[name=url]", receiverUrl);
  await page.fill("form.create-transmitter input[name=secret]", "a shared secret for the hook");
  await page.check("form.create-transmitter input[name=readings]");
  await submit(page, "text=Create transmitter");
  check((await page.locator("tr[data-transmitter]", { hasText: "lab receiver" }).count()) === 1, "the transmitter is listed");
  await waitFor("a reading delivered to the receiver", async () => received.some((r) => r.body.includes("readings")), 60000);
  const delivery = received.find((r) => r.body.includes("readings"));
  check(JSON.parse(delivery.body), "the delivery is JSON");
  await waitFor("the transmitter shown delivering", async () => {
    await page.reload();
    return (await page.locator("tr[data-transmitter] .delivery").textContent()).includes("delivering");
  });
  await page.screenshot({ path: `${shots}/transmitters.png`, fullPage: true });

  // An export: the CSV downloaded from a chamber's page holds the API's readings of that range.
  const to = new Date(Date.now() - 5000);
  to.setMilliseconds(0);
  const from = new Date(to.getTime() - 30000);
  const chamber = env("CHARTED_CHAMBER");
  await page.goto(
    `${base}/console/chambers/${chamber}?from=${encodeURIComponent(from.toISOString())}&to=${encodeURIComponent(to.toISOString())}`,
  );
  // The link sits above the charts, so their drawing cannot move it under the click. Should no
  // download come, say what the link answers.
  const href = await page.getAttribute("a.download", "href");
  const [download] = await Promise.all([
    page.waitForEvent("download").catch(async (e) => {
      const answer = await page.request.get(new URL(href, page.url()).toString());
      throw new Error(
        `no download after clicking ${href} (page at ${page.url()}; the link answers ${answer.status()} ${answer.headers()["content-type"]}): ${e.message}`,
      );
    }),
    page.click("a.download"),
  ]);
  const csv = readFileSync(await download.path(), "utf8").trim().split("\n");
  check(csv[0] === "slot,chamber_id,detector_id,value,corrupted,batch_id", `CSV header: ${csv[0]}`);
  const fromCsv = new Map(
    csv.slice(1).map((line) => {
      const [slot, chamberId, detector, value] = line.split(",");
      check(chamberId === chamber, `a row of another chamber: ${line}`);
      return [`${Date.parse(slot)}|${detector}`, value === "" ? null : Number(value)];
    }),
  );
  const token = env("ADMIN_TOKEN");
  const fromApi = new Map();
  let pageToken = "";
  let sample = "";
  do {
    const query = new URLSearchParams({
      "selector.chamber_id": chamber,
      from: from.toISOString(),
      to: to.toISOString(),
      "page.page_size": "1000",
    });
    if (pageToken) query.set("page.page_token", pageToken);
    const answer = await api(`/v1/readings?${query}`, token);
    check(answer.status === 200, `the API's readings: ${answer.status} ${answer.body}`);
    const body = JSON.parse(answer.body);
    sample ||= answer.body.slice(0, 400);
    // The API prints proto field names (docs/API.md).
    for (const r of body.readings || []) fromApi.set(`${Date.parse(r.slot)}|${r.detector_id}`, r.value ?? null);
    pageToken = body.next_page_token || "";
  } while (pageToken);
  check(fromApi.size > 0, "the API has readings in the range");
  check(fromCsv.size === fromApi.size, `CSV rows ${fromCsv.size}, API readings ${fromApi.size}: ${sample} / ${csv.slice(0, 3).join(" | ")}`);
  for (const [key, value] of fromApi) {
    check(fromCsv.has(key) && fromCsv.get(key) === value, `reading ${key}: API ${value}, CSV ${fromCsv.get(key)}`);
  }

  // The viewer's refusals above are expected 403s; anything else is a CSP or script error.
  const unexpected = [...violations, ...viewerViolations.filter((v) => !v.includes("status of 403"))];
  check(unexpected.length === 0, `console errors (CSP or script): ${unexpected.join("; ")}`);
  console.log(`admin browser test passed: ${fromApi.size} readings matched, ${received.length} deliveries received`);
} finally {
  await browser.close();
  receiver.close();
}

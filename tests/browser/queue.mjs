// The queue on the console (apalis-board at /console/queue) in Debian's Chromium. Run by
// tests/tests/e2e/browser.rs against `chamberlain standalone --simulate 3`, and through Envoy
// against the distributed mode (the Redis queue), each with one more chamber
// whose endpoint never answers (its poll stays leased until its timeout): the installation's
// operator (the first admin) opens the view, follows its links under the sub-path, sees the
// worker and the stuck chamber's job; an organization admin and a viewer are refused. Every
// step throws on a failure; screenshots go to SCREENSHOTS.
//
// Environment: CONSOLE, ADMIN_EMAIL, ADMIN_PASSWORD (the installation's operator),
// ORG_ADMIN_EMAIL, ORG_ADMIN_PASSWORD, VIEWER_EMAIL, VIEWER_PASSWORD, STUCK_CHAMBER (the id of
// the chamber that never answers), WORKER (text naming the worker: `in-process`, or the Redis
// consumer's prefix), CHROMIUM, SCREENSHOTS.
import { base, check, env, launch, shots, signIn, waitFor } from "./harness.mjs";

const browser = await launch();
const board = `${base}/console/queue`;

try {
  // Through Envoy, the gateway was just restarted with the operators' setting.
  await waitFor("the console answering", async () => {
    try {
      return (await fetch(`${base}/console/sign-in`)).ok;
    } catch {
      return false;
    }
  });
  const operator = await browser.newContext();
  const { page, violations } = await signIn(operator, env("ADMIN_EMAIL"), env("ADMIN_PASSWORD"));
  // The board's own log stream answers, so it shows its backend as reachable.
  await page.goto(`${board}/`);
  await waitFor("the board's overview", async () => (await page.innerText("body")).includes("Running Jobs"));
  await waitFor("the board healthy", async () => (await page.innerText("body")).includes("Healthy"));
  await page.screenshot({ path: `${shots}/overview.png`, fullPage: true });

  // The app's own links navigate under the sub-path.
  await page.click("a:has-text('Workers')");
  await waitFor("the workers page under the mount", async () => page.url() === `${board}/workers`);
  const worker = env("WORKER");
  await waitFor("the worker", async () => (await page.innerText("main")).includes(worker));
  await page.screenshot({ path: `${shots}/workers.png`, fullPage: true });

  // The stuck chamber's job: running, held by the worker, its poll's chamber in its arguments.
  const stuck = env("STUCK_CHAMBER");
  await waitFor(
    "the stuck chamber's job",
    async () => {
      await page.goto(`${board}/tasks/Running`);
      await page.waitForSelector("main table a", { timeout: 5000 }).catch(() => null);
      for (const href of await page.$$eval("main table a", (links) => links.map((a) => a.getAttribute("href")))) {
        await page.goto(`${board}/tasks/Running`);
        await page.waitForSelector(`main table a[href="${href}"]`, { timeout: 5000 }).catch(() => null);
        if ((await page.locator(`main table a[href="${href}"]`).count()) === 0) continue;
        await page.click(`main table a[href="${href}"]`);
        await waitFor("the task page", async () => {
          const text = await page.innerText("main");
          return text.includes("Arguments") || text.includes("not found");
        }, 10000);
        if ((await page.innerText("main")).includes(stuck)) return true;
      }
      return false;
    },
    90000,
  );
  check(page.url().startsWith(`${board}/queues/polls/tasks/`), `the task page is under the mount: ${page.url()}`);
  const task = await page.innerText("main");
  check(task.includes("Running") && task.includes(worker), `the job is running on the worker: ${task}`);
  await page.screenshot({ path: `${shots}/stuck-job.png`, fullPage: true });

  // Pushing a task through the board's API is refused.
  const push = await page.evaluate(async () => {
    const answer = await fetch("/console/queue/api/v1/queues/polls/tasks", {
      method: "PUT",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    return answer.status;
  });
  check(push === 403, `a push through the board answered ${push}`);

  // A deep link opens as it was.
  await page.goto(`${board}/workers`);
  await waitFor("the deep link", async () => (await page.innerText("main")).includes(worker));

  const blocked = violations.filter((v) => /Content Security Policy|Refused/i.test(v));
  check(blocked.length === 0, `CSP violations: ${blocked.join("; ")}`);

  // An organization admin and a viewer are not the installation's operators.
  for (const [email, password] of [
    [env("ORG_ADMIN_EMAIL"), env("ORG_ADMIN_PASSWORD")],
    [env("VIEWER_EMAIL"), env("VIEWER_PASSWORD")],
  ]) {
    const context = await browser.newContext();
    const { page: other } = await signIn(context, email, password);
    const answer = await other.goto(`${board}/`);
    check(answer.status() === 403, `${email} opened the queue view: ${answer.status()}`);
    const text = await other.innerText("body");
    check(text.includes("only the installation's operators"), `${email} sees why: ${text}`);
    check(!text.includes(stuck), `${email} sees no job`);
    const api = await other.evaluate(async () => (await fetch("/console/queue/api/v1/tasks")).status);
    check(api === 403, `${email} read the board's API: ${api}`);
    await other.screenshot({ path: `${shots}/refused-${email.split("@")[0]}.png`, fullPage: true });
    await context.close();
  }
  console.log("queue browser test passed");
} finally {
  await browser.close();
}

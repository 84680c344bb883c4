// What the console's browser scripts share: their settings from the environment, checks that
// throw, waiting on a condition, Debian's Chromium, submitting a form and signing in.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

export const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
export const base = env("CONSOLE");
export const shots = env("SCREENSHOTS");
mkdirSync(shots, { recursive: true });

export function check(condition, message) {
  if (!condition) throw new Error(message);
}

export async function waitFor(what, predicate, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

export function launch() {
  return chromium.launch({
    executablePath: env("CHROMIUM"),
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-background-networking",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

// Submits a form by clicking `button` and waits for the page the answer leads to (the same URL
// for most console forms, so waiting for a URL would not wait at all).
export async function submit(page, button) {
  await Promise.all([page.waitForEvent("load"), page.click(button)]);
}

// A new page signed in as `email`, and the console errors (CSP, script) it logs.
export async function signIn(context, email, password) {
  const page = await context.newPage();
  const violations = [];
  page.on("console", (message) => {
    if (message.type() === "error") violations.push(`${message.text()} (${message.location().url})`);
  });
  await page.goto(`${base}/console/`);
  check(page.url().endsWith("/console/sign-in"), `no session should lead to sign-in, got ${page.url()}`);
  await page.fill("input[name=email]", email);
  await page.fill("input[name=password]", password);
  await Promise.all([page.waitForURL(`${base}/console/`), page.click("button[type=submit]")]);
  return { page, violations };
}

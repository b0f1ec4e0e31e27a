// Drives the deckhand console in Debian's headless Chromium through
// playwright-core (pinned by package-lock.json). Run by
// tests/console_browser.rs against a real `deckhand dev` (hub + agent).
// Every check waits for the real sign on the page; nothing sleeps.
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

const URL_ = process.env.DECKHAND_CONSOLE_URL;
const USER = process.env.DECKHAND_CONSOLE_USER;
const PASSWORD = process.env.DECKHAND_CONSOLE_PASSWORD;
const SHOTS = process.env.DECKHAND_SCREENSHOTS;
const BROWSER = process.env.DECKHAND_CHROMIUM || "/usr/bin/chromium";
let checks = 0;
function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
  checks++;
  console.log("ok " + checks + " - " + what);
}
async function shot(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, name + ".png") });
}

async function signInAttempt(page, user, password) {
  await page.fill("#user", user);
  await page.fill("#password", password);
  const answer = page.waitForResponse((r) => r.url().endsWith("/console/sign-in"));
  await page.click("#signin-button");
  return (await answer).status();
}

(async () => {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "deckhand-chromium-"));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: BROWSER,
    headless: true,
    ignoreHTTPSErrors: true, // the dev hub's own CA
    viewport: { width: 1280, height: 800 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.setDefaultTimeout(30000);
  page.on("pageerror", (e) => { console.log("page error: " + e.message); process.exitCode = 1; });
  try {
    await page.goto(URL_);
    await page.waitForSelector("#signin-form", { state: "visible" });
    await shot(page, "01-sign-in");

    // A wrong password is refused.
    check((await signInAttempt(page, USER, "not-the-password")) === 401, "wrong password answered 401");
    await page.waitForSelector("#signin-error:has-text('wrong user name or password')");
    check(await page.isHidden("#shell"), "wrong password: still signed out");
    // …and repeated failures for one name are rate limited.
    const statuses = [];
    for (let i = 0; i < 6; i++) statuses.push(await signInAttempt(page, "mallory", "guess-" + i));
    check(statuses.slice(0, 5).every((s) => s === 401), "first five wrong passwords: 401 " + statuses);
    check(statuses[5] === 429, "sixth try is rate limited (429): " + statuses);
    await page.waitForSelector("#signin-error:has-text('too many failed sign-ins')");
    await shot(page, "02-sign-in-rate-limited");

    // Sign in.
    check((await signInAttempt(page, USER, PASSWORD)) === 200, "right password signs in");
    await page.waitForSelector("#shell", { state: "visible" });
    await page.waitForSelector("#stat-online .n");
    check(Number(await page.textContent("#stat-online .n")) >= 1, "overview counts the dev agent online");
    const cookies = await ctx.cookies();
    const c = cookies.find((x) => x.name === "deckhand_console");
    check(c && c.httpOnly && c.secure && c.sameSite === "Strict", "session cookie is HttpOnly, Secure, SameSite=Strict");

    // A state-changing request without the CSRF token is refused; with it, it passes.
    const noCsrf = await page.evaluate(async () => {
      const r = await fetch("/console/api/TagResources", { method: "POST", body: new URLSearchParams({ ResourceType: "instance", "ResourceId.1": "x", "Tag.1.Key": "a" }) });
      return [r.status, (await r.json()).Code];
    });
    check(noCsrf[0] === 403 && noCsrf[1] === "Console.CsrfTokenInvalid", "request without CSRF token refused: " + noCsrf);
    const wrongCsrf = await page.evaluate(async () => (await fetch("/console/sign-out", { method: "POST", headers: { "X-CSRF-Token": "0".repeat(64) } })).status);
    check(wrongCsrf === 403, "sign-out with a wrong CSRF token refused");

    // Instances: the dev agent is online.
    await page.click("a[data-page=instances]");
    const row = page.locator("tr[data-instance]").first();
    await row.locator(".badge[data-status=Online]").waitFor();
    const instanceId = await row.getAttribute("data-instance");
    check(instanceId && instanceId.length > 3, "instances page lists the dev agent online: " + instanceId);
    // Tag editing: add two tags, remove one; the row updates by itself.
    for (const tag of ["env=dev", "team=platform"]) {
      page.once("dialog", (d) => d.accept(tag));
      await row.locator("button:has-text('+ tag')").click();
      await row.locator(`.tag:has-text('${tag}')`).waitFor();
    }
    page.once("dialog", (d) => d.accept("scratch=1"));
    await row.locator("button:has-text('+ tag')").click();
    await row.locator(".tag:has-text('scratch=1') button").click();
    await row.locator(".tag:has-text('scratch=1')").waitFor({ state: "detached" });
    check(true, "tags added and removed from the instances page");
    await shot(page, "04-instances");
    // The status filter is applied by the hub: Offline lists nobody, Online the agent.
    await page.selectOption("#instance-status", "Offline");
    await page.click("form.toolbar button[type=submit]");
    await page.locator("text=No instances match.").waitFor();
    await page.selectOption("#instance-status", "Online");
    await page.click("form.toolbar button[type=submit]");
    await page.locator(`tr[data-instance='${instanceId}'] .badge[data-status=Online]`).waitFor();
    check(true, "the Online/Offline filter is applied by the hub");

    // Overview screenshot after some activity is taken at the end.
    // Run a script and watch its live output appear before it finishes.
    await page.click("a[data-page=run]");
    await page.waitForSelector(`input.target[value='${instanceId}']`);
    await page.fill("#run-name", "console-live-demo");
    await page.fill("#run-script", "echo live-marker-one\nsleep 4\necho done-marker-two\n");
    await shot(page, "05-run");
    if (!(await page.isChecked(`input.target[value='${instanceId}']`))) await page.check(`input.target[value='${instanceId}']`);
    await page.click("#run-submit");
    await page.waitForURL(/#\/invocation\//);
    const liveOut = page.locator(`pre.output[data-instance='${instanceId}']`);
    await liveOut.filter({ hasText: "live-marker-one" }).waitFor();
    const during = await liveOut.textContent();
    check(!during.includes("done-marker-two"), "live output appeared while the run was still running");
    await shot(page, "06-invocation-running");
    await page.locator("#invoke-status .badge[data-status=Success]").waitFor();
    await liveOut.filter({ hasText: "done-marker-two" }).waitFor();
    check((await page.textContent(`tr[data-instance='${instanceId}'] td.exit`)).trim() === "0", "final output and exit code 0 shown");
    await shot(page, "07-invocation-finished");

    // Stop a long run.
    await page.click("a[data-page=run]");
    await page.waitForSelector(`input.target[value='${instanceId}']`);
    await page.fill("#run-name", "console-long-run");
    await page.fill("#run-script", "echo long-run-started\nsleep 600\n");
    if (!(await page.isChecked(`input.target[value='${instanceId}']`))) await page.check(`input.target[value='${instanceId}']`);
    await page.click("#run-submit");
    await page.waitForURL(/#\/invocation\//);
    const longId = decodeURIComponent(page.url().split("#/invocation/")[1]);
    await page.locator(`pre.output[data-instance='${instanceId}']`).filter({ hasText: "long-run-started" }).waitFor();
    await page.click("#stop");
    await page.locator("#invoke-status .badge[data-status=Stopped]").waitFor();
    await page.locator(`tr[data-instance='${instanceId}'] .badge[data-status=Terminated]`).waitFor();
    check(true, "long run stopped: invocation Stopped, instance Terminated");
    await shot(page, "08-invocation-stopped");

    // The invocation list updates by itself when a new invocation appears.
    await page.click("a[data-page=invocations]");
    await page.locator(`tr[data-invoke='${longId}'] .badge[data-status=Stopped]`).waitFor();
    const newId = await page.evaluate(async (id) => {
      const r = await fetch("/console/api/RunCommand", {
        method: "POST", headers: { "X-CSRF-Token": S.csrf },
        body: new URLSearchParams({ Type: "RunShellScript", CommandContent: "echo from-elsewhere", ContentEncoding: "PlainText", Name: "appears-live", "InstanceId.1": id }),
      });
      return (await r.json()).InvokeId;
    }, instanceId);
    await page.locator(`tr[data-invoke='${newId}'] .badge[data-status=Success]`).waitFor();
    check(true, "invocation list showed a new invocation and its final status without a reload");
    await shot(page, "09-invocations");

    // A schedule, for the Schedules page.
    const sched = await page.evaluate(async (id) => {
      const r = await fetch("/console/api/RunCommand", {
        method: "POST", headers: { "X-CSRF-Token": S.csrf },
        body: new URLSearchParams({ Type: "RunShellScript", CommandContent: "df -h /", ContentEncoding: "PlainText", Name: "disk-report", RepeatMode: "Period", Frequency: "rate(1h)", "InstanceId.1": id }),
      });
      return (await r.json()).InvokeId;
    }, instanceId);
    await page.click("a[data-page=schedules]");
    await page.locator(`a:has-text('${sched}')`).waitFor();
    const next = await page.locator(`tr:has(a:has-text('${sched}')) td:nth-child(5)`).textContent();
    check(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/.test(next.trim()), "schedules page lists the periodic invocation with its next fire: " + next);
    await shot(page, "10-schedules");

    await page.click("a[data-page=overview]");
    await page.locator("#stat-invocations .n").waitFor();
    check(Number(await page.textContent("#stat-invocations .n")) >= 4, "overview counts today's invocations");
    await page.locator("tr[data-invoke]").first().waitFor();
    await shot(page, "03-overview");

    // Sign out: the sign-in form returns and the session is gone.
    await page.click("#signout");
    await page.waitForSelector("#signin-form", { state: "visible" });
    const after = await page.evaluate(async () => (await fetch("/console/session")).status);
    check(after === 401, "after sign-out the session is refused");
    console.log(checks + " checks passed");
  } finally {
    await ctx.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
})().catch((e) => { console.error(e); process.exit(1); });

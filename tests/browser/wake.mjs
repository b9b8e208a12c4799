#!/usr/bin/env node
// wake.mjs — the browser path through Cove's app proxy, in a real (Debian) Chromium:
// app URL of a stopped workspace -> login form -> (starting page) -> the app, with a
// working WebSocket.
//
//   APP_URL=http://8080--web--admin.localhost:7080/ COVE_USER=admin COVE_PASSWORD=... \
//     node tests/browser/wake.mjs
//
// Env:
//   APP_URL          (required) app URL of a STOPPED workspace serving tests/fixtures/upstream.py
//   COVE_USER        user to log in as (default: admin)
//   COVE_PASSWORD    (required) that user's password
//   SCREENSHOT_DIR   where the screenshots go (default: target/browser, relative to the cwd)
//   CHROMIUM         browser executable (default: /usr/bin/chromium)
//   WAKE_DEADLINE_MS how long to wait after the login for the app and its WebSocket (default 60000)
//   HEADED=1         show the browser (debugging)
//
// Steps: goto APP_URL; expect the dashboard's login form (form[action="/login"] with inputs
// username, password); fill and submit; then expect the starting page (#cove-starting,
// text containing "Starting") or directly the app; wait for the title "cove test upstream"
// and #ws-result reading "echo: ping". Screenshots: 01-login.png, 02-starting.png (if seen),
// 03-app.png, failure.png. Prints one JSON line on stdout, e.g.
//   {"ok":true,"sawStartingPage":true,"wsResult":"echo: ping","loginMs":..,"appMs":..,...}
// Exit 0 only if the app loaded and its WebSocket echoed; 1 otherwise (reason on stderr and
// in "error"); 2 on bad usage.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const APP_TITLE = 'cove test upstream';
const env = process.env;
const appUrl = env.APP_URL;
const user = env.COVE_USER || 'admin';
const password = env.COVE_PASSWORD;
const shotDir = resolve(env.SCREENSHOT_DIR || 'target/browser');
const executablePath = env.CHROMIUM || '/usr/bin/chromium';
const deadlineMs = Number(env.WAKE_DEADLINE_MS || 60000);

if (!appUrl || !password) {
  console.error('wake.mjs: set APP_URL and COVE_PASSWORD (and COVE_USER if not admin)');
  process.exit(2);
}

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  console.error(`wake.mjs: cannot load playwright-core (${e.message}); run "npm ci" in tests/browser (scripts/install-deps does)`);
  process.exit(2);
}

const started = Date.now();
const since = () => Date.now() - started;
const summary = {
  ok: false,
  sawStartingPage: false,
  startingText: null,
  wsResult: null,
  title: null,
  appUrl,
  finalUrl: null,
  loginUrl: null,
  loginMs: null,
  startingMs: null,
  appMs: null,
  totalMs: null,
  navigations: [],
  screenshots: [],
  error: null,
};
// One-time tickets are short-lived and single-use, but keep them out of logs anyway.
const redact = (u) => u.replace(/([?&]ticket=)[^&#]*/g, '$1REDACTED');

mkdirSync(shotDir, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), 'cove-wake-chromium-'));
let context;
let page;

async function shot(name) {
  const path = join(shotDir, name);
  try {
    await page.screenshot({ path, fullPage: true, timeout: 10000 });
    summary.screenshots.push(path);
  } catch (e) {
    console.error(`wake.mjs: screenshot ${name} failed: ${e.message}`);
  }
}

// Evaluate in the page, tolerating navigations in between (the starting page reloads itself).
async function look() {
  try {
    return await page.evaluate(() => {
      const starting = document.getElementById('cove-starting');
      const ws = document.getElementById('ws-result');
      return {
        title: document.title,
        url: location.href,
        starting: starting ? starting.textContent.trim() : null,
        ws: ws ? ws.textContent.trim() : null,
        loginForm: !!document.querySelector('form[action="/login"] input[name="password"]'),
        text: document.body ? document.body.innerText.slice(0, 300) : '',
      };
    });
  } catch {
    return null; // the document went away mid-evaluation; try again
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function run() {
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: env.HEADED !== '1',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-quic',
      '--no-first-run',
      '--disable-component-update',
      '--disable-sync',
    ].filter((a) => a !== '--headless' || env.HEADED !== '1'),
    viewport: { width: 1100, height: 700 },
    timeout: 30000,
  });
  // Catch the starting page even if it shows for a moment only: every document reports it.
  let startingSeen = null;
  await context.exposeBinding('__coveWakeSawStarting', (_source, text) => {
    if (!startingSeen) startingSeen = { text, at: since() };
  });
  await context.addInitScript(() => {
    const check = () => {
      const el = document.getElementById('cove-starting');
      if (el) window.__coveWakeSawStarting(el.textContent.trim());
    };
    document.addEventListener('DOMContentLoaded', check);
  });
  page = context.pages()[0] || (await context.newPage());
  page.on('framenavigated', (f) => {
    if (f === page.mainFrame()) summary.navigations.push(redact(f.url()));
  });

  // 1. The app URL without a cookie: the dashboard's login form.
  const response = await page.goto(appUrl, { waitUntil: 'domcontentloaded', timeout: 30000 });
  const form = page.locator('form[action="/login"]');
  try {
    await form.locator('input[name="password"]').waitFor({ state: 'visible', timeout: 15000 });
  } catch {
    const seen = await look();
    throw new Error(
      `expected the login form after visiting ${appUrl}; got HTTP ${response ? response.status() : '?'} ` +
        `at ${redact(page.url())}, title ${JSON.stringify(seen?.title)}, text ${JSON.stringify(seen?.text)}`,
    );
  }
  if (!(await form.locator('input[name="username"]').count())) throw new Error('the login form has no username input');
  summary.loginUrl = redact(page.url());
  summary.loginMs = since();
  await shot('01-login.png');

  // 2. Log in; the dashboard sends the browser back to the app host through a ticket.
  await form.locator('input[name="username"]').fill(user);
  await form.locator('input[name="password"]').fill(password);
  const submitted = Date.now();
  const submit = form.locator('[type="submit"]');
  await Promise.all([
    page.waitForURL((u) => !u.pathname.startsWith('/login') || u.host !== new URL(summary.loginUrl).host, {
      timeout: 15000,
      waitUntil: 'commit',
    }).catch(() => {}),
    (await submit.count()) ? submit.first().click() : form.locator('input[name="password"]').press('Enter'),
  ]);

  // 3. The starting page (optional), then the app with a working WebSocket.
  const deadline = submitted + deadlineMs;
  let startingShot = false;
  let last = null;
  while (Date.now() < deadline) {
    const seen = await look();
    if (seen) {
      last = seen;
      if (seen.starting !== null && !startingSeen) startingSeen = { text: seen.starting, at: since() };
      if (seen.starting !== null && !startingShot) {
        startingShot = true;
        await shot('02-starting.png');
      }
      if (seen.loginForm && Date.now() - submitted > 5000) {
        throw new Error(`still on the login form 5 s after submitting (wrong password?): ${JSON.stringify(seen.text)}`);
      }
      if (seen.title === APP_TITLE && seen.ws === 'echo: ping') break;
    }
    await sleep(100);
  }
  if (startingSeen) {
    summary.sawStartingPage = true;
    summary.startingText = startingSeen.text;
    summary.startingMs = startingSeen.at;
    if (!/Starting/.test(startingSeen.text)) throw new Error(`#cove-starting does not say "Starting": ${JSON.stringify(startingSeen.text)}`);
  }
  summary.title = last?.title ?? null;
  summary.wsResult = last?.ws ?? null;
  summary.finalUrl = redact(page.url());
  if (!last || last.title !== APP_TITLE) {
    throw new Error(
      `the app did not appear within ${deadlineMs} ms of the login: title ${JSON.stringify(last?.title)} ` +
        `at ${summary.finalUrl}, text ${JSON.stringify(last?.text)}`,
    );
  }
  if (last.ws !== 'echo: ping') {
    throw new Error(`the app loaded but its WebSocket did not echo within the deadline: #ws-result is ${JSON.stringify(last.ws)}`);
  }
  summary.appMs = since();
  await shot('03-app.png');
  summary.ok = true;
}

let code = 0;
try {
  await run();
} catch (e) {
  code = 1;
  summary.error = e.message.split('\n')[0];
  console.error(`wake.mjs: FAILED: ${e.message}`);
  if (page) await shot('failure.png');
} finally {
  summary.totalMs = since();
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(summary));
process.exit(code);

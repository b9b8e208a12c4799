#!/usr/bin/env node
// dashboard.mjs — Cove's web dashboard in a real (Debian) Chromium: log in, create a
// workspace through the wizard, watch it reach Running without a reload (server-sent
// events), open its terminal and run a command, stop it (confirming) and watch it stop,
// read the usage page, set a secret on the Secrets page and see it listed without its
// value; then log out and in as another member, who sees neither the
// workspace in their list nor its page (404).
//
//   DASH_URL=http://localhost:7080 WS_NAME=dash COVE_PASSWORD=... \
//     MEMBER_USER=bob MEMBER_PASSWORD=... node tests/browser/dashboard.mjs
//
// Env: DASH_URL, WS_NAME, COVE_PASSWORD, MEMBER_USER, MEMBER_PASSWORD (required),
// COVE_USER (default admin), SCREENSHOT_DIR (default target/browser), CHROMIUM (default
// /usr/bin/chromium), DEADLINE_MS (default 90000).
// Screenshots: dashboard-01-empty.png, -02-wizard.png, -03-running.png, -04-terminal.png,
// -05-stopped.png, -06-usage.png, -07-narrow.png, -08-member.png, -09-secrets.png,
// -10-workspace-secrets.png, -11-sessions.png,
// dash-failure.png. SECRET_NAME / SECRET_VALUE (defaults DASH_TOKEN / a fixed string):
// the secret the Secrets page sets.
// Prints one JSON line (with "posts", the forms the browser sent, for diagnosis); exit 0
// only if every step passed (frame: session.mjs).
import { session } from './session.mjs';

const env = process.env;
const base = (env.DASH_URL || '').replace(/\/$/, '');
const wsName = env.WS_NAME;
const deadlineMs = Number(env.DEADLINE_MS || 90000);
if (!base || !wsName || !env.COVE_PASSWORD || !env.MEMBER_USER || !env.MEMBER_PASSWORD) {
  console.error('dashboard.mjs: set DASH_URL, WS_NAME, COVE_PASSWORD, MEMBER_USER and MEMBER_PASSWORD');
  process.exit(2);
}

const summary = {
  ok: false,
  emptyState: false,
  sawBeforeRunning: null,
  sawBeforeStopped: null,
  runningLive: false,
  workspaceId: null,
  terminal: null,
  stoppedLive: false,
  usageRow: null,
  chart: false,
  secretListed: false,
  secretKind: null,
  secretValueInPage: null,
  secretFieldEmpty: null,
  frozenBeforeRefresh: null,
  frozenAfterRefresh: false,
  workspacePageHasValue: null,
  sessionsMarked: null,
  sessionAgent: null,
  memberListHasIt: null,
  memberPageStatus: null,
  memberIdPageStatus: null,
  error: null,
};
const secretName = env.SECRET_NAME || 'DASH_TOKEN';
const secretValue = env.SECRET_VALUE || 'dash-secret-value-5b2e';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, f) {
  const deadline = Date.now() + deadlineMs;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await f();
      if (last) return last;
    } catch (e) {
      last = e.message; // navigating
    }
    await sleep(200);
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

await session('dash', summary, { width: 1100, height: 800 }, async ({ page, shot, logIn }) => {
  page.on('dialog', (d) => d.accept());
  summary.posts = [];
  page.on('request', (r) => { if (r.method() === 'POST') summary.posts.push(r.url()); });
  page.on('console', (m) => { if (m.type() === 'error') console.error(`console: ${m.text()}`); });

  // Log in as the admin; an empty list says what to do.
  await logIn(`${base}/`);
  await page.locator('h1', { hasText: 'Workspaces' }).waitFor({ timeout: 30000 });
  summary.emptyState = await page.locator('.empty', { hasText: 'no workspaces yet' }).isVisible();
  await shot('dashboard-01-empty.png');

  // The wizard, driven with labels as a person (or a screen reader) would.
  await page.getByRole('link', { name: 'New workspace' }).first().click();
  await page.getByLabel('Workspace name').fill(wsName);
  await page.getByLabel('Just an image').check();
  await page.locator('input[name="size"]').first().check();
  await page.getByLabel('Stop it after this long without use').selectOption({ index: 1 });
  await shot('dashboard-02-wizard.png');
  await page.getByRole('button', { name: 'Create and start' }).click();
  await page.waitForURL(`${base}/w/${wsName}`, { timeout: 30000 });

  // Running arrives over the event stream: the page is never reloaded (the marker stays).
  const state = page.locator('#ws-state');
  summary.sawBeforeRunning = (await state.textContent()).trim();
  await page.evaluate(() => { window.__coveMarker = 'same page'; });
  await until('the state to read Running', async () => /^Running$/.test((await state.textContent()).trim()));
  summary.runningLive = (await page.evaluate(() => window.__coveMarker)) === 'same page';
  summary.workspaceId = (await page.locator('#ws-id').textContent()).trim();
  await shot('dashboard-03-running.png');

  // The terminal, through the app host (the dashboard's session gets it a ticket).
  await page.locator('#open-term').click();
  await page.locator('.xterm-helper-textarea').waitFor({ state: 'attached', timeout: deadlineMs });
  const screen = async () => page.evaluate(() => document.querySelector('.xterm-rows')?.innerText || '');
  // The page drops keystrokes until its WebSocket is open, and the shell's prompt comes over
  // that socket: type once it shows. A try whose start was dropped anyway can leave the
  // shell in an open quote, where every retyped line (two quotes) keeps it; Ctrl+C first
  // cancels such a partial line.
  await until("the shell's prompt", async () => (await screen()).trim() !== '');
  const typed = await until('the shell to answer', async () => {
    await page.locator('.xterm-helper-textarea').focus();
    await page.keyboard.press('Control+C');
    await page.keyboard.type('echo "dash-$((6*7))"');
    await page.keyboard.press('Enter');
    for (let i = 0; i < 15; i++) {
      const text = await screen();
      if (text.includes('dash-42')) return text;
      await sleep(200);
    }
    return null;
  });
  summary.terminal = typed.includes('dash-42') ? 'dash-42' : null;
  await shot('dashboard-04-terminal.png');

  // Stop it from its page (the confirmation is accepted), and watch it stop live.
  await page.goto(`${base}/w/${wsName}`, { waitUntil: 'domcontentloaded' });
  const posted = page.waitForEvent('framenavigated', { timeout: 30000 });
  await page.locator('#action-stopped').click();
  await posted;
  await page.waitForLoadState('domcontentloaded');
  summary.sawBeforeStopped = (await state.textContent()).trim();
  await page.evaluate(() => { window.__coveMarker = 'same page'; });
  await until('the state to read Stopped', async () => /^Stopped$/.test((await state.textContent()).trim()));
  summary.stoppedLive = (await page.evaluate(() => window.__coveMarker)) === 'same page';
  await shot('dashboard-05-stopped.png');

  // Usage this month: a row for the workspace and the chart.
  await page.getByRole('link', { name: 'Usage' }).click();
  const row = page.locator(`tr[data-usage="${wsName}"]`);
  await row.waitFor({ timeout: 30000 });
  summary.usageRow = (await row.innerText()).replace(/\s+/g, ' ').trim();
  summary.chart = await page.locator('svg.chart').isVisible();
  await shot('dashboard-06-usage.png');

  // The Secrets page: set an environment variable through its labelled form; it is listed
  // by name and kind, and its value is in no part of the page (nor in the field again).
  await page.getByRole('link', { name: 'Secrets' }).click();
  await page.locator('h1', { hasText: 'Secrets' }).waitFor({ timeout: 30000 });
  await page.getByLabel('Name', { exact: true }).fill(secretName);
  await page.getByLabel('Value', { exact: true }).fill(secretValue);
  await page.getByRole('button', { name: 'Set variable' }).click();
  const secretRow = page.locator(`tr[data-secret="${secretName}"]`);
  await secretRow.waitFor({ timeout: 30000 });
  summary.secretListed = true;
  summary.secretKind = (await secretRow.locator('td[data-label="Kind"]').innerText()).trim();
  summary.secretValueInPage = (await page.content()).includes(secretValue);
  summary.secretFieldEmpty = (await page.getByLabel('Value', { exact: true }).inputValue()) === '';
  await shot('dashboard-09-secrets.png');

  // The workspace was made before the secret: "Refresh secrets" on its page takes it.
  await page.goto(`${base}/w/${wsName}`, { waitUntil: 'domcontentloaded' });
  summary.frozenBeforeRefresh = (await page.locator('#secrets').innerText()).includes(secretName);
  await page.getByRole('button', { name: 'Refresh secrets' }).click();
  await until('the frozen set to list the secret', async () =>
    (await page.locator('#frozen').innerText()).includes(secretName));
  summary.frozenAfterRefresh = true;
  summary.workspacePageHasValue = (await page.content()).includes(secretValue);
  await page.locator('#sharing').scrollIntoViewIfNeeded();
  await shot('dashboard-10-workspace-secrets.png');

  // The Sessions page: this browser's login is listed and marked.
  await page.getByRole('link', { name: 'Sessions', exact: true }).click();
  await page.locator('h1', { hasText: 'Sessions' }).waitFor({ timeout: 30000 });
  const mine = page.locator('tr[data-session]', { has: page.locator('.badge', { hasText: 'this session' }) });
  summary.sessionsMarked = await mine.count();
  summary.sessionAgent = (await mine.first().locator('td[data-label="User agent"]').innerText()).trim();
  await shot('dashboard-11-sessions.png');

  // A phone-sized screen: the list stacks.
  await page.setViewportSize({ width: 390, height: 800 });
  await page.goto(`${base}/`, { waitUntil: 'domcontentloaded' });
  await page.locator(`a[href="/w/${wsName}"]`).waitFor({ timeout: 30000 });
  await shot('dashboard-07-narrow.png');
  await page.setViewportSize({ width: 1100, height: 800 });

  // Log out (a form with its CSRF token), log in as another member.
  await page.getByRole('button', { name: 'Log out' }).click();
  await page.waitForURL(/\/login/, { timeout: 30000 });
  await page.locator('input[name="username"]').fill(env.MEMBER_USER);
  await page.locator('input[name="password"]').fill(env.MEMBER_PASSWORD);
  await page.locator('input[name="password"]').press('Enter');
  await page.locator('h1', { hasText: 'Workspaces' }).waitFor({ timeout: 30000 });
  summary.memberListHasIt = (await page.locator('#ws-list').innerHTML()).includes(wsName);
  const byName = await page.goto(`${base}/w/${wsName}`, { waitUntil: 'domcontentloaded' });
  summary.memberPageStatus = byName.status();
  const byId = await page.goto(`${base}/w/${summary.workspaceId}`, { waitUntil: 'domcontentloaded' });
  summary.memberIdPageStatus = byId.status();
  await shot('dashboard-08-member.png');
});

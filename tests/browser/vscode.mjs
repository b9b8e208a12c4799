#!/usr/bin/env node
// vscode.mjs — VS Code in the browser through Cove, in a real (Debian) Chromium: the code
// address of a workspace -> login -> the workbench on ~/project -> the integrated terminal
// runs a command typed into it (which writes ~/project/vscode-proof.txt; the caller checks
// the file inside the workspace, since VS Code draws its terminal on a canvas).
//
//   CODE_URL=http://code--api--admin.localhost:7080/ COVE_PASSWORD=... node tests/browser/vscode.mjs
//
// Env: CODE_URL, COVE_PASSWORD (required), COVE_USER (default admin), SCREENSHOT_DIR
// (default target/browser), CHROMIUM (default /usr/bin/chromium). Screenshots:
// vscode-01-workbench.png, vscode-02-terminal.png, vscode-failure.png. Prints one JSON line.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const env = process.env;
if (!env.CODE_URL || !env.COVE_PASSWORD) {
  console.error('vscode.mjs: set CODE_URL and COVE_PASSWORD');
  process.exit(2);
}
const { chromium } = await import('playwright-core');
const shotDir = resolve(env.SCREENSHOT_DIR || 'target/browser');
mkdirSync(shotDir, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), 'cove-vscode-chromium-'));
const summary = { ok: false, folder: null, error: null };
let context;
let page;
const shot = (name) => page.screenshot({ path: join(shotDir, name), timeout: 10000 }).catch(() => {});

async function run() {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic', '--no-first-run'],
    viewport: { width: 1200, height: 800 },
  });
  page = context.pages()[0] || (await context.newPage());
  await page.goto(env.CODE_URL, { waitUntil: 'domcontentloaded', timeout: 30000 });
  const form = page.locator('form[action="/login"]');
  await form.locator('input[name="password"]').waitFor({ state: 'visible', timeout: 15000 });
  await form.locator('input[name="username"]').fill(env.COVE_USER || 'admin');
  await form.locator('input[name="password"]').fill(env.COVE_PASSWORD);
  await form.locator('input[name="password"]').press('Enter');
  // The workbench, with the project folder open in the explorer.
  await page.locator('.monaco-workbench').waitFor({ timeout: 90000 });
  await page.locator('.explorer-folders-view, .pane-header[aria-label*="project" i], .monaco-workbench').first().waitFor({ timeout: 30000 });
  summary.folder = new URL(page.url()).searchParams.get('folder');
  await shot('vscode-01-workbench.png');
  // The integrated terminal (Ctrl+`), then a command whose effect the caller checks.
  const deadline = Date.now() + 60000;
  while (Date.now() < deadline && !(await page.locator('.terminal-wrapper, .xterm').count())) {
    await page.keyboard.press('Control+Backquote');
    await page.waitForTimeout(2000);
  }
  await page.locator('.xterm').first().waitFor({ timeout: 30000 });
  await page.waitForTimeout(2000); // the shell's prompt
  await page.locator('.xterm').first().click();
  await page.keyboard.type('echo "typed in vscode $((6*7))" > ~/project/vscode-proof.txt');
  await page.keyboard.press('Enter');
  await page.waitForTimeout(1500);
  await shot('vscode-02-terminal.png');
  summary.ok = true;
}

let code = 0;
try {
  await run();
} catch (e) {
  code = 1;
  summary.error = e.message.split('\n')[0];
  console.error(`vscode.mjs: FAILED: ${e.message}`);
  if (page) await shot('vscode-failure.png');
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(summary));
process.exit(code);

// session.mjs — what terminal.mjs and vscode.mjs share: one headless Debian Chromium with a
// throw-away profile, Cove's login form, screenshots, and the run-report-exit frame (one
// JSON summary line on stdout; exit 0 only if the steps passed, 1 otherwise).
//
// Env: COVE_USER (default admin), COVE_PASSWORD, SCREENSHOT_DIR (default target/browser),
// CHROMIUM (default /usr/bin/chromium).
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const env = process.env;

/// Runs `steps({ page, shot, logIn })` in a fresh browser and reports `summary`.
/// `name` prefixes messages and the failure screenshot (`<name>-failure.png`).
export async function session(name, summary, viewport, steps) {
  const { chromium } = await import('playwright-core');
  const shotDir = resolve(env.SCREENSHOT_DIR || 'target/browser');
  mkdirSync(shotDir, { recursive: true });
  const profile = mkdtempSync(join(tmpdir(), `cove-${name}-chromium-`));
  let context;
  let page;
  const shot = async (file) => {
    try {
      await page.screenshot({ path: join(shotDir, file), timeout: 10000 });
    } catch (e) {
      console.error(`${name}.mjs: screenshot ${file} failed: ${e.message}`);
    }
  };
  // The address of an app host without a cookie: the dashboard's login form, then back.
  const logIn = async (url, beforeSubmit) => {
    await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 30000 });
    const form = page.locator('form[action="/login"]');
    await form.locator('input[name="password"]').waitFor({ state: 'visible', timeout: 15000 });
    if (beforeSubmit) await beforeSubmit();
    await form.locator('input[name="username"]').fill(env.COVE_USER || 'admin');
    await form.locator('input[name="password"]').fill(env.COVE_PASSWORD);
    await form.locator('input[name="password"]').press('Enter');
  };
  let code = 0;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: env.CHROMIUM || '/usr/bin/chromium',
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic', '--no-first-run'],
      viewport,
    });
    page = context.pages()[0] || (await context.newPage());
    await steps({ page, shot, logIn });
    summary.ok = true;
  } catch (e) {
    code = 1;
    summary.error = e.message.split('\n')[0];
    console.error(`${name}.mjs: FAILED: ${e.message}`);
    if (page) await shot(`${name}-failure.png`);
  } finally {
    if (context) await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  }
  console.log(JSON.stringify(summary));
  process.exit(code);
}

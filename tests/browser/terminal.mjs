#!/usr/bin/env node
// terminal.mjs — the web terminal in a real (Debian) Chromium, through Cove's proxy:
// term URL of a STOPPED workspace -> login form -> (starting page) -> the terminal; typed
// input runs in the workspace's shell; a reload reattaches to the same shell and replays
// its scrollback.
//
//   TERM_URL=http://term--web--admin.localhost:7080/ COVE_PASSWORD=... node tests/browser/terminal.mjs
//
// Env: TERM_URL and COVE_PASSWORD (required), COVE_USER (default admin), SCREENSHOT_DIR
// (default target/browser), CHROMIUM (default /usr/bin/chromium), DEADLINE_MS (default 60000).
// Screenshots: term-01-login.png, term-02-shell.png, term-03-reloaded.png, term-failure.png.
// Prints one JSON line; exit 0 only if every step passed (frame: session.mjs).
import { session } from './session.mjs';

const env = process.env;
const termUrl = env.TERM_URL;
const deadlineMs = Number(env.DEADLINE_MS || 60000);
if (!termUrl || !env.COVE_PASSWORD) {
  console.error('terminal.mjs: set TERM_URL and COVE_PASSWORD');
  process.exit(2);
}

const summary = { ok: false, sawStartingPage: false, shell: null, replayed: false, sameShell: false, error: null };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

await session('term', summary, { width: 1000, height: 600 }, async ({ page, shot, logIn }) => {
  // The terminal's visible text (xterm's DOM renderer), or null while there is none.
  const screenText = async () => {
    try {
      return await page.evaluate(() => {
        if (document.getElementById('cove-starting')) return { starting: true, text: '' };
        const rows = document.querySelector('.xterm-rows');
        return rows ? { starting: false, text: rows.innerText } : null;
      });
    } catch {
      return null; // navigating
    }
  };
  const waitForText = async (what, pred) => {
    const deadline = Date.now() + deadlineMs;
    let last = null;
    while (Date.now() < deadline) {
      const seen = await screenText();
      if (seen?.starting) summary.sawStartingPage = true;
      if (seen && !seen.starting) {
        last = seen.text;
        if (pred(seen.text)) return seen.text;
      }
      await sleep(100);
    }
    throw new Error(`timed out waiting for ${what}; the terminal showed ${JSON.stringify((last || '').slice(-400))}`);
  };
  const type = async (text) => {
    await page.locator('.xterm-helper-textarea').focus();
    await page.keyboard.type(text);
    await page.keyboard.press('Enter');
  };

  await logIn(termUrl, () => shot('term-01-login.png'));

  // The page drops keystrokes until its WebSocket is open; the shell's prompt comes over
  // that socket, so once it shows, what is typed reaches the shell.
  await waitForText("the shell's prompt", (t) => t.trim() !== '');
  // The shell answers: a marker computed by the shell (so the echo of the typed line
  // cannot match), and its pid, to tell the same shell after the reload.
  await type('M=$((6*7)); echo "marker-$M pid-$$"');
  const text = await waitForText('the marker', (t) => /marker-42 pid-\d+/.test(t));
  summary.shell = text.match(/marker-42 pid-(\d+)/)[0];
  await shot('term-02-shell.png');

  // A reload reattaches: the scrollback comes back, and the shell is the same one.
  await page.reload({ waitUntil: 'domcontentloaded' });
  await waitForText('the replayed scrollback', (t) => t.includes(summary.shell));
  summary.replayed = true;
  await type('echo "again-$M pid-$$"');
  const pid = summary.shell.split(' ')[1];
  await waitForText('the same shell', (t) => t.includes(`again-42 ${pid}`));
  summary.sameShell = true;
  await shot('term-03-reloaded.png');
});

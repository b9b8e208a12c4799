#!/usr/bin/env node
// vscode.mjs — VS Code in the browser through Cove, in a real (Debian) Chromium: the code
// address of a workspace -> login -> the workbench on ~/project -> the integrated terminal
// runs a command typed into it (which writes ~/project/vscode-proof.txt: the script waits
// for it in the explorer, the caller checks its content and owner inside the workspace).
//
//   CODE_URL=http://code--api--admin.localhost:7080/ COVE_PASSWORD=... node tests/browser/vscode.mjs
//
// Env: CODE_URL, COVE_PASSWORD (required), COVE_USER (default admin), SCREENSHOT_DIR
// (default target/browser), CHROMIUM (default /usr/bin/chromium). Screenshots:
// vscode-01-workbench.png, vscode-02-terminal.png, vscode-failure.png. Prints one JSON line
// (frame: session.mjs).
import { session } from './session.mjs';

const env = process.env;
if (!env.CODE_URL || !env.COVE_PASSWORD) {
  console.error('vscode.mjs: set CODE_URL and COVE_PASSWORD');
  process.exit(2);
}
const summary = { ok: false, folder: null, typed: false, error: null };

await session('vscode', summary, { width: 1200, height: 800 }, async ({ page, shot, logIn }) => {
  await logIn(env.CODE_URL);
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
  // Keys typed before the shell is attached are lost, and VS Code draws the terminal on a
  // canvas: type the command, then watch the explorer for the file it makes; type again
  // (after Ctrl+C clears a half-typed line) until the file shows, within the deadline.
  const proof = page.locator('.explorer-folders-view .monaco-list-row', { hasText: 'vscode-proof.txt' });
  const typing = Date.now() + 90000;
  for (;;) {
    await page.locator('.xterm').first().click();
    await page.keyboard.press('Control+c');
    // Written aside, then moved only if it holds the line: a command that lost its first
    // keys makes no proof file (or a syntax error), never an empty one.
    await page.keyboard.type('echo "typed in vscode $((6*7))" | tee /tmp/vscode-proof >/dev/null && test -s /tmp/vscode-proof && mv /tmp/vscode-proof ~/project/vscode-proof.txt');
    await page.keyboard.press('Enter');
    try {
      await proof.first().waitFor({ timeout: 10000 });
      break;
    } catch (e) {
      if (Date.now() > typing) throw new Error(`the integrated terminal never ran the typed command: ${e.message}`);
    }
  }
  summary.typed = true;
  await shot('vscode-02-terminal.png');
});

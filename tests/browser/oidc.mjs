#!/usr/bin/env node
// oidc.mjs — "Sign in with <provider>" in a real (Debian) Chromium: Cove's login page ->
// the provider (tests/oidc/provider.mjs) -> pick the account -> back on Cove's dashboard,
// logged in. Run by crates/server/tests/oidc.rs; proves the cookies' attributes carry the
// state across the sites as a browser applies them (SameSite, host-only).
//
// Env: COVE_URL (the dashboard), PROVIDER_NAME (the button's), OIDC_SUB (the account to
// pick at the provider), EXPECT_USER (the Cove user it is), SCREENSHOT_DIR, CHROMIUM.
// Screenshots: oidc-login.png, oidc-provider.png, oidc-dashboard.png, oidc-failure.png.
import { session } from './session.mjs';

const env = process.env;
const summary = { ok: false };

await session('oidc', summary, { width: 420, height: 800 }, async ({ page, shot }) => {
  await page.goto(`${env.COVE_URL}/login`, { waitUntil: 'domcontentloaded', timeout: 30000 });
  const button = page.getByRole('button', { name: `Sign in with ${env.PROVIDER_NAME}` });
  await button.waitFor({ state: 'visible', timeout: 15000 });
  await shot('oidc-login.png');
  await button.click();
  const account = page.getByRole('link', { name: env.OIDC_SUB, exact: true });
  await account.waitFor({ state: 'visible', timeout: 15000 });
  summary.provider = new URL(page.url()).origin;
  await shot('oidc-provider.png');
  await account.click();
  await page.waitForURL((u) => u.href.startsWith(env.COVE_URL) && u.pathname === '/', { timeout: 30000 });
  const text = await page.locator('body').innerText();
  if (!text.includes(`Logged in as ${env.EXPECT_USER}.`)) throw new Error(`not logged in as ${env.EXPECT_USER}: ${text}`);
  summary.landed = page.url();
  await shot('oidc-dashboard.png');
});

// Debian's chromium, driven by playwright-core: never a downloaded browser.

import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';

const LAUNCH_ATTEMPTS = 2;
const LAUNCH_TIMEOUT_MS = 55000;

// A browser that has not started within the timeout is tried once more: a
// first start on a new or busy machine can stall (font caches, profile
// set-up) where a second one does not. Both attempts fit in one test's
// 120 s budget.
export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) throw new Error(`no browser at ${CHROMIUM}: see tests/browser/run.sh`);
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await chromium.launch({
        executablePath: CHROMIUM,
        headless: true,
        timeout: LAUNCH_TIMEOUT_MS,
        args: [
          '--no-sandbox',
          '--disable-gpu',
          '--disable-background-networking',
          '--disable-quic',
          '--no-first-run',
          '--disable-component-update',
          '--disable-sync',
        ],
      });
    } catch (err) {
      if (attempt >= LAUNCH_ATTEMPTS) throw err;
      const first = String(err.message ?? err).split('\n')[0];
      console.error(`# chromium did not start (attempt ${attempt} of ${LAUNCH_ATTEMPTS}): ${first}`);
    }
  }
}

/**
 * A new browser context (its own storage: one user) with a page that
 * records script errors and dialogs, so tests can assert there were none.
 */
export async function newUser(browser, baseURL, { name, viewport = { width: 1280, height: 800 }, colorScheme = 'light' } = {}) {
  const context = await browser.newContext({ baseURL, viewport, colorScheme });
  context.setDefaultTimeout(10000);
  if (name) {
    await context.addInitScript((n) => {
      if (!localStorage.getItem('confab.name')) localStorage.setItem('confab.name', n);
    }, name);
  }
  const page = await context.newPage();
  const user = { name, context, page, errors: [], dialogs: [] };
  page.on('pageerror', (err) => user.errors.push(String(err)));
  page.on('console', (msg) => {
    if (msg.type() === 'error') user.errors.push(msg.text());
  });
  page.on('dialog', (dialog) => {
    user.dialogs.push(dialog.message());
    dialog.dismiss().catch(() => {});
  });
  return user;
}

// Debian's chromium, driven by playwright-core: never a downloaded browser.

import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';

export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) throw new Error(`no browser at ${CHROMIUM}: see tests/browser/run.sh`);
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30000,
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

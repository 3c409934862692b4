// One server and one browser per test file; each test makes its own
// users (browser contexts) and closes them.

import { before, after, afterEach } from 'node:test';
import { ConfabServer } from './server.mjs';
import { launchBrowser, newUser } from './browser.mjs';

export function useServerAndBrowser() {
  const env = { server: null, browser: null, users: [] };
  before(async () => {
    env.server = await new ConfabServer().start();
    env.browser = await launchBrowser();
  });
  afterEach(async () => {
    await Promise.all(env.users.map((u) => u.context.close().catch(() => {})));
    env.users = [];
  });
  after(async () => {
    await env.browser?.close();
    await env.server?.stop();
  });
  /** A new user: its own browser context (storage), named `name`. */
  env.user = async (name, options = {}) => {
    const u = await newUser(env.browser, env.server.url, { name, ...options });
    env.users.push(u);
    return u;
  };
  return env;
}

let counter = 0;
/** A room name no other test uses. */
export function uniqueRoom(label) {
  counter += 1;
  return `${label}-${process.pid}-${counter}`;
}

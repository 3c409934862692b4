// Helpers that drive the chat page the way a person does, and wait on
// what the page shows (never on fixed sleeps).

import assert from 'node:assert/strict';

export const roomUrl = (room) => `/web/${encodeURIComponent(room)}/`;

/** Opens a room page and waits until it is connected and the room joined. */
export async function openRoom(user, room) {
  await user.page.goto(roomUrl(room));
  await waitConnected(user);
  await user.page.locator('#history-status').filter({ hasText: /\S/ }).waitFor();
}

export async function waitConnected(user) {
  await user.page.locator('#status[data-state="open"]').waitFor();
}

/** Types `text` in the message box and presses Enter. */
export async function send(user, text) {
  const box = user.page.locator('#composer-input');
  await box.fill(text);
  await box.press('Enter');
}

/** Sends and waits until the server has stored it (no longer pending). */
export async function sendAndWait(user, text) {
  await send(user, text);
  await waitForBody(user, text);
}

/** The confirmed messages shown: `{id, from, body, own, grouped}`. */
export function shownMessages(user) {
  return user.page.$$eval('#messages .msg:not(.pending)', (items) =>
    items.map((li) => ({
      id: Number(li.dataset.id),
      from: li.dataset.from,
      body: li.querySelector('.body').textContent,
      own: li.classList.contains('own'),
      grouped: li.classList.contains('grouped'),
    })),
  );
}

export async function bodies(user) {
  return (await shownMessages(user)).map((m) => m.body);
}

/** Waits until a confirmed message with exactly this body is shown. */
export async function waitForBody(user, body, { timeout } = {}) {
  await user.page.waitForFunction(
    (text) => [...document.querySelectorAll('#messages .msg:not(.pending) .body')].some((b) => b.textContent === text),
    body,
    { timeout },
  );
}

/** Waits until the page shows exactly `expected` (in order), then returns them. */
export async function waitForBodies(user, expected, { timeout } = {}) {
  try {
    await user.page.waitForFunction(
      (want) => {
        const got = [...document.querySelectorAll('#messages .msg:not(.pending) .body')].map((b) => b.textContent);
        return got.length === want.length && got.every((g, i) => g === want[i]);
      },
      expected,
      { timeout },
    );
  } catch (err) {
    assert.deepEqual(await bodies(user), expected, `${user.name}'s page: ${err.message}`);
  }
  return bodies(user);
}

export function members(user) {
  return user.page.$$eval('#members li[data-user]', (items) => items.map((li) => li.dataset.user));
}

/** Waits until the member list is exactly `expected` (any order). */
export async function waitForMembers(user, expected) {
  const want = [...expected].sort();
  try {
    await user.page.waitForFunction(
      (w) => {
        const got = [...document.querySelectorAll('#members li[data-user]')].map((li) => li.dataset.user).sort();
        return JSON.stringify(got) === JSON.stringify(w);
      },
      want,
    );
  } catch (err) {
    assert.deepEqual((await members(user)).sort(), want, `${user.name}'s members: ${err.message}`);
  }
}

/**
 * Stores `count` messages in `room` from a plain native-protocol client
 * opened inside `page` (pacing itself under the rate limit), and returns
 * their bodies in order.
 */
export async function seedMessages(page, { room, count, from = 'seeder', prefix = 'seeded' }) {
  return page.evaluate(
    async ({ room, count, from, prefix }) => {
      const ws = new WebSocket(`ws://${location.host}/socket`);
      const replies = new Map();
      ws.onmessage = (ev) => {
        const f = JSON.parse(ev.data);
        if (f.reply_to && replies.has(f.reply_to)) replies.get(f.reply_to)(f);
      };
      await new Promise((resolve, reject) => {
        ws.onopen = resolve;
        ws.onerror = reject;
      });
      let n = 0;
      const ask = (cmd) =>
        new Promise((resolve) => {
          const id = `s${++n}`;
          replies.set(id, resolve);
          ws.send(JSON.stringify({ ...cmd, id }));
        });
      await ask({ type: 'hello', name: from });
      await ask({ type: 'join', room });
      const sent = [];
      for (let i = 1; i <= count; i++) {
        const body = `${prefix} ${i}`;
        for (;;) {
          const reply = await ask({ type: 'send', room, body });
          if (reply.type === 'ack') break;
          await new Promise((r) => setTimeout(r, 200)); // rate limited: slow down
        }
        sent.push(body);
      }
      ws.close();
      return sent;
    },
    { room, count, from, prefix },
  );
}

/** Script errors and console errors, minus the browser's own reports of failed WebSocket connections. */
export function scriptErrors(user, { allowSocketFailures = false } = {}) {
  return user.errors.filter((e) => !(allowSocketFailures && /WebSocket connection to .* failed/.test(e)));
}

// The server killed mid-conversation and started again on the same port
// and database: the pages reconnect by themselves and show every message
// sent meanwhile exactly once.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, uniqueRoom } from '../lib/fixture.mjs';
import {
  openRoom, send, sendAndWait, shownMessages, waitForBody, waitForBodies, waitConnected, scriptErrors,
} from '../lib/chat.mjs';

const env = useServerAndBrowser();

async function waitState(user, state) {
  await user.page.locator(`#status[data-state="${state}"]`).waitFor({ timeout: 30000 });
}

test('after a server restart the pages reconnect and miss nothing, doubling nothing', async () => {
  const room = uniqueRoom('restart');
  const alice = await env.user('quinn');
  const bob = await env.user('rosa');
  await openRoom(alice, room);
  await openRoom(bob, room);

  await sendAndWait(alice, 'before 1');
  await sendAndWait(bob, 'before 2');
  // A direct message, so Quinn has a dm id to resume from.
  await bob.page.locator('#members li[data-user="quinn"] button').click();
  await sendAndWait(bob, 'dm before');
  await alice.page.locator('#dm-list button[data-peer="rosa"] .unread').waitFor();
  await bob.page.locator('#room-list a[data-room]').first().click();
  await waitForBodies(alice, ['before 1', 'before 2']);

  await env.server.kill();
  await waitState(alice, 'waiting');
  await waitState(bob, 'waiting');

  // Rosa writes while the server is down: kept, and sent on reconnect.
  await send(bob, 'during outage');
  await send(bob, 'during outage, again');
  await bob.page.locator('#messages .pending', { hasText: 'again' }).filter({ hasText: 'Waiting for the connection' }).waitFor();

  // Quinn's network is down for longer, so she resumes after the others
  // have moved on.
  await alice.context.setOffline(true);
  await env.server.start();
  await waitState(bob, 'open');
  await waitForBody(bob, 'during outage, again', { timeout: 30000 });
  const after = ['after 1', 'after 2 🎉', 'after 3'];
  for (const text of after) await sendAndWait(bob, text);
  // Quinn is offline (not in the member list): the conversation is in the sidebar.
  await bob.page.locator('#dm-list button[data-peer="quinn"]').click();
  await sendAndWait(bob, 'dm while you were away');
  await bob.page.locator('#room-list a[data-room]').first().click();

  assert.notEqual(await alice.page.locator('#status').getAttribute('data-state'), 'open', 'quinn was still away');
  assert.ok(!(await alice.page.locator('#messages').textContent()).includes('after 1'));
  await alice.context.setOffline(false);
  await waitConnected(alice);
  const expected = ['before 1', 'before 2', 'during outage', 'during outage, again', ...after];
  await waitForBodies(alice, expected, { timeout: 30000 });
  await waitForBodies(bob, expected);
  const ids = (await shownMessages(alice)).map((m) => m.id);
  assert.equal(new Set(ids).size, ids.length, 'no id twice');

  // The dm sent meanwhile arrived once, and only once.
  await alice.page.locator('#dm-list button[data-peer="rosa"]').click();
  await waitForBodies(alice, ['dm before', 'dm while you were away']);

  // And the conversation goes on both ways.
  await alice.page.locator('#room-list a[data-room]').first().click();
  await sendAndWait(alice, 'back again');
  await waitForBody(bob, 'back again');
  await waitForBodies(alice, [...expected, 'back again']);
  for (const u of [alice, bob]) {
    assert.deepEqual(scriptErrors(u, { allowSocketFailures: true }), [], `${u.name}: no script errors`);
  }
});

test('a page keeps retrying with backoff while the server stays down, then resumes', async () => {
  const room = uniqueRoom('down');
  const alice = await env.user('sam');
  const bob = await env.user('tess');
  await openRoom(alice, room);
  await openRoom(bob, room);
  await sendAndWait(alice, 'one');
  await env.server.kill();
  // Failed attempts make the wait grow: soon it is seconds long.
  await alice.page
    .locator('#status[data-state="waiting"] .status-text', { hasText: /Reconnecting in [2-9] s/ })
    .waitFor({ timeout: 20000 });
  await env.server.start();
  // "Reconnect now" skips the rest of the wait (if it has not ended already).
  await alice.page.getByRole('button', { name: 'Reconnect now' }).click({ timeout: 1000 }).catch(() => {});
  await waitState(alice, 'open');
  await waitState(bob, 'open');
  await sendAndWait(bob, 'two');
  await waitForBodies(alice, ['one', 'two']);
  await sendAndWait(alice, 'three');
  await waitForBodies(bob, ['one', 'two', 'three']);
  for (const u of [alice, bob]) {
    assert.deepEqual(scriptErrors(u, { allowSocketFailures: true }), []);
  }
});

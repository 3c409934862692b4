import { test } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, uniqueRoom } from '../lib/fixture.mjs';
import {
  openRoom, send, sendAndWait, shownMessages, bodies, waitForBody, waitForBodies,
  waitForMembers, seedMessages, scriptErrors, roomUrl,
} from '../lib/chat.mjs';

const env = useServerAndBrowser();

test('two users talk in a room; a third in another room sees none of it', async () => {
  const room = uniqueRoom('talk');
  const other = uniqueRoom('elsewhere');
  const alice = await env.user('alice');
  const bob = await env.user('bob');
  const carol = await env.user('carol');
  await openRoom(alice, room);
  await openRoom(bob, room);
  await openRoom(carol, other);

  await sendAndWait(alice, 'Hi Bob!');
  await waitForBody(bob, 'Hi Bob!');
  await sendAndWait(alice, 'Are you there?');
  await sendAndWait(bob, 'Hello Alice.');
  // Shift+Enter makes a new line; Enter sends.
  const box = alice.page.locator('#composer-input');
  await box.focus();
  await alice.page.keyboard.type('line one');
  await alice.page.keyboard.press('Shift+Enter');
  await alice.page.keyboard.type('line two');
  await alice.page.keyboard.press('Enter');
  await assert.doesNotReject(waitForBody(bob, 'line one\nline two'));
  assert.equal(await box.inputValue(), '', 'the message box is emptied after sending');

  const expected = ['Hi Bob!', 'Are you there?', 'Hello Alice.', 'line one\nline two'];
  await waitForBodies(alice, expected);
  const seenByBob = await shownMessages(bob);
  assert.deepEqual(seenByBob.map((m) => m.body), expected);
  assert.deepEqual(seenByBob.map((m) => m.from), ['alice', 'alice', 'bob', 'alice']);
  assert.deepEqual(seenByBob.map((m) => m.own), [false, false, true, false], 'own messages are told apart');
  assert.deepEqual(seenByBob.map((m) => m.grouped), [false, true, false, false], 'consecutive messages are grouped');
  // Sender and time are shown.
  const first = bob.page.locator('#messages .msg').first();
  assert.equal(await first.locator('.from').textContent(), 'alice');
  assert.match(await first.locator('time').getAttribute('datetime'), /^\d{4}-\d\d-\d\dT/);

  // Carol's own message arriving is the barrier: anything of the other
  // room would have come before it.
  await sendAndWait(carol, 'anyone here?');
  assert.deepEqual(await bodies(carol), ['anyone here?']);
  await waitForMembers(carol, ['carol']);
  await assert.rejects(
    carol.page.getByText('Hi Bob!').waitFor({ timeout: 300 }),
    'carol sees nothing of the other room',
  );
  for (const u of [alice, bob, carol]) assert.deepEqual(scriptErrors(u), [], `${u.name}: no script errors`);
});

test('a direct message reaches only its recipient, with unread counts', async () => {
  const room = uniqueRoom('dm');
  const alice = await env.user('dana');
  const bob = await env.user('eli');
  const carol = await env.user('fay');
  await openRoom(alice, room);
  await openRoom(bob, room);
  await openRoom(carol, room);
  await waitForMembers(alice, ['dana', 'eli', 'fay']);

  // Click a member to open a private conversation.
  await alice.page.locator('#members li[data-user="eli"] button').click();
  await alice.page.locator('#title', { hasText: '@ eli' }).waitFor();
  assert.equal(await alice.page.locator('#composer-input').evaluate((el) => el === document.activeElement), true);
  await sendAndWait(alice, 'psst, just for you');

  // Eli sees an unread count on the conversation, then the message.
  const dmLink = bob.page.locator('#dm-list button[data-peer="dana"]');
  await dmLink.locator('.unread', { hasText: '1' }).waitFor();
  assert.deepEqual(await bodies(bob), [], 'the room view does not show the dm');
  await dmLink.click();
  await waitForBodies(bob, ['psst, just for you']);
  assert.equal(await dmLink.locator('.unread').count(), 0, 'read once opened');
  await sendAndWait(bob, 'got it');
  await waitForBody(alice, 'got it');

  // While Eli looks at the dm, a room message counts as unread in the room.
  await sendAndWait(carol, 'room chatter');
  const roomLink = bob.page.locator('#room-list a[data-room]', { hasText: room });
  await roomLink.locator('.unread', { hasText: '1' }).waitFor();
  await roomLink.click();
  await waitForBody(bob, 'room chatter');
  assert.equal(await roomLink.locator('.unread').count(), 0);

  // Fay: her own room message came back, so any dm would have too.
  await waitForBody(carol, 'room chatter');
  assert.equal(await carol.page.locator('#dm-list li').count(), 0, 'fay has no conversations');
  const everything = await carol.page.locator('body').textContent();
  assert.ok(!everything.includes('psst'), 'fay never sees the dm');

  // A reload keeps the conversation, with its history.
  await bob.page.reload();
  await bob.page.locator('#status[data-state="open"]').waitFor();
  await bob.page.locator('#dm-list button[data-peer="dana"]').click();
  await waitForBodies(bob, ['psst, just for you', 'got it']);
  for (const u of [alice, bob, carol]) assert.deepEqual(scriptErrors(u), []);
});

test('the member list and typing indicator update live', async () => {
  const room = uniqueRoom('presence');
  const alice = await env.user('gus');
  const bob = await env.user('hana');
  await openRoom(alice, room);
  await waitForMembers(alice, ['gus']);
  await openRoom(bob, room);
  await waitForMembers(alice, ['gus', 'hana']);
  await waitForMembers(bob, ['gus', 'hana']);

  const typing = alice.page.locator('#typing');
  await bob.page.locator('#composer-input').pressSequentially('I am wri');
  await typing.filter({ hasText: 'hana is typing…' }).waitFor();
  // Clearing the box says the typing stopped.
  await bob.page.locator('#composer-input').fill('');
  await bob.page.locator('#composer-input').press('Backspace');
  await alice.page.waitForFunction(() => document.querySelector('#typing').textContent === '');
  // Sending ends it too.
  await bob.page.locator('#composer-input').pressSequentially('done');
  await typing.filter({ hasText: 'hana is typing…' }).waitFor();
  await bob.page.locator('#composer-input').press('Enter');
  await waitForBody(alice, 'done');
  assert.equal(await typing.textContent(), '');

  // Disconnect: gone from the list; Reconnect: back, and caught up.
  await bob.page.getByRole('button', { name: 'Disconnect' }).click();
  await bob.page.locator('#status[data-state="closed"]').waitFor();
  await waitForMembers(alice, ['gus']);
  await sendAndWait(alice, 'said while hana was away');
  await bob.page.getByRole('button', { name: 'Reconnect' }).click();
  await bob.page.locator('#status[data-state="open"]').waitFor();
  await waitForMembers(alice, ['gus', 'hana']);
  await waitForBodies(bob, ['done', 'said while hana was away']);

  // Closing the page leaves the room.
  await bob.page.close();
  await waitForMembers(alice, ['gus']);
  assert.deepEqual(scriptErrors(alice), []);
});

test('a reload shows the history, and older history loads on scrolling up', async () => {
  const room = uniqueRoom('history');
  const alice = await env.user('ivy');
  await openRoom(alice, room);
  const seeded = await seedMessages(alice.page, { room, count: 70 });
  await sendAndWait(alice, 'my own last word');
  await alice.page.reload();
  await alice.page.locator('#status[data-state="open"]').waitFor();
  // The last 50 on entry.
  await alice.page.waitForFunction(() => document.querySelectorAll('#messages .msg').length >= 50);
  const all = [...seeded, 'my own last word'];
  // Scrolling to the top fetches the rest.
  await alice.page.waitForFunction(() => {
    const s = document.querySelector('#scroller');
    s.scrollTop = 0;
    s.dispatchEvent(new Event('scroll'));
    return document.querySelectorAll('#messages .msg').length >= 71;
  }, null, { polling: 200 });
  await waitForBodies(alice, all);
  const ids = (await shownMessages(alice)).map((m) => m.id);
  assert.equal(new Set(ids).size, ids.length, 'no message twice');
  assert.deepEqual(ids, [...ids].sort((a, b) => a - b), 'in order');
  await alice.page.locator('#history-status', { hasText: 'beginning' }).waitFor();
  assert.deepEqual(scriptErrors(alice), []);
});

test('markup in messages and names is shown as text and runs nothing', async () => {
  const room = uniqueRoom('<i>xss');
  const evilName = '<img src=x onerror=alert(3)>';
  const alice = await env.user('jo');
  const bob = await env.user(evilName);
  await openRoom(alice, room);
  await openRoom(bob, room);
  const attacks = [
    '<img src=x onerror=alert(1)>',
    '<script>alert(2)</script>',
    '"><svg onload=alert(4)>',
    '<a href="javascript:alert(5)">click</a>',
  ];
  for (const text of attacks) await sendAndWait(bob, text);
  await waitForBodies(alice, attacks);
  await waitForMembers(alice, ['jo', evilName]);
  assert.equal(await alice.page.locator('#messages img, #messages script, #messages svg, #messages a').count(), 0);
  assert.equal(await alice.page.locator('#members img').count(), 0);
  assert.equal(await alice.page.locator('#title').textContent(), `# ${room}`);
  // Reload: history is rendered the same way.
  await alice.page.reload();
  await alice.page.locator('#status[data-state="open"]').waitFor();
  await waitForBodies(alice, attacks);
  assert.equal(await alice.page.locator('#messages img, #messages script, #messages svg').count(), 0);
  for (const u of [alice, bob]) {
    assert.deepEqual(u.dialogs, [], `${u.name}: no dialog opened`);
    assert.deepEqual(scriptErrors(u), []);
  }
});

test('emoji, CJK and right-to-left text round-trip', async () => {
  const room = uniqueRoom('世界 🌍');
  const alice = await env.user('李雷');
  const bob = await env.user('سارة');
  await openRoom(alice, room);
  await openRoom(bob, room);
  const texts = [
    '👩🏽‍💻 ships it 🚀 👨‍👩‍👧‍👦 🏳️‍🌈',
    '你好，世界！日本語もOK。한국어 🇰🇷',
    'مرحبا بالعالم — كيف حالك؟',
    'שלום עולם 123 hello',
    'mixed: العربية and English, then 中文 🙂',
  ];
  for (const t of texts) await sendAndWait(alice, t);
  await waitForBodies(bob, texts);
  const from = (await shownMessages(bob)).map((m) => m.from);
  assert.deepEqual(new Set(from), new Set(['李雷']));
  assert.equal(await bob.page.locator('#messages .body').first().getAttribute('dir'), 'auto');
  await bob.page.reload();
  await bob.page.locator('#status[data-state="open"]').waitFor();
  await waitForBodies(bob, texts);
  assert.equal(decodeURIComponent(new URL(bob.page.url()).pathname), `/web/${room}/`);
  for (const u of [alice, bob]) assert.deepEqual(scriptErrors(u), []);
});

test('the lobby remembers the name, lists active rooms live and opens a room on Enter', async () => {
  const room = uniqueRoom('lobby');
  const visitor = await env.user(null);
  await visitor.page.goto('/');
  assert.equal(new URL(visitor.page.url()).pathname, '/web/');
  await visitor.page.getByLabel('Your display name').fill('kim');
  await visitor.page.getByLabel('Your display name').press('Tab');
  await visitor.page.locator('#lobby-status[data-state="open"]').waitFor();

  const alice = await env.user('lee');
  await openRoom(alice, room);
  const entry = visitor.page.locator('#rooms a', { hasText: room });
  await entry.filter({ hasText: '1 online' }).waitFor();
  const bob = await env.user('max');
  await openRoom(bob, room);
  await entry.filter({ hasText: '2 online' }).waitFor();

  await visitor.page.reload();
  assert.equal(await visitor.page.getByLabel('Your display name').inputValue(), 'kim');
  await visitor.page.getByLabel('Room', { exact: true }).fill(room);
  await visitor.page.getByLabel('Room', { exact: true }).press('Enter');
  await visitor.page.waitForURL(`**${roomUrl(room)}`);
  await visitor.page.locator('#status[data-state="open"]').waitFor();
  await waitForMembers(alice, ['lee', 'max', 'kim']);
  assert.equal(await visitor.page.locator('#me').textContent(), 'kim');
  for (const u of [visitor, alice, bob]) assert.deepEqual(scriptErrors(u), []);
});

test('/chat/ is the global room page; a first visit asks for a name', async () => {
  const visitor = await env.user(null);
  await visitor.page.goto('/chat/');
  const dialog = visitor.page.getByRole('dialog');
  await dialog.waitFor();
  await dialog.getByLabel('Display name').fill('chat');
  await dialog.getByLabel('Display name').press('Enter');
  await dialog.getByText('reserved').waitFor();
  await dialog.getByLabel('Display name').fill('nora');
  await dialog.getByLabel('Display name').press('Enter');
  await visitor.page.locator('#status[data-state="open"]').waitFor();
  assert.equal(await visitor.page.locator('#title').textContent(), '# global');
  await sendAndWait(visitor, 'hello global');
  // Another user in /web/global/ is in the same room.
  const other = await env.user('otto');
  await openRoom(other, 'global');
  await waitForBody(other, 'hello global');
  assert.deepEqual(scriptErrors(visitor), []);
});

// Spelled in pieces so this file does not itself contain the names.
const htmlSinks = new RegExp(['inner' + 'HTML', 'outer' + 'HTML', 'insertAdjacent' + 'HTML', 'document\\.' + 'write'].join('|'));

test('pages and assets have their content types and a CSP forbidding inline script', async () => {
  const base = env.server.url;
  const redirect = await fetch(`${base}/`, { redirect: 'manual' });
  assert.ok([301, 302, 303, 307, 308].includes(redirect.status));
  assert.equal(redirect.headers.get('location'), '/web/');
  for (const path of ['/web/', '/web/some%20room/', '/chat/']) {
    const res = await fetch(base + path);
    assert.equal(res.status, 200, path);
    assert.match(res.headers.get('content-type'), /^text\/html/, path);
    const csp = res.headers.get('content-security-policy');
    assert.match(csp, /script-src 'self'/, path);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/, path);
    const html = await res.text();
    assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/, `${path}: no inline script`);
    assert.doesNotMatch(html, /\sstyle=|\son[a-z]+=/i, `${path}: no inline style or handler`);
    assert.doesNotMatch(html, /https?:\/\//, `${path}: nothing from another host`);
  }
  for (const [path, type] of [['/assets/room.js', /^text\/javascript/], ['/assets/lobby.js', /^text\/javascript/], ['/assets/app.css', /^text\/css/], ['/assets/icon.svg', /^image\/svg\+xml/]]) {
    const res = await fetch(base + path);
    assert.equal(res.status, 200, path);
    assert.match(res.headers.get('content-type'), type, path);
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
    assert.ok(res.headers.get('content-security-policy'), `${path}: CSP`);
    const body = await res.text();
    assert.doesNotMatch(body, htmlSinks, path);
  }
  assert.equal((await fetch(`${base}/assets/nope.js`)).status, 404);
});

test('works on a 360 px phone, in dark mode, by keyboard', async () => {
  const room = uniqueRoom('phone');
  const phone = await env.user('olga', { viewport: { width: 360, height: 740 }, colorScheme: 'dark' });
  const friend = await env.user('pia');
  await openRoom(phone, room);
  await openRoom(friend, room);
  await sendAndWait(friend, 'a long message that has to wrap on a narrow phone screen without making the page scroll sideways');
  await waitForBody(phone, 'a long message that has to wrap on a narrow phone screen without making the page scroll sideways');
  const width = await phone.page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 360, `no sideways scrolling (${width}px)`);
  const bg = await phone.page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.notEqual(bg, 'rgb(244, 244, 248)', 'dark mode colours');
  // The panels are behind buttons; the sidebar opens and Escape closes it.
  assert.equal(await phone.page.locator('#nav').isVisible(), false);
  await phone.page.getByRole('button', { name: 'Rooms and conversations' }).click();
  await phone.page.locator('#nav').waitFor({ state: 'visible' });
  await phone.page.keyboard.press('Escape');
  await phone.page.locator('#nav').waitFor({ state: 'hidden' });
  await phone.page.locator('#toggle-members').click();
  await phone.page.locator('#members-panel').waitFor({ state: 'visible' });
  // Keyboard: the message box has focus after Escape; type and send.
  await phone.page.keyboard.press('Escape');
  await phone.page.keyboard.type('typed on the phone');
  await phone.page.keyboard.press('Enter');
  await waitForBody(friend, 'typed on the phone');
  assert.deepEqual(scriptErrors(phone), []);
});

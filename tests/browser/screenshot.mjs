// Regenerates docs/screenshot.png: a room with a short conversation.
//   node tests/browser/screenshot.mjs [out.png]

import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfabServer } from './lib/server.mjs';
import { launchBrowser, newUser } from './lib/browser.mjs';
import { openRoom, sendAndWait, waitForBody } from './lib/chat.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] ?? path.join(here, '..', '..', 'docs', 'screenshot.png');
const colorScheme = process.env.SCHEME ?? 'light';

const server = await new ConfabServer().start();
const browser = await launchBrowser();
try {
  const alice = await newUser(browser, server.url, { name: 'alice', colorScheme });
  const bob = await newUser(browser, server.url, { name: 'bob' });
  const chen = await newUser(browser, server.url, { name: 'chen' });
  await openRoom(alice, 'design');
  await openRoom(bob, 'design');
  await openRoom(chen, 'design');
  const script = [
    [bob, 'Morning! Did the new build land? ☕'],
    [alice, 'It did — deployed at 9:40, all green ✅'],
    [alice, 'Reconnects now resume exactly where they left off.'],
    [bob, 'Nice. I restarted the server twice and lost nothing.'],
    [chen, '太好了！I will try it on my phone 📱'],
    [alice, 'Shift+Enter for a new line:\n• lobby\n• rooms\n• direct messages'],
  ];
  for (const [user, text] of script) {
    await sendAndWait(user, text);
    await waitForBody(alice, text);
  }
  // A private message for alice: an unread count in the sidebar.
  await bob.page.locator('#members li[data-user="alice"] button').click();
  await sendAndWait(bob, 'psst — lunch at noon?');
  await alice.page.locator('#dm-list .unread').waitFor();
  await chen.page.locator('#composer-input').pressSequentially('Looks great');
  await alice.page.locator('#typing', { hasText: 'chen is typing' }).waitFor();
  await alice.page.locator('#composer-input').fill('');
  await alice.page.locator('#composer-input').blur();
  await alice.page.screenshot({ path: out });
  console.log(`wrote ${out}`);
} finally {
  await browser.close();
  await server.stop();
}

// The chat page (/web/<room>/, and /chat/ for the global room): the
// user's rooms and direct conversations, one shown at a time, over one
// self-healing connection.
//
// Resuming after a drop: every room is rejoined with `since` = the highest
// message id seen in it, and `hello` carries `dm_since` = the highest
// direct-message id seen, so the server replays exactly what was missed.
// Messages are kept by id anyway, so nothing shows twice.

import { $, h, replaceChildren, timeElement, dayLabel, startOfDay, storage } from './dom.js';
import { Connection, CommandError, bindStatus } from './connection.js';
import { nameProblem, roomFromPath, roomPath, savedName, saveName } from './names.js';

const GROUP_GAP_MS = 5 * 60 * 1000;
const TYPING_SEND_EVERY_MS = 3000;
const TYPING_EXPIRES_MS = 6000;
const PAGE = 50;

const ui = {
  title: $('title'),
  me: $('me'),
  status: $('status'),
  toggle: $('connect-toggle'),
  notice: $('notice'),
  scroller: $('scroller'),
  historyStatus: $('history-status'),
  messages: $('messages'),
  typing: $('typing'),
  composer: $('composer'),
  input: $('composer-input'),
  roomList: $('room-list'),
  dmList: $('dm-list'),
  dmEmpty: $('dm-empty'),
  members: $('members'),
  membersTitle: $('members-title'),
  joinForm: $('join-form'),
  joinInput: $('join-input'),
  navToggle: $('toggle-nav'),
  membersToggle: $('toggle-members'),
  nameDialog: $('name-dialog'),
  nameForm: $('name-form'),
  nameInput: $('name-input'),
  nameError: $('name-error'),
};

let me = savedName();
let maxBytes = 16384;
/** @type {Map<string, Conversation>} */
const convs = new Map();
let active = null;
let myRooms = [];
let dmPeers = [];
let dmHigh = 0;
let lastRead = {};

const key = {
  room: (name) => `r:${name}`,
  dm: (name) => `d:${name}`,
};

/**
 * @typedef {object} Conversation
 * @property {string} key
 * @property {'room'|'dm'} kind
 * @property {string} name room name or the other user
 * @property {Map<number, object>} msgs by id
 * @property {number[]} ids sorted ascending
 * @property {?number} high rooms: the highest id seen (0 once joined empty)
 * @property {?boolean} more whether older messages exist
 * @property {boolean} loaded whether the newest page was fetched
 * @property {Set<string>} members rooms: who is online
 * @property {Map<string, number>} typing user → timer
 * @property {Map<string, object>} pending client id → unsent message
 */
function conversation(k) {
  let c = convs.get(k);
  if (!c) {
    c = {
      key: k,
      kind: k.startsWith('r:') ? 'room' : 'dm',
      name: k.slice(2),
      msgs: new Map(),
      ids: [],
      high: null,
      more: null,
      loaded: false,
      loadingOlder: false,
      members: new Set(),
      typing: new Map(),
      pending: new Map(),
      sending: false,
      draft: '',
      typingSentAt: 0,
    };
    convs.set(k, c);
  }
  return c;
}

// ---- persistence (per user) ----

function loadSaved() {
  myRooms = storage.get(`confab.rooms.${me}`, []).filter((r) => !nameProblem(r));
  dmPeers = storage.get(`confab.dms.${me}`, []).filter((u) => !nameProblem(u, { user: true }));
  dmHigh = Number(storage.get(`confab.dmHigh.${me}`, 0)) || 0;
  lastRead = storage.get(`confab.read.${me}`, {}) ?? {};
}

function saveRooms() {
  storage.set(`confab.rooms.${me}`, myRooms);
}

function saveDms() {
  storage.set(`confab.dms.${me}`, dmPeers);
  storage.set(`confab.dmHigh.${me}`, dmHigh);
}

function saveRead() {
  storage.set(`confab.read.${me}`, lastRead);
}

// ---- the connection ----

const conn = new Connection({ resume });
bindStatus(ui.status, conn);

async function resume(c) {
  const hello = { type: 'hello', name: me };
  if (dmHigh > 0) hello.dm_since = dmHigh;
  let welcome;
  try {
    welcome = await c.request(hello);
  } catch (err) {
    if (err.code === 'invalid_user') askName(err.message);
    throw err;
  }
  maxBytes = welcome.limits?.max_message_bytes ?? maxBytes;
  await Promise.all(myRooms.map((room) => joinRoom(conversation(key.room(room)))));
  const current = convs.get(active);
  if (current?.kind === 'dm') await loadNewest(current);
}

async function joinRoom(c) {
  const command = { type: 'join', room: c.name };
  const resuming = c.high != null;
  if (resuming) command.since = c.high;
  let reply;
  try {
    reply = await conn.request(command);
  } catch (err) {
    if (err instanceof CommandError && !err.temporary) {
      notice(`Could not join ${c.name}: ${err.message}`);
      forgetRoom(c.name);
      return;
    }
    throw err;
  }
  c.members = new Set(reply.members);
  c.typing.clear();
  const added = addMessages(c, reply.history);
  if (resuming) {
    // More missed than one reply holds: fetch the rest, oldest first.
    let more = reply.more;
    while (more) {
      const page = await conn.request({ type: 'history', room: c.name, after: c.high, limit: 500 });
      added.push(...addMessages(c, page.messages));
      more = page.more && page.messages.length > 0;
    }
  } else {
    c.more = reply.more;
  }
  c.high ??= 0;
  c.loaded = true;
  if (lastRead[c.key] == null) {
    lastRead[c.key] = c.high;
    saveRead();
  }
  shown(c, added);
  if (c.key === active) {
    renderMembers();
    renderHistoryStatus();
    fillScreen();
  }
}

/** The newest page of a conversation not loaded yet (direct messages). */
async function loadNewest(c) {
  if (c.loaded || c.kind !== 'dm') return;
  const reply = await conn.request({ type: 'history', with: c.name, limit: PAGE });
  c.more = reply.more;
  c.loaded = true;
  shown(c, addMessages(c, reply.messages));
  if (c.key === active) renderAll();
}

async function loadOlder(c) {
  if (c.loadingOlder || !c.more || !conn.isOpen) return;
  c.loadingOlder = true;
  renderHistoryStatus();
  try {
    const command = { type: 'history', limit: PAGE };
    if (c.kind === 'room') command.room = c.name;
    else command.with = c.name;
    if (c.ids.length) command.before = c.ids[0];
    const reply = await conn.request(command);
    const { scrollHeight, scrollTop } = ui.scroller;
    addMessages(c, reply.messages);
    c.more = reply.more;
    if (c.key === active) {
      renderAll();
      ui.scroller.scrollTop = ui.scroller.scrollHeight - scrollHeight + scrollTop;
    }
  } catch (err) {
    if (!(err instanceof CommandError)) throw err;
  } finally {
    c.loadingOlder = false;
    renderHistoryStatus();
  }
  fillScreen();
}

conn.addEventListener('frame', (ev) => {
  const f = ev.detail;
  switch (f.type) {
    case 'message': {
      const c = convs.get(key.room(f.room));
      if (!c) return;
      stopTypingOf(c, f.from);
      shown(c, addMessages(c, [f]));
      break;
    }
    case 'dm': {
      const peer = f.from === me ? f.to : f.from;
      const c = openDm(peer, { activate: false });
      if (f.id > dmHigh) {
        dmHigh = f.id;
        saveDms();
      }
      stopTypingOf(c, f.from);
      shown(c, addMessages(c, [f]));
      break;
    }
    case 'presence': {
      const c = convs.get(key.room(f.room));
      if (!c) return;
      if (f.event === 'join') c.members.add(f.user);
      else {
        c.members.delete(f.user);
        stopTypingOf(c, f.user);
      }
      if (c.key === active) renderMembers();
      break;
    }
    case 'typing': {
      if (f.from === me) return;
      const c = f.room ? convs.get(key.room(f.room)) : convs.get(key.dm(f.from));
      if (!c) return;
      clearTimeout(c.typing.get(f.from));
      if (f.active) {
        c.typing.set(f.from, setTimeout(() => stopTypingOf(c, f.from), TYPING_EXPIRES_MS));
      } else c.typing.delete(f.from);
      if (c.key === active) renderTyping();
      break;
    }
    case 'error':
      notice(f.message);
      break;
    default:
  }
});

conn.addEventListener('state', (ev) => {
  const { state, reason } = ev.detail;
  ui.toggle.textContent = { open: 'Disconnect', connecting: 'Disconnect', waiting: 'Reconnect now' }[state] ?? 'Reconnect';
  ui.toggle.dataset.action = state === 'open' || state === 'connecting' ? 'disconnect' : 'connect';
  document.body.dataset.connection = state;
  if (state === 'open') {
    notice('');
    // Rooms opened while (re)connecting, then messages written offline.
    for (const room of myRooms) {
      const c = conversation(key.room(room));
      if (!c.loaded) joinRoom(c).catch(() => {});
    }
    for (const c of convs.values()) flushPending(c);
  }
  else if (state === 'closed' && reason) notice(reason);
  if (state !== 'open') {
    for (const c of convs.values()) {
      for (const t of c.typing.values()) clearTimeout(t);
      c.typing.clear();
    }
    renderTyping();
  }
  renderPendingStates();
});

ui.toggle.addEventListener('click', () => {
  if (ui.toggle.dataset.action === 'disconnect') conn.disconnect('You disconnected. Reconnect to catch up.');
  else conn.connect();
});

// ---- messages ----

/** Adds messages (room or dm shapes) by id; returns those that were new. */
function addMessages(c, list) {
  const added = [];
  for (const m of list) {
    if (typeof m.id !== 'number' || c.msgs.has(m.id)) continue;
    const msg = { id: m.id, from: m.from, body: String(m.body ?? ''), ts: m.ts, clientId: m.client_id };
    c.msgs.set(msg.id, msg);
    if (msg.clientId && msg.from === me && c.pending.has(msg.clientId)) {
      c.pending.delete(msg.clientId);
      removePendingElement(msg.clientId);
    }
    added.push(msg);
    if (c.kind === 'room' && (c.high == null || msg.id > c.high)) c.high = msg.id;
  }
  if (added.length) {
    const last = c.ids.at(-1) ?? -Infinity;
    const inOrder = added.every((m, i) => m.id > (i ? added[i - 1].id : last));
    c.ids.push(...added.map((m) => m.id));
    if (!inOrder) c.ids.sort((a, b) => a - b);
  }
  return added;
}

/** Shows newly added messages: in the view, or as unread counts. */
function shown(c, added) {
  if (!added.length) return;
  if (c.key === active) {
    const stick = nearBottom() || added.some((m) => m.from === me);
    const renderedLast = Number(ui.messages.dataset.last ?? -Infinity);
    if (added.every((m) => m.id > renderedLast) && isSorted(added)) {
      for (const m of added) appendMessage(c, m);
    } else {
      renderAll();
    }
    if (stick) scrollToBottom();
    markRead(c);
  }
  renderLists();
}

function isSorted(list) {
  return list.every((m, i) => !i || m.id > list[i - 1].id);
}

function previousOf(c, id) {
  const i = c.ids.indexOf(id);
  return i > 0 ? c.msgs.get(c.ids[i - 1]) : null;
}

function messageItems(m, prev) {
  const items = [];
  if (!prev || startOfDay(prev.ts) !== startOfDay(m.ts)) {
    items.push(h('li', { class: 'day', role: 'separator' }, h('span', {}, dayLabel(m.ts))));
  }
  const grouped = prev && prev.from === m.from && m.ts - prev.ts < GROUP_GAP_MS && startOfDay(prev.ts) === startOfDay(m.ts);
  const own = m.from === me;
  items.push(
    h(
      'li',
      {
        class: `msg${own ? ' own' : ''}${grouped ? ' grouped' : ''}`,
        dataset: { id: m.id, from: m.from },
      },
      grouped
        ? h('span', { class: 'visually-hidden' }, `${m.from}: `)
        : h('div', { class: 'meta' }, h('span', { class: 'from', dir: 'auto' }, own ? `${m.from} (you)` : m.from), ' ', timeElement(m.ts)),
      h('div', { class: 'bubble' }, h('p', { class: 'body', dir: 'auto' }, m.body)),
    ),
  );
  return items;
}

function appendMessage(c, m) {
  const before = ui.messages.querySelector('.pending');
  for (const item of messageItems(m, previousOf(c, m.id))) ui.messages.insertBefore(item, before);
  ui.messages.dataset.last = m.id;
}

function pendingItem(c, p) {
  return h(
    'li',
    { class: `msg own pending${p.error ? ' failed' : ''}`, dataset: { clientId: p.clientId } },
    h('div', { class: 'meta' }, h('span', { class: 'from' }, `${me} (you)`), ' ', h('span', { class: 'state' }, pendingLabel(p))),
    h('div', { class: 'bubble' }, h('p', { class: 'body', dir: 'auto' }, p.body)),
    p.error ? h('button', { type: 'button', class: 'link', onclick: () => dismissPending(c, p.clientId) }, 'Dismiss') : null,
  );
}

function pendingLabel(p) {
  if (p.error) return `Not sent: ${p.error}`;
  return conn.isOpen ? 'Sending…' : 'Waiting for the connection…';
}

function renderPendingStates() {
  const c = convs.get(active);
  if (!c) return;
  for (const el of ui.messages.querySelectorAll('.pending')) {
    const p = c.pending.get(el.dataset.clientId);
    const state = el.querySelector('.state');
    if (p && state) state.textContent = pendingLabel(p);
  }
}

function removePendingElement(clientId) {
  for (const el of ui.messages.querySelectorAll('.pending')) {
    if (el.dataset.clientId === clientId) el.remove();
  }
}

function dismissPending(c, clientId) {
  c.pending.delete(clientId);
  removePendingElement(clientId);
  ui.input.focus();
}

function renderAll() {
  const c = convs.get(active);
  const items = [];
  let prev = null;
  for (const id of c.ids) {
    const m = c.msgs.get(id);
    items.push(...messageItems(m, prev));
    prev = m;
  }
  for (const p of c.pending.values()) items.push(pendingItem(c, p));
  replaceChildren(ui.messages, items);
  ui.messages.dataset.last = c.ids.at(-1) ?? -Infinity;
  renderHistoryStatus();
}

function renderHistoryStatus() {
  const c = convs.get(active);
  if (!c) return;
  let content = '';
  if (c.loadingOlder) content = 'Loading older messages…';
  else if (c.more) {
    content = h('button', { type: 'button', class: 'link', onclick: () => loadOlder(c) }, 'Load older messages');
  } else if (c.loaded) {
    content = c.kind === 'room' ? `This is the beginning of #${c.name}.` : `This is the beginning of your conversation with ${c.name}.`;
  }
  replaceChildren(ui.historyStatus, content);
}

function nearBottom() {
  const s = ui.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
}

function scrollToBottom() {
  ui.scroller.scrollTop = ui.scroller.scrollHeight;
}

/** Loads older pages while the messages do not fill the view. */
function fillScreen() {
  const c = convs.get(active);
  if (c && c.more && ui.scroller.scrollHeight <= ui.scroller.clientHeight + 40) loadOlder(c);
}

ui.scroller.addEventListener('scroll', () => {
  const c = convs.get(active);
  if (c && ui.scroller.scrollTop < 150) loadOlder(c);
});

// ---- sending ----

function sendMessage(body) {
  const c = convs.get(active);
  if (!c) return;
  if (new TextEncoder().encode(body).length > maxBytes) {
    notice(`That message is too long (the limit is ${Math.floor(maxBytes / 1024)} KiB).`);
    return false;
  }
  const p = { clientId: conn.newId('m'), body, error: null };
  c.pending.set(p.clientId, p);
  ui.messages.append(pendingItem(c, p));
  scrollToBottom();
  pump(c);
  return true;
}

/**
 * Sends a conversation's pending messages one at a time, in the order
 * they were written, each with its own client id (so one the server
 * stored before a drop is matched, not sent twice).
 */
function pump(c) {
  if (c.sending || !conn.isOpen) return;
  const p = [...c.pending.values()].find((m) => !m.error);
  if (!p) return;
  c.sending = true;
  const command = c.kind === 'room'
    ? { type: 'send', id: p.clientId, room: c.name, body: p.body }
    : { type: 'dm', id: p.clientId, to: c.name, body: p.body };
  conn.request(command).then(
    (ack) => {
      c.sending = false;
      // Normally the message event came first; if not, the ack says enough.
      if (c.pending.has(p.clientId)) {
        shown(c, addMessages(c, [{ id: ack.msg_id, from: me, to: c.name, body: p.body, ts: ack.ts, client_id: p.clientId }]));
      }
      if (c.kind === 'dm' && ack.msg_id > dmHigh) {
        dmHigh = ack.msg_id;
        saveDms();
      }
      pump(c);
    },
    (err) => {
      c.sending = false;
      if (!(err instanceof CommandError)) throw err;
      if (err.code === 'offline' || err.code === 'timeout') return; // sent again once reconnected
      if (err.temporary) {
        setTimeout(() => pump(c), 1000); // rate limited or unavailable: try again
        return;
      }
      p.error = err.message;
      if (c.key === active) renderAll();
      pump(c);
    },
  );
}

function flushPending(c) {
  pump(c);
  if (c.key === active) renderPendingStates();
}

ui.composer.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const body = ui.input.value;
  if (!body.trim()) return;
  if (sendMessage(body) === false) return;
  ui.input.value = '';
  const c = convs.get(active);
  if (c) {
    c.draft = '';
    stopTyping(c);
  }
  ui.input.focus();
});

ui.input.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
    ev.preventDefault();
    ui.composer.requestSubmit();
  }
});

ui.input.addEventListener('input', () => {
  const c = convs.get(active);
  if (!c) return;
  c.draft = ui.input.value;
  if (!ui.input.value.trim()) {
    stopTyping(c);
    return;
  }
  const now = Date.now();
  if (now - c.typingSentAt > TYPING_SEND_EVERY_MS) {
    c.typingSentAt = now;
    conn.send(typingCommand(c, true));
  }
});

function typingCommand(c, activeNow) {
  return c.kind === 'room'
    ? { type: 'typing', room: c.name, active: activeNow }
    : { type: 'typing', to: c.name, active: activeNow };
}

function stopTyping(c) {
  if (!c.typingSentAt) return;
  c.typingSentAt = 0;
  conn.send(typingCommand(c, false));
}

function stopTypingOf(c, user) {
  if (!c.typing.has(user)) return;
  clearTimeout(c.typing.get(user));
  c.typing.delete(user);
  if (c.key === active) renderTyping();
}

function renderTyping() {
  const c = convs.get(active);
  const who = c ? [...c.typing.keys()] : [];
  let text = '';
  if (who.length === 1) text = `${who[0]} is typing…`;
  else if (who.length === 2) text = `${who[0]} and ${who[1]} are typing…`;
  else if (who.length > 2) text = `${who[0]}, ${who[1]} and ${who.length - 2} more are typing…`;
  ui.typing.textContent = text;
}

// ---- conversations and lists ----

function unreadCount(c) {
  const read = lastRead[c.key] ?? 0;
  let n = 0;
  for (let i = c.ids.length - 1; i >= 0 && c.ids[i] > read; i--) {
    if (c.msgs.get(c.ids[i]).from !== me) n++;
  }
  return n;
}

function markRead(c) {
  if (c.key !== active || document.visibilityState !== 'visible') return;
  const high = c.ids.at(-1);
  if (high != null && high > (lastRead[c.key] ?? 0)) {
    lastRead[c.key] = high;
    saveRead();
    renderLists();
  }
}

document.addEventListener('visibilitychange', () => {
  const c = convs.get(active);
  if (c) markRead(c);
});

function badge(c) {
  const n = c.key === active ? 0 : unreadCount(c);
  return n ? h('span', { class: 'unread', 'aria-label': `${n} unread` }, n > 99 ? '99+' : String(n)) : null;
}

function renderLists() {
  replaceChildren(
    ui.roomList,
    myRooms.map((room) => {
      const c = conversation(key.room(room));
      const current = c.key === active;
      return h(
        'li',
        { class: current ? 'current' : '' },
        h(
          'a',
          {
            href: roomPath(room),
            class: 'conv-link',
            'aria-current': current ? 'page' : null,
            dataset: { room },
            onclick: (ev) => {
              ev.preventDefault();
              activate(c.key);
            },
          },
          h('span', { class: 'hash', 'aria-hidden': 'true' }, '#'),
          h('span', { class: 'label', dir: 'auto' }, room),
          badge(c),
        ),
        h('button', { type: 'button', class: 'leave', 'aria-label': `Leave ${room}`, title: `Leave ${room}`, onclick: () => leaveRoom(room) }, '×'),
      );
    }),
  );
  replaceChildren(
    ui.dmList,
    dmPeers.map((peer) => {
      const c = conversation(key.dm(peer));
      const current = c.key === active;
      return h(
        'li',
        { class: current ? 'current' : '' },
        h(
          'button',
          { type: 'button', class: 'conv-link', 'aria-current': current ? 'true' : null, dataset: { peer }, onclick: () => activate(c.key) },
          h('span', { class: `avatar small ${hue(peer)}`, 'aria-hidden': 'true' }, initial(peer)),
          h('span', { class: 'label', dir: 'auto' }, peer),
          badge(c),
        ),
      );
    }),
  );
  ui.dmEmpty.hidden = dmPeers.length > 0;
  let total = 0;
  for (const c of convs.values()) if (c.key !== active) total += unreadCount(c);
  const c = convs.get(active);
  const label = c ? (c.kind === 'room' ? `#${c.name}` : c.name) : 'Confab';
  document.title = `${total ? `(${total}) ` : ''}${label} · Confab`;
}

function renderMembers() {
  const c = convs.get(active);
  if (!c) return;
  if (c.kind === 'dm') {
    ui.membersTitle.textContent = 'Private conversation';
    replaceChildren(ui.members, h('li', { class: 'muted small' }, `Only you and ${c.name} can see these messages.`));
    replaceChildren(ui.membersToggle, 'Info');
    return;
  }
  const names = [...c.members].sort((a, b) => (a === me ? -1 : b === me ? 1 : a.localeCompare(b)));
  ui.membersTitle.textContent = `Online · ${names.length}`;
  replaceChildren(ui.membersToggle, h('span', { 'aria-hidden': 'true' }, `👥 ${names.length}`), h('span', { class: 'visually-hidden' }, `Members (${names.length})`));
  replaceChildren(
    ui.members,
    names.map((user) =>
      h(
        'li',
        { dataset: { user } },
        user === me || user.startsWith('guest-')
          ? h('span', { class: user === me ? 'member self' : 'member' }, h('span', { class: `avatar ${hue(user)}`, 'aria-hidden': 'true' }, initial(user)), h('span', { class: 'label', dir: 'auto' }, user), user === me ? h('span', { class: 'muted small' }, ' (you)') : null)
          : h(
            'button',
            { type: 'button', class: 'member', title: `Message ${user} privately`, onclick: () => openDm(user, { activate: true }) },
            h('span', { class: `avatar ${hue(user)}`, 'aria-hidden': 'true' }, initial(user)),
            h('span', { class: 'label', dir: 'auto' }, user),
            h('span', { class: 'visually-hidden' }, ' — send a direct message'),
          ),
      ),
    ),
  );
}

function initial(name) {
  return [...name][0]?.toUpperCase() ?? '?';
}

/** A stable colour class for a user's avatar. */
function hue(name) {
  let n = 0;
  for (const ch of name) n = (n * 31 + ch.codePointAt(0)) >>> 0;
  return `hue-${n % 8}`;
}

function activate(k, { push = true } = {}) {
  const previous = convs.get(active);
  if (previous && previous.key !== k) stopTyping(previous);
  const c = conversation(k);
  active = k;
  ui.title.textContent = c.kind === 'room' ? `# ${c.name}` : `@ ${c.name}`;
  ui.title.dir = 'auto';
  ui.input.placeholder = c.kind === 'room' ? `Message #${c.name}` : `Message ${c.name}`;
  ui.input.value = c.draft;
  document.body.dataset.kind = c.kind;
  if (c.kind === 'room' && push && roomFromPath(location.pathname) !== c.name) {
    history.pushState({ room: c.name }, '', roomPath(c.name));
  }
  renderAll();
  scrollToBottom();
  renderMembers();
  renderTyping();
  markRead(c);
  renderLists();
  setPanel(null);
  if (c.kind === 'dm') loadNewest(c).catch(() => {});
  fillScreen();
}

function openRoom(room) {
  if (!myRooms.includes(room)) {
    myRooms.push(room);
    saveRooms();
  }
  const c = conversation(key.room(room));
  activate(c.key);
  if (conn.isOpen && !c.loaded) joinRoom(c).catch(() => {});
  ui.input.focus();
}

function forgetRoom(room) {
  myRooms = myRooms.filter((r) => r !== room);
  saveRooms();
  renderLists();
}

async function leaveRoom(room) {
  const k = key.room(room);
  forgetRoom(room);
  if (conn.isOpen) conn.request({ type: 'leave', room }).catch(() => {});
  convs.delete(k);
  if (active === k) {
    if (myRooms.length) activate(key.room(myRooms[0]));
    else location.assign('/web/');
  } else {
    renderLists();
  }
}

/** The conversation with `peer`, listed in the sidebar. */
function openDm(peer, { activate: show }) {
  const c = conversation(key.dm(peer));
  if (!dmPeers.includes(peer)) {
    dmPeers.push(peer);
    if (lastRead[c.key] == null) lastRead[c.key] = 0;
    saveDms();
    saveRead();
    renderLists();
  }
  if (show) {
    activate(c.key);
    ui.input.focus();
  }
  return c;
}

ui.joinForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const room = ui.joinInput.value.trim();
  const problem = nameProblem(room);
  if (problem) {
    notice(`Room: ${problem}`);
    return;
  }
  ui.joinInput.value = '';
  openRoom(room);
});

window.addEventListener('popstate', () => {
  const room = roomFromPath(location.pathname);
  if (!room) return;
  if (myRooms.includes(room)) activate(key.room(room), { push: false });
  else openRoom(room);
});

// ---- small screens: the side panels slide over the conversation ----

function setPanel(which) {
  document.body.dataset.panel = which ?? '';
  ui.navToggle.setAttribute('aria-expanded', String(which === 'nav'));
  ui.membersToggle.setAttribute('aria-expanded', String(which === 'members'));
}

ui.navToggle.addEventListener('click', () => setPanel(document.body.dataset.panel === 'nav' ? null : 'nav'));
ui.membersToggle.addEventListener('click', () => setPanel(document.body.dataset.panel === 'members' ? null : 'members'));
document.addEventListener('keydown', (ev) => {
  if (ev.key === 'Escape' && document.body.dataset.panel) {
    setPanel(null);
    ui.input.focus();
  }
});

// ---- notices and the name ----

let noticeTimer = null;
function notice(text) {
  clearTimeout(noticeTimer);
  ui.notice.textContent = text;
  ui.notice.hidden = !text;
  if (text && conn.isOpen) noticeTimer = setTimeout(() => notice(''), 8000);
}

function askName(problem = '') {
  ui.nameInput.value = me;
  ui.nameError.textContent = problem;
  ui.nameError.hidden = !problem;
  if (!ui.nameDialog.open) ui.nameDialog.showModal();
}

ui.nameForm.addEventListener('submit', (ev) => {
  const name = ui.nameInput.value.trim();
  const problem = nameProblem(name, { user: true });
  if (problem) {
    ev.preventDefault();
    ui.nameError.textContent = problem;
    ui.nameError.hidden = false;
    return;
  }
  const changed = name !== me;
  me = name;
  saveName(me);
  if (changed && started) {
    location.reload();
    return;
  }
  start();
});

ui.nameDialog.addEventListener('cancel', (ev) => {
  if (!started) ev.preventDefault();
});

let started = false;
function start() {
  if (started) return;
  started = true;
  ui.me.textContent = me;
  loadSaved();
  const room = roomFromPath(location.pathname);
  if (room == null || nameProblem(room)) {
    notice('That is not a valid room name.');
    return;
  }
  if (!myRooms.includes(room)) {
    myRooms.push(room);
    saveRooms();
  }
  for (const r of myRooms) conversation(key.room(r));
  for (const peer of dmPeers) conversation(key.dm(peer));
  activate(key.room(room), { push: false });
  conn.connect();
  ui.input.focus();
}

if (nameProblem(me, { user: true })) askName();
else start();

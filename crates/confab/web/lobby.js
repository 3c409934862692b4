// The lobby (/web/): choose a display name and a room; see the active
// rooms, polled over the native socket every few seconds.

import { $, h, replaceChildren, storage } from './dom.js';
import { Connection, CommandError, bindStatus } from './connection.js';
import { nameProblem, roomPath, savedName, saveName } from './names.js';

const POLL_MS = 3000;

const form = $('enter');
const nameInput = $('name');
const roomInput = $('room');
const formError = $('form-error');
const list = $('rooms');
const empty = $('rooms-empty');
const suggestions = $('room-suggestions');

let name = savedName();
nameInput.value = name;
let pollTimer = null;

const conn = new Connection({
  async resume(c) {
    await c.request({ type: 'hello', name });
  },
});
bindStatus($('lobby-status'), conn);
conn.addEventListener('state', (ev) => {
  clearInterval(pollTimer);
  if (ev.detail.state === 'open') {
    poll();
    pollTimer = setInterval(poll, POLL_MS);
  }
});

async function poll() {
  try {
    const reply = await conn.request({ type: 'rooms' });
    showRooms(reply.rooms);
  } catch (err) {
    if (!(err instanceof CommandError)) throw err;
  }
}

function showRooms(rooms) {
  rooms.sort((a, b) => b.members - a.members || a.name.localeCompare(b.name));
  replaceChildren(
    list,
    rooms.map((room) =>
      h(
        'li',
        {},
        h(
          'a',
          { href: roomPath(room.name), class: 'room-link', dataset: { room: room.name } },
          h('span', { class: 'room-name', dir: 'auto' }, `# ${room.name}`),
          h('span', { class: 'count' }, `${room.members} online`),
        ),
      ),
    ),
  );
  empty.hidden = rooms.length > 0;
  const mine = storage.get(`confab.rooms.${name}`, []);
  const names = [...new Set([...rooms.map((r) => r.name), ...mine])];
  replaceChildren(suggestions, names.map((n) => h('option', { value: n })));
}

function useName(value) {
  if (value === name && conn.state !== 'closed') return;
  name = value;
  saveName(name);
  conn.disconnect();
  conn.connect();
}

function showError(message, field) {
  formError.textContent = message;
  formError.hidden = !message;
  for (const input of [nameInput, roomInput]) input.removeAttribute('aria-invalid');
  if (field) {
    field.setAttribute('aria-invalid', 'true');
    field.focus();
  }
}

nameInput.addEventListener('change', () => {
  const value = nameInput.value.trim();
  const problem = nameProblem(value, { user: true });
  if (problem) return showError(`Name: ${problem}`, nameInput);
  showError('');
  useName(value);
});

form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const chosen = nameInput.value.trim();
  const room = roomInput.value.trim();
  const nameIssue = nameProblem(chosen, { user: true });
  if (nameIssue) return showError(`Name: ${nameIssue}`, nameInput);
  const roomIssue = nameProblem(room);
  if (roomIssue) return showError(`Room: ${roomIssue}`, roomInput);
  saveName(chosen);
  location.assign(roomPath(room));
});

// Clicking an active room also needs a name first.
list.addEventListener('click', (ev) => {
  const link = ev.target.closest('a.room-link');
  if (!link) return;
  const chosen = nameInput.value.trim();
  if (nameProblem(chosen, { user: true })) {
    ev.preventDefault();
    roomInput.value = link.dataset.room;
    showError('Choose a display name first.', nameInput);
    return;
  }
  saveName(chosen);
});

if (name && !nameProblem(name, { user: true })) {
  conn.connect();
  roomInput.focus();
} else {
  $('lobby-status').querySelector('.status-text').textContent = 'Choose a name to see them';
  nameInput.focus();
}

// The server's rules for room and user names (docs/protocol.md), checked
// here first so a typo gets a friendly message instead of an error frame.

const MAX_CHARS = 64;
const RESERVED_USERS = ['chat', 'echo'];

/** Why `name` is not a valid room or user name, or null if it is. */
export function nameProblem(name, { user = false } = {}) {
  if (!name || !name.trim()) return 'Type a name.';
  if ([...name].length > MAX_CHARS) return `At most ${MAX_CHARS} characters.`;
  if (name.trim() !== name) return 'No spaces at the start or end.';
  if (/[\u0000-\u001f\u007f-\u009f/]/u.test(name)) return 'No slashes or control characters.';
  if (user && RESERVED_USERS.includes(name)) return `"${name}" is reserved; pick another name.`;
  return null;
}

/** The page address of a room. */
export function roomPath(room) {
  return `/web/${encodeURIComponent(room)}/`;
}

/** The room a page address names: `/web/<room>/`, or `global` for `/chat/`. */
export function roomFromPath(pathname) {
  if (pathname === '/chat/' || pathname === '/chat') return 'global';
  const match = /^\/web\/([^/]+)\/?$/.exec(pathname);
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return null;
  }
}

const NAME_KEY = 'confab.name';

export function savedName() {
  try {
    return localStorage.getItem(NAME_KEY) || '';
  } catch {
    return '';
  }
}

export function saveName(name) {
  try {
    localStorage.setItem(NAME_KEY, name);
  } catch {
    // The name is then asked for again next time.
  }
}

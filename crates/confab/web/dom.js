// DOM helpers. User text only ever becomes text nodes or attribute
// values: no HTML is parsed from strings anywhere in the app.

/**
 * Creates an element. `props`: `class`, `dataset`, `on<event>` handlers,
 * boolean attributes (true/false) and plain attributes; children are
 * nodes or strings (strings become text nodes).
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

/** Appends nodes and strings (as text) to `el`. */
export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replaces every child of `el`. */
export function replaceChildren(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** `document.getElementById`, failing loudly on a missing element. */
export function $(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing #${id}`);
  return el;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });
const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric' });

/** A `<time>` for a server timestamp (ms since the epoch). */
export function timeElement(ts) {
  const date = new Date(ts);
  return h('time', { datetime: date.toISOString(), title: fullFormat.format(date) }, timeFormat.format(date));
}

/** "Today", "Yesterday" or the date, for a day separator. */
export function dayLabel(ts) {
  const day = startOfDay(ts);
  const today = startOfDay(Date.now());
  if (day === today) return 'Today';
  if (today - day === 86400000) return 'Yesterday';
  return dayFormat.format(new Date(ts));
}

export function startOfDay(ts) {
  const d = new Date(ts);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

/** Reads and writes JSON in localStorage, never throwing. */
export const storage = {
  get(key, fallback) {
    try {
      const raw = localStorage.getItem(key);
      return raw == null ? fallback : JSON.parse(raw);
    } catch {
      return fallback;
    }
  },
  set(key, value) {
    try {
      localStorage.setItem(key, JSON.stringify(value));
    } catch {
      // Private mode or full: the app works without it.
    }
  },
};

// One native-protocol connection to /socket that keeps itself alive:
// it reconnects with backoff when the network or the server drops, runs
// a caller-supplied `resume` step (hello, joins) before calling itself
// open, and matches replies to commands by id.

const REQUEST_TIMEOUT_MS = 15000;
const PING_EVERY_MS = 25000;
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15000;

/** Close codes after which reconnecting by itself would not help. */
const FINAL_CLOSES = new Map([
  [1000, 'The server said goodbye.'],
  [1007, 'The server refused a message (not valid UTF-8).'],
  [1009, 'A message was too large for the server.'],
  [4000, 'You were disconnected by the server.'],
]);

/** A command that failed: the server's error frame, or a lost connection. */
export class CommandError extends Error {
  constructor(code, message, temporary = false) {
    super(message);
    this.code = code;
    this.temporary = temporary;
  }
}

/**
 * Events (an EventTarget):
 * - `state`: detail `{state, retryAt?, reason?}`; state is `connecting`,
 *   `open`, `waiting` (will retry at `retryAt`) or `closed` (will not
 *   retry by itself).
 * - `frame`: detail is a server event (`message`, `dm`, `presence`,
 *   `typing`) or an error frame without `reply_to`.
 */
export class Connection extends EventTarget {
  #url;
  #resume;
  #ws = null;
  #state = 'closed';
  #attempt = 0;
  #retryTimer = null;
  #pingTimer = null;
  #nextId = 1;
  #pending = new Map();
  #wanted = false;

  /**
   * @param {object} options
   * @param {(conn: Connection) => Promise<void>} options.resume called on
   *   every (re)connection before the state becomes `open`; it may send
   *   with `request`. If it throws a CommandError that is not temporary,
   *   the connection closes for good.
   */
  constructor({ resume, url = defaultUrl() }) {
    super();
    this.#url = url;
    this.#resume = resume;
    window.addEventListener('online', () => {
      if (this.#state === 'waiting') this.connect();
    });
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible' && this.#state === 'waiting') this.connect();
    });
  }

  get state() {
    return this.#state;
  }

  get isOpen() {
    return this.#state === 'open';
  }

  /** Connects now (also to retry at once while waiting). */
  connect() {
    this.#wanted = true;
    clearTimeout(this.#retryTimer);
    if (this.#ws) return;
    this.#setState('connecting');
    let ws;
    try {
      ws = new WebSocket(this.#url);
    } catch (err) {
      this.#lost(1006, String(err));
      return;
    }
    this.#ws = ws;
    ws.addEventListener('open', () => this.#opened(ws));
    ws.addEventListener('message', (ev) => this.#received(ev.data));
    ws.addEventListener('close', (ev) => {
      if (this.#ws === ws) this.#lost(ev.code, ev.reason);
    });
  }

  /** Closes and stays closed until `connect`. */
  disconnect(reason = 'Disconnected.') {
    this.#wanted = false;
    clearTimeout(this.#retryTimer);
    this.#drop();
    this.#setState('closed', { reason });
  }

  /** Sends a command and resolves with its reply (rejects on an error frame). */
  request(command, { timeout = REQUEST_TIMEOUT_MS } = {}) {
    const id = command.id ?? `c${this.#nextId++}`;
    return new Promise((resolve, reject) => {
      if (!this.#ws || this.#ws.readyState !== WebSocket.OPEN) {
        reject(new CommandError('offline', 'Not connected.', true));
        return;
      }
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new CommandError('timeout', 'The server did not answer.', true));
        // A connection that answers nothing is dead: start over.
        this.#restart();
      }, timeout);
      this.#pending.set(id, { resolve, reject, timer });
      this.#ws.send(JSON.stringify({ ...command, id }));
    });
  }

  /** Sends a command that gets no reply (`typing`); dropped if offline. */
  send(command) {
    if (this.isOpen) this.#ws.send(JSON.stringify(command));
  }

  /** A fresh command id. */
  newId(prefix = 'c') {
    return `${prefix}${Date.now().toString(36)}-${this.#nextId++}`;
  }

  async #opened(ws) {
    if (this.#ws !== ws) return;
    try {
      await this.#resume(this);
    } catch (err) {
      if (this.#ws !== ws) return;
      if (err instanceof CommandError && !err.temporary) {
        this.#wanted = false;
        this.#drop();
        this.#setState('closed', { reason: err.message });
      } else {
        this.#restart();
      }
      return;
    }
    if (this.#ws !== ws) return;
    this.#attempt = 0;
    this.#setState('open');
    clearInterval(this.#pingTimer);
    this.#pingTimer = setInterval(() => {
      this.request({ type: 'ping' }, { timeout: 10000 }).catch(() => {});
    }, PING_EVERY_MS);
  }

  #received(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame.reply_to != null && this.#pending.has(frame.reply_to)) {
      const { resolve, reject, timer } = this.#pending.get(frame.reply_to);
      this.#pending.delete(frame.reply_to);
      clearTimeout(timer);
      if (frame.type === 'error') {
        reject(new CommandError(frame.code, frame.message, frame.temporary));
      } else {
        resolve(frame);
      }
      return;
    }
    this.dispatchEvent(new CustomEvent('frame', { detail: frame }));
  }

  /** Forgets the socket, failing whatever awaited a reply on it. */
  #drop() {
    clearInterval(this.#pingTimer);
    const ws = this.#ws;
    this.#ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
    for (const { reject, timer } of this.#pending.values()) {
      clearTimeout(timer);
      reject(new CommandError('offline', 'The connection was lost.', true));
    }
    this.#pending.clear();
  }

  /** Drops a dead or stuck connection and tries again, with backoff. */
  #restart() {
    this.#drop();
    if (this.#wanted) this.#lost(1006, '');
  }

  #lost(code, reason) {
    this.#drop();
    if (!this.#wanted) return;
    const final = FINAL_CLOSES.get(code);
    if (final) {
      this.#wanted = false;
      this.#setState('closed', { reason: reason ? `${final} (${reason})` : final });
      return;
    }
    let delay;
    if (code === 1001) delay = 100 + Math.random() * 400; // another node, at once
    else {
      const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.#attempt);
      delay = base / 2 + Math.random() * (base / 2);
      if (code === 1008) delay = Math.max(delay, 5000); // told to pause
    }
    this.#attempt += 1;
    this.#schedule(delay);
  }

  #schedule(delay) {
    clearTimeout(this.#retryTimer);
    this.#setState('waiting', { retryAt: Date.now() + delay });
    this.#retryTimer = setTimeout(() => this.connect(), delay);
  }

  #setState(state, extra = {}) {
    this.#state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, ...extra } }));
  }
}

function defaultUrl() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/socket`;
}

/**
 * Keeps a status indicator (an element with a `.status-text` child and a
 * `data-state` attribute the style sheet colours) in step with `conn`.
 */
export function bindStatus(el, conn) {
  const text = el.querySelector('.status-text');
  let countdown = null;
  conn.addEventListener('state', (ev) => {
    const { state, retryAt, reason } = ev.detail;
    clearInterval(countdown);
    el.dataset.state = state;
    el.title = reason ?? '';
    if (state === 'open') text.textContent = 'Connected';
    else if (state === 'connecting') text.textContent = 'Connecting…';
    else if (state === 'closed') text.textContent = 'Disconnected';
    else if (state === 'waiting') {
      const tick = () => {
        const s = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
        text.textContent = s > 0 ? `Reconnecting in ${s} s…` : 'Reconnecting…';
      };
      tick();
      countdown = setInterval(tick, 500);
    }
  });
}

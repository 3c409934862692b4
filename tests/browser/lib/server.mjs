// Starts a real confab server on a free 127.0.0.1 port with a temporary
// SQLite file, and can kill and restart it on the same port and file.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** The confab binary: $CONFAB_BIN, else target/debug/confab in the repository. */
export function confabBinary() {
  const bin = process.env.CONFAB_BIN
    ? path.resolve(process.env.CONFAB_BIN)
    : path.join(process.env.CARGO_TARGET_DIR ?? path.join(repoRoot, 'target'), 'debug', 'confab');
  if (!existsSync(bin)) {
    throw new Error(`no confab binary at ${bin}: run \`cargo build -p confab\` or set CONFAB_BIN`);
  }
  return bin;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export class ConfabServer {
  constructor({ extraArgs = [] } = {}) {
    this.bin = confabBinary();
    this.dir = mkdtempSync(path.join(tmpdir(), 'confab-browser-'));
    this.db = path.join(this.dir, 'confab.db');
    this.extraArgs = extraArgs;
    this.port = null;
    this.child = null;
    this.log = [];
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    this.port ??= await freePort();
    const args = ['serve', '--listen', `127.0.0.1:${this.port}`, '--store', `sqlite://${this.db}`, ...this.extraArgs];
    const child = spawn(this.bin, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'confab=warn' },
    });
    this.child = child;
    const keep = (chunk) => {
      this.log.push(chunk.toString());
      if (this.log.length > 200) this.log.shift();
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.exited = new Promise((resolve) => child.once('exit', resolve));
    await this.#waitReady(child);
    return this;
  }

  async #waitReady(child) {
    const deadline = Date.now() + 20000;
    while (Date.now() < deadline) {
      if (child.exitCode != null) {
        throw new Error(`confab exited with ${child.exitCode}:\n${this.log.join('')}`);
      }
      try {
        const res = await fetch(`${this.url}/readyz`);
        if (res.ok) return;
      } catch {
        // not listening yet
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`confab did not become ready:\n${this.log.join('')}`);
  }

  /** Kills the server outright (SIGKILL: no goodbye to the clients). */
  async kill() {
    const child = this.child;
    if (!child || child.exitCode != null) return;
    child.kill('SIGKILL');
    await child.exited;
    this.child = null;
  }

  async restart() {
    await this.kill();
    await this.start();
  }

  async stop() {
    const child = this.child;
    if (child && child.exitCode == null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await child.exited;
      clearTimeout(timer);
    }
    this.child = null;
    rmSync(this.dir, { recursive: true, force: true });
  }
}

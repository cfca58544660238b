// Shared set-up of the UI end-to-end tests and the screenshot script: a real
// `trainyard up` daemon in a temp home (fake GPUs: the only fake), a real
// dataset made with the CLI, the wandb fixtures indexed, and the system
// Chromium driven by playwright-core (no browser download, ever).

import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile, appendFile, unlink } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, extname, join, normalize, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const HERE = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(HERE, '../..');
export const BIN = resolve(HERE, process.env.TRAINYARD_BIN ?? '../../target/debug/trainyard');
export const FIXTURES = join(ROOT, 'tests/fixtures/wandb');
export const UI_DIR = join(ROOT, 'ui');
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const FAKE_GPUS = '2xA100-80GB,1xRTX4090-24GB';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll `fn` until it returns a truthy value (returned) or time runs out. */
export async function until(what, fn, timeoutMs = 10_000, everyMs = 100) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (${last.message})` : ''}`);
    await sleep(everyMs);
  }
}

// The binary may be rebuilt underneath us (cargo replaces it): wait for it.
async function waitForBinary() {
  await until(`the trainyard binary at ${BIN} (set TRAINYARD_BIN)`, () => existsSync(BIN), 60_000, 500);
}

// Every daemon we start, so an early exit still stops them.
const children = new Set();
process.on('exit', () => {
  for (const c of children) { try { process.kill(-c.pid, 'SIGKILL'); } catch { /* gone */ } }
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));

/** Run the CLI against a home; throws with its stderr on failure. */
export async function cli(home, args) {
  await waitForBinary();
  const r = spawnSync(BIN, args, { env: { ...process.env, TRAINYARD_HOME: home }, encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`trainyard ${args.join(' ')} failed (${r.status}): ${r.stderr || r.stdout}`);
  return r.stdout;
}

/**
 * The GPUs' scripted trace (`docs/gpu-trace-format.md`) of the main test
 * daemon: the A100s busy (90 % and 60 %), the RTX 4090 idle (2 %, under
 * the 5 % idle threshold), so jobs have used and idle-allocated hours.
 */
export const GPU_TRACE = `version = 1
[[gpu]]
index = 0
points = [[0, 90, 40000, 300, 65]]
[[gpu]]
index = 1
points = [[0, 60, 20000, 250, 58]]
[[gpu]]
index = 2
points = [[0, 2, 1024, 40, 35]]
`;

/**
 * Start `trainyard up` on a free port with fake GPUs in a new temp home
 * (replaying `trace`, TOML, when given: samples every 250 ms then, so
 * telemetry and usage arrive within about a second). Returns `{home, url,
 * token, api(), stop()}`; `stop` kills its process group and deletes the
 * home.
 */
export async function startDaemon({ agentName = 'gpu-node-1', logDir = null, label = 'daemon', env = {}, trace = null } = {}) {
  await waitForBinary();
  const home = await mkdtemp(join(tmpdir(), 'trainyard-e2e-'));
  const args = ['up', '--port', '0', '--fake-gpus', FAKE_GPUS, '--agent-name', agentName, '--grace', '2s', '--cpu-slots', '4'];
  if (trace) {
    await writeFile(join(home, 'gpu-trace.toml'), trace);
    args.push('--fake-gpu-trace', join(home, 'gpu-trace.toml'), '--sample-every', '250ms');
  }
  const logFile = logDir ? join(logDir, `${label}.log`) : null;
  if (logFile) await writeFile(logFile, `$ TRAINYARD_HOME=${home} ${BIN} ${args.join(' ')}\n`);
  const child = spawn(BIN, args, {
    env: { ...process.env, TRAINYARD_HOME: home, RUST_LOG: process.env.RUST_LOG ?? 'warn', ...env },
    detached: true, // its own process group: stop() kills the daemon and whatever it spawned
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let output = '';
  const keep = (b) => {
    output = (output + b).slice(-20_000);
    if (logFile) appendFile(logFile, b).catch(() => {});
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  let exited = null;
  child.on('exit', (code, sig) => { exited = { code, sig }; children.delete(child); });

  const stop = async () => {
    if (!exited) {
      try { process.kill(-child.pid, 'SIGTERM'); } catch { /* gone */ }
      const t = Date.now();
      while (!exited && Date.now() - t < 5000) await sleep(50);
      if (!exited) { try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ } }
    }
    if (!process.env.KEEP_HOME) await rm(home, { recursive: true, force: true });
  };

  try {
    const info = await until(`${label} to write daemon.json`, async () => {
      if (exited) throw new Error(`daemon exited (${JSON.stringify(exited)}): ${output}`);
      const j = JSON.parse(await readFile(join(home, 'daemon.json'), 'utf8'));
      const h = await fetch(`${j.url}/api/v1/health`).then((r) => r.json());
      return h.version ? j : null;
    }, 20_000, 100);
    // Every daemon requires its token, on loopback too.
    const token = (await readFile(join(home, 'daemon.token'), 'utf8')).trim();
    const api = async (method, path, body) => {
      const res = await fetch(`${info.url}/api/v1${path}`, {
        method,
        headers: { Authorization: `Bearer ${token}`, ...(method !== 'GET' ? { 'Content-Type': 'application/json' } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      });
      const text = await res.text();
      const json = text ? JSON.parse(text) : null;
      if (!res.ok) throw Object.assign(new Error(`${method} ${path}: ${res.status} ${json?.error?.message ?? text}`), { status: res.status });
      return json;
    };
    // One agent reporting, so the GPUs are there when the page loads.
    await until('the local agent to report its GPUs', async () => (await api('GET', '/agents')).some((a) => a.report?.gpus?.length), 15_000);
    return { home, url: info.url, token, api, stop, output: () => output };
  } catch (e) {
    await stop();
    throw e;
  }
}

/**
 * The wandb-compatible test server (examples/wandb_server, built by `cargo
 * test`) on 127.0.0.1: `{url, key, env, stop()}`; `env` is what a daemon
 * needs to sync to it.
 */
export async function startWandbServer() {
  const bin = resolve(HERE, process.env.TRAINYARD_WANDB_SERVER ?? '../../target/debug/examples/wandb_server');
  await until(`the test server binary at ${bin} (cargo test builds it; set TRAINYARD_WANDB_SERVER)`, () => existsSync(bin), 60_000, 500);
  const child = spawn(bin, [], { detached: true, stdio: ['ignore', 'pipe', 'inherit'] });
  children.add(child);
  child.on('exit', () => children.delete(child));
  let out = '';
  child.stdout.on('data', (b) => { out += b; });
  const [url, key] = await until('the wandb test server to print its URL and key', () => {
    const lines = out.split('\n');
    return lines.length > 2 ? lines.slice(0, 2).map((l) => l.trim()) : null;
  }, 10_000, 50);
  const stop = async () => { try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ } };
  return { url, key, env: { WANDB_BASE_URL: url, WANDB_API_KEY: key }, stop };
}

/** A dataset `mnist` with two versions (v1, v2) made with the CLI. */
export async function prepareDataset(home) {
  const dir = join(home, 'work', 'mnist');
  await mkdir(join(dir, 'train'), { recursive: true });
  await writeFile(join(dir, 'train', 'labels.csv'), 'id,label\n1,7\n2,2\n3,1\n');
  await writeFile(join(dir, 'train', 'images.bin'), Buffer.alloc(48_000, 7));
  await writeFile(join(dir, 'README.md'), '# MNIST subset\n');
  await writeFile(join(dir, 'notes.txt'), 'draft\n');
  await cli(home, ['data', 'add', dir, '--name', 'mnist', '-m', 'Initial import of the training split', '--tag', 'v1']);
  // A directory remote holding v1 only, so the page has a remote to show.
  await cli(home, ['remote', 'add', 'nas', `file://${join(home, 'nas-remote')}`]);
  await cli(home, ['data', 'push', 'mnist@v1']);
  await appendFile(join(dir, 'train', 'labels.csv'), '4,0\n5,4\n');
  await mkdir(join(dir, 'val'), { recursive: true });
  await writeFile(join(dir, 'val', 'labels.csv'), 'id,label\n10,9\n11,3\n');
  await unlink(join(dir, 'notes.txt'));
  await cli(home, ['data', 'add', dir, '--name', 'mnist', '-m', 'Add validation split, more labels', '--tag', 'v2']);
  return dir;
}

/** Index the wandb fixtures: over HTTP when the daemon has it, else the CLI. */
export async function scanFixtures(d) {
  try {
    return await d.api('POST', '/runs/scan', { paths: [FIXTURES] });
  } catch (e) {
    if (e.status !== 404) throw e;
    await cli(d.home, ['runs', 'scan', FIXTURES]);
    return null;
  }
}

/** Cancel whatever is still queued or running (before stopping a daemon). */
export async function cancelActive(d) {
  const jobs = await d.api('GET', '/jobs?state=queued,assigned,running&limit=5000').catch(() => []);
  await Promise.all(jobs.map((j) => d.api('POST', `/jobs/${j.id}/cancel`).catch(() => {})));
}

// ------------------------------------------------------ UI from disk ---

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml', '.png': 'image/png', '.json': 'application/json',
};
const CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/**
 * Serve `ui/` from the working tree with the daemon's headers and proxy
 * /api to the daemon: for testing UI changes without rebuilding the binary
 * (the binary embeds ui/ when it is compiled).
 */
export async function serveUiFromDisk(daemonUrl) {
  const target = new URL(daemonUrl);
  const server = http.createServer(async (req, res) => {
    if (req.url.startsWith('/api/')) {
      // The daemon checks Host and Origin: present the page's own origin as the daemon's.
      const headers = { ...req.headers, host: target.host };
      if (headers.origin) headers.origin = target.origin;
      const up = http.request({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers }, (r) => {
        res.writeHead(r.statusCode, r.headers);
        res.flushHeaders(); // event streams: the browser waits for the headers
        r.pipe(res);
        // The daemon went away mid-stream (SSE): drop the client's connection too.
        r.on('close', () => { if (!r.complete) res.destroy(); });
      });
      up.on('error', () => { res.writeHead(502); res.end(); });
      req.pipe(up);
      res.on('close', () => up.destroy());
      return;
    }
    const path = decodeURIComponent(req.url.split('?')[0]);
    const file = normalize(join(UI_DIR, path === '/' ? 'index.html' : path));
    if (!file.startsWith(UI_DIR)) { res.writeHead(403); res.end(); return; }
    try {
      const body = await readFile(file);
      res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream', 'content-security-policy': CSP, 'cache-control': 'no-cache' });
      res.end(body);
    } catch {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }) };
}

/**
 * The URL the browser should load for daemon `d`: the daemon itself, or
 * the working tree's ui/ in front of it (`fromDisk`, or when the daemon
 * has no UI embedded).
 */
export async function uiUrl(d, { fromDisk = false, log = console.log } = {}) {
  if (!fromDisk) {
    const [embedded, disk] = await Promise.all([
      fetch(`${d.url}/app.js`).then((r) => (r.ok ? r.text() : null)).catch(() => null),
      readFile(join(UI_DIR, 'app.js'), 'utf8'),
    ]);
    if (embedded == null) {
      log('NOTE: this trainyard binary has no UI embedded (built before ui/ existed): serving ui/ from disk in front of it');
      fromDisk = true;
    } else if (embedded !== disk) {
      log('NOTE: the UI embedded in the binary differs from ui/ on disk; testing the embedded one (rebuild, or pass --ui-from-disk)');
    }
  }
  if (!fromDisk) return { url: d.url, close: async () => {} };
  return serveUiFromDisk(d.url);
}

/** The system Chromium (installed with apt if missing; never downloaded by npm). */
export async function launchBrowser(extraArgs = []) {
  const { chromium } = await import('playwright-core');
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: install it (apt-get install -y chromium) or set CHROMIUM`);
  }
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage', ...extraArgs] });
}

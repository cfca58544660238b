// Drives the real desktop app (src-tauri) through tauri-driver +
// WebKitWebDriver, speaking the W3C WebDriver protocol with plain fetch (no
// client library needed). Run under a display, e.g.:
//   xvfb-run -a node tests/desktop/webdriver.mjs
// Env: TRAINYARD_DESKTOP_BIN (default target/debug/trainyard-desktop),
//      TAURI_DRIVER (default tauri-driver on PATH).
// The app starts its in-process daemon on a temp home with fake GPUs
// (explicitly, through TRAINYARD_FAKE_GPUS) and must render the GPUs page;
// the CLI must work against it; then, with `trainyard up` running for the
// home, a second launch must attach to that daemon instead of starting one.
// TRAINYARD_BIN: the CLI (default target/debug/trainyard).
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const app = process.env.TRAINYARD_DESKTOP_BIN || join(root, 'target/debug/trainyard-desktop');
const driverBin = process.env.TAURI_DRIVER || 'tauri-driver';
const artifacts = join(root, 'tests/desktop/artifacts');
mkdirSync(artifacts, { recursive: true });

const freePort = () => new Promise((ok, fail) => {
  const s = net.createServer();
  s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => ok(p)); });
  s.on('error', fail);
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const home = mkdtempSync(join(tmpdir(), 'trainyard-desktop-'));
const port = await freePort();
const nativePort = await freePort();
const driver = spawn(driverBin, ['--port', String(port), '--native-port', String(nativePort)], {
  env: {
    ...process.env,
    TRAINYARD_HOME: home,
    TRAINYARD_FAKE_GPUS: '2xA100-80GB,1xRTX4090-24GB',
    RUST_LOG: 'warn',
  },
  stdio: ['ignore', 'inherit', 'inherit'],
  detached: true,
});
const base = `http://127.0.0.1:${port}`;
let session = null;

async function wd(method, path, body) {
  const res = await fetch(base + path, {
    method,
    headers: { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
  return json.value;
}

const cli = process.env.TRAINYARD_BIN || join(root, 'target/debug/trainyard');
const cliEnv = { ...process.env, TRAINYARD_HOME: home };
delete cliEnv.TRAINYARD_URL;
delete cliEnv.TRAINYARD_TOKEN;

// One session of the app: wait until the page shows `want`, return the URL.
async function openApp(want, what) {
  const s = await wd('POST', '/session', {
    capabilities: { alwaysMatch: { 'tauri:options': { application: app } } },
  });
  session = s.sessionId;
  const text = () => wd('POST', `/session/${session}/execute/sync`, {
    script: 'return document.body ? document.body.innerText : ""', args: [],
  });
  const deadline = Date.now() + 60_000;
  let body = '';
  for (;;) {
    body = await text().catch(() => '');
    if (want(body)) break;
    if (Date.now() > deadline) throw new Error(`${what}; page text:\n${body.slice(0, 2000)}`);
    await sleep(250);
  }
  const url = await wd('GET', `/session/${session}/url`);
  if (!/^http:\/\/127\.0\.0\.1:\d+\//.test(url)) throw new Error(`window is not on the loopback daemon: ${url}`);
  if (url.includes('token=')) throw new Error(`the token stayed in the URL: ${url}`);
  return { url, body };
}

async function closeApp() {
  if (session) await wd('DELETE', `/session/${session}`).catch(() => {});
  session = null;
}

// Runs the CLI against the home; resolves with stdout, rejects on failure.
function runCli(args) {
  return new Promise((ok, fail) => {
    const p = spawn(cli, args, { env: cliEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('exit', (code) => code === 0 ? ok(out) : fail(new Error(`trainyard ${args.join(' ')} exited ${code}: ${err}`)));
  });
}

// Waits until no process holds the home's daemon lock: a closed WebDriver
// session does not mean the app has exited yet, and `trainyard up` refuses a
// home whose daemon still holds the lock. `flock` is util-linux's, in every
// Debian; a shared lock is granted only once the exclusive holder is gone.
async function waitLockFree(what) {
  const lock = join(home, 'daemon.lock');
  const deadline = Date.now() + 30_000;
  for (;;) {
    const r = spawnSync('flock', ['--nonblock', '--shared', lock, 'true']);
    if (r.error) throw new Error(`flock: ${r.error.message} (apt-get install util-linux)`);
    if (r.status === 0) return;
    if (Date.now() > deadline) throw new Error(`${what}: ${lock} still locked after 30 s`);
    await sleep(100);
  }
}

let failed = false;
let up = null;
try {
  // tauri-driver takes a moment to listen.
  for (let i = 0; ; i++) {
    try { await fetch(base + '/status'); break; } catch (e) {
      if (i > 100) throw new Error(`tauri-driver did not start on ${base}`);
      await sleep(100);
    }
  }
  // 1. No daemon for the home: the app starts its own, in-process, and the
  // window opens on its UI; the GPUs page is the default.
  const own = await openApp(
    (b) => (b.match(/A100/g) || []).length >= 2 && b.includes('RTX4090'),
    'GPUs page never showed the fake GPUs',
  );
  const png = await wd('GET', `/session/${session}/screenshot`);
  writeFileSync(join(artifacts, 'desktop-gpus.png'), Buffer.from(png, 'base64'));
  console.log(`PASS desktop app shows the GPUs page with the fake GPUs (${own.url})`);

  // The CLI works against the app's daemon (same home: its URL and token).
  const gpus = JSON.parse(await runCli(['gpus', '--json']));
  const models = JSON.stringify(gpus);
  if (!models.includes('RTX4090')) throw new Error(`trainyard gpus against the app's daemon: ${models.slice(0, 500)}`);
  console.log('PASS the CLI works against the desktop app\'s daemon');
  await closeApp();
  await waitLockFree('the first app did not exit when its session closed');

  // 2. A daemon already runs for the home (`trainyard up`, other fake GPUs):
  // the app attaches to it instead of starting a second one.
  up = spawn(cli, ['up', '--port', '0', '--json', '--fake-gpus', '1xH100-80GB'], {
    env: cliEnv, stdio: ['ignore', 'pipe', 'inherit'], detached: true,
  });
  const upUrl = await new Promise((ok, fail) => {
    let out = '';
    const t = setTimeout(() => fail(new Error('trainyard up printed no URL in 30 s')), 30_000);
    up.stdout.on('data', (d) => {
      out += d;
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (line) { clearTimeout(t); ok(JSON.parse(line).url); }
    });
    up.on('exit', (code) => fail(new Error(`trainyard up exited ${code}`)));
  });
  const attached = await openApp(
    (b) => b.includes('H100'),
    `the app did not show the running daemon's GPUs (${upUrl})`,
  );
  if (!attached.url.startsWith(upUrl.replace(/\/$/, ''))) {
    throw new Error(`the app opened ${attached.url}, not the running daemon ${upUrl}`);
  }
  if (attached.body.includes('A100')) throw new Error('the app started its own daemon beside the running one');
  console.log(`PASS desktop app attaches to the daemon already running for its home (${upUrl})`);
} catch (e) {
  failed = true;
  console.error(`FAIL desktop: ${e.message}`);
} finally {
  await closeApp();
  if (up) {
    try { process.kill(-up.pid, 'SIGTERM'); } catch {}
  }
  try { process.kill(-driver.pid, 'SIGTERM'); } catch {}
  await sleep(300);
  try { process.kill(-driver.pid, 'SIGKILL'); } catch {}
  if (up) {
    await sleep(1000);
    try { process.kill(-up.pid, 'SIGKILL'); } catch {}
  }
  rmSync(home, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);

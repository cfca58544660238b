// Drives the real desktop app (src-tauri) through tauri-driver +
// WebKitWebDriver, speaking the W3C WebDriver protocol with plain fetch (no
// client library needed). Run under a display, e.g.:
//   xvfb-run -a node tests/desktop/webdriver.mjs
// Env: TRAINYARD_DESKTOP_BIN (default target/debug/trainyard-desktop),
//      TAURI_DRIVER (default tauri-driver on PATH).
// The app starts its in-process daemon on a temp home with fake GPUs
// (explicitly, through TRAINYARD_FAKE_GPUS) and must render the GPUs page.
import { spawn } from 'node:child_process';
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

let failed = false;
try {
  // tauri-driver takes a moment to listen.
  for (let i = 0; ; i++) {
    try { await fetch(base + '/status'); break; } catch (e) {
      if (i > 100) throw new Error(`tauri-driver did not start on ${base}`);
      await sleep(100);
    }
  }
  const s = await wd('POST', '/session', {
    capabilities: { alwaysMatch: { 'tauri:options': { application: app } } },
  });
  session = s.sessionId;
  const text = () => wd('POST', `/session/${session}/execute/sync`, {
    script: 'return document.body ? document.body.innerText : ""', args: [],
  });
  // The window opens on the in-process daemon's UI; the GPUs page is the default.
  const deadline = Date.now() + 60_000;
  let body = '';
  for (;;) {
    body = await text().catch(() => '');
    const a100 = (body.match(/A100/g) || []).length;
    if (a100 >= 2 && body.includes('RTX4090')) break;
    if (Date.now() > deadline) throw new Error(`GPUs page never showed the fake GPUs; page text:\n${body.slice(0, 2000)}`);
    await sleep(250);
  }
  const url = await wd('GET', `/session/${session}/url`);
  if (!/^http:\/\/127\.0\.0\.1:\d+\//.test(url)) throw new Error(`window is not on the loopback daemon: ${url}`);
  if (url.includes('token=')) throw new Error(`the token stayed in the URL: ${url}`);
  const png = await wd('GET', `/session/${session}/screenshot`);
  writeFileSync(join(artifacts, 'desktop-gpus.png'), Buffer.from(png, 'base64'));
  console.log(`PASS desktop app shows the GPUs page with the fake GPUs (${url})`);
} catch (e) {
  failed = true;
  console.error(`FAIL desktop: ${e.message}`);
} finally {
  if (session) await wd('DELETE', `/session/${session}`).catch(() => {});
  try { process.kill(-driver.pid, 'SIGTERM'); } catch {}
  await sleep(300);
  try { process.kill(-driver.pid, 'SIGKILL'); } catch {}
  rmSync(home, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);

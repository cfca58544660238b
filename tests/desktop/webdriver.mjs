// Drives the real desktop app (src-tauri) through tauri-driver +
// WebKitWebDriver, speaking the W3C WebDriver protocol with plain fetch (no
// client library needed). Run under a display, e.g.:
//   xvfb-run -a node tests/desktop/webdriver.mjs
// Env: TRAINYARD_DESKTOP_BIN (default target/debug/trainyard-desktop),
//      TAURI_DRIVER (default tauri-driver on PATH).
// The app starts its in-process daemon on a temp home with fake GPUs
// (explicitly, through TRAINYARD_FAKE_GPUS) and must render the GPUs page;
// the CLI must work against it; the window connects to a lab daemon (a
// second `trainyard up` with a home and token of its own), refuses an
// unreachable address, a wrong token and a daemon of another API version
// with a message while it keeps showing the local daemon, switches back
// in one click, shows the remembered lab again, forgets it and its token;
// then, with `trainyard up` running for the home, a second launch must
// attach to that daemon instead of starting one.
// TRAINYARD_BIN: the CLI (default target/debug/trainyard).
// TRAINYARD_DESKTOP_TOKEN_STORE: where the app must keep the lab token,
// `file` (the default here) or `keyring` (gui.rs sets it when it runs this
// under dbus-run-session with gnome-keyring).
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, mkdirSync, writeFileSync, readFileSync, existsSync, statSync } from 'node:fs';
import http from 'node:http';
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
// The app's config (desktop.toml, lab-token) and the autostart entry go
// under this XDG_CONFIG_HOME, never the user's.
const xdgConfig = mkdtempSync(join(tmpdir(), 'trainyard-desktop-cfg-'));
const appConfig = join(xdgConfig, 'dev.trainyard.desktop');
const tokenStore = process.env.TRAINYARD_DESKTOP_TOKEN_STORE || 'file';
const port = await freePort();
const nativePort = await freePort();
const driver = spawn(driverBin, ['--port', String(port), '--native-port', String(nativePort)], {
  env: {
    ...process.env,
    TRAINYARD_HOME: home,
    TRAINYARD_FAKE_GPUS: '2xA100-80GB,1xRTX4090-24GB',
    TRAINYARD_DESKTOP_TOKEN_STORE: tokenStore,
    XDG_CONFIG_HOME: xdgConfig,
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


// ------------------------------------------------------------ the lab ---

// Runs a script in the window; `args` become its arguments.
const js = (script, ...args) => wd('POST', `/session/${session}/execute/sync`, { script, args });
// Calls a desktop command from the page, as the UI does.
const command = (name, args = {}) => wd('POST', `/session/${session}/execute/async`, {
  script: `const done = arguments[arguments.length - 1];
    window.__TAURI__.core.invoke(arguments[0], arguments[1]).then((v) => done({ ok: v }), (e) => done({ err: e }));`,
  args: [name, args],
});
const pageUrl = () => wd('GET', `/session/${session}/url`);
async function until(what, fn, ms = 30_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => null);
    if (v) return v;
    if (Date.now() > deadline) {
      const body = await js('return document.body ? document.body.innerText : ""').catch(() => '');
      throw new Error(`${what}; window at ${await pageUrl().catch(() => '?')}, page text:\n${String(body).slice(0, 1500)}`);
    }
    await sleep(200);
  }
}
const bodyText = () => js('return document.body ? document.body.innerText : ""');

// A second daemon with a home and token of its own: the lab server.
async function startDaemon(env, gpus) {
  // Its agent has a name of its own: on a real lab server it is the
  // server's host name, here it would be this host's, as the app's agent is.
  const p = spawn(cli, ['up', '--port', '0', '--json', '--fake-gpus', gpus, '--agent-name', 'lab-server'], {
    env, stdio: ['ignore', 'pipe', 'inherit'], detached: true,
  });
  const url = await new Promise((ok, fail) => {
    let out = '';
    const t = setTimeout(() => fail(new Error('trainyard up printed no URL in 30 s')), 30_000);
    p.stdout.on('data', (d) => {
      out += d;
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (line) { clearTimeout(t); ok(JSON.parse(line).url.replace(/\/$/, '')); }
    });
    p.on('exit', (code) => fail(new Error(`trainyard up exited ${code}`)));
  });
  return { p, url };
}

// Stands for a Trainyard daemon of a later API version, which cannot exist here.
function futureDaemon() {
  const srv = http.createServer((req, res) => {
    res.writeHead(req.url === '/api/v1/health' ? 200 : 404, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ version: '9.0.0', api: 2, auth_required: true, features: [] }));
  });
  return new Promise((ok) => srv.listen(0, '127.0.0.1', () => ok({ srv, url: `http://127.0.0.1:${srv.address().port}` })));
}

// On the local daemon's Connect page: fill the form, press a button, return the message.
async function connectForm(url, token, button = 'lab-connect', wait = true) {
  await js(`if (location.hash !== '#/connect') location.hash = '#/connect';`);
  await until('the Connect page did not show its form', () => js('return !!document.getElementById("lab-url")'));
  await js(`document.getElementById('lab-message').replaceChildren();
    document.getElementById('lab-url').value = arguments[0];
    document.getElementById('lab-token').value = arguments[1];
    document.getElementById(arguments[2]).click();`, url, token, button);
  if (!wait) return null;
  return until(`no message after ${button} ${url}`, () => js(`return document.getElementById('lab-message')?.innerText || null`));
}

async function expectLocal(localOrigin, what) {
  const u = await pageUrl();
  if (!u.startsWith(localOrigin)) throw new Error(`${what}: the window left the local daemon for ${u}`);
  const c = await command('connection');
  if (c.ok?.showing !== 'local') throw new Error(`${what}: connection says ${JSON.stringify(c)}`);
}

async function labSteps(localOrigin) {
  const labHome = mkdtempSync(join(tmpdir(), 'trainyard-lab-'));
  const lab = await startDaemon({ ...cliEnv, TRAINYARD_HOME: labHome }, '1xL4-24GB');
  const future = await futureDaemon();
  try {
    const labToken = readFileSync(join(labHome, 'daemon.token'), 'utf8').trim();
    const c0 = await command('connection');
    if (c0.ok?.token_store !== tokenStore) throw new Error(`the app keeps tokens in ${JSON.stringify(c0)}, expected ${tokenStore}`);

    // Bad input: a message each, and the window stays on the local daemon.
    const nobody = `http://127.0.0.1:${await freePort()}`;
    let m = await connectForm(nobody, labToken);
    if (!/cannot reach/i.test(m) || !m.includes(nobody)) throw new Error(`unreachable address: ${m}`);
    await expectLocal(localOrigin, 'after an unreachable address');
    m = await connectForm(lab.url, 'not-the-token');
    if (!/refused the token/i.test(m)) throw new Error(`wrong token: ${m}`);
    await expectLocal(localOrigin, 'after a wrong token');
    m = await connectForm(future.url, labToken);
    if (!/API version 2/.test(m) || !/speaks version 1/.test(m)) throw new Error(`other API version: ${m}`);
    await expectLocal(localOrigin, 'after a daemon of another API version');
    m = await connectForm('ftp://lab', labToken);
    if (!/not a lab server address/.test(m)) throw new Error(`bad address: ${m}`);
    if (existsSync(join(appConfig, 'lab-token'))) throw new Error('a refused token was kept');
    console.log('PASS an unreachable address, a wrong token, another API version and a bad address each say why and keep the local daemon');

    m = await connectForm(lab.url, labToken, 'lab-test');
    if (!/Connection works/.test(m)) throw new Error(`test connection: ${m}`);
    await expectLocal(localOrigin, 'after a connection test');

    // Connect: the window shows the lab's GPUs, the token out of the URL.
    await connectForm(lab.url, labToken, 'lab-connect', false);
    await until('the window did not show the lab daemon', async () => (await pageUrl()).startsWith(lab.url) && (await bodyText()).includes('L4'));
    if ((await pageUrl()).includes('token=')) throw new Error('the lab token stayed in the URL');
    const toml = readFileSync(join(appConfig, 'desktop.toml'), 'utf8');
    if (!toml.includes(lab.url) || toml.includes(labToken)) throw new Error(`desktop.toml: ${toml}`);
    const tokenFile = join(appConfig, 'lab-token');
    if (tokenStore === 'file') {
      if ((statSync(tokenFile).mode & 0o777) !== 0o600) throw new Error('lab-token is not 0600');
      if (!readFileSync(tokenFile, 'utf8').includes(labToken)) throw new Error('lab-token does not hold the token');
    } else if (existsSync(tokenFile)) {
      throw new Error('a keyring is in use, yet the token went to a file');
    }
    console.log(`PASS the window connects to a lab daemon with its token (kept in the ${tokenStore} store, not in desktop.toml)`);

    // The lab's page may read the connection and switch back, not connect
    // elsewhere or change settings. (This lab is on loopback, so it has the
    // folder picker every loopback page has; a lab elsewhere has not.)
    for (const [name, args] of [['connect_lab', { url: nobody, token: 'x' }], ['forget_lab', {}], ['set_autostart', { on: true }]]) {
      const denied = await command(name, args);
      if (!denied.err) throw new Error(`the lab page may call ${name}: ${JSON.stringify(denied)}`);
    }
    const seen = await command('connection');
    if (seen.ok?.showing !== 'lab' || seen.ok?.lab !== lab.url) throw new Error(`connection on the lab page: ${JSON.stringify(seen)}`);

    // One click back to the local daemon (the header's button).
    await until('no header button on the lab page', () => js('return !!document.getElementById("desktop-conn")'));
    await js(`document.getElementById('desktop-conn').click()`);
    await until('the header button did not bring the local daemon back', async () => (await pageUrl()).startsWith(localOrigin) && (await bodyText()).includes('A100'));
    await expectLocal(localOrigin, 'after switching back');
    console.log('PASS one click on the lab page shows the local daemon again');

    // The remembered lab, with its kept token (nothing typed).
    await js(`location.hash = '#/connect'`);
    await until('no remembered lab on the Connect page', () => js('return !!document.getElementById("lab-show")'));
    await js(`document.getElementById('lab-show').click()`);
    await until('the remembered lab did not show', async () => (await pageUrl()).startsWith(lab.url) && (await bodyText()).includes('L4'));
    await js(`location.hash = '#/connect'`);
    await until('no way back on the lab\'s Connect page', () => js('return !!document.getElementById("use-local")'));
    await js(`document.getElementById('use-local').click()`);
    await until('the Connect page\'s button did not bring the local daemon back', async () => (await pageUrl()).startsWith(localOrigin));
    console.log('PASS the remembered lab shows again with its kept token, and back');

    // Lend this computer's GPUs to the lab: the app's agent joins the lab's
    // pool (with the kept token), then comes back to the local daemon.
    const labAgents = async () => (await fetch(`${lab.url}/api/v1/agents`, { headers: { authorization: `Bearer ${labToken}` } })).json();
    const mine = (agents) => agents.find((a) => (a.report.gpus ?? []).some((g) => /A100/.test(g.name)));
    await js(`location.hash = '#/connect'`);
    await until('no lend toggle on the Connect page', () => js('return !!document.getElementById("lend-gpus")'));
    await js(`document.getElementById('lend-gpus').click()`);
    await until('the lab\'s pool did not get this computer\'s GPUs', async () => {
      const a = mine(await labAgents());
      return a && a.alive && !a.report.leaving;
    });
    const lentNow = await command('connection');
    if (lentNow.ok?.lent_to !== lab.url) throw new Error(`connection while lent: ${JSON.stringify(lentNow)}`);
    if (!/lend_gpus = true/.test(readFileSync(join(appConfig, 'desktop.toml'), 'utf8'))) throw new Error('desktop.toml does not keep the lending');
    await until('the lend toggle is not on', () => js('return document.getElementById("lend-gpus")?.checked === true && !document.getElementById("lend-gpus").disabled'));
    await js(`document.getElementById('lend-gpus').click()`);
    await until('the GPUs did not come back', async () => !(await command('connection')).ok?.lent_to);
    const left = mine(await labAgents());
    if (!left?.report.leaving) throw new Error(`the lab was not told the agent left: ${JSON.stringify(left)}`);
    await until('the local daemon has no agent again', async () => {
      const r = await fetch(`${localOrigin}/api/v1/agents`, { headers: { authorization: `Bearer ${readFileSync(join(home, 'daemon.token'), 'utf8').trim()}` } });
      return (await r.json()).some((a) => a.alive && !a.report.leaving && a.report.gpus.some((g) => /A100/.test(g.name)));
    });
    console.log('PASS this computer\'s GPUs are lent to the lab and taken back');

    // Disconnect: forget the lab and its token.
    await js(`location.hash = '#/connect'`);
    await until('no Forget button', () => js('return !!document.getElementById("lab-forget")'));
    await js(`document.getElementById('lab-message').replaceChildren(); document.getElementById('lab-forget').click()`);
    m = await until('no message after Forget', () => js(`return document.getElementById('lab-message')?.innerText || null`));
    if (!/Forgot/.test(m)) throw new Error(`forget: ${m}`);
    if (existsSync(tokenFile)) throw new Error('the token file outlived Forget');
    const after = await command('connection');
    if (after.ok?.lab) throw new Error(`still remembered: ${JSON.stringify(after)}`);
    const again = await command('test_lab', { url: lab.url, token: null });
    if (!/no token/.test(again.err?.message ?? '')) throw new Error(`a token outlived Forget: ${JSON.stringify(again)}`);
    console.log('PASS Forget drops the lab and its token');

    // Close to tray and autostart, from the Connect page.
    await js(`document.getElementById('close-to-tray').click(); document.getElementById('autostart').click();`);
    const entry = join(xdgConfig, 'autostart', 'trainyard-desktop.desktop');
    await until('no autostart entry', async () => existsSync(entry) && /close_to_tray = true/.test(readFileSync(join(appConfig, 'desktop.toml'), 'utf8')));
    if (!/^Exec=.*trainyard-desktop"? --hidden$/m.test(readFileSync(entry, 'utf8'))) throw new Error(`autostart entry:\n${readFileSync(entry, 'utf8')}`);
    await js(`document.getElementById('autostart').click(); document.getElementById('close-to-tray').click();`);
    await until('the autostart entry stayed', async () => !existsSync(entry) && /close_to_tray = false/.test(readFileSync(join(appConfig, 'desktop.toml'), 'utf8')));
    console.log('PASS close to tray and autostart toggle from the UI');
  } finally {
    future.srv.close();
    try { process.kill(-lab.p.pid, 'SIGTERM'); } catch {}
    await sleep(500);
    rmSync(labHome, { recursive: true, force: true });
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

  await labSteps(new URL(own.url).origin);

  // Closing the window (as its title bar's button does): with close to tray
  // on, the window hides and the app, its daemon and its jobs go on; with
  // it off, the app quits and stops its daemon.
  const closeWindow = () => js('window.__TAURI__.window.getCurrentWindow().close(); return true');
  const ownHealth = async () => (await fetch(`${new URL(own.url).origin}/api/v1/health`).catch(() => null))?.ok === true;
  const sleeper = JSON.parse(await runCli(['--json', 'submit', '--', 'sleep', '600']));
  const sleeperId = sleeper.ids[0];
  if ((await command('set_close_to_tray', { on: true })).err) throw new Error('close to tray did not turn on');
  await closeWindow();
  await until('the window did not hide', () => js('return document.visibilityState === "hidden"'), 10_000);
  await sleep(1000);
  if (!(await ownHealth())) throw new Error('closing to the tray stopped the daemon');
  await until('the job did not run with the window in the tray', async () => JSON.parse(await runCli(['--json', 'show', String(sleeperId)])).state === 'running');
  if ((await command('set_close_to_tray', { on: false })).err) throw new Error('close to tray did not turn off');
  await closeWindow().catch(() => {});
  await waitLockFree('closing the window with close to tray off did not quit the app');
  if (await ownHealth()) throw new Error('the daemon outlived the app');
  // The driver still counts the session of the app that quit.
  await closeApp();
  console.log('PASS close to tray hides the window and keeps the daemon and its job; without it closing quits');

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
  // The GPU cards (the history below may show the first app's A100s: same home).
  const cards = await js(`return [...document.querySelectorAll('.gpu-name')].map((e) => e.textContent).join(' ')`);
  if (cards.includes('A100')) throw new Error(`the app started its own daemon beside the running one: ${cards}`);
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
  rmSync(xdgConfig, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);

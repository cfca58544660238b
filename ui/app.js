// The shell: theme, sign-in, header (version, connection state), the hash
// router and the per-page context (abort signal, live events, cleanups).

import * as api from './api.js';
import { h, icon, failure, loading } from './lib/dom.js';
import { ago } from './lib/format.js';
import * as theme from './lib/theme.js';
import { throttle } from './lib/util.js';
import * as gpus from './pages/gpus.js';
import * as queue from './pages/queue.js';
import * as datasets from './pages/datasets.js';
import * as runs from './pages/runs.js';
import * as usage from './pages/usage.js';
import * as schedules from './pages/schedules.js';
import * as watches from './pages/watches.js';
import * as notifications from './pages/notifications.js';
import * as connect from './pages/connect.js';

const PAGES = { gpus, queue, schedules, watches, datasets, runs, usage, notifications, connect };
const TITLES = { gpus: 'GPUs', queue: 'Queue', schedules: 'Schedules', watches: 'Watches', datasets: 'Datasets', runs: 'Runs', usage: 'Usage', notifications: 'Notifications', connect: 'Connection' };

const main = document.getElementById('main');
let health = null;
let current = null; // {dispose} of the mounted page
let started = false;

// ---------------------------------------------------------------- routing ---

/** `#/queue/12?state=running` → `{page: 'queue', id: '12', query}`. */
function parseRoute() {
  const raw = location.hash.replace(/^#\/?/, '');
  const q = raw.indexOf('?');
  const path = q < 0 ? raw : raw.slice(0, q);
  const parts = path.split('/').filter(Boolean).map((p) => {
    try { return decodeURIComponent(p); } catch { return p; }
  });
  return {
    page: parts[0] || 'gpus',
    id: parts.length > 1 ? parts.slice(1).join('/') : null,
    query: new URLSearchParams(q < 0 ? '' : raw.slice(q + 1)),
  };
}

/**
 * Replace the hash's query without re-rendering (filters keep their state in
 * the URL so reloads and links keep them).
 */
function setQuery(params) {
  const { page, id } = parseRoute();
  const path = `#/${page}${id ? `/${encodeURIComponent(id)}` : ''}`;
  const qs = new URLSearchParams(Object.entries(params).filter(([, v]) => v != null && v !== '')).toString();
  history.replaceState(null, '', qs ? `${path}?${qs}` : path);
}

function render() {
  current?.dispose();
  const route = parseRoute();
  const ac = new AbortController();
  const cleanups = [];
  // What a page gets: the daemon's health, an abort signal for its fetches,
  // and helpers whose timers and subscriptions end when the page goes away.
  const ctx = {
    health,
    signal: ac.signal,
    setQuery,
    /** Call `fn` (rate-limited to one per `ms`) on events of these types and on refreshes. */
    live(types, fn, ms = 250) {
      const t = throttle(fn, ms);
      // Hidden (another tab, a minimized window, the desktop app in its
      // tray): no redraws; one catch-up when the page shows again.
      let missed = false;
      const off = api.subscribe((ev) => {
        if (ev.type !== 'refresh' && !types.includes(ev.type)) return;
        if (document.hidden) missed = true;
        else t();
      });
      const onShow = () => { if (!document.hidden && missed) { missed = false; t(); } };
      document.addEventListener('visibilitychange', onShow);
      cleanups.push(off, t.cancel, () => document.removeEventListener('visibilitychange', onShow));
      return t;
    },
    /** Subscribe to every event (the page filters). */
    subscribe(fn) { cleanups.push(api.subscribe(fn)); },
    /** Call `fn` every `ms` while the page is visible (and once when it shows again). */
    every(fn, ms) {
      const i = setInterval(() => { if (!document.hidden) fn(); }, ms);
      const onShow = () => { if (!document.hidden) fn(); };
      document.addEventListener('visibilitychange', onShow);
      cleanups.push(() => clearInterval(i), () => document.removeEventListener('visibilitychange', onShow));
    },
    onCleanup(fn) { cleanups.push(fn); },
    title(t) { document.title = t ? `${t} · Trainyard` : 'Trainyard'; },
  };
  current = { dispose() { ac.abort(); for (const f of cleanups.splice(0)) f(); } };

  for (const a of document.querySelectorAll('.nav a')) {
    if (a.dataset.page === route.page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const root = h('div', { class: `page page-${route.page}` });
  main.replaceChildren(root);
  const page = PAGES[route.page];
  ctx.title(TITLES[route.page] ?? 'Not found');
  if (!page) {
    root.append(failure({ title: 'No such page', message: `There is no page "${route.page}". Pick one on the left.` }));
    return;
  }
  try {
    page.mount(root, route, ctx);
  } catch (e) {
    console.error(e);
    root.replaceChildren(failure(e, render));
  }
}

function start() {
  document.body.classList.remove('locked');
  api.startEvents();
  api.pauseEventsWhileHidden();
  if (!started) {
    started = true;
    window.addEventListener('hashchange', () => {
      if (api.takeTokenFromUrl()) return boot();
      // In-page anchors (the skip link) are not routes.
      if (location.hash.startsWith('#/') || location.hash === '') render();
    });
  }
  render();
}

// ------------------------------------------------------------------ login ---

function showLogin(reason) {
  current?.dispose();
  current = null;
  document.body.classList.add('locked');
  document.title = 'Sign in · Trainyard';
  const input = h('input', {
    id: 'token', name: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false', required: true,
    placeholder: 'Paste the daemon token', 'aria-describedby': 'token-hint',
  });
  const error = h('div', { class: 'field-error', role: 'alert' }, reason ? reason.message : '');
  const button = h('button', { class: 'btn btn-primary', type: 'submit' }, 'Sign in');
  const form = h('form', {
    class: 'login-card panel',
    async onsubmit(e) {
      e.preventDefault();
      const t = input.value.trim();
      if (!t) return;
      button.disabled = true;
      error.textContent = '';
      try {
        if (await api.checkToken(t)) {
          api.setToken(t);
          start();
        } else {
          error.textContent = 'The daemon rejected this token. Check that it is the current content of daemon.token.';
          input.select();
        }
      } catch (err) {
        error.textContent = err.message;
      } finally {
        button.disabled = false;
      }
    },
  },
  h('div', { class: 'login-icon' }, icon('lock')),
  h('h1', null, 'Sign in to Trainyard'),
  h('p', { class: 'muted' }, 'This daemon requires an access token.'),
  h('div', { class: ['field', reason ? 'invalid' : null] },
    h('label', { for: 'token' }, 'Access token'),
    input,
    h('p', { class: 'hint', id: 'token-hint' },
      'It is in ', h('code', null, 'daemon.token'), ' in the daemon\'s Trainyard home, e.g. ',
      h('code', null, 'cat ~/.local/share/trainyard/daemon.token'), '. The desktop app signs in by itself.'),
    error),
  button);
  main.replaceChildren(h('div', { class: 'login' }, form));
  input.focus();
}

// ----------------------------------------------------------------- header ---

const CONN_TEXT = {
  idle: 'Not connected', connecting: 'Connecting…', live: 'Live', reconnecting: 'Reconnecting…',
};

function showConnection(state) {
  const el = document.getElementById('conn');
  el.dataset.state = state;
  el.lastChild.textContent = CONN_TEXT[state];
  el.title = state === 'live' ? 'Receiving live updates from the daemon' : 'Live updates paused; retrying with backoff';
}

const THEME_NEXT = { auto: 'light', light: 'dark', dark: 'auto' };
const THEME_ICON = { auto: 'auto', light: 'sun', dark: 'moon' };

function showTheme() {
  const b = document.getElementById('theme');
  const c = theme.choice();
  b.replaceChildren(icon(THEME_ICON[c]));
  b.title = `Theme: ${c === 'auto' ? 'follow system' : c}. Click for ${THEME_NEXT[c] === 'auto' ? 'system' : THEME_NEXT[c]}.`;
  b.setAttribute('aria-label', b.title);
}

function decorate() {
  for (const a of document.querySelectorAll('.nav a')) a.prepend(icon(a.dataset.icon));
  const themeBtn = document.getElementById('theme');
  themeBtn.addEventListener('click', () => { theme.setChoice(THEME_NEXT[theme.choice()]); showTheme(); });
  showTheme();
  api.onConnection(showConnection);
  api.onUnauthorized((err) => showLogin({
    message: api.getToken()
      ? `${err.message.replace(/\.?$/, '.')} The daemon may have restarted with a new token: sign in again.`
      : null,
  }));
  // `/` focuses the page's search (or first) field, like most dev tools.
  document.addEventListener('keydown', (e) => {
    if (e.key !== '/' || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.target.closest?.('input, textarea, select, [contenteditable]')) return;
    const f = main.querySelector('[data-search]') ?? main.querySelector('input:not([type=hidden]), select, textarea');
    if (f) { e.preventDefault(); f.focus(); }
  });
  document.querySelector('.skip').addEventListener('click', (e) => { e.preventDefault(); main.focus(); });
  // The desktop app: which daemon the window shows, and the way back.
  connect.decorateHeader();
  // Relative times ("3m ago") age in place; no refetch needed.
  setInterval(() => {
    if (document.hidden) return;
    // Only where the text changes: any change repaints the window.
    for (const t of document.querySelectorAll('time[data-ms]')) {
      const text = ago(Number(t.dataset.ms));
      if (t.textContent !== text) t.textContent = text;
    }
  }, 10_000);
}

// ------------------------------------------------------------------- boot ---

async function boot() {
  api.takeTokenFromUrl();
  main.replaceChildren(loading('Connecting to the daemon…'));
  try {
    health = await api.health();
  } catch (e) {
    main.replaceChildren(failure({ title: 'Cannot reach the daemon', message: e.message }, boot));
    return;
  }
  const v = document.getElementById('version');
  v.textContent = `v${health.version}`;
  v.title = `Daemon version ${health.version}${health.features.length ? `; features: ${health.features.join(', ')}` : ''}`;
  if (health.auth_required && !api.getToken()) showLogin(null);
  else start();
}

theme.init();
decorate();
boot();

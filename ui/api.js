// The daemon's HTTP API (/api/v1). This is the only module that calls
// fetch: pages import the calls below, the live event feed (`subscribe`),
// and the token/connection state.

import { sseParser } from './lib/sse.js';

const BASE = '/api/v1';
const TOKEN_KEY = 'trainyard.token';

/** An API failure: HTTP status (0 when unreachable), error code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

// ---------------------------------------------------------------- token ---

let token = sessionStorage.getItem(TOKEN_KEY);
const unauthorizedFns = new Set();

export const getToken = () => token;

export function setToken(t) {
  token = t || null;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/**
 * The desktop shell opens `URL#token=T`: keep T for this tab's session and
 * take it out of the address bar (and history) at once.
 */
export function takeTokenFromUrl() {
  const m = /^#token=([^&]*)(?:&(.*))?$/.exec(location.hash);
  if (!m) return false;
  setToken(decodeURIComponent(m[1]));
  const route = m[2]?.startsWith('/') ? `#${m[2]}` : '#/gpus';
  history.replaceState(null, '', `${location.pathname}${location.search}${route}`);
  return true;
}

/** Called with the ApiError whenever the daemon answers 401. */
export function onUnauthorized(fn) {
  unauthorizedFns.add(fn);
  return () => unauthorizedFns.delete(fn);
}

function unauthorized(err) {
  stopEvents();
  for (const fn of unauthorizedFns) fn(err);
}

// -------------------------------------------------------------- requests ---

async function errorFrom(res) {
  const text = await res.text().catch(() => '');
  try {
    const e = JSON.parse(text).error;
    if (e?.message) return new ApiError(res.status, e.code ?? 'error', e.message);
  } catch { /* not JSON: fall through */ }
  return new ApiError(res.status, 'http', `${res.status} ${res.statusText}${text ? `: ${text.slice(0, 200)}` : ''}`);
}

function headers(extra = {}) {
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function request(method, path, { query, body, signal, raw = false } = {}) {
  let url = BASE + path;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v != null && v !== '') q.set(k, String(v));
    if ([...q].length) url += `?${q}`;
  }
  const init = { method, signal, cache: 'no-store', headers: headers() };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(url, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'unreachable', `Cannot reach the Trainyard daemon at ${location.host}. Is \`trainyard up\` running?`);
  }
  if (!res.ok) {
    const err = await errorFrom(res);
    if (res.status === 401) unauthorized(err);
    throw err;
  }
  if (raw) return res;
  return res.status === 204 ? null : res.json();
}

const get = (path, opts) => request('GET', path, opts);
const post = (path, body, opts) => request('POST', path, { ...opts, body: body ?? {} });
const seg = encodeURIComponent;

// ------------------------------------------------------------- endpoints ---

/** `GET /health`: version, auth_required, features (older daemons: none). */
export async function health() {
  const h = await get('/health');
  return { ...h, features: h.features ?? [] };
}

/** Check a token without keeping it: resolves true if the daemon accepts it. */
export async function checkToken(t) {
  const res = await fetch(`${BASE}/agents`, { headers: { Authorization: `Bearer ${t}` }, cache: 'no-store' })
    .catch(() => { throw new ApiError(0, 'unreachable', `Cannot reach the Trainyard daemon at ${location.host}.`); });
  if (res.status === 401) return false;
  if (!res.ok) throw await errorFrom(res);
  return true;
}

export const agents = (opts) => get('/agents', opts);

/**
 * One page of jobs: `{jobs, next, total}`. `query`: `state` (an array),
 * `user`, `project`, `tag`, `q` (id or text), `order` (`queue`: scheduling
 * order, the default; `finished`: finished jobs, newest first), `limit`
 * (≤ 5000, default 500) and `cursor` (the `next` of the previous page).
 */
export async function jobsPage({ state = [], ...rest } = {}, opts) {
  const res = await get('/jobs', { ...opts, raw: true, query: { state: state.join(','), ...rest } });
  const jobs = await res.json();
  return {
    jobs,
    next: res.headers.get('x-trainyard-next-cursor'),
    total: Number(res.headers.get('x-trainyard-total') ?? jobs.length),
  };
}
/** The first page (500) of jobs in scheduling order; `states` is an array (all when empty). */
export const jobs = (states = [], opts) => get('/jobs', { ...opts, query: { state: states.join(',') } });
/** `{queued: n, running: n, ...}`, with the filters `user`, `project`, `tag`, `q`. */
export const jobCounts = (query = {}, opts) => get('/jobs/counts', { ...opts, query });
export const job = (id, opts) => get(`/jobs/${seg(id)}`, opts);
export const submit = (specs) => post('/jobs', { jobs: specs });
export const cancel = (id) => post(`/jobs/${seg(id)}/cancel`);
export const retry = (id) => post(`/jobs/${seg(id)}/retry`);

/**
 * Read an attempt's log from `offset`: `{bytes, offset, done, attempt,
 * jobState}` where `offset` is the offset after these bytes and `done` says
 * the attempt ended and everything was read.
 */
export async function log(id, { attempt, offset = 0, signal } = {}) {
  const res = await get(`/jobs/${seg(id)}/log`, { query: { attempt, offset }, signal, raw: true });
  const bytes = new Uint8Array(await res.arrayBuffer());
  const hdr = (k) => res.headers.get(k);
  return {
    bytes,
    offset: Number(hdr('x-trainyard-log-offset') ?? offset + bytes.length),
    done: hdr('x-trainyard-log-done') === '1',
    attempt: Number(hdr('x-trainyard-log-attempt') ?? attempt ?? 0),
    jobState: hdr('x-trainyard-job-state'),
  };
}

export const datasets = (opts) => get('/datasets', opts);
export const versions = (name, opts) => get(`/datasets/${seg(name)}/versions`, opts);
export const diff = (name, a, b, opts) => get(`/datasets/${seg(name)}/diff`, { ...opts, query: { a, b } });
export const datasetRemotes = (name, opts) => get(`/datasets/${seg(name)}/remotes`, opts);
export const snapshot = (name, { path, message, tag }) =>
  post(`/datasets/${seg(name)}/snapshot`, { path, message: message || null, tag: tag || null });

export const runs = ({ project, state } = {}, opts) => get('/runs', { ...opts, query: { project, state } });
export const run = (id, opts) => get(`/runs/${seg(id)}`, opts);
export const runHistory = (id, keys, opts) => get(`/runs/${seg(id)}/history`, { ...opts, query: { keys: keys.join(',') } });
export const scanRuns = (paths) => post('/runs/scan', { paths });
export const syncRun = (id) => post(`/runs/${seg(id)}/sync`);

/**
 * GPU usage: `query` has `by` (comma-separated dimensions), `since`,
 * `until`, `period` (`total`, `daily`, `monthly`) and `timezone`.
 */
export const usage = (query = {}, opts) => get('/usage', { ...opts, query });
/** GPU history: `query` has `host`, `gpu`, `job`, `since`, `until`, `resolution`. */
export const telemetry = (query = {}, opts) => get('/telemetry', { ...opts, query });
/** The wandb runs a job's attempts produced: `[{job, attempt, run}]`. */
export const jobRuns = (id, opts) => get(`/jobs/${seg(id)}/runs`, opts);
/** The job attempts that produced a run: `[{job, attempt, run}]`. */
export const runJobs = (id, opts) => get(`/runs/${seg(id)}/jobs`, opts);

export const schedules = (opts) => get('/schedules', opts);
/** `{schedule, next, runs, missed}`. */
export const schedule = (name, opts) => get(`/schedules/${seg(name)}`, opts);
export const pauseSchedule = (name) => post(`/schedules/${seg(name)}/pause`);
export const resumeSchedule = (name) => post(`/schedules/${seg(name)}/resume`);
/** Fire now: `{name, occurrence: {outcome, jobs, detail, ...}}`. */
export const runSchedule = (name) => post(`/schedules/${seg(name)}/run`);

/** Watch rules with their state and newest log line. */
export const watches = (opts) => get('/watches', opts);
/** Every watch's log, newest first. */
export const watchLog = (opts) => get('/watches/log', { ...opts, query: { limit: 200 } });
export const pauseWatch = (id) => post(`/watches/${seg(String(id))}/pause`);
export const resumeWatch = (id) => post(`/watches/${seg(String(id))}/resume`);

/** Notification sinks with their rules (URLs as scheme and host). */
export const notifySinks = (opts) => get('/notify/sinks', opts);
/** Add a sink: `{name, kind, url, events, users, projects, tags, priority, digest}`. */
export const notifyAdd = (req) => post('/notify/sinks', req);
export const notifyRemove = (name) => request('DELETE', `/notify/sinks/${seg(name)}`);
/** Queue a test message: `{event_id, sink}`. */
export const notifyTest = (name) => post(`/notify/sinks/${seg(name)}/test`);
/** Deliveries, newest first: `query` has `state` (`dead`: the dead letters) and `limit`. */
export const notifyLog = (query = {}, opts) => get('/notify/log', { ...opts, query });
/** Add or remove a job's tags: `{id, tags}`. */
export const tagJob = (id, add = [], remove = []) => post(`/jobs/${seg(String(id))}/tags`, { add, remove });
/** Add or remove a wandb run's tags. */
export const tagRun = (id, add = [], remove = []) => post(`/runs/${seg(id)}/tags`, { add, remove });

// ----------------------------------------------------------- live events ---

const subscribers = new Set();
const connFns = new Set();
let conn = 'idle'; // idle | connecting | live | reconnecting
let stream = null; // AbortController of the running event loop

/**
 * Live changes: `fn(event)` gets `{type: 'job'|'agent'|'log'|'schedule', ...}` as the
 * daemon sends them, and `{type: 'refresh'}` when events may have been missed
 * (after a reconnect, or when the daemon says we lagged): refetch everything.
 * Returns the unsubscribe function.
 */
export function subscribe(fn) {
  subscribers.add(fn);
  return () => subscribers.delete(fn);
}

/** Connection state changes; `fn` is called at once with the current one. */
export function onConnection(fn) {
  connFns.add(fn);
  fn(conn);
  return () => connFns.delete(fn);
}

function setConn(s) {
  if (s === conn) return;
  conn = s;
  for (const fn of connFns) fn(s);
}

function emit(ev) {
  for (const fn of subscribers) {
    try { fn(ev); } catch (e) { console.error('event handler failed', e); }
  }
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
});

/** Open the event stream (idempotent); it reconnects with backoff. */
export function startEvents() {
  if (stream) return;
  stream = new AbortController();
  eventLoop(stream.signal);
}

export function stopEvents() {
  stream?.abort();
  stream = null;
  setConn('idle');
}

/**
 * Close the stream while the page stays hidden (nothing redraws then, and
 * every event would still wake the page and the daemon), and open it again
 * when it shows, with a `refresh` so that pages refetch what they missed.
 */
let hiddenTimer = null;
let paused = false;
export function pauseEventsWhileHidden(afterMs = 30_000) {
  const check = () => {
    clearTimeout(hiddenTimer);
    if (document.hidden) {
      hiddenTimer = setTimeout(() => {
        if (!document.hidden || !stream) return;
        stream.abort();
        stream = null;
        paused = true;
        setConn('idle');
      }, afterMs);
    } else if (paused) {
      paused = false;
      stream = new AbortController();
      eventLoop(stream.signal, true);
    }
  };
  document.addEventListener('visibilitychange', check);
  check();
}

async function eventLoop(signal, resumed = false) {
  let delay = 500;
  let connectedBefore = resumed;
  while (!signal.aborted) {
    setConn(connectedBefore ? 'reconnecting' : 'connecting');
    try {
      const res = await fetch(`${BASE}/events`, {
        headers: headers({ Accept: 'text/event-stream' }), signal, cache: 'no-store',
      });
      if (res.status === 401) { unauthorized(await errorFrom(res)); return; }
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      setConn('live');
      if (connectedBefore) emit({ type: 'refresh' });
      connectedBefore = true;
      delay = 500;
      const push = sseParser((name, data) => {
        if (name === 'lagged') return emit({ type: 'refresh' });
        try { emit({ type: name, ...JSON.parse(data) }); } catch { /* not JSON: ignore */ }
      });
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      // The daemon sends a keep-alive comment every 15 s; a silent minute
      // means the connection is dead without having been closed.
      let watchdog;
      const arm = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => reader.cancel().catch(() => {}), 60_000);
      };
      try {
        for (arm(); ; arm()) {
          const { value, done } = await reader.read();
          if (done) break;
          push(value);
        }
      } finally {
        clearTimeout(watchdog);
      }
    } catch {
      if (signal.aborted) return;
    }
    if (signal.aborted) return;
    // The stream ended or failed: the daemon restarted or went away.
    setConn('reconnecting');
    await sleep(delay, signal);
    delay = Math.min(delay * 2, 10_000);
  }
}

// Formatting of sizes, durations, times and numbers, in one place so every
// page says "3.2 GiB" and "4m 12s" the same way.

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** Bytes as a binary-prefixed size: `1536` → `1.5 KiB`. */
export function bytes(n) {
  if (n == null || !Number.isFinite(n)) return '—';
  let i = 0;
  let v = Math.abs(n);
  while (v >= 1024 && i < UNITS.length - 1) { v /= 1024; i++; }
  const s = i === 0 ? String(v) : v.toFixed(v < 10 ? 1 : 0);
  return `${n < 0 ? '−' : ''}${s} ${UNITS[i]}`;
}

/** MiB (GPU memory) as GiB with one decimal: `81920` → `80.0 GiB`. */
export function mib(n) {
  if (n == null) return '—';
  if (n < 1024) return `${n} MiB`;
  const g = n / 1024;
  return `${g >= 100 ? g.toFixed(0) : g.toFixed(1)} GiB`;
}

/** Seconds as a compact duration: `3725` → `1h 2m`, `42.5` → `42s`. */
export function duration(s) {
  if (s == null || !Number.isFinite(s)) return '—';
  if (s < 1) return s <= 0 ? '0s' : `${Math.round(s * 1000)}ms`;
  s = Math.round(s);
  const d = Math.floor(s / 86400), hr = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60), sec = s % 60;
  if (d) return `${d}d ${hr}h`;
  if (hr) return `${hr}h ${m}m`;
  if (m) return `${m}m ${sec}s`;
  return `${sec}s`;
}

/**
 * The idle policy's status of a running attempt (`idle` of a job or a
 * held GPU) as one line — "idle 12m; stop in 18m" — or null while its
 * GPUs are in use or detection has not armed. Mirrors
 * `idle::Status::describe`.
 */
export function idleText(st, now = Date.now()) {
  if (!st) return null;
  const since = st.idle_since_ms;
  const idleFor = () => duration(Math.max(0, now - since) / 1000).split(' ')[0];
  if (st.phase === 'busy') return 'GPUs idle but busy reading: idle detection suspended';
  if (st.phase === 'idle' && since != null) {
    const act = st.act_at_ms ?? since + st.window_ms;
    return act > now
      ? `idle ${idleFor()}; ${st.action} in ${duration((act - now) / 1000).split(' ')[0]}`
      : `idle ${idleFor()}; ${st.action} due now`;
  }
  if (st.phase === 'acted' && since != null) {
    if (st.action === 'notify') return `idle ${idleFor()}; owner notified`;
    return st.action === 'stop' ? 'stopped for idling' : 'requeued for idling';
  }
  return null;
}

/** Nanoseconds since the epoch (the daemon's timestamps) to milliseconds. */
export const nsToMs = (ns) => (ns == null ? null : ns / 1e6);

/** "3m ago" / "in 5s" relative to now, from epoch milliseconds. */
export function ago(ms, now = Date.now()) {
  if (ms == null) return '—';
  const d = (now - ms) / 1000;
  if (Math.abs(d) < 5) return 'just now';
  const text = duration(Math.abs(d)).split(' ')[0];
  return d > 0 ? `${text} ago` : `in ${text}`;
}

/**
 * A date formatter in the user's locale. WebKitGTK under a POSIX locale
 * (LANG=C, common on servers and in CI) reports the language tag "C",
 * which Intl rejects with a RangeError; fall back to English there.
 */
function dateFormat(opts) {
  try {
    return new Intl.DateTimeFormat(undefined, opts);
  } catch {
    return new Intl.DateTimeFormat('en-US', opts);
  }
}

const dateFmt = dateFormat({
  year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
});
const shortFmt = dateFormat({ month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });

/** Full local date and time, from epoch milliseconds. */
export const dateTime = (ms) => (ms == null ? '—' : dateFmt.format(new Date(ms)));
/** Short local date and time ("Nov 22, 18:38"). */
export const shortTime = (ms) => (ms == null ? '—' : shortFmt.format(new Date(ms)));

/**
 * A <time> element showing a relative time, the exact time on hover. The app
 * re-renders the text of every `time[data-ms]` now and then (see app.js).
 */
export function timeEl(ms) {
  const t = document.createElement('time');
  if (ms == null) { t.textContent = '—'; return t; }
  t.dateTime = new Date(ms).toISOString();
  t.dataset.ms = String(ms);
  t.title = dateTime(ms);
  t.textContent = ago(ms);
  return t;
}

/** A metric value: integers as is, floats with 4 significant digits. */
export function num(v) {
  if (v == null) return '—';
  if (typeof v === 'boolean') return String(v);
  if (typeof v !== 'number') return String(v);
  if (Number.isInteger(v)) return Math.abs(v) >= 1e6 ? v.toExponential(3) : String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(3);
  return String(Number(v.toPrecision(4)));
}

/**
 * Labels for a chart axis's ticks (evenly spaced numbers): as short as
 * possible, and never two alike. Fixed notation with as many decimals as
 * the spacing needs; scientific with one shared exponent for very small or
 * large values (`1.5e-4`, `2e-4`, …), with as many mantissa digits as the
 * spacing needs.
 */
export function axisNums(ticks) {
  const finite = ticks.filter((t) => Number.isFinite(t));
  if (finite.length === 0) return ticks.map((t) => num(t));
  const steps = [];
  for (let i = 1; i < finite.length; i++) steps.push(Math.abs(finite[i] - finite[i - 1]));
  const step = Math.min(...steps.filter((d) => d > 0), Infinity);
  const top = Math.max(...finite.map(Math.abs));
  const sci = top !== 0 && (top < 1e-3 || top >= 1e6);
  const exp = sci ? Math.floor(Math.log10(top)) : 0;
  const scale = 10 ** exp;
  // Values in the unit shown (the mantissa for scientific notation).
  const shown = (t) => t / scale;
  // Enough decimals that each label says its tick, within a thousandth of
  // the spacing (floating-point noise like 0.30000000000000004 is dropped).
  const tol = Number.isFinite(step) ? step / scale / 1000 : 0;
  const need = Number.isFinite(step) ? Math.max(0, -Math.floor(Math.log10(step / scale))) : 0;
  let digits = Math.min(12, need);
  while (digits < 12 && finite.some((t) => Math.abs(Number(shown(t).toFixed(digits)) - shown(t)) > tol)) digits++;
  const label = (t) => {
    if (!Number.isFinite(t)) return num(t);
    if (t === 0) return '0';
    const m = trimZeros(shown(t).toFixed(digits));
    return sci ? `${m}e${exp}` : m;
  };
  const out = ticks.map(label);
  return new Set(out).size === new Set(ticks).size ? out : ticks.map((t) => String(t));
}

function trimZeros(s) {
  return s.includes('.') ? s.replace(/\.?0+$/, '') : s;
}

/** The first `n` characters of a content id. */
export const shortId = (id, n = 10) => (id ? id.slice(0, n) : '—');

/** Plural: `plural(3, 'file')` → `3 files`. */
export const plural = (n, word, many = `${word}s`) => `${n} ${n === 1 ? word : many}`;

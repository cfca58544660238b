// Pure helpers of the Usage page (no DOM, so `node --test` runs them): the
// CSV that `trainyard usage --csv` prints, numbers written as Rust writes
// them, the time-range presets, the days of a range in the lab's zone,
// daily rows stacked into bars, and the per-user idle ranking.

/** The dimensions `GET /usage` breaks hours down by, with their labels. */
export const DIMS = [
  ['project', 'Project'], ['user', 'User'], ['team', 'Team'], ['host', 'Host'], ['model', 'GPU model'], ['tag', 'Tag'],
];

/** The range presets of the picker. */
export const RANGES = [
  ['7d', 'Last 7 days'], ['30d', 'Last 30 days'], ['month', 'This month'], ['last-month', 'Last month'], ['12mo', 'Last 12 months'],
  ['custom', 'Custom'],
];

/** How the table splits its rows in time: `total` (overall), `monthly`, `daily`. */
export const TABLE_PERIODS = [['total', 'Overall'], ['monthly', 'Monthly'], ['daily', 'Daily']];

/** What the bars can show: a row's field and its label. */
export const METRICS = [
  ['allocated_gpu_h', 'Allocated'], ['used_gpu_h', 'Used'], ['idle_gpu_h', 'Idle but allocated'],
];

/**
 * `x` with `digits` decimals as Rust's `format!("{:.N}")` writes it: the
 * nearest decimal, and on an exact tie the even one (`0.125` → `0.12`),
 * where `toFixed` rounds ties up (`0.13`). The CSV must be the CLI's, byte
 * for byte.
 */
export function fixed(x, digits) {
  const s = x.toFixed(digits);
  if (!Number.isFinite(x) || Math.abs(x) >= 1e21) return s;
  // A tie has a finite binary expansion of digits + 1 decimals, so 100
  // decimals (toFixed's most, and exact) show whether this is one.
  const exact = Math.abs(x).toFixed(100);
  const dot = exact.indexOf('.');
  const rest = exact.slice(dot + 1 + digits);
  if (!/^50*$/.test(rest)) return s;
  const down = exact.slice(0, digits ? dot + 1 + digits : dot);
  if (Number(down.at(-1)) % 2 !== 0) return s; // odd: up, as toFixed did
  return `${x < 0 ? '-' : ''}${down}`;
}

const COLUMNS = ['alloc_gpu_h', 'used_gpu_h', 'idle_gpu_h', 'energy_kwh', 'peak_mem_mib', 'jobs', 'runs'];

const numbers = (r) => [
  fixed(r.allocated_gpu_h, 2), fixed(r.used_gpu_h, 2), fixed(r.idle_gpu_h, 2), fixed(r.energy_kwh, 3),
  String(r.peak_mem_mib), String(r.jobs), String(r.runs),
];

function csvField(s) {
  return /[,"\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/**
 * A `GET /usage` answer as `trainyard usage --csv` prints it: a header (the
 * period if any, the dimensions or `key`, then the columns), one line per
 * row, then the totals row.
 */
export function usageCsv(answer) {
  const periodic = answer.period !== 'total';
  const line = (cells) => `${cells.map(csvField).join(',')}\n`;
  const head = [...(periodic ? ['period'] : []), ...answer.by];
  const keyCols = head.length;
  let out = line([...(keyCols ? head : ['key']), ...COLUMNS]);
  for (const r of answer.rows) {
    const labels = [...(periodic ? [r.period ?? ''] : []), ...r.key];
    out += line([...(labels.length ? labels : ['']), ...numbers(r)]);
  }
  const total = keyCols ? ['total', ...Array(keyCols - 1).fill('')] : ['total'];
  out += line([...total, ...numbers(answer.total)]);
  return out;
}

/** A file name for the CSV of an answer: `gpu-usage-user-2026-11-01-2026-12-01.csv`. */
export function csvName(answer) {
  const day = (iso) => String(iso).slice(0, 10);
  const by = answer.by.length ? `-${answer.by.join('-')}` : '';
  return `gpu-usage${by}-${day(answer.since)}-${day(answer.until)}.csv`;
}

// ------------------------------------------------------------- dates ---

/** A date formatter in `zone`, or in the local zone when `zone` is unknown. */
function inZone(zone, opts) {
  try {
    return new Intl.DateTimeFormat('en-CA', { ...opts, timeZone: zone || undefined });
  } catch {
    return new Intl.DateTimeFormat('en-CA', opts);
  }
}

/** `YYYY-MM-DD` of instant `ms` in `zone` (local when unknown). */
export function dateIn(ms, zone) {
  const p = Object.fromEntries(inZone(zone, { year: 'numeric', month: '2-digit', day: '2-digit' })
    .formatToParts(new Date(ms)).map((x) => [x.type, x.value]));
  return `${p.year}-${p.month}-${p.day}`;
}

/** `YYYY-MM` of the month before `month` (`YYYY-MM`). */
export function prevMonth(month) {
  const [y, m] = month.split('-').map(Number);
  return m === 1 ? `${y - 1}-12` : `${y}-${String(m - 1).padStart(2, '0')}`;
}

/**
 * The `since`/`until` parameters of a range preset at `now` (ms), in the
 * lab's `zone` (the answer's `timezone`; local when unknown). `7d` and
 * `30d` are ages the daemon counts back from now; months are the daemon's
 * `YYYY-MM`, whose `until` is the month's end.
 */
export function rangeParams(range, custom = {}, now = Date.now(), zone = undefined) {
  const month = dateIn(now, zone).slice(0, 7);
  switch (range) {
    case '7d': return { since: '7d' };
    case 'month': return { since: month };
    case 'last-month': return { since: prevMonth(month), until: prevMonth(month) };
    case '12mo': {
      let first = month;
      for (let i = 0; i < 11; i++) first = prevMonth(first);
      return { since: first };
    }
    case 'custom': return { since: custom.since || undefined, until: custom.until || undefined };
    default: return { since: '30d' };
  }
}

/** Every `YYYY-MM-DD` from `first` to `last`, both included (at most `max`). */
export function daysFrom(first, last, max = 800) {
  const out = [];
  const d = new Date(`${first}T00:00:00Z`);
  const end = new Date(`${last}T00:00:00Z`);
  if (Number.isNaN(d.getTime()) || Number.isNaN(end.getTime())) return out;
  while (d <= end && out.length < max) {
    out.push(d.toISOString().slice(0, 10));
    d.setUTCDate(d.getUTCDate() + 1);
  }
  return out;
}

/**
 * The days of a daily answer, each one a bar: every day of its range in
 * its zone, and any day a row names (a zone the browser does not know).
 */
export function answerDays(answer) {
  const since = Date.parse(answer.since);
  const until = Date.parse(answer.until);
  const zone = answer.timezone === 'system' ? undefined : answer.timezone;
  const days = Number.isFinite(since) && Number.isFinite(until) && until > since
    ? daysFrom(dateIn(since, zone), dateIn(until - 1, zone))
    : [];
  const all = new Set(days);
  for (const r of answer.rows) if (r.period) all.add(r.period);
  return [...all].sort();
}

// ------------------------------------------------------------- rows ---

/** How a row's key reads: its values joined, `(none)` for `-`. */
export const keyLabel = (key) => key.map((k) => (k === '-' || k === '' ? '(none)' : k)).join(' · ');

/**
 * Daily rows as stacked bars: the `top` keys with the most `metric` over
 * the range get their own segment (largest first, at the bottom), the rest
 * one "other" segment. Returns `{keys, days: [{day, total, parts}], max}`
 * with `parts[i]` the value of `keys[i]` that day.
 */
export function stackDays(rows, days, metric, top = 8) {
  const byKey = new Map();
  for (const r of rows) {
    const k = keyLabel(r.key);
    byKey.set(k, (byKey.get(k) ?? 0) + r[metric]);
  }
  const ranked = [...byKey].filter(([, v]) => v > 0).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).map(([k]) => k);
  const own = ranked.length > top ? ranked.slice(0, top - 1) : ranked;
  const keys = ranked.length > own.length ? [...own, 'other'] : own;
  const at = new Map(own.map((k, i) => [k, i]));
  const index = new Map(days.map((d, i) => [d, i]));
  const out = days.map((day) => ({ day, total: 0, parts: keys.map(() => 0) }));
  for (const r of rows) {
    const i = index.get(r.period);
    if (i == null) continue;
    const k = at.get(keyLabel(r.key)) ?? (keys.length > own.length ? keys.length - 1 : null);
    if (k == null) continue;
    out[i].parts[k] += r[metric];
    out[i].total += r[metric];
  }
  return { keys, days: out, max: Math.max(0, ...out.map((d) => d.total)) };
}

/**
 * Users by idle-but-allocated GPU-hours, most first, from a `by=user`
 * total answer: `[{user, idle, allocated, share}]` (share of their own
 * allocation, 0..1), users without idle time left out.
 */
export function idleRanking(rows) {
  return rows
    .filter((r) => r.idle_gpu_h > 0)
    .map((r) => ({
      user: keyLabel(r.key), idle: r.idle_gpu_h, allocated: r.allocated_gpu_h,
      share: r.allocated_gpu_h > 0 ? r.idle_gpu_h / r.allocated_gpu_h : 0,
    }))
    .sort((a, b) => b.idle - a.idle || a.user.localeCompare(b.user));
}

/**
 * GPU-hours for people: 3 significant digits below 10, fewer decimals
 * above (`0.000833`, `2.50`, `41.3`, `1280`).
 */
export function gpuHours(x) {
  if (x == null) return '—';
  if (x === 0) return '0';
  if (x >= 100) return String(Math.round(x));
  if (x >= 10) return x.toFixed(1);
  if (x >= 1) return x.toFixed(2);
  return String(Number(x.toPrecision(3)));
}

/** Rounded "nice" axis top and step for values up to `max` (≈ 4 lines). */
export function niceScale(max, lines = 4) {
  if (!(max > 0)) return { top: 1, step: 0.25 };
  const raw = max / lines;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  return { top: step * Math.ceil(max / step - 1e-9), step };
}

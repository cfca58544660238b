// GPUs: every agent (host) with every GPU as a card — utilization, memory,
// a sparkline of the last minutes, temperature, power, the job holding it
// and processes Trainyard did not start ("foreign"). Live: agents report
// every ~2 s and each report arrives as an `agent` event; we refetch
// /agents on those (at most once a second) and sample every GPU. Below the
// hosts, each GPU's history from the daemon's telemetry store (1 h, 24 h or
// 7 d of utilization and memory), when the daemon keeps one.

import * as api from '../api.js';
import { h, swap, patch, loading, empty, failure, alertLine, icon, stat } from '../lib/dom.js';
import { duration, idleText, mib, timeEl, plural } from '../lib/format.js';
import { Samples, sparkline } from '../lib/sparkline.js';
import { timeChart } from '../lib/chart.js';
import { cssVar } from '../lib/theme.js';
import { HISTORY_RANGES, gpuColumns, gpuLabel, mergeHistory, refetchFrom } from '../lib/telemetry.js';

// Samples per GPU uuid. Module-level, so going to another page and back
// keeps the recent history.
const samples = new Map();

/** How often cards whose data did not change are redrawn anyway (the
 * sparklines' 5 minutes move on, "last seen" ages). */
const QUIET_MS = 30_000;

/** How often new readings from the agents' heartbeats are shown. */
const LIVE_MS = 5_000;

function record(gpu, t) {
  let s = samples.get(gpu.uuid);
  if (!s) samples.set(gpu.uuid, (s = new Samples()));
  s.push({
    t,
    util: gpu.utilization_pct,
    mem: gpu.memory_total_mib ? (100 * gpu.memory_used_mib) / gpu.memory_total_mib : null,
  });
}

export function mount(root, route, ctx) {
  const stats = h('div', { class: 'stats' });
  const notice = h('div');
  const body = h('div', { class: 'hosts' }, loading('Loading GPUs…'));
  root.append(
    h('div', { class: 'page-head' },
      h('div', null, h('h1', null, 'GPUs'),
        h('p', { class: 'page-sub' }, 'Every GPU of every agent, live. Trainyard jobs hold GPUs; anything else using one is shown as foreign.'))),
    stats, notice, body);

  let loaded = false;
  // What the cards last showed, and when. Every repaint of the window costs
  // WebKit ~25 ms of CPU (software rendering), so an unchanged answer (only
  // the heartbeat's age moved) redraws just every QUIET_MS: an idle GPUs
  // page stays light.
  let shown = { sig: null, at: 0 };
  async function refresh() {
    try {
      const agents = await api.agents({ signal: ctx.signal });
      const now = Date.now();
      for (const a of agents) if (a.alive) for (const g of a.report.gpus ?? []) record(g, now);
      if (notice.childNodes.length) swap(notice);
      const sig = JSON.stringify(agents, (k, v) => (k === 'last_seen_ms' ? undefined : v));
      if (loaded && sig === shown.sig && now - shown.at < QUIET_MS) return;
      shown = { sig, at: now };
      draw(agents, now);
      loaded = true;
    } catch (e) {
      if (e.name === 'AbortError') return;
      if (!loaded) swap(body, failure(e, refresh));
      else swap(notice, alertLine('error', `Could not refresh: ${e.message}`));
    }
  }

  function draw(agents, now) {
    agents.sort((a, b) => (b.alive - a.alive) || a.name.localeCompare(b.name));
    const live = agents.filter((a) => a.alive);
    const all = live.flatMap((a) => a.report.gpus ?? []);
    const held = new Set(live.flatMap((a) => a.held.map((x) => x.uuid)));
    const utils = all.map((g) => g.utilization_pct).filter((u) => u != null);
    const used = all.reduce((n, g) => n + g.memory_used_mib, 0);
    const total = all.reduce((n, g) => n + g.memory_total_mib, 0);
    patch(stats,
      stat('Hosts online', `${live.length}`, agents.length > live.length ? `of ${agents.length} known` : null),
      stat('GPUs', `${all.length}`, [...new Set(all.map((g) => g.name))].join(', ')),
      stat('Held by jobs', `${all.filter((g) => held.has(g.uuid)).length}`),
      stat('Free', `${all.filter((g) => !held.has(g.uuid)).length}`),
      stat('Avg utilization', utils.length ? `${Math.round(utils.reduce((a, b) => a + b, 0) / utils.length)}%` : '—',
        utils.length ? `over ${plural(utils.length, 'GPU')}` : null),
      stat('Memory in use', total ? `${Math.round((100 * used) / total)}%` : '—', total ? `${mib(used)} of ${mib(total)}` : null));
    if (agents.length === 0) {
      patch(body, empty({
        icon: 'gpu',
        title: 'No agents yet',
        body: [
          h('code', null, 'trainyard up'), ' runs an agent for this machine; other machines join with ',
          h('code', null, 'trainyard agent --server URL'), '. They appear here as soon as they report.',
        ],
      }));
      return;
    }
    // In place: each heartbeat changes a few numbers and the sparklines.
    patch(body, ...agents.map((a) => host(a, now)));
  }

  // Jobs taking or leaving GPUs show within a second; heartbeats (every
  // 2 s, new readings only) at most every LIVE_MS: each redraw is a repaint.
  ctx.live(['job', 'idle'], refresh, 1000);
  ctx.live(['agent'], refresh, LIVE_MS);
  refresh();
  if ((ctx.health?.features ?? []).includes('telemetry')) root.append(historyPanel(route, ctx));
}

/**
 * Each GPU's utilization and memory over the last hour, day or week, one
 * chart per GPU, refetched while the page is open (more often for shorter
 * ranges). Charts are updated in place, so a refetch keeps the crosshair.
 */
function historyPanel(route, ctx) {
  const known = (k) => HISTORY_RANGES.some(([r]) => r === k);
  let range = known(route.query.get('history')) ? route.query.get('history') : '1h';
  let answer = null;
  let fetchedAt = 0;
  const charts = new Map(); // uuid → {card, chart, cur}
  const seg = h('div', { class: 'seg seg-sm', role: 'group', 'aria-label': 'History range' });
  const note = h('span', { class: 'muted small' });
  const grid = h('div', { class: 'history-grid' }, loading('Loading history…'));
  const section = h('section', { class: 'panel gpu-history', 'aria-label': 'GPU history' },
    h('div', { class: 'panel-head' }, h('h2', null, 'History'), note, h('span', { class: 'spacer' }), seg), grid);

  function drawSeg() {
    swap(seg, HISTORY_RANGES.map(([k, label]) => h('button', {
      type: 'button', class: 'seg-btn', 'aria-pressed': String(k === range), 'data-key': `history-${k}`,
      onclick() {
        if (k === range) return;
        range = k;
        ctx.setQuery({ history: k === '1h' ? null : k });
        drawSeg();
        clear();
        load();
      },
    }, label)));
  }

  function clear() {
    for (const c of charts.values()) c.chart.destroy();
    charts.clear();
    grid.removeAttribute('data-loaded');
  }

  function draw() {
    const t = answer;
    const span = [t.since_ms / 1000, t.until_ms / 1000];
    note.textContent = t.resolution === 'raw' ? 'every sample' : `${t.resolution} means`;
    const series = [...t.series].sort((a, b) => a.host.localeCompare(b.host) || a.index - b.index);
    if (!series.length) {
      clear();
      swap(grid, h('p', { class: 'muted pad' }, 'No samples in this range yet: agents send them every few seconds.'));
    } else {
      for (const [uuid, c] of charts) {
        if (!series.some((s) => s.uuid === uuid)) { c.chart.destroy(); c.card.remove(); charts.delete(uuid); }
      }
      if (!charts.size) swap(grid);
      for (const s of series) {
        const col = gpuColumns(s, t.step_ms);
        const memPct = col.mem.map((m) => (m == null || !s.memory_total_mib ? m : (100 * m) / s.memory_total_mib));
        const have = charts.get(s.uuid);
        if (have) {
          have.cur.mem = col.mem;
          have.cur.span = span;
          have.chart.setData(col.x, [col.util, memPct]);
          continue;
        }
        const card = h('figure', { class: 'chart-card', 'data-uuid': s.uuid, 'aria-label': `History of ${gpuLabel(s)}` });
        grid.append(card);
        const cur = { mem: col.mem, span };
        const chart = timeChart(card, {
          title: gpuLabel(s),
          x: col.x,
          series: [
            { label: 'util', color: cssVar('--util'), y: col.util, fill: true, value: (v) => `${Math.round(v)}%` },
            { label: 'memory', color: cssVar('--mem'), y: memPct, value: (v, i) => (cur.mem[i] == null ? `${Math.round(v)}%` : `${mib(cur.mem[i])} (${Math.round(v)}%)`) },
          ],
          range: [0, 100],
          yValue: (v) => `${v}%`,
          span: () => cur.span,
          height: 150,
        });
        charts.set(s.uuid, { card, chart, cur });
      }
    }
    grid.dataset.loaded = range;
  }

  // Refetches ask only for what is new since the last answer (mergeHistory);
  // the whole range again every few minutes, or on a change of range.
  const FULL_EVERY = 300_000;
  let fullAt = 0;
  let seq = 0;
  async function load() {
    const mine = ++seq;
    fetchedAt = Date.now();
    const [, , spanMs] = HISTORY_RANGES.find(([k]) => k === range);
    const full = !answer || answer.range !== range || fetchedAt - fullAt >= FULL_EVERY;
    try {
      let t;
      if (full) {
        t = await api.telemetry({ since: range }, { signal: ctx.signal });
      } else {
        const from = refetchFrom(answer);
        const fresh = await api.telemetry({ since: String(from), resolution: answer.resolution }, { signal: ctx.signal });
        t = mergeHistory(answer, fresh, from, spanMs);
      }
      if (mine !== seq) return;
      if (full) fullAt = fetchedAt;
      answer = { ...t, range };
      draw();
    } catch (e) {
      if (e.name === 'AbortError' || mine !== seq) return;
      clear();
      swap(grid, failure(e, load));
    }
  }

  function onTheme() { if (answer) { clear(); swap(grid); draw(); } }
  window.addEventListener('themechange', onTheme);
  ctx.onCleanup(() => { window.removeEventListener('themechange', onTheme); clear(); });
  // Shorter ranges change faster: 30 s for the hour, a minute for the day.
  ctx.every(() => {
    const every = HISTORY_RANGES.find(([k]) => k === range)[3];
    if (Date.now() - fetchedAt >= every) load();
  }, 5000);
  drawSeg();
  load();
  return section;
}

function host(a, now) {
  const r = a.report;
  const seen = now - a.last_seen_ms;
  const source = {
    fake: h('span', { class: 'chip chip-warn', title: 'This agent reports a fake GPU inventory (--fake-gpus), for tests and demos' }, 'Fake GPUs'),
    nvml: h('span', { class: 'chip', title: 'Read from the NVIDIA driver (NVML)' }, 'NVML'),
    none: h('span', { class: 'chip chip-muted' }, 'No GPUs'),
  }[r.gpu_source] ?? h('span', { class: 'chip' }, r.gpu_source);
  const mine = new Set(r.pids ?? []);
  const gpus = r.gpus ?? [];
  return h('section', { class: ['host', a.alive ? null : 'dead'], 'aria-label': `Host ${a.name}`, 'data-id': `host-${a.name}` },
    h('header', { class: 'host-head' },
      h('h2', null, h('span', { class: ['dot', a.alive ? 'dot-ok' : 'dot-off'], 'aria-hidden': 'true' }), a.name),
      a.alive ? null : h('span', { class: 'chip chip-bad', title: 'No heartbeat within the lease: not schedulable' }, 'Offline'),
      r.hostname && r.hostname !== a.name ? h('span', { class: 'muted' }, r.hostname) : null,
      source,
      h('span', { class: 'host-meta' },
        a.alive ? 'online' : 'offline', ' · last seen ', timeEl(seen), ' · ',
        plural(r.cpu_slots ?? 0, 'CPU slot'), ' · ',
        plural((r.attempts ?? []).length, 'attempt'), ' running',
        r.version ? ` · v${r.version}` : '')),
    r.gpu_error ? alertLine('error', icon('alert'), ' GPU error: ', r.gpu_error) : null,
    gpus.length
      ? h('div', { class: 'gpu-grid' }, gpus.map((g) => card(g, a, mine, now)))
      : h('p', { class: 'muted host-empty' }, `No GPUs on this host: it runs CPU jobs only (${plural(r.cpu_slots ?? 0, 'slot')}).`));
}

function level(pct) {
  if (pct == null) return '';
  return pct >= 90 ? 'hi' : pct >= 50 ? 'mid' : 'lo';
}

function meter(label, pct, text) {
  const p = pct == null ? 0 : Math.max(0, Math.min(100, pct));
  return h('div', { class: 'meter-row' },
    h('span', { class: 'meter-label' }, label),
    h('div', {
      class: ['meter', `meter-${level(pct)}`], role: 'meter', 'aria-label': label,
      'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': Math.round(p),
    }, h('div', { class: 'meter-fill', style: { width: `${p}%` } })),
    h('span', { class: 'meter-text' }, text));
}

function card(g, a, mine, now) {
  const holders = a.held.filter((x) => x.uuid === g.uuid);
  const memIdle = (a.memory_idle ?? []).find((m) => m.uuid === g.uuid);
  const foreign = (g.processes ?? []).filter((p) => !mine.has(p.pid));
  const memPct = g.memory_total_mib ? (100 * g.memory_used_mib) / g.memory_total_mib : null;
  const temp = g.temperature_c;
  const s = samples.get(g.uuid) ?? new Samples();
  return h('article', {
    class: ['gpu', holders.length ? 'gpu-held' : 'gpu-free', foreign.length ? 'gpu-foreign' : null],
    'aria-label': `GPU ${g.index} ${g.name}`,
    'data-id': `gpu-${g.uuid}`,
  },
  h('header', { class: 'gpu-head' },
    h('span', { class: 'gpu-idx' }, `${g.index}`),
    h('span', { class: 'gpu-name', title: g.uuid }, g.name),
    holders.length
      ? h('span', { class: 'gpu-holder' }, holders.map((x) =>
        h('a', { href: `#/queue/${x.job}`, 'data-key': `job-${g.uuid}-${x.job}`, title: `Held by job ${x.job}` },
          `job ${x.job}`, x.user ? h('span', { class: 'muted' }, ` · ${x.user}`) : null,
          idleText(x.idle, now) ? h('span', { class: 'chip chip-warn gpu-idle' }, idleText(x.idle, now)) : null)))
      : h('span', { class: 'gpu-holder gpu-holder-free' }, a.alive ? 'free' : '—')),
  memIdle && memIdle.flagged
    ? h('p', { class: 'gpu-mem-idle chip chip-warn', title: `Memory held at 0 % utilization since ${new Date(memIdle.since_ms).toLocaleString()}` },
      `memory held, idle ${duration(memIdle.idle_ms / 1000).split(' ')[0]}`)
    : null,
  meter('Util', g.utilization_pct, g.utilization_pct == null ? '—' : `${g.utilization_pct}%`),
  meter('Mem', memPct, `${mib(g.memory_used_mib)} / ${mib(g.memory_total_mib)}`),
  h('div', { class: 'spark-wrap' },
    sparkline(s, [
      { key: 'mem', cls: 'spark-mem', label: 'memory' },
      { key: 'util', cls: 'spark-util', label: 'utilization' },
    ], now),
    h('div', { class: 'spark-legend' },
      h('span', { class: 'key-util' }, 'util'), h('span', { class: 'key-mem' }, 'mem'), h('span', { class: 'muted' }, '5 min'))),
  h('footer', { class: 'gpu-foot' },
    h('span', { class: ['temp', temp >= 85 ? 'temp-hot' : temp >= 75 ? 'temp-warm' : null], title: 'Temperature' },
      temp == null ? '—' : `${temp} °C`),
    h('span', { title: 'Power draw' }, g.power_w == null ? '—' : `${g.power_w} W`),
    h('span', { class: 'mono muted gpu-uuid', title: g.uuid }, g.uuid.replace(/^GPU-/, ''))),
  (g.processes ?? []).length
    ? h('ul', { class: 'procs', 'aria-label': 'Processes on this GPU' }, g.processes.map((p) => {
      const f = !mine.has(p.pid);
      return h('li', { class: ['proc', f ? 'proc-foreign' : null], title: f ? 'Not started by Trainyard' : 'Started by a Trainyard job' },
        h('span', { class: 'mono' }, `pid ${p.pid}`),
        f && p.user ? h('span', { class: 'proc-user' }, p.user) : null,
        h('span', null, p.used_mib == null ? '' : mib(p.used_mib)),
        f ? h('span', { class: 'chip chip-warn' }, 'foreign') : h('span', { class: 'chip chip-muted' }, 'job'));
    }))
    : null);
}

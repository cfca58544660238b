// GPUs: every agent (host) with every GPU as a card — utilization, memory,
// a sparkline of the last minutes, temperature, power, the job holding it
// and processes Trainyard did not start ("foreign"). Live: agents report
// every ~2 s and each report arrives as an `agent` event; we refetch
// /agents on those (at most once a second) and sample every GPU.

import * as api from '../api.js';
import { h, swap, loading, empty, failure, alertLine, icon } from '../lib/dom.js';
import { mib, timeEl, plural } from '../lib/format.js';
import { Samples, sparkline } from '../lib/sparkline.js';

// Samples per GPU uuid. Module-level, so going to another page and back
// keeps the recent history.
const samples = new Map();

function record(gpu, t) {
  let s = samples.get(gpu.uuid);
  if (!s) samples.set(gpu.uuid, (s = new Samples()));
  s.push({
    t,
    util: gpu.utilization_pct,
    mem: gpu.memory_total_mib ? (100 * gpu.memory_used_mib) / gpu.memory_total_mib : null,
  });
}

export function mount(root, _route, ctx) {
  const stats = h('div', { class: 'stats' });
  const notice = h('div');
  const body = h('div', { class: 'hosts' }, loading('Loading GPUs…'));
  root.append(
    h('div', { class: 'page-head' },
      h('div', null, h('h1', null, 'GPUs'),
        h('p', { class: 'page-sub' }, 'Every GPU of every agent, live. Trainyard jobs hold GPUs; anything else using one is shown as foreign.'))),
    stats, notice, body);

  let loaded = false;
  async function refresh() {
    try {
      const agents = await api.agents({ signal: ctx.signal });
      const now = Date.now();
      for (const a of agents) if (a.alive) for (const g of a.report.gpus ?? []) record(g, now);
      swap(notice);
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
    swap(stats,
      stat('Hosts online', `${live.length}`, agents.length > live.length ? `of ${agents.length} known` : null),
      stat('GPUs', `${all.length}`, [...new Set(all.map((g) => g.name))].join(', ')),
      stat('Held by jobs', `${all.filter((g) => held.has(g.uuid)).length}`),
      stat('Free', `${all.filter((g) => !held.has(g.uuid)).length}`),
      stat('Avg utilization', utils.length ? `${Math.round(utils.reduce((a, b) => a + b, 0) / utils.length)}%` : '—',
        utils.length ? `over ${plural(utils.length, 'GPU')}` : null),
      stat('Memory in use', total ? `${Math.round((100 * used) / total)}%` : '—', total ? `${mib(used)} of ${mib(total)}` : null));
    if (agents.length === 0) {
      swap(body, empty({
        icon: 'gpu',
        title: 'No agents yet',
        body: [
          h('code', null, 'trainyard up'), ' runs an agent for this machine; other machines join with ',
          h('code', null, 'trainyard agent --server URL'), '. They appear here as soon as they report.',
        ],
      }));
      return;
    }
    swap(body, ...agents.map((a) => host(a, now)));
  }

  ctx.live(['agent', 'job'], refresh, 1000);
  refresh();
}

function stat(label, value, sub) {
  return h('div', { class: 'stat' },
    h('div', { class: 'stat-label' }, label),
    h('div', { class: 'stat-value' }, value),
    h('div', { class: 'stat-sub' }, sub ?? '\u00a0'));
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
  return h('section', { class: ['host', a.alive ? null : 'dead'], 'aria-label': `Host ${a.name}` },
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
  const foreign = (g.processes ?? []).filter((p) => !mine.has(p.pid));
  const memPct = g.memory_total_mib ? (100 * g.memory_used_mib) / g.memory_total_mib : null;
  const temp = g.temperature_c;
  const s = samples.get(g.uuid) ?? new Samples();
  return h('article', {
    class: ['gpu', holders.length ? 'gpu-held' : 'gpu-free', foreign.length ? 'gpu-foreign' : null],
    'aria-label': `GPU ${g.index} ${g.name}`,
  },
  h('header', { class: 'gpu-head' },
    h('span', { class: 'gpu-idx' }, `${g.index}`),
    h('span', { class: 'gpu-name', title: g.uuid }, g.name),
    holders.length
      ? h('span', { class: 'gpu-holder' }, holders.map((x) =>
        h('a', { href: `#/queue/${x.job}`, 'data-key': `job-${g.uuid}-${x.job}`, title: `Held by job ${x.job}` },
          `job ${x.job}`, x.user ? h('span', { class: 'muted' }, ` · ${x.user}`) : null)))
      : h('span', { class: 'gpu-holder gpu-holder-free' }, a.alive ? 'free' : '—')),
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
        h('span', null, p.used_mib == null ? '' : mib(p.used_mib)),
        f ? h('span', { class: 'chip chip-warn' }, 'foreign') : h('span', { class: 'chip chip-muted' }, 'job'));
    }))
    : null);
}

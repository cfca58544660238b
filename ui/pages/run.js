// One run (`#/runs/ID`): charts of its history (pick metrics, smooth, and
// overlay other runs of the same project), summary, config, files and
// environment, its sync state, and the Trainyard job that produced it.

import * as api from '../api.js';
import { h, swap, loading, empty, failure, alertLine, badge, facts, icon } from '../lib/dom.js';
import { bytes, dateTime, duration, num, plural, timeEl } from '../lib/format.js';
import { PALETTE, align, lineChart, smooth } from '../lib/chart.js';
import { syncChips } from '../lib/sync.js';

const SMOOTHING = 'trainyard.smoothing';
const DEFAULT_KEYS = 4;

const isObj = (v) => v != null && typeof v === 'object' && !Array.isArray(v);
// wandb stores config items as {value, desc} in some files.
const unwrap = (v) => (isObj(v) && 'value' in v && Object.keys(v).every((k) => k === 'value' || k === 'desc') ? v.value : v);

/** A config/summary value, short; the whole of it on hover. */
function valueEl(v) {
  v = unwrap(v);
  if (v == null) return h('span', { class: 'muted' }, '—');
  if (typeof v === 'number') return h('span', { class: 'mono', title: String(v) }, num(v));
  if (typeof v === 'boolean') return h('span', { class: 'mono' }, String(v));
  if (typeof v === 'string') return h('span', { class: 'value-str', title: v.length > 80 ? v.slice(0, 2000) : null }, v.length > 80 ? `${v.slice(0, 80)}…` : v);
  const json = JSON.stringify(v);
  if (isObj(v) && typeof v._type === 'string') return h('span', { class: 'chip', title: json.slice(0, 2000) }, v._type);
  if (Array.isArray(v) && json.length <= 60) return h('span', { class: 'mono' }, json);
  if (Array.isArray(v)) return h('span', { class: 'mono muted', title: json.slice(0, 2000) }, `[${v.length} items]`);
  return h('span', { class: 'mono', title: json.slice(0, 2000) }, json.length > 60 ? `${json.slice(0, 60)}…` : json);
}

/** Nested config as collapsible tables; `_`-prefixed (wandb's own) start closed and last. */
function configTree(obj) {
  const entries = Object.entries(obj).sort(([a], [b]) => (a.startsWith('_') - b.startsWith('_')) || 0);
  return h('table', { class: 'tree' }, h('tbody', null, entries.map(([k, raw]) => {
    const v = unwrap(raw);
    if (isObj(v) && Object.keys(v).length && typeof v._type !== 'string') {
      return h('tr', null, h('td', { colspan: 2 },
        h('details', { open: !k.startsWith('_') },
          h('summary', null, h('span', { class: 'tree-key' }, k), h('span', { class: 'muted' }, ` ${plural(Object.keys(v).length, 'key')}`)),
          configTree(v))));
    }
    return h('tr', null, h('th', { class: 'tree-key' }, k), h('td', null, valueEl(v)));
  })));
}

function flatten(obj, prefix = '', out = []) {
  for (const [k, v] of Object.entries(obj ?? {})) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (isObj(v) && typeof v._type !== 'string' && Object.keys(v).length) flatten(v, key, out);
    else out.push([key, v]);
  }
  return out;
}

/** Metrics to chart first: logged keys whose summary is numeric. */
function defaultKeys(run) {
  const keys = (run.keys ?? []).filter((k) => !k.startsWith('_') && !k.startsWith('system.'));
  // Numbers first; keys whose summary is null (NaN, ±inf, or never summarized) next.
  const numeric = keys.filter((k) => typeof run.summary?.[k] === 'number');
  const unknown = keys.filter((k) => run.summary?.[k] == null);
  const picked = [...numeric, ...unknown];
  return (picked.length ? picked : keys).slice(0, DEFAULT_KEYS);
}

/** What a sync did, for people: lines and files sent, or why not. */
export function syncNotice(r) {
  if (r.error) return alertLine('error', `Sync failed: ${r.error}`);
  const where = r.path ?? 'the server';
  if (r.mismatches?.length) {
    return h('div', null, alertLine('error', `Synced to ${where}, but the server's copy differs:`),
      h('ul', { class: 'mismatches' }, r.mismatches.map((m) => h('li', null, m))));
  }
  if (r.outcome === 'unchanged') return alertLine('ok', `Already synced to ${where}; nothing changed since.`);
  const sent = [plural(r.history_sent, 'history row'), plural(r.events_sent, 'system sample'),
    plural(r.log_sent, 'console line'), plural(r.files_uploaded, 'file')].join(', ');
  return alertLine('ok', `Synced to ${where} and verified: ${sent} sent.`);
}

export function mount(root, route, ctx) {
  const id = route.id;
  const features = ctx.health?.features ?? [];
  let run = null;
  let peers = []; // other runs of the project
  let producers = []; // [{job, attempt, run}]: the job attempts that produced it
  let keys = (route.query.get('keys') ?? '').split(',').filter(Boolean);
  const compare = new Set((route.query.get('compare') ?? '').split(',').filter(Boolean));
  let smoothing = Number(localStorage.getItem(SMOOTHING) ?? 0);
  const history = new Map(); // run id → Map(key → {x, y})
  let charts = [];

  const head = h('div', { class: 'page-head' },
    h('div', null, h('a', { class: 'back', href: '#/runs' }, icon('back'), 'Runs'), h('h1', null, id)));
  const notice = h('div'); // what the last Sync did
  const loadNotice = h('div'); // history that could not be loaded (cleared by the next load)
  const body = h('div', { class: 'run-body' }, loading('Loading run…'));
  root.append(head, notice, loadNotice, body);

  const save = () => ctx.setQuery({ keys: keys.join(','), compare: [...compare].join(',') });
  const colorOf = (runId) => (runId === id ? PALETTE[0] : PALETTE[(1 + peers.findIndex((p) => p.id === runId)) % PALETTE.length]);
  const nameOf = (r) => r.name || r.id;

  // --- header -------------------------------------------------------------
  function drawHead() {
    let syncBtn = null;
    if (features.includes('wandb_sync')) {
      syncBtn = h('button', {
        class: 'btn', type: 'button',
        async onclick() {
          syncBtn.disabled = true;
          syncBtn.lastChild.textContent = 'Syncing…';
          try {
            const r = await api.syncRun(id);
            swap(notice, syncNotice(r));
            refresh();
          } catch (e) {
            swap(notice, alertLine('error', e.message));
          } finally {
            syncBtn.disabled = false;
            syncBtn.lastChild.textContent = 'Sync';
          }
        },
      }, icon('sync'), h('span', null, 'Sync'));
    }
    const start = run.start_time == null ? null : run.start_time * 1000;
    swap(head,
      h('div', null,
        h('a', { class: 'back', href: '#/runs' }, icon('back'), 'Runs'),
        h('h1', null, nameOf(run), ' ', badge(run.state)),
        h('p', { class: 'page-sub' },
          run.entity ? `${run.entity}/` : '', run.project, ' · ', h('span', { class: 'mono' }, run.id),
          ' · started ', start ? h('span', { title: dateTime(start) }, timeEl(start)) : '—',
          ' · ran ', duration(run.runtime),
          run.exit_code != null ? ` · exit ${run.exit_code}` : '',
          ` · ${plural(run.history_rows ?? 0, 'step')}`),
        h('div', { class: 'sync-line' }, h('span', { class: 'muted' }, 'Sync: '), syncChips(run.sync),
          (run.tags ?? []).length ? [h('span', { class: 'muted' }, ' · Tags: '), run.tags.map((t) => h('span', { class: 'chip chip-tag' }, t))] : null),
        producers.length ? h('div', { class: 'sync-line run-jobs' }, h('span', { class: 'muted' }, 'Produced by '),
          producers.map((l, i) => [i ? ', ' : '', h('a', {
            href: `#/queue/${l.job}`, 'data-job': String(l.job),
            title: 'The Trainyard job whose attempt ran this run (same host, its GPUs, inside its time): its GPU-hours are counted once, as the job',
          }, `job ${l.job}`, l.attempt > 1 ? ` (attempt ${l.attempt})` : '')])) : null),
      h('div', { class: 'page-actions' }, syncBtn));
  }

  // --- charts -------------------------------------------------------------
  const chartsEl = h('div', { class: 'charts' });
  const smoothLabel = h('output', { for: 'smoothing', class: 'mono' });
  const smoothIn = h('input', {
    id: 'smoothing', type: 'range', min: '0', max: '0.99', step: '0.01', value: String(smoothing),
    oninput() {
      smoothing = Number(smoothIn.value);
      localStorage.setItem(SMOOTHING, String(smoothing));
      smoothLabel.textContent = smoothing.toFixed(2);
      scheduleRender();
    },
  });
  smoothLabel.textContent = smoothing.toFixed(2);

  let frame = 0;
  const scheduleRender = () => {
    cancelAnimationFrame(frame);
    frame = requestAnimationFrame(renderCharts);
  };

  function keyPicker() {
    const filterIn = h('input', { type: 'search', class: 'search', placeholder: 'Filter metrics', 'aria-label': 'Filter metrics', 'data-search': '' });
    const check = (k, extra) => h('label', { class: 'check key', dataset: { key: k.toLowerCase() } },
      h('input', {
        type: 'checkbox', checked: keys.includes(k), value: k,
        onchange(e) {
          keys = e.target.checked ? [...keys, k] : keys.filter((x) => x !== k);
          save();
          loadCharts();
        },
      }),
      h('span', { class: 'key-name', title: k }, k), extra);
    const main = (run.keys ?? []).filter((k) => !k.startsWith('system.'));
    const system = [...new Set([...(run.system_keys ?? []), ...(run.keys ?? []).filter((k) => k.startsWith('system.'))])];
    const lists = h('div', { class: 'key-lists' },
      h('div', { class: 'picker-title' }, `Metrics (${main.length})`),
      main.length ? main.map((k) => check(k, h('span', { class: 'muted key-val' }, typeof run.summary?.[k] === 'number' ? num(run.summary[k]) : '')))
        : h('p', { class: 'muted small' }, 'This run logged no metrics.'),
      system.length ? h('details', null, h('summary', { class: 'picker-title' }, `System (${system.length})`), system.map((k) => check(k))) : null);
    filterIn.addEventListener('input', () => {
      const q = filterIn.value.toLowerCase();
      for (const l of lists.querySelectorAll('.key')) l.hidden = !l.dataset.key.includes(q);
    });
    const others = peers.filter((p) => p.id !== id);
    return h('aside', { class: 'picker', 'aria-label': 'Chart options' },
      filterIn, lists,
      h('div', { class: 'picker-title' }, 'Compare with'),
      others.length
        ? others.map((p) => h('label', { class: 'check key' },
          h('input', {
            type: 'checkbox', checked: compare.has(p.id),
            onchange(e) {
              if (e.target.checked) compare.add(p.id); else compare.delete(p.id);
              save();
              loadCharts();
            },
          }),
          h('span', { class: 'swatch', style: { background: colorOf(p.id) } }),
          h('span', { class: 'key-name', title: `${p.id} · ${p.state}` }, nameOf(p))))
        : h('p', { class: 'muted small' }, `No other runs in ${run.project}.`));
  }

  async function fetchKeys(runId, wanted) {
    let have = history.get(runId);
    if (!have) history.set(runId, (have = new Map()));
    const missing = wanted.filter((k) => !have.has(k));
    if (!missing.length) return;
    const r = await api.runHistory(runId, missing, { signal: ctx.signal });
    for (const k of missing) have.set(k, { x: r.steps ?? [], y: r.series?.[k] ?? [] });
  }

  let loadSeq = 0;
  async function loadCharts() {
    const seq = ++loadSeq;
    if (!keys.length) { renderCharts(); return; }
    if (!chartsEl.childElementCount) swap(chartsEl, loading('Loading history…'));
    const runsToLoad = [id, ...[...compare].filter((c) => peers.some((p) => p.id === c))];
    const results = await Promise.allSettled(runsToLoad.map((rid) => {
      const known = rid === id ? null : new Set(peers.find((p) => p.id === rid)?.keys ?? []);
      return fetchKeys(rid, known ? keys.filter((k) => known.has(k)) : keys);
    }));
    if (seq !== loadSeq || ctx.signal.aborted) return;
    const failed = results.map((r, i) => [r, runsToLoad[i]]).filter(([r]) => r.status === 'rejected' && r.reason?.name !== 'AbortError');
    swap(loadNotice, failed.length ? alertLine('error', `Could not load history of ${failed.map(([, rid]) => rid).join(', ')}: ${failed[0][0].reason.message}`) : null);
    renderCharts();
  }

  function renderCharts() {
    for (const c of charts) c.destroy();
    charts = [];
    if (!keys.length) {
      swap(chartsEl, empty({ title: 'No metrics selected', body: 'Pick metrics on the left to chart them.' }));
      return;
    }
    const shownRuns = [run, ...peers.filter((p) => compare.has(p.id))];
    const cards = keys.map((k) => {
      const card = h('figure', { class: 'chart-card', 'aria-label': `Chart of ${k}` });
      const parts = [];
      for (const r of shownRuns) {
        const d = history.get(r.id)?.get(k);
        if (!d || !d.y.some((v) => v != null)) continue;
        parts.push({ r, x: d.x, y: d.y });
      }
      if (!parts.length) {
        card.append(h('figcaption', { class: 'chart-title' }, k),
          h('p', { class: 'chart-empty muted' }, history.get(id)?.has(k) ? 'No numeric values logged.' : 'Loading…'));
        return { card };
      }
      const { x, ys } = align(parts.map((p) => ({ x: p.x, y: p.y })));
      const series = [];
      parts.forEach((p, i) => {
        const color = colorOf(p.r.id);
        if (smoothing > 0) series.push({ label: `${nameOf(p.r)} (raw)`, color, y: ys[i], faint: true });
        series.push({ label: nameOf(p.r), color, y: smooth(ys[i], smoothing) });
      });
      return { card, draw: () => charts.push(lineChart(card, { title: k, x, series })) };
    });
    swap(chartsEl, cards.map((c) => c.card));
    // Draw once the cards are in the DOM and have their width.
    for (const c of cards) c.draw?.();
  }

  function onTheme() { if (run) renderCharts(); }
  window.addEventListener('themechange', onTheme);
  ctx.onCleanup(() => {
    window.removeEventListener('themechange', onTheme);
    cancelAnimationFrame(frame);
    for (const c of charts) c.destroy();
  });

  // --- the rest -----------------------------------------------------------
  function summaryPanel() {
    const rows = flatten(run.summary).filter(([k]) => !k.startsWith('_'));
    return h('section', { class: 'panel', 'aria-label': 'Summary' },
      h('div', { class: 'panel-head' }, h('h2', null, 'Summary')),
      rows.length ? h('table', { class: 'table kv' }, h('tbody', null, rows.map(([k, v]) =>
        h('tr', null, h('th', { class: 'mono' }, k), h('td', null, valueEl(v))))))
        : h('p', { class: 'muted pad' }, 'No summary.'));
  }

  function configPanel() {
    const cfg = run.config ?? {};
    return h('section', { class: 'panel', 'aria-label': 'Config' },
      h('div', { class: 'panel-head' }, h('h2', null, 'Config')),
      Object.keys(cfg).length ? h('div', { class: 'pad-x' }, configTree(cfg)) : h('p', { class: 'muted pad' }, 'No config.'));
  }

  function filesPanel() {
    const files = run.files ?? run.meta?.files ?? [];
    return h('section', { class: 'panel', 'aria-label': 'Files' },
      h('div', { class: 'panel-head' }, h('h2', null, 'Files'), h('span', { class: 'muted' }, plural(files.length, 'file'))),
      files.length ? h('table', { class: 'table' }, h('tbody', null, files.map((f) => h('tr', null,
        h('td', { class: 'mono' }, f.path, f.symlink ? h('span', { class: 'muted', title: 'A symlink left by wandb.save()' }, ' ↗') : null),
        h('td', { class: 'num' }, f.size == null ? h('span', { class: 'muted' }, 'missing') : bytes(f.size))))))
        : h('p', { class: 'muted pad' }, 'No files.'));
  }

  function environmentPanel() {
    const env = run.environment ?? run.meta?.environment ?? {};
    const meta = run.meta ?? {};
    const gpu = env.gpu_type || env.gpu_count ? `${env.gpu_count ?? ''}× ${env.gpu_type ?? ''}`.trim() : null;
    const diags = meta.diagnostics ?? [];
    return h('section', { class: 'panel', 'aria-label': 'Environment' },
      h('div', { class: 'panel-head' }, h('h2', null, 'Environment')),
      facts([
        ['Host', env.host || meta.host],
        ['User', env.username],
        ['OS', env.os],
        ['Python', env.python],
        ['Program', env.program ? h('span', { class: 'mono' }, env.program) : null],
        ['Arguments', env.args?.length ? h('span', { class: 'mono' }, env.args.join(' ')) : null],
        ['Executable', env.executable ? h('span', { class: 'mono' }, env.executable) : null],
        ['GPU', gpu],
        ['CUDA', env.cuda_version],
        ['CPUs', env.cpu_count ? `${env.cpu_count} (${env.cpu_count_logical} logical)` : null],
        ['Group', meta.group],
        ['Job type', meta.job_type],
        ['Sweep', meta.sweep_id],
        ['Notes', meta.notes],
        ['Written by', meta.producer ? `${meta.producer} ${meta.cli_version ?? ''}` : null],
        ['Directory', h('span', { class: 'mono' }, run.dir)],
      ]),
      diags.length ? h('div', { class: 'pad' }, alertLine('warn', `The reader stepped over ${plural(diags.length, 'problem')} in this run's file.`)) : null);
  }

  async function refresh() {
    try {
      run = await api.run(id, { signal: ctx.signal });
      ctx.title(nameOf(run));
      if (features.includes('usage')) {
        producers = await api.runJobs(id, { signal: ctx.signal }).catch((e) => {
          if (e.name === 'AbortError') throw e;
          return [];
        });
      }
      peers = await api.runs({ project: run.project }, { signal: ctx.signal })
        .then((list) => list.filter((p) => p.id !== id).sort((a, b) => (b.start_time ?? 0) - (a.start_time ?? 0)))
        .catch(() => []);
      if (!keys.length) keys = defaultKeys(run);
      drawHead();
      swap(body,
        h('section', { class: 'panel charts-panel', 'aria-label': 'Charts' },
          h('div', { class: 'panel-head' }, h('h2', null, 'Charts'),
            h('span', { class: 'spacer' }),
            h('label', { class: 'slider', for: 'smoothing' }, 'Smoothing', smoothIn, smoothLabel)),
          h('div', { class: 'charts-layout' }, keyPicker(), chartsEl)),
        h('div', { class: 'grid-2' }, summaryPanel(), configPanel()),
        h('div', { class: 'grid-2' }, filesPanel(), environmentPanel()));
      loadCharts();
    } catch (e) {
      if (e.name !== 'AbortError') swap(body, failure(e, refresh));
    }
  }
  refresh();
}

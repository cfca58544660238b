// Runs: wandb runs indexed on the daemon's machine, filtered by project,
// state and text, and a form to scan a folder for more. `#/runs/ID` is the
// run view (run.js).

import * as api from '../api.js';
import { h, swap, loading, empty, failure, alertLine, badge, icon } from '../lib/dom.js';
import { duration, num, plural, timeEl } from '../lib/format.js';
import * as runView from './run.js';
import { syncChips } from '../lib/sync.js';

const STATES = ['running', 'finished', 'crashed', 'killed'];
// Summary metrics worth a column, by name; others follow in key order.
const NOTABLE = /loss|acc|score|reward|f1|bleu|rouge|ppl|perplexity|auc|map|iou|err/i;

/** Up to `n` numeric summary metrics of a run, the telling ones first. */
export function keyMetrics(run, n = 3) {
  const numeric = (run.keys ?? []).filter((k) => typeof run.summary?.[k] === 'number' && !k.startsWith('_'));
  return [...numeric.filter((k) => NOTABLE.test(k)), ...numeric.filter((k) => !NOTABLE.test(k))].slice(0, n);
}

export function mount(root, route, ctx) {
  if (route.id) return runView.mount(root, route, ctx);

  let runs = null;
  let project = route.query.get('project') ?? '';
  let state = route.query.get('state') ?? '';
  let search = route.query.get('q') ?? '';
  const save = () => ctx.setQuery({ project, state, q: search });

  // --- scan form ----------------------------------------------------------
  const scanResult = h('div', { class: 'form-notice' });
  const pathIn = h('input', {
    id: 'scan-path', name: 'path', type: 'text', class: 'mono', autocomplete: 'off', spellcheck: 'false',
    placeholder: '/home/me/project/wandb', required: true,
  });
  const invoke = window.__TAURI__?.core?.invoke;
  const scanBtn = h('button', { class: 'btn btn-primary', type: 'submit' }, 'Scan');
  const scanPanel = h('section', { class: 'panel form-panel', hidden: true, 'aria-label': 'Scan a folder' },
    h('div', { class: 'panel-head' }, h('h2', null, 'Scan a folder for wandb runs'),
      h('button', { class: 'icon-btn', type: 'button', 'aria-label': 'Close', onclick: () => toggleScan(false) }, icon('x'))),
    h('form', {
      class: 'scan-form', novalidate: true,
      async onsubmit(e) {
        e.preventDefault();
        const p = pathIn.value.trim();
        if (!p.startsWith('/')) {
          scanResult.replaceChildren(alertLine('error', 'Give an absolute path on the daemon\'s host, e.g. /home/me/project/wandb.'));
          return;
        }
        scanBtn.disabled = true;
        scanBtn.textContent = 'Scanning…';
        scanResult.replaceChildren();
        try {
          const r = await api.scanRuns([p]);
          scanResult.replaceChildren(
            alertLine(r.errors?.length ? 'warn' : 'ok',
              `Found ${plural(r.found, 'run')}: ${r.new} new, ${r.updated} updated, ${r.unchanged} unchanged`,
              r.errors?.length ? `, ${plural(r.errors.length, 'error')}` : '', '.'),
            r.errors?.length ? h('ul', { class: 'scan-errors' }, r.errors.map((x) =>
              h('li', null, h('span', { class: 'mono' }, x.dir), ': ', x.error))) : null);
          refresh();
        } catch (x) {
          scanResult.replaceChildren(alertLine('error', x.message));
        } finally {
          scanBtn.disabled = false;
          scanBtn.textContent = 'Scan';
        }
      },
    },
    h('div', { class: 'form-grid' },
      h('div', { class: 'field', style: { gridColumn: 'span 9' } },
        h('label', { for: 'scan-path' }, 'Folder'),
        invoke ? h('div', { class: 'input-group' }, pathIn, h('button', {
          class: 'btn', type: 'button',
          async onclick() { const f = await invoke('pick_folder').catch(() => null); if (f) pathIn.value = f; },
        }, icon('folder'), 'Choose folder…')) : pathIn,
        h('p', { class: 'hint' }, 'A run directory, a wandb/ directory or any parent (searched 8 levels deep), on the daemon\'s host. Unchanged runs are skipped.')),
      h('div', { class: 'form-actions', style: { gridColumn: 'span 3' } }, scanBtn)),
    scanResult));
  const scanToggle = h('button', { class: 'btn btn-primary', type: 'button', 'aria-expanded': 'false', onclick: () => toggleScan(scanPanel.hidden) },
    icon('search'), 'Scan folder');
  function toggleScan(open) {
    scanPanel.hidden = !open;
    scanToggle.setAttribute('aria-expanded', String(open));
    if (open) pathIn.focus();
  }

  // --- filters and table --------------------------------------------------
  const projectSel = h('select', {
    'aria-label': 'Project',
    onchange() { project = projectSel.value; save(); draw(); },
  });
  const stateSel = h('select', {
    'aria-label': 'State',
    onchange() { state = stateSel.value; save(); draw(); },
  }, h('option', { value: '' }, 'All states'), STATES.map((s) => h('option', { value: s, selected: s === state }, s)));
  const searchIn = h('input', {
    type: 'search', class: 'search', placeholder: 'Filter by name, id, tag…', value: search, 'data-search': '',
    'aria-label': 'Filter runs',
    oninput() { search = searchIn.value; save(); draw(); },
  });
  const body = h('div', { class: 'panel table-panel' }, loading('Loading runs…'));

  root.append(
    h('div', { class: 'page-head' },
      h('div', null, h('h1', null, 'Runs'),
        h('p', { class: 'page-sub' }, 'Weights & Biases runs found on the daemon\'s machine, read from their local files.')),
      h('div', { class: 'page-actions' }, scanToggle)),
    scanPanel,
    h('div', { class: 'toolbar' }, projectSel, stateSel, searchIn),
    body);

  function draw() {
    if (!runs) return;
    const projects = [...new Set(runs.map((r) => r.project))].sort();
    swap(projectSel, h('option', { value: '' }, `All projects (${projects.length})`),
      projects.map((p) => h('option', { value: p, selected: p === project }, p)));
    if (runs.length === 0) {
      toggleScan(true);
      swap(body, empty({
        icon: 'runs', title: 'No runs indexed yet',
        body: ['Scan a folder that holds wandb runs (', h('code', null, 'wandb/offline-run-*'), ', ', h('code', null, 'wandb/run-*'),
          ') with ', h('strong', null, 'Scan folder'), ', or from a shell: ', h('code', null, 'trainyard runs scan ~/project')],
      }));
      return;
    }
    const q = search.toLowerCase();
    const rows = runs.filter((r) => (!project || r.project === project) && (!state || r.state === state)
      && (!q || [r.name, r.id, r.project, r.entity, ...(r.tags ?? [])].some((s) => s?.toLowerCase().includes(q))));
    if (rows.length === 0) {
      swap(body, empty({ title: 'No runs match', body: 'Try another project or state, or clear the filter.' }));
      return;
    }
    swap(body, h('table', { class: 'table runs' },
      h('thead', null, h('tr', null,
        h('th', null, 'Run'), h('th', null, 'Project'), h('th', null, 'State'), h('th', null, 'Started'),
        h('th', { class: 'num' }, 'Runtime'), h('th', null, 'Metrics'), h('th', { class: 'num' }, 'Steps'), h('th', null, 'Sync'))),
      h('tbody', null, rows.map((r) => {
        const href = `#/runs/${encodeURIComponent(r.id)}`;
        return h('tr', { class: 'clickable', dataset: { id: r.id }, onclick(e) { if (!e.target.closest('a')) location.hash = href; } },
          h('td', null, h('a', { href, class: 'strong', 'data-key': `run-${r.id}` }, r.name || r.id),
            h('div', { class: 'mono muted small' }, r.id, (r.tags ?? []).map((t) => h('span', { class: 'chip chip-tag' }, t)))),
          h('td', null, r.project, r.entity ? h('div', { class: 'muted small' }, r.entity) : null),
          h('td', null, badge(r.state)),
          h('td', null, timeEl(r.start_time == null ? null : r.start_time * 1000)),
          h('td', { class: 'num' }, duration(r.runtime)),
          h('td', null, h('div', { class: 'metrics' }, keyMetrics(r).map((k) =>
            h('span', { class: 'metric' }, h('span', { class: 'muted' }, k), ' ', num(r.summary[k]))))),
          h('td', { class: 'num' }, String(r.history_rows ?? 0)),
          h('td', null, syncChips(r.sync)));
      }))));
  }

  // another tab or the CLI through the daemon synced a run: show its new state
  ctx.live(['run'], () => refresh());

  async function refresh() {
    try {
      runs = await api.runs({}, { signal: ctx.signal });
      runs.sort((a, b) => (b.start_time ?? 0) - (a.start_time ?? 0));
      draw();
    } catch (e) {
      if (e.name !== 'AbortError') swap(body, failure(e, refresh));
    }
  }
  refresh();
}

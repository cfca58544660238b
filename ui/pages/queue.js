// Queue: every job in scheduling order (active ones first, then finished,
// newest first), filtered by state and text, with the submit form, cancel
// and retry. `#/queue/ID` is the job view (job.js). Live on `job` events.

import * as api from '../api.js';
import { h, swap, loading, empty, failure, alertLine, badge, icon } from '../lib/dom.js';
import { nsToMs, timeEl } from '../lib/format.js';
import * as jobView from './job.js';
import { jobForm } from './job-form.js';
import {
  ACTIVE, commandLine, elapsed, gpuIndex, gpuList, jobActions, reasonText, tick,
} from './jobs-common.js';

const FILTERS = [
  ['all', 'All', null],
  ['active', 'Active', ACTIVE],
  ['queued', 'Queued', ['queued', 'assigned']],
  ['running', 'Running', ['running']],
  ['succeeded', 'Succeeded', ['succeeded']],
  ['failed', 'Failed', ['failed', 'lost']],
  ['cancelled', 'Cancelled', ['cancelled']],
];
const SHOWN = 300; // rows drawn at most; the rest are counted
const FORM_OPEN = 'trainyard.jobform.open';

export function mount(root, route, ctx) {
  if (route.id) return jobView.mount(root, route, ctx);

  let filter = FILTERS.some(([k]) => k === route.query.get('state')) ? route.query.get('state') : 'all';
  let search = route.query.get('q') ?? '';
  let jobs = null;
  let gpus = new Map();

  const notice = h('div');
  const seg = h('div', { class: 'seg', role: 'group', 'aria-label': 'Filter by state' });
  const searchInput = h('input', {
    type: 'search', class: 'search', placeholder: 'Filter by id, name, command, user…', value: search,
    'aria-label': 'Filter jobs', 'data-search': '',
    oninput() { search = searchInput.value; ctx.setQuery({ state: filter === 'all' ? null : filter, q: search }); draw(); },
  });
  const body = h('div', { class: 'panel table-panel' }, loading('Loading jobs…'));

  const formPanel = h('section', { class: 'panel form-panel', 'aria-label': 'New job', hidden: sessionStorage.getItem(FORM_OPEN) !== '1' },
    h('div', { class: 'panel-head' }, h('h2', null, 'New job'),
      h('button', { class: 'icon-btn', type: 'button', 'aria-label': 'Close the form', onclick: () => toggleForm(false) }, icon('x'))),
    jobForm({ onSubmitted: () => refresh() }));
  const newBtn = h('button', {
    class: 'btn btn-primary', type: 'button', 'aria-expanded': String(!formPanel.hidden),
    onclick: () => toggleForm(formPanel.hidden),
  }, icon('plus'), 'New job');

  function toggleForm(open) {
    formPanel.hidden = !open;
    newBtn.setAttribute('aria-expanded', String(open));
    sessionStorage.setItem(FORM_OPEN, open ? '1' : '0');
    if (open) formPanel.querySelector('input')?.focus();
  }

  root.append(
    h('div', { class: 'page-head' },
      h('div', null, h('h1', null, 'Queue'),
        h('p', { class: 'page-sub' }, 'Jobs in scheduling order: higher priority first, then by submission.')),
      h('div', { class: 'page-actions' }, newBtn)),
    formPanel,
    h('div', { class: 'toolbar' }, seg, searchInput),
    notice, body);

  const showError = (err) => swap(notice, alertLine('error', err.message));

  function matches(j) {
    const states = FILTERS.find(([k]) => k === filter)[2];
    if (states && !states.includes(j.state)) return false;
    if (!search) return true;
    const q = search.toLowerCase();
    return [String(j.id), j.spec.name, commandLine(j.spec), j.spec.user, j.spec.project, j.agent, j.state]
      .some((s) => s && s.toLowerCase().includes(q));
  }

  function drawSeg() {
    swap(seg, FILTERS.map(([k, label, states]) => {
      const n = jobs ? jobs.filter((j) => !states || states.includes(j.state)).length : null;
      return h('button', {
        type: 'button', class: 'seg-btn', 'aria-pressed': String(k === filter), 'data-key': `f-${k}`,
        onclick() { filter = k; ctx.setQuery({ state: k === 'all' ? null : k, q: search }); draw(); },
      }, label, n != null ? h('span', { class: 'count' }, String(n)) : null);
    }));
  }

  function draw() {
    drawSeg();
    if (!jobs) return;
    if (jobs.length === 0) {
      swap(body, empty({
        icon: 'queue', title: 'No jobs yet',
        body: ['Submit one with ', h('strong', null, 'New job'), ' above, or from a shell: ',
          h('code', null, 'trainyard submit --gpus 1 -- python train.py')],
      }));
      return;
    }
    const rows = jobs.filter(matches);
    if (rows.length === 0) {
      swap(body, empty({ title: 'No jobs match', body: 'Try another state or clear the filter.' }));
      return;
    }
    swap(body, h('table', { class: 'table jobs' },
      h('thead', null, h('tr', null,
        h('th', { class: 'num' }, 'ID'), h('th', null, 'Job'), h('th', null, 'User'), h('th', null, 'State'),
        h('th', null, 'Reason'), h('th', null, 'Host · GPUs'), h('th', { class: 'num' }, 'Time'), h('th', { class: 'actions' }, h('span', { class: 'sr-only' }, 'Actions')))),
      h('tbody', null, rows.slice(0, SHOWN).map(row))),
    rows.length > SHOWN ? h('p', { class: 'table-foot muted' }, `Showing ${SHOWN} of ${rows.length} jobs; filter to narrow.`) : null);
  }

  function row(j) {
    const cmd = commandLine(j.spec);
    const href = `#/queue/${j.id}`;
    return h('tr', {
      class: ['clickable', `row-${j.state}`], dataset: { id: String(j.id) },
      onclick(e) { if (!e.target.closest('a, button')) location.hash = href; },
    },
    h('td', { class: 'num mono' }, h('a', { href, 'data-key': `job-${j.id}` }, String(j.id))),
    h('td', { class: 'job-cell' },
      j.spec.name ? h('div', { class: 'job-name' }, j.spec.name,
        j.spec.project && j.spec.project !== 'default' ? h('span', { class: 'chip chip-muted' }, j.spec.project) : null) : null,
      h('div', { class: ['mono', 'truncate', j.spec.name ? 'job-cmd' : 'job-cmd-only'], title: cmd }, cmd)),
    h('td', null, j.spec.user || h('span', { class: 'muted' }, '—')),
    h('td', null, badge(j.state)),
    h('td', { class: 'truncate reason', title: reasonText(j) }, reasonText(j)),
    h('td', { class: 'mono nowrap' }, j.agent ? [j.agent, j.gpus?.length ? h('span', { class: 'muted' }, ` · ${gpuList(j.gpus, gpus)}`) : null] : h('span', { class: 'muted' }, '—')),
    h('td', { class: 'num time-cell' }, elapsed(j), h('div', { class: 'muted small' }, 'submitted ', timeEl(nsToMs(j.submitted_ns)))),
    h('td', { class: 'actions' }, jobActions(j, showError, refresh)));
  }

  // Active jobs keep the daemon's scheduling order; finished ones follow,
  // most recently finished first.
  function order(list) {
    const active = list.filter((j) => ACTIVE.includes(j.state));
    const done = list.filter((j) => !ACTIVE.includes(j.state))
      .sort((a, b) => (b.finished_ns ?? b.submitted_ns) - (a.finished_ns ?? a.submitted_ns));
    return [...active, ...done];
  }

  async function refresh() {
    try {
      const [list, g] = await Promise.all([
        api.jobs([], { signal: ctx.signal }),
        gpuIndex(ctx.signal).catch(() => gpus),
      ]);
      jobs = order(list);
      gpus = g;
      if (jobs.length === 0 && sessionStorage.getItem(FORM_OPEN) == null) toggleForm(true);
      draw();
    } catch (e) {
      if (e.name === 'AbortError') return;
      if (!jobs) swap(body, failure(e, refresh));
      else showError({ message: `Could not refresh: ${e.message}` });
    }
  }

  ctx.live(['job'], refresh, 250);
  ctx.every(() => tick(body), 1000);
  drawSeg();
  refresh();
}

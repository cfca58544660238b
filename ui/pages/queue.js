// Queue: jobs page by page from the daemon (active ones in scheduling order
// first, then finished ones, newest first), filtered by state and text on
// the daemon, with the submit form, cancel and retry. A lab's history is
// 100,000 jobs: the page loads PAGE rows per list and "Show more" the next
// ones (cursors), never the whole history. `#/queue/ID` is the job view
// (job.js). Live on `job` events: the rows shown are reloaded.

import * as api from '../api.js';
import { h, swap, loading, empty, failure, alertLine, badge, icon } from '../lib/dom.js';
import { nsToMs, timeEl } from '../lib/format.js';
import * as jobView from './job.js';
import { jobForm } from './job-form.js';
import {
  ACTIVE, commandLine, elapsed, gpuIndex, gpuList, jobActions, reasonText, tick,
} from './jobs-common.js';

// key, label, states, and whether the states are finished ones (listed
// newest first rather than in scheduling order).
const FILTERS = [
  ['all', 'All', null],
  ['active', 'Active', ACTIVE],
  ['queued', 'Queued', ['queued', 'assigned']],
  ['running', 'Running', ['running']],
  ['succeeded', 'Succeeded', ['succeeded'], true],
  ['failed', 'Failed', ['failed', 'lost'], true],
  ['cancelled', 'Cancelled', ['cancelled'], true],
];
const PAGE = 100; // rows fetched per list and per "Show more"
const FORM_OPEN = 'trainyard.jobform.open';

export function mount(root, route, ctx) {
  if (route.id) return jobView.mount(root, route, ctx);

  let filter = FILTERS.some(([k]) => k === route.query.get('state')) ? route.query.get('state') : 'all';
  let search = route.query.get('q') ?? '';
  // The lists shown, in order: each {query, rows, next, total}. "All" is the
  // active jobs in scheduling order, then the finished ones, newest first.
  let lists = null;
  // Rows wanted per list (null: one page each). Every fetch asks for these,
  // so a live refresh racing a "Show more" cannot shrink the list back.
  let want = null;
  let counts = null;
  let gpus = new Map();
  let searchTimer = null;

  const notice = h('div');
  const seg = h('div', { class: 'seg', role: 'group', 'aria-label': 'Filter by state' });
  const searchInput = h('input', {
    type: 'search', class: 'search', placeholder: 'Filter by id, name, command, user…', value: search,
    'aria-label': 'Filter jobs', 'data-search': '',
    oninput() {
      search = searchInput.value;
      ctx.setQuery({ state: filter === 'all' ? null : filter, q: search });
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => load(), 200);
    },
  });
  const content = h('div', null, loading('Loading jobs…'));
  // The footer outlives redraws, so a live refresh landing between the
  // press and the release of "Show more" cannot swallow the click.
  const shown = h('span');
  const moreBox = h('span', { hidden: true }, ' · ',
    h('button', { class: 'btn btn-sm', type: 'button', 'data-key': 'jobs-more', onclick: () => showMore() }, `Show ${PAGE} more`));
  const foot = h('p', { class: 'table-foot muted', 'data-key': 'jobs-shown', hidden: true }, shown, moreBox);
  const body = h('div', { class: 'panel table-panel' }, content, foot);

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

  function queries() {
    const [, , states, finished] = FILTERS.find(([k]) => k === filter);
    const q = search.trim() || undefined;
    if (!states) return [{ state: ACTIVE, q }, { order: 'finished', q }];
    return [{ state: states, order: finished ? 'finished' : undefined, q }];
  }

  function drawSeg() {
    swap(seg, FILTERS.map(([k, label, states]) => {
      const n = counts ? Object.entries(counts).filter(([s]) => !states || states.includes(s)).reduce((a, [, c]) => a + c, 0) : null;
      return h('button', {
        type: 'button', class: 'seg-btn', 'aria-pressed': String(k === filter), 'data-key': `f-${k}`,
        onclick() { filter = k; ctx.setQuery({ state: k === 'all' ? null : k, q: search }); drawSeg(); load(); },
      }, label, n != null ? h('span', { class: 'count' }, String(n)) : null);
    }));
  }

  function draw() {
    drawSeg();
    if (!lists) return;
    const rows = lists.flatMap((l) => l.rows);
    const total = lists.reduce((a, l) => a + l.total, 0);
    if (rows.length === 0) {
      const none = counts && Object.values(counts).every((n) => n === 0);
      foot.hidden = true;
      swap(content, none ? empty({
        icon: 'queue', title: 'No jobs yet',
        body: ['Submit one with ', h('strong', null, 'New job'), ' above, or from a shell: ',
          h('code', null, 'trainyard submit --gpus 1 -- python train.py')],
      }) : empty({ title: 'No jobs match', body: 'Try another state or clear the filter.' }));
      return;
    }
    swap(content, h('table', { class: 'table jobs' },
      h('thead', null, h('tr', null,
        h('th', { class: 'num' }, 'ID'), h('th', null, 'Job'), h('th', null, 'User'), h('th', null, 'State'),
        h('th', null, 'Reason'), h('th', null, 'Host · GPUs'), h('th', { class: 'num' }, 'Time'), h('th', { class: 'actions' }, h('span', { class: 'sr-only' }, 'Actions')))),
      h('tbody', null, rows.map(row))));
    foot.hidden = false;
    shown.textContent = `Showing ${rows.length} of ${total} jobs`;
    moreBox.hidden = !lists.some((l) => l.next);
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
    h('td', { class: 'mono nowrap' }, j.agent ? [j.agent, j.gpus?.length ? h('span', { class: 'muted' }, ` · ${j.gpu_indices?.length ? j.gpu_indices.join(', ') : gpuList(j.gpus, gpus)}`) : null] : h('span', { class: 'muted' }, '—')),
    h('td', { class: 'num time-cell' }, elapsed(j), h('div', { class: 'muted small' }, 'submitted ', timeEl(nsToMs(j.submitted_ns)))),
    h('td', { class: 'actions' }, jobActions(j, showError, refresh)));
  }

  // Fetch each list's first `want[i]` rows (following cursors when more
  // than one request's worth is wanted) and the counts, then draw. The
  // newest fetch wins; older ones finishing later are dropped.
  let generation = 0;
  async function fetchLists() {
    const mine = ++generation;
    const qs = queries();
    const [fetched, c, g] = await Promise.all([
      Promise.all(qs.map(async (query, i) => {
        const size = want?.[i] ?? PAGE;
        const l = { query, rows: [], next: null, total: 0 };
        let cursor;
        do {
          const p = await api.jobsPage({ ...query, limit: Math.min(size - l.rows.length, 5000), cursor }, { signal: ctx.signal });
          l.rows.push(...p.jobs);
          l.total = p.total;
          l.next = p.next;
          cursor = p.next;
        } while (cursor && l.rows.length < size);
        return l;
      })),
      api.jobCounts({ q: search.trim() || undefined }, { signal: ctx.signal }),
      gpuIndex(ctx.signal).catch(() => gpus),
    ]);
    if (mine !== generation) return; // a newer load won
    body.removeAttribute('aria-busy');
    lists = fetched;
    counts = c;
    gpus = g;
    if (Object.values(counts).every((n) => n === 0) && !search && sessionStorage.getItem(FORM_OPEN) == null) toggleForm(true);
    draw();
  }

  async function guarded(fn) {
    try {
      await fn();
    } catch (e) {
      if (e.name === 'AbortError') return;
      if (!lists) { foot.hidden = true; swap(content, failure(e, refresh)); }
      else showError({ message: `Could not refresh: ${e.message}` });
    }
  }

  /** A new filter or search: the first page of each list. */
  const load = () => guarded(() => {
    // Until the new lists come, the old rows stay (dimmed) but "Show more"
    // is gone: it would page the old filter.
    lists = null;
    want = null;
    foot.hidden = true;
    body.setAttribute('aria-busy', 'true');
    return fetchLists();
  });
  /** Live update: reload as many rows as are wanted. */
  const refresh = () => guarded(() => fetchLists());

  /** One more page of the first list that has more. */
  async function showMore() {
    const i = lists?.findIndex((x) => x.next) ?? -1;
    if (i < 0) return;
    want = lists.map((l, k) => Math.max(want?.[k] ?? PAGE, l.rows.length) + (k === i ? PAGE : 0));
    await guarded(() => fetchLists());
  }

  ctx.live(['job', 'idle'], refresh, 250);
  ctx.every(() => tick(content), 1000);
  drawSeg();
  load();
}

// Watches: watched directories (snapshot a dataset when quiet, or sync
// wandb runs as they end) with their state, events or polling, and their
// log: every action, what triggered it, what it produced or why it failed.
// Pause and resume; adding is done from a shell (`trainyard watch add`).

import * as api from '../api.js';
import { h, swap, loading, empty, failure, alertLine, badge } from '../lib/dom.js';
import { nsToMs, timeEl } from '../lib/format.js';

export function mount(root, route, ctx) {
  return list(root, ctx);
}

/** A watch state as a badge in the queue's colours. */
const STATE_BADGE = {
  idle: 'succeeded', pending: 'queued', working: 'running', starting: 'queued',
  postponed: 'queued', missing: 'lost', paused: 'cancelled', failed: 'failed',
};
const stateBadge = (s) => badge(STATE_BADGE[s] ?? 'queued', s);

function does(w) {
  if (w.kind === 'wandb') return ['sync wandb runs', w.live_s ? h('span', { class: 'muted' }, ` (live every ${w.live_s}s)`) : null];
  const ds = h('a', { href: `#/datasets/${encodeURIComponent(w.dataset)}` }, w.dataset);
  const when = w.when_file ? ['when ', h('code', null, w.when_file), ' is written'] : `after ${w.quiet_s}s quiet`;
  return ['snapshot ', ds, ' ', h('span', { class: 'muted' }, when), w.push ? h('span', { class: 'muted' }, `, push to ${w.push}`) : null];
}

function logLine(e) {
  return h('tr', { dataset: { watch: String(e.watch) } },
    h('td', null, timeEl(nsToMs(e.at_ns))),
    h('td', { class: 'mono' }, `#${e.watch}`),
    h('td', null, e.action),
    h('td', null, badge(e.result === 'failed' ? 'failed' : e.result === 'created' || e.result === 'synced' ? 'succeeded' : 'queued', e.result)),
    h('td', { class: 'muted' }, e.trigger),
    h('td', { class: 'mono' }, e.detail));
}

function list(root, ctx) {
  const notice = h('div', { class: 'form-notice', 'aria-live': 'polite' });
  const body = h('div', { class: 'panel table-panel' }, loading('Loading watches…'));
  const log = h('div', { class: 'panel table-panel' });
  root.append(
    h('div', { class: 'page-head' },
      h('div', null, h('h1', null, 'Watches'),
        h('p', { class: 'page-sub' }, 'Directories snapshotted when they stop changing, and wandb runs synced when they end.'))),
    notice, body,
    h('div', { class: 'panel-head' }, h('h2', null, 'Log')), log);
  const say = (el) => notice.replaceChildren(el);

  const toggle = (w) => h('button', {
    class: 'btn btn-sm', type: 'button', 'data-key': `${w.paused ? 'resume' : 'pause'}-${w.id}`,
    async onclick(e) {
      const b = e.currentTarget;
      b.disabled = true;
      try {
        await (w.paused ? api.resumeWatch(w.id) : api.pauseWatch(w.id));
        refresh();
      } catch (x) {
        say(alertLine('error', `watch ${w.id}: ${x.message}`));
      } finally {
        b.disabled = false;
      }
    },
  }, w.paused ? 'Resume' : 'Pause');

  let seq = 0;
  async function refresh() {
    const mine = ++seq;
    try {
      const [list, lines] = await Promise.all([api.watches({ signal: ctx.signal }), api.watchLog({ signal: ctx.signal })]);
      if (mine !== seq) return;
      if (list.length === 0) {
        swap(body, empty({
          icon: 'data', title: 'No watches yet',
          body: ['Add one from a shell: ', h('code', null, 'trainyard watch add /data/imagenet --snapshot imagenet --quiet 60s')],
        }));
      } else {
        swap(body, h('table', { class: 'table watches' },
          h('thead', null, h('tr', null, h('th', null, 'Id'), h('th', null, 'Path'), h('th', null, 'Does'), h('th', null, 'State'),
            h('th', null, 'Mode'), h('th', null, 'Last action'), h('th', { class: 'actions' }, h('span', { class: 'sr-only' }, 'Actions')))),
          h('tbody', null, list.map((w) => h('tr', { dataset: { watch: String(w.id) } },
            h('td', { class: 'mono' }, `#${w.id}`),
            h('td', { class: 'mono' }, w.path),
            h('td', null, does(w)),
            h('td', { title: w.detail }, stateBadge(w.state), w.detail ? h('div', { class: 'muted small' }, w.detail) : null),
            h('td', null, w.mode || '–', w.fs_type ? h('span', { class: 'muted' }, ` (${w.fs_type})`) : null),
            h('td', null, w.last ? [w.last.action, ' ', w.last.result, ' ', timeEl(nsToMs(w.last.at_ns))] : '–'),
            h('td', { class: 'actions' }, toggle(w)))))));
      }
      swap(log, lines.length === 0
        ? h('p', { class: 'muted pad' }, 'Nothing logged yet.')
        : h('table', { class: 'table watch-log' },
          h('thead', null, h('tr', null, h('th', null, 'When'), h('th', null, 'Watch'), h('th', null, 'Action'), h('th', null, 'Result'), h('th', null, 'Trigger'), h('th', null, 'Detail'))),
          h('tbody', null, lines.map(logLine))));
    } catch (e) {
      if (e.name !== 'AbortError' && mine === seq) swap(body, failure(e, refresh));
    }
  }
  ctx.live([], refresh, 2000);
  // Watches raise no events of their own yet: look again every 2 s.
  ctx.every(refresh, 2000);
  refresh();
}

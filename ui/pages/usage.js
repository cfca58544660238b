// Usage: GPU-hours per user, project or day, when the daemon keeps the
// accounting (health.features has "usage"); a designed empty state before.

import * as api from '../api.js';
import { h, swap, loading, empty, failure } from '../lib/dom.js';
import { shortTime } from '../lib/format.js';

const GROUPS = [['user', 'User'], ['project', 'Project'], ['day', 'Day']];

const hours = (x) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));

export function mount(root, route, ctx) {
  const head = h('div', { class: 'page-head' },
    h('div', null, h('h1', null, 'Usage'),
      h('p', { class: 'page-sub' }, 'GPU-hours used by Trainyard jobs: who and what the lab\'s GPUs went to.')));
  root.append(head);

  if (!(ctx.health?.features ?? []).includes('usage')) {
    root.append(h('div', { class: 'panel' }, empty({
      icon: 'usage',
      title: 'No usage accounting yet',
      body: ['GPU-hours per user, project and day appear here once the daemon records them. ',
        'This daemon (v', ctx.health?.version ?? '?', ') does not keep that accounting yet; jobs, GPUs and logs work as usual.'],
    })));
    return;
  }

  let by = GROUPS.some(([k]) => k === route.query.get('by')) ? route.query.get('by') : 'user';
  const seg = h('div', { class: 'seg', role: 'group', 'aria-label': 'Group by' });
  const daysEl = h('section', { class: 'panel', 'aria-label': 'GPU-hours per day' });
  const body = h('div', { class: 'grid-2 usage-grid' }, loading('Loading usage…'));
  root.append(h('div', { class: 'toolbar' }, h('span', { class: 'muted' }, 'Group by'), seg), daysEl, body);

  function drawSeg() {
    swap(seg, GROUPS.map(([k, label]) => h('button', {
      type: 'button', class: 'seg-btn', 'aria-pressed': String(k === by), 'data-key': `by-${k}`,
      onclick() { by = k; ctx.setQuery({ by }); drawSeg(); refresh(); },
    }, label)));
  }

  function drawDays(days) {
    const max = Math.max(1e-9, ...days.map((d) => d.gpu_hours));
    swap(daysEl,
      h('div', { class: 'panel-head' }, h('h2', null, 'GPU-hours per day')),
      days.length === 0 ? h('p', { class: 'muted pad' }, 'No GPU time recorded yet.')
        : h('div', { class: 'columns', role: 'img', 'aria-label': 'GPU-hours per day' }, days.map((d) =>
          h('div', { class: 'column', title: `${d.day}: ${hours(d.gpu_hours)} GPU-hours` },
            h('div', { class: 'column-bar', style: { height: `${(100 * d.gpu_hours) / max}%` } }),
            h('div', { class: 'column-label' }, d.day.slice(5))))));
  }

  function drawRows(rows) {
    const max = Math.max(1e-9, ...rows.map((r) => r.gpu_hours));
    const total = rows.reduce((n, r) => n + r.gpu_hours, 0);
    const label = GROUPS.find(([k]) => k === by)[1];
    swap(body,
      h('section', { class: 'panel', 'aria-label': `GPU-hours by ${by}` },
        h('div', { class: 'panel-head' }, h('h2', null, `By ${label.toLowerCase()}`), h('span', { class: 'muted' }, `${hours(total)} GPU-hours in all`)),
        rows.length === 0 ? h('p', { class: 'muted pad' }, 'No GPU time recorded yet.')
          : h('div', { class: 'hbars' }, rows.map((r) => h('div', { class: 'hbar' },
            h('span', { class: 'hbar-key truncate', title: r.key }, r.key || '—'),
            h('span', { class: 'hbar-track' }, h('span', { class: 'hbar-fill', style: { width: `${(100 * r.gpu_hours) / max}%` } })),
            h('span', { class: 'hbar-val mono' }, hours(r.gpu_hours)))))),
      h('section', { class: 'panel table-panel', 'aria-label': 'Table' },
        h('table', { class: 'table' },
          h('thead', null, h('tr', null, h('th', null, label), h('th', { class: 'num' }, 'GPU-hours'), h('th', { class: 'num' }, 'Share'), h('th', { class: 'num' }, 'Jobs'))),
          h('tbody', null, rows.map((r) => h('tr', null,
            h('td', null, r.key || '—'),
            h('td', { class: 'num mono' }, hours(r.gpu_hours)),
            h('td', { class: 'num muted' }, total ? `${Math.round((100 * r.gpu_hours) / total)}%` : '—'),
            h('td', { class: 'num' }, String(r.jobs))))))));
  }

  let seq = 0;
  async function refresh() {
    const mine = ++seq;
    try {
      const u = await api.usage(by, { signal: ctx.signal });
      if (mine !== seq) return;
      drawDays(u.days ?? []);
      drawRows([...(u.rows ?? [])].sort((a, b) => b.gpu_hours - a.gpu_hours));
      daysEl.title = `Updated ${shortTime(Date.now())}`;
    } catch (e) {
      if (e.name !== 'AbortError' && mine === seq) swap(body, failure(e, refresh));
    }
  }
  ctx.live(['job'], refresh, 5000);
  drawSeg();
  refresh();
}

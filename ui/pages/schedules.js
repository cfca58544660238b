// Schedules: recurring and data-triggered jobs with their next fire time,
// last outcome and missed occurrences; pause, resume and run them.
// `#/schedules/NAME` shows one: next fire times, last runs, missed.

import * as api from '../api.js';
import { h, swap, loading, empty, failure, alertLine, badge, icon, facts } from '../lib/dom.js';
import { nsToMs, timeEl, dateTime } from '../lib/format.js';

export function mount(root, route, ctx) {
  return route.id ? detail(root, route, ctx) : list(root, ctx);
}

/** "cron 0 3 * * * (Asia/Seoul)" or "dataset imagenet, tags v*". */
function trigger(s) {
  if (s.cron) return [h('code', null, s.cron), h('span', { class: 'muted' }, ` ${s.tz}`)];
  const ds = h('a', { href: `#/datasets/${encodeURIComponent(s.on_dataset)}` }, s.on_dataset);
  return ['new ', s.tag_pattern ? ['tag ', h('code', null, s.tag_pattern), ' of '] : 'version of ', ds];
}

const jobLink = (id) => h('a', { href: `#/queue/${id}`, class: 'mono' }, `#${id}`);

/** An occurrence's outcome: fired → its jobs' state; else the outcome. */
function outcome(o) {
  if (!o) return h('span', { class: 'muted' }, 'never fired');
  if (o.outcome === 'fired') {
    const jobs = o.jobs.length > 1 ? [jobLink(o.jobs[0]), '…', jobLink(o.jobs[o.jobs.length - 1])] : [jobLink(o.jobs[0])];
    return h('span', { class: 'outcome' }, badge(o.state ?? 'cancelled', o.state ?? 'forgotten'), ' ', jobs);
  }
  return h('span', { class: 'outcome', title: o.detail ?? '' }, badge(o.outcome === 'missed' ? 'lost' : 'cancelled', o.outcome));
}

function nextFire(s) {
  if (s.paused) return badge('cancelled', 'paused');
  if (s.next_fire_ns == null) return h('span', { class: 'muted' }, 'on new data');
  const t = timeEl(nsToMs(s.next_fire_ns));
  t.title = `${s.next_fire} (${s.tz})`;
  return t;
}

/** Run now, Pause/Resume; `notice` shows what happened. */
function actions(s, notice, refresh) {
  const act = (key, label, fn) => h('button', {
    class: 'btn btn-sm', type: 'button', 'data-key': `${key}-${s.name}`,
    async onclick(e) {
      e.stopPropagation();
      const b = e.currentTarget;
      b.disabled = true;
      try {
        await fn();
        refresh();
      } catch (x) {
        notice(alertLine('error', `${s.name}: ${x.message}`));
      } finally {
        b.disabled = false;
      }
    },
  }, label);
  return [
    act('run', 'Run now', async () => {
      const r = await api.runSchedule(s.name);
      const o = r.occurrence;
      notice(o.outcome === 'fired'
        ? alertLine('ok', `${s.name}: submitted `, o.jobs.map(jobLink))
        : alertLine('error', `${s.name}: nothing submitted: ${o.detail ?? o.outcome}`));
    }),
    s.paused
      ? act('resume', 'Resume', () => api.resumeSchedule(s.name))
      : act('pause', 'Pause', () => api.pauseSchedule(s.name)),
  ];
}

// ------------------------------------------------------------------ list ---

function list(root, ctx) {
  const notice = h('div', { class: 'form-notice', 'aria-live': 'polite' });
  const body = h('div', { class: 'panel table-panel' }, loading('Loading schedules…'));
  root.append(
    h('div', { class: 'page-head' },
      h('div', null, h('h1', null, 'Schedules'),
        h('p', { class: 'page-sub' }, 'Jobs submitted on a cron pattern, or when a dataset gets a new version.'))),
    notice, body);
  const say = (el) => notice.replaceChildren(el);

  let seq = 0;
  async function refresh() {
    const mine = ++seq;
    try {
      const list = await api.schedules({ signal: ctx.signal });
      if (mine !== seq) return;
      if (list.length === 0) {
        swap(body, empty({
          icon: 'clock', title: 'No schedules yet',
          body: ['Add one from a shell: ',
            h('code', null, 'trainyard schedule add nightly --cron "0 3 * * *" --tz Asia/Seoul -- python eval.py'),
            ' or ', h('code', null, 'trainyard schedule add retrain --on-dataset imagenet -- python train.py')],
        }));
        return;
      }
      swap(body, h('table', { class: 'table schedules' },
        h('thead', null, h('tr', null, h('th', null, 'Name'), h('th', null, 'Trigger'), h('th', null, 'Next fire'),
          h('th', null, 'Last outcome'), h('th', { class: 'num' }, 'Missed'), h('th', { class: 'actions' }, h('span', { class: 'sr-only' }, 'Actions')))),
        h('tbody', null, list.map((s) => {
          const href = `#/schedules/${encodeURIComponent(s.name)}`;
          return h('tr', { class: 'clickable', dataset: { schedule: s.name }, onclick(e) { if (!e.target.closest('a, button')) location.hash = href; } },
            h('td', null, h('a', { href, class: 'strong' }, s.name)),
            h('td', null, trigger(s)),
            h('td', { class: 'next' }, nextFire(s)),
            h('td', { class: 'last' }, outcome(s.last)),
            h('td', { class: 'num missed' }, s.missed ? h('span', { class: 'warn-text', title: 'Occurrences that came due while the daemon was down' }, String(s.missed)) : '0'),
            h('td', { class: 'actions' }, actions(s, say, refresh)));
        }))));
    } catch (e) {
      if (e.name !== 'AbortError' && mine === seq) swap(body, failure(e, refresh));
    }
  }
  ctx.live(['schedule', 'job'], refresh, 1000);
  refresh();
}

// ---------------------------------------------------------------- detail ---

function occurrences(list, what) {
  if (list.length === 0) return h('p', { class: 'muted pad' }, `No ${what} yet.`);
  return h('table', { class: 'table' },
    h('thead', null, h('tr', null, h('th', null, 'When'), h('th', null, 'Outcome'), h('th', null, 'Detail'))),
    h('tbody', null, list.map((o) => h('tr', null,
      h('td', { class: 'mono', title: dateTime(nsToMs(o.at_ns)) }, o.at),
      h('td', null, outcome(o)),
      h('td', { class: 'muted' }, o.detail ?? '')))));
}

function detail(root, route, ctx) {
  const name = route.id;
  ctx.title(name);
  const notice = h('div', { class: 'form-notice', 'aria-live': 'polite' });
  const acts = h('div', { class: 'page-actions' });
  const body = h('div', { class: 'schedule-body' }, loading('Loading the schedule…'));
  root.append(
    h('div', { class: 'page-head' },
      h('div', null,
        h('a', { class: 'back', href: '#/schedules' }, icon('back'), 'Schedules'),
        h('h1', null, name)),
      acts),
    notice, body);
  const say = (el) => notice.replaceChildren(el);

  async function refresh() {
    try {
      const d = await api.schedule(name, { signal: ctx.signal });
      const s = d.schedule;
      swap(acts, actions(s, say, refresh));
      swap(body,
        h('section', { class: 'panel', 'aria-label': 'Settings' },
          facts([
            ['Trigger', trigger(s)],
            ['State', s.paused ? badge('cancelled', 'paused') : badge('running', 'active')],
            ['Next fire', s.paused ? null : s.next_fire],
            ['Overlap', s.overlap],
            ['Catch-up', s.cron ? s.catch_up : null],
            ['Window', s.window ? `${s.window} (${s.tz})` : null],
            ['Job', h('code', null, Array.isArray(s.job.command) ? s.job.command.join(' ') : s.job.command)],
            ['GPUs', s.job.gpus?.count ? String(s.job.gpus.count) : null],
            ['User', s.user],
            ['Missed', String(s.missed)],
          ])),
        d.next.length ? h('section', { class: 'panel', 'aria-label': 'Next fire times' },
          h('div', { class: 'panel-head' }, h('h2', null, 'Next fire times')),
          h('ul', { class: 'next-times' }, d.next.map((t) => h('li', { class: 'mono' }, t.at, ' ', h('span', { class: 'muted' }, '(', timeEl(nsToMs(t.at_ns)), ')'))))) : null,
        h('section', { class: 'panel table-panel', 'aria-label': 'Last runs' },
          h('div', { class: 'panel-head' }, h('h2', null, 'Last runs')),
          occurrences(d.runs, 'runs')),
        h('section', { class: 'panel table-panel', 'aria-label': 'Missed occurrences' },
          h('div', { class: 'panel-head' }, h('h2', null, 'Missed occurrences'),
            h('span', { class: 'muted' }, 'came due while the daemon was down')),
          occurrences(d.missed, 'missed occurrences')));
    } catch (e) {
      if (e.name !== 'AbortError') swap(body, failure(e, refresh));
    }
  }
  ctx.live(['schedule', 'job'], refresh, 1000);
  refresh();
}

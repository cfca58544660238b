// One job (`#/queue/ID`): what it is, its attempts, and its output, which
// follows live: we read the log from our offset whenever a `log` event says
// the attempt's log grew, and once more when the job changes state.

import * as api from '../api.js';
import { h, swap, loading, failure, alertLine, badge, facts, icon } from '../lib/dom.js';
import { bytes, dateTime, duration, nsToMs, timeEl } from '../lib/format.js';
import { LogView } from '../lib/logview.js';
import {
  ACTIVE, commandLine, elapsed, gpuIndex, gpuRequest, jobActions, reasonText, tick,
} from './jobs-common.js';

const CHUNK = 1 << 20; // the daemon returns at most 1 MiB per read

export function mount(root, route, ctx) {
  const id = route.id;
  let detail = null;
  let gpus = new Map();

  const head = h('div', { class: 'page-head' }, h('h1', null, `Job ${id}`));
  const notice = h('div');
  const info = h('div', { class: 'job-side' }, loading('Loading job…'));
  const attemptsEl = h('div');

  // --- output -------------------------------------------------------------
  const view = new LogView();
  let shown = null; // attempt number being shown (null: not started yet)
  let followLatest = true; // switch to new attempts as they start
  let offset = 0;
  let done = false;
  let reading = false;
  let again = false;
  let decoder = new TextDecoder();
  const logStatus = h('span', { class: 'log-status muted' });
  const placeholder = h('div', { class: 'log-placeholder muted' });
  const jump = h('button', {
    class: 'btn btn-sm log-jump', type: 'button', hidden: true,
    onclick() { view.scrollToEnd(); jump.hidden = true; },
  }, icon('down'), 'New output');
  view.onNewBelow = (on) => { jump.hidden = !on; };
  const wrapToggle = h('label', { class: 'check' },
    h('input', { type: 'checkbox', onchange(e) { view.pre.classList.toggle('log-wrap', e.target.checked); } }), 'Wrap lines');

  root.append(head, notice,
    h('div', { class: 'job-layout' },
      info,
      h('section', { class: 'panel log-panel', 'aria-label': 'Output' },
        h('div', { class: 'panel-head' }, h('h2', null, 'Output'), logStatus, h('span', { class: 'spacer' }), wrapToggle),
        h('div', { class: 'log-box' }, view.pre, placeholder, jump))));

  function showAttempt(n) {
    if (n === shown) return;
    shown = n;
    offset = 0;
    done = false;
    decoder = new TextDecoder();
    view.clear();
    jump.hidden = true;
    drawAttempts();
    readLog();
  }

  function drawLogStatus() {
    const state = detail?.state;
    const live = !done && (ACTIVE.includes(state) || state == null);
    logStatus.textContent = shown
      ? `attempt ${shown} · ${bytes(offset)} · ${done ? 'ended' : live ? 'following' : 'reading'}`
      : '';
    logStatus.classList.toggle('following', live && shown != null && !done);
    let ph = '';
    if (view.empty) {
      if (!shown) ph = state === 'queued' || state === 'assigned' || state == null ? 'Waiting for the job to start…' : 'This job never started, so it has no output.';
      else ph = done ? 'No output.' : 'No output yet…';
    }
    placeholder.textContent = ph;
    placeholder.hidden = !ph;
  }

  // Read from our offset until caught up; concurrent calls coalesce.
  async function readLog() {
    if (reading) { again = true; return; }
    reading = true;
    try {
      do {
        again = false;
        const want = shown;
        const r = await api.log(id, { attempt: shown ?? undefined, offset, signal: ctx.signal });
        if (want !== shown) { again = true; continue; } // switched attempts meanwhile
        if (shown == null) {
          if (!r.attempt) break; // not started yet
          shown = r.attempt;
          drawAttempts();
        }
        if (r.bytes.length) view.write(decoder.decode(r.bytes, { stream: true }));
        offset = r.offset;
        done = r.done;
        if (r.bytes.length >= CHUNK) again = true;
      } while (again && !ctx.signal.aborted);
    } catch (e) {
      if (e.name !== 'AbortError') swap(notice, alertLine('error', `Could not read the log: ${e.message}`));
    } finally {
      reading = false;
      drawLogStatus();
    }
  }

  // --- details ------------------------------------------------------------
  function drawHead(j) {
    swap(head,
      h('div', null,
        h('a', { class: 'back', href: '#/queue' }, icon('back'), 'Queue'),
        h('h1', null, `Job ${j.id}`, j.spec.name ? h('span', { class: 'h1-sub' }, ` ${j.spec.name}`) : null, ' ', badge(j.state)),
        h('p', { class: 'page-sub' }, reasonText(j) || '\u00a0')),
      h('div', { class: 'page-actions' }, jobActions(j, (e) => swap(notice, alertLine('error', e.message)), refresh)));
  }

  function drawInfo(j) {
    const spec = j.spec;
    const started = nsToMs(j.started_ns);
    const submitted = nsToMs(j.submitted_ns);
    const kv = (o) => Object.entries(o ?? {}).map(([k, v]) => h('div', { class: 'mono' }, `${k}=${v}`));
    swap(info,
      h('section', { class: 'panel', 'aria-label': 'Details' },
        h('div', { class: 'panel-head' }, h('h2', null, 'Details')),
        h('pre', { class: 'cmd mono' }, commandLine(spec)),
        facts([
          ['User', spec.user],
          ['Project', spec.project],
          ['Submitted', h('span', { title: dateTime(submitted) }, timeEl(submitted))],
          ['Started', started ? timeEl(started) : null],
          ['Finished', j.finished_ns ? timeEl(nsToMs(j.finished_ns)) : null],
          ['Waited', started ? duration((started - submitted) / 1000) : null],
          ['Ran', started ? elapsed(j) : null],
          ['Exit code', j.exit_code],
          ['Host', j.agent],
          ['GPUs', (j.gpus ?? []).length ? h('div', null, j.gpus.map((u) => {
            const g = gpus.get(u);
            return h('div', { title: u }, g ? `${g.index} · ${g.name}` : u);
          })) : null],
          ['Requested', gpuRequest(spec.gpus)],
          ['Datasets', (spec.inputs ?? []).length ? h('div', { class: 'chips' }, spec.inputs.map((i) =>
            h('a', { class: 'chip', href: `#/datasets/${encodeURIComponent(i.split('@')[0])}` }, i))) : null],
          ['Git', spec.git ? h('span', { class: 'mono' }, `${spec.git.repo} @ ${spec.git.rev}`) : null],
          ['Workdir', spec.workdir ? h('span', { class: 'mono' }, spec.workdir) : null],
          ['Environment', Object.keys(spec.env ?? {}).length ? kv(spec.env) : null],
          ['Priority', spec.priority],
          ['Attempts', `${j.attempts} of ${spec.max_attempts}`],
          ['Timeout', spec.timeout_s ? duration(spec.timeout_s) : null],
          ['Depends on', (spec.depends_on ?? []).length ? h('span', null, spec.depends_on.map((d, i) =>
            [i ? ', ' : '', h('a', { href: `#/queue/${d}` }, `job ${d}`)])) : null],
          ['Tags', (spec.tags ?? []).length ? h('div', { class: 'chips' }, spec.tags.map((t) => h('span', { class: 'chip' }, t))) : null],
        ])),
      attemptsEl);
  }

  function drawAttempts() {
    const list = detail?.attempt_log ?? [];
    if (list.length === 0) { swap(attemptsEl); return; }
    swap(attemptsEl, h('section', { class: 'panel', 'aria-label': 'Attempts' },
      h('div', { class: 'panel-head' }, h('h2', null, 'Attempts'), h('span', { class: 'muted' }, 'select one to see its output')),
      h('ul', { class: 'attempts' }, list.map((a) => {
        const s = nsToMs(a.started_ns);
        const f = nsToMs(a.finished_ns);
        return h('li', null, h('button', {
          type: 'button', class: 'attempt', 'aria-pressed': String(a.n === shown), 'data-key': `attempt-${a.n}`,
          onclick() { followLatest = a.n === list.at(-1).n; showAttempt(a.n); },
        },
        h('span', { class: 'attempt-n' }, `#${a.n}`),
        badge(a.state),
        h('span', { class: 'mono' }, a.agent),
        a.commit ? h('span', { class: 'mono muted', title: `git commit ${a.commit}` }, a.commit.slice(0, 10)) : null,
        h('span', { class: 'muted' }, s ? (f ? duration((f - s) / 1000) : 'running') : 'not started'),
        a.exit_code != null ? h('span', { class: 'muted' }, `exit ${a.exit_code}`) : null,
        a.error ? h('span', { class: 'attempt-error', title: a.error }, a.error) : null));
      }))));
  }

  async function refresh() {
    try {
      const [d, g] = await Promise.all([api.job(id, { signal: ctx.signal }), gpuIndex(ctx.signal).catch(() => gpus)]);
      detail = d;
      gpus = g;
      ctx.title(`Job ${d.id}`);
      drawHead(d);
      drawInfo(d);
      drawAttempts();
      const latest = d.attempt_log.at(-1)?.n ?? null;
      if (followLatest && latest != null && latest !== shown) showAttempt(latest);
      else readLog(); // state changed: pick up the last bytes and `done`
    } catch (e) {
      if (e.name === 'AbortError') return;
      if (!detail) {
        swap(info, failure(e, refresh));
        drawLogStatus();
      } else swap(notice, alertLine('error', `Could not refresh: ${e.message}`));
    }
  }

  ctx.subscribe((ev) => {
    if (ev.type === 'log' && String(ev.id) === String(id)) {
      if (ev.attempt === shown && ev.size > offset) readLog();
      else if (shown == null || (followLatest && ev.attempt > shown)) refreshSoon();
    } else if ((ev.type === 'job' && String(ev.id) === String(id)) || ev.type === 'refresh') refreshSoon();
  });
  const refreshSoon = ctx.live([], refresh, 250);
  ctx.every(() => tick(info), 1000);
  drawLogStatus();
  refresh();
}

// One job (`#/queue/ID`): what it is, its attempts, and its output, which
// follows live: we read the log from our offset whenever a `log` event says
// the attempt's log grew, and once more when the job changes state. Below,
// the utilization and memory of the GPUs the shown attempt held (from the
// daemon's telemetry), and the wandb runs the job produced.

import * as api from '../api.js';
import { h, swap, loading, failure, alertLine, badge, facts, icon } from '../lib/dom.js';
import { bytes, dateTime, duration, idleText, mib, nsToMs, timeEl } from '../lib/format.js';

/** The idle policy's decisions on an attempt, for a tooltip: when, why, and the samples' range. */
function evidenceTitle(list) {
  return list.map((e) => {
    const p = e.policy;
    const utils = e.samples.map((s) => s.max_util_pct).filter((u) => u != null);
    return `${e.decision} at ${dateTime(e.at_ms)}: idle since ${dateTime(e.idle_since_ms)} `
      + `(under ${p.threshold_pct}% for ${duration(p.window_ms / 1000)}, armed by ${e.armed_by.replace('_', ' ')}); `
      + `${e.samples.length} samples, max util ${utils.length ? Math.max(...utils) : '—'}%`;
  }).join('\n');
}
import { LogView } from '../lib/logview.js';
import { PALETTE, timeChart } from '../lib/chart.js';
import { gpuColumns, joinColumns } from '../lib/telemetry.js';
import {
  ACTIVE, commandLine, elapsed, gpuIndex, gpuRequest, jobActions, reasonText, tick,
} from './jobs-common.js';

const CHUNK = 1 << 20; // the daemon returns at most 1 MiB per read

export function mount(root, route, ctx) {
  const id = route.id;
  const features = ctx.health?.features ?? [];
  let detail = null;
  let gpus = new Map();
  let runLinks = []; // [{job, attempt, run, name}] the wandb runs its attempts produced

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

  const gpuPanel = h('section', { class: 'panel job-gpus', 'aria-label': 'GPU use', hidden: true });
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
    loadGpus();
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
          ['wandb runs', runLinks.length ? h('div', { class: 'chips run-links' }, runLinks.map((l) => h('a', {
            class: 'chip', href: `#/runs/${encodeURIComponent(l.run)}`, 'data-run': l.run,
            title: `wandb run ${l.run}, produced by attempt ${l.attempt}: counted once, as this job`,
          }, l.name && l.name !== l.run ? `${l.name} (${l.run})` : l.run))) : null],
        ])),
      attemptsEl,
      gpuPanel);
  }

  // --- wandb runs it produced ------------------------------------------------
  let linksFor = null; // the state the links were last read in
  async function loadRuns(j) {
    if (!features.includes('usage') || !j.attempt_log.length || linksFor === j.state) return;
    linksFor = j.state;
    try {
      const links = await api.jobRuns(id, { signal: ctx.signal });
      const named = await Promise.all(links.map((l) => api.run(l.run, { signal: ctx.signal })
        .then((r) => ({ ...l, name: r.name }), () => l)));
      const same = JSON.stringify(named) === JSON.stringify(runLinks);
      runLinks = named;
      if (!same && detail) drawInfo(detail);
    } catch (e) {
      if (e.name !== 'AbortError') linksFor = null; // try again on the next refresh
    }
  }

  // --- GPU use of the shown attempt ---------------------------------------
  let gpuCharts = null; // {key, charts, cur}
  let gpuSeq = 0;
  function clearGpuCharts() {
    for (const c of gpuCharts?.charts ?? []) c.destroy();
    gpuCharts = null;
  }
  async function loadGpus() {
    const a = detail?.attempt_log.find((x) => x.n === shown);
    if (!features.includes('telemetry') || !a || !a.gpus.length) {
      clearGpuCharts();
      gpuPanel.hidden = true;
      return;
    }
    const mine = ++gpuSeq;
    const from = Math.floor(a.assigned_ns / 1e6);
    const to = a.finished_ns ? Math.ceil(a.finished_ns / 1e6) + 1 : Date.now();
    try {
      const t = await api.telemetry({ job: id, since: from, until: Math.max(to, from + 1) }, { signal: ctx.signal });
      if (mine !== gpuSeq) return;
      drawGpus(a, t);
    } catch (e) {
      if (e.name === 'AbortError' || mine !== gpuSeq) return;
      clearGpuCharts();
      gpuPanel.hidden = false;
      swap(gpuPanel, h('div', { class: 'panel-head' }, h('h2', null, 'GPU use')), failure(e, loadGpus));
    }
  }

  function drawGpus(a, t) {
    const series = t.series.filter((s) => a.gpus.includes(s.uuid)).sort((x, y) => x.index - y.index);
    const key = `${a.n}|${series.map((s) => s.uuid).join(',')}`;
    const span = [t.since_ms / 1000, t.until_ms / 1000];
    gpuPanel.hidden = false;
    gpuPanel.dataset.attempt = String(a.n);
    const cols = series.map((s) => gpuColumns(s, t.step_ms));
    const util = joinColumns(cols.map((c) => ({ x: c.x, ys: [c.util] })));
    const mem = joinColumns(cols.map((c) => ({ x: c.x, ys: [c.mem] })));
    if (gpuCharts?.key === key) {
      gpuCharts.cur.span = span;
      gpuCharts.charts[0].setData(util.x, util.ys);
      gpuCharts.charts[1].setData(mem.x, mem.ys);
      gpuPanel.dataset.points = String(util.x.length);
      return;
    }
    clearGpuCharts();
    const title = h('div', { class: 'panel-head' }, h('h2', null, 'GPU use'),
      h('span', { class: 'muted' }, `attempt ${a.n} on ${a.agent}${t.resolution === 'raw' ? '' : ` · ${t.resolution} means`}`));
    if (!series.length) {
      swap(gpuPanel, title, h('p', { class: 'muted pad' }, a.finished_ns
        ? 'No GPU samples were kept for this attempt (the agent sent none, or they are past retention).'
        : 'No GPU samples yet: the agent sends them every few seconds.'));
      gpuPanel.dataset.points = '0';
      return;
    }
    const utilCard = h('figure', { class: 'chart-card', 'data-chart': 'util', 'aria-label': 'GPU utilization' });
    const memCard = h('figure', { class: 'chart-card', 'data-chart': 'mem', 'aria-label': 'GPU memory used' });
    swap(gpuPanel, title, h('div', { class: 'gpu-charts' }, utilCard, memCard));
    const cur = { span };
    const label = (s) => `GPU ${s.index}${series.some((o) => o.host !== s.host) ? ` on ${s.host}` : ''}`;
    const top = Math.max(...series.map((s) => s.memory_total_mib || 0));
    const spanOf = () => cur.span;
    const charts = [
      timeChart(utilCard, {
        title: 'Utilization', x: util.x, span: spanOf, range: [0, 100], yValue: (v) => `${v}%`, sync: `job-${id}`, height: 140,
        series: series.map((s, i) => ({ label: label(s), color: PALETTE[i % PALETTE.length], y: util.ys[i], value: (v) => `${Math.round(v)}%` })),
      }),
      timeChart(memCard, {
        title: 'Memory used', x: mem.x, span: spanOf, range: top > 0 ? [0, top] : null, yValue: (v) => mib(v), sync: `job-${id}`, height: 140,
        series: series.map((s, i) => ({ label: label(s), color: PALETTE[i % PALETTE.length], y: mem.ys[i], value: (v) => mib(v) })),
      }),
    ];
    gpuCharts = { key, charts, cur };
    gpuPanel.dataset.points = String(util.x.length);
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
        a.error ? h('span', { class: 'attempt-error', title: a.error }, a.error) : null,
        !f && idleText(a.idle) ? h('span', { class: 'chip chip-warn', 'data-key': `idle-${a.n}` }, idleText(a.idle)) : null,
        (a.idle_evidence ?? []).length
          ? h('span', { class: 'muted', title: evidenceTitle(a.idle_evidence) },
            `idle policy: ${a.idle_evidence.map((e) => e.decision).join(', ')}`)
          : null));
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
      else {
        readLog(); // state changed: pick up the last bytes and `done`
        loadGpus();
      }
      loadRuns(d);
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
    } else if (((ev.type === 'job' || ev.type === 'idle') && String(ev.id) === String(id)) || ev.type === 'refresh') refreshSoon();
  });
  const refreshSoon = ctx.live([], refresh, 250);
  ctx.every(() => tick(info), 1000);
  // A running attempt's GPU charts grow as the agent ships samples (~every 10 s).
  ctx.every(() => {
    // (and for half a minute after it ended: its last samples come after it).
    const a = detail?.attempt_log.find((x) => x.n === shown);
    if (a && (!a.finished_ns || Date.now() - a.finished_ns / 1e6 < 30_000)) loadGpus();
  }, 10_000);
  function onTheme() { if (gpuCharts) { clearGpuCharts(); loadGpus(); } }
  window.addEventListener('themechange', onTheme);
  ctx.onCleanup(() => { window.removeEventListener('themechange', onTheme); clearGpuCharts(); });
  drawLogStatus();
  refresh();
}

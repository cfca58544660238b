// Usage (`#/usage`): GPU-hours allocated, used and left idle while
// allocated, over a time range, by project, user, team, host, GPU model or
// tag — stacked daily bars, the table with its totals (and its CSV, the
// same as `trainyard usage --csv`), who left allocated GPUs idle, and the
// claims on one GPU that the daemon counted once. Shown when the daemon
// keeps the accounting (health.features has "usage").

import * as api from '../api.js';
import { h, swap, loading, empty, failure, alertLine, stat } from '../lib/dom.js';
import { dateTime, duration, mib, plural } from '../lib/format.js';
import { PALETTE } from '../lib/chart.js';
import {
  DIMS, METRICS, RANGES, TABLE_PERIODS, answerDays, csvName, gpuHours, idleRanking, keyLabel, niceScale, rangeParams, stackDays,
  usageCsv,
} from '../lib/usage.js';

const OTHER = '#94a3b8';
const pct = (a, b) => (b > 0 ? `${Math.round((100 * a) / b)}%` : '—');
const valid = (list, v, dflt) => (list.some(([k]) => k === v) ? v : dflt);

// The lab's zone, from the last answer: month presets are months there.
let labZone;

export function mount(root, route, ctx) {
  root.append(h('div', { class: 'page-head' },
    h('div', null, h('h1', null, 'Usage'),
      h('p', { class: 'page-sub' }, 'GPU-hours the lab\'s GPUs were allocated, used and left idle while allocated, by who and what held them.'))));

  if (!(ctx.health?.features ?? []).includes('usage')) {
    root.append(h('div', { class: 'panel' }, empty({
      icon: 'usage',
      title: 'No usage accounting on this daemon',
      body: ['GPU-hours per user, project and day appear here once the daemon records them. ',
        'This daemon (v', ctx.health?.version ?? '?', ') does not keep that accounting; jobs, GPUs and logs work as usual.'],
    })));
    return;
  }

  const q = route.query;
  let by = valid(DIMS, q.get('by'), 'project');
  let range = valid(RANGES, q.get('range'), '30d');
  let metric = valid(METRICS, q.get('metric'), 'allocated_gpu_h');
  let tablePeriod = valid(TABLE_PERIODS, q.get('table'), 'total');
  const custom = { since: q.get('since') ?? '', until: q.get('until') ?? '' };
  let data = null; // {daily, total, users, monthly}

  const save = () => ctx.setQuery({
    by, range, metric: metric === 'allocated_gpu_h' ? null : metric, table: tablePeriod === 'total' ? null : tablePeriod,
    since: range === 'custom' ? custom.since : null, until: range === 'custom' ? custom.until : null,
  });

  // --- controls -------------------------------------------------------------
  const rangeSeg = h('div', { class: 'seg', role: 'group', 'aria-label': 'Time range' });
  const bySeg = h('div', { class: 'seg', role: 'group', 'aria-label': 'Break down by' });
  const dateInput = (key, label) => h('input', {
    type: 'date', class: 'date', value: custom[key], 'aria-label': label, 'data-key': `range-${key}`,
    onchange(e) { custom[key] = e.target.value; save(); refresh(); },
  });
  const customEl = h('span', { class: 'custom-range' }, dateInput('since', 'Since (first day)'), h('span', { class: 'muted' }, 'to'), dateInput('until', 'Until (last day, included)'));
  const csvBtn = h('button', { class: 'btn', type: 'button', disabled: true, 'data-key': 'csv', onclick: () => download('total') }, 'Download CSV');
  const dailyCsvBtn = h('button', { class: 'btn btn-ghost', type: 'button', disabled: true, 'data-key': 'csv-daily', title: 'One row per day, as trainyard usage --daily --csv', onclick: () => download('daily') }, 'Daily CSV');
  const rangeText = h('span', { class: 'muted range-text' });
  root.querySelector('.page-head').append(h('div', { class: 'page-actions' }, dailyCsvBtn, csvBtn));

  function drawControls() {
    swap(rangeSeg, RANGES.map(([k, label]) => h('button', {
      type: 'button', class: 'seg-btn', 'aria-pressed': String(k === range), 'data-key': `range-${k}`,
      onclick() { range = k; save(); drawControls(); refresh(); },
    }, label)));
    swap(bySeg, DIMS.map(([k, label]) => h('button', {
      type: 'button', class: 'seg-btn', 'aria-pressed': String(k === by), 'data-key': `by-${k}`,
      onclick() { by = k; save(); drawControls(); refresh(); },
    }, label)));
    customEl.hidden = range !== 'custom';
  }

  const notice = h('div');
  const statsEl = h('div', { class: 'stats usage-stats' });
  const barsEl = h('section', { class: 'panel usage-bars', 'aria-label': 'GPU-hours per day' });
  const idleEl = h('section', { class: 'panel usage-idle', 'aria-label': 'Idle but allocated, per user' });
  const reconEl = h('div');
  const tableEl = h('section', { class: 'panel table-panel', 'aria-label': 'Usage table' });
  const ignoreEl = h('section', { class: 'panel usage-ignore', 'aria-label': 'Left out of usage' });
  const body = h('div', { class: 'usage-body' }, loading('Loading usage…'));
  root.append(
    h('div', { class: 'usage-controls' },
      h('div', { class: 'toolbar' }, h('span', { class: 'toolbar-label' }, 'Range'), rangeSeg, customEl),
      h('div', { class: 'toolbar' }, h('span', { class: 'toolbar-label' }, 'By'), bySeg),
      rangeText),
    notice, body);

  // --- drawing --------------------------------------------------------------
  const dimLabel = () => DIMS.find(([k]) => k === by)[1];

  const unit = (v, u) => [v, h('span', { class: 'stat-unit' }, ` ${u}`)];
  function drawStats(t) {
    swap(statsEl,
      stat('Allocated', unit(gpuHours(t.allocated_gpu_h), 'GPU-h'), 'assignment to release', { 'data-key': 'stat-allocated', 'data-v': t.allocated_gpu_h }),
      stat('Used', unit(gpuHours(t.used_gpu_h), 'GPU-h'), `${pct(t.used_gpu_h, t.allocated_gpu_h)} of allocated`, { 'data-key': 'stat-used', 'data-v': t.used_gpu_h }),
      stat('Idle but allocated', unit(gpuHours(t.idle_gpu_h), 'GPU-h'), `${pct(t.idle_gpu_h, t.allocated_gpu_h)} of allocated`, {
        class: 'stat stat-idle', 'data-key': 'stat-idle', 'data-v': t.idle_gpu_h, title: 'Allocated while under 5% utilization',
      }),
      stat('Energy', unit(gpuHours(t.energy_kwh), 'kWh'), t.peak_mem_mib ? `peak memory ${mib(t.peak_mem_mib)}` : null, { 'data-key': 'stat-energy', 'data-v': t.energy_kwh }),
      stat('Jobs', String(t.jobs), 'that held GPUs', { 'data-key': 'stat-jobs', 'data-v': t.jobs }),
      stat('wandb runs', String(t.runs), 'outside the queue', { 'data-key': 'stat-runs', 'data-v': t.runs }));
  }

  function drawBars(daily) {
    const days = answerDays(daily);
    const { keys, days: cols, max } = stackDays(daily.rows, days, metric);
    const color = (i) => (keys[i] === 'other' && i === keys.length - 1 && keys.length > 1 ? OTHER : PALETTE[i % PALETTE.length]);
    const { top, step } = niceScale(max);
    const every = Math.max(1, Math.ceil(cols.length / 14));
    const metricSeg = h('div', { class: 'seg seg-sm', role: 'group', 'aria-label': 'Bars show' }, METRICS.map(([k, label]) => h('button', {
      type: 'button', class: 'seg-btn', 'aria-pressed': String(k === metric), 'data-key': `metric-${k}`,
      onclick() { metric = k; save(); drawBars(data.daily); },
    }, label)));
    const metricName = METRICS.find(([k]) => k === metric)[1].toLowerCase();
    const lines = [];
    for (let v = 0; v <= top + 1e-9; v += step) lines.push(v);
    swap(barsEl,
      h('div', { class: 'panel-head' }, h('h2', null, `GPU-hours per day by ${dimLabel().toLowerCase()}`), h('span', { class: 'spacer' }), metricSeg),
      h('figure', {
        class: 'ubars', role: 'img', 'data-metric': metric,
        'aria-label': `${metricName} GPU-hours per day, stacked by ${dimLabel().toLowerCase()}, ${cols.length} days`,
      },
      h('div', { class: 'ubars-plot' },
        h('div', { class: 'ubars-grid', 'aria-hidden': 'true' }, lines.map((v) => h('div', { class: 'ubars-line', style: { bottom: `${(100 * v) / top}%` } },
          h('span', { class: 'ubars-tick' }, gpuHours(v))))),
        h('div', { class: 'ubars-cols' }, cols.map((d) => h('div', {
          class: 'ubar', 'data-day': d.day, 'data-total': String(d.total),
          title: [`${d.day}: ${gpuHours(d.total)} GPU-h ${metricName}`,
            ...keys.map((k, i) => (d.parts[i] > 0 ? `${k}: ${gpuHours(d.parts[i])}` : null)).filter(Boolean)].join('\n'),
        }, h('div', { class: 'ubar-stack', style: { height: `${(100 * d.total) / top}%` } },
          d.parts.map((v, i) => (v > 0 ? h('div', {
            class: 'ubar-seg', 'data-key': keys[i], style: { height: `${(100 * v) / d.total}%`, background: color(i) },
          }) : null))))))),
      h('div', { class: 'ubars-x', 'aria-hidden': 'true' }, cols.map((d, i) => h('span', null, i % every === 0 ? d.day.slice(5) : ''))),
      keys.length ? h('figcaption', { class: 'ubars-legend' }, keys.map((k, i) => h('span', { class: 'legend-item', 'data-key': k },
        h('span', { class: 'swatch', style: { background: color(i) } }), k)))
        : h('figcaption', { class: 'muted ubars-legend' }, `No ${metricName} GPU time in this range.`)));
  }

  function drawIdle(users) {
    const ranked = idleRanking(users.rows);
    const max = Math.max(1e-12, ...ranked.map((r) => r.idle));
    swap(idleEl,
      h('div', { class: 'panel-head' }, h('h2', null, 'Idle but allocated'),
        h('span', { class: 'muted' }, `${gpuHours(users.total.idle_gpu_h)} GPU-h in all`)),
      h('p', { class: 'muted pad-top' }, 'GPU-hours each user held under 5% utilization: GPUs others could have used.'),
      ranked.length === 0 ? h('p', { class: 'muted pad' }, 'Nobody left an allocated GPU idle in this range.')
        : h('ol', { class: 'idle-list' }, ranked.slice(0, 10).map((r) => h('li', { class: 'hbar idle-row', 'data-user': r.user, 'data-v': String(r.idle) },
          h('span', { class: 'hbar-key truncate', title: r.user }, r.user),
          h('span', { class: 'hbar-track', title: `${pct(r.idle, r.allocated)} of the ${gpuHours(r.allocated)} GPU-h ${r.user} was allocated` },
            h('span', { class: 'hbar-fill idle-fill', style: { width: `${(100 * r.idle) / max}%` } })),
          h('span', { class: 'hbar-val mono' }, gpuHours(r.idle), h('span', { class: 'muted small' }, ` ${pct(r.idle, r.allocated)}`))))),
      ranked.length > 10 ? h('p', { class: 'muted pad small' }, `and ${plural(ranked.length - 10, 'more user')}`) : null);
  }

  const holderEl = (x) => (x.kind === 'job'
    ? h('a', { href: `#/queue/${x.job}` }, `job ${x.job}`, x.attempt > 1 ? ` (attempt ${x.attempt})` : '')
    : h('a', { href: `#/runs/${encodeURIComponent(x.run)}` }, `run ${x.run}`));

  function drawReconciliation(total) {
    const links = total.links ?? [];
    const conflicts = total.conflicts ?? [];
    reconEl.hidden = !links.length && !conflicts.length;
    if (reconEl.hidden) { swap(reconEl); return; }
    swap(reconEl, h('section', { class: 'panel usage-recon', 'aria-label': 'Reconciliation' },
      h('div', { class: 'panel-head' }, h('h2', null, 'Counted once'),
        conflicts.length ? h('span', { class: 'chip chip-warn' }, plural(conflicts.length, 'double claim')) : null),
      h('div', { class: 'recon-body' },
        links.length ? h('p', { class: 'muted' }, `${plural(links.length, 'wandb run')} came from Trainyard jobs and ${links.length === 1 ? 'is' : 'are'} counted as the job: `,
          links.slice(0, 12).map((l, i) => [i ? ', ' : '', h('a', { href: `#/runs/${encodeURIComponent(l.run)}` }, l.run), ' ← ', h('a', { href: `#/queue/${l.job}` }, `job ${l.job}`)]),
          links.length > 12 ? ' …' : '') : null,
        conflicts.map((c) => alertLine('warn', h('span', { class: 'conflict', 'data-gpu': c.gpu },
          h('strong', null, 'Double claim'), ` on ${c.host} ${c.gpu} from ${dateTime(c.from_ms)} for ${duration((c.to_ms - c.from_ms) / 1000)}: `,
          c.claimants.map((x, i) => [i ? ' and ' : '', holderEl(x)]),
          ' claimed it at once. Counted once, for ', holderEl(c.claimants[0]), '.'))))));
  }

  function drawTable(total) {
    const answer = tablePeriod === 'monthly' ? data.monthly : tablePeriod === 'daily' ? data.daily : total;
    const split = tablePeriod !== 'total';
    // Per period (oldest first), then the largest first.
    const rows = [...answer.rows].sort((a, b) => (split ? (a.period ?? '').localeCompare(b.period ?? '') : 0)
      || b.allocated_gpu_h - a.allocated_gpu_h || keyLabel(a.key).localeCompare(keyLabel(b.key)));
    const periodSeg = h('div', { class: 'seg seg-sm', role: 'group', 'aria-label': 'Table rows per' }, TABLE_PERIODS.map(([k, label]) => h('button', {
      type: 'button', class: 'seg-btn', 'aria-pressed': String(k === tablePeriod), 'data-key': `table-${k}`,
      async onclick() {
        tablePeriod = k;
        save();
        if (k === 'monthly' && !data.monthly) { await refresh(); return; }
        drawTable(data.total);
      },
    }, label)));
    const cell = (v, text, cls = 'num mono') => h('td', { class: cls, 'data-v': String(v) }, text);
    const numbers = (r) => [
      cell(r.allocated_gpu_h, gpuHours(r.allocated_gpu_h)),
      cell(r.used_gpu_h, gpuHours(r.used_gpu_h)),
      cell(r.idle_gpu_h, gpuHours(r.idle_gpu_h)),
      h('td', { class: 'num muted' }, pct(r.idle_gpu_h, r.allocated_gpu_h)),
      cell(r.energy_kwh, gpuHours(r.energy_kwh)),
      cell(r.peak_mem_mib, r.peak_mem_mib ? mib(r.peak_mem_mib) : '—'),
      cell(r.jobs, String(r.jobs), 'num'),
      cell(r.runs, String(r.runs), 'num'),
    ];
    const periodName = tablePeriod === 'monthly' ? 'Month' : 'Day';
    let last = null;
    swap(tableEl,
      h('div', { class: 'panel-head' }, h('h2', null, `By ${dimLabel().toLowerCase()}${split ? ` and ${periodName.toLowerCase()}` : ''}`),
        by === 'tag' ? h('span', { class: 'muted' }, 'a job with two tags is in both rows; the total counts it once') : null,
        h('span', { class: 'spacer' }), periodSeg),
      h('table', { class: 'table usage-table', 'data-by': by, 'data-period': tablePeriod },
        h('thead', null, h('tr', null,
          split ? h('th', null, periodName) : null,
          h('th', null, dimLabel()), h('th', { class: 'num' }, 'Allocated GPU-h'), h('th', { class: 'num' }, 'Used GPU-h'),
          h('th', { class: 'num' }, 'Idle GPU-h'), h('th', { class: 'num', title: 'Idle share of allocated' }, 'Idle'),
          h('th', { class: 'num' }, 'Energy kWh'), h('th', { class: 'num' }, 'Peak mem'), h('th', { class: 'num' }, 'Jobs'), h('th', { class: 'num' }, 'Runs'))),
        h('tbody', null, rows.map((r) => {
          // A period's first row names it; the rows under it leave it blank.
          const first = r.period !== last;
          last = r.period;
          return h('tr', { 'data-key': keyLabel(r.key), 'data-period': r.period ?? null, class: split && first ? 'period-first' : null },
            split ? h('td', { class: 'mono' }, first ? r.period : '') : null,
            h('td', { class: 'truncate' }, keyLabel(r.key)), numbers(r));
        })),
        h('tfoot', null, h('tr', { class: 'total' }, split ? h('td') : null, h('th', { scope: 'row' }, 'Total'), numbers(answer.total)))));
  }

  // --- leaving jobs and runs out (the ignore tag) ----------------------------
  const ignoreNotice = h('div', { class: 'form-notice', 'aria-live': 'polite' });
  const ignoreList = h('div');
  async function setIgnored(kind, id, on) {
    const tag = data?.total?.ignore_tag;
    if (!tag) return;
    try {
      if (kind === 'job') await api.tagJob(id, on ? [tag] : [], on ? [] : [tag]);
      else await api.tagRun(id, on ? [tag] : [], on ? [] : [tag]);
      swap(ignoreNotice, alertLine('ok', `${kind} ${id} ${on ? 'left out of' : 'counted again in'} usage (tag ${tag}); the numbers are recomputed.`));
      await refresh();
    } catch (e) {
      swap(ignoreNotice, alertLine('error', `${kind} ${id}: ${e.message}`));
    }
  }
  async function drawIgnore() {
    const tag = data?.total?.ignore_tag;
    if (!tag) {
      swap(ignoreEl, h('div', { class: 'panel-head' }, h('h2', null, 'Left out of usage')),
        h('p', { class: 'muted pad' }, 'No ignore tag is configured ([usage] ignore_tag in config.toml).'));
      return;
    }
    const idInput = h('input', { type: 'text', id: 'ignore-id', class: 'mono', placeholder: 'job id, or a wandb run id', autocomplete: 'off', spellcheck: 'false' });
    const kindSel = h('select', { id: 'ignore-kind', 'aria-label': 'Job or run' }, h('option', { value: 'job' }, 'Job'), h('option', { value: 'run' }, 'wandb run'));
    const form = h('form', { class: 'toolbar ignore-form', 'aria-label': 'Leave a job or run out of usage' },
      kindSel, idInput, h('button', { class: 'btn', type: 'submit', 'data-key': 'ignore' }, 'Leave out'));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const id = idInput.value.trim();
      if (!id) return;
      if (kindSel.value === 'job' && !/^\d+$/.test(id)) { swap(ignoreNotice, alertLine('error', `"${id}" is not a job id (a number).`)); return; }
      setIgnored(kindSel.value, id, true);
    });
    swap(ignoreEl,
      h('div', { class: 'panel-head' }, h('h2', null, 'Left out of usage'),
        h('span', { class: 'muted' }, ['jobs and runs tagged ', h('code', null, tag), ' are not counted, also for the past'])),
      h('div', { class: 'pad' }, form), ignoreNotice, ignoreList);
    try {
      const page = await api.jobsPage({ tag, order: 'finished', limit: 50 }, { signal: ctx.signal });
      swap(ignoreList, page.jobs.length === 0 ? h('p', { class: 'muted pad' }, 'No job is left out.')
        : h('table', { class: 'table ignored-jobs' },
          h('thead', null, h('tr', null, h('th', null, 'Job'), h('th', null, 'Name'), h('th', null, 'User'), h('th', null, 'Project'),
            h('th', { class: 'actions' }, h('span', { class: 'sr-only' }, 'Actions')))),
          h('tbody', null, page.jobs.map((j) => h('tr', { 'data-job': String(j.id) },
            h('td', null, h('a', { href: `#/queue/${j.id}` }, `job ${j.id}`)),
            h('td', { class: 'truncate' }, j.spec?.name ?? (j.spec?.command ?? []).join(' ')),
            h('td', null, j.spec?.user ?? ''), h('td', null, j.spec?.project ?? ''),
            h('td', { class: 'actions' }, h('button', {
              class: 'btn btn-sm', type: 'button', 'data-key': `count-${j.id}`, onclick: () => setIgnored('job', j.id, false),
            }, 'Count again')))))));
    } catch (e) {
      if (e.name !== 'AbortError') swap(ignoreList, alertLine('error', e.message));
    }
  }

  function draw() {
    const { daily, total, users } = data;
    rangeText.textContent = `${dateTime(Date.parse(total.since))} to ${dateTime(Date.parse(total.until))} · days in ${total.timezone}`;
    csvBtn.disabled = false;
    dailyCsvBtn.disabled = false;
    drawStats(total.total);
    if (total.rows.length === 0 && total.total.allocated_gpu_h === 0) {
      swap(body, statsEl, h('section', { class: 'panel' }, empty({
        icon: 'usage',
        title: 'No GPU usage in this range',
        body: ['GPU-hours appear here once jobs hold GPUs, or indexed wandb runs used them, in the chosen range. ',
          'Pick a longer range, or submit a job with ', h('code', null, '--gpus 1'), '.'],
      })), reconEl, ignoreEl);
      drawReconciliation(total);
      drawIgnore();
      return;
    }
    drawBars(daily);
    drawIdle(users);
    drawReconciliation(total);
    drawTable(total);
    drawIgnore();
    swap(body, statsEl, h('div', { class: 'usage-top' }, barsEl, idleEl), reconEl, tableEl, ignoreEl);
  }

  function download(which) {
    if (!data) return;
    const answer = which === 'daily' ? data.daily : data.total;
    const url = URL.createObjectURL(new Blob([usageCsv(answer)], { type: 'text/csv' }));
    const a = h('a', { href: url, download: csvName(answer), hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }

  // --- loading --------------------------------------------------------------
  let seq = 0;
  async function refresh() {
    const mine = ++seq;
    const params = rangeParams(range, custom, Date.now(), labZone);
    if (range === 'custom' && !params.since && !params.until) {
      swap(notice, alertLine('info', 'Pick the first and last day of the range.'));
      return;
    }
    body.setAttribute('aria-busy', 'true');
    try {
      const opts = { signal: ctx.signal };
      const [daily, total, users, monthly] = await Promise.all([
        api.usage({ ...params, by, period: 'daily' }, opts),
        api.usage({ ...params, by }, opts),
        by === 'user' ? null : api.usage({ ...params, by: 'user' }, opts),
        tablePeriod === 'monthly' ? api.usage({ ...params, by, period: 'monthly' }, opts) : null,
      ]);
      if (mine !== seq) return;
      const zone = total.timezone === 'system' ? undefined : total.timezone;
      if (zone !== labZone) {
        labZone = zone;
        // A month preset is a month of the lab's zone: ask again if it differs.
        if (JSON.stringify(rangeParams(range, custom, Date.now(), zone)) !== JSON.stringify(params)) { refresh(); return; }
      }
      data = { daily, total, users: users ?? total, monthly };
      swap(notice);
      draw();
    } catch (e) {
      if (e.name === 'AbortError' || mine !== seq) return;
      if (!data) swap(body, failure(e, refresh));
      else swap(notice, alertLine('error', e.message));
    } finally {
      if (mine === seq) body.removeAttribute('aria-busy');
    }
  }

  ctx.live(['job', 'run'], refresh, 10_000);
  ctx.every(refresh, 60_000);
  drawControls();
  refresh();
}

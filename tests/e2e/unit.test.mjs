// Unit tests of the UI's pure helpers (no browser): the SSE framing, the
// command-line and KEY=VALUE parsing of the job form, formatting, the Usage
// page's CSV, ranges and bars, and GPU history columns.
// Run: node --test unit.test.mjs

import assert from 'node:assert/strict';
import test from 'node:test';
import { sseParser } from '../../ui/lib/sse.js';
import { keyValues, parseDuration, shellWords } from '../../ui/lib/util.js';
import { axisNums, bytes, duration, idleText, mib, num } from '../../ui/lib/format.js';
import {
  answerDays, daysFrom, fixed, gpuHours, idleRanking, niceScale, prevMonth, rangeParams, stackDays, usageCsv,
} from '../../ui/lib/usage.js';
import { gpuColumns, joinColumns, mergeHistory, refetchFrom } from '../../ui/lib/telemetry.js';

function parse(chunks) {
  const out = [];
  const push = sseParser((name, data) => out.push([name, data]));
  for (const c of chunks) push(c);
  return out;
}

test('sse: events, comments, CRLF and chunk boundaries anywhere', () => {
  const wire = ': keep-alive\n\nevent: job\ndata: {"type":"job","id":1}\n\r\nevent: log\r\ndata: a\r\ndata: b\r\n\r\ndata: plain\n\n';
  const want = [['job', '{"type":"job","id":1}'], ['log', 'a\nb'], ['message', 'plain']];
  assert.deepEqual(parse([wire]), want);
  // Every split point, including between \r and \n.
  for (let i = 1; i < wire.length; i++) assert.deepEqual(parse([wire.slice(0, i), wire.slice(i)]), want, `split at ${i}`);
  assert.deepEqual(parse([...wire]), want);
});

test('sse: an event without a blank line yet is not dispatched', () => {
  assert.deepEqual(parse(['event: job\ndata: 1\n']), []);
});

test('shellWords splits like sh', () => {
  assert.deepEqual(shellWords(`python train.py --name 'my run' --tag "a \\"b\\"" x\\ y`),
    ['python', 'train.py', '--name', 'my run', '--tag', 'a "b"', 'x y']);
  assert.deepEqual(shellWords('  a   b '), ['a', 'b']);
  assert.deepEqual(shellWords(`''`), ['']);
  assert.throws(() => shellWords(`echo 'oops`), /unterminated/);
});

test('keyValues and parseDuration', () => {
  assert.deepEqual(keyValues('lr=1e-3, epochs=10\nname=a=b'), { lr: '1e-3', epochs: '10', name: 'a=b' });
  assert.throws(() => keyValues('lr'), /not KEY=VALUE/);
  assert.equal(parseDuration('90'), 90);
  assert.equal(parseDuration('30m'), 1800);
  assert.equal(parseDuration('1.5h'), 5400);
  assert.throws(() => parseDuration('soon'));
});

test('formatting', () => {
  assert.equal(bytes(0), '0 B');
  assert.equal(bytes(1536), '1.5 KiB');
  assert.equal(bytes(-2048), '−2.0 KiB');
  assert.equal(mib(81920), '80.0 GiB');
  assert.equal(mib(188416), '184 GiB');
  assert.equal(duration(3725), '1h 2m');
  assert.equal(duration(42.4), '42s');
  assert.equal(duration(0.2), '200ms');
  assert.equal(num(0.0033333), '0.003333');
  assert.equal(num(1499), '1499');
  assert.equal(num(1e-5), '1.000e-5');
});

test('axisNums: chart ticks differ and stay short (train/lr at 1e-4)', () => {
  // Small values that num() formats alike or too long for the axis.
  assert.deepEqual(axisNums([1e-4, 1.5e-4, 2e-4, 2.5e-4]), ['1e-4', '1.5e-4', '2e-4', '2.5e-4']);
  assert.deepEqual(axisNums([3.00001e-4, 3.00002e-4, 3.00003e-4]), ['3.00001e-4', '3.00002e-4', '3.00003e-4']);
  assert.deepEqual(axisNums([0, 0.0005, 0.001, 0.0015]), ['0', '0.0005', '0.001', '0.0015']);
  assert.deepEqual(axisNums([0, 0.25, 0.5, 0.75, 1]), ['0', '0.25', '0.5', '0.75', '1']);
  assert.deepEqual(axisNums([0, 500, 1000]), ['0', '500', '1000']);
  assert.deepEqual(axisNums([2e6, 4e6, 6e6]), ['2e6', '4e6', '6e6']);
  assert.deepEqual(axisNums([-0.2, 0, 0.2]), ['-0.2', '0', '0.2']);
  for (const ticks of [[1e-7, 2e-7], [0.1, 0.2, 0.30000000000000004], [1.23456e-5, 1.23457e-5]]) {
    const out = axisNums(ticks);
    assert.equal(new Set(out).size, ticks.length, `${out}`);
    assert.ok(out.every((s) => s.length <= 11), `${out}`);
  }
});

test('fixed rounds as Rust\'s {:.N}: exact ties to even, the rest to nearest', () => {
  // What `format!("{:.2}")` etc. print (checked with rustc).
  assert.equal(fixed(0.125, 2), '0.12'); // a tie: toFixed says 0.13
  assert.equal(fixed(0.375, 2), '0.38');
  assert.equal(fixed(0.625, 2), '0.62');
  assert.equal(fixed(2.5, 0), '2');
  assert.equal(fixed(1.5, 0), '2');
  assert.equal(fixed(0.25, 1), '0.2');
  assert.equal(fixed(1.005, 2), '1.00'); // not a tie: 1.00499999999999989...
  assert.equal(fixed(0.005, 2), '0.01'); // not a tie: 0.005000000000000000104...
  assert.equal(fixed(0, 3), '0.000');
  assert.equal(fixed(12.3456, 3), '12.346');
  assert.equal(fixed(450000 / 3.6e6, 2), '0.12'); // 7.5 GPU-minutes
});

const row = (period, key, alloc, extra = {}) => ({
  period, key, allocated_gpu_h: alloc, used_gpu_h: alloc / 2, idle_gpu_h: alloc / 4, energy_kwh: alloc / 10,
  peak_mem_mib: 1024, jobs: 1, runs: 0, ...extra,
});

test('usageCsv is trainyard usage --csv: header, rows, totals; quoting', () => {
  const total = { key: ['total'], allocated_gpu_h: 3.5, used_gpu_h: 1.25, idle_gpu_h: 0.125, energy_kwh: 0.0625, peak_mem_mib: 40960, jobs: 3, runs: 1 };
  const answer = {
    since: '2026-11-01T00:00:00Z', until: '2026-12-01T00:00:00Z', timezone: 'UTC', by: ['user', 'project'], period: 'total',
    rows: [row(undefined, ['ana', 'vision, v2'], 2), row(undefined, ['bo"b', '-'], 1.5)], total,
  };
  assert.equal(usageCsv(answer), [
    'user,project,alloc_gpu_h,used_gpu_h,idle_gpu_h,energy_kwh,peak_mem_mib,jobs,runs',
    'ana,"vision, v2",2.00,1.00,0.50,0.200,1024,1,0',
    '"bo""b",-,1.50,0.75,0.38,0.150,1024,1,0',
    'total,,3.50,1.25,0.12,0.062,40960,3,1',
    '',
  ].join('\n'));
  // No dimension: a `key` column; daily: a period column first.
  assert.equal(usageCsv({ ...answer, by: [], rows: [] }).split('\n')[0], 'key,alloc_gpu_h,used_gpu_h,idle_gpu_h,energy_kwh,peak_mem_mib,jobs,runs');
  assert.equal(usageCsv({ ...answer, by: [], rows: [] }).split('\n')[1], 'total,3.50,1.25,0.12,0.062,40960,3,1');
  const daily = usageCsv({ ...answer, by: ['user'], period: 'daily', rows: [row('2026-11-30', ['ana'], 1)] }).split('\n');
  assert.deepEqual(daily.slice(0, 3), [
    'period,user,alloc_gpu_h,used_gpu_h,idle_gpu_h,energy_kwh,peak_mem_mib,jobs,runs',
    '2026-11-30,ana,1.00,0.50,0.25,0.100,1024,1,0',
    'total,,3.50,1.25,0.12,0.062,40960,3,1',
  ]);
});

test('range presets: ages, this and last month in the lab\'s zone, custom days', () => {
  const now = Date.parse('2026-12-01T02:00:00Z');
  assert.deepEqual(rangeParams('7d', {}, now, 'UTC'), { since: '7d' });
  assert.deepEqual(rangeParams('30d', {}, now, 'UTC'), { since: '30d' });
  assert.deepEqual(rangeParams('month', {}, now, 'UTC'), { since: '2026-12' });
  // 2 am UTC on Dec 1 is still November in New York.
  assert.deepEqual(rangeParams('month', {}, now, 'America/New_York'), { since: '2026-11' });
  assert.deepEqual(rangeParams('last-month', {}, now, 'UTC'), { since: '2026-11', until: '2026-11' });
  assert.deepEqual(rangeParams('last-month', {}, Date.parse('2026-01-15T12:00:00Z'), 'UTC'), { since: '2025-12', until: '2025-12' });
  assert.deepEqual(rangeParams('custom', { since: '2026-11-02', until: '' }, now, 'UTC'), { since: '2026-11-02', until: undefined });
  assert.deepEqual(rangeParams('12mo', {}, now, 'UTC'), { since: '2026-01' });
  assert.deepEqual(rangeParams('12mo', {}, Date.parse('2026-03-15T12:00:00Z'), 'UTC'), { since: '2025-04' });
  assert.equal(prevMonth('2026-10'), '2026-09');
});

test('days of a daily answer, in its zone, with the days rows name', () => {
  assert.deepEqual(daysFrom('2026-02-27', '2026-03-02'), ['2026-02-27', '2026-02-28', '2026-03-01', '2026-03-02']);
  assert.deepEqual(daysFrom('2026-03-02', '2026-03-01'), []);
  const answer = { since: '2026-11-29T15:00:00Z', until: '2026-12-01T15:00:00Z', timezone: 'Asia/Seoul', rows: [] };
  // Midnight to midnight in Seoul: two days.
  assert.deepEqual(answerDays(answer), ['2026-11-30', '2026-12-01']);
  assert.deepEqual(answerDays({ ...answer, timezone: 'system', rows: [{ period: '2026-11-20' }] })[0], '2026-11-20');
});

test('stackDays: top keys own a segment, the rest are "other"; totals per day', () => {
  const days = ['2026-11-30', '2026-12-01'];
  const rows = [
    row('2026-11-30', ['a'], 4), row('2026-11-30', ['b'], 1), row('2026-12-01', ['a'], 1),
    row('2026-12-01', ['c'], 2), row('2026-12-01', ['d'], 0.5), row('2026-12-01', ['-'], 0),
  ];
  const s = stackDays(rows, days, 'allocated_gpu_h', 3);
  assert.deepEqual(s.keys, ['a', 'c', 'other']);
  assert.deepEqual(s.days.map((d) => d.parts), [[4, 0, 1], [1, 2, 0.5]]);
  assert.deepEqual(s.days.map((d) => d.total), [5, 3.5]);
  assert.equal(s.max, 5);
  const all = stackDays(rows, days, 'allocated_gpu_h');
  assert.deepEqual(all.keys, ['a', 'c', 'b', 'd']);
  assert.equal(stackDays([], days, 'used_gpu_h').max, 0);
});

test('idleRanking, gpuHours and niceScale', () => {
  const users = [row(undefined, ['ana'], 4, { idle_gpu_h: 1 }), row(undefined, ['bo'], 2, { idle_gpu_h: 1.5 }), row(undefined, ['cy'], 2, { idle_gpu_h: 0 })];
  assert.deepEqual(idleRanking(users).map((r) => [r.user, r.idle, r.share]), [['bo', 1.5, 0.75], ['ana', 1, 0.25]]);
  assert.equal(gpuHours(0.000833333), '0.000833');
  assert.equal(gpuHours(2.5), '2.50');
  assert.equal(gpuHours(41.25), '41.3');
  assert.equal(gpuHours(1280.4), '1280');
  assert.equal(gpuHours(0), '0');
  assert.deepEqual(niceScale(9), { top: 10, step: 2.5 });
  assert.deepEqual(niceScale(0.0031), { top: 0.004, step: 0.001 });
  assert.deepEqual(niceScale(0), { top: 1, step: 0.25 });
});

const point = (t, util, mem, covered = 2000, extra = {}) => ({
  t_ms: t, covered_ms: covered, util_pct: util == null ? null : { min: util, mean: util, max: util }, mem_used_mib: { min: mem, mean: mem, max: mem }, ...extra,
});

test('gpuColumns: seconds, holders of one bucket merged by time, holes break the line', () => {
  const raw = { points: [point(10_000, 50, 100), point(12_000, 70, 200), point(14_000, null, 300), point(30_000, 10, 400)] };
  assert.deepEqual(gpuColumns(raw, 0), {
    x: [10, 12, 14, 16, 30], util: [50, 70, null, null, 10], mem: [100, 200, 300, null, 400],
  });
  // Two holders in one minute: 45 s at 80 %, 15 s at 0 %.
  const m = { points: [point(60_000, 80, 1000, 45_000, { job: 1 }), point(60_000, 0, 0, 15_000), point(120_000, 20, 10, 60_000), point(300_000, 5, 5, 60_000)] };
  const c = gpuColumns(m, 60_000);
  assert.deepEqual(c.x, [60, 120, 180, 300]);
  assert.deepEqual(c.util, [60, 20, null, 5]);
  assert.deepEqual(c.mem, [750, 10, null, 5]);
  assert.deepEqual(gpuColumns({ points: [] }, 0), { x: [], util: [], mem: [] });
});

test('joinColumns: undefined where a table has no point, its nulls kept', () => {
  const j = joinColumns([{ x: [1, 3], ys: [[10, null]] }, { x: [2, 3], ys: [[20, 30]] }]);
  assert.deepEqual(j.x, [1, 2, 3]);
  assert.deepEqual(j.ys, [[10, undefined, null], [undefined, 20, 30]]);
});

test('idleText says how long a job has been idle and what happens when (as idle::Status::describe)', () => {
  const st = { phase: 'idle', action: 'stop', window_ms: 600_000, threshold_pct: 5, arms_at_ms: 0, idle_since_ms: 1_000, act_at_ms: 601_000, seen_ms: 1_000 };
  assert.equal(idleText(st, 721_000 - 600_000), 'idle 2m; stop in 8m');
  assert.equal(idleText(st, 700_000), 'idle 11m; stop due now');
  assert.equal(idleText({ ...st, phase: 'busy' }, 0), 'GPUs idle but busy reading: idle detection suspended');
  assert.equal(idleText({ ...st, phase: 'active', idle_since_ms: undefined }, 0), null);
  assert.equal(idleText({ ...st, phase: 'acted', action: 'notify' }, 721_000), 'idle 12m; owner notified');
  assert.equal(idleText(null), null);
});

test('mergeHistory: a refetch replaces points from its start, trims the span, drops empty GPUs', () => {
  const pt = (t) => ({ t_ms: t, covered_ms: 2000, util_pct: { mean: t / 1000 } });
  const answer = {
    resolution: 'raw', step_ms: 0, since_ms: 0, until_ms: 100_000,
    series: [
      { uuid: 'a', points: [pt(10_000), pt(50_000), pt(90_000), pt(98_000)] },
      { uuid: 'b', points: [pt(20_000)] },
    ],
  };
  const from = refetchFrom(answer);
  assert.equal(from, 98_000 - 30_000);
  // The refetch has a late sample at 70 s, the one at 90 s again, and new ones.
  const fresh = {
    resolution: 'raw', step_ms: 0, since_ms: from, until_ms: 130_000,
    series: [{ uuid: 'a', points: [pt(70_000), pt(90_000), pt(110_000), pt(128_000)] }, { uuid: 'c', points: [pt(129_000)] }],
  };
  const m = mergeHistory(answer, fresh, from, 100_000);
  assert.equal(m.since_ms, 30_000);
  assert.equal(m.until_ms, 130_000);
  assert.deepEqual(m.series.map((s) => [s.uuid, s.points.map((p) => p.t_ms)]), [
    ['a', [50_000, 70_000, 90_000, 110_000, 128_000]],
    ['c', [129_000]],
  ]);
  // Buckets: one that still overlaps the span stays; the step widens the margin.
  const b = { resolution: '1m', step_ms: 60_000, until_ms: 600_000, series: [{ uuid: 'a', points: [pt(0), pt(60_000), pt(540_000)] }] };
  assert.equal(refetchFrom(b), 540_000 - 120_000);
  const mb = mergeHistory(b, { ...b, until_ms: 650_000, series: [] }, refetchFrom(b), 600_000);
  assert.deepEqual(mb.series[0].points.map((p) => p.t_ms), [0, 60_000]);
});

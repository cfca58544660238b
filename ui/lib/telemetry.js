// GPU history (`GET /telemetry`) as chart columns. Pure (no DOM), so
// `node --test` runs it.

/** The history ranges of the GPUs page: key, label, span (ms), refetch every (ms). */
export const HISTORY_RANGES = [
  // An hour is ~500 px wide: 30 s is 4 px.
  ['1h', '1 h', 3_600_000, 30_000],
  ['24h', '24 h', 86_400_000, 60_000],
  ['7d', '7 d', 7 * 86_400_000, 300_000],
];

function median(xs) {
  if (!xs.length) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1];
}

/**
 * One GPU's series as columns over time: `{x, util, mem}` with `x` in
 * seconds (uPlot's time unit), `util` the mean utilization (%) and `mem`
 * the mean memory used (MiB) of each point. The points of one bucket (one
 * per holder, when the GPU changed hands inside it) become one, weighted by
 * the time each covers. Where no point came for more than 1.5 buckets (3
 * sample intervals for raw samples, and at least 5 s), a null breaks the
 * line instead of drawing across the hole.
 */
export function gpuColumns(series, stepMs = 0) {
  const merged = [];
  for (const p of series.points ?? []) {
    const w = Math.max(1, p.covered_ms ?? 0);
    const util = p.util_pct?.mean;
    const mem = p.mem_used_mib?.mean;
    let m = merged.at(-1);
    if (!m || m.t !== p.t_ms) merged.push((m = { t: p.t_ms, covered: 0, uw: 0, us: 0, mw: 0, ms: 0 }));
    m.covered += p.covered_ms ?? 0;
    if (util != null) { m.uw += w; m.us += util * w; }
    if (mem != null) { m.mw += w; m.ms += mem * w; }
  }
  const every = stepMs || median(merged.map((m) => m.covered).filter((c) => c > 0)) || 2000;
  const hole = stepMs ? 1.5 * stepMs : Math.max(3 * every, 5000);
  const out = { x: [], util: [], mem: [] };
  merged.forEach((m, i) => {
    if (i > 0 && m.t - merged[i - 1].t > hole) {
      out.x.push((merged[i - 1].t + every) / 1000);
      out.util.push(null);
      out.mem.push(null);
    }
    out.x.push(m.t / 1000);
    out.util.push(m.uw ? m.us / m.uw : null);
    out.mem.push(m.mw ? m.ms / m.mw : null);
  });
  return out;
}

/**
 * Fold a refetch into the history already shown, so that a page left open
 * fetches only the last seconds instead of the whole range again (an hour of
 * raw samples is ~1.6 MB of JSON for 3 GPUs, every 10 s). `fresh` was asked
 * for from `from` (ms) on, at `answer`'s resolution: per GPU, the points
 * from `from` on are replaced by the fresh ones (late samples and a bucket
 * still filling are redone), points that fell out of the last `spanMs`
 * drop, and GPUs left without points go.
 */
export function mergeHistory(answer, fresh, from, spanMs) {
  const since = fresh.until_ms - spanMs;
  const step = fresh.step_ms || 0;
  const byUuid = new Map(answer.series.map((s) => [s.uuid, { ...s, points: s.points.filter((p) => p.t_ms < from) }]));
  for (const s of fresh.series) {
    const old = byUuid.get(s.uuid);
    byUuid.set(s.uuid, { ...s, points: (old ? old.points : []).concat(s.points) });
  }
  const series = [...byUuid.values()]
    .map((s) => ({ ...s, points: s.points.filter((p) => p.t_ms + step > since) }))
    .filter((s) => s.points.length);
  return { ...fresh, since_ms: since, series };
}

/**
 * Where a refetch of `answer` starts: its newest point, less a margin for
 * samples that arrive late (agents ship every 10 s) and the bucket still
 * filling.
 */
export function refetchFrom(answer) {
  const last = Math.max(...answer.series.map((s) => s.points.at(-1)?.t_ms ?? -Infinity));
  return (Number.isFinite(last) ? last : answer.until_ms) - Math.max(30_000, 2 * (answer.step_ms || 0));
}

/**
 * Several `{x, ys: [...]}` tables on the union of their x values. Where a
 * table has no point, its columns hold `undefined` (uPlot draws across it);
 * its own nulls stay nulls (uPlot breaks the line there).
 */
export function joinColumns(tables) {
  const xs = [...new Set(tables.flatMap((t) => t.x))].sort((a, b) => a - b);
  const at = new Map(xs.map((x, i) => [x, i]));
  const ys = tables.flatMap((t) => t.ys.map((y) => {
    const col = new Array(xs.length).fill(undefined);
    t.x.forEach((x, i) => { col[at.get(x)] = y[i]; });
    return col;
  }));
  return { x: xs, ys };
}

/** A series' label: `gpu-node-1 · GPU 0 · A100-80GB` (`withHost` false: no host). */
export function gpuLabel(s, withHost = true) {
  return [withHost ? s.host : null, `GPU ${s.index}`, s.model].filter(Boolean).join(' · ');
}

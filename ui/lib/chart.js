// Line charts of run metrics on uPlot (vendored, see vendor/uplot/VERSION):
// theme-aware colors, a shared crosshair across charts, resizing with the
// container, EMA smoothing and step alignment of several runs.

import uPlot from '../vendor/uplot/uPlot.esm.js';
import { cssVar } from './theme.js';
import { axisNums, num } from './format.js';

/** Run colors, in order (main run first). Readable on light and dark. */
export const PALETTE = ['#4f7cff', '#f59e0b', '#10b981', '#ef4444', '#a855f7', '#06b6d4', '#ec4899', '#84cc16', '#f97316', '#64748b'];

/**
 * Exponential moving average with TensorBoard's debiasing, so the start of
 * the curve is not pulled towards zero. `w` in [0, 1): 0 is no smoothing.
 * Gaps (null) stay gaps.
 */
export function smooth(values, w) {
  if (!w) return values;
  let last = 0;
  let n = 0;
  return values.map((v) => {
    if (v == null || !Number.isFinite(v)) return null;
    n++;
    last = last * w + (1 - w) * v;
    return last / (1 - w ** n);
  });
}

/**
 * Align series with their own x values on the union of the x values:
 * `[{x, y}]` → `{x, ys}`, with null where a series has no point.
 */
export function align(parts) {
  const xs = [...new Set(parts.flatMap((p) => p.x))].sort((a, b) => a - b);
  const at = new Map(xs.map((x, i) => [x, i]));
  const ys = parts.map((p) => {
    const out = new Array(xs.length).fill(null);
    p.x.forEach((x, i) => { out[at.get(x)] = p.y[i]; });
    return out;
  });
  return { x: xs, ys };
}

const withAlpha = (hex, a) => `${hex}${Math.round(a * 255).toString(16).padStart(2, '0')}`;

/**
 * Draw a line chart into `el`. `series`: `[{label, color, y, faint}]` over
 * the shared `x`; faint series (raw values under a smoothed line) are drawn
 * thin and translucent and left out of the legend. Returns `{destroy}`.
 */
export function lineChart(el, { title, x, series, xLabel = 'step', height = 220 }) {
  const text = cssVar('--muted');
  const grid = cssVar('--grid');
  const axis = { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 }, font: '11px system-ui, sans-serif' };
  const opts = {
    title,
    width: Math.max(200, el.clientWidth),
    height,
    scales: { x: { time: false } },
    axes: [
      { ...axis, label: null },
      {
        ...axis,
        values: (_u, ticks) => axisNums(ticks),
        // Wide enough for the longest label (never cut off).
        size: (_u, values) => Math.max(40, 14 + 7 * Math.max(0, ...(values ?? []).map((v) => String(v).length))),
      },
    ],
    cursor: { sync: { key: 'trainyard-runs' }, points: { size: 6 } },
    legend: { live: true },
    series: [
      { label: xLabel, value: (_u, v) => (v == null ? '—' : String(v)) },
      ...series.map((s) => ({
        label: s.label,
        stroke: s.faint ? withAlpha(s.color, 0.28) : s.color,
        width: s.faint ? 1 : 1.75,
        spanGaps: true,
        points: { show: false },
        value: (_u, v) => (v == null ? '—' : num(v)),
      })),
    ],
  };
  const u = new uPlot(opts, [x, ...series.map((s) => s.y)], el);
  // Hide the faint series' legend rows (uPlot has no per-series switch).
  const rows = u.root.querySelectorAll('.u-legend .u-series');
  series.forEach((s, i) => { if (s.faint && rows[i + 1]) rows[i + 1].hidden = true; });
  const ro = new ResizeObserver(() => {
    const w = Math.max(200, el.clientWidth);
    if (w !== u.width) u.setSize({ width: w, height });
  });
  ro.observe(el);
  return { destroy() { ro.disconnect(); u.destroy(); }, uplot: u };
}

/**
 * A line chart over time into `el`: `x` in seconds since the epoch (drawn
 * in local time), `series` `[{label, color, y, value}]` where `value(v, i)`
 * writes a legend value (default `num`). `range` fixes the y axis
 * (`[0, 100]` for percentages; default from 0 to the data's top), `yValue`
 * writes its ticks, `span` (`[from, to]` in seconds, or a function giving
 * it at each redraw) fixes the x axis, and
 * charts with one `sync` key share a crosshair. Returns
 * `{destroy, setData(x, ys), uplot}`.
 */
export function timeChart(el, {
  title, x, series, height = 180, range = null, yValue = (v) => num(v), span = null, sync = 'trainyard-gpus',
}) {
  const text = cssVar('--muted');
  const grid = cssVar('--grid');
  const axis = { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 }, font: '11px system-ui, sans-serif' };
  const opts = {
    title,
    width: Math.max(200, el.clientWidth),
    height,
    scales: {
      x: { time: true, ...(span ? { range: () => (typeof span === 'function' ? span() : span) } : {}) },
      y: { range: range ? () => range : (_u, _min, max) => [0, max > 0 ? max * 1.05 : 1] },
    },
    axes: [
      { ...axis },
      {
        ...axis,
        values: (_u, ticks) => ticks.map(yValue),
        size: (_u, values) => Math.max(48, 22 + 7 * Math.max(0, ...(values ?? []).map((v) => String(v).length))),
      },
    ],
    cursor: { sync: { key: sync }, points: { size: 5 } },
    legend: { live: true },
    series: [
      {},
      ...series.map((s) => ({
        label: s.label,
        stroke: s.color,
        fill: s.fill ? withAlpha(s.color, 0.12) : undefined,
        width: 1.5,
        points: { show: false },
        value: (_u, v, _si, i) => (v == null ? '—' : (s.value ?? num)(v, i)),
      })),
    ],
  };
  const u = new uPlot(opts, [x, ...series.map((s) => s.y)], el);
  const ro = new ResizeObserver(() => {
    const w = Math.max(200, el.clientWidth);
    if (w !== u.width) u.setSize({ width: w, height });
  });
  ro.observe(el);
  return {
    uplot: u,
    setData(nx, ys) { u.setData([nx, ...ys]); },
    destroy() { ro.disconnect(); u.destroy(); },
  };
}

// A tiny SVG sparkline for the GPU cards, plus the ring buffer of samples it
// draws. Samples come from successive /agents fetches (agents report every
// ~2 s), so the line is as fine as the live feed.

import { svg } from './dom.js';

/** Fixed-span ring of `{t, ...values}` samples, oldest dropped first. */
export class Samples {
  constructor(spanMs = 5 * 60_000, max = 600) {
    this.spanMs = spanMs;
    this.max = max;
    this.items = [];
  }

  push(sample) {
    const last = this.items.at(-1);
    // Several fetches can see the same report: keep one sample per second.
    if (last && sample.t - last.t < 1000) this.items[this.items.length - 1] = sample;
    else this.items.push(sample);
    const cutoff = sample.t - this.spanMs;
    while (this.items.length > this.max || (this.items.length && this.items[0].t < cutoff)) this.items.shift();
  }
}

const W = 240;
const H = 40;

/**
 * Draw `lines` (`[{key, cls, label}]`, values 0..100 read as `sample[key]`)
 * over the last `samples.spanMs`, right edge = `now`.
 */
export function sparkline(samples, lines, now = Date.now()) {
  const x = (t) => W - ((now - t) / samples.spanMs) * W;
  const y = (v) => H - 1 - (Math.max(0, Math.min(100, v)) / 100) * (H - 2);
  const el = svg('svg', {
    class: 'spark', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img',
    'aria-label': `${lines.map((l) => l.label).join(' and ')}, last ${Math.round(samples.spanMs / 60000)} minutes`,
  });
  // Guides at 50% and 100%.
  el.append(svg('line', { class: 'spark-grid', x1: 0, x2: W, y1: y(50), y2: y(50) }));
  const pts = samples.items.filter((s) => now - s.t <= samples.spanMs);
  if (pts.length === 0) return el;
  for (const { key, cls } of lines) {
    const xy = pts.filter((s) => s[key] != null).map((s) => [x(s.t), y(s[key])]);
    if (xy.length === 0) continue;
    if (xy.length === 1) xy.unshift([Math.max(0, xy[0][0] - 2), xy[0][1]]);
    const d = xy.map(([a, b], i) => `${i ? 'L' : 'M'}${a.toFixed(1)},${b.toFixed(1)}`).join('');
    el.append(
      svg('path', { class: `spark-area ${cls}`, d: `${d}L${xy.at(-1)[0].toFixed(1)},${H}L${xy[0][0].toFixed(1)},${H}Z` }),
      svg('path', { class: `spark-line ${cls}`, d, 'vector-effect': 'non-scaling-stroke' }),
    );
  }
  return el;
}

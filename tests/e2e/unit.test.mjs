// Unit tests of the UI's pure helpers (no browser): the SSE framing, the
// command-line and KEY=VALUE parsing of the job form, and formatting.
// Run: node --test unit.test.mjs

import assert from 'node:assert/strict';
import test from 'node:test';
import { sseParser } from '../../ui/lib/sse.js';
import { keyValues, parseDuration, shellWords } from '../../ui/lib/util.js';
import { axisNums, bytes, duration, mib, num } from '../../ui/lib/format.js';

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

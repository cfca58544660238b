// Unit tests of the UI's pure helpers (no browser): the SSE framing, the
// command-line and KEY=VALUE parsing of the job form, and formatting.
// Run: node --test unit.test.mjs

import assert from 'node:assert/strict';
import test from 'node:test';
import { sseParser } from '../../ui/lib/sse.js';
import { keyValues, parseDuration, shellWords } from '../../ui/lib/util.js';
import { bytes, duration, mib, num } from '../../ui/lib/format.js';

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

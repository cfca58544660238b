#!/usr/bin/env node
// Writes an offline wandb run as a GPU host's wandb client would, for the
// UI test's job↔run link: run by a Trainyard job, it records a run on the
// job's own GPUs (TRAINYARD_GPU_UUIDS, CUDA_VISIBLE_DEVICES), on this host,
// inside the attempt's time, with `gpu.process.{i}.*` system samples — what
// the usage reconciliation links to the attempt. The real client cannot
// record GPU metrics here (no GPU, no NVML), so this writes the records it
// would write (`docs/wandb-format.md`: the file header, 32 KiB blocks of
// CRC-32 chunks, and the protobuf records the reader reads: header, run,
// environment, stats, exit).
//
//   node wandb-run.mjs OUT_DIR RUN_ID [SECONDS]
//
// writes OUT_DIR/offline-run-<time>-RUN_ID/run-RUN_ID.wandb, sampling for
// SECONDS (default 1.5) every 250 ms, and prints the directory.

import { mkdirSync, writeFileSync } from 'node:fs';
import { hostname, userInfo } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';

// ---------------------------------------------------------------- protobuf ---

function varint(n) {
  let v = BigInt.asUintN(64, BigInt(n));
  const out = [];
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v) b |= 0x80;
    out.push(b);
  } while (v);
  return Buffer.from(out);
}

const key = (field, wire) => varint((field << 3) | wire);
/** A varint field (int32, int64, uint32, bool); zero is left out, as protobuf does. */
const int = (field, n) => (n ? Buffer.concat([key(field, 0), varint(n)]) : Buffer.alloc(0));
/** A length-delimited field: a string or an encoded message. */
function bytes(field, b) {
  const buf = typeof b === 'string' ? Buffer.from(b, 'utf8') : b;
  return Buffer.concat([key(field, 2), varint(buf.length), buf]);
}
const msg = (...fields) => Buffer.concat(fields.flat());
const timestamp = (ms) => msg(int(1, Math.floor(ms / 1000)), int(2, (ms % 1000) * 1e6));

// wandb_internal.Record's fields (src/wandb/proto.rs).
const record = (num, field, body) => msg(int(1, num), bytes(field, body));

// ----------------------------------------------------------------- framing ---

const BLOCK = 32 * 1024;
const HEADER = Buffer.from([0x3a, 0x57, 0x26, 0x42, 0xe1, 0xbe, 0x00]); // ":W&B", magic 0xBEE1, version 0

/** The LevelDB-style log of `payloads`, as the wandb client writes it. */
export function frame(payloads) {
  const parts = [HEADER];
  let len = HEADER.length;
  for (const p of payloads) {
    let rest = p;
    let first = true;
    for (;;) {
      const left = BLOCK - (len % BLOCK);
      if (left < 7) {
        parts.push(Buffer.alloc(left));
        len += left;
        continue;
      }
      const n = Math.min(rest.length, left - 7);
      const last = n === rest.length;
      const type = first ? (last ? 1 : 2) : (last ? 4 : 3);
      const head = Buffer.alloc(7);
      head.writeUInt32LE(crc32(rest.subarray(0, n), crc32(Buffer.from([type]))) >>> 0, 0);
      head.writeUInt16LE(n, 4);
      head[6] = type;
      parts.push(head, rest.subarray(0, n));
      len += 7 + n;
      rest = rest.subarray(n);
      first = false;
      if (last) break;
    }
  }
  return Buffer.concat(parts);
}

// --------------------------------------------------------------------- run ---

/**
 * The records of a run: `gpus` is the host's GPUs by NVML index (`{name,
 * uuid}`), `used` the indices its processes used, `samples` `[{t_ms,
 * util}]` (the same utilization on each used GPU).
 */
export function runRecords({ id, project, name, user, host, startMs, gpus, used, samples }) {
  let num = 0;
  const out = [];
  const push = (field, body) => out.push(record(++num, field, body));
  push(21, msg(bytes(1, msg(bytes(1, 'trainyard-e2e'), bytes(2, '0.31.0'))))); // header
  push(17, msg(bytes(1, id), bytes(3, project), bytes(8, name), bytes(13, host), bytes(17, timestamp(startMs)))); // run
  push(26, msg( // environment
    bytes(1, 'Linux'), bytes(12, host), bytes(13, user), bytes(18, gpus[0]?.name ?? ''), int(19, gpus.length),
    gpus.map((g) => bytes(24, msg(bytes(1, g.name), int(2, 80 * 2 ** 30), bytes(5, g.uuid)))),
    bytes(199, 'e2e-writer')));
  for (const s of samples) {
    const items = [];
    gpus.forEach((_g, i) => {
      items.push([`gpu.${i}.gpu`, used.includes(i) ? s.util : 0]);
      if (used.includes(i)) {
        items.push([`gpu.process.${i}.gpu`, s.util], [`gpu.process.${i}.memoryAllocatedBytes`, 2 ** 30], [`gpu.process.${i}.powerWatts`, 200]);
      }
    });
    push(7, msg(bytes(2, timestamp(s.t_ms)), items.map(([k, v]) => bytes(3, msg(bytes(1, k), bytes(16, JSON.stringify(v))))))); // stats
  }
  const runtime = Math.round(((samples.at(-1)?.t_ms ?? startMs) - startMs) / 1000);
  push(18, msg(int(2, runtime))); // exit 0
  return out;
}

/** Write the run under `out`; returns its directory. */
export function writeRun(out, run) {
  const d = new Date(run.startMs);
  const p2 = (n) => String(n).padStart(2, '0');
  const stamp = `${d.getUTCFullYear()}${p2(d.getUTCMonth() + 1)}${p2(d.getUTCDate())}_${p2(d.getUTCHours())}${p2(d.getUTCMinutes())}${p2(d.getUTCSeconds())}`;
  const dir = join(out, `offline-run-${stamp}-${run.id}`);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, `run-${run.id}.wandb`), frame(runRecords(run)));
  return dir;
}

// As a job: a run on the GPUs this process was given.
if (import.meta.url === `file://${process.argv[1]}`) {
  const [out, id, seconds = '1.5'] = process.argv.slice(2);
  const uuids = (process.env.TRAINYARD_GPU_UUIDS ?? '').split(',').filter(Boolean);
  const indices = (process.env.CUDA_VISIBLE_DEVICES ?? '').split(',').filter(Boolean).map(Number);
  if (!out || !id || !uuids.length || uuids.length !== indices.length) {
    console.error('usage: node wandb-run.mjs OUT_DIR RUN_ID [SECONDS], as a job holding GPUs');
    process.exit(2);
  }
  const gpus = [];
  for (let i = 0; i <= Math.max(...indices); i++) gpus.push({ name: 'GPU', uuid: '' });
  indices.forEach((i, k) => { gpus[i] = { name: 'NVIDIA A100-SXM4-80GB', uuid: uuids[k] }; });
  const startMs = Date.now();
  const samples = [];
  while (Date.now() - startMs < Number(seconds) * 1000) {
    samples.push({ t_ms: Date.now(), util: 90 });
    await new Promise((r) => setTimeout(r, 250));
  }
  samples.push({ t_ms: Date.now(), util: 90 });
  const dir = writeRun(out, {
    id, project: 'e2e-linked', name: `linked ${id}`, user: userInfo().username, host: hostname(), startMs, gpus, used: indices, samples,
  });
  console.log(dir);
}

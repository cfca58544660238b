// Pieces shared by the queue list and the job view: how a job's command,
// host, GPUs and timing are shown, and the cancel/retry buttons.

import * as api from '../api.js';
import { h } from '../lib/dom.js';
import { duration, idleText, nsToMs } from '../lib/format.js';

export const ACTIVE = ['queued', 'assigned', 'running'];
export const RETRYABLE = ['failed', 'lost', 'cancelled', 'idle_stopped'];

function quote(word) {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, "'\\''")}'`;
}

/** The command as a shell line, with the rendered `--key value` arguments. */
export function commandLine(spec) {
  const args = Object.entries(spec.args ?? {}).flatMap(([k, v]) => [`--${k}`, v]).map(quote);
  const base = Array.isArray(spec.command) ? spec.command.map(quote).join(' ') : spec.command;
  return [base, ...args].join(' ');
}

/** uuid → {index, name, agent}, from /agents. */
export async function gpuIndex(signal) {
  const map = new Map();
  for (const a of await api.agents({ signal })) {
    for (const g of a.report.gpus ?? []) map.set(g.uuid, { index: g.index, name: g.name, agent: a.name });
  }
  return map;
}

/** "0, 2" for a job's GPU uuids (the uuid itself when unknown). */
export function gpuList(uuids, gpus) {
  return (uuids ?? []).map((u) => (gpus.has(u) ? String(gpus.get(u).index) : u)).join(', ');
}

/** What the job asked for: "2 GPUs · ≥ 40 GiB · A100|H100" or "CPU only". */
export function gpuRequest(g) {
  if (!g?.count) return 'CPU only';
  return [
    `${g.count} GPU${g.count > 1 ? 's' : ''}`,
    g.min_memory_mib ? `≥ ${(g.min_memory_mib / 1024).toFixed(g.min_memory_mib % 1024 ? 1 : 0)} GiB free` : null,
    g.model ? `model ${g.model}` : null,
  ].filter(Boolean).join(' · ');
}

/**
 * How long a job ran (or has been running, or waiting), as an element the
 * page's 1-second ticker updates while it is still counting (`data-from`).
 */
export function elapsed(job) {
  const started = nsToMs(job.started_ns);
  const finished = nsToMs(job.finished_ns);
  if (started && finished) return h('span', null, duration((finished - started) / 1000));
  if (started && job.state === 'running') {
    return h('span', { class: 'ticking', dataset: { from: String(started) } }, duration((Date.now() - started) / 1000));
  }
  if (ACTIVE.includes(job.state)) {
    const sub = nsToMs(job.submitted_ns);
    return h('span', { class: 'muted ticking', dataset: { from: String(sub), prefix: 'waiting ' } },
      `waiting ${duration((Date.now() - sub) / 1000)}`);
  }
  return h('span', { class: 'muted' }, '—');
}

/** Update every counting duration under `root`. */
export function tick(root) {
  const now = Date.now();
  for (const el of root.querySelectorAll('.ticking[data-from]')) {
    el.textContent = `${el.dataset.prefix ?? ''}${duration((now - Number(el.dataset.from)) / 1000)}`;
  }
}

/** Why a job is where it is, in a few words. */
export function reasonText(job) {
  switch (job.state) {
    case 'queued': return job.reason ?? 'waiting for a free slot';
    case 'assigned': return `starting on ${job.agent ?? 'an agent'}`;
    case 'running': return idleText(job.idle)
      ?? (job.attempts > 1 ? `attempt ${job.attempts} of ${job.spec.max_attempts}` : '');
    case 'succeeded': return job.exit_code != null ? `exit ${job.exit_code}` : '';
    default: return job.reason ?? (job.exit_code != null ? `exit ${job.exit_code}` : '');
  }
}

// Armed "confirm" buttons outlive re-renders of the table (live updates
// rebuild rows), so their state is kept by key here.
const armed = new Map();

/**
 * A button that asks for a second click before doing something destructive
 * (`confirmLabel` shows for 4 s).
 */
export function confirmButton({ key, label, confirmLabel, cls = '', action, onError }) {
  const b = h('button', { class: `btn btn-sm ${cls}`, type: 'button', 'data-key': key });
  const show = () => {
    const on = armed.has(key);
    b.textContent = on ? confirmLabel : label;
    b.classList.toggle('armed', on);
  };
  b.addEventListener('click', async (e) => {
    e.stopPropagation();
    if (!armed.has(key)) {
      armed.set(key, setTimeout(() => { armed.delete(key); if (b.isConnected) show(); }, 4000));
      show();
      return;
    }
    clearTimeout(armed.get(key));
    armed.delete(key);
    b.disabled = true;
    try {
      await action();
    } catch (err) {
      onError?.(err);
    } finally {
      b.disabled = false;
      show();
    }
  });
  show();
  return b;
}

/** Cancel (active jobs) or Retry (failed, lost, cancelled) for a job. */
export function jobActions(job, onError, onDone) {
  if (ACTIVE.includes(job.state)) {
    return confirmButton({
      key: `cancel-${job.id}`, label: 'Cancel', confirmLabel: 'Confirm cancel', cls: 'btn-danger',
      action: async () => { await api.cancel(job.id); onDone?.(); }, onError,
    });
  }
  if (RETRYABLE.includes(job.state)) {
    return h('button', {
      class: 'btn btn-sm', type: 'button', 'data-key': `retry-${job.id}`,
      async onclick(e) {
        e.stopPropagation();
        e.currentTarget.disabled = true;
        try { await api.retry(job.id); onDone?.(); } catch (err) { onError?.(err); }
      },
    }, 'Retry');
  }
  return null;
}

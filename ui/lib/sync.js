// A run's sync state per W&B server, as chips (the Runs list and a run's page).
import { h } from './dom.js';

/** Sync state chips: one per server, or "not synced". */
export function syncChips(sync) {
  if (!sync?.length) return h('span', { class: 'muted' }, 'not synced');
  return h('span', { class: 'chips' }, sync.map((s) => {
    let host = s.server;
    try { host = new URL(s.server).host; } catch { /* not a URL: show as is */ }
    return h('span', { class: `chip chip-sync-${s.state}`, title: `${s.server}: ${s.state}${s.detail ? ` — ${s.detail}` : ''}` }, `${host} · ${s.state}`);
  }));
}

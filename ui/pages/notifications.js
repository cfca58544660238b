// Notifications (`#/notifications`): the sinks with their routing rules
// (which events, whose jobs, a digest), a test message per sink, a form to
// subscribe (a sink and rule for yourself: your user, the events you want),
// the dead letters (deliveries given up on after their last try) and the
// delivery log. Webhook URLs are secrets: the daemon shows them as scheme
// and host only, and the form sends one once. Shown when the daemon has
// notifications (health.features has "notify").

import * as api from '../api.js';
import { h, swap, loading, empty, failure, alertLine, badge } from '../lib/dom.js';
import { nsToMs, timeEl, plural } from '../lib/format.js';

/** Event kinds a rule can name, with labels (`notify::EventKind`). */
export const EVENTS = [
  ['job_succeeded', 'Job succeeded'], ['job_failed', 'Job failed'], ['job_cancelled', 'Job cancelled'],
  ['job_lost', 'Job lost'], ['idle_warned', 'Idle warning'], ['idle_stopped', 'Stopped for idling'],
  ['schedule_fired', 'Schedule fired'], ['schedule_missed', 'Schedule missed'],
  ['wandb_sync_failed', 'W&B sync failed'], ['agent_lost', 'Agent lost'], ['disk_low', 'Disk low'],
];
const KINDS = [['webhook', 'JSON webhook'], ['slack', 'Slack'], ['discord', 'Discord'], ['ntfy', 'ntfy'], ['desktop', 'Desktop app']];
const REMEMBER = 'trainyard.jobform'; // the user the job form remembers
const STATE_BADGE = { delivered: 'succeeded', pending: 'queued', dead: 'failed' };

const listOr = (v, dflt) => (v?.length ? v.join(', ') : dflt);

/** Who a rule covers, in words. */
function who(s) {
  const parts = [];
  if (s.users?.length) parts.push(`users ${s.users.join(', ')}`);
  if (s.projects?.length) parts.push(`projects ${s.projects.join(', ')}`);
  if (s.tags?.length) parts.push(`tags ${s.tags.join(', ')}`);
  return parts.length ? parts.join('; ') : 'everyone';
}

/** Which events a sink gets one by one. */
function eventsText(s) {
  if (s.digest && !s.events?.length) return h('span', { class: 'muted' }, 'none (digest only)');
  return listOr(s.events, 'all');
}

export function mount(root, route, ctx) {
  root.append(h('div', { class: 'page-head' },
    h('div', null, h('h1', null, 'Notifications'),
      h('p', { class: 'page-sub' }, 'Where job ends, idle GPUs, lost agents and full disks are announced, and what was delivered.'))));
  if (!(ctx.health?.features ?? []).includes('notify')) {
    root.append(h('div', { class: 'panel' }, empty({
      icon: 'queue', title: 'No notifications on this daemon',
      body: ['This daemon (v', ctx.health?.version ?? '?', ') does not send notifications.'],
    })));
    return;
  }

  const notice = h('div', { class: 'form-notice', 'aria-live': 'polite' });
  const say = (kind, ...text) => swap(notice, alertLine(kind, ...text));
  const sinksEl = h('section', { class: 'panel table-panel', 'aria-label': 'Sinks' }, loading('Loading sinks…'));
  const deadEl = h('section', { class: 'panel table-panel', 'aria-label': 'Dead letters' });
  const logEl = h('section', { class: 'panel table-panel', 'aria-label': 'Delivery log' });
  const form = subscribeForm(ctx, say, () => refresh());
  root.append(notice,
    h('div', { class: 'panel-head' }, h('h2', null, 'Sinks and rules')), sinksEl,
    h('div', { class: 'panel-head' }, h('h2', null, 'Subscribe')), form,
    h('div', { class: 'panel-head' }, h('h2', null, 'Dead letters'),
      h('span', { class: 'muted' }, 'given up on after the last try')), deadEl,
    h('div', { class: 'panel-head' }, h('h2', null, 'Delivery log')), logEl);

  /** Send a test message to `name` and follow it until it settles. */
  async function sendTest(name, btn) {
    btn.disabled = true;
    try {
      const t = await api.notifyTest(name);
      say('info', `Test message ${t.event_id} queued for ${name}…`);
      refresh();
      const end = Date.now() + 20_000;
      for (;;) {
        const log = await api.notifyLog({}, { signal: ctx.signal });
        const d = log.deliveries.find((x) => x.event_id === t.event_id && x.sink === name);
        if (d && d.state === 'delivered') { say('ok', `Test message delivered to ${name}.`); break; }
        if (d && d.state === 'dead') { say('error', `Test message to ${name} failed after ${plural(d.attempts, 'try', 'tries')}: ${d.last_error ?? ''}`); break; }
        if (Date.now() > end) {
          say('warn', `Test message to ${name} is still pending${d?.last_error ? `: ${d.last_error}` : ''}; see the delivery log.`);
          break;
        }
        await new Promise((r) => setTimeout(r, 300));
      }
      refresh();
    } catch (e) {
      if (e.name !== 'AbortError') say('error', `${name}: ${e.message}`);
    } finally {
      btn.disabled = false;
    }
  }

  async function remove(name, btn) {
    if (!btn.classList.contains('armed')) {
      btn.classList.add('armed');
      btn.textContent = 'Remove?';
      setTimeout(() => { btn.classList.remove('armed'); btn.textContent = 'Remove'; }, 4000);
      return;
    }
    btn.disabled = true;
    try {
      await api.notifyRemove(name);
      say('ok', `Removed ${name}; its pending notifications are dead letters now.`);
      refresh();
    } catch (e) {
      say('error', `${name}: ${e.message}`);
      btn.disabled = false;
    }
  }

  function drawSinks(sinks) {
    if (sinks.length === 0) {
      swap(sinksEl, empty({
        icon: 'queue', title: 'No sinks yet',
        body: ['Subscribe below, add one from a shell (', h('code', null, 'trainyard notify add team --slack "$SLACK_URL" --events job_failed'),
          '), or in the daemon\'s config.toml.'],
      }));
      return;
    }
    swap(sinksEl, h('table', { class: 'table notify-sinks' },
      h('thead', null, h('tr', null, h('th', null, 'Name'), h('th', null, 'Kind'), h('th', null, 'URL'), h('th', null, 'Events'),
        h('th', null, 'Whose'), h('th', null, 'Digest'), h('th', null, 'From'), h('th', { class: 'actions' }, h('span', { class: 'sr-only' }, 'Actions')))),
      h('tbody', null, sinks.map((s) => h('tr', { dataset: { sink: s.name } },
        h('td', { class: 'mono' }, s.name),
        h('td', null, s.kind, s.priority ? h('span', { class: 'muted' }, ` p${s.priority}`) : null),
        h('td', { class: 'mono muted' }, s.url ?? '—'),
        h('td', { class: 'sink-events' }, eventsText(s)),
        h('td', null, who(s)),
        h('td', { class: 'sink-digest' }, s.digest ?? '—'),
        h('td', { class: 'muted' }, s.origin === 'config' ? 'config.toml' : 'added'),
        h('td', { class: 'actions' },
          h('button', { class: 'btn btn-sm', type: 'button', 'data-key': `test-${s.name}`, onclick: (e) => sendTest(s.name, e.currentTarget) }, 'Send test'),
          s.origin === 'config' ? null
            : h('button', { class: 'btn btn-sm btn-danger', type: 'button', 'data-key': `remove-${s.name}`, onclick: (e) => remove(s.name, e.currentTarget) }, 'Remove')))))));
  }

  const deliveryRow = (d) => h('tr', { dataset: { event: String(d.event_id), sink: d.sink, state: d.state } },
    h('td', { class: 'mono' }, String(d.event_id)),
    h('td', null, d.kind),
    h('td', null, d.job != null ? h('a', { href: `#/queue/${d.job}` }, `job ${d.job}`) : '—'),
    h('td', { class: 'mono' }, d.sink),
    h('td', null, badge(STATE_BADGE[d.state] ?? 'queued', d.state)),
    h('td', { class: 'num' }, String(d.attempts)),
    h('td', null, d.state === 'pending' && d.next_ns ? ['next ', timeEl(nsToMs(d.next_ns))] : timeEl(nsToMs(d.done_ns ?? d.created_ns))),
    h('td', { class: 'mono small delivery-error' }, d.last_error ?? ''));
  const deliveryTable = (rows, cls) => h('table', { class: `table ${cls}` },
    h('thead', null, h('tr', null, h('th', null, 'Event'), h('th', null, 'Kind'), h('th', null, 'About'), h('th', null, 'Sink'),
      h('th', null, 'State'), h('th', { class: 'num' }, 'Tries'), h('th', null, 'When'), h('th', null, 'Last error'))),
    h('tbody', null, rows.map(deliveryRow)));

  let seq = 0;
  async function refresh() {
    const mine = ++seq;
    try {
      const opts = { signal: ctx.signal };
      const [sinks, dead, log] = await Promise.all([
        api.notifySinks(opts), api.notifyLog({ state: 'dead', limit: 200 }, opts), api.notifyLog({ limit: 100 }, opts),
      ]);
      if (mine !== seq) return;
      drawSinks(sinks);
      swap(deadEl, dead.deliveries.length === 0
        ? h('p', { class: 'muted pad' }, 'No dead letters: every notification was delivered or is still being tried.')
        : deliveryTable(dead.deliveries, 'dead-letters'));
      swap(logEl, log.deliveries.length === 0
        ? h('p', { class: 'muted pad' }, 'Nothing sent yet.')
        : deliveryTable(log.deliveries, 'delivery-log'));
    } catch (e) {
      if (e.name !== 'AbortError' && mine === seq) swap(sinksEl, failure(e, refresh));
    }
  }
  ctx.live(['job', 'notification'], refresh, 2000);
  ctx.every(refresh, 5000);
  refresh();
}

/** The Subscribe form: a sink for yourself and the events you want. */
function subscribeForm(ctx, say, done) {
  let remembered = {};
  try { remembered = JSON.parse(localStorage.getItem(REMEMBER) ?? '{}') ?? {}; } catch { /* none */ }
  const input = (id, attrs = {}) => h('input', { id, type: 'text', autocomplete: 'off', spellcheck: 'false', ...attrs });
  const field = (label, el, span, hint) => h('div', { class: 'field', style: { gridColumn: `span ${span}` } },
    h('label', { for: el.id }, label), el, hint ? h('span', { class: 'hint' }, hint) : null);
  const name = input('sub-name', { placeholder: 'ana-phone', required: true });
  const kind = h('select', { id: 'sub-kind' }, KINDS.map(([k, l]) => h('option', { value: k }, l)));
  // A webhook URL is its own credential: typed like a password.
  const url = input('sub-url', { type: 'password', class: 'mono', placeholder: 'https://hooks.slack.com/services/…' });
  const user = input('sub-user', { placeholder: 'you', value: remembered.user ?? '' });
  const project = input('sub-project', { placeholder: 'any' });
  const digest = h('select', { id: 'sub-digest' },
    h('option', { value: '' }, 'No digest'), h('option', { value: 'daily' }, 'Daily digest'), h('option', { value: 'weekly' }, 'Weekly digest'));
  const checks = EVENTS.map(([k, l]) => h('label', { class: 'check' },
    h('input', { type: 'checkbox', value: k, 'data-event': k, checked: k === 'job_failed' || k === 'idle_stopped' }), l));
  const kindChanged = () => {
    url.disabled = kind.value === 'desktop';
    url.placeholder = { slack: 'https://hooks.slack.com/services/…', discord: 'https://discord.com/api/webhooks/…', ntfy: 'https://ntfy.sh/your-topic', webhook: 'https://…', desktop: 'no URL: the desktop app shows it' }[kind.value];
  };
  kind.addEventListener('change', kindChanged);
  kindChanged();
  const btn = h('button', { class: 'btn btn-primary', type: 'submit' }, 'Subscribe');
  const form = h('form', { class: 'panel subscribe-form', novalidate: true, 'aria-label': 'Subscribe to notifications' },
    h('div', { class: 'form-grid' },
      field('Sink name', name, 3, 'Lowercase letters, digits, - and _.'),
      field('Kind', kind, 2),
      field('URL', url, 7, 'Kept by the daemon, shown as scheme and host only.'),
      field('Your user', user, 3, 'Only your jobs (empty: everyone\'s).'),
      field('Project', project, 3),
      field('Digest', digest, 3, 'One summary per period; with events ticked, those come too.'),
      h('fieldset', { class: 'field event-checks', style: { gridColumn: 'span 12' } },
        h('legend', { class: 'hint' }, 'Events, one message each'), h('div', { class: 'chips' }, checks))),
    h('div', { class: 'form-actions form-foot' }, btn));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const events = checks.map((c) => c.querySelector('input')).filter((c) => c.checked).map((c) => c.value);
    const req = {
      name: name.value.trim(),
      kind: kind.value,
      url: kind.value === 'desktop' ? null : url.value.trim() || null,
      events,
      users: user.value.trim() ? [user.value.trim()] : [],
      projects: project.value.trim() ? [project.value.trim()] : [],
      digest: digest.value || null,
    };
    if (!req.name) { say('error', 'Give the sink a name.'); name.focus(); return; }
    if (!req.digest && events.length === 0) { say('error', 'Tick at least one event, or choose a digest.'); return; }
    btn.disabled = true;
    try {
      const s = await api.notifyAdd(req);
      say('ok', `Subscribed: ${s.name} gets ${s.digest ? `a ${s.digest} digest${events.length ? ' and ' : ''}` : ''}${events.length ? listOr(events) : ''}.`);
      name.value = '';
      url.value = '';
      done();
    } catch (x) {
      say('error', x.message);
    } finally {
      btn.disabled = false;
    }
  });
  return form;
}
